"""POST /sdapi/v1/img2img and /png-info the way A1111 clients call them, on tiny real checkpoints."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from backend.api import convert
from backend.api.routes import create_api_router
from backend.api.schemas import StableDiffusionImg2ImgProcessingAPI as ApiImg2Img
from backend.settings import Options
from tests.test_img2img import centre_mask, picture

API = "/sdapi/v1"
SMALL = {"prompt": "a tiny cat", "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler", "seed": 3}


def b64(image: Image.Image, **pnginfo) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **pnginfo)
    return base64.b64encode(buffer.getvalue()).decode()


def unb64(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


@pytest.fixture
def client(app_context) -> TestClient:
    app = FastAPI()
    app.include_router(create_api_router(app_context), prefix=API)
    client = TestClient(app, raise_server_exceptions=False)
    assert client.post(f"{API}/options", json={"sd_model_checkpoint": "sd1.safetensors"}).status_code == 200
    return client


def test_a1111_img2img_defaults_and_field_mapping():
    payload = ApiImg2Img.model_validate({"init_images": [b64(picture())], "mask": b64(centre_mask()),
                                         "resize_mode": 2, "inpainting_fill": 3, "inpainting_mask_invert": 1,
                                         "mask_blur": 7, "denoising_strength": 0.3})
    req = convert.to_img2img_request(payload, Options())
    assert req.resize_mode == "Resize and fill" and req.inpainting_fill == "latent nothing"
    assert req.inpainting_mask_invert and req.mask_blur == 7 and req.denoising_strength == 0.3
    assert req.inpaint_full_res  # A1111's API default: "Only masked"
    assert req.init_images[0].size == (64, 64) and req.mask.size == (64, 64)


@pytest.mark.parametrize("payload,field", [
    ({"init_images": []}, "init_images"),
    ({"init_images": ["not base64 at all!"]}, "init_images.0"),
    ({"init_images": ["https://example.com/cat.png"]}, "init_images.0"),
    ({"resize_mode": 7}, "resize_mode"),
    ({"inpainting_fill": 9}, "inpainting_fill"),
    ({"mask_blur_x": 2, "mask_blur_y": 6}, "mask_blur_x/mask_blur_y"),
    ({"mask_round": False}, "mask_round"),
    ({"denoising_strength": 1.5}, "denoising_strength"),
])
def test_bad_img2img_fields_are_named(payload, field):
    base = {"init_images": [b64(picture())]}
    with pytest.raises(convert.ApiFieldError) as info:
        convert.to_img2img_request(ApiImg2Img.model_validate({**base, **payload}), Options())
    assert field in [f for f, _ in info.value.problems]


def test_img2img_over_http_returns_pictures_with_infotext(client):
    r = client.post(f"{API}/img2img", json={**SMALL, "init_images": [b64(picture())], "denoising_strength": 0.5})
    assert r.status_code == 200, r.text
    body = r.json()
    [image] = [unb64(x) for x in body["images"]]
    assert image.size == (64, 64)
    assert "Denoising strength: 0.5" in image.info["parameters"]
    info = json.loads(body["info"])
    assert info["denoising_strength"] == 0.5 and info["seed"] == 3
    assert body["parameters"]["init_images"] is None  # not echoed unless include_init_images


def test_inpaint_over_http_keeps_unmasked_pixels(client):
    source, mask = picture(), centre_mask()
    r = client.post(f"{API}/img2img", json={
        **SMALL, "init_images": [b64(source)], "mask": b64(mask), "mask_blur": 0, "inpainting_fill": 1,
        "inpaint_full_res": False, "denoising_strength": 0.9, "include_init_images": True})
    assert r.status_code == 200, r.text
    out = np.asarray(unb64(r.json()["images"][0]).convert("RGB"))
    keep = np.asarray(mask) == 0
    assert np.array_equal(out[keep], np.asarray(source)[keep])
    assert r.json()["parameters"]["init_images"]  # echoed when asked
    params = r.json()["images"] and json.loads(r.json()["info"])["infotexts"][0]
    assert "Mask blur: 0" in params and "Masked content: original" in params


def test_empty_mask_is_a_422_with_a_message(client):
    r = client.post(f"{API}/img2img", json={**SMALL, "init_images": [b64(picture())],
                                              "mask": b64(Image.new("L", (64, 64), 0))})
    assert r.status_code == 422 and "mask is empty" in r.json()["detail"]


def test_png_info_reads_our_and_a1111_infotext(client):
    text = "a cat\nNegative prompt: ugly\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x768"
    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    meta.add_text("parameters", text)
    meta.add_text("Software", "test")
    r = client.post(f"{API}/png-info", json={"image": b64(picture(), pnginfo=meta)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["info"] == text
    assert body["parameters"]["Seed"] == "5" and body["parameters"]["Size-2"] == "768"
    assert body["items"]["Software"] == "test"
    empty = client.post(f"{API}/png-info", json={"image": b64(picture())}).json()
    assert empty["info"] == "" and empty["parameters"] == {}
    assert client.post(f"{API}/png-info", json={"image": "!!"}).status_code == 422


def test_img2img_infotext_field_fills_what_the_client_left_out(client):
    text = "a dog\nSteps: 2, Sampler: Euler, CFG scale: 6, Seed: 77, Size: 64x64, Denoising strength: 0.35, Mask blur: 3"
    payload = ApiImg2Img.model_validate({"init_images": [b64(picture())], "infotext": text, "steps": 3})
    req = convert.to_img2img_request(payload, Options())
    assert (req.prompt, req.seed, req.steps, req.cfg_scale) == ("a dog", 77, 3, 6.0)
    assert req.denoising_strength == 0.35 and req.mask_blur == 3
