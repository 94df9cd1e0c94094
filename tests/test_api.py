"""The A1111-compatible REST API: request conversion, error answers, and full
txt2img runs on tiny real checkpoints through FastAPI's TestClient."""
from __future__ import annotations

import base64
import io
import json
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import ValidationError

from backend.api import convert
from backend.api.routes import create_api_router
from backend.api.schemas import StableDiffusionTxt2ImgProcessingAPI as ApiTxt2Img
from backend.generation.samplers import SAMPLER_NAMES, SCHEDULE_TYPES, schedule_types_for
from backend.settings import Options


def to_request(options: Options | None = None, **payload):
    return convert.to_txt2img_request(ApiTxt2Img.model_validate(payload), options or Options())


def refused_fields(options: Options | None = None, **payload) -> list[str]:
    with pytest.raises(convert.ApiFieldError) as info:
        to_request(options, **payload)
    return [field for field, _ in info.value.problems]


def decode_png(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.format == "PNG"
    image.load()
    return image


# --- conversion, no model needed ------------------------------------------------

def test_empty_payload_gets_a1111_api_defaults():
    req = to_request()
    assert (req.steps, req.sampler_name, req.scheduler) == (50, "Euler", "Automatic")
    assert (req.width, req.height, req.cfg_scale, req.seed) == (512, 512, 7.0, -1)
    assert req.save_images is False  # A1111's API saves only when asked
    assert req.checkpoint is None and not req.hires.enabled


def test_null_fields_mean_defaults():
    req = to_request(prompt=None, steps=None, width=None, styles=None, override_settings=None,
                     sampler_name=None, scheduler=None, restore_faces=None, s_noise=None)
    assert (req.prompt, req.steps, req.width, req.styles) == ("", 50, 512, [])


def test_fields_are_mapped():
    req = to_request(prompt="a cat", negative_prompt="blurry", styles=["s1"], seed=42, steps=3,
                     cfg_scale=5.5, width=64, height=128, batch_size=2, n_iter=3,
                     sampler_name="DPM++ 2M", scheduler="karras", save_images=True)
    assert (req.prompt, req.negative_prompt, req.styles) == ("a cat", "blurry", ["s1"])
    assert (req.seed, req.steps, req.cfg_scale, req.width, req.height) == (42, 3, 5.5, 64, 128)
    assert (req.batch_size, req.n_iter, req.save_images) == (2, 3, True)
    assert (req.sampler_name, req.scheduler) == ("DPM++ 2M", "Karras")


def test_sampler_index_is_used_when_sampler_name_is_missing_and_aliases_resolve():
    assert to_request(sampler_index="Euler a").sampler_name == "Euler a"
    assert to_request(sampler_name="k_euler_a").sampler_name == "Euler a"
    assert to_request(sampler_name="Euler", sampler_index="DDIM").sampler_name == "Euler"


def test_legacy_combined_sampler_names_set_the_schedule_type():
    req = to_request(sampler_name="DPM++ 2M Karras")
    assert (req.sampler_name, req.scheduler) == ("DPM++ 2M", "Karras")
    req = to_request(sampler_name="DPM++ 2M Karras", scheduler="exponential")  # explicit wins
    assert (req.sampler_name, req.scheduler) == ("DPM++ 2M", "Exponential")


def test_sampler_that_cannot_use_the_schedule_type_is_refused_naming_scheduler():
    sampler, schedule = next((s, t) for s in SAMPLER_NAMES for t in SCHEDULE_TYPES
                             if t not in schedule_types_for(s))
    assert refused_fields(sampler_name=sampler, scheduler=convert.scheduler_api_name(schedule)) == ["scheduler"]


@pytest.mark.parametrize("label", SCHEDULE_TYPES)
def test_schedule_types_accept_label_and_api_name(label):
    assert to_request(scheduler=label).scheduler == label
    assert to_request(scheduler=convert.scheduler_api_name(label)).scheduler == label
    assert to_request(scheduler=label.upper()).scheduler == label


def test_a1111_lowercase_scheduler_names():
    for api_name, label in [("automatic", "Automatic"), ("karras", "Karras"),
                            ("exponential", "Exponential"), ("sgm_uniform", "SGM Uniform"),
                            ("uniform", "Uniform")]:
        if label in SCHEDULE_TYPES:
            assert to_request(scheduler=api_name).scheduler == label


def test_hires_fields_become_hires_fix():
    req = to_request(width=64, height=64, enable_hr=True, hr_scale=1.5, hr_upscaler="Latent (nearest)",
                     hr_second_pass_steps=4, denoising_strength=0.4, hr_resize_x=0)
    h = req.hires
    assert (h.enabled, h.upscale_by, h.upscaler, h.steps, h.denoising_strength) == \
        (True, 1.5, "Latent (nearest)", 4, 0.4)
    # A1111 ignores hr_* while enable_hr is off; so do we, even odd values.
    assert not to_request(hr_upscaler="4x-UltraSharp", hr_prompt="other").hires.enabled
    # The "same as first pass" markers and equal values are fine.
    req = to_request(prompt="p", enable_hr=True, hr_sampler_name="Use same sampler",
                     hr_checkpoint_name="Use same checkpoint", hr_scheduler="Use same scheduler",
                     hr_prompt="p", width=64, height=64)
    assert req.hires.enabled


def test_override_checkpoint_is_per_request_and_options_stay():
    options = Options(sd_model_checkpoint="a.safetensors [0123456789]")
    req = to_request(options, override_settings={"sd_model_checkpoint": "b.safetensors",
                                                 "CLIP_stop_at_last_layers": 2})
    assert (req.checkpoint, req.clip_skip) == ("b.safetensors", 2)
    assert options.sd_model_checkpoint == "a.safetensors [0123456789]"
    assert to_request(Options(CLIP_stop_at_last_layers=3)).clip_skip == 3


def test_override_of_other_options_only_when_it_changes_nothing():
    assert to_request(override_settings={"samples_format": "png"})  # equal to current: harmless
    assert refused_fields(override_settings={"samples_format": "jpg"}) == ["override_settings.samples_format"]
    assert refused_fields(override_settings={"no_such_option": 1}) == ["override_settings.no_such_option"]


def test_harmless_fields_are_ignored():
    req = to_request(eta=0.3, comments={"x": 1}, do_not_save_grid=True, do_not_save_samples=True,
                     firstphase_width=256, force_task_id="task(1)", subseed=1234, s_noise=1.0,
                     s_churn=0, s_tmax=0, s_tmin=0.0, s_min_uncond=0, refiner_checkpoint="None",
                     script_args=[1, 2], override_settings_restore_afterwards=False,
                     seed_resize_from_h=-1, seed_resize_from_w=0, disable_extra_networks=True)
    assert req.steps == 50


@pytest.mark.parametrize("field, value", [
    ("restore_faces", True), ("tiling", True), ("subseed_strength", 0.5),
    ("seed_resize_from_h", 256), ("s_churn", 0.5), ("s_noise", 1.003), ("s_tmin", 0.1),
    ("refiner_checkpoint", "refiner.safetensors"), ("firstpass_image", "aGk="),
    ("script_name", "x/y/z plot"),
])
def test_fields_we_cannot_honour_are_refused_by_name(field, value):
    assert refused_fields(**{field: value}) == [field]


def test_refused_hires_and_scripts_fields_are_named():
    assert refused_fields(alwayson_scripts={"ADetailer": {"args": []}}) == ["alwayson_scripts.ADetailer"]
    assert refused_fields(prompt="<lora:x:1>", disable_extra_networks=True) == ["disable_extra_networks"]
    fields = refused_fields(enable_hr=True, width=64, height=64, hr_prompt="other", hr_negative_prompt="n",
                            hr_checkpoint_name="other.safetensors",
                            hr_sampler_name=next(s for s in SAMPLER_NAMES if s != "Euler"))
    assert sorted(fields) == ["hr_checkpoint_name", "hr_negative_prompt", "hr_prompt", "hr_sampler_name"]


@pytest.mark.parametrize("payload, field", [
    ({"width": 500}, "width"), ({"height": 65}, "height"), ({"steps": 0}, "steps"),
    ({"sampler_name": "no such sampler"}, "sampler_name"),
    ({"sampler_index": "no such sampler"}, "sampler_index"),
    ({"scheduler": "no such schedule"}, "scheduler"),
    ({"seed": -5}, "seed"), ({"batch_size": 0}, "batch_size"),
    ({"enable_hr": True, "hr_second_pass_steps": -1}, "hr_second_pass_steps"),
    ({"enable_hr": True, "hr_upscaler": "No Such Upscaler"}, "hr_upscaler"),
    ({"enable_hr": True, "denoising_strength": 1.5}, "denoising_strength"),
    ({"override_settings": {"CLIP_stop_at_last_layers": 99}}, "override_settings.CLIP_stop_at_last_layers"),
])
def test_bad_values_are_refused_naming_the_a1111_field(payload, field):
    with pytest.raises(convert.ApiFieldError) as info:
        to_request(**payload)
    assert [f for f, _ in info.value.problems] == [field]
    assert str(info.value).startswith(f"{field}: ")


def test_unknown_fields_are_refused():
    with pytest.raises(ValidationError) as info:
        ApiTxt2Img.model_validate({"prompt": "x", "negative_promt": "typo"})
    assert "negative_promt" in str(info.value)


def test_infotext_fills_only_the_unset_fields():
    infotext = ("a cat\nNegative prompt: blurry\n"
                "Steps: 7, Sampler: Euler a, Schedule type: Karras, CFG scale: 4.5, Seed: 99, "
                "Size: 64x128, Clip skip: 2")
    req = to_request(infotext=infotext, steps=3)
    assert (req.prompt, req.negative_prompt, req.steps, req.sampler_name) == ("a cat", "blurry", 3, "Euler a")
    assert (req.scheduler, req.cfg_scale, req.seed, req.width, req.height, req.clip_skip) == \
        ("Karras", 4.5, 99, 64, 128, 2)


def test_png_keeps_the_infotext_chunk():
    image = Image.new("RGB", (16, 8), (10, 20, 30))
    text = 'a "cat", ünïcode\nNegative prompt: x\nSteps: 1, Sampler: Euler, Seed: 5, Size: 16x8'
    decoded = decode_png(convert.encode_png_base64(image, text))
    assert decoded.info["parameters"] == text
    assert decoded.tobytes() == image.tobytes()


# --- routes with a stand-in context: error mapping without a model --------------

class _FailingService:
    calls = 0

    def txt2img(self, request, job=None):
        self.calls += 1
        raise RuntimeError("out of cheese")


def _fake_client(service) -> TestClient:
    ctx = SimpleNamespace(options=SimpleNamespace(options=Options()), service=service, manager=None)
    app = FastAPI()
    app.include_router(create_api_router(ctx), prefix="/sdapi/v1")
    return TestClient(app, raise_server_exceptions=False)


def test_unexpected_error_is_500_with_message_and_server_keeps_working():
    service = _FailingService()
    client = _fake_client(service)
    for _ in range(2):
        r = client.post("/sdapi/v1/txt2img", json={"steps": 1, "width": 64, "height": 64})
        assert r.status_code == 500
        assert "out of cheese" in r.json()["detail"]
    assert service.calls == 2
    assert client.get("/sdapi/v1/samplers").status_code == 200


def test_request_errors_are_422_with_a_string_detail_naming_the_field():
    service = _FailingService()
    client = _fake_client(service)
    r = client.post("/sdapi/v1/txt2img", json={"width": "wide"})  # fails schema parsing
    assert r.status_code == 422 and r.json()["detail"].startswith("width: ")
    r = client.post("/sdapi/v1/txt2img", json={"stepz": 3})
    assert r.status_code == 422 and "stepz" in r.json()["detail"]
    r = client.post("/sdapi/v1/txt2img", json={"width": 500})
    assert r.status_code == 422 and r.json()["detail"].startswith("width: ")
    assert r.json()["errors"][0]["field"] == "width"
    assert service.calls == 0


def test_samplers_and_schedulers_list_everything():
    client = _fake_client(_FailingService())
    samplers = client.get("/sdapi/v1/samplers").json()
    assert [s["name"] for s in samplers] == list(SAMPLER_NAMES)
    assert all(isinstance(s["aliases"], list) and isinstance(s["options"], dict) for s in samplers)
    schedulers = client.get("/sdapi/v1/schedulers").json()
    assert [s["label"] for s in schedulers] == list(SCHEDULE_TYPES)
    assert {"name": "automatic", "label": "Automatic"}.items() <= schedulers[0].items()
