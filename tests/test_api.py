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
from backend.generation.samplers import BUILTIN_SAMPLERS, SAMPLER_NAMES, SCHEDULE_TYPES, schedule_types_for
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


def test_tiling_and_the_extra_seed_fields_reach_the_request():
    req = to_request(tiling=True, subseed=5, subseed_strength=0.3, seed_resize_from_w=512, seed_resize_from_h=256)
    assert (req.tiling, req.subseed, req.subseed_strength) == (True, 5, 0.3)
    assert (req.seed_resize_from_w, req.seed_resize_from_h) == (512, 256)
    off = to_request(seed_resize_from_w=-1, seed_resize_from_h=-1)  # A1111's "off"
    assert (off.seed_resize_from_w, off.seed_resize_from_h, off.tiling, off.restore_faces) == (0, 0, False, False)
    # null = the setting, as A1111; an explicit value beats override_settings
    assert to_request(Options(tiling=True, face_restoration=True)).tiling is True
    assert to_request(Options(face_restoration=True)).restore_faces is True
    assert to_request(override_settings={"tiling": True}).tiling is True
    assert to_request(tiling=False, override_settings={"tiling": True}).tiling is False
    faces = to_request(override_settings={"face_restoration_model": "GFPGAN", "code_former_weight": 0.8})
    assert (faces.face_restoration_model, faces.code_former_weight) == ("GFPGAN", 0.8)


@pytest.mark.parametrize("field, value", [
    ("s_churn", 0.5), ("s_noise", 1.003), ("s_tmin", 0.1),
    ("firstpass_image", "aGk="),
    ("script_name", "x/y/z plot"),
])
def test_fields_we_cannot_honour_are_refused_by_name(field, value):
    assert refused_fields(**{field: value}) == [field]


def test_the_refiner_fields_reach_the_request():
    req = to_request(refiner_checkpoint="refiner.safetensors", refiner_switch_at=0.7)
    assert (req.refiner.checkpoint, req.refiner.switch_at, req.refiner.enabled) == ("refiner.safetensors", 0.7, True)
    assert to_request(refiner_checkpoint="refiner.safetensors").refiner.switch_at == 0.8  # A1111's default
    assert not to_request(refiner_checkpoint="None", refiner_switch_at=0.5).refiner.enabled
    assert refused_fields(refiner_checkpoint="refiner.safetensors", refiner_switch_at=1.5) == ["refiner_switch_at"]


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
    samplers = BUILTIN_SAMPLERS
    request_context = {"samplers": BUILTIN_SAMPLERS}

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


def test_generation_runs_off_the_event_loop():
    """A blocking txt2img must not stop other requests from being answered."""
    import asyncio
    import threading

    import httpx

    release = threading.Event()

    class SlowService:
        samplers = BUILTIN_SAMPLERS
        request_context = {"samplers": BUILTIN_SAMPLERS}

        def txt2img(self, request, job=None):
            assert release.wait(10)
            image = Image.new("RGB", (8, 8))
            return SimpleNamespace(images=[image], infotexts=["x\nSteps: 1, Seed: 1, Size: 8x8"], seeds=[1],
                                   info={}, interrupted=False)

    ctx = SimpleNamespace(options=SimpleNamespace(options=Options()), service=SlowService(), manager=None)
    app = FastAPI()
    app.include_router(create_api_router(ctx), prefix="/sdapi/v1")

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            slow = asyncio.create_task(client.post("/sdapi/v1/txt2img", json={"width": 64, "height": 64}))
            await asyncio.sleep(0.1)
            quick = await asyncio.wait_for(client.get("/sdapi/v1/samplers"), 5)
            assert quick.status_code == 200 and not slow.done()
            release.set()
            response = await asyncio.wait_for(slow, 10)
            assert response.status_code == 200 and len(response.json()["images"]) == 1

    asyncio.run(scenario())


# --- end to end on tiny real checkpoints ------------------------------------------

API = "/sdapi/v1"
SMALL = {"prompt": "a tiny cat", "negative_prompt": "blurry", "steps": 2, "width": 64, "height": 64,
         "cfg_scale": 5, "sampler_name": "Euler a"}


@pytest.fixture
def ctx(app_context):
    return app_context


