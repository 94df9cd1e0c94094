"""The Refiner accordion (A1111 1.6+) without a browser: its values reach the request and the picture's
infotext through the tab's own handler, a pasted infotext sets it (or turns it off), and both tabs have it."""
from __future__ import annotations

import gradio as gr
import pytest
from PIL import Image

from backend.generation.request import Img2ImgRequest, Txt2ImgRequest
from backend.sdxl.refiner import Refiner
from ui import paste_fields as pf
from ui.refiner import RefinerWidgets

IDS = ("refiner", "enable_refiner", "refiner_checkpoint", "refiner_switch_at")
TEXT = ("a castle\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x64, Model: tiny-sdxl, "
        "Refiner: tiny-sdxl-copy [0123456789], Refiner switch at: 0.5")
TITLES = ["tiny-sdxl.safetensors [abcdef0123]", "tiny-sdxl-copy.safetensors", "sub/other.safetensors [9876543210]"]


def test_the_accordion_values_become_the_requests_refiner():
    on = RefinerWidgets.request_fields([True, "tiny-sdxl-copy.safetensors", 0.5])
    assert on == {"refiner": Refiner(checkpoint="tiny-sdxl-copy.safetensors", switch_at=0.5)}
    req = Txt2ImgRequest.model_validate(dict(prompt="x", **on))
    assert (req.refiner.enabled, req.refiner.checkpoint, req.refiner.switch_at) == (True, "tiny-sdxl-copy.safetensors",
                                                                                    0.5)
    picture = Image.new("RGB", (64, 64))
    assert Img2ImgRequest.model_validate(dict(prompt="x", init_images=[picture], **on)).refiner.switch_at == 0.5
    for values in ([False, "tiny-sdxl-copy.safetensors", 0.5], [True, None, 0.5], [True, "None", 0.5],
                   [True, "", 0.3]):
        fields = RefinerWidgets.request_fields(values)
        assert fields == {"refiner": Refiner()} and not fields["refiner"].enabled


def test_a_switch_outside_the_range_is_refused():
    with pytest.raises(ValueError, match="switch_at"):
        RefinerWidgets.request_fields([True, "tiny-sdxl-copy.safetensors", 1.5])


def readers():
    with gr.Blocks():
        widgets = [gr.Checkbox(), gr.Dropdown(choices=TITLES), gr.Slider(0.01, 1.0)]
    return pf.refiner_readers(*widgets, titles=lambda: list(TITLES))


def test_pasted_refiner_lines_turn_it_on_with_the_listed_checkpoint_and_switch():
    enabled, checkpoint, switch_at = pf.paste_values(TEXT, readers())
    assert enabled is True and switch_at == 0.5
    assert checkpoint["value"] == "tiny-sdxl-copy.safetensors" and checkpoint["choices"] == TITLES


@pytest.mark.parametrize(("named", "title"), [
    ("tiny-sdxl [abcdef0123]", "tiny-sdxl.safetensors [abcdef0123]"),  # by name, not by the longer one's prefix
    ("tiny-sdxl.safetensors [abcdef0123]", "tiny-sdxl.safetensors [abcdef0123]"),  # the title itself
    ("renamed [abcdef0123]", "tiny-sdxl.safetensors [abcdef0123]"),  # by hash
    ("other", "sub/other.safetensors [9876543210]"),  # in a sub-folder
    ("missing [1111111111]", None),
])
def test_the_refiner_checkpoint_is_matched_by_title_name_or_hash(named, title):
    assert pf.match_checkpoint(named, TITLES) == title


def test_an_infotext_without_a_refiner_or_with_an_unknown_one_turns_it_off():
    plain = TEXT.split(", Refiner:")[0]
    enabled, checkpoint, switch_at = pf.paste_values(plain, readers())
    assert enabled is False and checkpoint == gr.skip() and switch_at == gr.skip()
    unknown = TEXT.replace("tiny-sdxl-copy [0123456789]", "not-here [1111111111]")
    with pytest.warns(UserWarning, match="not-here"):
        enabled, checkpoint, _ = pf.paste_values(unknown, readers())
    assert enabled is False and checkpoint == gr.skip()


def _component_ids(config: dict) -> set:
    return {c.get("props", {}).get("elem_id") for c in config["components"]}


def test_both_tabs_have_the_accordion_and_its_values_go_to_generate(app_context):
    from ui.app import build_ui, checkpoint_choices

    config = build_ui(app_context, allow_folders=False).get_config_file()
    by_elem = {c["props"]["elem_id"]: c for c in config["components"] if c.get("props", {}).get("elem_id")}
    for tab in ("txt2img", "img2img"):
        assert {f"{tab}_{name}" for name in IDS} <= _component_ids(config)
        picker = by_elem[f"{tab}_refiner_checkpoint"]["props"]
        assert [choice[0] for choice in picker["choices"]] == checkpoint_choices(app_context)
        switch = by_elem[f"{tab}_refiner_switch_at"]["props"]
        assert (switch["minimum"], switch["maximum"], switch["step"], switch["value"]) == (0.01, 1.0, 0.01, 0.8)
        generate = by_elem[f"{tab}_generate"]["id"]
        run = next(d for d in config["dependencies"] if [generate, "click"] in [list(t) for t in d["targets"]])
        wanted = {by_elem[f"{tab}_{name}"]["id"] for name in IDS[1:]}
        assert wanted <= set(run["inputs"])


def test_the_txt2img_handler_runs_the_refiner_and_writes_its_infotext(app_context):
    """The tab's own generate handler, widget values in, the picture's infotext out (two tiny SD1 files:
    any checkpoint of the base's latent space may refine, as in A1111)."""
    from ui.session_jobs import SessionJobs
    from ui.txt2img import build_txt2img_tab

    with gr.Blocks() as demo:
        checkpoint = gr.Dropdown(choices=["sd1.safetensors"], value="sd1.safetensors")
        tab = build_txt2img_tab(app_context, SessionJobs(), checkpoint)
    run = next(f for f in demo.fns.values() if (tab.generate._id, "click") in [tuple(t) for t in f.targets])
    overrides = {tab.row.prompt: "a red ball", tab.steps: 2, tab.width: 64, tab.height: 64, tab.seed: 3,
                 tab.refiner.enabled: True, tab.refiner.checkpoint: "sd1-other.safetensors",
                 tab.refiner.switch_at: 0.5}
    values = [overrides.get(component, getattr(component, "value", None)) for component in run.inputs]
    *_, last = run.fn(gr.Request(session_hash="refiner-test"), *values)
    infotext = last[-1][0]
    assert "Refiner: sd1-other [" in infotext and "Refiner switch at: 0.5" in infotext
    # Off: no refiner lines.
    values = [{tab.refiner.enabled: False}.get(component, value) for component, value in zip(run.inputs, values)]
    *_, last = run.fn(gr.Request(session_hash="refiner-test"), *values)
    assert "Refiner" not in last[-1][0]
