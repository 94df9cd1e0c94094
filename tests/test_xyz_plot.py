"""The built-in X/Y/Z plot extension: A1111's value syntax and axis indices, plots through the service
(each grid cell is the plain job's picture, pixel for pixel), the costliest axis outermost, the API with
A1111's positional script_args, and the saved grid."""
from __future__ import annotations

import base64
import importlib
import importlib.util
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from backend.generation.job import JobControl
from backend.generation.request import Txt2ImgRequest

EXTENSION = Path(__file__).resolve().parent.parent / "extensions" / "xyz_plot"
PACKAGE = "xyz_plot_under_test"
BASE = dict(prompt="a cat", negative_prompt="", width=64, height=64, steps=1, seed=3, sampler_name="Euler",
            checkpoint="sd1.safetensors", save_images=False)
SIZE = 64


def _module(name: str):
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACKAGE, EXTENSION / "__init__.py",
                                                      submodule_search_locations=[str(EXTENSION)])
        package = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"{PACKAGE}.{name}")


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def cell(grid: Image.Image, col: int, row: int, left: int, top: int, margin: int = 0) -> np.ndarray:
    x, y = left + (SIZE + margin) * col, top + (SIZE + margin) * row
    return pixels(grid.crop((x, y, x + SIZE, y + SIZE)))


# --- the value syntax and the axes (no model) ---

def test_values_are_csv_with_quotes_and_integer_ranges():
    values = _module("values")
    assert values.split_csv('a, "b, c" ,d') == ["a", "b, c", "d"]
    assert values.expand_ints(["1-5"]) == [1, 2, 3, 4, 5]
    assert values.expand_ints(["1-10 (+2)", "10-1 (-3)"]) == [1, 3, 5, 7, 9, 10, 7, 4, 1]
    assert values.expand_ints(["1-10 [5]"]) == [1, 3, 5, 7, 10]  # A1111's truncated linspace
    assert values.expand_ints(["-1", " 7", "3-1"]) == [-1, 7, 3, 2, 1]
    with pytest.raises(ValueError, match="'abc' is not a whole number"):
        values.expand_ints(["abc"])
    with pytest.raises(ValueError, match="steps away"):
        values.expand_ints(["1-5 (-1)"])


def test_float_ranges_and_other_kinds():
    values = _module("values")
    assert values.expand_floats(["0.1-0.5 (+0.1)"]) == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert values.expand_floats(["1-2 [3]", "7.5"]) == [1.0, 1.5, 2.0, 7.5]
    assert values.expand_floats(["2-1 (-0.5)"]) == [2.0, 1.5, 1.0]
    assert values.parse_values("size", ["64x96", " 128 x 64 "]) == ["64x96", "128x64"]
    assert values.parse_values("permutations", ["a", "b"]) == [("a", "b"), ("b", "a")]
    assert values.parse_values("keep_empty", ["cat", ""]) == ["cat", ""]
    assert values.parse_values("str", ["Euler", ""]) == ["Euler"]
    assert _module("axes").reorder("a cat, red, big", ("big", "red")) == "a cat, big, red"


# A1111 v1.10.0's scripts/xyz_grid.py axis_options, in order (T: AxisOptionTxt2Img, I: AxisOptionImg2Img).
# "Skip Early CFG" is not among them: A1111 added it after 1.10.0 (PR #16282, 2024-07-28).
A1111_1_10_AXES = [
    "Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "T:Hires steps", "CFG Scale", "I:Image CFG Scale",
    "Prompt S/R", "Prompt order", "T:Sampler", "T:Hires sampler", "I:Sampler", "Checkpoint name",
    "Negative Guidance minimum sigma", "Sigma Churn", "Sigma min", "Sigma max", "Sigma noise", "Schedule type",
    "Schedule min sigma", "Schedule max sigma", "Schedule rho", "Beta schedule alpha", "Beta schedule beta", "Eta",
    "Clip skip", "Denoising", "Initial noise multiplier", "Extra noise", "T:Hires upscaler",
    "I:Cond. Image Mask Weight", "VAE", "Styles", "UniPC Order", "Face restore", "Token merging ratio",
    "Token merging ratio high-res", "Always discard next-to-last sigma", "SGM noise multiplier",
    "Refiner checkpoint", "Refiner switch at", "RNG source", "FP8 mode", "Size"]


