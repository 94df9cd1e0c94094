"""The built-in "Prompts from file or textbox" extension: A1111's cmdargs lines, one job per line, seeds,
prompt position, and the API's positional script_args."""
from __future__ import annotations

import ast
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from backend.extensions import load_extensions
from backend.generation.request import Txt2ImgRequest

EXTENSION = Path(__file__).resolve().parent.parent / "extensions" / "prompts_from_file"
TITLE = "Prompts from file or textbox"
SMALL = {"width": 64, "height": 64, "steps": 1, "sampler_name": "Euler", "checkpoint": "sd1.safetensors",
         "save_images": False}


@pytest.fixture
def extension_root(tmp_path) -> Path:
    root = tmp_path / "extensions"  # this extension alone, as it ships
    root.mkdir()
    (root / EXTENSION.name).symlink_to(EXTENSION, target_is_directory=True)
    return root


@pytest.fixture
def loaded(extension_root):
    found = load_extensions([extension_root])
    assert [r.id for r in found.loaded()] == ["prompts_from_file"], [r.error for r in found.records]
    return SimpleNamespace(hooks=found.hooks, module=sys.modules["studio_extension_prompts_from_file"],
                           cmdargs=sys.modules["studio_extension_prompts_from_file.cmdargs"])


@pytest.fixture
def ctx(studio_root, checkpoint_dir, extension_root):
    from backend.app_context import AppPaths, build_app_context
    from backend.devices import DeviceSettings

    paths = AppPaths(root=studio_root, checkpoint_dirs=[checkpoint_dir], builtin_checkpoints=[],
                     extension_dirs=[extension_root])
    return build_app_context(paths, DeviceSettings.from_flags(device="cpu", precision="full"))


class FakeRun:
    """A ScriptRun that validates requests as the studio does and records the jobs instead of sampling."""

    kind = "txt2img"

    def __init__(self, stop_after: int | None = None) -> None:
        self.jobs, self.parts, self.stop_after = [], [], stop_after

    def choices(self, what):
        return ["Euler a", "Euler", "DPM++ 2M"]

    def with_changes(self, request, **changes):
        return type(request).model_validate({**dict(request), **changes})

    def progress(self, done, total, text=""):
        self.parts.append((done, total))

    @property
    def interrupted(self):
        return self.stop_after is not None and len(self.jobs) >= self.stop_after

    def generate(self, request):
        self.jobs.append(request)
        return SimpleNamespace(images=[f"image {len(self.jobs)}"], infotexts=[request.prompt], seeds=[request.seed],
                               info={"all_prompts": [request.prompt]}, warnings=[], interrupted=False)

    def result(self, images, infotexts, seeds, *, info=None, warnings=(), interrupted=False, paths=()):
        return SimpleNamespace(images=images, infotexts=infotexts, seeds=seeds, info=info, warnings=list(warnings),
                               interrupted=interrupted)


def args(text: str, iterate=False, same=False, position="start") -> dict:
    return {"checkbox_iterate": iterate, "checkbox_iterate_batch": same, "prompt_position": position,
            "prompt_txt": text}


def test_it_imports_nothing_of_the_studio_but_the_plugin_api():
    for path in EXTENSION.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            assert all(n == "backend.extensions.api" or n.split(".")[0] not in ("backend", "ui") for n in names)


def test_cmdargs_reads_quotes_words_and_types(loaded):
    read = loaded.cmdargs.cmdargs
    line = ('--prompt "a red cat" on a mat --negative_prompt \'blurry, dark\' --steps 20 --seed 5 --cfg_scale 7.5 '
            '--sampler_name "DPM++ 2M" --width 64 --tiling true --restore_faces false --styles "one, two"')
    assert read(line) == {"prompt": "a red cat on a mat", "negative_prompt": "blurry, dark", "steps": 20, "seed": 5,
                          "cfg_scale": 7.5, "sampler_name": "DPM++ 2M", "width": 64, "tiling": True,
                          "restore_faces": False, "styles": ["one", "two"]}
    assert loaded.cmdargs.read_line("just a prompt -- with dashes") == {"prompt": "just a prompt -- with dashes"}
    for bad, says in [("--steps 20 --colour red", "unknown option --colour"), ("--steps", "has no value"),
                      ("--steps many", "--steps"), ("--seed 5 stray", "'stray' is not an option"),
                      ('--prompt "open', "quotation"), ("--tiling maybe", "not true or false")]:
        with pytest.raises(ValueError, match="line 4") as err:
            read(bad, "line 4")
        assert says in str(err.value)


def test_tags_become_request_fields(loaded):
    changes, warnings = loaded.cmdargs.request_changes(
        {"sampler_name": "euler A", "seed_resize_from_w": -1, "do_not_save_samples": True, "sd_model": "sd1",
         "outpath_samples": "/tmp/x", "n_iter": 2}, ["Euler a", "Euler"])
    assert changes == {"sampler_name": "Euler a", "seed_resize_from_w": 0, "save_images": False, "checkpoint": "sd1",
                       "n_iter": 2}
    assert len(warnings) == 1 and "--outpath_samples is not used" in warnings[0]
    assert loaded.cmdargs.request_changes({"sampler_index": 1}, ["Euler a", "Euler"])[0] == {"sampler_name": "Euler"}
    with pytest.raises(ValueError, match="unknown sampler 'Nope'"):
        loaded.cmdargs.request_changes({"sampler_name": "Nope"}, ["Euler a"])


