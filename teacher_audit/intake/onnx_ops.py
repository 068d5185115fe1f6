"""Whitelisted ONNX operators, implemented with differentiable torch ops.

Used by :mod:`teacher_audit.intake.onnx_import` to turn an untrusted ONNX classifier into a torch module.
Nothing from the graph is executed: each node's ``op_type`` is looked up in :data:`ONNX_OPS` and an
unknown operator (or a custom domain) refuses the model. Semantics follow the ONNX operator spec
(https://onnx.ai/onnx/operators/); opset differences handled here: Clip/Pad/Squeeze/Unsqueeze/Reshape
attributes that became inputs, and Softmax's 2-D coercion before opset 13.

Shape and structure operators (Reshape, Gather, Pad, ...) are in :mod:`onnx_ops_shape`. Every
implementation has the signature ``op(ctx, attrs, inputs) -> list[Tensor]`` where ``inputs`` holds
``None`` for omitted optional inputs and ``ctx`` exposes ``opset`` and ``batchnorm(node_index)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from teacher_audit.errors import NotAuditable
from teacher_audit.registry import Registry


class OpContext(Protocol):
    opset: int
    node_index: int
    num_outputs: int

    def batchnorm(self, index: int) -> torch.nn.Module | None: ...


OpFn = Callable[[OpContext, dict[str, Any], list[Any]], list[Any]]
ONNX_OPS: Registry[OpFn] = Registry("ONNX operator")


def op(*names: str) -> Callable[[OpFn], OpFn]:
    def deco(fn: OpFn) -> OpFn:
        for n in names:
            ONNX_OPS.register(n)(fn)
        return fn

    return deco


def _ints(t: Any) -> list[int]:
    if isinstance(t, Tensor):
        return [int(v) for v in t.reshape(-1).tolist()]
    return [int(v) for v in t]


def _unsupported(what: str) -> NotAuditable:
    return NotAuditable(f"unsupported ONNX construct: {what}")


#: largest tensor an op may *create* from shape arguments (guards against allocation bombs).
MAX_NEW_ELEMENTS = 1 << 27


def _check_size(shape: Sequence[int], op_name: str) -> None:
    if any(d < 0 for d in shape) or math.prod(shape) > MAX_NEW_ELEMENTS:
        raise NotAuditable(f"ONNX {op_name} would create a tensor of shape {list(shape)[:8]}; refused")


# ----------------------------------------------------------------- padding helpers

def _same_pads(x: Tensor, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int],
               mode: str) -> list[int]:
    spatial = x.shape[2:]
    begin, end = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        out = math.ceil(size / s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, big = total // 2, total - total // 2
        begin.append(small if mode == "SAME_UPPER" else big)
        end.append(big if mode == "SAME_UPPER" else small)
    return begin + end


def _pads(attrs: dict[str, Any], x: Tensor, kernel: Sequence[int], strides: Sequence[int],
          dilations: Sequence[int]) -> list[int]:
    nd = x.dim() - 2
    mode = attrs.get("auto_pad", "NOTSET")
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        return _same_pads(x, kernel, strides, dilations, mode)
    if mode == "VALID":
        return [0] * (2 * nd)
    if mode != "NOTSET":
        raise _unsupported(f"auto_pad={mode}")
    pads = list(attrs.get("pads", [0] * (2 * nd)))
    if len(pads) != 2 * nd:
        raise _unsupported(f"pads of length {len(pads)} for {nd}-d input")
    return pads


def _torch_pad(pads: Sequence[int]) -> list[int]:
    """ONNX [b1..bn, e1..en] -> F.pad order (last dim first)."""
    n = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(n)):
        out += [pads[i], pads[i + n]]
    return out


def _split_pads(pads: Sequence[int]) -> tuple[list[int] | None, list[int]]:
    """Symmetric pads -> (None, per-dim padding); else (F.pad list, zeros)."""
    n = len(pads) // 2
    if list(pads[:n]) == list(pads[n:]):
        return None, list(pads[:n])
    return _torch_pad(pads), [0] * n


# ----------------------------------------------------------------- convolution, linear

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@op("Conv")
def conv(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    x, w, b = i[0], i[1], i[2] if len(i) > 2 else None
    nd = w.dim() - 2
    if nd not in _CONV:
        raise _unsupported(f"{nd}-d Conv")
    kernel = a.get("kernel_shape", list(w.shape[2:]))
    strides, dil = a.get("strides", [1] * nd), a.get("dilations", [1] * nd)
    extra, padding = _split_pads(_pads(a, x, kernel, strides, dil))
    if extra is not None:
        x = F.pad(x, extra)
    return [_CONV[nd](x, w, b, stride=strides, padding=padding, dilation=dil, groups=a.get("group", 1))]


@op("Gemm")
def gemm(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    A, B = i[0], i[1]
    C = i[2] if len(i) > 2 else None
    if a.get("transA", 0):
        A = A.transpose(0, 1)
    if a.get("transB", 0):
        B = B.transpose(0, 1)
    y = a.get("alpha", 1.0) * (A @ B)
    if C is not None:
        y = y + a.get("beta", 1.0) * C
    return [y]


@op("MatMul")
def matmul(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    return [torch.matmul(i[0], i[1])]


# ----------------------------------------------------------------- elementwise

@op("Add")
def add(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    return [i[0] + i[1]]


@op("Sub")
def sub(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    return [i[0] - i[1]]


@op("Mul")
def mul(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    return [i[0] * i[1]]


@op("Div")
def div(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    x, y = i
    if not x.is_floating_point() and not y.is_floating_point():
        return [torch.div(x, y, rounding_mode="trunc")]
    return [x / y]


_COMPARE: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "Equal": torch.eq, "Less": torch.lt, "LessOrEqual": torch.le, "Greater": torch.gt, "GreaterOrEqual": torch.ge,
    "And": torch.logical_and, "Or": torch.logical_or, "Xor": torch.logical_xor,
}


def _compare(name: str) -> None:
    fn = _COMPARE[name]
    ONNX_OPS.register(name)(lambda ctx, a, i: [fn(i[0], i[1])])


for _n in _COMPARE:
    _compare(_n)


@op("Not")
def not_(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    return [torch.logical_not(i[0])]


@op("Where")
def where(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    return [torch.where(i[0].bool(), i[1], i[2])]


@op("Mod")
def mod(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    """``fmod=0``: the result takes the divisor's sign (integers only, as the spec requires); ``fmod=1``:
    the dividend's sign (C fmod)."""
    if a.get("fmod", 0):
        return [torch.fmod(i[0], i[1])]
    if i[0].is_floating_point() or i[1].is_floating_point():
        raise _unsupported("Mod with fmod=0 on floating-point inputs")
    return [torch.remainder(i[0], i[1])]


