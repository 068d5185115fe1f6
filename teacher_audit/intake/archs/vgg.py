"""CIFAR-style VGG-11/16 with BatchNorm (Simonyan & Zisserman, ICLR 2015).

``features`` holds conv-BN-ReLU triples and max-pools; ``classifier`` is a single linear layer on the
512-d global feature, as in the DFKD literature. Max-pools use ``ceil_mode`` so that 28x28 inputs
(28-14-7-4-2-1) work as well as 32x32 (32-16-8-4-2-1).
"""

from __future__ import annotations

import torch
from torch import nn

from teacher_audit.intake.archs.base import register_arch

CFG: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class CifarVGG(nn.Module):
    """VGG with BatchNorm for small images.

    Args:
        cfg: channel counts with "M" for a 2x2 max-pool.
        num_classes: logits.
        in_channels: input channels.
    """

    def __init__(self, cfg: list[int | str], num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                cout = int(item)
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin = cout
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register_arch("vgg11_bn", family="cifar", input_size=(32, 32), stats="cifar10",
               classifier_key="classifier.weight", first_conv_key="features.0.weight")
def vgg11_bn(num_classes: int, in_channels: int) -> nn.Module:
    """CIFAR-style VGG-11 with BatchNorm (~9.2 M params)."""
    return CifarVGG(CFG["vgg11"], num_classes, in_channels)


@register_arch("vgg16_bn", family="cifar", input_size=(32, 32), stats="cifar10",
               classifier_key="classifier.weight", first_conv_key="features.0.weight")
def vgg16_bn(num_classes: int, in_channels: int) -> nn.Module:
    """CIFAR-style VGG-16 with BatchNorm (~14.7 M params)."""
    return CifarVGG(CFG["vgg16"], num_classes, in_channels)
