"""The sampler table: every sampler x schedule type it claims runs; bad pairs are refused clearly."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from backend.generation.samplers import (
    SAMPLER_NAMES,
    SCHEDULE_TYPES,
    effective_schedule,
    make_scheduler,
    resolve_sampler_name,
    resolve_schedule_type,
    schedule_types_for,
    scheduler_label,
    split_legacy_sampler_name,
)
from backend.generation.sampling import derive_pipeline
from tests.test_txt2img import build_tiny_sd1

SD_CONFIG = {
    "_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "timestep_spacing": "leading", "clip_sample": False, "trained_betas": None,
}

PAIRS = [(sampler, schedule) for sampler in SAMPLER_NAMES for schedule in schedule_types_for(sampler)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_sd1(tmp_path_factory.mktemp("tiny"))


@pytest.mark.parametrize(("sampler", "schedule"), PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_every_claimed_pair_samples_end_to_end(tiny, sampler, schedule):
    scheduler = make_scheduler(sampler, schedule, tiny.pipe.scheduler.config)
    pipe = derive_pipeline(tiny.pipe, StableDiffusionPipeline, scheduler)
    images = pipe("a red cat", negative_prompt="", num_inference_steps=4, height=64, width=64,
                  generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (1, 64, 64, 3)
    assert np.isfinite(images).all()
    assert images.std() > 1e-3
    again = pipe("a red cat", negative_prompt="", num_inference_steps=4, height=64, width=64,
                 generator=torch.Generator().manual_seed(0), output_type="np").images
    assert np.array_equal(images, again)  # a scheduler instance survives reuse by the same pipeline


def test_known_samplers_and_schedule_types():
    assert SCHEDULE_TYPES == ("Automatic", "Uniform", "Karras", "Exponential", "SGM Uniform")
    for name in ("Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE",
                 "DPM++ 3M SDE", "DDIM", "PLMS", "UniPC", "LCM", "TCD"):
        assert name in SAMPLER_NAMES
        assert schedule_types_for(name)[0] == "Automatic"
    assert "DPM fast" not in SAMPLER_NAMES and "DPM adaptive" not in SAMPLER_NAMES


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_each_call_makes_a_new_scheduler(sampler):
    a = make_scheduler(sampler, "Automatic", SD_CONFIG)
    b = make_scheduler(sampler, "Automatic", SD_CONFIG)
    assert a is not b and type(a) is type(b)
    a.set_timesteps(5)
    b.set_timesteps(3)
    assert len(a.timesteps) != len(b.timesteps)


def test_model_noise_schedule_is_kept_and_base_config_untouched():
    base = dict(SD_CONFIG)
    scheduler = make_scheduler("DPM++ 2M", "Karras", base)
    assert base == SD_CONFIG
    assert (scheduler.config.beta_schedule, scheduler.config.beta_start, scheduler.config.beta_end) == \
        ("scaled_linear", 0.00085, 0.012)
    assert scheduler.config.prediction_type == "epsilon"
    v = make_scheduler("Euler", "Automatic", base, prediction_type="v_prediction")
    assert v.config.prediction_type == "v_prediction"
    assert v.config.timestep_spacing == "leading" and v.config.steps_offset == 1  # the model's spacing
    # DDIM's class default would clip x0 to [-1, 1]; latent models never do.
    assert make_scheduler("DDIM", "Automatic", {"beta_schedule": "scaled_linear"}).config.clip_sample is False


def test_schedule_types_set_the_right_flags():
    karras = make_scheduler("Euler", "Karras", SD_CONFIG)
    assert karras.config.use_karras_sigmas and not karras.config.use_exponential_sigmas
    expo = make_scheduler("DPM++ 2M", "Exponential", SD_CONFIG)
    assert expo.config.use_exponential_sigmas and not expo.config.use_karras_sigmas
    assert make_scheduler("Euler", "SGM Uniform", SD_CONFIG).config.timestep_spacing == "trailing"
    assert make_scheduler("DDIM", "Uniform", SD_CONFIG).config.timestep_spacing == "linspace"
    plain = make_scheduler("Euler", "Uniform", {**SD_CONFIG, "use_karras_sigmas": True})
    assert not plain.config.use_karras_sigmas  # a flag in the model config does not leak through


def test_automatic_follows_a1111_defaults():
    assert effective_schedule("DPM++ 2M", "Automatic") == "Karras"
    assert effective_schedule("DPM++ 2M SDE", "Automatic") == "Exponential"
    assert effective_schedule("Euler a", "Automatic") is None  # the model's own spacing
    assert make_scheduler("DPM2", "Automatic", SD_CONFIG).config.use_karras_sigmas
    assert make_scheduler("DPM++ 3M SDE", "Automatic", SD_CONFIG).config.use_exponential_sigmas


def test_sampler_options():
    m = make_scheduler("DPM++ 3M SDE", "Automatic", SD_CONFIG)
    assert (m.config.algorithm_type, m.config.solver_order) == ("sde-dpmsolver++", 3)
    m = make_scheduler("DPM++ 2M", "Automatic", SD_CONFIG)
    assert (m.config.algorithm_type, m.config.solver_order) == ("dpmsolver++", 2)
    assert make_scheduler("PLMS", "Automatic", SD_CONFIG).config.skip_prk_steps


def test_euler_a_karras_walks_the_karras_sigmas():
    ancestral = make_scheduler("Euler a", "Karras", SD_CONFIG)
    euler = make_scheduler("Euler", "Karras", SD_CONFIG)
    ancestral.set_timesteps(6)
    euler.set_timesteps(6)
    assert torch.allclose(ancestral.sigmas, euler.sigmas)
    assert torch.allclose(ancestral.timesteps, euler.timesteps)
    uniform = make_scheduler("Euler a", "Uniform", SD_CONFIG)
    uniform.set_timesteps(6)
    assert not torch.allclose(ancestral.sigmas, uniform.sigmas)


@pytest.mark.parametrize(("sampler", "schedule"), [("DDIM", "Karras"), ("PLMS", "Exponential"), ("LCM", "Uniform"),
                                                   ("TCD", "Karras")])
def test_unsupported_pairs_raise_a_clear_error(sampler, schedule):
    with pytest.raises(ValueError) as info:
        make_scheduler(sampler, schedule, SD_CONFIG)
    message = str(info.value)
    assert sampler in message and schedule in message and "supports" in message
    with pytest.raises(ValueError):
        scheduler_label(sampler, schedule)


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="unknown sampler"):
        make_scheduler("DPM fast", "Automatic", SD_CONFIG)
    with pytest.raises(ValueError, match="unknown schedule type"):
        make_scheduler("Euler", "Polyexponential", SD_CONFIG)


def test_aliases():
    assert resolve_sampler_name("k_euler_a") == "Euler a"
    assert resolve_sampler_name("Euler A") == "Euler a"
    assert resolve_sampler_name("euler") == "Euler"
    assert resolve_sampler_name("k_dpmpp_2m") == "DPM++ 2M"
    assert resolve_sampler_name("DPM++ 2M Karras") == "DPM++ 2M"
    assert split_legacy_sampler_name("DPM++ 2M SDE Karras") == ("DPM++ 2M SDE", "Karras")
    assert split_legacy_sampler_name("Euler a") == ("Euler a", None)
    assert resolve_schedule_type("sgm_uniform") == "SGM Uniform"
    assert resolve_schedule_type("karras") == "Karras"
    assert scheduler_label("k_dpmpp_2m", "karras") == "Karras"
    assert scheduler_label("Euler a", "Automatic") == "Automatic"
