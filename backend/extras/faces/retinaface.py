"""RetinaFace, the face detector GFPGAN and CodeFormer rely on, as a network of our own.

Module names and tensor shapes are exactly those of facexlib's RetinaFace
(itself biubug6's Pytorch_Retinaface), so the files users already have load
unchanged: `detection_Resnet50_Final.pth` (ResNet-50 body) and
`detection_mobilenet0.25_Final.pth` (MobileNet-0.25 body). The state dict is

    body.*          the backbone up to its last stage (ResNet-50: conv1 ... layer4, no fc)
    fpn.*           three 1x1 lateral convs (output1..3) and two 3x3 merges
    ssh1..3.*       one SSH context module per pyramid level
    ClassHead.i / BboxHead.i / LandmarkHead.i .conv1x1   per level: 2 anchors x (2 | 4 | 10) values

The forward pass returns raw head outputs; priors, decoding and NMS live in detection.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

ANCHORS_PER_CELL = 2


def conv_bn(cin: int, cout: int, stride: int = 1, slope: float = 0.0, kernel: int = 3, act: bool = True,
            groups: int = 1) -> nn.Sequential:
    """Conv (no bias) + BatchNorm (+ LeakyReLU): indices 0 and 1 carry the weights, as in the files."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.LeakyReLU(slope, inplace=True))
    return nn.Sequential(*layers)


def depthwise_separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    """MobileNet's block: 3x3 depthwise conv, BN, act, 1x1 pointwise conv, BN, act (indices 0..5)."""
    return nn.Sequential(*conv_bn(cin, cin, stride, 0.1, groups=cin), *conv_bn(cin, cout, 1, 0.1, kernel=1))


class MobileNetBody(nn.Module):
    """MobileNet-0.25 up to its third stage (the file has no classifier)."""

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(conv_bn(3, 8, 2, 0.1), depthwise_separable(8, 16, 1),
                                    depthwise_separable(16, 32, 2), depthwise_separable(32, 32, 1),
                                    depthwise_separable(32, 64, 2), depthwise_separable(64, 64, 1))
        self.stage2 = nn.Sequential(depthwise_separable(64, 128, 2),
                                    *[depthwise_separable(128, 128, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(depthwise_separable(128, 256, 2), depthwise_separable(256, 256, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c1 = self.stage1(x)
        c2 = self.stage2(c1)
        return [c1, c2, self.stage3(c2)]


class ResNetBody(nn.Module):
    """torchvision's ResNet-50 without avgpool and fc; returns the outputs of layer2, layer3, layer4."""

    def __init__(self):
        super().__init__()
        from torchvision.models import resnet50

        net = resnet50(weights=None)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            self.add_module(name, getattr(net, name))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer2(self.layer1(x))
        c3 = self.layer3(c2)
        return [c2, c3, self.layer4(c3)]


class FPN(nn.Module):
    def __init__(self, in_channels: list[int], out_channels: int):
        super().__init__()
        slope = 0.1 if out_channels <= 64 else 0.0
        self.output1 = conv_bn(in_channels[0], out_channels, 1, slope, kernel=1)
        self.output2 = conv_bn(in_channels[1], out_channels, 1, slope, kernel=1)
        self.output3 = conv_bn(in_channels[2], out_channels, 1, slope, kernel=1)
        self.merge1 = conv_bn(out_channels, out_channels, 1, slope)
        self.merge2 = conv_bn(out_channels, out_channels, 1, slope)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        out1, out2, out3 = (self.output1(features[0]), self.output2(features[1]), self.output3(features[2]))
        out2 = self.merge2(out2 + F.interpolate(out3, size=out2.shape[-2:], mode="nearest"))
        out1 = self.merge1(out1 + F.interpolate(out2, size=out1.shape[-2:], mode="nearest"))
        return [out1, out2, out3]


class SSH(nn.Module):
    """Context module: a 3x3 branch (half the channels) and stacked 5x5 / 7x7-equivalent branches (a quarter each)."""

    def __init__(self, channels: int):
        super().__init__()
        slope = 0.1 if channels <= 64 else 0.0
        quarter = channels // 4
        self.conv3X3 = conv_bn(channels, channels // 2, act=False)
        self.conv5X5_1 = conv_bn(channels, quarter, 1, slope)
        self.conv5X5_2 = conv_bn(quarter, quarter, act=False)
        self.conv7X7_2 = conv_bn(quarter, quarter, 1, slope)
        self.conv7x7_3 = conv_bn(quarter, quarter, act=False)  # lower-case x: the files spell it so

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5_1 = self.conv5X5_1(x)
        branch7 = self.conv7x7_3(self.conv7X7_2(branch5_1))
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(branch5_1), branch7], dim=1))


class Head(nn.Module):
    """A 1x1 conv giving `values` numbers per anchor, flattened to (batch, cells x anchors, values)."""

    def __init__(self, channels: int, values: int):
        super().__init__()
        self.values = values
        self.conv1x1 = nn.Conv2d(channels, ANCHORS_PER_CELL * values, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.values)


@dataclass(frozen=True)
class RetinaVariant:
    name: str
    file_name: str
    body: Callable[[], nn.Module]
    in_channels: tuple[int, int, int]
    out_channels: int


RESNET50 = RetinaVariant("Resnet50", "detection_Resnet50_Final.pth", ResNetBody, (512, 1024, 2048), 256)
MOBILENET = RetinaVariant("mobilenet0.25", "detection_mobilenet0.25_Final.pth", MobileNetBody, (64, 128, 256), 64)
VARIANTS = (RESNET50, MOBILENET)  # in order of preference

# Anchor sizes (pixels) and strides of the three pyramid levels; box and landmark variances.
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCES = (0.1, 0.2)


class RetinaFace(nn.Module):
    def __init__(self, variant: RetinaVariant = RESNET50):
        super().__init__()
        channels = variant.out_channels
        self.body = variant.body()
        self.fpn = FPN(list(variant.in_channels), channels)
        self.ssh1, self.ssh2, self.ssh3 = SSH(channels), SSH(channels), SSH(channels)
        self.ClassHead = nn.ModuleList(Head(channels, 2) for _ in STEPS)
        self.BboxHead = nn.ModuleList(Head(channels, 4) for _ in STEPS)
        self.LandmarkHead = nn.ModuleList(Head(channels, 10) for _ in STEPS)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, 3, H, W) BGR minus (104, 117, 123). Returns box offsets, class logits, landmark offsets."""
        levels = self.fpn(self.body(x))
        features = [self.ssh1(levels[0]), self.ssh2(levels[1]), self.ssh3(levels[2])]
        boxes = torch.cat([head(f) for head, f in zip(self.BboxHead, features)], dim=1)
        logits = torch.cat([head(f) for head, f in zip(self.ClassHead, features)], dim=1)
        landmarks = torch.cat([head(f) for head, f in zip(self.LandmarkHead, features)], dim=1)
        return boxes, logits, landmarks