def test_the_axes_are_a1111_1_10s_list_in_its_order_per_tab():
    axes = _module("axes")
    for kind, other in (("txt2img", "I:"), ("img2img", "T:")):
        expected = [label.split(":", 1)[-1] for label in A1111_1_10_AXES if not label.startswith(other)]
        assert [a.label for a in axes.axes_for(kind)] == expected, kind
    assert len(axes.axes_for("txt2img")) == 42 and len(axes.axes_for("img2img")) == 41


def test_axes_are_found_by_label_or_by_a1111_index_per_tab():
    axes = _module("axes")
    find = axes.find_axis
    assert [find(i, "txt2img", "X").label for i in (0, 4, "11", 17, 24, 25, 29, 41)] == \
        ["Nothing", "Steps", "Checkpoint name", "Schedule type", "Clip skip", "Denoising", "VAE", "Size"]
    assert [find(i, "img2img", "X").label for i in (5, 9, 10, 23, 24, 28, 40)] == \
        ["CFG Scale", "Sampler", "Checkpoint name", "Clip skip", "Denoising", "VAE", "Size"]
    assert find("steps", "txt2img", "X").label == "Steps" and find("", "txt2img", "X").label == "Nothing"
    assert find("ControlNet weight", "txt2img", "X").label == "[ControlNet] Weight"
    with pytest.raises(ValueError, match="cannot vary Eta"):
        find(23, "txt2img", "X")
    with pytest.raises(ValueError, match="cannot vary Skip Early CFG"):  # a later A1111's, by label
        find("Skip Early CFG", "txt2img", "X")
    with pytest.raises(ValueError, match="'Banana' is not an X/Y/Z plot axis"):
        find("Banana", "txt2img", "Y")
    with pytest.raises(ValueError, match="txt2img only"):
        find("Hires steps", "img2img", "Z")
    with pytest.raises(ValueError, match="axes 0 to"):
        find(99, "txt2img", "X")
    with pytest.raises(ValueError, match="axes 0 to 41"):
        find(42, "txt2img", "X")


def test_axes_change_the_request_fields_a1111_changes():
    axes = _module("axes")
    request = Txt2ImgRequest(prompt="ink <lora:ink:0.5>", negative_prompt="no <lora:ink:0.5>", width=64, height=64)
    changes = axes.Changes(request)
    values = ["<lora:ink:0.5>", "<lora:ink:1>"]
    axes.find_axis("Prompt S/R", "txt2img", "X").apply(changes, values[1], values)  # a LoRA weight axis
    axes.find_axis("Denoising", "txt2img", "Y").apply(changes, 0.3, [0.3])  # txt2img: hires. fix's
    axes.find_axis("Hires steps", "txt2img", "Z").apply(changes, 4, [4])
    axes.find_axis("Size", "txt2img", "Z").apply(changes, "96x64", ["96x64"])
    assert changes.fields["prompt"] == "ink <lora:ink:1>" and changes.fields["negative_prompt"] == "no <lora:ink:1>"
    assert (changes.fields["hires"]["denoising_strength"], changes.fields["hires"]["steps"]) == (0.3, 4)
    assert (changes.fields["width"], changes.fields["height"]) == (96, 64)
    assert request.hires.steps == 0  # the plot's request itself is left as it was


