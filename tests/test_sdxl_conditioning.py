"""SDXL's size conditioning reaches the UNet's add_time_ids: the picture's size by default (as A1111),
the request's sizes and crop when it sets them, per pass (hires has its own size), in the infotext
only when not default, and read back from it."""
from __future__ import annotations

import numpy as np
import pytest

from backend.app_context import AppPaths, build_app_context
from backend.devices import DeviceSettings
from backend.generation.request import Txt2ImgRequest
from backend.images.infotext import parse_infotext
from backend.sdxl.size_conditioning import SizeConditioning

JOB = dict(prompt="a red ball", negative_prompt="blurry", width=64, height=96, steps=2, seed=5,
           save_images=False, checkpoint="sdxl.safetensors")


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, checkpoint_dir):
    device = DeviceSettings.from_flags(device="cpu", precision="full")
    return build_app_context(AppPaths(root=tmp_path_factory.mktemp("sdxl"), checkpoint_dirs=[checkpoint_dir],
                                      builtin_checkpoints=[]), device)


def _time_ids(ctx, request: Txt2ImgRequest):
    """Each UNet call's time_ids rows (negative first, then positive, with CFG) and the result."""
    unet = ctx.manager.load("sdxl.safetensors").pipe.unet
    seen = []

    def record(module, args, kwargs):
        seen.append(kwargs["added_cond_kwargs"]["time_ids"].float().tolist())

    handle = unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        result = ctx.service.txt2img(request)
    finally:
        handle.remove()
    return seen, result


def test_by_default_the_unet_is_told_the_pictures_size_and_no_crop(ctx):
    seen, result = _time_ids(ctx, Txt2ImgRequest(**JOB))
    assert len(seen) == 2 and all(ids == [[96, 64, 0, 0, 96, 64]] * 2 for ids in seen)
    assert "SDXL" not in result.infotexts[0]  # A1111's infotext for an ordinary picture


def test_the_requests_sizes_reach_the_unet_and_the_infotext(ctx):
    plain = np.asarray(ctx.service.txt2img(Txt2ImgRequest(**JOB)).images[0], dtype=np.int16)
    conditioning = SizeConditioning(original_width=2048, original_height=1536, crop_top=32, crop_left=16,
                                    negative_original_width=512, negative_original_height=512)
    seen, result = _time_ids(ctx, Txt2ImgRequest(**JOB, sdxl_conditioning=conditioning))
    negative, positive = seen[0]
    assert positive == [1536, 2048, 32, 16, 96, 64]
    assert negative == [512, 512, 32, 16, 96, 64]  # negative crop and target follow the positive
    assert np.abs(np.asarray(result.images[0], dtype=np.int16) - plain).mean() > 0.5
    params = parse_infotext(result.infotexts[0])
    assert params["SDXL original size"] == "2048x1536" and params["SDXL crop top-left"] == "32,16"
    assert params["SDXL negative original size"] == "512x512" and "SDXL target size" not in params
    assert SizeConditioning.from_infotext(params) == conditioning


def test_the_hires_pass_is_conditioned_on_its_own_size(ctx):
    hires = {"enabled": True, "upscaler": "Latent", "upscale_by": 2.0, "denoising_strength": 0.6}
    seen, _ = _time_ids(ctx, Txt2ImgRequest(**JOB, hires=hires))
    first, second = seen[0], seen[-1]
    assert first[1] == [96, 64, 0, 0, 96, 64] and second[1] == [192, 128, 0, 0, 192, 128]


def test_the_txt2img_widgets_build_the_request_and_paste_restores_them(ctx):
    import gradio as gr

    from ui import paste_fields as pf
    from ui.app import build_ui
    from ui.sdxl_size import SdxlSizeWidgets, is_sdxl_checkpoint

    assert is_sdxl_checkpoint(ctx, "sdxl.safetensors") and not is_sdxl_checkpoint(ctx, "sd1.safetensors")
    config = build_ui(ctx, allow_folders=False).get_config_file()
    ids = {c.get("props", {}).get("elem_id"): c for c in config["components"]}
    bucket = ids["txt2img_sdxl_bucket"]["props"]
    assert ("1216x832", "1216x832") in [tuple(c) for c in bucket["choices"]] and "txt2img_sdxl_negative_original_width" in ids

    conditioning = SizeConditioning(original_width=2048, original_height=1536, crop_top=32, crop_left=16,
                                    negative_original_width=512, negative_original_height=512)
    infotext = ctx.service.txt2img(Txt2ImgRequest(**JOB, sdxl_conditioning=conditioning)).infotexts[0]
    with gr.Blocks():
        widgets = SdxlSizeWidgets(bucket=gr.Dropdown(), accordion=None, numbers=[gr.Number() for _ in range(10)])
    target = pf.sdxl_size_readers(widgets.numbers, widgets.fields)
    values = pf.paste_values(infotext, target)
    assert SdxlSizeWidgets.request_fields(values)["sdxl_conditioning"] == conditioning
    plain = ctx.service.txt2img(Txt2ImgRequest(**JOB)).infotexts[0]
    assert pf.paste_values(plain, target) == [0] * 10  # a picture without them resets them
