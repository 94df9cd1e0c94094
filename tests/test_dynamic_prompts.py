"""The built-in "Dynamic Prompts" extension: variants and wildcards expanded per picture from its seed,
combinatorial mode, the Template infotext entry, and its switches (accordion, API, settings)."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from backend.extensions import load_extensions
from backend.generation.request import Txt2ImgRequest
from backend.images.infotext import parse_infotext

EXTENSION = Path(__file__).resolve().parent.parent / "extensions" / "dynamic_prompts"
SMALL = {"width": 64, "height": 64, "steps": 1, "sampler_name": "Euler", "checkpoint": "sd1.safetensors",
         "save_images": False}
CAT = "a {red|green|blue|gold} cat"


@pytest.fixture
def extension_root(tmp_path) -> Path:
    root = tmp_path / "extensions"  # this extension alone, as it ships
    root.mkdir()
    (root / EXTENSION.name).symlink_to(EXTENSION, target_is_directory=True)
    return root


def hooks_with(extension_root, **settings):
    """The extension's hooks, loaded with these settings (keys without the dynamic_prompts_ prefix)."""
    found = load_extensions([extension_root], options=lambda: {f"dynamic_prompts_{k}": v for k, v in settings.items()})
    assert [r.id for r in found.loaded()] == ["dynamic_prompts"], [r.error for r in found.records]
    return found.hooks


def expand(hooks, prompt, seeds, negative="", **ext_args):
    request = Txt2ImgRequest(prompt=prompt, extension_args={"dynamic_prompts": ext_args} if ext_args else {})
    prompts, negatives, warnings = hooks.expand_prompts(prompt, negative, seeds, request)
    assert warnings == []
    return prompts, negatives


@pytest.fixture
def hooks(extension_root):
    return hooks_with(extension_root)


@pytest.fixture
def ctx(studio_root, checkpoint_dir, extension_root):
    from backend.app_context import AppPaths, build_app_context
    from backend.devices import DeviceSettings

    paths = AppPaths(root=studio_root, checkpoint_dirs=[checkpoint_dir], builtin_checkpoints=[],
                     extension_dirs=[extension_root])
    return build_app_context(paths, DeviceSettings.from_flags(device="cpu", precision="full"))


def test_it_imports_nothing_of_the_studio_but_the_plugin_api():
    for path in EXTENSION.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            assert all(n == "backend.extensions.api" or n.split(".")[0] not in ("backend", "ui") for n in names)


def test_variants_come_from_each_pictures_seed(hooks):
    prompts, _ = expand(hooks, CAT, [42, 43, 44, 45])
    assert prompts == ["a red cat", "a green cat", "a blue cat", "a green cat"]
    assert expand(hooks, CAT, [44])[0] == ["a blue cat"]  # the seed alone decides, not the place in the batch
    assert expand(hooks, CAT, [44, 44])[0] == ["a blue cat", "a blue cat"]


def test_plain_text_passes_unchanged(hooks):
    for text in ["a plain cat", "snake_case__name", "(cat:1.2) [dog:cow:5] <lora:x:0.5> # tag"]:
        assert expand(hooks, text, [1, 2], negative="blurry") == ([text] * 2, ["blurry"] * 2)


def test_choosing_several_joins_them(hooks, extension_root):
    assert expand(hooks, "{2$$a|b|c}", [5, 6, 7, 8])[0] == ["c, b", "b, a", "c, a", "b, a"]
    assert expand(hooks, "{2$$ and $$a|b|c}", [5])[0] == ["c and b"]  # a separator of its own
    assert expand(hooks_with(extension_root, joiner=","), "{2$$a|b|c}", [5])[0] == ["c,b"]


def test_wildcards_from_the_built_in_folder_and_the_settings_folder(extension_root, tmp_path):
    mine = tmp_path / "my-wildcards"
    (mine / "places").mkdir(parents=True)
    (mine / "places" / "city.txt").write_text("# comment\nParis\n\nRome\n")
    (mine / "colors.txt").write_text("teal\n")  # wins over the built-in colors.txt
    hooks = hooks_with(extension_root, wildcards_dir=str(mine))
    prompts, _ = expand(hooks, "__animals__ in __places/city__", list(range(30, 40)), combinatorial=False)
    assert prompts == ["dog in Paris", "teal bird in Paris", "teal bird in Paris", "cat in Paris", "dog in Paris",
                       "dog in Paris", "dog in Paris", "teal bird in Rome", "large fox in Paris", "cat in Rome"]
    # nested: animals.txt holds "__colors__ bird" and "{small|large} fox"; the folder's colors.txt wins
    builtin = hooks_with(extension_root)
    assert expand(builtin, "__colors__", [1, 2, 3, 4, 5])[0] == ["golden", "blue", "golden", "golden", "green"]


