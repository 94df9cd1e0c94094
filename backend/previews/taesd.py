"""TAESD / TAESDXL decoders (madebyollin's tiny autoencoder) in the layout of the files users download.

`taesd_decoder.pth` and `taesdxl_decoder.pth` are plain state dicts of an nn.Sequential: index 0 is a
clamp (no weights), 1 the first conv, then blocks whose keys are `N.conv.0/2/4` (and `N.skip` where the
widths differ, never in the decoder), upsamples (no weights) and bias-free convs. The decoder takes the
UNet's latents as they are (no scaling factor) and returns pictures in [0, 1]. diffusers' AutoencoderTiny
holds the same weights under `decoder.layers.{N-1}`; those files are read too.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from backend.models.errors import CheckpointLoadError
from backend.models.safe_load import read_state_dict


def _conv(n_in: int, n_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)


class _Clamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3  # soft clamp of the latents to about +-3


class _Block(nn.Module):
    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.conv = nn.Sequential(_conv(n_in, n_out), nn.ReLU(), _conv(n_out, n_out), nn.ReLU(), _conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


class TaesdDecoder(nn.Sequential):
    """Latents (B, C, h, w) -> pictures (B, 3, 8h, 8w) in [0, 1]."""

    def __init__(self, latent_channels: int = 4, width: int = 64):
        layers: list[nn.Module] = [_Clamp(), _conv(latent_channels, width), nn.ReLU()]
        for _ in range(3):  # three x2 upsamplings: 8x in all, as the VAE
            layers += [_Block(width, width) for _ in range(3)]
            layers += [nn.Upsample(scale_factor=2), _conv(width, width, bias=False)]
        layers += [_Block(width, width), _conv(width, 3)]
        super().__init__(*layers)


_DIFFUSERS_KEY = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


def _own_layout(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """madebyollin's keys; diffusers' AutoencoderTiny keys (`decoder.layers.N`, no clamp) shifted by one."""
    if not any(k.startswith("decoder.layers.") for k in tensors):
        return tensors
    own = {}
    for key, value in tensors.items():
        if (match := _DIFFUSERS_KEY.match(key)) is not None:
            own[f"{int(match.group(1)) + 1}.{match.group(2)}"] = value
    return own


def read_taesd_decoder(path: Path) -> TaesdDecoder:
    """A TAESD decoder from a .pth or .safetensors file, through the safe loader."""
    tensors = _own_layout(read_state_dict(Path(path))[0])
    first = tensors.get("1.weight")
    if first is None or first.ndim != 4:
        raise CheckpointLoadError(f"{Path(path).name}: not a TAESD decoder (no first convolution '1.weight')")
    decoder = TaesdDecoder(latent_channels=first.shape[1], width=first.shape[0])
    try:
        decoder.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointLoadError(f"{Path(path).name}: not a TAESD decoder ({str(exc).splitlines()[0]})") from None
    return decoder.eval().requires_grad_(False)
