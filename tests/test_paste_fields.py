"""Infotext -> UI fields: PNG Info's "Send to" and the paste button fill every field the text names."""
from __future__ import annotations

import gradio as gr
import torch

from backend.devices import DeviceSettings
from backend.generation.img2img import run_img2img
from backend.generation.job import JobControl
from backend.generation.request import Img2ImgRequest
from ui import paste_fields as pf
from tests.test_img2img import centre_mask, picture

CPU = DeviceSettings(device=torch.device("cpu"), dtype=torch.float32)


def targets():
    with gr.Blocks():
        common = [gr.Textbox(), gr.Textbox(), gr.Dropdown(), gr.Dropdown(), gr.Slider(), gr.Slider(), gr.Number(),
                  gr.Slider(), gr.Slider(), gr.Slider()]
        hires = [gr.Checkbox(), gr.Dropdown(), gr.Slider(), gr.Slider(), gr.Slider(), gr.Slider(), gr.Slider()]
        img2img = [gr.Slider(), gr.Radio(), gr.Slider(), gr.Radio(), gr.Radio(), gr.Radio(), gr.Slider()]
    return pf.common_readers(*common), pf.hires_readers(*hires), pf.img2img_readers(*img2img)


COMMON = ["prompt", "negative", "sampler", "schedule", "steps", "cfg", "seed", "width", "height", "clip_skip"]
HIRES = ["enabled", "upscaler", "steps", "denoise", "scale", "resize_x", "resize_y"]
IMG2IMG = ["denoise", "resize_mode", "mask_blur", "mask_mode", "masked_content", "inpaint_area", "padding"]


def named(names, values) -> dict:
    return {n: v for n, v in zip(names, values) if not isinstance(v, dict)}  # gr.skip() is a dict update


def test_img2img_infotext_round_trips_into_every_field(checkpoint_dir):
    from backend.models.manager import ModelManager

    loaded = ModelManager([checkpoint_dir], CPU).load("sd1.safetensors")
    request = Img2ImgRequest(prompt="a cat, (detailed:1.2)", negative_prompt="blurry, low quality",
                             init_images=[picture((96, 80))], mask=centre_mask((96, 80)), width=72, height=64,
                             steps=3, cfg_scale=6.5, seed=1234, sampler_name="DPM++ 2M", scheduler="Karras",
                             clip_skip=2, denoising_strength=0.45, resize_mode="Crop and resize", mask_blur=9,
                             inpainting_fill="latent noise", inpaint_full_res=True, inpaint_full_res_padding=40,
                             inpainting_mask_invert=True)
    out = run_img2img(loaded, request, JobControl(), device_settings=CPU, prompt=request.prompt,
                      negative_prompt=request.negative_prompt)
    common, _, img2img = targets()
    fields = named(COMMON, pf.paste_values(out.infotexts[0], common))
    assert fields == {"prompt": request.prompt, "negative": request.negative_prompt, "sampler": "DPM++ 2M",
                      "schedule": "Karras", "steps": 3, "cfg": 6.5, "seed": 1234, "width": 72, "height": 64,
                      "clip_skip": 2}
    fields = named(IMG2IMG, pf.paste_values(out.infotexts[0], img2img))
    assert fields == {"denoise": 0.45, "resize_mode": "Crop and resize", "mask_blur": 9,
                      "mask_mode": "Inpaint not masked", "masked_content": "latent noise",
                      "inpaint_area": "Only masked", "padding": 40}


def test_a1111_text_with_old_sampler_names_and_missing_keys_gets_a1111_defaults():
    text = "castle\nSteps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 9, Size: 512x768, Model: x"
    common, hires, img2img = targets()
    fields = named(COMMON, pf.paste_values(text, common))
    assert (fields["sampler"], fields["schedule"], fields["clip_skip"]) == ("DPM++ 2M", "Karras", 1)
    assert fields["negative"] == "" and (fields["width"], fields["height"]) == (512, 768)
    assert named(HIRES, pf.paste_values(text, hires))["enabled"] is False
    defaults = named(IMG2IMG, pf.paste_values(text, img2img))
    assert defaults["mask_mode"] == "Inpaint masked" and defaults["masked_content"] == "original"
    assert defaults["inpaint_area"] == "Whole picture" and defaults["padding"] == 32
    assert "denoise" not in defaults  # not named: the field keeps its value


