"""The img2img tab's SDXL size widgets: built for the tab, handed to the request, reaching the UNet's
add_time_ids on the SDXL img2img / inpaint pipelines, written in the infotext and pasted back."""
from __future__ import annotations

import gradio as gr
import pytest
from PIL import Image

from backend.app_context import AppPaths, build_app_context
from backend.devices import DeviceSettings
from backend.generation.request import Img2ImgRequest
from backend.images.infotext import parse_infotext
from backend.sdxl.size_conditioning import SizeConditioning

JOB = dict(prompt="a red ball", negative_prompt="blurry", width=64, height=96, steps=4, seed=5,
           denoising_strength=0.5, save_images=False, checkpoint="sdxl.safetensors")
CONDITIONING = SizeConditioning(original_width=2048, original_height=1536, crop_top=32, crop_left=16)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, checkpoint_dir):
    device = DeviceSettings.from_flags(device="cpu", precision="full")
    return build_app_context(AppPaths(root=tmp_path_factory.mktemp("sdxl-img2img"),
                                      checkpoint_dirs=[checkpoint_dir], builtin_checkpoints=[]), device)


def _picture() -> Image.Image:
    image = Image.new("RGB", (64, 96), (40, 90, 200))
    image.paste((230, 40, 40), (8, 8, 40, 50))
    return image


def _time_ids(ctx, generate):
    """Each UNet call's time_ids rows (negative first, then positive, with CFG) and generate()'s result."""
    unet = ctx.manager.load("sdxl.safetensors").pipe.unet
    seen = []

    def record(module, args, kwargs):
        seen.append(kwargs["added_cond_kwargs"]["time_ids"].float().tolist())

    handle = unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        result = generate()
    finally:
        handle.remove()
    return seen, result


def _img2img(ctx, **fields):
    return lambda: ctx.service.img2img(Img2ImgRequest(**JOB, init_images=[_picture()], **fields))


def test_the_img2img_tab_has_the_sdxl_size_widgets(ctx):
    from ui.app import build_ui

    config = build_ui(ctx, allow_folders=False).get_config_file()
    ids = {c.get("props", {}).get("elem_id"): c for c in config["components"]}
    assert {"img2img_sdxl_bucket", "img2img_sdxl_size", "img2img_sdxl_original_width",
            "img2img_sdxl_negative_target_height"} <= set(ids)
    bucket = ids["img2img_sdxl_bucket"]["props"]
    assert ("1216x832", "1216x832") in [tuple(c) for c in bucket["choices"]]


def test_by_default_sdxl_img2img_is_told_the_pictures_size(ctx):
    seen, result = _time_ids(ctx, _img2img(ctx))
    assert seen and all(ids == [[96, 64, 0, 0, 96, 64]] * 2 for ids in seen)
    assert "SDXL" not in result.infotexts[0]


@pytest.mark.parametrize("masked", [False, True], ids=["img2img", "inpaint"])
def test_the_requests_sizes_reach_the_unet_and_the_infotext(ctx, masked):
    mask = Image.new("L", (64, 96), 0)
    mask.paste(255, (16, 16, 48, 80))
    seen, result = _time_ids(ctx, _img2img(ctx, sdxl_conditioning=CONDITIONING, mask=mask if masked else None))
    assert seen and all(ids == [[1536, 2048, 32, 16, 96, 64]] * 2 for ids in seen)  # negative as the positive
    params = parse_infotext(result.infotexts[0])
    assert params["SDXL original size"] == "2048x1536" and params["SDXL crop top-left"] == "32,16"
    assert SizeConditioning.from_infotext(params) == CONDITIONING


def _generate_handler(demo, tab):
    target = (tab.row.generate._id, "click")
    return next(f for f in demo.fns.values() if target in [tuple(t) for t in f.targets])


def test_the_tabs_widgets_build_the_request_and_paste_restores_them(ctx):
    """The tab's own generate handler, widget values in (the slicing of its inputs), the UNet's ids and
    the infotext out; that infotext pasted into the img2img target sets the numbers again."""
    from ui import paste_fields as pf
    from ui.img2img import build_img2img_tab
    from ui.send_to import img2img_target
    from ui.session_jobs import SessionJobs

    with gr.Blocks() as demo:
        checkpoint = gr.Dropdown(choices=["sdxl.safetensors"], value="sdxl.safetensors")
        tab = build_img2img_tab(ctx, SessionJobs(), checkpoint, allow_folders=False)
    assert tab.sdxl.bucket.visible and tab.sdxl.accordion.visible  # an SDXL checkpoint is selected
    run = _generate_handler(demo, tab)
    numbers = dict(zip(tab.sdxl.fields, tab.sdxl.numbers))
    overrides = {tab.row.prompt: "a red ball", tab.row.negative: "blurry", tab.init_image: _picture(),
                 tab.steps: 4, tab.denoise: 0.5, tab.width: 64, tab.height: 96, tab.seed: 5,
                 numbers["original_width"]: 2048, numbers["original_height"]: 1536, numbers["crop_top"]: 32,
                 numbers["crop_left"]: 16}
    values = [overrides.get(component, getattr(component, "value", None)) for component in run.inputs]
    seen, outputs = _time_ids(ctx, lambda: list(run.fn(gr.Request(session_hash="sdxl-img2img"), *values)))
    assert seen and all(ids == [[1536, 2048, 32, 16, 96, 64]] * 2 for ids in seen)
    infotext = outputs[-1][-1][0]
    params = parse_infotext(infotext)
    assert "SDXL original size: 2048x1536" in infotext and params["SDXL crop top-left"] == "32,16"  # quoted

    target = img2img_target(tab)
    readers = [component for component, _ in target]
    assert all(number in readers for number in tab.sdxl.numbers)
    pasted = dict(zip(readers, pf.paste_values(infotext, target)))
    sdxl_values = [pasted[number] for number in tab.sdxl.numbers]
    assert tab.sdxl.request_fields(sdxl_values)["sdxl_conditioning"] == CONDITIONING
    plain = ctx.service.img2img(Img2ImgRequest(**JOB, init_images=[_picture()])).infotexts[0]
    pasted = dict(zip(readers, pf.paste_values(plain, target)))
    assert [pasted[number] for number in tab.sdxl.numbers] == [0] * 10  # a picture without them resets them
