"""Choosing a VAE (Automatic / None / a file) per request, without reloading the checkpoint."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from backend.generation.request import Txt2ImgRequest
from backend.models.hashing import sha256_of
from backend.models.ldm_export import vae_to_ldm

SD1 = "sd1.safetensors"


def generate(ctx, vae=None, checkpoint=SD1):
    request = Txt2ImgRequest(prompt="a cat", width=64, height=64, steps=2, seed=3, save_images=False,
                             checkpoint=checkpoint, vae=vae)
    return ctx.service.txt2img(request)


def write_vae(pipe, path, layout: str = "ldm", seed: int = 0):
    """The checkpoint's VAE with its decoder output changed, as a standalone VAE file."""
    vae = copy.deepcopy(pipe.vae)
    with torch.no_grad():
        vae.decoder.conv_out.bias.add_(torch.randn(vae.decoder.conv_out.bias.shape,
                                                   generator=torch.Generator().manual_seed(seed)))
    state = ({k.removeprefix("first_stage_model."): v for k, v in vae_to_ldm(vae).items()} if layout == "ldm"
             else vae.state_dict())
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.fixture
def sd1(app_context):
    return app_context.manager.load(SD1)


@pytest.mark.parametrize("layout", ["ldm", "diffusers"])
def test_a_vae_file_changes_the_picture_and_is_named_in_the_infotext(app_context, sd1, layout):
    path = write_vae(sd1.pipe, app_context.networks.vaes.folders[0] / f"bright-{layout}.safetensors", layout)
    app_context.networks.refresh()
    baked = {k: v.clone() for k, v in sd1.pipe.vae.state_dict().items()}
    plain = generate(app_context)
    chosen = generate(app_context, vae=path.name)
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(chosen.images[0]))
    assert f"VAE hash: {sha256_of(path)[:10]}, VAE: {path.name}" in chosen.infotexts[0]
    assert chosen.info["sd_vae_name"] == path.name
    assert "VAE" not in plain.infotexts[0]
    assert app_context.manager.load(SD1) is sd1  # the checkpoint was not reloaded
    assert all(torch.equal(v, baked[k]) for k, v in sd1.pipe.vae.state_dict().items())  # its own VAE untouched
    assert np.array_equal(np.asarray(generate(app_context, vae="None").images[0]), np.asarray(plain.images[0]))


def test_automatic_takes_the_vae_beside_the_checkpoint_and_it_is_not_listed_as_a_checkpoint(tmp_path):
    from backend.app_context import AppPaths, build_app_context
    from backend.devices import DeviceSettings
    from tests.fixtures.tiny_checkpoints import TinySpec, write_checkpoint

    folder = tmp_path / "models" / "Stable-diffusion"
    write_checkpoint(folder / "mine.safetensors", TinySpec("sd1"), seed=0)
    ctx = build_app_context(AppPaths(root=tmp_path, checkpoint_dirs=[folder], builtin_checkpoints=[]),
                            DeviceSettings.from_flags(device="cpu", precision="full"))
    own = generate(ctx, checkpoint="mine.safetensors")
    write_vae(ctx.manager.load("mine.safetensors").pipe, folder / "mine.vae.safetensors")
    ctx.manager.refresh()
    assert [c.name for c in ctx.manager.checkpoints()] == ["mine.safetensors"]
    automatic = generate(ctx, checkpoint="mine.safetensors")
    assert "VAE: mine.vae.safetensors" in automatic.infotexts[0]
    assert not np.array_equal(np.asarray(own.images[0]), np.asarray(automatic.images[0]))
    assert "VAE" not in generate(ctx, vae="None", checkpoint="mine.safetensors").infotexts[0]


def test_a_bad_or_missing_vae_is_reported_and_the_checkpoint_vae_is_used(app_context, sd1):
    folder = app_context.networks.vaes.folders[0]
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"decoder.weird": torch.ones(3)}, str(folder / "junk.safetensors"))
    app_context.networks.refresh()
    plain = np.asarray(generate(app_context).images[0])
    for choice, expected in (("junk.safetensors", "not a VAE"), ("nothere.safetensors", "no VAE named")):
        result = generate(app_context, vae=choice)
        assert np.array_equal(np.asarray(result.images[0]), plain)
        assert any(expected in w and "own VAE was used" in w for w in result.warnings), result.warnings
