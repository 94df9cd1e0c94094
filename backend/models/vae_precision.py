"""A VAE that runs in its own precision whatever the pipeline hands it.

diffusers' pipelines cast pictures and latents to the UNet's dtype before they call the VAE. With
--no-half-vae the VAE stays in fp32 while the UNet runs in fp16 or bf16, so the VAE takes any dtype: it computes in its own, encodes into the caller's dtype
(the latents join the UNet's) and decodes into its own (the pixels keep their precision).
"""
from __future__ import annotations

import torch
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput


class OwnPrecisionVae(AutoencoderKL):
    def encode(self, x: torch.Tensor, return_dict: bool = True):
        if x.dtype == self.dtype:
            return super().encode(x, return_dict=return_dict)
        dist = super().encode(x.to(self.dtype)).latent_dist
        dist = DiagonalGaussianDistribution(dist.parameters.to(x.dtype))
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        return super().decode(z.to(self.dtype), return_dict=return_dict, generator=generator)
