"""SD2 768-v versus SD2 epsilon without a .yaml: A1111's test forward pass.

A1111 (modules/sd_models_config.py, `is_using_v_parameterization_for_sd2`) runs the UNet once on a
latent of 0.5s at t=999 with a context of 0.5s and calls the file v-prediction when
mean(unet(x) - x) < -1. At t=999 the latent is nearly pure noise, so an epsilon model answers about
x (out - x near 0) while a v model answers about -x0, far below x.

A random-weight tiny UNet behaves like neither, so the fixtures here make the UNet's answer on that
input what each kind would give: the output convolution (LDM `out.2`) gets zero weights and a
constant bias, so the UNet predicts that constant everywhere. Bias -1 (v-like: "about -x0" for a
clean latent around 1): the mean of out - x is -1.5, below A1111's threshold. Bias 0.5 (epsilon-like:
"about x"): 0, well above it. The probe sees only that number, as A1111's does, so these fixtures
exercise exactly the decision and everything the loader does with it; the threshold itself is
tested on both sides of -1.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from safetensors.torch import save_file

from backend.devices import DeviceSettings
from backend.generation.samplers import make_scheduler
from backend.models.manager import ModelManager
from backend.models.prediction_probe import CONTEXT_TOKENS, TIMESTEP, probe_score, probe_v_prediction
from tests.fixtures.tiny_checkpoints import TinySpec, build_components, to_original_layout

CPU = DeviceSettings.from_flags(device="cpu", precision="full")
OUT_W, OUT_B = "model.diffusion_model.out.2.weight", "model.diffusion_model.out.2.bias"
V_BIAS, EPS_BIAS = -1.0, 0.5
V_YAML = 'model:\n  params:\n    parameterization: "v"\n'
EPS_YAML = "model:\n  params:\n    linear_start: 0.00085\n"


def write_constant_output(path: Path, spec: TinySpec, bias: float, seed: int = 0, yaml: str | None = None,
                          extra: dict | None = None) -> Path:
    """A tiny original-layout checkpoint whose UNet predicts `bias` everywhere, for every input."""
    sd = to_original_layout(spec, build_components(spec, seed), seed)
    sd[OUT_W].zero_()
    sd[OUT_B].fill_(bias)
    sd |= extra or {}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    if yaml is not None:
        path.with_suffix(".yaml").write_text(yaml)
    return path


@contextmanager
def unet_forwards():
    """Counts every UNet forward in the process (a torch global hook, so the loader stays untouched)."""
    calls: list[UNet2DConditionModel] = []

    def hook(module, args):
        if isinstance(module, UNet2DConditionModel):
            calls.append(module)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


def load(folder: Path, name: str):
    manager = ModelManager([folder], CPU)
    with unet_forwards() as calls:
        loaded = manager.load(name)
    return manager, loaded, len(calls)


def _attention_upcast(unet) -> set[bool]:
    return {m.upcast_attention for m in unet.modules() if isinstance(m, Attention)}


# --------------------------------------------------------------------------- the loader


def test_sd2_v_without_yaml_loads_as_if_a_yaml_said_v(tmp_path, caplog):
    write_constant_output(tmp_path / "probed" / "m.safetensors", TinySpec("sd2"), V_BIAS)
    write_constant_output(tmp_path / "told" / "m.safetensors", TinySpec("sd2"), V_BIAS, yaml=V_YAML)

    manager = ModelManager([tmp_path / "probed"], CPU)
    # The listing reads only the header: no weights, no forward pass, so it cannot know yet.
    assert manager.checkpoints()[0].variant.prediction_type == "epsilon"
    with caplog.at_level(logging.INFO, logger="backend.models.loader"), unet_forwards() as calls:
        probed = manager.load("m")
    assert len(calls) == 1  # the probe's one forward
    said = [r.getMessage() for r in caplog.records if r.name == "backend.models.loader"]
    assert len(said) == 1 and "m.safetensors" in said[0] and "v-prediction" in said[0]

    _, told, told_forwards = load(tmp_path / "told", "m")
    assert told_forwards == 0
    assert probed.variant == told.variant
    assert probed.variant.prediction_type == "v_prediction" and probed.variant.label == "SD2.x v"
    assert probed.variant.native_size == 768
    # Loading taught the listing (manager._read sets info.variant; refresh keeps what loading learnt).
    assert manager.find("m").variant.prediction_type == "v_prediction"
    assert manager.refresh()[0].variant.prediction_type == "v_prediction"

    unet = probed.pipe.unet
    assert dict(unet.config) == dict(told.pipe.unet.config)
    assert unet.config.upcast_attention is True and unet.config.sample_size == 96
    assert _attention_upcast(unet) == {True}  # the modules themselves, not only the config
    assert dict(probed.pipe.scheduler.config) == dict(told.pipe.scheduler.config)
    assert probed.pipe.scheduler.config.prediction_type == "v_prediction"
    theirs = told.pipe.unet.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in unet.state_dict().items())

    # The schedulers the studio makes per request: with the variant's prediction type (sampling.py's
    # scheduler()) and from the pipeline's config alone.
    for sampler in ("Euler a", "DPM++ 2M"):
        base = probed.pipe.scheduler.config
        assert make_scheduler(sampler, "Automatic", base, probed.variant.prediction_type).config.prediction_type \
            == "v_prediction"
        assert make_scheduler(sampler, "Automatic", base).config.prediction_type == "v_prediction"


def test_sd2_epsilon_without_yaml_stays_epsilon(tmp_path):
    write_constant_output(tmp_path / "m.safetensors", TinySpec("sd2"), EPS_BIAS)
    _, loaded, forwards = load(tmp_path, "m")
    assert forwards == 1
    assert loaded.variant.prediction_type == "epsilon" and loaded.variant.native_size == 512
    assert loaded.pipe.scheduler.config.prediction_type == "epsilon"
    assert not loaded.pipe.unet.config.upcast_attention and _attention_upcast(loaded.pipe.unet) == {False}
    assert make_scheduler("Euler a", "Automatic", loaded.pipe.scheduler.config,
                          loaded.variant.prediction_type).config.prediction_type == "epsilon"


@pytest.mark.parametrize("bias,yaml,expected", [
    (V_BIAS, EPS_YAML, "epsilon"),  # the probe would say v; the user's .yaml says epsilon
    (EPS_BIAS, V_YAML, "v_prediction"),  # the probe would say epsilon; the .yaml says v
])
def test_a_yaml_decides_and_the_probe_does_not_run(tmp_path, bias, yaml, expected):
    write_constant_output(tmp_path / "m.safetensors", TinySpec("sd2"), bias, yaml=yaml)
    _, loaded, forwards = load(tmp_path, "m")
    assert forwards == 0
    assert loaded.variant.prediction_type == expected
    assert loaded.pipe.scheduler.config.prediction_type == expected
    assert bool(loaded.pipe.unet.config.upcast_attention) == (expected == "v_prediction")


def test_the_v_pred_marker_decides_and_the_probe_does_not_run(tmp_path):
    write_constant_output(tmp_path / "m.safetensors", TinySpec("sd2"), EPS_BIAS, extra={"v_pred": torch.zeros(0)})
    _, loaded, forwards = load(tmp_path, "m")
    assert forwards == 0
    assert loaded.variant.prediction_type == "v_prediction"
    assert loaded.pipe.scheduler.config.prediction_type == "v_prediction"
    assert loaded.pipe.unet.config.upcast_attention is True


@pytest.mark.parametrize("spec", [TinySpec("sd1"), TinySpec("sdxl"), TinySpec("sd2", inpainting=True)],
                         ids=["sd1", "sdxl", "sd2-inpainting"])
def test_other_families_and_sd2_inpainting_never_run_the_probe(tmp_path, spec):
    """Only plain SD2 ships both kinds with the same keys. SD2 inpainting is skipped as in A1111 (the released
    one is epsilon; the test input has no mask channels). A v-like output must not make any of them v."""
    write_constant_output(tmp_path / "m.safetensors", spec, V_BIAS)
    _, loaded, forwards = load(tmp_path, "m")
    assert forwards == 0
    assert loaded.variant.prediction_type == "epsilon"
    assert loaded.pipe.scheduler.config.prediction_type == "epsilon"


# --------------------------------------------------------------------------- the probe itself


def _tiny_unet(bias: float | None = None, spec: TinySpec = TinySpec("sd2"), seed: int = 0) -> UNet2DConditionModel:
    unet = build_components(spec, seed)["unet"]
    if bias is not None:
        with torch.no_grad():
            unet.conv_out.weight.zero_()
            unet.conv_out.bias.fill_(bias)
    return unet


@pytest.mark.parametrize("bias,is_v", [(-0.49, False), (-0.51, True), (V_BIAS, True), (EPS_BIAS, False), (0.0, False)])
def test_the_threshold_is_a1111s(bias, is_v):
    """mean(out - x) with x = 0.5 is bias - 0.5: v strictly below -1."""
    unet = _tiny_unet(bias)
    assert probe_score(unet) == pytest.approx(bias - 0.5, abs=1e-6)
    assert probe_v_prediction(unet) is is_v


def test_random_tiny_sd2_unets_read_as_epsilon():
    """The other tests' random-weight SD2 fixtures (no .yaml) must keep loading as epsilon."""
    assert not any(probe_v_prediction(_tiny_unet(seed=seed)) for seed in range(4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_probe_is_one_small_forward_and_leaves_the_weights_alone(dtype):
    unet = _tiny_unet(seed=1).to(dtype)
    unet.train()  # whatever mode it is in comes back
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    seen = []

    def hook(module, args, kwargs):
        sample, timestep = args[:2]
        seen.append((tuple(sample.shape), sample.dtype, timestep.tolist(),
                     tuple(kwargs["encoder_hidden_states"].shape), torch.is_grad_enabled()))

    handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        probe_v_prediction(unet)
    finally:
        handle.remove()
    # One forward, batch 1, an 8x8 latent (a 64x64 image), two context tokens, t=999, no autograd graph;
    # half precision on the CPU runs in fp32, as A1111's probe does.
    assert seen == [((1, 4, 8, 8), torch.float32, [TIMESTEP], (1, CONTEXT_TOKENS, 32), False)]
    assert unet.dtype == dtype and unet.training
    after = unet.state_dict()
    assert before.keys() == after.keys()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize("spec", [TinySpec("sd2", inpainting=True), TinySpec("sdxl")], ids=["inpainting", "sdxl"])
def test_the_probe_refuses_unets_it_cannot_feed(spec):
    with pytest.raises(ValueError, match="prediction probe"):
        probe_v_prediction(_tiny_unet(spec=spec))
