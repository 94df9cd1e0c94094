"""In a real browser: the Refiner accordion's checkpoint and switch reach the picture's infotext, and the
paste button turns it on (or off) from a pasted infotext."""
from __future__ import annotations

import re

import pytest

from tests.fixtures.launched import launch_studio, models_folder
from tests.test_browser import NEEDS_CHROMIUM, _fill_txt2img, _fill_until_kept, _pick, _studio_page

pytestmark = pytest.mark.browser


@pytest.fixture
def refiner_studio(tmp_path, checkpoint_dir):
    models = models_folder(tmp_path, checkpoint_dir, {
        "tiny-sd1.safetensors": "sd1.safetensors",  # the page opens on it
        "tiny-sdxl.safetensors": "sdxl.safetensors",
        "tiny-sdxl-copy.safetensors": "sdxl.safetensors",  # another file: a refiner
    })
    for url in launch_studio(tmp_path, models):
        yield url, tmp_path


@NEEDS_CHROMIUM
def test_refiner_from_the_accordion_to_the_infotext_and_back_by_paste(refiner_studio):
    from playwright.sync_api import expect

    url, _ = refiner_studio
    with _studio_page(url, "tiny-sd1.safetensors") as page:
        _pick(page, "#setting_sd_model_checkpoint", "tiny-sdxl.safetensors")
        # The picker sets the model's own size when its load ends: wait for that, or on a slow machine it
        # lands after the size typed below and overwrites it.
        expect(page.locator("#txt2img_width input[type=number]")).to_have_value("1024", timeout=120_000)
        page.locator("#txt2img_refiner").get_by_text("Refiner", exact=True).click()
        enable = page.locator("#txt2img_enable_refiner input")
        switch = page.locator("#txt2img_refiner_switch_at input[type=number]")
        _fill_until_kept(page, {"#txt2img_refiner_switch_at input[type=number]": "0.5"})  # the accordion is up
        enable.check()
        _pick(page, "#txt2img_refiner_checkpoint", "tiny-sdxl-copy")
        expect(enable).to_be_checked()
        expect(switch).to_have_value("0.5")
        _fill_txt2img(page, "a red ball", seed=4, steps=2, size=64)
        info = page.locator("#txt2img_info")
        expect(info).to_contain_text("Refiner: tiny-sdxl-copy", timeout=120_000)
        expect(info).to_contain_text("Refiner switch at: 0.5")
        expect(info).to_contain_text("Size: 64x64")

        # Paste: an infotext with a refiner sets the accordion; one without turns it off.
        enable.uncheck()
        switch.fill("0.9")
        switch.press("Enter")
        prompt = page.locator("#txt2img_prompt textarea")
        prompt.fill("a blue ball\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 64x64, "
                    "Model: tiny-sdxl, Refiner: tiny-sdxl-copy [0123456789], Refiner switch at: 0.3")
        page.locator("#txt2img_paste").click()
        expect(enable).to_be_checked(timeout=60_000)
        expect(switch).to_have_value("0.3", timeout=60_000)
        # Its title carries the hash now that it has been loaded.
        expect(page.locator("#txt2img_refiner_checkpoint input")).to_have_value(
            re.compile(r"^tiny-sdxl-copy\.safetensors \[[0-9a-f]{10}\]$"))
        expect(prompt).to_have_value("a blue ball")
        page.locator("#txt2img_generate").click()  # the pasted values are ones the server accepts
        expect(info).to_contain_text("Refiner switch at: 0.3", timeout=120_000)
        expect(info).to_contain_text("Seed: 5")
        prompt.fill("a blue ball\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 64x64, Model: tiny-sdxl")
        page.locator("#txt2img_paste").click()
        expect(enable).not_to_be_checked(timeout=60_000)
