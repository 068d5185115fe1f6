"""Whitelisted ONNX normalisation operators other than BatchNormalization: LayerNormalization,
InstanceNormalization and GroupNormalization (transformer- and GroupNorm-style classifiers).

Registered into :data:`teacher_audit.intake.onnx_ops.ONNX_OPS`; see that module for the conventions.
Statistics are computed in float32 (or wider, as the input), as the spec's ``stash_type`` default asks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from teacher_audit.intake.onnx_ops import OpContext, _unsupported, op


def _normalise(x: torch.Tensor, dims: tuple[int, ...], eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(normalised x, mean, 1 / std) over ``dims`` (biased variance, kept dims)."""
    mean = x.mean(dim=dims, keepdim=True)
    inv_std = torch.rsqrt(((x - mean) ** 2).mean(dim=dims, keepdim=True) + eps)
    return (x - mean) * inv_std, mean, inv_std


@op("LayerNormalization")
def layer_norm(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    """Normalise over the axes from ``axis`` to the last; outputs Y, Mean and InvStdDev."""
    x, scale = i[0], i[1]
    bias = i[2] if len(i) > 2 else None
    axis = a.get("axis", -1) % x.dim()
    y, mean, inv_std = _normalise(x, tuple(range(axis, x.dim())), float(a.get("epsilon", 1e-5)))
    y = y * scale
    if bias is not None:
        y = y + bias
    return [y, mean, inv_std]


@op("InstanceNormalization")
def instance_norm(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    """Per sample and channel over the spatial axes, then a per-channel scale and bias."""
    x, scale, bias = i[0], i[1], i[2]
    if x.dim() < 3:
        raise _unsupported(f"InstanceNormalization of a {x.dim()}-d input")
    return [F.instance_norm(x, weight=scale, bias=bias, eps=float(a.get("epsilon", 1e-5)))]


@op("GroupNormalization")
def group_norm(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    """Channels split into ``num_groups``; scale and bias are per channel (opset 21) or, in the opset-18
    form, per group (each group's value repeated over its channels)."""
    x, scale, bias = i[0], i[1], i[2]
    groups = int(a["num_groups"])
    n, c = x.shape[0], x.shape[1]
    if groups <= 0 or c % groups:
        raise _unsupported(f"GroupNormalization of {c} channels into {groups} groups")
    if scale.numel() == groups and groups != c:
        scale, bias = scale.repeat_interleave(c // groups), bias.repeat_interleave(c // groups)
    g = x.reshape(n, groups, -1)
    y, _, _ = _normalise(g, (2,), float(a.get("epsilon", 1e-5)))
    shape = (1, c) + (1,) * (x.dim() - 2)
    return [y.reshape(x.shape) * scale.reshape(shape) + bias.reshape(shape)]
