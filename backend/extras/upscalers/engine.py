"""A1111's upscale loop around one model: passes until the picture is large enough, then Lanczos to size.

Works on anything shaped like a spandrel ImageModelDescriptor (`scale`, `size_requirements`,
`input_channels`, called on a (1, C, h, w) tensor in [0, 1]), which is how tests hand it a fake network.
"""
from __future__ import annotations

from typing import Callable, Protocol

import numpy as np
import torch
from PIL import Image

from backend.devices import is_out_of_memory, release_cached_memory
from backend.extras.upscalers import images, tiling
from backend.extras.upscalers.errors import UpscaleError
from backend.extras.upscalers.sizes import center_box, check_output_size, model_passes, resize_plan

MIN_TILE = 32  # halving on out-of-memory stops here: smaller tiles are mostly context and overhead


class ImageModel(Protocol):
    scale: int
    size_requirements: tiling.SizeRule | None

    def __call__(self, image: torch.Tensor) -> torch.Tensor: ...


def compute_dtype(model, device: torch.device, preferred: torch.dtype) -> torch.dtype:
    """float16 on an accelerator when the architecture allows it, else bfloat16, else float32; float32 on
    the CPU (half precision is slow or missing there) and whenever the studio runs in float32 (--no-half)."""
    if device.type == "cpu" or preferred == torch.float32:
        return torch.float32
    if getattr(model, "supports_half", False):
        return torch.float16
    if getattr(model, "supports_bfloat16", False):
        return torch.bfloat16
    return torch.float32


def upscale_with_model(model: ImageModel, image: Image.Image, *, scale: float | None = None,
                       size: tuple[int, int] | None = None, crop: bool = False, tile: int = 192,
                       tile_overlap: int = 8, device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32,
                       progress: Callable[[int, int], None] | None = None,
                       should_stop: Callable[[], bool] | None = None) -> Image.Image:
    """Upscale `image` with `model` to the A1111 extras size; RGB out, or RGBA when the picture had alpha."""
    cover, final = resize_plan(image.width, image.height, scale=scale, size=size, crop=crop)
    check_output_size(*cover)
    check_output_size(*final)
    rgb, alpha = images.split_alpha(image)
    model_scale = int(model.scale)
    channels = int(getattr(model, "input_channels", 3))
    passes = model_passes(rgb.width, rgb.height, cover, model_scale)
    runner = _Runner(model, model_scale, torch.device(device), dtype, tile, tile_overlap, progress, should_stop)
    array = images.to_array(rgb, alpha, channels)
    for index, (w, h) in enumerate(passes):
        if array.shape[:2] != (h, w) or array.shape[2] != channels:  # shrunk to stay in the limits; odd models
            array = _refit(array, (w, h), channels, alpha)
        array = runner.run(array, passes[index:])
    colour, model_alpha = images.from_array(array)
    if alpha is not None and model_alpha is not None:  # a 4-channel model upscaled the alpha itself
        alpha = model_alpha
    return images.finish(colour, alpha, cover, center_box(cover, final) if cover != final else None)


def _refit(array: np.ndarray, size: tuple[int, int], channels: int, alpha: Image.Image | None) -> np.ndarray:
    colour, own_alpha = images.from_array(array)
    alpha = own_alpha if own_alpha is not None else alpha
    colour = colour.resize(size, Image.Resampling.LANCZOS)
    alpha = alpha.resize(size, Image.Resampling.LANCZOS) if alpha is not None and channels == 4 else None
    return images.to_array(colour, alpha, channels)


class _Runner:
    """Runs the passes, reporting tiles over the whole job and halving the tile on out-of-memory."""

    def __init__(self, model, scale, device, dtype, tile, overlap, progress, should_stop):
        self.model, self.scale, self.device, self.dtype = model, scale, device, dtype
        self.tile, self.overlap = int(tile), max(0, int(overlap))
        self.progress, self.should_stop = progress, should_stop
        self.done = 0  # tiles of finished passes

    def run(self, array: np.ndarray, remaining: list[tuple[int, int]]) -> np.ndarray:
        picture = torch.from_numpy(array).permute(2, 0, 1)  # (C, H, W) view, uint8 on the CPU
        height, width = picture.shape[1:]
        while True:
            total = self.done + sum(tiling.tile_count(w, h, self.tile) for w, h in remaining)
            report = None if self.progress is None else (lambda d, _t: self.progress(self.done + d, total))
            try:
                with torch.inference_mode():
                    result = tiling.upscale_tiled(
                        self.model, picture, scale=self.scale, rule=getattr(self.model, "size_requirements", None),
                        tile=self.tile, overlap=self.overlap, device=self.device, dtype=self.dtype,
                        progress=report, should_stop=self.should_stop)
                self.done += tiling.tile_count(width, height, self.tile)
                return result
            except RuntimeError as exc:  # torch.OutOfMemoryError is one
                if not is_out_of_memory(exc):
                    raise
            # Outside the except block, so the failed attempt's tensors (held by the traceback) are gone.
            release_cached_memory()
            side = min(self.tile, max(width, height)) if self.tile > 0 else max(width, height)
            if side // 2 < MIN_TILE:
                raise UpscaleError(
                    f"ran out of {self.device.type.upper()} memory upscaling a {width}x{height} picture, even in "
                    f"tiles of {side}px (tiles are not made smaller than {MIN_TILE}px). Free memory (unload the "
                    "checkpoint, close other programs using the device) or upscale a smaller picture.")
            self.tile = side // 2
