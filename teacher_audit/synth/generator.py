"""CMI-style image generator whose output geometry follows the teacher's input spec.

Architecture (Fang et al., "Contrastive Model Inversion", IJCAI 2021, as summarised in
ALGORITHMS.md §1): ``Linear(nz -> 2*ngf * s0 * s0)``, BN, then ``n`` stages of
``Upsample(2) -> Conv3x3 -> BN -> LeakyReLU(0.2)``, a final ``Conv3x3 -> C`` and a sigmoid mapped
into ``spec.value_range``. ``s0`` and ``n`` are chosen so ``s0 * 2**n`` matches the input size
(28 -> 7*4, 32 -> 8*4, 64 -> 8*8, 224 -> 7*32); any mismatch (non-square inputs) is closed by a
final bilinear resize. The teacher wrapper applies the teacher's own normalisation afterwards.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from teacher_audit.intake.spec import InputSpec


def plan_geometry(height: int, width: int) -> tuple[int, int, int]:
    """Return ``(stages, base_h, base_w)`` for an output of ``height x width``."""
    side = min(height, width)
    stages = max(1, min(6, round(math.log2(max(side, 2) / 8.0)))) if side >= 16 else 1
    base_h = max(1, math.ceil(height / 2**stages))
    base_w = max(1, math.ceil(width / 2**stages))
    return stages, base_h, base_w


class Generator(nn.Module):
    """Noise -> raw image generator.

    Args:
        spec: teacher input spec (channels, height, width, value_range).
        nz: noise dimension (default 256, as CMI).
        ngf: base width; the first stage has ``2*ngf`` channels, the later ones ``ngf``.
    """

    def __init__(self, spec: InputSpec, nz: int = 256, ngf: int = 64):
        super().__init__()
        self.nz = nz
        self.out_hw = (spec.height, spec.width)
        lo, hi = spec.value_range
        self.lo, self.span = float(lo), float(hi) - float(lo)
        stages, bh, bw = plan_geometry(spec.height, spec.width)
        self.base = (bh, bw)
        c0 = 2 * ngf
        self.project = nn.Linear(nz, c0 * bh * bw)
        self.bn0 = nn.BatchNorm2d(c0)
        layers: list[nn.Module] = []
        cin = c0
        for i in range(stages):
            cout = c0 if i == 0 else ngf
            layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                       nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                       nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True)]
            cin = cout
        layers += [nn.Conv2d(cin, spec.channels, 3, padding=1)]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z).view(z.shape[0], -1, *self.base)
        h = self.body(self.bn0(h))
        if tuple(h.shape[-2:]) != self.out_hw:
            h = F.interpolate(h, size=self.out_hw, mode="bilinear", align_corners=False)
        return self.lo + self.span * torch.sigmoid(h)
