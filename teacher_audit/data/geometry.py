"""Bring image batches to a teacher's input geometry (channels, height, width) and value range.

Used by every dataset in :mod:`teacher_audit.data.datasets` so that evaluation data always matches the
teacher's :class:`~teacher_audit.intake.spec.InputSpec`. Only deterministic operations: bilinear resize
(antialiased when shrinking), channel replication / luminance averaging, affine map of [0, 1] onto
``value_range``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert an NCHW batch to ``channels`` channels.

    1 -> C replicates the grey channel; 3 -> 1 uses ITU-R BT.601 luminance; C -> C is a no-op.

    Raises:
        ValueError: for conversions that are not defined (e.g. 3 -> 4).
    """
    c = x.shape[1]
    if c == channels:
        return x
    if c == 1:
        return x.expand(-1, channels, -1, -1).contiguous()
    if c == 3 and channels == 1:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)
    raise ValueError(f"cannot convert {c}-channel images to {channels} channels")


def resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of an NCHW float batch; a no-op when the size already matches."""
    if x.shape[-2:] == (height, width):
        return x
    shrink = height < x.shape[-2] or width < x.shape[-1]
    out = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=shrink)
    return out.clamp(0.0, 1.0)


def fit(x: torch.Tensor, channels: int, height: int, width: int,
        value_range: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """Convert a [0, 1] NCHW batch to the given geometry and value range (float32)."""
    x = to_channels(resize(x.float(), height, width), channels)
    lo, hi = float(value_range[0]), float(value_range[1])
    if (lo, hi) != (0.0, 1.0):
        x = x * (hi - lo) + lo
    return x.contiguous()
