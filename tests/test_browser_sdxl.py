"""In a real browser: the SDXL size widgets show for an SDXL checkpoint only, a bucket sets width and
height, and the conditioning accordion's values reach the picture's infotext."""
from __future__ import annotations

import pytest

from tests.fixtures.launched import launch_studio, models_folder
from tests.test_browser import NEEDS_CHROMIUM, _fill_txt2img, _fill_until_kept, _pick, _studio_page

pytestmark = pytest.mark.browser


@pytest.fixture
def sdxl_studio(tmp_path, checkpoint_dir):
    models = models_folder(tmp_path, checkpoint_dir, {"tiny-sd1.safetensors": "sd1.safetensors", "tiny-sdxl.safetensors": "sdxl.safetensors"})
    for url in launch_studio(tmp_path, models):
        yield url, tmp_path


@NEEDS_CHROMIUM
def test_sdxl_buckets_and_size_conditioning_from_the_page(sdxl_studio):
    from playwright.sync_api import expect

    url, _ = sdxl_studio
    with _studio_page(url, "tiny-sd1.safetensors") as page:
        expect(page.locator("#txt2img_sdxl_bucket")).to_be_hidden()  # an SD1 model has no such conditioning
        _pick(page, "#setting_sd_model_checkpoint", "tiny-sdxl")
        expect(page.locator("#txt2img_sdxl_bucket")).to_be_visible(timeout=60_000)
        # The picker shows the widgets at once but sets the model's own size when its load ends: wait for
        # that, or on a slow machine it lands after the bucket and overwrites it.
        expect(page.locator("#txt2img_width input[type=number]")).to_have_value("1024", timeout=120_000)
        _pick(page, "#txt2img_sdxl_bucket", "1216x832")
        expect(page.locator("#txt2img_width input[type=number]")).to_have_value("1216", timeout=30_000)
        expect(page.locator("#txt2img_height input[type=number]")).to_have_value("832")
        page.locator("#txt2img_sdxl_size").get_by_text("SDXL size conditioning").click()
        _fill_until_kept(page, {"#txt2img_sdxl_original_width input": "2048",
                                "#txt2img_sdxl_original_height input": "1536",
                                "#txt2img_sdxl_negative_original_width input": "512",
                                "#txt2img_sdxl_negative_original_height input": "512"})
        _fill_txt2img(page, "a red ball", seed=4, steps=2, size=64)
        info = page.locator("#txt2img_info")
        expect(info).to_contain_text("SDXL original size: 2048x1536", timeout=120_000)
        expect(info).to_contain_text("SDXL negative original size: 512x512")
        expect(info).to_contain_text("Size: 64x64")