def test_the_costliest_axis_is_the_outer_loop():
    plot, axes = _module("plot"), _module("axes")

    def plan(label, count):
        axis = next(a for a in axes.AXES if a.label == label)
        return plot.AxisPlan("?", axis, "", list(range(count)), list(range(count)))

    assert plot.loop_order([plan("Steps", 2), plan("Seed", 2), plan("Nothing", 1)]) == \
        [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0)]  # A1111's default: Z, then Y, then X innermost
    order = plot.loop_order([plan("Checkpoint name", 2), plan("Steps", 2), plan("VAE", 2)])
    assert [at[0] for at in order] == [0, 0, 0, 0, 1, 1, 1, 1] and [at[2] for at in order][:4] == [0, 0, 1, 1]


# --- plots through the studio ---

@pytest.fixture(scope="module")
def ctx(tmp_path_factory, checkpoint_dir):
    from backend.app_context import AppPaths, build_app_context
    from backend.devices import DeviceSettings

    root = tmp_path_factory.mktemp("xyz-studio")
    (root / "models").mkdir()
    extensions = root / "extensions"
    extensions.mkdir()
    (extensions / "xyz_plot").symlink_to(EXTENSION)
    paths = AppPaths(root=root, checkpoint_dirs=[checkpoint_dir], builtin_checkpoints=[], extension_dirs=[extensions])
    return build_app_context(paths, DeviceSettings.from_flags(device="cpu", precision="full"))


def plot(ctx, job=None, **args):
    base = {k: args.pop(k) for k in list(args) if k in BASE}
    return ctx.service.txt2img(Txt2ImgRequest(**{**BASE, **base}, script_name="X/Y/Z plot", script_args=args), job)


def plain(ctx, **changes):
    return ctx.service.txt2img(Txt2ImgRequest(**{**BASE, **changes})).images[0]


