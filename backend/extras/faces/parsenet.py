"""ParseNet, facexlib's face-parsing network (from PSFRGAN), as a network of our own.

Module names and shapes are exactly those of facexlib's ParseNet(in_size=512,
out_size=512, parsing_ch=19), so `parsing_parsenet.pth` loads unchanged:

    encoder.0.conv2d.*                         3 -> 64, 3x3, bias, no norm
    encoder.1..4 / body.0..9 / decoder.0..3    residual blocks: conv1 / conv2 (.conv2d.weight, .norm.norm.* BN),
                                               shortcut_func.conv2d.* where the block rescales or widens
    out_img_conv.conv2d.*, out_mask_conv.conv2d.*   64 -> 3 and 64 -> 19

`face_mask` turns its 19 classes into the blend mask facexlib pastes restored faces through.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PARSING_FILE = "parsing_parsenet.pth"
# Which of the 19 classes count as face (facexlib's MASK_COLORMAP / 255): skin, brows, eyes, ears, nose, mouth...
FACE_CLASSES = np.array([0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 0, 0, 0], dtype=np.float32)


class ConvLayer(nn.Module):
    """Reflection pad, conv (stride 2 for "down", nearest 2x upsample first for "up"), optional BN, optional act."""

    def __init__(self, cin: int, cout: int, scale: str = "none", norm: bool = False, act: bool = False):
        super().__init__()
        self.upsample = scale == "up"
        self.pad = nn.ReflectionPad2d(1)
        self.conv2d = nn.Conv2d(cin, cout, 3, 2 if scale == "down" else 1, bias=not norm)
        self.norm = _Norm(cout) if norm else None
        self.act = nn.LeakyReLU(0.2, inplace=True) if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.conv2d(self.pad(x))
        if self.norm is not None:
            x = self.norm(x)
        return self.act(x) if self.act is not None else x


class _Norm(nn.Module):
    """facexlib wraps its BatchNorm once more: the keys read `.norm.norm.`"""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, scale: str = "none"):
        super().__init__()
        self.shortcut_func = ConvLayer(cin, cout, scale) if scale != "none" or cin != cout else None
        self.conv1 = ConvLayer(cin, cout, "up" if scale == "up" else "none", norm=True, act=True)
        self.conv2 = ConvLayer(cout, cout, "down" if scale == "down" else "none", norm=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut_func is None else self.shortcut_func(x)
        return identity + self.conv2(self.conv1(x))


class ParseNet(nn.Module):
    """512 -> 32 in four residual downsamplings (channels 64..256), ten residual blocks, four upsamplings back."""

    def __init__(self, size: int = 512, min_feature: int = 32, base: int = 64, classes: int = 19,
                 depth: int = 10, channels: tuple[int, int] = (32, 256)):
        super().__init__()

        def clip(c: int) -> int:
            return max(channels[0], min(c, channels[1]))

        steps = int(np.log2(size // min_feature))
        encoder: list[nn.Module] = [ConvLayer(3, base)]
        head = base
        for _ in range(steps):
            encoder.append(ResidualBlock(clip(head), clip(head * 2), "down"))
            head *= 2
        self.encoder = nn.Sequential(*encoder)
        self.body = nn.Sequential(*[ResidualBlock(clip(head), clip(head)) for _ in range(depth)])
        decoder: list[nn.Module] = []
        for _ in range(steps):
            decoder.append(ResidualBlock(clip(head), clip(head // 2), "up"))
            head //= 2
        self.decoder = nn.Sequential(*decoder)
        self.out_img_conv = ConvLayer(clip(head), 3)
        self.out_mask_conv = ConvLayer(clip(head), classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, 3, 512, 512) RGB in [-1, 1]. Returns (class logits (B, 19, 512, 512), reconstructed image)."""
        features = self.encoder(x)
        x = self.decoder(features + self.body(features))
        return self.out_mask_conv(x), self.out_img_conv(x)


def face_mask(classes: np.ndarray) -> np.ndarray:
    """facexlib's blend mask from per-pixel class indices (512 x 512): face classes, blurred twice, 10 px frame cut."""
    mask = FACE_CLASSES[classes] * 255.0
    mask = cv2.GaussianBlur(mask, (101, 101), 11)
    mask = cv2.GaussianBlur(mask, (101, 101), 11)
    frame = 10
    mask[:frame, :], mask[-frame:, :], mask[:, :frame], mask[:, -frame:] = 0, 0, 0, 0
    return mask / 255.0


class FaceParser:
    """Runs ParseNet on a restored crop (float RGB 0..255, 512 x 512) and returns its blend mask."""

    def __init__(self, network: ParseNet, device: torch.device | str):
        self.network = network
        self.device = torch.device(device)

    def mask(self, crop: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32) / 127.5 - 1.0)
        batch = batch.permute(2, 0, 1)[None].to(self.device)
        with torch.inference_mode():
            logits = self.network(batch)[0]
            classes = logits.argmax(dim=1)[0].cpu().numpy()
        return face_mask(classes)
