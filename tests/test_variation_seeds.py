"""Variation seeds and "resize seed from", as A1111's "Extra" seed options: the noise, the pictures, the infotext."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from backend.generation.request import Img2ImgRequest, Txt2ImgRequest
from backend.generation.variation import NoiseVariation, slerp
from backend.images.infotext import parse_infotext

# Euler is deterministic after the first noise, so "the variation seed's own picture" is well defined.
BASE = dict(prompt="a red cat", width=64, height=64, steps=3, sampler_name="Euler", checkpoint="sd1.safetensors",
            save_images=False)


def px(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def txt2img(ctx, **fields):
    return ctx.service.txt2img(Txt2ImgRequest(**{**BASE, **fields}))


def img2img(ctx, **fields):
    start = Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    return ctx.service.img2img(Img2ImgRequest(**{**BASE, "init_images": [start], **fields}))


def test_slerp_ends_are_the_two_noises_and_the_middle_keeps_the_scale():
    low, high = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(1)), \
        torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(slerp(0.0, low, high), low)
    assert torch.allclose(slerp(1.0, low, high), high, atol=1e-5)
    middle = slerp(0.5, low, high)
    # A straight average would shrink the noise by about 1/sqrt(2); the spherical one keeps unit variance.
    assert 0.9 < middle.std().item() < 1.1 and (low + high).div(2).std().item() < 0.8


def test_seed_resize_draws_at_that_size_and_centres_it():
    own = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    varied = NoiseVariation(seeds=[7], subseeds=[0], resize_from=(32, 32)).apply(own)[0]  # 4x4 latents
    small = torch.randn(4, 4, 4, generator=torch.Generator().manual_seed(7))
    assert torch.equal(varied[:, 2:6, 2:6], small)  # the small noise in the middle
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[2:6, 2:6] = False
    assert torch.equal(varied[:, outside], own[0][:, outside])  # the seed's own noise around it
    larger = NoiseVariation(seeds=[7], subseeds=[0], resize_from=(128, 128)).apply(own)[0]  # cropped to fit
    assert torch.equal(larger, torch.randn(4, 16, 16, generator=torch.Generator().manual_seed(7))[:, 4:12, 4:12])


def test_strength_zero_is_bit_for_bit_no_variation(app_context):
    plain = txt2img(app_context, seed=100)
    unvaried = txt2img(app_context, seed=100, subseed=5, subseed_strength=0.0)
    assert np.array_equal(px(plain.images[0]), px(unvaried.images[0]))
    assert "Variation seed" not in unvaried.infotexts[0]
    same_size = txt2img(app_context, seed=100, seed_resize_from_w=64, seed_resize_from_h=64)
    assert np.array_equal(px(plain.images[0]), px(same_size.images[0]))  # resized "from" its own size


def test_strength_one_is_the_variation_seeds_own_picture_and_image_k_takes_subseed_plus_k(app_context):
    other = txt2img(app_context, seed=200, batch_size=2)
    varied = txt2img(app_context, seed=100, subseed=200, subseed_strength=1.0, batch_size=2)
    for k in range(2):
        assert np.abs(px(varied.images[k]) - px(other.images[k])).max() <= 1  # float rounding of slerp at 1
    assert varied.seeds == [100, 101] and varied.info["all_subseeds"] == [200, 201]
    assert varied.info["subseed_strength"] == 1.0


def test_a_partial_strength_is_between_reproducible_and_recorded(app_context):
    plain = txt2img(app_context, seed=100)
    other = txt2img(app_context, seed=5)
    first = txt2img(app_context, seed=100, subseed=5, subseed_strength=0.3)
    again = txt2img(app_context, seed=100, subseed=5, subseed_strength=0.3)
    assert np.array_equal(px(first.images[0]), px(again.images[0]))
    to_plain = np.abs(px(first.images[0]) - px(plain.images[0])).mean()
    to_other = np.abs(px(first.images[0]) - px(other.images[0])).mean()
    assert 0 < to_plain < to_other  # closer to its own seed's picture at 0.3
    params = parse_infotext(first.infotexts[0])
    assert (params["Seed"], params["Variation seed"], params["Variation seed strength"]) == ("100", "5", "0.3")
    assert first.infotexts[0].index("Variation seed: 5") < first.infotexts[0].index("Version")
    resized = txt2img(app_context, seed=100, subseed=5, subseed_strength=0.3, seed_resize_from_w=512,
                      seed_resize_from_h=512)
    assert "Variation seed: 5, Variation seed strength: 0.3, Seed resize from: 512x512" in resized.infotexts[0]
    assert not np.array_equal(px(resized.images[0]), px(first.images[0]))


def test_random_variation_seed_is_drawn_once_and_reported(app_context):
    result = txt2img(app_context, seed=100, subseed=-1, subseed_strength=0.5)
    subseed = result.info["subseed"]
    assert subseed >= 0 and parse_infotext(result.infotexts[0])["Variation seed"] == str(subseed)
    again = txt2img(app_context, seed=100, subseed=subseed, subseed_strength=0.5)
    assert np.array_equal(px(result.images[0]), px(again.images[0]))


@pytest.mark.parametrize("strength", [0.6, 1.0])
def test_img2img_varies_the_noise_it_adds(app_context, strength):
    """Below strength 1 the scheduler's add_noise gets the varied noise; at 1 the start is that noise."""
    plain = img2img(app_context, seed=100, denoising_strength=strength)
    unvaried = img2img(app_context, seed=100, subseed=7, subseed_strength=0.0, denoising_strength=strength)
    assert np.array_equal(px(plain.images[0]), px(unvaried.images[0]))
    other = img2img(app_context, seed=7, denoising_strength=strength)
    varied = img2img(app_context, seed=100, subseed=7, subseed_strength=1.0, denoising_strength=strength)
    assert np.abs(px(varied.images[0]) - px(other.images[0])).max() <= 1
    assert np.abs(px(varied.images[0]) - px(plain.images[0])).max() > 10


def test_hires_pass_noise_is_varied_too(app_context):
    hires = dict(hires={"enabled": True, "upscale_by": 2.0, "denoising_strength": 0.5})
    other = txt2img(app_context, seed=7, **hires)
    varied = txt2img(app_context, seed=100, subseed=7, subseed_strength=1.0, **hires)
    assert varied.images[0].size == (128, 128)
    assert np.abs(px(varied.images[0]) - px(other.images[0])).max() <= 1
