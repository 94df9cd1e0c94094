"""Every hook of the plugin API in real jobs, through the service, the API and the UI, with the fixture
extension tests/fixtures/extensions/hooks_demo; a name the studio has is refused; the built-in extensions
import nothing of the studio but its plugin API."""
from __future__ import annotations

import ast
import base64
import io
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image, ImageOps

from backend.generation.request import Txt2ImgRequest

FIXTURES = Path(__file__).parent / "fixtures" / "extensions"
BUILTINS = Path(__file__).resolve().parent.parent / "extensions"
JOB = dict(prompt="a red ball", width=64, height=64, steps=2, seed=11, sampler_name="Euler",
           checkpoint="sd1.safetensors", save_images=False)


@pytest.fixture
def ctx(studio_root, checkpoint_dir):
    from backend.app_context import AppPaths, build_app_context
    from backend.devices import DeviceSettings

    paths = AppPaths(root=studio_root, checkpoint_dirs=[checkpoint_dir], builtin_checkpoints=[],
                     extension_dirs=[FIXTURES])
    return build_app_context(paths, DeviceSettings.from_flags(device="cpu", precision="full"))


@pytest.fixture
def client(ctx):
    from backend.api.extension_routes import create_extension_router
    from backend.api.routes import create_api_router

    app = FastAPI()
    app.include_router(create_api_router(ctx), prefix="/sdapi/v1")
    app.include_router(create_extension_router(ctx.service.hooks), prefix="/ext")
    return TestClient(app)


def demo():
    import studio_extension_hooks_demo

    return studio_extension_hooks_demo.seen


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def test_a_name_the_studio_has_is_refused_by_name(ctx):
    records = {r.id: r for r in ctx.extensions.records}
    assert records["hooks_demo"].status == "loaded"
    assert records["thief"].status == "failed" and "'Lanczos' is built into the studio" in records["thief"].error
    assert ctx.extras.upscalers.names().count("Lanczos") == 1


def test_an_extension_sampler_runs_in_jobs_and_through_the_api_and_cannot_replace_a_built_in(ctx, client):
    from diffusers import DDPMScheduler
    from pydantic import ValidationError

    from backend.generation.samplers import EulerAncestralSigmasScheduler

    records = {r.id: r for r in ctx.extensions.records}
    assert records["sampler_thief"].status == "failed"
    assert "'Euler a' is built into the studio" in records["sampler_thief"].error
    assert ctx.service.samplers.spec("Euler a").scheduler_cls is EulerAncestralSigmasScheduler
    with pytest.raises(ValidationError, match="unknown sampler 'DDPM'"):
        Txt2ImgRequest(**{**JOB, "sampler_name": "DDPM"})  # without the studio's context: the built-ins only
    request = Txt2ImgRequest.model_validate({**JOB, "sampler_name": "DDPM"}, context=ctx.service.request_context)
    seen = demo()
    seen["steps"].clear()
    result = ctx.service.txt2img(request)
    expected = DDPMScheduler.from_config(ctx.manager.load("sd1.safetensors").pipe.scheduler.config)
    expected.set_timesteps(2)
    assert [s[3] for s in seen["steps"]] == expected.timesteps.tolist()  # the UNet was stepped by DDPM
    assert "Sampler: DDPM," in result.infotexts[0]
    euler = ctx.service.txt2img(Txt2ImgRequest(**JOB))
    assert not np.array_equal(pixels(result.images[0]), pixels(euler.images[0]))
    with pytest.raises(ValidationError, match="cannot use schedule type 'Karras'"):
        Txt2ImgRequest.model_validate({**JOB, "sampler_name": "DDPM", "scheduler": "Karras"},
                                      context=ctx.service.request_context)

    listed = {s["name"]: s["aliases"] for s in client.get("/sdapi/v1/samplers").json()}
    assert listed["DDPM"] == ["ddpm_demo"] and list(listed)[-1] == "DDPM"
    body = {"prompt": "a red ball", "width": 64, "height": 64, "steps": 2, "seed": 11, "sampler_name": "ddpm_demo",
            "override_settings": {"sd_model_checkpoint": "sd1.safetensors"}, "save_images": False}
    ran = client.post("/sdapi/v1/txt2img", json=body)
    assert ran.status_code == 200, ran.text
    image = Image.open(io.BytesIO(base64.b64decode(ran.json()["images"][0])))
    assert "Sampler: DDPM," in image.info["parameters"]
    assert np.array_equal(pixels(image), pixels(result.images[0]))
    assert client.post("/sdapi/v1/txt2img", json={**body, "sampler_name": "Nope"}).status_code == 422

    import gradio as gr

    from ui import paste_fields as pf

    with gr.Blocks():  # pasting that picture's infotext picks the extension's sampler
        fields = [gr.Textbox(), gr.Textbox(), gr.Dropdown(), gr.Dropdown(), *(gr.Slider() for _ in range(6))]
    pasted = pf.paste_values(image.info["parameters"], pf.common_readers(*fields, samplers=ctx.service.samplers))
    assert pasted[2:4] == ["DDPM", "Automatic"]


def test_step_callback_postprocess_and_accordion_args_in_a_real_job(ctx):
    seen = demo()
    seen["steps"].clear()
    plain = ctx.service.txt2img(Txt2ImgRequest(**JOB))
    assert [s[:2] for s in seen["steps"]] == [(1, 2), (2, 2)] and seen["steps"][0][2] == (1, 4, 8, 8)
    signed = ctx.service.txt2img(Txt2ImgRequest(**JOB, extension_args={"hooks_demo": {"word": "hi", "mirror": True}}))
    assert "Hooks demo: hi" in signed.infotexts[0] and "Hooks demo" not in plain.infotexts[0]
    assert signed.infotexts[0].index("Hooks demo: hi") < signed.infotexts[0].index("Version:")
    assert np.array_equal(pixels(signed.images[0]), pixels(ImageOps.mirror(plain.images[0])))
    assert seen["jobs"][-2:] == [("before", 11), ("after", 1)]


