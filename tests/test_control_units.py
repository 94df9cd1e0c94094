"""ControlNet units: sd-webui-controlnet's API payloads -> ControlUnit, the infotext round trip, Pixel Perfect."""
from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from backend.api import convert
from backend.api.controlnet_units import UnitError, units_from_api
from backend.api.schemas import StableDiffusionTxt2ImgProcessingAPI as ApiTxt2Img
from backend.control.infotext import unit_infotext, units_from_infotext
from backend.control.units import ControlUnit, pixel_perfect_resolution
from backend.images.infotext import format_infotext, parse_infotext
from backend.images.loading import base64_payload, open_image
from backend.settings import Options


def b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


PICTURE = Image.new("RGB", (32, 24), (200, 10, 10))


def opener(data: str, what: str) -> Image.Image:
    return open_image(base64_payload(data, what), what)


def webuiapi_unit(**changes) -> dict:
    """What webuiapi 0.9.17's ControlNetUnit(...).to_dict() sends (its defaults)."""
    unit = {"image": b64(PICTURE), "mask": None, "module": "canny", "model": "control_v11p_sd15_canny [d14c016b]",
            "weight": 1.0, "resize_mode": "Resize and Fill", "low_vram": False, "processor_res": 512,
            "threshold_a": 64, "threshold_b": 64, "guidance_start": 0.0, "guidance_end": 1.0,
            "control_mode": "Balanced", "pixel_perfect": False, "hr_option": "Both", "enabled": True}
    unit.update(changes)
    return unit


def test_webuiapi_unit_maps_field_by_field():
    [unit] = units_from_api({"ControlNet": {"args": [webuiapi_unit(weight=0.6, guidance_end=0.8)]}}, opener)
    assert (unit.module, unit.model, unit.weight) == ("canny", "control_v11p_sd15_canny [d14c016b]", 0.6)
    assert (unit.resize_mode, unit.processor_res, unit.threshold_a, unit.threshold_b) == ("Resize and Fill", 512, 64, 64)
    assert (unit.guidance_start, unit.guidance_end, unit.control_mode) == (0.0, 0.8, "Balanced")
    assert unit.image.size == (32, 24) and unit.image.getpixel((0, 0)) == (200, 10, 10)
    assert unit.mask is None


def test_script_key_in_any_case_and_legacy_fields():
    legacy = {"input_image": b64(PICTURE), "module": "depth", "model": "d", "lowvram": True, "guidance": 0.5,
              "guessmode": True, "resize_mode": 0}
    [unit] = units_from_api({"controlnet": {"args": [legacy]}}, opener)
    assert unit.image is not None and unit.low_vram
    assert unit.guidance_end == 0.5
    assert unit.control_mode == "ControlNet is more important"  # what Guess Mode became
    assert unit.resize_mode == "Just Resize"


def test_numbers_and_names_for_modes():
    units = units_from_api({"CONTROLNET": {"args": [
        webuiapi_unit(resize_mode=1, control_mode=2), webuiapi_unit(resize_mode="just resize", control_mode="1"),
        webuiapi_unit(resize_mode="Envelope (Outer Fit)", control_mode="My prompt is more important")]}}, opener)
    assert [u.resize_mode for u in units] == ["Crop and Resize", "Just Resize", "Resize and Fill"]
    assert [u.control_mode for u in units] == ["ControlNet is more important", "My prompt is more important",
                                               "My prompt is more important"]


def test_image_and_mask_as_one_object():
    unit_payload = webuiapi_unit(image={"image": b64(PICTURE), "mask": b64(Image.new("L", (32, 24), 255))})
    [unit] = units_from_api({"ControlNet": {"args": [unit_payload]}}, opener)
    assert unit.image.size == (32, 24) and unit.mask is not None


def test_skipped_units_keep_their_number():
    units = units_from_api({"ControlNet": {"args": [webuiapi_unit(enabled=False), webuiapi_unit(model="None"),
                                                    webuiapi_unit(module="depth"), {}]}}, opener)
    assert [u.used for u in units] == [False, False, True]  # trailing skipped ones dropped
    assert units[2].module == "depth"
    assert units_from_api({"ControlNet": {"args": []}}, opener) == []
    assert units_from_api({}, opener) == []


def test_bad_units_name_the_field():
    with pytest.raises(UnitError) as info:
        units_from_api({"ControlNet": {"args": [webuiapi_unit(), webuiapi_unit(guidance_start=0.9, guidance_end=0.2),
                                                webuiapi_unit(control_mode=7), webuiapi_unit(image="!!notbase64")]}},
                       opener)
    fields = [field for field, _ in info.value.problems]
    assert fields == ["alwayson_scripts.ControlNet.args.1", "alwayson_scripts.ControlNet.args.2.control_mode",
                      "alwayson_scripts.ControlNet.args.3.image"]
    assert "guidance_start" in info.value.problems[0][1]


