"""The refiner, as A1111 1.6+ runs it: the base's pass hands over to the refiner's UNet at the switch point,
inside one schedule (same latents, scheduler and noise stream), both models kept cached.

UNet calls are counted with forward pre-hooks on each loaded UNet; the timesteps the base saw tell which
steps were before the switch ((999 - t) / 1000 < switch_at, A1111's rule).
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient

from backend.api.routes import create_api_router
from backend.app_context import AppPaths, build_app_context
from backend.devices import DeviceSettings
from backend.generation.request import Img2ImgRequest, Txt2ImgRequest
from backend.images.infotext import parse_infotext
from backend.sdxl.refiner import Refiner
from tests.fixtures.tiny_checkpoints import TinySpec, write_checkpoint

SDXL, COPY, REFINER, SD1, SD1_OTHER = ("sdxl.safetensors", "sdxl-copy.safetensors", "sdxl-refiner.safetensors",
                                       "sd1.safetensors", "sd1-other.safetensors")


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, checkpoint_dir):
    models = tmp_path_factory.mktemp("refiner-models")
    shutil.copy(checkpoint_dir / SDXL, models / SDXL)
    shutil.copy(checkpoint_dir / SDXL, models / COPY)  # the base itself, under another name
    write_checkpoint(models / REFINER, TinySpec("sdxl-refiner"), seed=7)
    shutil.copy(checkpoint_dir / SD1, models / SD1)
    shutil.copy(checkpoint_dir / SD1_OTHER, models / SD1_OTHER)
    device = DeviceSettings.from_flags(device="cpu", precision="full")
    context = build_app_context(AppPaths(root=tmp_path_factory.mktemp("refiner"), checkpoint_dirs=[models],
                                         builtin_checkpoints=[]), device)
    context.manager.cache_size = 1  # a refiner job keeps both models anyway
    return context


@pytest.fixture(autouse=True)
def default_refiner_settings(ctx):
    ctx.options.update_extra({"refiner_switch_by_sample_steps": False, "hires_fix_refiner_pass": "second pass"})


def job(checkpoint=SDXL, refiner: str | None = None, switch_at: float = 0.8, **fields) -> dict:
    values = dict(prompt="a red ball", negative_prompt="blurry", width=64, height=64, steps=10, seed=11,
                  sampler_name="Euler a", save_images=False, checkpoint=checkpoint,
                  refiner=Refiner(checkpoint=refiner, switch_at=switch_at))
    values.update(fields)
    return values


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


class Calls:
    """Each call of one UNet: its timestep, and (SDXL) its time ids."""

    def __init__(self, unet):
        self.unet, self.timesteps, self.time_ids = unet, [], []

    def __enter__(self):
        self.handle = self.unet.register_forward_pre_hook(self._record, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    def _record(self, module, args, kwargs):
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        self.timesteps.append(float(torch.as_tensor(timestep).flatten()[0]))
        added = kwargs.get("added_cond_kwargs") or {}
        if "time_ids" in added:
            self.time_ids.append(added["time_ids"].float().tolist())


def unets(ctx, base: str, refiner: str):
    """The two loaded UNets (the pair is loaded as a job would: both stay cached)."""
    loaded, refined = ctx.manager.load_with_refiner(base, refiner)
    return loaded.pipe.unet, refined.pipe.unet


def run_counted(ctx, request, base=SDXL, refiner=REFINER):
    base_unet, refiner_unet = unets(ctx, base, refiner)
    with Calls(base_unet) as on_base, Calls(refiner_unet) as on_refiner:
        result = (ctx.service.img2img if isinstance(request, Img2ImgRequest) else ctx.service.txt2img)(request)
    return result, on_base, on_refiner


def test_the_refiner_runs_exactly_the_steps_after_the_switch(ctx):
    result, on_base, on_refiner = run_counted(ctx, Txt2ImgRequest(**job(refiner=REFINER)))
    assert on_base.timesteps and on_refiner.timesteps
    assert all((999 - t) / 1000 < 0.8 for t in on_base.timesteps)  # before the switch: the base
    assert all((999 - t) / 1000 >= 0.8 for t in on_refiner.timesteps)  # after it: the refiner, to the end
    assert len(on_base.timesteps) + len(on_refiner.timesteps) == 10  # one schedule, one call a step (batched CFG)
    assert on_base.timesteps[-1] > on_refiner.timesteps[0]
    # The refiner is told its aesthetic scores (negative first), not the target size.
    assert on_refiner.time_ids[0] == [[64, 64, 0, 0, 2.5], [64, 64, 0, 0, 6.0]]
    assert on_base.time_ids[0] == [[64, 64, 0, 0, 64, 64]] * 2
    params = parse_infotext(result.infotexts[0])
    refiner_info = ctx.manager.find(REFINER)
    assert params["Refiner"] == f"sdxl-refiner [{refiner_info.shorthash}]" and params["Refiner switch at"] == "0.8"


def test_the_refiner_changes_the_picture_and_the_aesthetic_scores_reach_it(ctx):
    plain = pixels(ctx.service.txt2img(Txt2ImgRequest(**job())))
    refined = pixels(ctx.service.txt2img(Txt2ImgRequest(**job(refiner=REFINER))))
    assert np.abs(refined - plain).mean() > 0.5
    ctx.options.update_extra({"sdxl_refiner_high_aesthetic_score": 9.0})
    try:
        _, _, on_refiner = run_counted(ctx, Txt2ImgRequest(**job(refiner=REFINER)))
    finally:
        ctx.options.update_extra({"sdxl_refiner_high_aesthetic_score": 6.0})
    assert on_refiner.time_ids[0][1] == [64, 64, 0, 0, 9.0]


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M"])
def test_a_model_given_itself_as_refiner_draws_the_pixels_of_no_refiner(ctx, sampler):
    """The hand-over keeps the latents, the schedule, the solver's history and the noise stream."""
    plain = ctx.service.txt2img(Txt2ImgRequest(**job(sampler_name=sampler)))
    result, on_base, on_copy = run_counted(ctx, Txt2ImgRequest(**job(refiner=COPY, sampler_name=sampler)), refiner=COPY)
    assert on_copy.timesteps and on_base.timesteps  # it did switch
    assert np.array_equal(pixels(result), pixels(plain))
    assert "Refiner: sdxl-copy" in result.infotexts[0]