def test_hires_text_enables_hires_fix():
    text = ("x\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 256x256, Denoising strength: 0.55, "
            "Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent (bicubic)")
    _, hires, _ = targets()
    fields = named(HIRES, pf.paste_values(text, hires))
    assert fields == {"enabled": True, "upscaler": "Latent (bicubic)", "steps": 10, "denoise": 0.55, "scale": 2.0,
                      "resize_x": 0, "resize_y": 0}


def test_empty_text_changes_nothing():
    common, _, _ = targets()
    assert all(isinstance(v, dict) for v in pf.paste_values("", common))


def test_controlnet_units_paste_into_the_unit_tabs_and_others_switch_off():
    from types import SimpleNamespace

    from backend.control.infotext import unit_infotext
    from backend.control.units import ControlUnit
    from backend.images.infotext import format_infotext

    names = ["enabled", "module", "model", "weight", "start", "end", "control_mode", "resize_mode", "pixel_perfect",
             "processor_res", "threshold_a", "threshold_b", "hr_option"]
    with gr.Blocks():
        units = [SimpleNamespace(**{n: gr.Textbox() for n in names}) for _ in range(3)]
    unit = ControlUnit(module="canny", model="control_v11p_sd15_canny [d14c016b]", weight=0.8, threshold_a=90,
                       threshold_b=180, guidance_start=0.25, guidance_end=0.75, control_mode="ControlNet is more important",
                       resize_mode="Resize and Fill", pixel_perfect=True, hr_option="Low res only")
    text = format_infotext("a house", "", {"Steps": 20, "Seed": 3, "Size": "512x512",
                                           "ControlNet 1": unit_infotext(unit, unit.model, 384)})
    values = pf.paste_values(text, pf.control_readers(units))
    per_unit = [dict(zip(names, values[k * len(names):(k + 1) * len(names)])) for k in range(3)]
    assert per_unit[0]["enabled"] is False and per_unit[2]["enabled"] is False
    second = {k: v for k, v in per_unit[1].items() if not isinstance(v, dict)}
    assert second == {"enabled": True, "module": "canny", "model": "control_v11p_sd15_canny [d14c016b]", "weight": 0.8,
                      "start": 0.25, "end": 0.75, "control_mode": "ControlNet is more important",
                      "resize_mode": "Resize and Fill", "pixel_perfect": True, "processor_res": 384,
                      "threshold_a": 90.0, "threshold_b": 180.0, "hr_option": "Low res only"}


def test_variation_seed_resize_and_tiling_are_pasted_and_cleared():
    from types import SimpleNamespace

    with gr.Blocks():
        seeds = SimpleNamespace(extra=gr.Checkbox(), subseed=gr.Number(), subseed_strength=gr.Slider(),
                                resize_w=gr.Slider(), resize_h=gr.Slider())
        tiling = gr.Checkbox()
    target = pf.seed_extra_readers(seeds) + pf.tiling_reader(tiling)
    names = ["extra", "subseed", "strength", "resize_w", "resize_h", "tiling"]
    text = ("a cat\nSteps: 20, Sampler: Euler, Seed: 1, Size: 512x512, Variation seed: 5, "
            "Variation seed strength: 0.3, Seed resize from: 640x384, Tiling: True, Version: x")
    assert named(names, pf.paste_values(text, target)) == {"extra": True, "subseed": 5, "strength": 0.3,
                                                           "resize_w": 640, "resize_h": 384, "tiling": True}
    plain = named(names, pf.paste_values("a cat\nSteps: 20, Seed: 1, Size: 512x512", target))
    assert plain == {"subseed": -1, "strength": 0.0, "resize_w": 0, "resize_h": 0, "tiling": False}  # Extra kept
