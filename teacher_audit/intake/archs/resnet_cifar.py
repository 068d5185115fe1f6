"""CIFAR-style ResNet-18/34 (He et al., CVPR 2016) as used throughout the DFKD literature.

Differences from the ImageNet ResNet: a 3x3 stride-1 stem without max-pooling, and a global average
pool, so 28x28 and 32x32 inputs both work. Parameter names follow the widely used CIFAR layout
(``conv1``, ``bn1``, ``layerN.M.{conv1,bn1,conv2,bn2,shortcut.0,shortcut.1}``, ``linear``) so that
checkpoints produced by common DFKD code bases are recognised by the matcher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from teacher_audit.intake.archs.base import register_arch


class BasicBlock(nn.Module):
    """Two 3x3 convs with a projection shortcut when the shape changes."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet with four stages of :class:`BasicBlock` (64, 128, 256, 512 channels).

    Args:
        blocks: number of blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
        num_classes: logits.
        in_channels: input channels.
    """

    def __init__(self, blocks: tuple[int, int, int, int], num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        stages = []
        for i, (width, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            layers = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(BasicBlock(cin, width, stride))
                cin = width
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


@register_arch("resnet18_cifar", family="cifar", input_size=(32, 32), stats="cifar10",
               classifier_key="linear.weight", first_conv_key="conv1.weight")
def resnet18_cifar(num_classes: int, in_channels: int) -> nn.Module:
    """CIFAR-style ResNet-18 (~11.2 M params)."""
    return CifarResNet((2, 2, 2, 2), num_classes, in_channels)


@register_arch("resnet34_cifar", family="cifar", input_size=(32, 32), stats="cifar10",
               classifier_key="linear.weight", first_conv_key="conv1.weight")
def resnet34_cifar(num_classes: int, in_channels: int) -> nn.Module:
    """CIFAR-style ResNet-34 (~21.3 M params)."""
    return CifarResNet((3, 4, 6, 3), num_classes, in_channels)