def test_the_same_file_as_refiner_switches_nothing(ctx):
    plain = ctx.service.txt2img(Txt2ImgRequest(**job()))
    same = ctx.service.txt2img(Txt2ImgRequest(**job(refiner=SDXL)))
    assert np.array_equal(pixels(same), pixels(plain)) and "Refiner" not in same.infotexts[0]


def test_an_sd1_refiner_takes_over_an_sd1_job(ctx):
    plain = pixels(ctx.service.txt2img(Txt2ImgRequest(**job(checkpoint=SD1))))
    result, on_base, on_other = run_counted(ctx, Txt2ImgRequest(**job(checkpoint=SD1, refiner=SD1_OTHER,
                                                                      switch_at=0.5)), base=SD1, refiner=SD1_OTHER)
    assert on_base.timesteps and on_other.timesteps and len(on_base.timesteps) + len(on_other.timesteps) == 10
    assert all((999 - t) / 1000 >= 0.5 for t in on_other.timesteps)
    assert np.abs(pixels(result) - plain).mean() > 0.5
    assert "Refiner: sd1-other" in result.infotexts[0] and "Refiner switch at: 0.5" in result.infotexts[0]


def test_both_models_stay_cached_with_a_cache_of_one_and_the_next_job_loads_nothing(ctx):
    ctx.service.txt2img(Txt2ImgRequest(**job(refiner=REFINER)))
    before = {id(m.pipe) for m in ctx.manager.loaded()}
    assert {m.info.name for m in ctx.manager.loaded()} == {SDXL, REFINER}
    ctx.service.txt2img(Txt2ImgRequest(**job(refiner=REFINER, seed=12)))
    assert {id(m.pipe) for m in ctx.manager.loaded()} == before  # the same objects: nothing was read again


