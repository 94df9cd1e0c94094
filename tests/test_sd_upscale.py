"""A1111's "SD upscale": the tile layout, the blend, and a real run on a tiny checkpoint."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from backend.devices import DeviceSettings
from backend.generation.img2img import run_img2img
from backend.generation.job import JobControl
from backend.generation.request import Img2ImgRequest
from backend.generation.sd_upscale import combine, cut, tile_grid
from backend.images.infotext import parse_infotext
from tests.test_img2img import picture, px

CPU = DeviceSettings(device=torch.device("cpu"), dtype=torch.float32)


@pytest.fixture(scope="module")
def loaded(checkpoint_dir):
    from backend.models.manager import ModelManager

    return ModelManager([checkpoint_dir], CPU, cache_size=1).load("sd1")


@pytest.mark.parametrize("length,tile,overlap", [(128, 64, 16), (200, 64, 8), (64, 64, 16), (130, 64, 0)])
def test_tiles_cover_the_picture_with_at_least_the_overlap(length, tile, overlap):
    grid = tile_grid(length, length, tile, tile, overlap)
    starts = grid.xs
    assert starts[0] == 0 and starts[-1] + tile == length
    for left, right in zip(starts, starts[1:]):
        assert left + tile - right >= overlap  # neighbours share at least `overlap` pixels
        assert right > left


def test_cut_then_combine_gives_the_picture_back():
    image = picture((200, 136), seed=3)
    grid = tile_grid(200, 136, 64, 64, 24)
    assert len(grid.xs) * len(grid.ys) > 4
    assert np.abs(px(combine(cut(image, grid), grid)) - px(image)).max() <= 1


def test_overlaps_are_blended_not_pasted():
    # Two flat tiles, black and white: across their shared columns the result ramps from one to the other.
    grid = tile_grid(112, 64, 64, 64, 16)
    tiles = [Image.new("RGB", (64, 64), (0, 0, 0)), Image.new("RGB", (64, 64), (255, 255, 255))]
    row = px(combine(tiles, grid))[32, :, 0]
    shared = slice(grid.xs[1], grid.xs[0] + 64)
    assert row[: grid.xs[1]].max() == 0 and row[64:].min() == 255
    ramp = row[shared]
    assert np.all(np.diff(ramp) >= 0) and 0 < ramp[len(ramp) // 2] < 255


def request(**fields) -> Img2ImgRequest:
    base = dict(prompt="a red cat", width=64, height=64, steps=3, seed=11, sampler_name="Euler",
                denoising_strength=0.5, init_images=[picture((64, 64))])
    return Img2ImgRequest(**{**base, **fields})


def run(loaded, req: Img2ImgRequest):
    return run_img2img(loaded, req, JobControl(), device_settings=CPU, prompt=req.prompt, negative_prompt="")


def test_sd_upscale_runs_img2img_on_each_tile(loaded):
    req = request(sd_upscale={"enabled": True, "upscaler": "None", "scale_factor": 2.0, "overlap": 0})
    out = run(loaded, req)
    (result,) = out.images
    assert result.size == (128, 128)
    # With no overlap each quarter is exactly img2img of that quarter of the Lanczos-upscaled picture, same seed.
    upscaled = req.init_images[0].resize((128, 128), Image.Resampling.LANCZOS)
    corner = run(loaded, request(init_images=[upscaled.crop((64, 64, 128, 128))])).images[0]
    assert np.abs(px(result.crop((64, 64, 128, 128))) - px(corner)).max() <= 1
    assert np.abs(px(result) - px(upscaled)).mean() > 1  # the tiles were redrawn, not just upscaled
    params = parse_infotext(out.infotexts[0])
    assert params["SD upscale overlap"] == "0" and params["SD upscale upscaler"] == "None"
    assert params["Size"] == "64x64" and params["Seed"] == "11"


def test_sd_upscale_same_seed_same_pixels_and_batch_count(loaded):
    req = request(n_iter=2, sd_upscale={"enabled": True, "scale_factor": 1.5, "overlap": 16})
    first, again = run(loaded, req), run(loaded, req)
    assert [im.size for im in first.images] == [(96, 96), (96, 96)]
    assert first.seeds == [11, 12]
    assert all(np.array_equal(px(a), px(b)) for a, b in zip(first.images, again.images))
    assert not np.array_equal(px(first.images[0]), px(first.images[1]))


def test_sd_upscale_refuses_a_mask():
    with pytest.raises(ValueError, match="no mask"):
        request(mask=Image.new("L", (64, 64), 255), sd_upscale={"enabled": True})