@pytest.fixture
def client(ctx) -> TestClient:
    app = FastAPI()
    app.include_router(create_api_router(ctx), prefix=API)
    client = TestClient(app, raise_server_exceptions=False)
    r = client.post(f"{API}/options", json={"sd_model_checkpoint": "sd1.safetensors"})
    assert r.status_code == 200, r.text
    return client


def txt2img(client, **payload) -> dict:
    r = client.post(f"{API}/txt2img", json={**SMALL, **payload})
    assert r.status_code == 200, r.text
    return r.json()


def test_txt2img_returns_pngs_whose_parameters_chunk_is_the_infotext(client):
    body = txt2img(client, seed=123, batch_size=2)
    info = json.loads(body["info"])
    assert info["all_seeds"] == [123, 124] and info["seed"] == 123
    assert len(body["images"]) == 2 == len(info["infotexts"])
    for b64, infotext in zip(body["images"], info["infotexts"]):
        image = decode_png(b64)
        assert image.size == (64, 64)
        assert image.info["parameters"] == infotext
    assert "Seed: 124" in info["infotexts"][1] and "Model: sd1," in info["infotexts"][0]
    assert info["infotexts"][0].startswith("a tiny cat\nNegative prompt: blurry\nSteps: 2, Sampler: Euler a")
    assert body["parameters"]["prompt"] == "a tiny cat" and body["parameters"]["seed"] == 123


def test_same_seed_gives_identical_bytes_and_another_seed_differs(client):
    first = txt2img(client, seed=7)["images"][0]
    assert txt2img(client, seed=7)["images"][0] == first
    assert decode_png(txt2img(client, seed=8)["images"][0]).tobytes() != decode_png(first).tobytes()


def test_random_seed_is_reported_in_info(client):
    body = txt2img(client, seed=-1)
    seed = json.loads(body["info"])["seed"]
    assert seed >= 0
    assert decode_png(body["images"][0]).tobytes() == decode_png(txt2img(client, seed=seed)["images"][0]).tobytes()


def test_override_checkpoint_is_used_for_one_request_only(client, ctx):
    selected = client.get(f"{API}/options").json()["sd_model_checkpoint"]
    assert selected.startswith("sd1.safetensors [")
    base = txt2img(client, seed=5)
    other = txt2img(client, seed=5, override_settings={"sd_model_checkpoint": "sd1-other"},
                    override_settings_restore_afterwards=False)
    other_infotext = json.loads(other["info"])["infotexts"][0]
    assert "Model: sd1-other," in other_infotext
    assert decode_png(other["images"][0]).tobytes() != decode_png(base["images"][0]).tobytes()
    assert client.get(f"{API}/options").json()["sd_model_checkpoint"] == selected
    assert ctx.options.options.sd_model_checkpoint == selected
    again = txt2img(client, seed=5)  # the next plain request is back on the selected model
    assert again["images"][0] == base["images"][0]


def test_unknown_checkpoint_is_4xx_naming_it(client):
    r = client.post(f"{API}/txt2img", json={**SMALL, "override_settings": {"sd_model_checkpoint": "nope-42"}})
    assert 400 <= r.status_code < 500 and "nope-42" in r.json()["detail"]
    before = client.get(f"{API}/options").json()["sd_model_checkpoint"]
    r = client.post(f"{API}/options", json={"sd_model_checkpoint": "nope-42"})
    assert 400 <= r.status_code < 500 and "nope-42" in r.json()["detail"]
    assert client.get(f"{API}/options").json()["sd_model_checkpoint"] == before


