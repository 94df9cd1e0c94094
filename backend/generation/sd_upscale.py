"""A1111's "SD upscale" script: upscale the picture (a model from Extras, or
Lanczos), cut it into overlapping tiles of the request's width x height, run
img2img on every tile, and blend the tiles back along their overlaps.

A1111's tile layout: as few tiles as cover the picture with at least `overlap`
pixels shared, spread evenly. Every batch of tiles takes the run's seed, as
the script does, so a seed gives the same picture.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from backend.generation.job import JobControl
from backend.generation.request import Img2ImgRequest
from backend.generation.sampling import GenerationOutput, resolve_seed
from backend.generation.variation import resolve_subseed
from backend.images.infotext import format_infotext


@dataclass
class TileGrid:
    width: int
    height: int
    tile_w: int
    tile_h: int
    xs: list[int]  # left edges
    ys: list[int]  # top edges


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    step = (length - tile) / (count - 1)
    return [int(round(i * step)) for i in range(count)]


def tile_grid(width: int, height: int, tile_w: int, tile_h: int, overlap: int) -> TileGrid:
    return TileGrid(width, height, tile_w, tile_h, _starts(width, tile_w, overlap), _starts(height, tile_h, overlap))


def cut(image: Image.Image, grid: TileGrid) -> list[Image.Image]:
    return [image.crop((x, y, x + grid.tile_w, y + grid.tile_h)) for y in grid.ys for x in grid.xs]


def _ramp(length: int, starts: list[int], tile: int, index: int) -> np.ndarray:
    """This tile's weight along one axis: 1 inside, falling linearly across the parts shared with neighbours."""
    weight = np.ones(tile, dtype=np.float32)
    start = starts[index]
    if index > 0:  # shared with the previous tile
        shared = starts[index - 1] + tile - start
        if shared > 0:
            weight[:shared] = np.minimum(weight[:shared], (np.arange(shared) + 0.5) / shared)
    if index < len(starts) - 1:
        shared = start + tile - starts[index + 1]
        if shared > 0:
            weight[tile - shared:] = np.minimum(weight[tile - shared:], (shared - np.arange(shared) - 0.5) / shared)
    return weight


def combine(tiles: list[Image.Image], grid: TileGrid) -> Image.Image:
    """The tiles blended back into one picture; the weights sum to 1 everywhere."""
    total = np.zeros((grid.height, grid.width, 3), dtype=np.float32)
    weights = np.zeros((grid.height, grid.width, 1), dtype=np.float32)
    index = 0
    for row, y in enumerate(grid.ys):
        wy = _ramp(grid.height, grid.ys, grid.tile_h, row)
        for col, x in enumerate(grid.xs):
            wx = _ramp(grid.width, grid.xs, grid.tile_w, col)
            weight = (wy[:, None] * wx[None, :])[..., None]
            pixels = np.asarray(tiles[index].convert("RGB").resize((grid.tile_w, grid.tile_h)), dtype=np.float32)
            total[y:y + grid.tile_h, x:x + grid.tile_w] += pixels * weight
            weights[y:y + grid.tile_h, x:x + grid.tile_w] += weight
            index += 1
    return Image.fromarray(np.clip(total / np.maximum(weights, 1e-6) + 0.5, 0, 255).astype(np.uint8), "RGB")


def run_sd_upscale(loaded, request: Img2ImgRequest, job: JobControl, *, run_tiles, **kwargs) -> GenerationOutput:
    """n_iter upscaled pictures of request.init_images[0]; `run_tiles(tile_request, job)` runs img2img on tiles."""
    spec = request.sd_upscale
    extras = kwargs.get("extras")
    source = request.init_images[0]
    size = (round(source.width * spec.scale_factor), round(source.height * spec.scale_factor))
    size = (max(size[0], request.width), max(size[1], request.height))
    name = "Lanczos" if spec.upscaler == "None" else spec.upscaler
    if extras is not None:
        extras.check_upscaler(name)
        upscaled = extras.upscale([source], size, name, should_stop=lambda: job.interrupted)[0]
    else:
        upscaled = source.resize(size, Image.Resampling.LANCZOS)
    grid = tile_grid(*size, request.width, request.height, spec.overlap)
    tiles = cut(upscaled, grid)
    seed = resolve_seed(request.seed)
    subseed = resolve_subseed(request.subseed)
    out = GenerationOutput()
    for n in range(request.n_iter):
        done: list[Image.Image] = []
        params: dict = {}
        for first in range(0, len(tiles), request.batch_size):
            if job.interrupted:
                break
            batch = tiles[first:first + request.batch_size]
            tile_request = request.model_copy(update={
                "init_images": batch, "batch_size": len(batch), "n_iter": 1, "seed": seed + n,
                "subseed": subseed + n,
                "sd_upscale": spec.model_copy(update={"enabled": False}), "restore_faces": False,
                "save_images": False})
            result = run_tiles(tile_request, job)
            done += result.images
            params = params or (result.params[0] if result.params else {})
        if len(done) < len(tiles):
            out.interrupted = True
            break
        picture = combine(done, grid)
        if request.restore_faces and extras is not None:
            picture = extras.restore_faces(picture, request)
        out.params.append(_final_params(params, request, spec, seed + n, extras))
        out.images.append(picture)
        out.seeds.append(seed + n)
        out.subseeds.append(subseed + n)
        out.infotexts.append(format_infotext(kwargs["prompt"], kwargs["negative_prompt"], out.params[-1]))
    out.interrupted = out.interrupted or job.interrupted
    return out


def _final_params(tile_params: dict, request: Img2ImgRequest, spec, seed: int, extras) -> dict:
    """The tiles' infotext with this picture's seed, "Face restoration" after it, the script's two entries
    before Version, as A1111 writes them."""
    params: dict = {}
    for key, value in tile_params.items():
        if key == "Version":
            continue
        params[key] = seed if key == "Seed" else value
        if key == "Seed" and request.restore_faces and extras is not None:
            params["Face restoration"] = extras.face_restorer(request)
    params["SD upscale overlap"] = spec.overlap
    params["SD upscale upscaler"] = spec.upscaler
    if "Version" in tile_params:
        params["Version"] = tile_params["Version"]
    return params
