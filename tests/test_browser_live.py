"""In a real browser: with Live on, typing a prompt makes a picture whose infotext follows the prompt, and
live pictures are not saved."""
from __future__ import annotations

import pytest

from tests.fixtures.launched import launch_studio, models_folder
from tests.test_browser import NEEDS_CHROMIUM, _studio_page

pytestmark = pytest.mark.browser


@pytest.fixture
def live_studio(tmp_path, checkpoint_dir):
    models = models_folder(tmp_path, checkpoint_dir, {"tiny-sd1.safetensors": "sd1.safetensors"})
    for url in launch_studio(tmp_path, models):
        yield url, tmp_path


@NEEDS_CHROMIUM
def test_live_regenerates_as_the_prompt_changes(live_studio):
    from playwright.sync_api import expect

    url, data_dir = live_studio
    with _studio_page(url, "tiny-sd1.safetensors") as page:
        # A few-step setup, set while Live is off (no frames yet).
        page.locator("#txt2img_steps input[type=number]").fill("2")
        page.locator("#txt2img_width input[type=number]").fill("64")
        page.locator("#txt2img_height input[type=number]").fill("64")
        page.locator("#txt2img_seed input").fill("7")
        page.locator("#txt2img_live input").check()
        info = page.locator("#txt2img_info")
        page.locator("#txt2img_prompt textarea").fill("a red ball")
        expect(page.locator("#txt2img_gallery img").first).to_be_visible(timeout=120_000)
        expect(info).to_contain_text("a red ball", timeout=120_000)
        expect(info).to_contain_text("Size: 64x64")
        page.locator("#txt2img_prompt textarea").press_sequentially(" on grass", delay=30)
        expect(info).to_contain_text("a red ball on grass", timeout=120_000)
        page.locator("#txt2img_prompt textarea").fill("a blue cube")
        expect(info).to_contain_text("a blue cube", timeout=120_000)
        expect(info).not_to_contain_text("a red ball")
    assert not list((data_dir / "outputs").rglob("*.png"))  # live frames are drafts