def test_a_refiner_alone_is_refused_for_txt2img_with_a_message_saying_where_to_pick_it(ctx):
    with pytest.raises(ValueError) as info:
        ctx.service.txt2img(Txt2ImgRequest(**job(checkpoint=REFINER)))
    assert "choose it as the Refiner" in str(info.value)


def test_a_refiner_of_another_latent_space_is_refused_and_the_model_keeps_serving(ctx):
    plain = pixels(ctx.service.txt2img(Txt2ImgRequest(**job())))
    with pytest.raises(ValueError) as info:
        ctx.service.txt2img(Txt2ImgRequest(**job(refiner=SD1)))
    assert "another latent space" in str(info.value)
    assert np.array_equal(pixels(ctx.service.txt2img(Txt2ImgRequest(**job()))), plain)


def test_the_switch_by_sampling_steps_setting(ctx):
    ctx.options.update_extra({"refiner_switch_by_sample_steps": True})
    result, on_base, on_refiner = run_counted(ctx, Txt2ImgRequest(**job(refiner=REFINER)))
    assert (len(on_base.timesteps), len(on_refiner.timesteps)) == (8, 2)
    assert "Refiner switch by sampling steps: True" in result.infotexts[0]


HIRES = {"enabled": True, "upscaler": "Latent", "upscale_by": 2.0, "steps": 4, "denoising_strength": 0.6}
HIRES_RUN = 2  # the hires pass runs int(4 * 0.6) of its 4 steps, from the noise level the denoise leaves


def test_with_hires_fix_the_refiner_takes_the_second_pass_by_default(ctx):
    result, on_base, on_refiner = run_counted(ctx, Txt2ImgRequest(**job(refiner=REFINER, hires=HIRES)))
    # The first pass (10 steps) is the base's alone; the hires pass hands over within its own schedule.
    assert len(on_base.timesteps) >= 10 and on_refiner.timesteps
    assert len(on_base.timesteps) + len(on_refiner.timesteps) == 10 + HIRES_RUN
    assert all((999 - t) / 1000 >= 0.8 for t in on_refiner.timesteps)
    assert "Hires refiner" not in result.infotexts[0] and "Refiner switch at: 0.8" in result.infotexts[0]


def test_with_the_first_pass_setting_the_refiner_finishes_the_first_pass_and_keeps_the_hires_one(ctx):
    ctx.options.update_extra({"hires_fix_refiner_pass": "first pass"})
    result, on_base, on_refiner = run_counted(ctx, Txt2ImgRequest(**job(refiner=REFINER, hires=HIRES)))
    assert len(on_base.timesteps) < 10  # it switched inside the first pass ...
    assert len(on_refiner.timesteps) == 10 + HIRES_RUN - len(on_base.timesteps)  # ... and the hires pass stays
    assert on_refiner.timesteps[-HIRES_RUN] > on_refiner.timesteps[-HIRES_RUN - 1]  # its noisier start included
    assert "Hires refiner: first pass" in result.infotexts[0]


def test_img2img_hands_over_too(ctx):
    from PIL import Image

    picture = Image.new("RGB", (64, 64), (200, 40, 40))
    request = Img2ImgRequest(**job(refiner=REFINER, switch_at=0.6), init_images=[picture], denoising_strength=0.75)
    result, on_base, on_refiner = run_counted(ctx, request)
    assert on_base.timesteps and on_refiner.timesteps
    assert all((999 - t) / 1000 >= 0.6 for t in on_refiner.timesteps)
    assert "Refiner: sdxl-refiner" in result.infotexts[0]


def test_the_api_takes_a1111s_refiner_fields(ctx):
    app = FastAPI()
    app.include_router(create_api_router(ctx), prefix="/sdapi/v1")
    client = TestClient(app)
    answer = client.post("/sdapi/v1/txt2img", json={
        "prompt": "a red ball", "steps": 10, "width": 64, "height": 64, "seed": 11, "sampler_name": "Euler a",
        "override_settings": {"sd_model_checkpoint": SDXL}, "refiner_checkpoint": REFINER,
        "refiner_switch_at": 0.7, "save_images": False})
    assert answer.status_code == 200, answer.text
    info = answer.json()["info"]
    assert "Refiner: sdxl-refiner" in info and "Refiner switch at: 0.7" in info
