"""MobileNetV2 for CIFAR-sized inputs (Sandler et al., CVPR 2018).

Inverted residual blocks (1x1 expand, 3x3 depthwise, 1x1 linear projection). For 32x32 inputs the stem
and the second stage keep stride 1 (as in the common CIFAR adaptation), leaving a 4x4 map before the
global pool. Parameter names: ``conv1``, ``bn1``, ``layers.I.{conv1,bn1,conv2,bn2,conv3,bn3,shortcut.*}``,
``conv2``, ``bn2``, ``linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from teacher_audit.intake.archs.base import register_arch

#: (expansion, out channels, blocks, first stride)
CFG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """Expand-depthwise-project block; residual when stride is 1 (projected if widths differ)."""

    def __init__(self, cin: int, cout: int, expansion: int, stride: int):
        super().__init__()
        self.stride = stride
        mid = expansion * cin
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Sequential()
        if stride == 1 and cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.stride == 1 else out


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0) for small images."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        blocks: list[nn.Module] = []
        cin = 32
        for expansion, cout, n, stride in CFG:
            for i in range(n):
                blocks.append(InvertedResidual(cin, cout, expansion, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(320, 1280, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.linear = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(self.layers(out))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


@register_arch("mobilenetv2_cifar", family="cifar", input_size=(32, 32), stats="cifar10",
               classifier_key="linear.weight", first_conv_key="conv1.weight")
def mobilenetv2_cifar(num_classes: int, in_channels: int) -> nn.Module:
    """CIFAR-style MobileNetV2 (~2.3 M params)."""
    return CifarMobileNetV2(num_classes, in_channels)