def test_prompt_position_and_seeds_as_a1111(loaded):
    plan = loaded.module.plan_jobs
    base = Txt2ImgRequest(prompt="photo", negative_prompt="ugly", seed=10, batch_size=2)
    jobs, _ = plan(FakeRun(), base, args("a cat\n\n  --prompt dog --negative_prompt dark --seed 99\n--steps 3",
                                         iterate=True))
    assert [(j.prompt, j.negative_prompt, j.seed, j.steps) for j in jobs] == [
        ("a cat photo", "ugly", 10, 20), ("dog photo", "dark ugly", 99, 20), ("photo", "ugly", 14, 3)]
    jobs, _ = plan(FakeRun(), base, args("a cat", position="end"))
    assert jobs[0].prompt == "photo a cat"
    jobs, _ = plan(FakeRun(), base.model_copy(update={"prompt": ""}), args("a cat"))
    assert jobs[0].prompt == "a cat"  # nothing typed: the line is the prompt
    random_seed = base.model_copy(update={"seed": -1})
    same = [j.seed for j in plan(FakeRun(), random_seed, args("a\nb\nc", same=True))[0]]
    assert same[0] != -1 and same == [same[0]] * 3
    assert [j.seed for j in plan(FakeRun(), random_seed, args("a\nb"))[0]] == [-1, -1]  # each line its own


def test_a_bad_line_is_refused_before_any_job_runs(loaded):
    run = FakeRun()
    with pytest.raises(ValueError, match=r"line 2 .*unknown option --colour"):
        loaded.module.run_script(run, Txt2ImgRequest(), args("a cat\n--colour red"))
    with pytest.raises(ValueError, match=r"line 1 .*steps"):  # the request's own limits
        loaded.module.run_script(run, Txt2ImgRequest(), args("--steps 9999"))
    with pytest.raises(ValueError, match="empty"):
        loaded.module.run_script(run, Txt2ImgRequest(), args(" \n "))
    assert run.jobs == []


def test_it_stops_when_interrupted(loaded):
    run = FakeRun(stop_after=2)
    result = loaded.module.run_script(run, Txt2ImgRequest(prompt=""), args("a\nb\nc\nd"))
    assert result.interrupted and result.images == ["image 1", "image 2"] and run.parts == [(0, 4), (1, 4)]
    assert result.info["all_prompts"] == ["a", "b"]


def test_three_lines_give_three_jobs_with_their_own_overrides(ctx):
    text = 'a red cat\n--prompt "a blue dog" --steps 2 --seed 7\n--prompt \'green bird\' --negative_prompt blurry ' \
           '--seed 11 --cfg_scale 5'
    result = ctx.service.txt2img(Txt2ImgRequest(**SMALL, seed=3, script_name=TITLE, script_args=args(text)))
    assert len(result.images) == 3 and result.seeds == [3, 7, 11]
    first, second, third = result.infotexts
    assert first.startswith("a red cat\n") and "Steps: 1," in first and "Seed: 3," in first
    assert second.startswith("a blue dog\n") and "Steps: 2," in second and "Seed: 7," in second
    assert third.startswith("green bird\nNegative prompt: blurry\n") and "CFG scale: 5," in third
    assert result.info["all_prompts"] == ["a red cat", "a blue dog", "green bird"]
    assert result.info["infotexts"] == result.infotexts


def test_the_api_takes_a1111s_positional_script_args(ctx):
    from backend.api.routes import create_api_router

    app = FastAPI()
    app.include_router(create_api_router(ctx), prefix="/sdapi/v1")
    client = TestClient(app)
    listed = client.get("/sdapi/v1/scripts").json()
    assert "prompts from file or textbox" in listed["txt2img"] and "prompts from file or textbox" in listed["img2img"]
    payload = {"prompt": "", "width": 64, "height": 64, "steps": 1, "sampler_name": "Euler", "seed": 5,
               "override_settings": {"sd_model_checkpoint": "sd1.safetensors"},
               "script_name": "prompts from file or textbox",
               "script_args": [True, False, "start", "a cat\n--prompt a dog --steps 2"]}
    response = client.post("/sdapi/v1/txt2img", json=payload)
    assert response.status_code == 200, response.text
    body = response.json()
    info = json.loads(body["info"])
    assert len(body["images"]) == 2 and info["all_seeds"] == [5, 6]  # iterate seed every line
    assert info["infotexts"][0].startswith("a cat\n") and info["infotexts"][1].startswith("a dog\n")
    bad = client.post("/sdapi/v1/txt2img", json={**payload, "script_args": [False, False, "start", "--nope 1"]})
    assert bad.status_code >= 400 and "--nope" in bad.text
