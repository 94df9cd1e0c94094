"""Live preview methods (A1111's show_progress_type) and "decode with TAESD", on the tiny models with
preview files in the layouts users download (tests/fixtures/tiny_previews.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderTiny
from safetensors.torch import save_file

from backend.app_context import AppPaths, build_app_context
from backend.devices import DeviceSettings
from backend.generation.job import JobControl
from backend.generation.preview import latents_to_preview
from backend.generation.request import Txt2ImgRequest
from backend.models.errors import CheckpointLoadError
from backend.previews.approx_nn import read_vae_approx
from backend.previews.taesd import read_taesd_decoder
from tests.fixtures.tiny_annotators import write_hostile
from tests.fixtures.tiny_previews import write_taesd_decoder, write_vae_approx

JOB = dict(prompt="a red ball", negative_prompt="blurry", width=64, height=64, steps=3, seed=5,
           save_images=False, checkpoint="sd1.safetensors")


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, checkpoint_dir):
    root = tmp_path_factory.mktemp("previews")
    write_taesd_decoder(root / "models" / "VAE-approx" / "taesd_decoder.pth", seed=1)
    write_vae_approx(root / "models" / "VAE-approx" / "model.pt", seed=2)
    device = DeviceSettings.from_flags(device="cpu", precision="full")
    context = build_app_context(AppPaths(root=root, checkpoint_dirs=[checkpoint_dir], builtin_checkpoints=[]), device)
    context.options.update(live_previews_enable=True, show_progress_every_n_steps=1)
    return context


def _run(ctx, method="Approx cheap", decode="Full", **job):
    ctx.options.update(show_progress_type=method, sd_vae_decode_method=decode)
    control = JobControl()
    result = ctx.service.txt2img(Txt2ImgRequest(**{**JOB, **job}), job=control)
    return result, control.snapshot().preview


def _px(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_the_taesd_file_layout_is_the_one_diffusers_autoencoder_tiny_holds(tmp_path):
    path = write_taesd_decoder(tmp_path / "taesd_decoder.pth", seed=3)
    ours = read_taesd_decoder(path)
    theirs = AutoencoderTiny().eval()
    shifted = {f"decoder.layers.{int(k.split('.', 1)[0]) - 1}.{k.split('.', 1)[1]}": v
               for k, v in torch.load(path, weights_only=True).items()}
    missing, unexpected = theirs.load_state_dict(shifted, strict=False)
    assert not unexpected and all(k.startswith("encoder.") for k in missing)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # diffusers returns [-1, 1]; the .pth decoder [0, 1]
        torch.testing.assert_close(theirs.decode(latents).sample, ours(latents) * 2 - 1, atol=1e-5, rtol=1e-4)
    # The same weights saved in diffusers' layout read back to the same decoder.
    save_file({k: v.contiguous() for k, v in shifted.items()}, str(tmp_path / "taesd_decoder.safetensors"))
    again = read_taesd_decoder(tmp_path / "taesd_decoder.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(again(latents), ours(latents))


def test_approx_nn_is_a1111s_vaeapprox(tmp_path):
    path = write_vae_approx(tmp_path / "model.pt", seed=4)
    model, state = read_vae_approx(path), torch.load(path, weights_only=True)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    x = F.pad(F.interpolate(latents, (16, 16)), (11, 11, 11, 11))  # written out from A1111's forward
    for n in range(1, 9):
        x = F.leaky_relu(F.conv2d(x, state[f"conv{n}.weight"], state[f"conv{n}.bias"]), 0.1)
    with torch.no_grad():
        torch.testing.assert_close(model(latents), x)
    assert x.shape == (1, 3, 16, 16)  # twice the latent size


def test_a_hostile_preview_file_is_refused_with_nothing_run(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(CheckpointLoadError, match="refused to load"):
        read_taesd_decoder(write_hostile(tmp_path / "taesd_decoder.pth", marker))
    assert not marker.exists()


def test_taesd_preview_of_the_last_step_is_the_taesd_decode_of_the_result(ctx):
    drafted, preview = _run(ctx, "TAESD", "TAESD")
    assert not drafted.warnings and preview.size == (64, 64)  # full size, unlike the cheap map
    np.testing.assert_array_equal(_px(preview), _px(drafted.images[0]))
    full, full_preview = _run(ctx, "Full")
    np.testing.assert_array_equal(_px(full_preview), _px(full.images[0]))  # Full previews are the VAE's decode
    assert np.abs(_px(drafted.images[0]) - _px(full.images[0])).mean() > 5  # TAESD really decoded the draft
    cheap, cheap_preview = _run(ctx, "Approx cheap")
    np.testing.assert_array_equal(_px(cheap.images[0]), _px(full.images[0]))  # previews never change the picture
    assert cheap_preview.size == (8, 8)
    _, nn_preview = _run(ctx, "Approx NN")
    assert nn_preview.size == (16, 16)


def test_a_missing_file_is_named_and_the_job_goes_on(ctx, tmp_path, checkpoint_dir):
    bare = build_app_context(AppPaths(root=tmp_path, checkpoint_dirs=[checkpoint_dir], builtin_checkpoints=[]),
                             DeviceSettings.from_flags(device="cpu", precision="full"))
    bare.options.update(live_previews_enable=True, show_progress_every_n_steps=1)
    result, preview = _run(bare, "TAESD", "TAESD")
    text = " ".join(result.warnings)
    assert "taesd_decoder.pth" in text and str(tmp_path / "models" / "VAE-approx") in text
    assert "Approx cheap previews" in text and "the full VAE" in text
    plain, _ = _run(bare)
    np.testing.assert_array_equal(_px(result.images[0]), _px(plain.images[0]))  # decoded by the VAE instead
    assert preview.size == (8, 8)  # the cheap map


def test_sdxl_asks_for_its_own_taesdxl_file(ctx):
    result, preview = _run(ctx, "TAESD", checkpoint="sdxl.safetensors")
    assert any("taesdxl_decoder.pth" in w for w in result.warnings)  # never the SD1 decoder on SDXL latents
    assert _px(preview).shape[:2] == (8, 8)


def test_the_cheap_map_is_unchanged_when_no_previews_object_is_given(ctx):
    latents = torch.randn(2, 4, 8, 8)
    assert latents_to_preview(latents, ctx.manager.load("sd1.safetensors").variant.family).size == (16, 8)
