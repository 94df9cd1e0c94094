"""A1111's "Approx NN" preview: a small conv net (VAEApprox) from `models/VAE-approx/model.pt`
(SD1.x / SD2.x) or `vaeapprox-sdxl.pt` (SDXL). The latents are upsampled 2x nearest, padded by 11 and
put through eight valid convolutions with leaky ReLU, giving a picture at twice the latent size in
about [-1, 1]."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from backend.models.errors import CheckpointLoadError
from backend.models.safe_load import read_state_dict

_LAYERS = ((8, 7), (16, 5), (32, 3), (64, 3), (32, 3), (16, 3), (8, 3), (3, 3))  # (out channels, kernel)
_PAD = 11  # what the eight valid convolutions take off each side: (7 + 5 + 6 * 3 - 8) / 2


class VaeApprox(nn.Module):
    def __init__(self, latent_channels: int = 4):
        super().__init__()
        channels = latent_channels
        for index, (out, kernel) in enumerate(_LAYERS, start=1):
            setattr(self, f"conv{index}", nn.Conv2d(channels, out, kernel))
            channels = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, (x.shape[2] * 2, x.shape[3] * 2))
        x = F.pad(x, (_PAD,) * 4)
        for index in range(1, len(_LAYERS) + 1):
            x = F.leaky_relu(getattr(self, f"conv{index}")(x), 0.1)
        return x


def read_vae_approx(path: Path) -> VaeApprox:
    """A VAEApprox from its .pt file (a plain state dict), through the safe loader."""
    tensors = read_state_dict(Path(path))[0]
    first = tensors.get("conv1.weight")
    if first is None or first.ndim != 4:
        raise CheckpointLoadError(f"{Path(path).name}: not an Approx NN model (no 'conv1.weight')")
    model = VaeApprox(latent_channels=first.shape[1])
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointLoadError(f"{Path(path).name}: not an Approx NN model ({str(exc).splitlines()[0]})") from None
    return model.eval().requires_grad_(False)
