"""Deterministic style shifts of an image batch: second "real" domains sharing the labels.

Non-transferable learning (NTL; Wang et al., ICLR 2022) needs a target domain with the same label set as
the source. Standard pairs (SVHN -> MNIST-M, CIFAR-10 -> STL-10) need data we do not ship, so the zoo
derives target domains from Fashion-MNIST by fixed, seedless transforms. Each shift maps a [0, 1] NCHW
float batch to a [0, 1] batch of the same shape; ``fashion-mnist-<shift>`` datasets apply them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from teacher_audit.registry import Registry

#: shift name -> function(x) -> x'
SHIFTS: Registry[Callable[[torch.Tensor], torch.Tensor]] = Registry("domain shift")


def _grating(h: int, w: int, period: float, angle_deg: float, device: torch.device) -> torch.Tensor:
    a = math.radians(angle_deg)
    r = torch.arange(h, device=device, dtype=torch.float32).view(h, 1)
    c = torch.arange(w, device=device, dtype=torch.float32).view(1, w)
    return 0.5 + 0.5 * torch.sin(2 * math.pi * (c * math.cos(a) + r * math.sin(a)) / period)


@SHIFTS.register("inverted")
def inverted(x: torch.Tensor) -> torch.Tensor:
    """Photographic negative ``1 - x`` (a near domain: same shapes, opposite polarity)."""
    return 1.0 - x


@SHIFTS.register("texture")
def texture(x: torch.Tensor) -> torch.Tensor:
    """Object over a diagonal grating background: ``max(x, 0.45 * grating(period 5 px, 45 deg))``.

    Shapes and polarity are kept, so a clean teacher still recognises most images, but the background
    statistics differ strongly from the source's black background.
    """
    g = _grating(x.shape[-2], x.shape[-1], 5.0, 45.0, x.device).to(x.dtype)
    return torch.maximum(x, 0.45 * g)


@SHIFTS.register("grating")
def grating(x: torch.Tensor) -> torch.Tensor:
    """A faint version of ``texture``: ``max(x, 0.15 * grating(period 5 px, 45 deg))``.

    Near enough that a clean Fashion-MNIST smallcnn keeps ~78 % accuracy (measured on 1,000 test images),
    so an NTL teacher's OOD collapse on it is measurable against a clean teacher.
    """
    g = _grating(x.shape[-2], x.shape[-1], 5.0, 45.0, x.device).to(x.dtype)
    return torch.maximum(x, 0.15 * g)


@SHIFTS.register("blurnoise")
def blurnoise(x: torch.Tensor) -> torch.Tensor:
    """3x3 box blur plus a fixed (seed 0) Gaussian noise field of std 0.15, clipped to [0, 1]."""
    c = x.shape[1]
    k = torch.full((c, 1, 3, 3), 1.0 / 9.0, dtype=x.dtype, device=x.device)
    y = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=c)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape[1:], generator=gen).to(device=x.device, dtype=x.dtype)
    return (y + 0.15 * noise).clamp(0.0, 1.0)


@SHIFTS.register("lowcontrast")
def lowcontrast(x: torch.Tensor) -> torch.Tensor:
    """Grey, low-contrast images: ``0.35 + 0.4 * x``."""
    return 0.35 + 0.4 * x


def apply_shift(name: str, x: torch.Tensor) -> torch.Tensor:
    """Apply the registered shift ``name`` to a [0, 1] batch."""
    return SHIFTS.get(name)(x)