def test_a_2x2_plot_puts_each_cell_where_its_labels_say(ctx):
    result = plot(ctx, x_type="Steps", x_values="1, 2", y_type="CFG Scale", y_values="3-9 (+6)",
                  include_lone_images=True, margin_size=4)
    grid, lone = result.images[0], result.images[1:]
    left = SIZE * 3 // 4  # A1111: row labels take 3/4 of a cell
    top = grid.height - 2 * SIZE - 4
    assert grid.width == left + 2 * SIZE + 4 and 0 < top < SIZE
    assert len(lone) == 4 and result.info["index_of_first_image"] == 1
    for index, (steps, cfg) in enumerate([(1, 3), (2, 3), (1, 9), (2, 9)]):  # A1111's order: X fastest
        picture = pixels(plain(ctx, steps=steps, cfg_scale=cfg))
        assert np.array_equal(cell(grid, index % 2, index // 2, left, top, 4), picture), (steps, cfg)
        assert np.array_equal(pixels(lone[index]), picture)
        assert f"Steps: {steps}," in result.infotexts[1 + index] and f"CFG scale: {cfg}," in result.infotexts[1 + index]
    assert "Script: X/Y/Z plot, X Type: Steps, X Values: \"1, 2\", Y Type: CFG Scale" in result.infotexts[0]
    assert result.info["infotexts"] == result.infotexts and result.seeds == [3] * 5


def test_a_z_axis_gives_sub_grids_side_by_side_under_their_labels(ctx):
    result = plot(ctx, x_type="Seed", x_values="5, 6", z_type="Steps", z_values="1, 2", include_sub_grids=True,
                  include_lone_images=True)
    grid, subs, lone = result.images[0], result.images[1:3], result.images[3:]
    assert len(lone) == 4 and result.info["index_of_first_image"] == 3
    sub_top = subs[0].height - SIZE  # X labels on top, no row labels (Y is Nothing)
    assert subs[0].size == subs[1].size == (2 * SIZE, sub_top + SIZE) and sub_top > 0
    z_top = grid.height - subs[0].height
    assert grid.width == 2 * subs[0].width and z_top > 0
    for iz, sub in enumerate(subs):
        x = iz * sub.width
        assert np.array_equal(pixels(grid.crop((x, z_top, x + sub.width, grid.height))), pixels(sub))
        for ix in range(2):
            assert np.array_equal(cell(sub, ix, 0, 0, sub_top), pixels(lone[ix + 2 * iz]))
    assert [s for s in result.seeds[3:]] == [5, 6, 5, 6]
    assert "Z Type: Steps" in result.infotexts[0] and "Z Type" not in result.infotexts[1]
    assert "Fixed X Values: \"5, 6\"" in result.infotexts[1]


def test_prompt_sr_vary_seeds_and_random_seeds(ctx):
    result = plot(ctx, x_type="Prompt S/R", x_values="cat, dog", vary_seeds_x=True, include_lone_images=True)
    assert [t.split("\n")[0] for t in result.infotexts[1:]] == ["a cat", "a dog"]
    assert result.seeds[1:] == [3, 4]  # A1111's "Vary seeds for X": the column's index is added
    drawn = plot(ctx, seed=-1, x_type="Seed", x_values="-1, 7", draw_legend=False, include_lone_images=True)
    assert drawn.seeds[2] == 7 and drawn.seeds[1] != -1
    assert f"Fixed X Values: \"{drawn.seeds[1]}, 7\"" in drawn.infotexts[0]
    assert drawn.images[0].size == (2 * SIZE, SIZE)  # no legend: no label room


def test_a_checkpoint_axis_loads_each_checkpoint_once(ctx, monkeypatch):
    seen, loads = [], []
    read = ctx.manager._read
    monkeypatch.setattr(ctx.manager, "_read", lambda info: loads.append(info.name) or read(info))
    ctx.service.hooks.before_job.append(("test", lambda request: seen.append(request.checkpoint)))
    try:
        result = plot(ctx, x_type="Checkpoint name", x_values_dropdown=["sd1.safetensors", "sd1-other"],
                      y_type="Steps", y_values="1, 2", include_lone_images=True)
    finally:
        ctx.service.hooks.before_job.pop()
    assert [s.split(" [")[0] for s in seen] == ["sd1.safetensors"] * 2 + ["sd1-other.safetensors"] * 2
    assert all(loads.count(name) <= 1 for name in loads)
    assert "Model: sd1-other" in result.infotexts[2] and "Model: sd1," in result.infotexts[1]
    assert "X Values: \"sd1.safetensors,sd1-other\"" in result.infotexts[0]  # the dropdown, as CSV


def test_bad_values_fail_before_any_picture_with_their_name(ctx):
    seen = []
    ctx.service.hooks.before_job.append(("test", seen.append))
    try:
        with pytest.raises(ValueError, match="'Euler z' is not one of the samplers"):
            plot(ctx, x_type="Sampler", x_values="Euler, Euler z")
        with pytest.raises(ValueError, match="did not find 'bird'"):
            plot(ctx, x_type="Prompt S/R", x_values="bird, dog")
        with pytest.raises(ValueError, match="'nope' is not one of the checkpoints"):
            plot(ctx, x_type="Checkpoint name", x_values="nope", csv_mode=True)
        with pytest.raises(ValueError, match="X values for Steps: 'x' is not a whole number"):
            plot(ctx, x_type="Steps", x_values="1, x")
    finally:
        ctx.service.hooks.before_job.pop()
    assert seen == []


def test_an_interrupted_plot_stops_and_says_so(ctx):
    job, seen = JobControl(), []
    ctx.service.hooks.before_job.append(("test", lambda request: seen.append(job.interrupt())))
    try:
        result = plot(ctx, job, x_type="Steps", x_values="1, 2, 1")
    finally:
        ctx.service.hooks.before_job.pop()
    assert len(seen) == 1 and result.interrupted


def test_the_api_takes_a1111_positional_args_with_axis_indices(ctx):
    from backend.api.routes import create_api_router

    app = FastAPI()
    app.include_router(create_api_router(ctx), prefix="/sdapi/v1")
    client = TestClient(app)
    assert "x/y/z plot" in client.get("/sdapi/v1/scripts").json()["txt2img"]
    body = {"prompt": "a cat", "width": 64, "height": 64, "steps": 1, "seed": 3, "sampler_name": "Euler",
            "override_settings": {"sd_model_checkpoint": "sd1.safetensors"}, "save_images": False,
            "script_name": "x/y/z plot"}
    args = [4, "1, 2", [], 0, "", [], 0, "", [], True, False, False, False, False, False, False, 0, False]
    response = client.post("/sdapi/v1/txt2img", json={**body, "script_args": args})
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert len(response.json()["images"]) == 1 and "X Type: Steps" in info["infotexts"][0]
    first = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    assert first.width == 2 * SIZE and "Script: X/Y/Z plot" in first.info["parameters"]
    for bad, named in (("Banana", "Banana"), (23, "Eta")):
        refused = client.post("/sdapi/v1/txt2img", json={**body, "script_args": [bad, "1"]})
        assert refused.status_code == 422 and named in refused.json()["detail"]


def test_the_grid_is_saved_with_its_infotext_among_the_grids(ctx):
    result = plot(ctx, save_images=True, x_type="Steps", x_values="1, 2")
    grid_dir = Path(ctx.service.root) / "outputs" / "txt2img-grids"
    assert result.paths and grid_dir in result.paths[0].parents
    with Image.open(result.paths[0]) as saved:
        assert "Script: X/Y/Z plot, X Type: Steps" in saved.info["parameters"]
        assert saved.size == result.images[0].size


# --- the values inputs follow the axis type (plugin API: Arg.depends_on / visible) ---

def test_an_arg_may_depend_on_other_args_and_old_args_still_work(ctx):
    from backend.extensions.scripts import StudioChoices
    from backend.extensions.specs import Arg, check_dependencies

    studio = StudioChoices(ctx.service)
    plain_list = Arg("u", "Upscaler", kind="dropdown", choices=lambda s: s.choices("upscalers"))
    assert plain_list.depends_on == () and plain_list.choices_for(studio) == studio.choices("upscalers")
    assert plain_list.visible_for(studio) is True
    size = Arg("size", "Size", kind="dropdown", depends_on="family",
               choices=lambda s, family: ["1024"] if family == "SDXL" else ["512", "768"],
               visible=lambda s, family: family is not None)
    assert size.depends_on == ("family",)  # one name or several
    assert size.choices_for(studio, "SDXL") == ["1024"] and size.choices_for(studio, "SD1") == ["512", "768"]
    assert size.visible_for(studio) is False  # a value not given is None (the API's script-info)
    check_dependencies([Arg("family", "Family"), size])
    with pytest.raises(ValueError, match="'size' depends on 'family', which is not among"):
        check_dependencies([size])
    with pytest.raises(ValueError, match="cannot depend on itself"):
        Arg("a", "A", depends_on="a")


def test_the_values_dropdown_offers_the_axis_list_and_the_text_box_shows_otherwise(ctx):
    from backend.extensions.scripts import StudioChoices
    from backend.extensions.specs import check_dependencies

    _module("axes")
    args = {a.name: a for a in sys.modules[PACKAGE].ARGS}
    check_dependencies(sys.modules[PACKAGE].ARGS)
    studio = StudioChoices(ctx.service)
    for letter in "xyz":
        dropdown, text = args[f"{letter}_values_dropdown"], args[f"{letter}_values"]
        assert dropdown.depends_on == text.depends_on == (f"{letter}_type", "csv_mode")
    dropdown, text = args["x_values_dropdown"], args["x_values"]
    for axis_type, what in (("Sampler", "samplers"), ("Checkpoint name", "checkpoints"), ("VAE", "vaes"),
                            ("Schedule type", "schedule types"), ("Hires upscaler", "hires upscalers")):
        assert dropdown.choices_for(studio, axis_type, False) == studio.choices(what) != []
        assert dropdown.visible_for(studio, axis_type, False) and not text.visible_for(studio, axis_type, False)
        # "Use text inputs instead of dropdowns": the text box instead
        assert text.visible_for(studio, axis_type, True) and not dropdown.visible_for(studio, axis_type, True)
    assert any(c.startswith("sd1-other") for c in dropdown.choices_for(studio, "Checkpoint name", False))
    for axis_type in ("Seed", "Steps", "CFG Scale", "Prompt S/R", "Nothing", None):
        assert dropdown.choices_for(studio, axis_type, False) == []
        assert text.visible_for(studio, axis_type, False) and not dropdown.visible_for(studio, axis_type, False)


def _read(ctx, letter="X", **args):
    from backend.extensions.scripts import StudioScriptRun

    plot_module = _module("plot")
    run = StudioScriptRun(ctx.service, "txt2img", JobControl())
    options = plot_module.read_options(args)
    return plot_module.read_axis(run, Txt2ImgRequest(**BASE), letter, args, options)


def test_the_plot_reads_the_input_the_page_shows(ctx):
    # A list axis: the dropdown, not what its hidden text box still holds from an earlier axis.
    plan = _read(ctx, x_type="Sampler", x_values="1, 2", x_values_dropdown=["Euler a", "Euler"])
    assert plan.values == ["Euler a", "Euler"] and plan.text == "Euler a,Euler"
    # csv_mode: the text box, not the hidden dropdown.
    plan = _read(ctx, x_type="Sampler", x_values="DPM++ 2M", x_values_dropdown=["Euler a"], csv_mode=True)
    assert plan.values == ["DPM++ 2M"]
    # The shown input empty: the other one (A1111's page moves values across when the mode switches; API
    # clients send text).
    assert _read(ctx, x_type="Sampler", x_values="", x_values_dropdown=["Euler"], csv_mode=True).values == ["Euler"]
    assert _read(ctx, x_type="Sampler", x_values="Euler a", x_values_dropdown=[]).values == ["Euler a"]
    # An axis without a list never reads the dropdown.
    assert _read(ctx, x_type="Seed", x_values="1, 2", x_values_dropdown=["Euler"]).values == [1, 2]
    with pytest.raises(ValueError, match="Seed needs at least one value"):
        _read(ctx, x_type="Seed", x_values="", x_values_dropdown=["5"])


def test_the_ui_updates_the_values_inputs_when_the_type_or_csv_mode_changes(ctx):
    from backend.extensions.scripts import StudioChoices
    from ui.app import build_ui
    from ui.scripts import followed

    config = build_ui(ctx, allow_folders=False).get_config_file()
    by_elem = {c.get("props", {}).get("elem_id"): c for c in config["components"]}
    prefix = "txt2img_script_x_y_z_plot"
    dropdown, text = by_elem[f"{prefix}_x_values_dropdown"], by_elem[f"{prefix}_x_values"]
    assert dropdown["props"]["visible"] is False and text["props"]["visible"] is True  # X type "Nothing"
    triggers = {by_elem[f"{prefix}_x_type"]["id"], by_elem[f"{prefix}_csv_mode"]["id"]}
    for target in (dropdown, text):
        [event] = [d for d in config["dependencies"] if d["outputs"] == [target["id"]]]
        assert {t[0] for t in event["targets"]} == triggers and {t[1] for t in event["targets"]} == {"change"}
        assert event["inputs"][-1] == target["id"]  # its own value too, to keep what is still offered
    _module("axes")
    args = {a.name: a for a in sys.modules[PACKAGE].ARGS}
    studio = StudioChoices(ctx.service)
    update = followed(args["x_values_dropdown"], studio, ["Sampler", False], ["Euler", "sd1.safetensors"])
    assert update["choices"] == studio.choices("samplers") and update["value"] == ["Euler"] and update["visible"]
    assert followed(args["x_values_dropdown"], studio, ["Seed", False], ["Euler"])["visible"] is False
    assert followed(args["x_values"], studio, ["Sampler", True], "Euler") == {"__type__": "update", "visible": True}
