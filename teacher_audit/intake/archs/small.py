"""Small networks for 1x28x28 inputs: the zoo's workhorse "smallcnn" and LeNet-5.

Both accept 28x28 and 32x32 inputs (adaptive pooling before the classifier).
"""

from __future__ import annotations

import torch
from torch import nn

from teacher_audit.intake.archs.base import register_arch


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """A five-conv BatchNorm CNN (~0.14 M parameters, ~22 M multiply-adds at 28x28).

    Layout: [conv32, conv32, pool] -> [conv64, conv64, pool] -> conv128 -> global average -> linear.
    The BatchNorm layers give the running statistics the DFKD BN prior needs.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn(in_channels, 32), *_conv_bn(32, 32), nn.MaxPool2d(2),
            *_conv_bn(32, 64), *_conv_bn(64, 64), nn.MaxPool2d(2),
            *_conv_bn(64, 128),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al., 1998) with ReLU and max-pooling, padded first conv for 28x28 inputs."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.pool = nn.MaxPool2d(2)
        self.act = nn.ReLU(inplace=True)
        self.squeeze = nn.AdaptiveAvgPool2d((5, 5))  # identity at 28x28; lets 32x32 inputs through
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act(self.conv1(x)))
        x = self.squeeze(self.pool(self.act(self.conv2(x))))
        x = torch.flatten(x, 1)
        return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))


@register_arch("smallcnn", family="small", input_size=(28, 28), stats="fashion_mnist", default_channels=1,
               classifier_key="classifier.weight", first_conv_key="features.0.weight")
def smallcnn(num_classes: int, in_channels: int) -> nn.Module:
    """Small BatchNorm CNN for 1x28x28 images (~0.14 M params), the zoo's default teacher."""
    return SmallCNN(num_classes, in_channels)


@register_arch("lenet5", family="small", input_size=(28, 28), stats="fashion_mnist", default_channels=1,
               classifier_key="fc3.weight", first_conv_key="conv1.weight")
def lenet5(num_classes: int, in_channels: int) -> nn.Module:
    """LeNet-5 for 1x28x28 images (~62 k params)."""
    return LeNet5(num_classes, in_channels)
