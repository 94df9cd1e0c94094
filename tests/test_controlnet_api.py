"""ControlNet over the API, as sd-webui-controlnet's clients use it: alwayson_scripts units, /controlnet routes,
bad input answered with a message while the studio keeps serving, and webuiapi's own client, unmodified."""
from __future__ import annotations

import base64
import io
import json
import threading
import time

import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from backend.api.controlnet_routes import create_controlnet_router
from backend.api.routes import create_api_router
from tests.fixtures.launched import free_port
from tests.fixtures.tiny_controlnets import write_controlnet
from tests.test_controlnet_generation import control_picture

API = "/sdapi/v1"


def b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def decode(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


class Evil:
    """A pickle that would create a file if it were ever unpickled with code allowed."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return Path.touch, (Path(self.marker),)


@pytest.fixture
def ctx(app_context):
    folder = app_context.root / "models" / "ControlNet"
    write_controlnet(folder / "control_tiny_sd15.safetensors", "sd1", seed=1)
    write_controlnet(folder / "control_tiny_sdxl.safetensors", "sdxl", seed=3)
    app_context.control.refresh()
    app_context.options.update(live_previews_enable=False, sd_model_checkpoint="sd1.safetensors")
    return app_context


def app_for(ctx) -> FastAPI:
    app = FastAPI()
    app.include_router(create_api_router(ctx), prefix=API)
    app.include_router(create_controlnet_router(ctx), prefix="/controlnet")
    return app


@pytest.fixture
def client(ctx):
    return TestClient(app_for(ctx))


def payload(*units, **fields) -> dict:
    body = {"prompt": "a red square", "steps": 3, "width": 64, "height": 64, "seed": 5, "sampler_name": "Euler",
            "alwayson_scripts": {"ControlNet": {"args": list(units)}}}
    body.update(fields)
    return body


def api_unit(**fields) -> dict:
    unit = {"enabled": True, "module": "canny", "model": "control_tiny_sd15", "image": b64(control_picture()),
            "mask": None, "weight": 1.0, "resize_mode": "Crop and Resize", "processor_res": 64, "threshold_a": 50,
            "threshold_b": 100, "guidance_start": 0.0, "guidance_end": 1.0, "control_mode": 0,
            "pixel_perfect": False, "hr_option": "Both", "low_vram": False}
    unit.update(fields)
    return unit


def test_txt2img_with_a_unit_returns_the_picture_then_the_map(client, ctx):
    title = ctx.control.controlnets.find("control_tiny_sd15").title
    response = client.post(f"{API}/txt2img", json=payload(api_unit(model=title)))
    assert response.status_code == 200, response.text
    body = response.json()
    picture, detected = [decode(i) for i in body["images"]]
    assert set(np.unique(np.asarray(detected))) == {0, 255}  # canny's map
    info = json.loads(body["info"])
    assert f"Model: {title}" in info["infotexts"][0]
    plain = client.post(f"{API}/txt2img", json=payload()).json()
    assert len(plain["images"]) == 1
    assert not np.array_equal(np.asarray(decode(plain["images"][0])), np.asarray(picture))


def test_img2img_unit_takes_the_init_image(client):
    body = payload(api_unit(image=None, module="none"), init_images=[b64(control_picture(shift=10))],
                   denoising_strength=0.7)
    response = client.post(f"{API}/img2img", json=body)
    assert response.status_code == 200, response.text
    detected = decode(response.json()["images"][1])
    assert np.array_equal(np.asarray(detected.convert("RGB")), np.asarray(control_picture(shift=10)))


def test_maps_are_hidden_when_the_setting_says_so(client, ctx):
    ctx.options.update(control_net_no_detectmap=True)
    body = client.post(f"{API}/txt2img", json=payload(api_unit())).json()
    assert len(body["images"]) == 1


def test_bad_units_get_422_naming_what_is_wrong_and_the_studio_keeps_serving(client, ctx):
    cases = {
        "no_such_model": api_unit(model="no_such_model"),
        "no_such_module": api_unit(module="no_such_module"),
        "SDXL": api_unit(model="control_tiny_sdxl"),
        "guidance_start": api_unit(guidance_start=0.8, guidance_end=0.2),
    }
    for needle, bad in cases.items():
        response = client.post(f"{API}/txt2img", json=payload(bad))
        assert response.status_code == 422, (needle, response.text)
        assert needle in response.json()["detail"], response.json()
    no_image = client.post(f"{API}/txt2img", json=payload(api_unit(image=None)))
    assert no_image.status_code == 422 and "no image" in no_image.json()["detail"]
    assert client.post(f"{API}/txt2img", json=payload(api_unit())).status_code == 200


def test_hostile_controlnet_file_is_listed_refused_and_nothing_runs(client, ctx, tmp_path):
    import torch

    marker = tmp_path / "ran"
    torch.save({"control_model.input_blocks.0.0.weight": Evil(marker)},
               ctx.root / "models" / "ControlNet" / "control_evil.pth")
    listing = client.get("/controlnet/model_list").json()
    assert "control_evil.pth" in listing["unusable"]
    assert not any("control_evil" in m for m in listing["model_list"])
    response = client.post(f"{API}/txt2img", json=payload(api_unit(model="control_evil")))
    assert response.status_code == 422, response.text
    assert not marker.exists()
    assert client.post(f"{API}/txt2img", json=payload(api_unit())).status_code == 200


def test_controlnet_routes_answer_in_sd_webui_controlnet_shapes(client, ctx):
    assert client.get("/controlnet/version").json() == {"version": 2}
    models = client.get("/controlnet/model_list").json()["model_list"]
    assert ctx.control.controlnets.find("control_tiny_sd15").title in models
    modules = client.get("/controlnet/module_list").json()
    assert {"none", "canny", "softedge_hed", "depth_midas", "openpose_full", "scribble_xdog"} <= set(modules["module_list"])
    assert modules["module_detail"]["canny"]["model_free"] is True
    assert [s["name"] for s in modules["module_detail"]["canny"]["sliders"]][1:] == ["Canny Low Threshold", "Canny High Threshold"]
    assert client.get("/controlnet/settings").json() == {"control_net_unit_count": 3}
    detected = client.post("/controlnet/detect", json={
        "controlnet_module": "canny", "controlnet_input_images": [b64(control_picture())],
        "controlnet_processor_res": 64, "controlnet_threshold_a": 50, "controlnet_threshold_b": 100}).json()
    assert detected["info"] == "Success"
    assert set(np.unique(np.asarray(decode(detected["images"][0])))) == {0, 255}
    unknown = client.post("/controlnet/detect", json={"controlnet_module": "nope",
                                                      "controlnet_input_images": [b64(control_picture())]})
    assert unknown.status_code == 422 and "nope" in unknown.json()["detail"]


def test_missing_annotator_file_is_named_with_its_folder(client, ctx):
    response = client.post(f"{API}/txt2img", json=payload(api_unit(module="softedge_hed")))
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "ControlNetHED.pth" in detail and str(ctx.control.preprocessors.annotator_dir) in detail


def test_webuiapi_client_unmodified(ctx):
    webuiapi = pytest.importorskip("webuiapi")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app_for(ctx), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        api = webuiapi.WebUIApi(host="127.0.0.1", port=port, sampler="Euler", steps=3)
        assert api.controlnet_version() == 2
        models = api.controlnet_model_list()
        title = next(m for m in models if m.startswith("control_tiny_sd15"))
        assert "canny" in api.controlnet_module_list()
        unit = webuiapi.ControlNetUnit(image=control_picture(), module="canny", model=title, processor_res=64,
                                       threshold_a=50, threshold_b=100)
        result = api.txt2img(prompt="a red square", width=64, height=64, seed=5, controlnet_units=[unit])
        assert len(result.images) == 2  # the picture, then the map
        assert f"Model: {title}" in result.info["infotexts"][0]
        # webuiapi's txt2img mutates its default `alwayson_scripts={}`, so a later call without units would
        # resend the first call's unit (to A1111 as to us): a fresh dict is how its users get a plain job.
        plain = api.txt2img(prompt="a red square", width=64, height=64, seed=5, controlnet_units=[],
                            alwayson_scripts={})
        assert len(plain.images) == 1
        detected = api.controlnet_detect(images=[control_picture()], module="canny", processor_res=64,
                                         threshold_a=50, threshold_b=100)
        assert set(np.unique(np.asarray(detected.image))) == {0, 255}
    finally:
        server.should_exit = True
