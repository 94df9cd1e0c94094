"""POST /v1/sdxl1.0-txt2img: Segmind's hosted SDXL body, mapped onto the studio's request and run on tiny
real checkpoints; the same values through /sdapi/v1/txt2img give the same pixels."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from backend.api import hosted_sdxl
from backend.api.hosted_sdxl import HostedSdxlTxt2Img, create_hosted_sdxl_router
from backend.api.routes import create_api_router
from backend.app_context import AppPaths, build_app_context
from backend.devices import DeviceSettings
from backend.generation.request import Txt2ImgRequest
from backend.generation.samplers import BUILTIN_SAMPLERS
from tests.fixtures.tiny_checkpoints import TinySpec, write_checkpoint

URL = "/v1/sdxl1.0-txt2img"
CPU = DeviceSettings.from_flags(device="cpu", precision="full")
STYLES_CSV = ('name,prompt,negative_prompt\n'
              '3d model,"3d model of {prompt}, octane render","flat, sketch"\n'
              'Cinematic,"cinematic still of {prompt}","cartoon"\n')

# The seed document's body (the hosted API's own example), made small enough for tiny models and run
# without the refiner (its generation is tested elsewhere; here only the mapping is).
SEED_BODY = {
    "prompt": "cinematic film still of a panda wearing a blue spacesuit, sitting in a bar",
    "negative_prompt": "ugly, tiling, poorly drawn hands, blurry",
    "style": "base", "samples": 1, "scheduler": "UniPC", "num_inference_steps": 2, "guidance_scale": 8,
    "strength": 0.2, "high_noise_fraction": 0.8, "seed": 468685, "img_width": 64, "img_height": 96,
    "refiner": False, "base64": False,
}
# The /sdapi/v1/txt2img payload that asks for the same picture.
A1111_BODY = {"prompt": SEED_BODY["prompt"], "negative_prompt": SEED_BODY["negative_prompt"], "seed": 468685,
              "steps": 2, "cfg_scale": 8, "sampler_name": "UniPC", "width": 64, "height": 96}


def _context(root, checkpoint_dirs):
    root.mkdir(parents=True, exist_ok=True)
    (root / "styles.csv").write_text(STYLES_CSV, encoding="utf-8")
    return build_app_context(AppPaths(root=root, checkpoint_dirs=checkpoint_dirs, builtin_checkpoints=[]), CPU)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, checkpoint_dir):
    return _context(tmp_path_factory.mktemp("hosted"), [checkpoint_dir])


def _client(ctx, credentials=None) -> TestClient:
    app = FastAPI()
    app.include_router(create_api_router(ctx, credentials), prefix="/sdapi/v1")
    app.include_router(create_hosted_sdxl_router(ctx, credentials), prefix="/v1")
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(ctx) -> TestClient:
    return _client(ctx)


def select(client, checkpoint: str) -> None:
    r = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": checkpoint})
    assert r.status_code == 200, r.text


def hosted(client, **changes):
    return client.post(URL, json={**SEED_BODY, **changes})


def png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.load()
    return image


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def sdapi_image(client, **changes) -> Image.Image:
    r = client.post("/sdapi/v1/txt2img", json={**A1111_BODY, **changes})
    assert r.status_code == 200, r.text
    return png(base64.b64decode(r.json()["images"][0]))


def problems(response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    return {e["field"]: e["message"] for e in response.json()["errors"]}


# --- generation on tiny checkpoints ------------------------------------------------

def test_the_seed_body_gives_png_bytes_equal_to_sdapi_txt2img(client):
    select(client, "sd1.safetensors")
    r = hosted(client)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    image = png(r.content)
    assert image.size == (64, 96)
    expected = sdapi_image(client)
    assert np.array_equal(pixels(image), pixels(expected))  # the mapping is the A1111 request's, pixel for pixel
    assert image.info["parameters"] == expected.info["parameters"]
    assert "Sampler: UniPC" in image.info["parameters"] and "CFG scale: 8" in image.info["parameters"]


def test_base64_true_answers_json_whose_image_is_the_same_png(client):
    select(client, "sd1.safetensors")
    raw = png(hosted(client).content)
    r = hosted(client, base64=True)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    body = r.json()
    image = png(base64.b64decode(body["image"]))
    assert np.array_equal(pixels(image), pixels(raw))
    assert body["images"] == [body["image"]]


def test_samples_is_the_batch_size_the_raw_answer_carries_the_first(client):
    select(client, "sd1.safetensors")
    body = hosted(client, samples=2, base64=True).json()
    assert len(body["images"]) == 2 and body["image"] == body["images"][0]
    first, second = (png(base64.b64decode(b)) for b in body["images"])
    assert "Seed: 468685" in first.info["parameters"] and "Seed: 468686" in second.info["parameters"]
    raw = png(hosted(client, samples=2).content)
    assert np.array_equal(pixels(raw), pixels(first))


def test_a_style_changes_the_prompt_the_infotext_records_and_base_is_none(client):
    select(client, "sd1.safetensors")
    plain = png(hosted(client, style="base").content).info["parameters"]
    styled = png(hosted(client, style="3d-model").content).info["parameters"]  # the studio's "3d model"
    assert plain.startswith(SEED_BODY["prompt"] + "\nNegative prompt: " + SEED_BODY["negative_prompt"] + "\n")
    assert styled.startswith(f"3d model of {SEED_BODY['prompt']}, octane render\n"
                             f"Negative prompt: {SEED_BODY['negative_prompt']}, flat, sketch\n")


def test_an_sdxl_base_gives_the_same_pixels_as_sdapi_txt2img(client):
    select(client, "sdxl.safetensors")
    try:
        r = hosted(client, scheduler="DPM Multi")
        assert r.status_code == 200, r.text
        image = png(r.content)
        assert image.size == (64, 96) and "Model: sdxl," in image.info["parameters"]
        expected = sdapi_image(client, sampler_name="DPM++ 2M", scheduler="uniform")
        assert np.array_equal(pixels(image), pixels(expected))
    finally:
        select(client, "sd1.safetensors")


# --- validation: 422 naming the hosted field, no generation --------------------------

def test_unknown_scheduler_is_422_naming_the_field_and_the_choices(client):
    found = problems(hosted(client, scheduler="Warp Drive"))
    assert list(found) == ["scheduler"] and "'Warp Drive'" in found["scheduler"]
    assert "DPM Multi" in found["scheduler"] and "UniPC" in found["scheduler"]


@pytest.mark.parametrize("changes,field", [
    ({"img_width": 100}, "img_width"),
    ({"img_height": 8}, "img_height"),
    ({"img_width": "wide"}, "img_width"),
    ({"num_inference_steps": 0}, "num_inference_steps"),
    ({"guidance_scale": 99}, "guidance_scale"),
    ({"samples": 0}, "samples"),
    ({"seed": -5}, "seed"),
    ({"strength": 2}, "strength"),
    ({"high_noise_fraction": -0.1}, "high_noise_fraction"),
    ({"prompt": None}, "prompt"),
    ({"high_noise_frac": 0.8}, "high_noise_frac"),  # not a field of the hosted API: refused, not ignored
])
def test_bad_values_are_422_naming_the_hosted_field(client, changes, field):
    found = problems(hosted(client, **changes))
    assert field in found, found
    if field == "img_width" and changes[field] == 100:
        assert found[field].startswith("img_width must be a multiple of 8")


def test_unknown_style_is_422_naming_the_styles_there_are(client):
    found = problems(hosted(client, style="vaporwave"))
    assert list(found) == ["style"]
    assert "'vaporwave'" in found["style"] and "'3d model'" in found["style"] and "'Cinematic'" in found["style"]


def test_refiner_true_without_a_refiner_checkpoint_says_where_to_put_one(client, ctx):
    assert not any(e.variant and e.variant.family.value == "sdxl-refiner" for e in ctx.manager.checkpoints())
    r = hosted(client, refiner=True)
    assert r.status_code == 404, r.text
    assert "models/Stable-diffusion" in r.json()["detail"] and "refiner: false" in r.json()["detail"]


def test_behind_api_auth_the_route_asks_for_credentials(ctx):
    client = _client(ctx, [("artist", "s3cret")])
    assert client.post(URL, json=SEED_BODY).status_code == 401
    assert client.post(URL, json=SEED_BODY, auth=("artist", "wrong")).status_code == 401
    # right credentials: past the auth, to the body's own 422 (nothing generated)
    assert client.post(URL, json={**SEED_BODY, "scheduler": "nope"}, auth=("artist", "s3cret")).status_code == 422


# --- the conversion itself ---------------------------------------------------------

@pytest.mark.parametrize("name", hosted_sdxl.HOSTED_SCHEDULER_NAMES)
def test_every_hosted_scheduler_is_a_valid_studio_sampler_and_schedule(name):
    sampler, schedule = hosted_sdxl.resolve_scheduler(name, BUILTIN_SAMPLERS)
    assert BUILTIN_SAMPLERS.knows(sampler)
    BUILTIN_SAMPLERS.effective_schedule(sampler, schedule)  # raises for a pair the sampler cannot do
    request = Txt2ImgRequest(sampler_name=sampler, scheduler=schedule)
    assert (request.sampler_name, request.scheduler) == (sampler, schedule)
    assert hosted_sdxl.resolve_scheduler(name.upper(), BUILTIN_SAMPLERS) == (sampler, schedule)


def test_studio_sampler_names_are_accepted_too():
    assert hosted_sdxl.resolve_scheduler("DPM++ 2M SDE", BUILTIN_SAMPLERS) == ("DPM++ 2M SDE", "Automatic")
    assert hosted_sdxl.resolve_scheduler("k_euler_a", BUILTIN_SAMPLERS) == ("Euler a", "Automatic")


def test_the_hosted_defaults_and_the_mapping_of_each_field(ctx):
    body = HostedSdxlTxt2Img(prompt="a cat")
    assert (body.style, body.samples, body.scheduler, body.num_inference_steps, body.guidance_scale) == \
        ("base", 1, "UniPC", 25, 7.5)
    assert (body.strength, body.high_noise_fraction, body.seed, body.img_width, body.img_height) == \
        (0.2, 0.8, -1, 1024, 1024)
    assert body.refiner is True and body.base64 is False and body.negative_prompt == ""
    # segmind-py sends numbers as strings; null is the default
    body = HostedSdxlTxt2Img.model_validate({**SEED_BODY, "samples": "2", "seed": "468685", "guidance_scale": "8",
                                             "negative_prompt": None, "style": "CINEMATIC"})
    req = hosted_sdxl.to_txt2img_request(body, ctx)
    assert (req.prompt, req.negative_prompt, req.styles, req.seed) == (SEED_BODY["prompt"], "", ["Cinematic"], 468685)
    assert (req.batch_size, req.n_iter, req.steps, req.cfg_scale, req.width, req.height) == (2, 1, 2, 8.0, 64, 96)
    assert (req.sampler_name, req.scheduler, req.checkpoint, req.save_images) == ("UniPC", "Automatic", None, False)
    assert not req.refiner.enabled and not req.hires.enabled


def test_strength_is_accepted_and_changes_nothing(ctx):
    def convert(strength):
        return hosted_sdxl.to_txt2img_request(HostedSdxlTxt2Img.model_validate({**SEED_BODY, "strength": strength}),
                                              ctx)
    assert convert(0.2) == convert(0.95) == convert(0)


def test_refiner_true_takes_the_first_sdxl_refiner_and_switches_at_high_noise_fraction(tmp_path, checkpoint_dir):
    refiners = tmp_path / "refiners"
    write_checkpoint(refiners / "sd_xl_refiner_1.0.safetensors", TinySpec("sdxl-refiner"), seed=9)
    write_checkpoint(refiners / "zz-refiner.safetensors", TinySpec("sdxl-refiner"), seed=10)
    ctx = _context(tmp_path / "studio", [checkpoint_dir, refiners])
    body = HostedSdxlTxt2Img.model_validate({**SEED_BODY, "refiner": True, "high_noise_fraction": 0.7})
    req = hosted_sdxl.to_txt2img_request(body, ctx)
    assert req.refiner.enabled
    assert (req.refiner.checkpoint, req.refiner.switch_at) == ("sd_xl_refiner_1.0.safetensors", 0.7)
    assert ctx.manager.find(req.refiner.checkpoint).path == refiners / "sd_xl_refiner_1.0.safetensors"
    assert req.checkpoint is None  # the base stays the selected checkpoint
    # refiner false: no refiner, whatever is in the folder
    assert not hosted_sdxl.to_txt2img_request(body.model_copy(update={"refiner": False}), ctx).refiner.enabled
    # the low end of the hosted range cannot be a switch point: the base would run no step
    with pytest.raises(hosted_sdxl.convert.ApiFieldError) as info:
        hosted_sdxl.to_txt2img_request(body.model_copy(update={"high_noise_fraction": 0.0}), ctx)
    assert [field for field, _ in info.value.problems] == ["high_noise_fraction"]


def test_the_server_mounts_the_route_with_the_api(ctx):
    import argparse

    from ui.server import build_http_app

    args = argparse.Namespace(api=True, nowebui=True, cors_allow_origins=None, cors_allow_origins_regex=None)
    client = TestClient(build_http_app(ctx, args, [], []), raise_server_exceptions=False)
    assert "scheduler" in problems(client.post(URL, json={**SEED_BODY, "scheduler": "nope"}))
    assert URL in client.get("/openapi.json").json()["paths"]


def test_the_seed_body_with_refiner_true_runs_the_refiner_and_matches_sdapi(tmp_path, checkpoint_dir):
    refiners = tmp_path / "refiners"
    write_checkpoint(refiners / "sd_xl_refiner_1.0.safetensors", TinySpec("sdxl-refiner"), seed=9)
    ctx = _context(tmp_path / "studio", [checkpoint_dir, refiners])
    client = _client(ctx)
    select(client, "sdxl.safetensors")
    r = hosted(client, refiner=True, num_inference_steps=6, high_noise_fraction=0.5)
    assert r.status_code == 200, r.text
    picture = png(r.content)
    assert "Refiner: sd_xl_refiner_1.0" in picture.info["parameters"]
    assert "Refiner switch at: 0.5" in picture.info["parameters"]
    same = sdapi_image(client, steps=6, refiner_checkpoint="sd_xl_refiner_1.0.safetensors", refiner_switch_at=0.5)
    assert np.array_equal(pixels(picture), pixels(same))


def test_sdapi_progress_and_interrupt_reach_a_hosted_job_when_the_routers_share_their_jobs(ctx):
    import threading
    import time

    from backend.api.jobs import ApiJobs

    jobs = ApiJobs()
    app = FastAPI()
    app.include_router(create_api_router(ctx, None, jobs), prefix="/sdapi/v1")
    app.include_router(create_hosted_sdxl_router(ctx, None, jobs), prefix="/v1")
    client = TestClient(app, raise_server_exceptions=False)
    select(client, "sd1.safetensors")
    answer = {}
    worker = threading.Thread(target=lambda: answer.update(r=hosted(client, num_inference_steps=150)))
    worker.start()
    deadline, seen = time.monotonic() + 60, None
    while time.monotonic() < deadline and worker.is_alive():
        seen = client.get("/sdapi/v1/progress").json()
        if seen["state"]["sampling_step"] >= 1:
            break
        time.sleep(0.05)
    assert seen["current_task"] and seen["state"]["sampling_steps"] == 150  # the hosted job, seen by /sdapi/v1
    assert client.post("/sdapi/v1/interrupt").status_code == 200
    worker.join(60)
    assert not worker.is_alive()
    # Interrupted: A1111 answers what the job finished, here the partly denoised picture.
    assert answer["r"].status_code == 200 and "Steps: 150" in png(answer["r"].content).info["parameters"]