def test_combinatorial_mode_enumerates_every_combination_then_cycles(hooks):
    template = "a {red|blue} {cat|dog}"
    assert expand(hooks, template, [1, 2, 3, 4, 5], combinatorial=True)[0] == [
        "a red cat", "a red dog", "a blue cat", "a blue dog", "a red cat"]
    prompts, negatives = expand(hooks, "x", [1, 2, 3], negative="{ugly|blurry}", combinatorial=True)
    assert prompts == ["x"] * 3 and negatives == ["ugly", "blurry", "ugly"]


def test_settings_give_the_defaults_and_the_request_overrides_them(extension_root):
    off = hooks_with(extension_root, enabled=False, combinatorial=True)
    assert expand(off, CAT, [42])[0] == [CAT]
    assert expand(off, CAT, [42, 43], enabled=True)[0] == ["a red cat", "a green cat"]  # combinatorial: setting
    assert expand(off, CAT, [42, 43], enabled="true", combinatorial="false")[0] == ["a red cat", "a green cat"]


def test_a_job_saves_the_expansion_with_its_template(ctx):
    request = Txt2ImgRequest(**{**SMALL, "save_images": True}, prompt=CAT, negative_prompt="{ugly|blurry}", seed=42,
                             batch_size=4)
    result = ctx.service.txt2img(request)
    assert result.info["all_prompts"] == ["a red cat", "a green cat", "a blue cat", "a green cat"]
    assert result.info["all_negative_prompts"] == ["ugly", "ugly", "blurry", "ugly"]
    saved = Image.open(result.paths[2]).info["parameters"]
    assert saved.startswith("a blue cat\nNegative prompt: blurry\n")
    fields = parse_infotext(saved)
    assert fields["Template"] == CAT and fields["Negative Template"] == "{ugly|blurry}"
    assert saved.index("Negative Template") < saved.index("Version")
    plain = ctx.service.txt2img(Txt2ImgRequest(**SMALL, prompt="a plain cat", negative_prompt="{ugly|blurry}",
                                               seed=1, extension_args={"dynamic_prompts": {"enabled": True}}))
    assert "Template" not in parse_infotext(plain.infotexts[0]) and "Negative Template" in plain.infotexts[0]


def test_the_picture_is_the_one_of_the_expanded_prompt_typed(ctx):
    expanded = ctx.service.txt2img(Txt2ImgRequest(**SMALL, prompt=CAT, seed=44))
    assert expanded.infotexts[0].startswith("a blue cat\n")
    typed = ctx.service.txt2img(Txt2ImgRequest(**SMALL, prompt="a blue cat", seed=44))
    assert "Template" not in typed.infotexts[0]
    assert np.array_equal(np.asarray(expanded.images[0]), np.asarray(typed.images[0]))


def test_switched_off_in_the_request_or_through_the_api(ctx):
    off = ctx.service.txt2img(Txt2ImgRequest(**SMALL, prompt=CAT, seed=44,
                                             extension_args={"dynamic_prompts": {"enabled": False}}))
    assert off.infotexts[0].startswith(CAT + "\n") and "Template" not in off.infotexts[0]

    from backend.api.routes import create_api_router

    app = FastAPI()
    app.include_router(create_api_router(ctx), prefix="/sdapi/v1")
    client = TestClient(app)
    payload = {"prompt": CAT, "width": 64, "height": 64, "steps": 1, "sampler_name": "Euler", "seed": 44,
               "override_settings": {"sd_model_checkpoint": "sd1.safetensors"}}
    for alwayson, first in [({"Dynamic Prompts": {"args": [False]}}, CAT), ({}, "a blue cat"),
                            ({"dynamic_prompts": {"args": [True, True]}}, "a red cat")]:
        response = client.post("/sdapi/v1/txt2img", json={**payload, "alwayson_scripts": alwayson})
        assert response.status_code == 200, response.text
        assert json.loads(response.json()["info"])["infotexts"][0].startswith(first + "\n")
    assert "dynamic prompts" in client.get("/sdapi/v1/scripts").json()["txt2img"]
