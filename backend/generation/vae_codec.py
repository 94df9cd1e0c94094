"""VAE encode and decode outside the pipelines' own calls.

Hires fix decodes the latents a first pass returns; img2img encodes its input
pictures itself so it can edit the latents (masked content, latent upscale)
before sampling. Both honour the SDXL VAE's float32 upcast and, where a VAE
config has them, per-channel latent mean/std.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from PIL import Image


@contextmanager
def _upcast_if_needed(vae, upcast: bool):
    """Run the VAE in float32 when it is float16 and its config asks (the SDXL VAE overflows)."""
    upcast = upcast and vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    if upcast:
        vae.to(dtype=torch.float32)
    try:
        yield
    finally:
        if upcast:
            vae.to(dtype=torch.float16)


def _mean_std(vae, like: torch.Tensor):
    mean = getattr(vae.config, "latents_mean", None)
    std = getattr(vae.config, "latents_std", None)
    if mean is None or std is None:
        return None
    shape = (1, like.shape[1], 1, 1)
    return (torch.tensor(mean).view(shape).to(like.device, like.dtype),
            torch.tensor(std).view(shape).to(like.device, like.dtype))


@torch.no_grad()
def decode_latents(pipe, latents: torch.Tensor, upcast: bool = False) -> list[Image.Image]:
    """VAE-decode latents (as a pipeline returns them with output_type="latent") to PIL."""
    vae = pipe.vae
    with _upcast_if_needed(vae, upcast):
        scaling = vae.config.scaling_factor
        stats = _mean_std(vae, latents)
        if stats is not None:
            latents = latents * stats[1] / scaling + stats[0]
        else:
            latents = latents / scaling
        latents = latents.to(pipe._execution_device, vae.dtype)
        image = vae.decode(latents, return_dict=False)[0]
    return pipe.image_processor.postprocess(image.float(), output_type="pil")


@torch.no_grad()
def encode_pixels(pipe, pixels: torch.Tensor, upcast: bool = False) -> torch.Tensor:
    """Scaled latents of (B, 3, H, W) pixels in [-1, 1]: the latent distribution's mean.

    The mean rather than a sample keeps img2img free of an extra random draw,
    so its result depends only on the seed's noise.
    """
    vae = pipe.vae
    with _upcast_if_needed(vae, upcast):
        pixels = pixels.to(pipe._execution_device, vae.dtype)
        latents = vae.encode(pixels).latent_dist.mode()
        stats = _mean_std(vae, latents)
        if stats is not None:
            latents = (latents - stats[0]) * vae.config.scaling_factor / stats[1]
        else:
            latents = latents * vae.config.scaling_factor
    return latents.float()


def images_to_pixels(pipe, images: list[Image.Image]) -> torch.Tensor:
    """PIL pictures (all one size, multiples of 8) as the (B, 3, H, W) [-1, 1] tensor VAEs take."""
    return pipe.image_processor.preprocess(images, height=images[0].height, width=images[0].width)