def test_a_script_runs_its_jobs_through_the_service(ctx):
    result = ctx.service.txt2img(Txt2ImgRequest(**JOB, script_name="two seeds", script_args={"offset": 5}))
    assert result.seeds == [11, 16]
    alone = ctx.service.txt2img(Txt2ImgRequest(**{**JOB, "seed": 16}))
    assert np.array_equal(pixels(result.images[1]), pixels(alone.images[0]))
    with pytest.raises(ValueError, match="no script 'Nope'"):
        ctx.service.txt2img(Txt2ImgRequest(**JOB, script_name="Nope"))


def test_the_api_lists_runs_and_fills_scripts_and_accordions(client):
    scripts = client.get("/sdapi/v1/scripts").json()
    assert scripts["txt2img"][:1] == ["two seeds"] and "hooks demo" in scripts["txt2img"]
    assert scripts["img2img"][:2] == ["sd upscale", "two seeds"]
    info = {(i["name"], i["is_img2img"]): i for i in client.get("/sdapi/v1/script-info").json()}
    assert info[("two seeds", False)]["args"][0]["value"] == 100
    assert info[("hooks demo", True)]["is_alwayson"] is True
    body = {"prompt": "a red ball", "width": 64, "height": 64, "steps": 2, "seed": 11, "sampler_name": "Euler",
            "override_settings": {"sd_model_checkpoint": "sd1.safetensors"}, "save_images": False}
    ran = client.post("/sdapi/v1/txt2img", json={**body, "script_name": "Two seeds", "script_args": [3],
                                                  "alwayson_scripts": {"Hooks demo": {"args": ["api"]}}})
    assert ran.status_code == 200, ran.text
    assert len(ran.json()["images"]) == 2
    first = Image.open(io.BytesIO(base64.b64decode(ran.json()["images"][0])))
    assert "Hooks demo: api" in first.info["parameters"]
    unknown = client.post("/sdapi/v1/txt2img", json={**body, "script_name": "x/y/z nope"})
    assert unknown.status_code == 422 and "x/y/z nope" in unknown.json()["detail"]
    too_many = client.post("/sdapi/v1/txt2img", json={**body, "script_name": "two seeds", "script_args": [1, 2]})
    assert too_many.status_code == 422 and "takes 1 inputs" in too_many.json()["detail"]
    other = client.post("/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"ADetailer": {"args": []}}})
    assert other.status_code == 422 and "ADetailer" in other.json()["detail"]


def test_route_setting_upscaler_and_preprocessor(ctx, client):
    assert client.get("/ext/hooks_demo/hello").json() == {"greeting": "hello"}
    assert client.get("/sdapi/v1/options").json()["hooks_demo_greeting"] == "hello"
    assert client.post("/sdapi/v1/options", json={"hooks_demo_greeting": "hey"}).status_code == 200
    assert client.get("/ext/hooks_demo/hello").json() == {"greeting": "hey"}
    picture = Image.fromarray(np.arange(192, dtype=np.uint8).reshape(8, 8, 3))
    assert "Doubler (nearest)" in ctx.extras.upscalers.names()
    bigger = ctx.extras.upscalers.upscale(picture, "Doubler (nearest)")
    assert np.array_equal(pixels(bigger), pixels(picture.resize((16, 16), Image.Resampling.NEAREST)))
    inverted = ctx.control.preprocessors.run("invert_demo", picture, resolution=8)
    assert np.array_equal(pixels(inverted), 255 - pixels(picture))


def test_the_ui_has_the_tab_the_accordion_the_script_and_the_settings_section(ctx):
    from ui.app import build_ui

    config = build_ui(ctx, allow_folders=False).get_config_file()
    ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    assert {"tab_ext_hooks_demo", "txt2img_ext_hooks_demo", "img2img_ext_hooks_demo", "settings_ext_hooks_demo",
            "txt2img_script_two_seeds"} <= ids
    script = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "txt2img_script")
    assert [choice[0] for choice in script["props"]["choices"]] == ["None", "Two seeds"]
    sampling = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "txt2img_sampling")
    assert [choice[0] for choice in sampling["props"]["choices"]][-3:] == ["LCM", "TCD", "DDPM"]


def _studio_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return {n for n in names if n.split(".")[0] in ("backend", "ui", "launch", "tests")}


def test_built_in_extensions_import_only_the_plugin_api():
    files = sorted(BUILTINS.rglob("*.py")) + sorted(FIXTURES.rglob("*.py"))
    assert files
    offending = {str(f): _studio_imports(f) - {"backend.extensions.api"} for f in files}
    assert {f: names for f, names in offending.items() if names} == {}


def test_an_arg_following_an_arg_the_script_lacks_is_refused_at_registration():
    from backend.extensions.api import Arg, ExtensionApi, Hooks, Script

    api = ExtensionApi("typo", Hooks())
    follows = Arg("values", "Values", kind="multiselect", choices=lambda studio, axis: [axis], depends_on="axis_typ")
    with pytest.raises(ValueError, match="depends on 'axis_typ'"):
        api.add_script(Script(title="Typo", run=lambda run, request, args: None,
                              args=(Arg("axis_type", "Axis", kind="dropdown", choices=["a"]), follows)))
