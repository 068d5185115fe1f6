"""Whitelisted ONNX shape/structure operators (Flatten, Reshape, Gather, Pad, Constant, ...).

Registered into :data:`teacher_audit.intake.onnx_ops.ONNX_OPS`; see that module for the conventions.
Shape tensors stay on the input's device; operators that create tensors from shape arguments are
size-capped (``MAX_NEW_ELEMENTS``) because the shapes come from an untrusted graph.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from teacher_audit.intake.onnx_ops import OpContext, _check_size, _ints, _torch_pad, _unsupported, op


@op("Identity", "Dropout")
def identity(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    return [i[0]]


@op("Flatten")
def flatten(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    x = i[0]
    axis = a.get("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]


@op("Reshape")
def reshape(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    x = i[0]
    shape = _ints(i[1]) if ctx.opset >= 5 else list(a["shape"])
    if not a.get("allowzero", 0):
        shape = [x.shape[k] if s == 0 else s for k, s in enumerate(shape)]
    return [x.reshape(shape)]


@op("Transpose")
def transpose(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    perm = a.get("perm", list(reversed(range(i[0].dim()))))
    return [i[0].permute(*perm)]


@op("Concat")
def concat(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    return [torch.cat([t for t in i if t is not None], dim=a["axis"])]


@op("Pad")
def pad(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    x = i[0]
    if ctx.opset < 11:
        pads, value = list(a["pads"]), float(a.get("value", 0.0))
    else:
        pads = _ints(i[1])
        value = float(i[2].reshape(-1)[0]) if len(i) > 2 and i[2] is not None and i[2].numel() else 0.0
    if len(i) > 3 and i[3] is not None:  # opset 18 axes
        axes = [ax % x.dim() for ax in _ints(i[3])]
        full = [0] * (2 * x.dim())
        for k, ax in enumerate(axes):
            full[ax], full[ax + x.dim()] = pads[k], pads[k + len(axes)]
        pads = full
    mode = a.get("mode", "constant")
    modes = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}
    if mode not in modes:
        raise _unsupported(f"Pad mode {mode}")
    _check_size([d + b + e for d, b, e in zip(x.shape, pads[:x.dim()], pads[x.dim():])], "Pad")
    tp = _torch_pad(pads)
    while len(tp) >= 2 and tp[-1] == 0 and tp[-2] == 0:
        tp = tp[:-2]  # non-constant modes only pad trailing (spatial) dims
    if not tp:
        return [x]
    if mode == "constant":
        return [F.pad(x, tp, value=value)]
    return [F.pad(x, tp, mode=modes[mode])]


@op("Shape")
def shape(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    dims = list(i[0].shape)
    start, end = a.get("start", 0), a.get("end", len(dims))
    return [torch.tensor(dims[start:end], dtype=torch.int64, device=i[0].device)]


@op("Gather")
def gather(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    data, idx = i[0], i[1].long().to(i[0].device)
    axis = a.get("axis", 0) % data.dim()
    idx = torch.where(idx < 0, idx + data.shape[axis], idx)
    out = torch.index_select(data, axis, idx.reshape(-1))
    # a tuple, not unpacked: a scalar index into a 1-d tensor (``x.size(0)`` in a dynamic-batch export) is 0-d
    return [out.reshape((*data.shape[:axis], *idx.shape, *data.shape[axis + 1:]))]


def _axes(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[int] | None:
    if ctx.opset >= 13:
        return _ints(i[1]) if len(i) > 1 and i[1] is not None else None
    return a.get("axes")


@op("Unsqueeze")
def unsqueeze(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    x = i[0]
    axes = _axes(ctx, a, i) or []
    rank = x.dim() + len(axes)
    for ax in sorted(ax % rank for ax in axes):
        x = x.unsqueeze(ax)
    return [x]


@op("Squeeze")
def squeeze(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    x = i[0]
    axes = _axes(ctx, a, i)
    if axes is None:
        return [x.squeeze()]
    return [x.squeeze(tuple(ax % x.dim() for ax in axes))]


@op("Constant")
def constant(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in a:
            v = a[key]
            if isinstance(v, Tensor):
                return [v]
            dtype = torch.float32 if "float" in key else torch.int64
            return [torch.tensor(v, dtype=dtype)]
    raise _unsupported("Constant without a numeric value")


#: ONNX TensorProto data types -> torch dtypes accepted by Cast / ConstantOfShape.
DTYPES: dict[int, torch.dtype] = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16,
                                  6: torch.int32, 7: torch.int64, 9: torch.bool, 10: torch.float16,
                                  11: torch.float64, 16: torch.bfloat16}


@op("Cast")
def cast(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    to = a["to"]
    if to not in DTYPES:
        raise _unsupported(f"Cast to data type {to}")
    return [i[0].to(DTYPES[to])]


@op("ConstantOfShape")
def constant_of_shape(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    value = a.get("value", torch.zeros(1, dtype=torch.float32))
    shape = _ints(i[0])
    _check_size(shape, "ConstantOfShape")
    return [torch.full(shape, value.reshape(-1)[0].item(), dtype=value.dtype, device=i[0].device)]


@op("Slice")
def slice_(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    x = i[0]
    if ctx.opset < 10:
        starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
    else:
        starts, ends = _ints(i[1]), _ints(i[2])
        axes = _ints(i[3]) if len(i) > 3 and i[3] is not None else None
        steps = _ints(i[4]) if len(i) > 4 and i[4] is not None else None
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps or [1] * len(starts)
    index: list[Any] = [slice(None)] * x.dim()
    for s, e, ax, st in zip(starts, ends, axes, steps):
        if st <= 0:
            raise _unsupported("Slice with non-positive step")
        index[ax % x.dim()] = slice(s, e, st)
    return [x[tuple(index)]]


@op("Split")
def split(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    """Sizes from the ``split`` attribute (before opset 13) or input, else ``num_outputs`` (opset 18) or
    the node's output count, as even chunks (the last one smaller when the axis does not divide)."""
    x = i[0]
    axis = a.get("axis", 0) % x.dim()
    sizes = _ints(i[1]) if ctx.opset >= 13 and len(i) > 1 and i[1] is not None else a.get("split")
    if sizes:
        return list(torch.split(x, list(sizes), dim=axis))
    n = int(a.get("num_outputs", ctx.num_outputs))
    if n <= 0:
        raise _unsupported("Split into no outputs")
    return list(torch.split(x, math.ceil(x.shape[axis] / n), dim=axis))


@op("Expand")
def expand(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    """Numpy-style two-way broadcast of the input against the shape argument."""
    x, shape = i[0], _ints(i[1])
    out = list(torch.broadcast_shapes(tuple(x.shape), tuple(shape)))
    _check_size(out, "Expand")
    return [x.expand(out)]


@op("Tile")
def tile(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    reps = _ints(i[1])
    _check_size([d * r for d, r in zip(i[0].shape, reps)], "Tile")
    return [i[0].repeat(*reps)]


@op("Range")
def range_(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    start, limit, delta = (float(t.reshape(-1)[0]) for t in i[:3])
    if delta == 0:
        raise _unsupported("Range with delta 0")
    _check_size([max(0, math.ceil((limit - start) / delta))], "Range")
    return [torch.arange(start, limit, delta, dtype=i[0].dtype, device=i[0].device)]
