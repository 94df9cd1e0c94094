"""Seamless tiling: circular padding in the UNet's and the VAE's convolutions for one job only."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler
from PIL import Image
from torch import nn

from backend.app_context import AppPaths, build_app_context
from backend.control.units import ControlUnit
from backend.devices import DeviceSettings
from backend.generation.request import Txt2ImgRequest
from backend.generation.sampling import derive_pipeline
from backend.generation.tiling import seamless_tiling
from backend.images.infotext import parse_infotext
from tests.fixtures.tiny_controlnets import write_controlnet
from tests.fixtures.tiny_networks import write_kohya_lora

PROMPT = "a red circle on a blue background"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A studio with no checkpoint of its own: the shipped demo model (128x128) serves."""
    root = tmp_path_factory.mktemp("demo")
    (root / "models" / "Stable-diffusion").mkdir(parents=True)
    ctx = build_app_context(AppPaths(root=root, checkpoint_dirs=[root / "models" / "Stable-diffusion"]),
                            DeviceSettings.from_flags(device="cpu", precision="full"))
    ctx.options.update(live_previews_enable=False)
    return ctx


def seam_ratio(picture: Image.Image, axis: int) -> float:
    """How much the wrap-around seam (last column/row next to the first) differs, over a typical neighbour pair.

    Interior pairs are taken at the same place in the VAE's 8-pixel blocks as the wrap-around pair.
    """
    a = np.moveaxis(np.asarray(picture, dtype=np.float32), axis, 1)
    inner = np.abs(np.diff(a, axis=1)).mean(axis=(0, 2))[7::8]
    return float(np.abs(a[:, 0] - a[:, -1]).mean() / np.median(inner))


def demo_picture(ctx, seed: int, tiling: bool) -> Image.Image:
    request = Txt2ImgRequest(prompt=PROMPT, width=128, height=128, steps=10, seed=seed, sampler_name="Euler",
                             tiling=tiling, save_images=False)
    return ctx.service.txt2img(request).images[0]


def test_tiled_pictures_continue_across_their_edges_on_the_demo_model(demo):
    plain = [demo_picture(demo, seed, tiling=False) for seed in range(1, 5)]
    tiled = [demo_picture(demo, seed, tiling=True) for seed in range(1, 5)]
    for axis, name in ((1, "left/right"), (0, "top/bottom")):
        plain_seam = np.mean([seam_ratio(p, axis) for p in plain])
        tiled_seam = np.mean([seam_ratio(p, axis) for p in tiled])
        # Measured here: left/right 11.2 plain vs 3.1 tiled, top/bottom 9.8 vs 1.8 (1 = an ordinary neighbour).
        assert tiled_seam < plain_seam / 2.5, (name, plain_seam, tiled_seam)


def test_the_tiled_model_has_no_edges_at_all(demo):
    """The exact form of "continues across the edge": noise rolled by half a picture gives the picture rolled."""
    loaded = demo.manager.load(demo.manager.default_checkpoint().name)
    pipe = derive_pipeline(loaded.pipe, type(loaded.pipe), EulerDiscreteScheduler.from_config(loaded.pipe.scheduler.config))
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))

    def draw(latents, tiling):
        with seamless_tiling([pipe.unet, pipe.vae], enabled=tiling):
            image = pipe(PROMPT, latents=latents, num_inference_steps=6, height=128, width=128).images[0]
        return np.asarray(image, dtype=np.int16)

    rolled = torch.roll(noise, shifts=(8, 8), dims=(2, 3))
    assert np.abs(np.roll(draw(noise, True), (64, 64), axis=(0, 1)) - draw(rolled, True)).max() <= 2
    assert np.abs(np.roll(draw(noise, False), (64, 64), axis=(0, 1)) - draw(rolled, False)).max() > 20


def test_the_next_job_runs_on_the_convolutions_as_they_were(demo):
    loaded = demo.manager.load(demo.manager.default_checkpoint().name)
    modes = [m.padding_mode for m in [*loaded.pipe.unet.modules(), *loaded.pipe.vae.modules()]
             if isinstance(m, nn.Conv2d)]
    before = np.asarray(demo_picture(demo, 9, tiling=False))
    tiled = demo.service.txt2img(Txt2ImgRequest(prompt=PROMPT, width=128, height=128, steps=10, seed=9,
                                                sampler_name="Euler", tiling=True, save_images=False))
    assert np.array_equal(np.asarray(demo_picture(demo, 9, tiling=False)), before)  # bit for bit
    assert not np.array_equal(np.asarray(tiled.images[0]), before)
    assert set(modes) == {"zeros"} and modes == [m.padding_mode for m in [*loaded.pipe.unet.modules(),
                                                                          *loaded.pipe.vae.modules()]
                                                 if isinstance(m, nn.Conv2d)]
    assert parse_infotext(tiled.infotexts[0])["Tiling"] == "True"
    assert tiled.infotexts[0].index("Tiling: True") < tiled.infotexts[0].index("Version")


def test_padding_comes_back_when_the_job_fails():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    with pytest.raises(RuntimeError), seamless_tiling([nn.Sequential(conv, nn.Conv2d(4, 4, 1))]) as switched:
        assert switched == 1 and conv.padding_mode == "circular"  # the unpadded 1x1 is left alone
        raise RuntimeError("out of memory")
    assert conv.padding_mode == "zeros"


class PaddingSeen:
    """Records the padding mode of one UNet and one VAE-decoder convolution at every call."""

    def __init__(self, pipe):
        self.unet, self.vae = [], []
        unet_conv, vae_conv = pipe.unet.conv_in, pipe.vae.decoder.conv_in
        self.handles = [unet_conv.register_forward_pre_hook(lambda m, a: self.unet.append(m.padding_mode)),
                        vae_conv.register_forward_pre_hook(lambda m, a: self.vae.append(m.padding_mode))]

    def close(self):
        for handle in self.handles:
            handle.remove()


def test_tiling_holds_through_hires_fix_loras_and_controlnet(app_context):
    ctx = app_context
    pipe = ctx.manager.load("sd1.safetensors").pipe
    lora_dir = ctx.networks.loras.folders[0]
    lora_dir.mkdir(parents=True, exist_ok=True)
    write_kohya_lora(pipe, lora_dir / "ink.safetensors", seed=1)
    write_controlnet(ctx.root / "models" / "ControlNet" / "control_tiny_sd15.safetensors", "sd1", seed=1, layout="ldm")
    ctx.networks.refresh()
    ctx.control.refresh()
    unit = ControlUnit(module="none", model="control_tiny_sd15", image=Image.new("RGB", (64, 64), "white"))
    request = Txt2ImgRequest(prompt="a cat <lora:ink:1>", width=64, height=64, steps=3, seed=5, sampler_name="Euler",
                             tiling=True, save_images=False, controlnet_units=[unit],
                             hires={"enabled": True, "upscale_by": 2.0, "denoising_strength": 0.5})
    seen = PaddingSeen(pipe)
    try:
        result = ctx.service.txt2img(request)
        after = len(seen.unet)
        ctx.service.txt2img(request.model_copy(update={"tiling": False}))
    finally:
        seen.close()
    assert result.images[0].size == (128, 128) and "Lora hashes" in result.infotexts[0]
    assert "ControlNet 0" in result.infotexts[0] and "Hires upscale" in result.infotexts[0]
    # Every UNet call of both passes (3 + 1 hires steps, CFG batched) and every decode ran circular...
    assert after >= 4 and set(seen.unet[:after]) == {"circular"} and "circular" in seen.vae
    assert set(seen.unet[after:]) == {"zeros"}  # ...and the same request untiled ran on zero padding
