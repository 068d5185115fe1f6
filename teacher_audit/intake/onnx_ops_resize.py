"""The whitelisted ONNX Resize operator (nearest and linear modes), written as index arithmetic.

Registered into :data:`teacher_audit.intake.onnx_ops.ONNX_OPS`; see that module for the conventions.
Each resized axis maps output index ``y`` to a source coordinate with the node's
``coordinate_transformation_mode`` (ONNX spec), then either rounds it (``nearest_mode``) or blends the two
neighbours (``linear``, edge-clamped), so every axis and mode combination the spec defines for these two
modes is covered and the result stays differentiable with respect to the input. Cubic interpolation,
antialiasing, ``tf_crop_and_resize`` and aspect-ratio policies other than ``stretch`` are refused by name.
The output shape comes from the graph, so it is size-capped like every shape argument.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from teacher_audit.intake.onnx_ops import OpContext, _check_size, _unsupported, op


def _source_coords(mode: str, out_size: int, in_size: int, scale: float) -> Tensor:
    """Source coordinate of every output index along one axis.

    float32 arithmetic with the integer output length, as onnxruntime computes it: in float64, a
    coordinate such as 1.5 / 0.6 - 0.5 lands a hair below 2 and rounds to the wrong pixel.
    """
    y = torch.arange(out_size, dtype=torch.float32)
    s = torch.tensor(scale, dtype=torch.float32)
    if mode == "half_pixel":
        return (y + 0.5) / s - 0.5
    if mode == "pytorch_half_pixel":
        return (y + 0.5) / s - 0.5 if out_size > 1 else torch.zeros_like(y)
    if mode == "align_corners":
        return y * (in_size - 1) / (out_size - 1) if out_size > 1 else torch.zeros_like(y)
    if mode == "asymmetric":
        return y / s
    if mode == "half_pixel_symmetric":
        offset = in_size / 2 * (1 - out_size / (s * in_size))
        return offset + (y + 0.5) / s - 0.5
    raise _unsupported(f"Resize coordinate_transformation_mode={mode}")


def _round(x: Tensor, how: str) -> Tensor:
    half = (x - torch.floor(x)) == 0.5
    if how == "round_prefer_floor":
        return torch.where(half, torch.floor(x), torch.round(x))
    if how == "round_prefer_ceil":
        return torch.where(half, torch.ceil(x), torch.round(x))
    if how == "floor":
        return torch.floor(x)
    if how == "ceil":
        return torch.ceil(x)
    raise _unsupported(f"Resize nearest_mode={how}")


def _resize_axis(x: Tensor, axis: int, out_size: int, scale: float, a: dict[str, Any], linear: bool) -> Tensor:
    in_size = x.shape[axis]
    src = _source_coords(a["coordinate_transformation_mode"], out_size, in_size, scale)
    if not linear:
        idx = _round(src, a["nearest_mode"]).clamp(0, in_size - 1).long().to(x.device)
        return torch.index_select(x, axis, idx)
    lo = torch.floor(src)
    w = (src - lo).to(device=x.device, dtype=x.dtype)
    i0 = lo.clamp(0, in_size - 1).long().to(x.device)
    i1 = (lo + 1).clamp(0, in_size - 1).long().to(x.device)
    shape = [1] * x.dim()
    shape[axis] = out_size
    w = w.reshape(shape)
    return torch.index_select(x, axis, i0) * (1 - w) + torch.index_select(x, axis, i1) * w


def _present(t: Any) -> bool:
    return t is not None and isinstance(t, Tensor) and t.numel() > 0


@op("Resize")
def resize(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    x = i[0]
    mode = a.get("mode", "nearest")
    if mode not in ("nearest", "linear"):
        raise _unsupported(f"Resize mode={mode}")
    if a.get("antialias", 0):
        raise _unsupported("Resize with antialias=1")
    if a.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise _unsupported(f"Resize keep_aspect_ratio_policy={a['keep_aspect_ratio_policy']}")
    if ctx.opset < 11:  # opset 10: (X, scales), asymmetric coordinates
        a = dict(a, coordinate_transformation_mode="asymmetric", nearest_mode=a.get("nearest_mode", "floor"))
        scales_t, sizes_t = i[1], None
    else:
        scales_t = i[2] if len(i) > 2 else None
        sizes_t = i[3] if len(i) > 3 else None
    a = {"coordinate_transformation_mode": "half_pixel", "nearest_mode": "round_prefer_floor", **a}
    axes = [ax % x.dim() for ax in a.get("axes", range(x.dim()))]
    if _present(sizes_t):
        sizes = [int(v) for v in sizes_t.reshape(-1).tolist()]
        if len(sizes) != len(axes):
            raise _unsupported(f"Resize sizes of length {len(sizes)} for {len(axes)} axes")
        scales = [s / x.shape[ax] for s, ax in zip(sizes, axes)]
    elif _present(scales_t):
        scales = [float(v) for v in scales_t.reshape(-1).tolist()]
        if len(scales) != len(axes) or any(not s > 0 for s in scales):
            raise _unsupported(f"Resize scales {scales[:8]}")
        sizes = [int(math.floor(x.shape[ax] * s)) for s, ax in zip(scales, axes)]
    else:
        raise _unsupported("Resize without scales or sizes")
    out_shape = list(x.shape)
    for ax, s in zip(axes, sizes):
        out_shape[ax] = s
    _check_size(out_shape, "Resize")
    for ax, size, scale in zip(axes, sizes, scales):
        if size != x.shape[ax] or scale != 1.0:
            x = _resize_axis(x, ax, size, scale, a, mode == "linear")
    return [x]