def test_checkpoint_that_fails_to_load_is_4xx_and_selection_stays(client, ctx, tmp_path):
    broken_dir = tmp_path / "more-models"
    broken_dir.mkdir()
    (broken_dir / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    ctx.manager.checkpoint_dirs.append(broken_dir)
    assert client.post(f"{API}/refresh-checkpoints").status_code == 200
    before = client.get(f"{API}/options").json()["sd_model_checkpoint"]
    r = client.post(f"{API}/options", json={"sd_model_checkpoint": "broken.safetensors"})
    assert 400 <= r.status_code < 500 and "broken" in r.json()["detail"]
    assert client.get(f"{API}/options").json()["sd_model_checkpoint"] == before
    assert txt2img(client, seed=1)["images"]  # the previous model keeps serving


def test_inpainting_checkpoint_does_txt2img_as_in_a1111(client):
    r = client.post(f"{API}/txt2img", json={**SMALL, "override_settings": {"sd_model_checkpoint": "sd1-inpainting"}})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["is_using_inpainting_conditioning"] is True and info["sd_model_name"] == "sd1-inpainting"


@pytest.mark.parametrize("payload, field", [
    ({"width": 500}, "width"), ({"steps": 0}, "steps"), ({"sampler_name": "k_nonsense"}, "sampler_name"),
])
def test_bad_requests_are_422_naming_the_field(client, payload, field):
    r = client.post(f"{API}/txt2img", json={**SMALL, **payload})
    assert r.status_code == 422
    assert r.json()["detail"].startswith(f"{field}: ")


def test_hires_fix_through_the_api(client):
    body = txt2img(client, seed=3, enable_hr=True, hr_scale=1.5, hr_upscaler="Latent",
                   hr_second_pass_steps=1, denoising_strength=0.5)
    image = decode_png(body["images"][0])
    assert image.size == (96, 96)
    assert "Hires upscale: 1.5" in image.info["parameters"]
    assert "Denoising strength: 0.5" in image.info["parameters"]


def test_send_images_false_and_save_images(client, ctx):
    body = txt2img(client, seed=1, send_images=False)
    assert body["images"] == [] and json.loads(body["info"])["all_seeds"] == [1]
    assert not list(ctx.root.rglob("*.png"))  # the API saves only when asked
    txt2img(client, seed=1, save_images=True)
    saved = list(ctx.root.rglob("*.png"))
    assert len(saved) == 1
    assert "Seed: 1," in Image.open(saved[0]).info["parameters"]


def test_options_get_and_set(client):
    options = client.get(f"{API}/options").json()
    assert options["samples_format"] == "png"
    assert client.post(f"{API}/options", json={"samples_format": "jpg", "sd_checkpoints_limit": 2}).status_code == 200
    options = client.get(f"{API}/options").json()
    assert (options["samples_format"], options["sd_checkpoints_limit"]) == ("jpg", 2)


def test_options_refuse_unknown_keys_bad_values_and_paths(client):
    before = client.get(f"{API}/options").json()
    r = client.post(f"{API}/options", json={"samples_format": "jpg", "no_such_option": 1})
    assert r.status_code == 422 and "no_such_option" in r.json()["detail"]
    r = client.post(f"{API}/options", json={"jpeg_quality": 1000})
    assert r.status_code == 422 and r.json()["detail"].startswith("jpeg_quality: ")
    r = client.post(f"{API}/options", json={"outdir_txt2img_samples": "/etc"})
    assert r.status_code == 403 and "outdir_txt2img_samples" in r.json()["detail"]
    assert client.get(f"{API}/options").json() == before


def test_sd_models_lists_titles_and_hashes(client, checkpoint_dir):
    import hashlib

    models = {m["model_name"]: m for m in client.get(f"{API}/sd-models").json()}
    assert {"sd1", "sd1-other", "sd2-v", "sdxl"} <= set(models)
    sd1 = models["sd1"]  # selected above, so loaded and hashed
    sha = hashlib.sha256((checkpoint_dir / "sd1.safetensors").read_bytes()).hexdigest()
    assert (sd1["sha256"], sd1["hash"]) == (sha, sha[:10])
    assert sd1["title"] == f"sd1.safetensors [{sha[:10]}]"
    assert sd1["filename"].endswith("sd1.safetensors")
    for m in models.values():
        assert m["hash"] is None or m["hash"] == m["sha256"][:10]
        assert m["title"].startswith(m["model_name"])


def test_refresh_checkpoints_finds_new_files(client, ctx, tmp_path, tiny_sd1_file):
    import shutil

    extra = tmp_path / "new-models"
    extra.mkdir()
    shutil.copy(tiny_sd1_file, extra / "fresh.safetensors")
    ctx.manager.checkpoint_dirs.append(extra)
    assert "fresh" not in [m["model_name"] for m in client.get(f"{API}/sd-models").json()]
    assert client.post(f"{API}/refresh-checkpoints").status_code == 200
    assert "fresh" in [m["model_name"] for m in client.get(f"{API}/sd-models").json()]
