"""The Extras job end to end: upscaler 1 and 2, scale by / to, saving with the source's
infotext and A1111's "extras" chunk, the /sdapi/v1 extras routes, and hires. fix with
an upscaler model. Models are tiny random ones in the real file layouts."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from backend.api.routes import create_api_router
from backend.extras.postprocess import ExtrasRequest
from backend.extras.upscalers import UpscaleError
from backend.images.infotext import parse_infotext, parse_params_line
from tests.fixtures.tiny_upscalers import write_compact, write_lora, write_swinir
from tests.test_img2img import picture, px

API = "/sdapi/v1"
SOURCE_INFOTEXT = "a red cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 48x40, Model: sd1"


@pytest.fixture
def studio(studio_root, app_context):
    """The app context with one x4 compact model in models/RealESRGAN and an x2 SwinIR in models/SwinIR."""
    models = studio_root / "models"
    (models / "RealESRGAN").mkdir()
    (models / "SwinIR").mkdir()
    write_compact(models / "RealESRGAN" / "x4-compact.pth", scale=4, seed=1)
    write_swinir(models / "SwinIR" / "x2-swinir.pth", scale=2)
    app_context.extras.refresh()
    return app_context


def source_picture() -> Image.Image:
    image = picture((48, 40), seed=2)
    image.info["parameters"] = SOURCE_INFOTEXT  # as a PNG from txt2img opens
    return image


def extras(studio, **fields):
    return studio.extras_service.run(ExtrasRequest(images=[fields.pop("image", source_picture())], **fields))


def test_scale_by_runs_the_model_and_saves_with_both_infotexts(studio):
    result = extras(studio, upscaler_1="x4-compact", upscaling_resize=2)
    (image,), (path,) = result.images, result.paths
    assert image.size == (96, 80)
    assert "extras-images" in str(path)
    assert result.infotexts == ["Postprocess upscale by: 2, Postprocess upscaler: x4-compact"]
    saved = Image.open(path)
    assert saved.info["parameters"] == SOURCE_INFOTEXT  # the source's generation parameters kept
    assert parse_params_line(saved.info["extras"]) == {"Postprocess upscale by": "2",
                                                       "Postprocess upscaler": "x4-compact"}
    lanczos = extras(studio, upscaler_1="Lanczos", upscaling_resize=2).images[0]
    assert np.abs(px(image) - px(lanczos)).mean() > 2  # the model ran: not a plain resize


def test_scale_to_with_and_without_crop(studio):
    cropped = extras(studio, upscaler_1="Lanczos", resize_mode="Scale to", upscaling_resize_w=100,
                     upscaling_resize_h=100, upscaling_crop=True)
    assert cropped.images[0].size == (100, 100)
    assert "Postprocess upscale to: 100x100, Postprocess crop to fit: True" in cropped.infotexts[0]
    fitted = extras(studio, upscaler_1="Lanczos", resize_mode="Scale to", upscaling_resize_w=100,
                    upscaling_resize_h=100, upscaling_crop=False)
    assert fitted.images[0].size != (100, 100) and max(fitted.images[0].size) <= 125


def test_upscaler_2_visibility_blends(studio):
    first = extras(studio, upscaler_1="x4-compact", save_images=False).images[0]
    second = extras(studio, upscaler_1="x2-swinir", save_images=False).images[0]
    hidden = extras(studio, upscaler_1="x4-compact", upscaler_2="x2-swinir", extras_upscaler_2_visibility=0,
                    save_images=False)
    assert np.array_equal(px(hidden.images[0]), px(first))
    assert "Postprocess upscaler 2" not in hidden.infotexts[0]
    half = extras(studio, upscaler_1="x4-compact", upscaler_2="x2-swinir", extras_upscaler_2_visibility=0.5,
                  save_images=False)
    assert np.abs(px(half.images[0]) - px(Image.blend(first, second, 0.5))).max() <= 1
    assert "Postprocess upscaler 2: x2-swinir, Postprocess upscaler 2 visibility: 0.5" in half.infotexts[0]


def test_too_large_a_result_is_refused_before_any_work(studio):
    big = Image.new("RGB", (2500, 2500))
    with pytest.raises(UpscaleError, match="20000x20000"):
        extras(studio, image=big, upscaler_1="x4-compact", upscaling_resize=8)


def test_unknown_upscaler_and_a_lora_in_the_folder_are_explained(studio, studio_root):
    (studio_root / "models" / "ESRGAN").mkdir()
    write_lora(studio_root / "models" / "ESRGAN" / "not-an-upscaler.safetensors")
    studio.extras.refresh()
    assert "not-an-upscaler" not in studio.extras.upscalers.names()
    with pytest.raises(UpscaleError, match="LoRA"):
        extras(studio, upscaler_1="not-an-upscaler")
    with pytest.raises(UpscaleError, match="x4-compact"):  # the message lists what is there
        extras(studio, upscaler_1="no-such-model")
    assert extras(studio, upscaler_1="x4-compact").images[0].size == (96, 80)  # still serving


# --- the API ----------------------------------------------------------------------

@pytest.fixture
def client(studio) -> TestClient:
    app = FastAPI()
    app.include_router(create_api_router(studio), prefix=API)
    client = TestClient(app, raise_server_exceptions=False)
    assert client.post(f"{API}/options", json={"sd_model_checkpoint": "sd1.safetensors"}).status_code == 200
    return client


def b64_png(image: Image.Image, infotext: str | None = None) -> str:
    buffer = io.BytesIO()
    meta = PngInfo()
    if infotext:
        meta.add_text("parameters", infotext)
    image.save(buffer, format="PNG", pnginfo=meta)
    return base64.b64encode(buffer.getvalue()).decode()


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def test_api_extra_single_image(client, studio_root):
    response = client.post(f"{API}/extra-single-image", json={
        "image": b64_png(picture((48, 40)), SOURCE_INFOTEXT), "upscaler_1": "x4-compact", "upscaling_resize": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    image = decode(body["image"])
    assert image.size == (96, 80)
    assert image.info["parameters"] == SOURCE_INFOTEXT
    assert "Postprocess upscaler: x4-compact" in image.info["extras"]
    assert "Postprocess upscale by: 2" in body["html_info"]
    assert not (studio_root / "outputs" / "extras-images").exists()  # as A1111's API: nothing saved


def test_api_extra_batch_images_and_scale_to(client):
    response = client.post(f"{API}/extra-batch-images", json={
        "imageList": [{"data": b64_png(picture((48, 40), seed=s)), "name": f"p{s}.png"} for s in (1, 2)],
        "resize_mode": 1, "upscaling_resize_w": 64, "upscaling_resize_h": 64, "upscaler_1": "Lanczos"})
    assert response.status_code == 200, response.text
    images = [decode(b) for b in response.json()["images"]]
    assert [im.size for im in images] == [(64, 64), (64, 64)]
    assert not np.array_equal(px(images[0]), px(images[1]))


def test_api_errors_name_the_problem(client):
    tiny = b64_png(Image.new("RGB", (1, 1), (9, 9, 9)))
    one_pixel = client.post(f"{API}/extra-single-image", json={"image": tiny, "upscaler_1": "x4-compact"})
    assert one_pixel.status_code == 200 and decode(one_pixel.json()["image"]).size == (2, 2)  # a 1x1 picture works
    bad = client.post(f"{API}/extra-single-image", json={"image": tiny, "upscaler_1": "nope"})
    assert bad.status_code == 422 and "nope" in bad.json()["detail"]
    empty = client.post(f"{API}/extra-single-image", json={"image": "", "upscaler_1": "Lanczos"})
    assert empty.status_code == 422 and "image" in empty.json()["detail"]


def test_api_lists_what_is_installed_and_rescans(client, studio_root):
    listed = {u["name"]: u for u in client.get(f"{API}/upscalers").json()}
    assert {"None", "Lanczos", "Nearest", "x4-compact", "x2-swinir"} <= set(listed)
    assert listed["x4-compact"]["scale"] == 4 and listed["x2-swinir"]["scale"] == 2  # read from the models
    assert listed["x4-compact"]["model_path"].endswith("x4-compact.pth")
    write_compact(studio_root / "models" / "RealESRGAN" / "added.pth", scale=2, seed=3)
    assert "added" not in {u["name"] for u in client.get(f"{API}/upscalers").json()}
    assert client.post(f"{API}/refresh-upscalers").status_code == 200
    assert "added" in {u["name"] for u in client.get(f"{API}/upscalers").json()}
    restorers = client.get(f"{API}/face-restorers").json()
    assert {r["name"] for r in restorers} == {"CodeFormer", "GFPGAN"}


def test_hires_fix_with_an_upscaler_model(client):
    payload = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 3, "enable_hr": True,
               "hr_scale": 2, "denoising_strength": 0.5, "hr_second_pass_steps": 1}
    with_model = client.post(f"{API}/txt2img", json={**payload, "hr_upscaler": "x4-compact"})
    assert with_model.status_code == 200, with_model.text
    image = decode(with_model.json()["images"][0])
    assert image.size == (128, 128)
    assert parse_infotext(image.info["parameters"])["Hires upscaler"] == "x4-compact"
    with_lanczos = decode(client.post(f"{API}/txt2img", json={**payload, "hr_upscaler": "Lanczos"}).json()["images"][0])
    assert not np.array_equal(px(image), px(with_lanczos))
    unknown = client.post(f"{API}/txt2img", json={**payload, "hr_upscaler": "4x-Nothing"})
    assert unknown.status_code == 422 and "4x-Nothing" in unknown.json()["detail"]


def test_api_img2img_sd_upscale_script_with_an_upscaler_index(client):
    names = [u["name"] for u in client.get(f"{API}/upscalers").json()]
    payload = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 4, "denoising_strength": 0.4,
               "init_images": [b64_png(picture((48, 40)))], "script_name": "SD upscale",
               "script_args": ["", 16, names.index("x4-compact"), 2]}
    response = client.post(f"{API}/img2img", json=payload)
    assert response.status_code == 200, response.text
    image = decode(response.json()["images"][0])
    assert image.size == (96, 80)
    params = parse_infotext(image.info["parameters"])
    assert params["SD upscale upscaler"] == "x4-compact" and params["SD upscale overlap"] == "16"
    bad = client.post(f"{API}/img2img", json={**payload, "script_args": ["", 16, 99, 2]})
    assert bad.status_code == 422 and "script_args.2" in bad.json()["detail"]
    other = client.post(f"{API}/img2img", json={**payload, "script_name": "No such script"})
    assert other.status_code == 422 and "script_name" in other.json()["detail"]
