"""The requests of A1111's own API test suite (its test/test_txt2img.py, test_img2img.py, test_extras.py and
test_utils.py), sent as it sends them, on the tiny SD1 model: all 29 answer 200."""
from __future__ import annotations

import base64
import io

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from backend.api.routes import create_api_router
from tests.test_extras_faces import _link_face_models

API = "/sdapi/v1"


def _png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _picture() -> Image.Image:
    picture = Image.new("RGB", (64, 64), (90, 120, 200))
    ImageDraw.Draw(picture).ellipse((12, 12, 52, 52), fill=(220, 180, 150))
    return picture


def _mask() -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((16, 16, 48, 48), fill=255)
    return mask


@pytest.fixture(scope="module")
def client(tmp_path_factory, checkpoint_dir, face_models):
    from backend.app_context import AppPaths, build_app_context
    from backend.devices import DeviceSettings

    root = tmp_path_factory.mktemp("a1111-suite")
    _link_face_models(root / "models", face_models)
    ctx = build_app_context(AppPaths(root=root, checkpoint_dirs=[checkpoint_dir], builtin_checkpoints=[]),
                            DeviceSettings.from_flags(device="cpu", precision="full"))
    ctx.options.update(sd_model_checkpoint="sd1.safetensors", live_previews_enable=False)
    app = FastAPI()
    app.include_router(create_api_router(ctx), prefix=API)
    return TestClient(app, raise_server_exceptions=False)


SIMPLE_TXT2IMG = {
    "batch_size": 1, "cfg_scale": 7, "denoising_strength": 0, "enable_hr": False, "eta": 0, "firstphase_height": 0,
    "firstphase_width": 0, "height": 64, "n_iter": 1, "negative_prompt": "", "prompt": "example prompt",
    "restore_faces": False, "s_churn": 0, "s_noise": 1, "s_tmax": 0, "s_tmin": 0, "sampler_index": "Euler a",
    "seed": -1, "seed_resize_from_h": -1, "seed_resize_from_w": -1, "steps": 3, "styles": [], "subseed": -1,
    "subseed_strength": 0, "tiling": False, "width": 64,
}

TXT2IMG_CHANGES = {
    "simple": {},
    "negative prompt": {"negative_prompt": "example negative prompt"},
    "complex prompt": {"prompt": "((emphasis)), (emphasis1:1.1), [to:1], [from::2], [from:to:0.3], [alt|alt1]"},
    "not square": {"height": 128},
    "hires fix": {"enable_hr": True},
    "tiling": {"tiling": True},
    "restore faces": {"restore_faces": True},
    "PLMS": {"sampler_index": "PLMS"},
    "DDIM": {"sampler_index": "DDIM"},
    "UniPC": {"sampler_index": "UniPC"},
    "multiple batches": {"n_iter": 2},
    "batch": {"batch_size": 2},
}


@pytest.mark.parametrize("change", list(TXT2IMG_CHANGES.values()), ids=list(TXT2IMG_CHANGES))
def test_txt2img_requests(client, change):
    answer = client.post(f"{API}/txt2img", json={**SIMPLE_TXT2IMG, **change})
    assert answer.status_code == 200, answer.text
    assert answer.json()["images"]


def _simple_img2img() -> dict:
    return {
        "batch_size": 1, "cfg_scale": 7, "denoising_strength": 0.75, "eta": 0, "height": 64,
        "include_init_images": False, "init_images": [_png_base64(_picture())], "inpaint_full_res": False,
        "inpaint_full_res_padding": 0, "inpainting_fill": 0, "inpainting_mask_invert": False, "mask": None,
        "mask_blur": 4, "n_iter": 1, "negative_prompt": "", "override_settings": {}, "prompt": "example prompt",
        "resize_mode": 0, "restore_faces": False, "s_churn": 0, "s_noise": 1, "s_tmax": 0, "s_tmin": 0,
        "sampler_index": "Euler a", "seed": -1, "seed_resize_from_h": -1, "seed_resize_from_w": -1, "steps": 3,
        "styles": [], "subseed": -1, "subseed_strength": 0, "tiling": False, "width": 64,
    }


IMG2IMG_CHANGES = {
    "simple": {},
    "inpainting masked": {"mask": "MASK"},
    "inverted mask": {"mask": "MASK", "inpainting_mask_invert": True},
    "sd upscale": {"script_name": "sd upscale", "script_args": ["", 8, "Lanczos", 2.0]},
}


@pytest.mark.parametrize("change", list(IMG2IMG_CHANGES.values()), ids=list(IMG2IMG_CHANGES))
def test_img2img_requests(client, change):
    payload = {**_simple_img2img(), **change}
    if payload["mask"] == "MASK":
        payload["mask"] = _png_base64(_mask())
    answer = client.post(f"{API}/img2img", json=payload)
    assert answer.status_code == 200, answer.text
    assert answer.json()["images"]


EXTRAS_PAYLOADS = {
    "simple upscaling": {"resize_mode": 0, "show_extras_results": True, "gfpgan_visibility": 0,
                         "codeformer_visibility": 0, "codeformer_weight": 0, "upscaling_resize": 2,
                         "upscaling_resize_w": 128, "upscaling_resize_h": 128, "upscaling_crop": True,
                         "upscaler_1": "Lanczos", "upscaler_2": "None", "extras_upscaler_2_visibility": 0},
    "png info": {},  # A1111's suite sends these two to extra-single-image too
    "interrogate": {"model": "clip"},
}


@pytest.mark.parametrize("payload", list(EXTRAS_PAYLOADS.values()), ids=list(EXTRAS_PAYLOADS))
def test_extras_requests(client, payload):
    answer = client.post(f"{API}/extra-single-image", json={**payload, "image": _png_base64(_picture())})
    assert answer.status_code == 200, answer.text


def test_options_write(client):
    before = client.get(f"{API}/options").json()["send_seed"]
    assert client.post(f"{API}/options", json={"send_seed": not before}).status_code == 200
    assert client.get(f"{API}/options").json()["send_seed"] is (not before)
    assert client.post(f"{API}/options", json={"send_seed": before}).status_code == 200


@pytest.mark.parametrize("route", ["cmd-flags", "samplers", "upscalers", "sd-models", "hypernetworks",
                                   "face-restorers", "realesrgan-models", "prompt-styles", "embeddings"])
def test_get_routes(client, route):
    assert client.get(f"{API}/{route}").status_code == 200
