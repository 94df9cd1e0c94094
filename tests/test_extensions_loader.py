"""Extensions at start-up: discovery, isolation of a broken one, API versions, disabled ones, taken ids,
A1111-style folders; and the first hooks (prompt transformer, before / after job) in real jobs."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from backend.extensions import API_VERSION, load_extensions
from backend.generation.request import Txt2ImgRequest

GOOD = '''
seen = []

def register(api):
    assert api.version == "{version}"

    @api.transform_prompt
    def shout(prompt, negative, request):
        word = api.extension_args(request).get("word", "loud")
        return prompt + ", " + word, negative

    api.before_job(lambda request: seen.append(("before", request.prompt)))
    api.after_job(lambda request, result: seen.append(("after", len(result.images))))
'''


def write_extension(root: Path, folder: str, code: str, **manifest) -> Path:
    path = root / folder
    path.mkdir(parents=True)
    fields = {"id": folder, "version": "1.0.0", "api": ">=1.0,<2", **manifest}
    (path / "studio-extension.json").write_text(json.dumps(fields))
    (path / fields.get("entry", "extension.py")).write_text(code)
    return path


@pytest.fixture
def extension_root(tmp_path) -> Path:
    root = tmp_path / "extensions"
    write_extension(root, "good", GOOD.format(version=API_VERSION), name="Good one")
    write_extension(root, "broken", "raise RuntimeError('cannot start')\n")
    write_extension(root, "half", "def register(api):\n    api.before_job(print)\n    raise ValueError('oops')\n")
    write_extension(root, "future", "def register(api): pass\n", api=">=2.0")
    write_extension(root, "off", "raise SystemExit('must not be imported')\n")
    write_extension(root, "zcopy", "def register(api): pass\n", id="good")
    write_extension(root, "_private", "raise SystemExit('skipped')\n")
    (root / "sd-webui-old" / "scripts").mkdir(parents=True)
    (root / "sd-webui-old" / "scripts" / "thing.py").write_text("raise SystemExit('never imported')\n")
    (root / "badjson").mkdir()
    (root / "badjson" / "studio-extension.json").write_text("{not json")
    return root


def test_each_extension_is_listed_with_why_it_is_not_loaded(extension_root, caplog):
    with caplog.at_level(logging.INFO):
        found = load_extensions([extension_root], disabled={"off"})
    status = {r.folder.name: (r.status, r.error) for r in found.records}
    assert status["good"] == ("loaded", "")
    assert status["broken"][0] == "failed" and "cannot start" in status["broken"][1]
    assert status["half"][0] == "failed" and "oops" in status["half"][1]
    assert status["future"] == ("incompatible", f"needs plugin API >=2.0; this studio has {API_VERSION}")
    assert status["off"] == ("disabled", "")
    assert status["zcopy"][0] == "failed" and "taken" in status["zcopy"][1]
    assert status["sd-webui-old"][0] == "A1111 extension" and "not compatible" in status["sd-webui-old"][1]
    assert status["badjson"][0] == "failed" and "JSON" in status["badjson"][1]
    assert "_private" not in status
    assert [r.id for r in found.loaded()] == ["good"]
    # Only the good one's hooks count: the half-registered one added none.
    assert [ext for ext, _ in found.hooks.before_job] == ["good"]
    assert "Traceback" in caplog.text and "loaded in" in caplog.text
    # Not disabled, the one that calls sys.exit on import fails alone: the studio still starts.
    off = {r.folder.name: r for r in load_extensions([extension_root]).records}["off"]
    assert off.status == "failed" and "must not be imported" in off.error


def test_disable_all_loads_nothing(extension_root):
    found = load_extensions([extension_root], disable_all=True)
    assert not found.loaded() and {r.status for r in found.records} <= {"disabled", "A1111 extension", "failed"}


@pytest.fixture
def ctx(studio_root, checkpoint_dir, extension_root):
    from backend.app_context import AppPaths, build_app_context
    from backend.devices import DeviceSettings

    paths = AppPaths(root=studio_root, checkpoint_dirs=[checkpoint_dir], builtin_checkpoints=[],
                     extension_dirs=[extension_root])
    return build_app_context(paths, DeviceSettings.from_flags(device="cpu", precision="full"))


def test_hooks_run_in_real_jobs_and_their_args_come_from_the_request(ctx):
    import studio_extension_good as good

    request = dict(prompt="a cat", width=64, height=64, steps=2, seed=3, sampler_name="Euler",
                   checkpoint="sd1.safetensors", save_images=False)
    result = ctx.service.txt2img(Txt2ImgRequest(**request, extension_args={"good": {"word": "quiet"}}))
    assert result.infotexts[0].startswith("a cat, quiet\n")  # the transformed prompt is encoded and saved
    assert good.seen[-2:] == [("before", "a cat"), ("after", 1)]
    ctx.service.hooks.prompt_transforms.clear()  # the same text typed, with no transformer: the same pixels
    written = ctx.service.txt2img(Txt2ImgRequest(**{**request, "prompt": "a cat, quiet"}))
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(written.images[0]))


def test_a_hook_that_fails_is_skipped_with_a_warning(ctx):
    ctx.service.hooks.after_job.append(("flaky", lambda request, result: 1 / 0))
    result = ctx.service.txt2img(Txt2ImgRequest(prompt="a cat", width=64, height=64, steps=1,
                                                checkpoint="sd1.safetensors", save_images=False))
    assert result.images and any("flaky" in w and "division" in w for w in result.warnings)


def test_the_api_lists_extensions_in_a1111s_shape(ctx):
    from backend.api.routes import create_api_router

    app = FastAPI()
    app.include_router(create_api_router(ctx), prefix="/sdapi/v1")
    listed = {e["name"]: e for e in TestClient(app).get("/sdapi/v1/extensions").json()}
    assert set(listed["good"]) == {"name", "remote", "branch", "commit_hash", "version", "commit_date", "enabled"}
    assert listed["good"]["enabled"] is True and listed["good"]["version"] == "1.0.0"


def test_the_extensions_tab_lists_each_one_with_its_status(ctx):
    from ui.extensions_tab import extension_rows

    rows = {row[0]: row for row in extension_rows(ctx)}
    assert rows["Good one"][2] == "loaded"
    assert rows["future"][2] == "incompatible" and "plugin API" in rows["future"][3]
    assert rows["sd-webui-old"][2] == "A1111 extension"