def test_txt2img_payload_carries_units_and_other_scripts_stay_refused():
    payload = {"prompt": "a cat", "alwayson_scripts": {"ControlNet": {"args": [webuiapi_unit()]}}}
    req = convert.to_txt2img_request(ApiTxt2Img.model_validate(payload), Options())
    assert [u.module for u in req.controlnet_units] == ["canny"]
    with pytest.raises(convert.ApiFieldError) as info:
        convert.to_txt2img_request(ApiTxt2Img.model_validate(
            {"alwayson_scripts": {"ControlNet": {"args": []}, "ADetailer": {"args": []}}}), Options())
    assert [f for f, _ in info.value.problems] == ["alwayson_scripts.ADetailer"]


def test_infotext_round_trip_as_sd_webui_controlnet_writes_it():
    unit = ControlUnit(module="canny", model="control_v11p_sd15_canny [d14c016b]", weight=0.75,
                       threshold_a=100, threshold_b=200, guidance_start=0.1, guidance_end=0.9,
                       control_mode="My prompt is more important", resize_mode="Just Resize", pixel_perfect=True)
    value = unit_infotext(unit, unit.model, processor_res=512)
    assert value == ("Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 0.75, Resize Mode: Just Resize, "
                     "Processor Res: 512, Threshold A: 100, Threshold B: 200, Guidance Start: 0.1, Guidance End: 0.9, "
                     "Pixel Perfect: True, Control Mode: My prompt is more important")
    text = format_infotext("a cat", "", {"Steps": 20, "Seed": 1, "ControlNet 0": value, "Version": "x"})
    assert 'ControlNet 0: "Module: canny, Model:' in text  # quoted, as its commas and colons require
    back = units_from_infotext(parse_infotext(text))[0]
    assert back.model_dump(exclude={"image", "mask", "more_images", "processor_res"}) == \
        unit.model_dump(exclude={"image", "mask", "more_images", "processor_res"})
    assert back.processor_res == 512


def test_infotext_from_sd_webui_controlnet_itself():
    text = ('a house\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x512, '
            'ControlNet 0: "Module: depth_midas, Model: control_v11f1p_sd15_depth [cfd03158], Weight: 1, '
            'Resize Mode: Crop and Resize, Processor Res: 512, Threshold A: 0.5, Threshold B: 0.5, '
            'Guidance Start: 0, Guidance End: 1, Pixel Perfect: False, Control Mode: Balanced, Hr Option: Both", '
            'ControlNet 1: "Module: none, Model: control_v11p_sd15_scribble [d4ba51ff], Weight: 0.5, '
            'Resize Mode: Just Resize, Processor Res: 512, Threshold A: 0.5, Threshold B: 0.5, Guidance Start: 0.2, '
            'Guidance End: 0.8, Pixel Perfect: True, Control Mode: ControlNet is more important"')
    units = units_from_infotext(parse_infotext(text))
    assert units[0].module == "depth_midas" and units[0].model == "control_v11f1p_sd15_depth [cfd03158]"
    assert (units[1].weight, units[1].guidance_start, units[1].guidance_end) == (0.5, 0.2, 0.8)
    assert units[1].pixel_perfect and units[1].control_mode == "ControlNet is more important"


def test_start_after_end_is_refused():
    with pytest.raises(ValueError, match="guidance_start"):
        ControlUnit(guidance_start=0.7, guidance_end=0.3)


def test_active_window_follows_diffusers_rule():
    unit = ControlUnit(guidance_start=0.5, guidance_end=1.0)
    assert [unit.active_at(i, 10) for i in range(10)] == [False] * 5 + [True] * 5
    unit = ControlUnit(guidance_start=0.0, guidance_end=0.3)
    assert [unit.active_at(i, 10) for i in range(10)] == [True] * 3 + [False] * 7


def test_pixel_perfect_resolution():
    # A 1000x500 picture made into 512x512: crop covers (outer fit) -> the short side becomes 512.
    assert pixel_perfect_resolution((1000, 500), (512, 512), "Crop and Resize") == 512
    # Resize and Fill fits inside: the long side becomes 512, the short one 256.
    assert pixel_perfect_resolution((1000, 500), (512, 512), "Resize and Fill") == 256
    assert pixel_perfect_resolution((256, 256), (768, 512), "Just Resize") == 768


def test_soft_weights_are_sd_webui_controlnets():
    from backend.control.controlled_unet import ActiveUnit

    def scales(mode, count):
        return ActiveUnit(unit=ControlUnit(weight=0.5, control_mode=mode), model=None, maps=[]).residual_scales(count)

    assert scales("Balanced", 13) == [0.5] * 13
    soft = scales("My prompt is more important", 13)
    assert soft[-1] == 0.5 and abs(soft[0] - 0.5 * 0.825 ** 12) < 1e-12
    assert scales("ControlNet is more important", 13) == soft
    assert scales("My prompt is more important", 10) == soft[:10]  # SDXL: the first 10 of the same list
