"""Extras and Segment Anything in a real browser: upscale a picture in the Extras tab and read
the result in PNG Info; click a SAM point in img2img and send the mask to inpaint."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from tests.test_browser import NEEDS_CHROMIUM, _pick, _studio_page, running_studio  # noqa: F401 (fixture)

pytestmark = pytest.mark.browser

SOURCE_INFOTEXT = "a red cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 48x40, Model: sd1"


@NEEDS_CHROMIUM
def test_extras_upscales_with_a_model_and_png_info_shows_it(running_studio):
    from playwright.sync_api import expect

    from tests.fixtures.tiny_upscalers import write_compact
    from tests.fixtures.tiny_sam import picture

    url, data_dir = running_studio
    (data_dir / "models" / "RealESRGAN").mkdir(parents=True, exist_ok=True)
    write_compact(data_dir / "models" / "RealESRGAN" / "x4-compact.pth", scale=4, seed=1)
    meta = PngInfo()
    meta.add_text("parameters", SOURCE_INFOTEXT)
    picture(48, 40).save(data_dir / "source.png", pnginfo=meta)
    with _studio_page(url, "tiny-sd1.safetensors") as page:
        page.get_by_role("tab", name="Extras").click()
        page.locator("#extras_image input[type=file]").set_input_files(str(data_dir / "source.png"))
        page.locator("#extras_refresh_upscalers").click()  # the model arrived after start
        page.wait_for_timeout(1000)
        _pick(page, "#extras_upscaler_1", "x4-compact")
        page.locator("#extras_upscaling_resize input[type=number]").fill("2")
        page.locator("#extras_generate").click()
        expect(page.locator("#extras_info")).to_contain_text("Postprocess upscaler: x4-compact", timeout=120_000)
        expect(page.locator("#extras_gallery img").first).to_be_visible()
        [saved] = sorted((data_dir / "outputs" / "extras-images").rglob("*.png"))
        page.get_by_role("tab", name="PNG Info").click()
        page.locator("#pnginfo_image input[type=file]").set_input_files(str(saved))
        expect(page.locator("#pnginfo_fields")).to_contain_text("Postprocess upscaler", timeout=30_000)
        expect(page.locator("#pnginfo_fields")).to_contain_text("Euler a")  # the source's parameters kept
    result = Image.open(saved)
    assert result.size == (96, 80)
    assert result.info["parameters"] == SOURCE_INFOTEXT


@NEEDS_CHROMIUM
def test_click_a_sam_point_and_send_the_mask_to_inpaint(running_studio):
    from playwright.sync_api import expect

    from tests.fixtures.tiny_sam import picture, write_tiny_sam

    url, data_dir = running_studio
    write_tiny_sam(data_dir / "models" / "sam" / "sam_tiny.pth")
    picture(128, 128).save(data_dir / "source.png")
    with _studio_page(url, "tiny-sd1.safetensors") as page:
        page.get_by_role("tab", name="img2img").click()
        page.locator("#img2img_sam_accordion").get_by_text("Segment Anything").click()
        page.locator("#img2img_sam_refresh").click()
        expect(page.locator("#img2img_sam_model input")).to_have_value("sam_tiny.pth", timeout=30_000)
        page.locator("#img2img_sam_input input[type=file]").set_input_files(str(data_dir / "source.png"))
        overlay = page.locator("#img2img_sam_overlay img")
        expect(overlay).to_be_visible(timeout=30_000)
        before = overlay.get_attribute("src")
        # The picture is drawn centred in the element: a click at the element's centre (scrolled into view first)
        # is a point on the picture.
        overlay.click()
        expect(overlay).not_to_have_attribute("src", before, timeout=60_000)  # the mask (and point) drawn
        page.locator("#img2img_sam_send_inpaint").click()
        expect(page.locator("#img2img_inpaint canvas").first).to_be_visible(timeout=30_000)
        page.locator("#img2img_mask_blur input[type=number]").fill("0")
        page.locator("#img2img_width input[type=number]").fill("128")
        page.locator("#img2img_height input[type=number]").fill("128")
        page.locator("#img2img_steps input[type=number]").fill("3")
        page.locator("#img2img_denoising_strength input[type=number]").fill("0.9")
        page.locator("#img2img_generate").click()
        expect(page.locator("#img2img_info")).to_contain_text("Mask blur: 0", timeout=120_000)
    [result] = sorted((data_dir / "outputs" / "img2img-images").rglob("*.png"))
    before = np.asarray(Image.open(data_dir / "source.png").convert("RGB"), dtype=np.int16)
    after = np.asarray(Image.open(result).convert("RGB"), dtype=np.int16)
    changed = np.abs(after - before).max(axis=2) > 0
    assert changed.any()  # SAM's mask arrived as the inpaint mask and was inpainted
