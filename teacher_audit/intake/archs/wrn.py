"""Wide ResNets WRN-d-k (Zagoruyko & Komodakis, BMVC 2016) for CIFAR-sized inputs.

Pre-activation basic blocks, three groups of ``(d - 4) / 6`` blocks with 16k, 32k, 64k channels.
Parameter names follow the layout common in DFKD code (``conv1``, ``blockG.layer.I.{bn1,conv1,bn2,conv2,
convShortcut}``, ``bn1``, ``fc``) so those checkpoints are recognised by the matcher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from teacher_audit.intake.archs.base import register_arch


class WideBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 with a 1x1 projection when the width changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.equal = cin == cout
        self.convShortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        skip = x if self.convShortcut is None else self.convShortcut(pre)
        return out + skip


class WideGroup(nn.Module):
    """``n`` wide blocks; only the first may change width and stride."""

    def __init__(self, n: int, cin: int, cout: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*[WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                     for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-width.

    Args:
        depth: total depth, ``6n + 4``.
        width: widening factor k.
        num_classes: logits.
        in_channels: input channels.
    """

    def __init__(self, depth: int, width: int, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        ch = (16, 16 * width, 32 * width, 64 * width)
        self.conv1 = nn.Conv2d(in_channels, ch[0], 3, padding=1, bias=False)
        self.block1 = WideGroup(n, ch[0], ch[1], 1)
        self.block2 = WideGroup(n, ch[1], ch[2], 2)
        self.block3 = WideGroup(n, ch[2], ch[3], 2)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.fc = nn.Linear(ch[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _register(depth: int, width: int) -> None:
    name = f"wrn{depth}_{width}"

    def build(num_classes: int, in_channels: int) -> nn.Module:
        return WideResNet(depth, width, num_classes, in_channels)

    build.__doc__ = f"Wide ResNet WRN-{depth}-{width} for 32x32 inputs."
    register_arch(name, family="cifar", input_size=(32, 32), stats="cifar10",
                  classifier_key="fc.weight", first_conv_key="conv1.weight")(build)


for _d, _w in ((16, 1), (16, 2), (40, 2)):
    _register(_d, _w)
