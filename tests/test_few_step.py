"""Few-step sampling (LCM / TCD / Turbo / Lightning / Hyper models and LCM-LoRAs): 1-8 steps at CFG 1-2.

CFG 1 skips the negative pass (one UNet call of batch 1 a step, counted here), the LCM and TCD samplers
run on the tiny checkpoints, "SGM Uniform" starts a 1-step sampler at the top of the noise schedule,
and an LCM-LoRA in latent-consistency's file layout applies as diffusers' own loader applies it.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, TCDScheduler
from fastapi import FastAPI
from fastapi.testclient import TestClient

from backend.api.routes import create_api_router
from backend.app_context import AppPaths, build_app_context
from backend.control.units import ControlUnit
from backend.devices import DeviceSettings
from backend.generation.request import HiresFix, Txt2ImgRequest
from backend.generation.samplers import SamplerSpec, TCDSamplerScheduler, make_scheduler, schedule_types_for
from backend.generation.sampling import derive_pipeline
from backend.images.infotext import parse_infotext
from tests.fixtures.tiny_controlnets import write_controlnet
from tests.fixtures.tiny_ip_adapters import write_adapter, write_encoder_folder
from tests.fixtures.tiny_networks import lcm_lora_modules, write_lcm_lora
from tests.test_controlnet_generation import control_picture
from tests.test_ip_adapter_generation import reference

SD1, SDXL = "sd1.safetensors", "sdxl.safetensors"
SD_CONFIG = {
    "_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "timestep_spacing": "leading", "clip_sample": False, "trained_betas": None,
}


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, checkpoint_dir):
    device = DeviceSettings.from_flags(device="cpu", precision="full")
    context = build_app_context(AppPaths(root=tmp_path_factory.mktemp("few-step"), checkpoint_dirs=[checkpoint_dir],
                                         builtin_checkpoints=[]), device)
    folder = context.networks.loras.folders[0]
    write_lcm_lora(context.manager.load(SD1).pipe, folder / "lcm-sd15.safetensors", seed=1)
    write_lcm_lora(context.manager.load(SDXL).pipe, folder / "lcm-sdxl.safetensors", seed=2)
    context.networks.refresh()
    return context


def txt2img(ctx, prompt="a red cat", **fields):
    values = dict(negative_prompt="blurry", width=64, height=64, steps=4, seed=5, cfg_scale=1.0, sampler_name="LCM",
                  checkpoint=SD1, save_images=False)
    values.update(fields)
    return ctx.service.txt2img(Txt2ImgRequest(prompt=prompt, **values))


def pixels(result, index: int = 0) -> np.ndarray:
    return np.asarray(result.images[index], dtype=np.int16)


class UNetCalls:
    """Per call of a UNet: the batch size of its sample, and its timestep."""

    def __init__(self, unet):
        self.unet = unet
        self.batches: list[int] = []
        self.timesteps: list[float] = []
        self.texts: list[torch.Tensor] = []  # the prompt embeddings of each call

    def __enter__(self):
        self.handle = self.unet.register_forward_pre_hook(self._record, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    def _record(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        self.batches.append(sample.shape[0])
        self.timesteps.append(float(torch.as_tensor(timestep).flatten()[0]))
        self.texts.append((args[2] if len(args) > 2 else kwargs["encoder_hidden_states"]).clone())


def close(a: np.ndarray, b: np.ndarray) -> bool:
    """Batched and single convolutions may round differently in the last bit."""
    return int(np.abs(a - b).max()) <= 2


def unet_of(ctx, checkpoint: str):
    return ctx.manager.load(checkpoint).pipe.unet


# --------------------------------------------------------------------------- CFG 1: no negative pass


@pytest.mark.parametrize("checkpoint", [SD1, SDXL])
def test_cfg_1_calls_the_unet_once_a_step_with_batch_1_and_cfg_7_with_both_halves(ctx, checkpoint):
    with UNetCalls(unet_of(ctx, checkpoint)) as one:
        plain = txt2img(ctx, checkpoint=checkpoint, sampler_name="Euler", steps=3, cfg_scale=1.0)
    with UNetCalls(unet_of(ctx, checkpoint)) as seven:
        txt2img(ctx, checkpoint=checkpoint, sampler_name="Euler", steps=3, cfg_scale=7.0)
    assert one.batches == [1, 1, 1]
    assert seven.batches == [2, 2, 2]
    with UNetCalls(unet_of(ctx, checkpoint)) as two_images:
        batch = txt2img(ctx, checkpoint=checkpoint, sampler_name="Euler", steps=3, cfg_scale=1.0, batch_size=2)
    assert two_images.batches == [2, 2, 2]
    assert close(pixels(batch, 0), pixels(plain))  # a seed's picture, whatever the batch
    # CFG 1 ignores the negative prompt, as the skipped pass implies
    other = txt2img(ctx, checkpoint=checkpoint, sampler_name="Euler", steps=3, cfg_scale=1.0, negative_prompt="dog")
    assert np.array_equal(pixels(other), pixels(plain))


def test_cfg_1_with_prompt_editing_controlnet_ip_adapter_and_previews(ctx):
    models = ctx.root / "models"
    write_controlnet(models / "ControlNet" / "control_tiny_sd15.safetensors", "sd1", seed=1)
    write_adapter(models / "ipadapter" / "ip-adapter_tiny_sd15.bin", unet_of(ctx, SD1), "plain", seed=0)
    write_encoder_folder(models / "clip_vision" / "tiny-vit")
    ctx.control.refresh()
    ctx.options.update(live_previews_enable=True, show_progress_every_n_steps=1)
    try:
        with UNetCalls(unet_of(ctx, SD1)) as plain_calls:
            plain = pixels(txt2img(ctx, "a red cat"))
        with UNetCalls(unet_of(ctx, SD1)) as edited_calls:
            edited = pixels(txt2img(ctx, "a [red:blue:1] cat"))
        # The step callback swapped the (positive-only) embeddings for steps 3 and 4 (A1111 switches once
        # the 0-based step passes 1), batch 1 throughout.
        assert edited_calls.batches == [1] * 4
        assert [torch.equal(a, b) for a, b in zip(plain_calls.texts, edited_calls.texts)] == [True, True, False, False]
        assert torch.equal(edited_calls.texts[2], edited_calls.texts[3])
        assert not np.array_equal(edited, plain)
        for mode in ("Balanced", "ControlNet is more important"):
            unit = ControlUnit(module="none", model="control_tiny_sd15", image=control_picture(), control_mode=mode)
            with UNetCalls(unet_of(ctx, SD1)) as calls:
                controlled = pixels(txt2img(ctx, "a red cat", controlnet_units=[unit]))
            assert calls.batches == [1] * 4
            assert np.abs(controlled - plain).mean() > 0.1
        ip = ControlUnit(module="ip-adapter_clip_sd15", model="ip-adapter_tiny_sd15", image=reference((200, 30, 30)))
        with UNetCalls(unet_of(ctx, SD1)) as calls:
            prompted = pixels(txt2img(ctx, "a red cat", controlnet_units=[ip]))
        assert calls.batches == [1] * 4
        assert np.abs(prompted - plain).mean() > 0.1
        assert np.array_equal(pixels(txt2img(ctx, "a red cat")), plain)
    finally:
        ctx.options.update(live_previews_enable=False)


# --------------------------------------------------------------------------- LCM-LoRA + LCM


def test_lcm_lora_with_lcm_runs_4_unet_calls_at_cfg_1_and_comes_off_exactly(ctx):
    plain = pixels(txt2img(ctx, "a red cat"))
    with UNetCalls(unet_of(ctx, SD1)) as calls:
        result = txt2img(ctx, "a red cat <lora:lcm-sd15:1>")
    assert calls.batches == [1, 1, 1, 1]
    assert calls.timesteps == [999, 759, 499, 259]  # LCM's own picks from its 50-step distillation schedule
    assert np.abs(pixels(result) - plain).mean() > 0.5
    assert np.array_equal(pixels(txt2img(ctx, "a red cat")), plain)
    params = parse_infotext(result.infotexts[0])
    assert (params["Sampler"], params["Schedule type"], params["CFG scale"], params["Steps"]) == \
        ("LCM", "Automatic", "1", "4")
    assert "lcm-sd15: " in params["Lora hashes"]
    assert "Steps: 4, Sampler: LCM, Schedule type: Automatic, CFG scale: 1, Seed: 5," in result.infotexts[0]
    trailing = txt2img(ctx, "a red cat <lora:lcm-sd15:1>", scheduler="SGM Uniform")
    assert "Sampler: LCM, Schedule type: SGM Uniform," in trailing.infotexts[0]
    assert not np.array_equal(pixels(trailing), pixels(result))


@pytest.mark.parametrize(("checkpoint", "lora"), [(SD1, "lcm-sd15"), (SDXL, "lcm-sdxl")])
def test_the_lcm_lora_layout_applies_as_diffusers_load_lora_weights_does(ctx, checkpoint, lora):
    pipe = ctx.manager.load(checkpoint).pipe
    txt2img(ctx, checkpoint=checkpoint, steps=1)  # no LoRA on
    original = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    theirs = copy.deepcopy(pipe)
    theirs.load_lora_weights(str(ctx.networks.loras.folders[0] / f"{lora}.safetensors"))
    theirs.fuse_lora()
    theirs.unload_lora_weights()  # the fused weights stay
    expected = theirs.unet.state_dict()

    txt2img(ctx, f"a red cat <lora:{lora}:1>", checkpoint=checkpoint, steps=1)
    ours = pipe.unet.state_dict()
    targets = {name + ".weight" for name, _ in lcm_lora_modules(pipe.unet)}
    assert len(targets) > 20 and any(".conv1." in t for t in targets) and any("time_emb_proj" in t for t in targets)
    assert ours.keys() == expected.keys()
    for key in ours:
        if key in targets:
            assert not torch.equal(ours[key], original[key]), key
            torch.testing.assert_close(ours[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)
        else:
            assert torch.equal(ours[key], original[key]) and torch.equal(expected[key], original[key]), key
    txt2img(ctx, checkpoint=checkpoint, steps=1)
    assert all(torch.equal(v, original[k]) for k, v in pipe.unet.state_dict().items())


def test_an_sd15_lcm_lora_on_sdxl_is_refused_not_half_applied(ctx):
    before = {k: v.clone() for k, v in unet_of(ctx, SDXL).state_dict().items()}
    result = txt2img(ctx, "a red cat <lora:lcm-sd15:1>", checkpoint=SDXL, steps=1)
    assert any("lcm-sd15" in w for w in result.warnings)
    assert all(torch.equal(v, before[k]) for k, v in unet_of(ctx, SDXL).state_dict().items())


# --------------------------------------------------------------------------- TCD


def test_tcd_runs_4_steps_at_cfg_1_seed_deterministic_and_batch_independent(ctx):
    with UNetCalls(unet_of(ctx, SD1)) as calls:
        first = txt2img(ctx, "a red cat <lora:lcm-sd15:1>", sampler_name="TCD", seed=11)
    assert calls.batches == [1] * 4
    again = txt2img(ctx, "a red cat <lora:lcm-sd15:1>", sampler_name="TCD", seed=11)
    other = txt2img(ctx, "a red cat <lora:lcm-sd15:1>", sampler_name="TCD", seed=12)
    assert np.array_equal(pixels(first), pixels(again))
    assert np.abs(pixels(first) - pixels(other)).mean() > 0.5
    batch = txt2img(ctx, "a red cat <lora:lcm-sd15:1>", sampler_name="TCD", seed=11, batch_size=2)
    assert close(pixels(batch, 0), pixels(first)) and close(pixels(batch, 1), pixels(other))
    assert "Sampler: TCD, Schedule type: Automatic," in first.infotexts[0]


def test_tcd_keeps_its_gamma_although_the_pipeline_passes_eta_0(ctx):
    pipe = ctx.manager.load(SD1).pipe
    ours = make_scheduler("TCD", "Automatic", pipe.scheduler.config)
    assert ours.config.gamma == 0.3

    def latents(scheduler, **call):
        derived = derive_pipeline(pipe, StableDiffusionPipeline, scheduler)
        return derived("a red cat", num_inference_steps=4, guidance_scale=1.0, height=64, width=64,
                       generator=torch.Generator().manual_seed(3), output_type="latent", **call).images

    config = {k: v for k, v in ours.config.items() if k != "gamma"}
    assert torch.equal(latents(ours), latents(TCDScheduler.from_config(config), eta=0.3))  # diffusers' TCD usage
    assert not torch.equal(latents(ours), latents(TCDScheduler.from_config(config)))  # what eta=0.0 would do
    deterministic = TCDSamplerScheduler.from_config({**ours.config, "gamma": 0.0})
    assert torch.equal(latents(deterministic), latents(TCDScheduler.from_config(config)))
    with pytest.raises(ValueError, match="gamma"):
        TCDSamplerScheduler(gamma=1.5)


def test_an_extension_can_offer_tcd_with_another_gamma(ctx):
    catalog = ctx.service.samplers.with_extra((SamplerSpec("TCD 1-step", TCDSamplerScheduler, {"gamma": 1.0},
                                                           schedules=("Automatic", "SGM Uniform")),))
    assert catalog.make_scheduler("TCD 1-step", "Automatic", SD_CONFIG).config.gamma == 1.0


# --------------------------------------------------------------------------- schedules for few steps


@pytest.mark.parametrize("sampler", ["Euler", "Euler a", "DPM++ SDE", "DDIM", "LCM", "TCD"])
def test_sgm_uniform_starts_one_step_at_the_top_of_the_noise_schedule(sampler):
    assert "SGM Uniform" in schedule_types_for(sampler)
    scheduler = make_scheduler(sampler, "SGM Uniform", SD_CONFIG)
    scheduler.set_timesteps(1)
    assert scheduler.timesteps.tolist() == [999]
    if hasattr(scheduler, "sigmas"):
        sigma_max = ((1 - scheduler.alphas_cumprod[-1]) / scheduler.alphas_cumprod[-1]) ** 0.5
        assert float(scheduler.sigmas[0]) == pytest.approx(float(sigma_max), rel=1e-4)
        assert float(scheduler.sigmas[-1]) == 0.0
    scheduler.set_timesteps(4)
    assert [round(float(t)) for t in scheduler.timesteps] in ([999, 749, 499, 249], [999, 749, 500, 250])


def test_one_step_euler_sgm_uniform_job_denoises_from_timestep_999(ctx):
    with UNetCalls(unet_of(ctx, SD1)) as calls:
        result = txt2img(ctx, sampler_name="Euler", scheduler="SGM Uniform", steps=1)
    assert calls.timesteps == [999.0] and calls.batches == [1]
    assert "Steps: 1, Sampler: Euler, Schedule type: SGM Uniform, CFG scale: 1," in result.infotexts[0]
    # hires fix whose second pass is int(1 x 0.5) = 0 steps: the upscale is the result, no UNet call
    hires = HiresFix(enabled=True, upscaler="Latent", upscale_by=2.0, denoising_strength=0.5)
    with UNetCalls(unet_of(ctx, SD1)) as calls:
        bigger = txt2img(ctx, sampler_name="Euler", scheduler="SGM Uniform", steps=1, hires=hires)
    assert calls.batches == [1] and bigger.images[0].size == (128, 128)


def test_dpmpp_sde_uniform_and_sgm_uniform_are_a1111s_two_spacings():
    uniform = make_scheduler("DPM++ SDE", "Uniform", SD_CONFIG)
    sgm = make_scheduler("DPM++ SDE", "SGM Uniform", SD_CONFIG)
    uniform.set_timesteps(4)
    sgm.set_timesteps(4)
    assert uniform.timesteps.tolist() == [999, 666, 333, 0]  # k-diffusion: linspace(t_max, 0, n)
    assert sgm.timesteps.tolist() == [999, 749, 500, 250]  # linspace(t_max, 0, n + 1)[:-1]
    assert float(uniform.sigmas[-1]) == 0.0 and float(sgm.sigmas[-1]) == 0.0
    karras = make_scheduler("DPM++ SDE", "Automatic", SD_CONFIG)
    karras.set_timesteps(4)
    assert karras.config.use_karras_sigmas and karras.timesteps.tolist() == [999, 687, 146, 0]


@pytest.mark.parametrize("sampler", ["LCM", "TCD"])
def test_lcm_and_tcd_keep_the_models_noise_schedule(sampler):
    v_model = {**SD_CONFIG, "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
               "rescale_betas_zero_snr": True}
    scheduler = make_scheduler(sampler, "Automatic", v_model, prediction_type="v_prediction")
    config = scheduler.config
    assert (config.beta_schedule, config.beta_start, config.beta_end) == ("linear", 0.0001, 0.02)
    assert config.prediction_type == "v_prediction" and config.rescale_betas_zero_snr
    assert config.set_alpha_to_one is False and config.clip_sample is False  # latent diffusion's, not the class's
    assert float(scheduler.alphas_cumprod[-1]) < 1e-6  # zero terminal SNR came through
    assert schedule_types_for(sampler) == ["Automatic", "SGM Uniform"]


@pytest.mark.parametrize("sampler", ["LCM", "TCD"])
@pytest.mark.parametrize("steps", [1, 8, 50, 51, 150])
def test_lcm_and_tcd_take_any_step_count_the_studio_allows(sampler, steps):
    scheduler = make_scheduler(sampler, "Automatic", SD_CONFIG)
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps.tolist()
    assert len(timesteps) == steps and timesteps[0] == 999
    assert all(a > b for a, b in zip(timesteps, timesteps[1:]))


def test_lcm_at_more_steps_than_its_distillation_schedule_runs_a_job(ctx):
    result = txt2img(ctx, "a red cat <lora:lcm-sd15:1>", steps=51, width=64, height=64)
    assert "Steps: 51, Sampler: LCM," in result.infotexts[0]


# --------------------------------------------------------------------------- the API


@pytest.fixture(scope="module")
def client(ctx) -> TestClient:
    app = FastAPI()
    app.include_router(create_api_router(ctx), prefix="/sdapi/v1")
    client = TestClient(app, raise_server_exceptions=False)
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": SD1}).status_code == 200
    return client


def test_the_api_lists_lcm_and_tcd_and_runs_them(client):
    samplers = {s["name"]: s for s in client.get("/sdapi/v1/samplers").json()}
    assert "LCM" in samplers and "TCD" in samplers and "k_lcm" in samplers["LCM"]["aliases"]
    for name, schedule in (("LCM", "automatic"), ("k_lcm", "sgm_uniform"), ("TCD", "sgm_uniform")):
        r = client.post("/sdapi/v1/txt2img", json={"prompt": "a red cat <lora:lcm-sd15:1>", "steps": 4, "width": 64,
                                                    "height": 64, "cfg_scale": 1, "seed": 3, "sampler_name": name,
                                                    "scheduler": schedule})
        assert r.status_code == 200, r.text
        infotext = json.loads(r.json()["info"])["infotexts"][0]
        label = {"automatic": "Automatic", "sgm_uniform": "SGM Uniform"}[schedule]
        assert f"Steps: 4, Sampler: {'TCD' if name == 'TCD' else 'LCM'}, Schedule type: {label}, CFG scale: 1," \
            in infotext
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": 2, "width": 64, "height": 64,
                                                "sampler_name": "TCD", "scheduler": "karras"})
    assert r.status_code == 422 and "scheduler" in r.text
