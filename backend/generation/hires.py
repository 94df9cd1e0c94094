"""Pieces of A1111's "Hires. fix": upscale the first pass, decode latents.

The runner (txt2img.py) does the two sampling passes; this module holds what
sits between them: the upscale in latent space or in pixel space, and the
infotext entries.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

from backend.generation.request import LATENT_UPSCALERS, HiresFix

# A1111's latent upscaler names -> torch interpolation modes.
_LATENT_MODES = {"Latent": "bilinear", "Latent (nearest)": "nearest", "Latent (bicubic)": "bicubic"}
PIXEL_FILTERS = {"Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}


def is_latent_upscaler(name: str) -> bool:
    return name in LATENT_UPSCALERS


def second_pass_steps(hires: HiresFix, steps: int) -> int:
    """Steps the img2img pass really runs: int(steps * strength), as diffusers' img2img does."""
    return int((hires.steps or steps) * hires.denoising_strength)


def upscale_latents(latents: torch.Tensor, size: tuple[int, int], upscaler: str,
                    vae_scale_factor: int) -> torch.Tensor:
    """Resize (B, C, h, w) latents to the latent size of `size` = (width, height)."""
    width, height = size
    target = (height // vae_scale_factor, width // vae_scale_factor)
    mode = _LATENT_MODES[upscaler]
    # Interpolate in float32: bicubic is not implemented for half precision everywhere.
    resized = F.interpolate(latents.float(), size=target, mode=mode,
                            align_corners=False if mode != "nearest" else None)
    return resized.to(latents.dtype)


def check_pixel_upscaler(upscaler: str, extras) -> None:
    """A pixel-space upscaler this studio has: Lanczos / Nearest, or a model from models/ESRGAN etc."""
    if extras is not None:
        extras.check_upscaler(upscaler)
    elif upscaler not in PIXEL_FILTERS:
        raise ValueError(f"unknown hires. fix upscaler {upscaler!r}; choose one of: "
                         f"{', '.join([*LATENT_UPSCALERS, *PIXEL_FILTERS])}")


def upscale_images(images: list[Image.Image], size: tuple[int, int], upscaler: str, extras=None,
                   should_stop=None) -> list[Image.Image]:
    """Pixel-space resize to `size` = (width, height): PIL's filters, or an upscaler model through Extras."""
    if extras is not None:
        return extras.upscale(images, size, upscaler, should_stop=should_stop)
    return [image.resize(size, resample=PIXEL_FILTERS[upscaler]) for image in images]


def infotext_params(hires: HiresFix) -> dict[str, object]:
    """The Hires entries of A1111's infotext (after "Denoising strength" and "Clip skip")."""
    params: dict[str, object] = {}
    if hires.resize_x or hires.resize_y:
        params["Hires resize"] = f"{hires.resize_x}x{hires.resize_y}"
    else:
        params["Hires upscale"] = hires.upscale_by
    if hires.steps:
        params["Hires steps"] = hires.steps
    params["Hires upscaler"] = hires.upscaler
    return params
