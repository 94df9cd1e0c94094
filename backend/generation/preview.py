"""Cheap live previews: latents -> RGB by a fixed linear map, no VAE decode.

The four latent channels of the SD VAEs correlate roughly linearly with the
colour of the 8x8 pixel block they encode. The tables below are approximations
(two decimals, no bias term): good enough to see composition and colour while
sampling, never a substitute for the real decode. SD1.x and SD2.x share one VAE;
SDXL has its own VAE and therefore its own table.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from backend.models.types import ModelFamily

# Rows: latent channels 0..3; columns: contribution to R, G, B (in [-1, 1]).
_SD_LATENT_RGB = (
    (0.30, 0.21, 0.21),
    (0.19, 0.29, 0.17),
    (-0.16, 0.19, 0.26),
    (-0.18, -0.27, -0.47),
)
_SDXL_LATENT_RGB = (
    (0.39, 0.41, 0.45),
    (-0.26, -0.02, 0.07),
    (0.06, 0.17, -0.08),
    (-0.31, -0.24, -0.21),
)


def latent_rgb_factors(family: ModelFamily) -> torch.Tensor:
    """The 4x3 projection for a model family."""
    table = _SDXL_LATENT_RGB if family.is_sdxl else _SD_LATENT_RGB
    return torch.tensor(table, dtype=torch.float32)


def latents_to_preview(latents: torch.Tensor, family: ModelFamily, max_images: int = 8) -> Image.Image:
    """A small RGB image (latent resolution) of a (B, 4, H, W) latent batch.

    Images of a batch are placed side by side, at most `max_images` of them.
    """
    if latents.ndim != 4 or latents.shape[1] != 4:
        raise ValueError(f"expected latents of shape (B, 4, H, W), got {tuple(latents.shape)}")
    batch = latents[:max_images].detach().to("cpu", torch.float32)
    rgb = torch.einsum("bchw,cr->bhwr", batch, latent_rgb_factors(family))
    rgb = ((rgb.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    strip = torch.cat(list(rgb), dim=1)  # (H, B*W, 3)
    return Image.fromarray(np.ascontiguousarray(strip.numpy()))