@op("Pow")
def pow_(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    return [torch.pow(i[0], i[1])]


_UNARY: dict[str, Callable[[Tensor], Tensor]] = {
    "Relu": F.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Exp": torch.exp, "Log": torch.log,
    "Sqrt": torch.sqrt, "Neg": torch.neg, "Abs": torch.abs, "Erf": torch.erf, "Reciprocal": torch.reciprocal,
    "Softplus": F.softplus, "Floor": torch.floor, "Ceil": torch.ceil, "Softsign": F.softsign, "Mish": F.mish,
    "Sin": torch.sin, "Cos": torch.cos, "Sign": torch.sign, "Round": torch.round,
}


def _unary(name: str) -> None:
    fn = _UNARY[name]
    ONNX_OPS.register(name)(lambda ctx, a, i: [fn(i[0])])


for _n in _UNARY:
    _unary(_n)


@op("LeakyRelu")
def leaky_relu(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    return [F.leaky_relu(i[0], a.get("alpha", 0.01))]


@op("PRelu")
def prelu(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    """Slope broadcast against the input (unidirectional, as the spec says); not ``F.prelu``, which wants a
    per-channel vector."""
    x, slope = i[0], i[1]
    return [torch.where(x < 0, x * slope, x)]


@op("Gelu")
def gelu(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    return [F.gelu(i[0], approximate=a.get("approximate", "none"))]


@op("Selu")
def selu(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    alpha, gamma = a.get("alpha", 1.67326319217681884765625), a.get("gamma", 1.05070102214813232421875)
    return [gamma * torch.where(i[0] > 0, i[0], alpha * (torch.exp(i[0]) - 1))]


@op("Elu")
def elu(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    return [F.elu(i[0], a.get("alpha", 1.0))]


@op("HardSigmoid")
def hard_sigmoid(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    return [torch.clamp(a.get("alpha", 0.2) * i[0] + a.get("beta", 0.5), 0.0, 1.0)]


@op("HardSwish")
def hard_swish(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    return [i[0] * torch.clamp(i[0] / 6.0 + 0.5, 0.0, 1.0)]


@op("Clip")
def clip(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    if ctx.opset < 11:
        lo, hi = a.get("min"), a.get("max")
    else:
        lo = i[1] if len(i) > 1 else None
        hi = i[2] if len(i) > 2 else None
    return [torch.clamp(i[0], lo, hi)]


def _variadic(name: str, fn: Callable[[Tensor, Tensor], Tensor], scale: bool = False) -> None:
    def impl(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
        y = i[0]
        for t in i[1:]:
            y = fn(y, t)
        return [y / len(i) if scale else y]

    ONNX_OPS.register(name)(impl)


_variadic("Max", torch.maximum)
_variadic("Min", torch.minimum)
_variadic("Sum", torch.add)
_variadic("Mean", torch.add, scale=True)


# ----------------------------------------------------------------- normalisation, pooling

@op("BatchNormalization")
def batch_norm(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    if a.get("training_mode", 0):
        raise _unsupported("BatchNormalization in training mode")
    module = ctx.batchnorm(ctx.node_index)
    if module is not None:
        return [module(i[0])]
    return [F.batch_norm(i[0], i[3], i[4], i[1], i[2], training=False, eps=a.get("epsilon", 1e-5))]


_MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVGPOOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


@op("MaxPool")
def max_pool(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    x = i[0]
    nd = x.dim() - 2
    kernel = a["kernel_shape"]
    strides, dil = a.get("strides", [1] * nd), a.get("dilations", [1] * nd)
    if a.get("storage_order", 0):
        raise _unsupported("MaxPool storage_order=1")
    extra, padding = _split_pads(_pads(a, x, kernel, strides, dil))
    if extra is not None:
        x = F.pad(x, extra, value=float("-inf"))
    return [_MAXPOOL[nd](x, kernel, strides, padding, dil, ceil_mode=bool(a.get("ceil_mode", 0)))]


@op("AveragePool")
def avg_pool(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    x = i[0]
    nd = x.dim() - 2
    kernel = a["kernel_shape"]
    strides = a.get("strides", [1] * nd)
    if any(d != 1 for d in a.get("dilations", [1] * nd)):
        raise _unsupported("dilated AveragePool")
    include = bool(a.get("count_include_pad", 0))
    extra, padding = _split_pads(_pads(a, x, kernel, strides, [1] * nd))
    if extra is not None:
        if not include:
            raise _unsupported("asymmetric AveragePool padding with count_include_pad=0")
        x = F.pad(x, extra)
    return [_AVGPOOL[nd](x, kernel, strides, padding, ceil_mode=bool(a.get("ceil_mode", 0)),
                         count_include_pad=include)]


@op("GlobalAveragePool")
def global_avg_pool(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    return [i[0].mean(dim=tuple(range(2, i[0].dim())), keepdim=True)]


@op("GlobalMaxPool")
def global_max_pool(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
    return [i[0].amax(dim=tuple(range(2, i[0].dim())), keepdim=True)]


def _softmax(fn: Callable[..., Tensor]) -> OpFn:
    def impl(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
        x = i[0]
        if ctx.opset >= 13:
            return [fn(x, dim=a.get("axis", -1))]
        axis = a.get("axis", 1) % max(x.dim(), 1)
        flat = x.reshape(math.prod(x.shape[:axis]), -1)
        return [fn(flat, dim=1).reshape(x.shape)]

    return impl


ONNX_OPS.register("Softmax")(_softmax(torch.softmax))
ONNX_OPS.register("LogSoftmax")(_softmax(torch.log_softmax))


_REDUCE: dict[str, Callable[[Tensor, tuple[int, ...], bool], Tensor]] = {
    "ReduceMean": lambda x, d, k: x.mean(dim=d, keepdim=k),
    "ReduceSum": lambda x, d, k: x.sum(dim=d, keepdim=k),
    "ReduceMax": lambda x, d, k: x.amax(dim=d, keepdim=k),
    "ReduceMin": lambda x, d, k: x.amin(dim=d, keepdim=k),
    "ReduceProd": lambda x, d, k: _prod(x, d, k),
    "ReduceL1": lambda x, d, k: x.abs().sum(dim=d, keepdim=k),
    "ReduceL2": lambda x, d, k: torch.sqrt((x * x).sum(dim=d, keepdim=k)),
    "ReduceSumSquare": lambda x, d, k: (x * x).sum(dim=d, keepdim=k),
    "ReduceLogSumExp": lambda x, d, k: torch.logsumexp(x, dim=d, keepdim=k),
    "ReduceLogSum": lambda x, d, k: torch.log(x.sum(dim=d, keepdim=k)),
}


def _prod(x: Tensor, dims: tuple[int, ...], keep: bool) -> Tensor:
    for d in sorted((d % x.dim() for d in dims), reverse=True):
        x = x.prod(dim=d, keepdim=keep)
    return x


def _reduce(name: str) -> OpFn:
    fn = _REDUCE[name]
    # the axes attribute became an input: ReduceSum at opset 13, the others at opset 18
    input_from = 13 if name == "ReduceSum" else 18

    def impl(ctx: OpContext, a: dict[str, Any], i: list[Any]) -> list[Any]:
        x = i[0]
        axes = a.get("axes")
        if ctx.opset >= input_from and len(i) > 1 and i[1] is not None:
            axes = _ints(i[1])
        keep = bool(a.get("keepdims", 1))
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return [x]
            axes = list(range(x.dim()))
        return [fn(x, tuple(axes), keep)]

    return impl


for _n in _REDUCE:
    ONNX_OPS.register(_n)(_reduce(_n))


# shape/structure, normalisation and resize operators live in their own modules; importing them registers them
from teacher_audit.intake import onnx_ops_norm, onnx_ops_resize, onnx_ops_shape  # noqa: E402,F401
