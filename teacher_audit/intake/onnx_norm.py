"""Input normalisation written into an ONNX graph: ``(x - mean) / std`` as the graph's first nodes.

Deployment exports often carry their preprocessing inside the graph: the input is a raw image and the first
nodes subtract a per-channel mean and divide by a per-channel standard deviation (or multiply and add the
equivalent constants). Those constants are the training data's per-channel statistics in the raw input
space -- exactly what the procedural probes need to draw pictures at the teacher's brightness and contrast
(:func:`teacher_audit.synth.procedural.spec_moments`). This module only *reads* them: the graph is not
changed, and the teacher's wrapper keeps applying the identity (its own mean 0 / std 1) in front of it.

Recognised: a chain of ``Sub``, ``Div``, ``Mul`` and ``Add`` nodes starting at the graph input, each with
the input-derived tensor as its first operand (``Add``/``Mul`` in either position) and a constant (an
initializer or a ``Constant`` node) as the other, holding one value or one value per channel (shape
``[C]``, ``[C, 1, 1]``, ``[1, C, 1, 1]`` for NCHW, ``[1, 1, 1, C]`` for channels-last), and the input and
every link used by that chain alone (constants computed in the graph from constants, such as
``Reciprocal(std)``, count as constants). The chain composes to ``y = a * x + b`` per channel; with ``a > 0``
that is ``(x - mean) / std`` with ``std = 1 / a`` and ``mean = -b / a``. Anything else -- a normalisation
folded into the first convolution, a data-dependent operand, a branch -- gives ``None``. Constants on the
8-bit scale (means of about 100) say the graph takes pixel values in [0, 255] (:func:`implied_value_range`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: nodes followed from the input at most (a normalisation is two to four of them)
MAX_CHAIN = 6
#: largest constant read (a normalisation holds one value per channel; weights are skipped)
MAX_CONSTANT = 4096


def implied_value_range(norm: tuple[tuple[float, ...], tuple[float, ...]] | None) -> tuple[float, float] | None:
    """``(0, 255)`` when the graph's normalisation constants are those of 8-bit pixel values (every mean in
    [1, 255], every sd in [1, 128], e.g. ImageNet's 123.7 / 58.4), else None (the [0, 1] default stands)."""
    if norm is None:
        return None
    mean, std = norm
    if all(1.0 <= m <= 255.0 for m in mean) and all(1.0 <= s <= 128.0 for s in std):
        return (0.0, 255.0)
    return None


#: elementwise operators evaluated on constants (an exporter without constant folding leaves e.g.
#: ``Reciprocal(std)`` as a node in front of the ``Mul``)
_FOLD: dict[str, Any] = {"Reciprocal": np.reciprocal, "Neg": np.negative, "Sqrt": np.sqrt,
                         "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}


def _constants(graph: Any) -> dict[str, np.ndarray]:
    """Small initializers, ``Constant`` node outputs and elementwise results of those, by name, as float64
    arrays (at most :data:`MAX_CONSTANT` values each: a normalisation holds one value per channel)."""
    from onnx import numpy_helper

    out: dict[str, np.ndarray] = {}
    for t in graph.initializer:
        if int(np.prod(t.dims)) > MAX_CONSTANT:  # weights: never a normalisation, not worth a float64 copy
            continue
        try:
            out[t.name] = numpy_helper.to_array(t).astype(np.float64)
        except (ValueError, TypeError):
            continue
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value" and int(np.prod(attr.t.dims)) <= MAX_CONSTANT:
                    try:
                        out[node.output[0]] = numpy_helper.to_array(attr.t).astype(np.float64)
                    except (ValueError, TypeError):
                        pass
        elif (node.op_type in _FOLD and len(node.output) == 1 and node.input
              and all(i in out for i in node.input)):
            try:
                if int(np.prod(np.broadcast_shapes(*(out[i].shape for i in node.input)))) > MAX_CONSTANT:
                    continue
                with np.errstate(all="ignore"):
                    out[node.output[0]] = np.asarray(_FOLD[node.op_type](*(out[i] for i in node.input)))
            except (ValueError, TypeError):
                pass
    return out


def _per_channel(value: np.ndarray, channels: int, layout: str) -> np.ndarray | None:
    """``value`` as one number per channel when it broadcasts that way over an N,C,H,W (or N,H,W,C) input."""
    if value.size == 1:
        return np.full(channels, float(value.reshape(-1)[0]))
    if value.size != channels:
        return None
    shape = tuple(int(d) for d in value.shape)
    axis = 1 if layout == "nchw" else 3
    # right-aligned broadcasting against a rank-4 input: the non-unit dimension must land on the channel axis
    padded = (1,) * (4 - len(shape)) + shape if len(shape) <= 4 else None
    if padded is None or [i for i, d in enumerate(padded) if d != 1] != [axis]:
        return None
    return value.reshape(-1).astype(np.float64)


def graph_input_normalisation(model: Any, input_name: str, channels: int,
                              layout: str = "nchw") -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Per-channel ``(mean, std)`` of the normalisation the graph applies to ``input_name`` first, or None.

    Args:
        model: a checked ``onnx.ModelProto``.
        input_name: the image input.
        channels: the input's channel count.
        layout: ``"nchw"`` or ``"nhwc"`` (the graph's own layout).
    """
    graph = model.graph
    consts = _constants(graph)
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    a, b = np.ones(channels), np.zeros(channels)
    current, links = input_name, 0
    while links < MAX_CHAIN:
        users = consumers.get(current, [])
        if len(users) != 1 or current in outputs:
            break
        node = users[0]
        if node.op_type not in ("Sub", "Div", "Mul", "Add") or len(node.input) != 2 or len(node.output) != 1:
            break
        left, right = node.input
        if left == current and right in consts:
            c = _per_channel(consts[right], channels, layout)
        elif right == current and left in consts and node.op_type in ("Mul", "Add"):
            c = _per_channel(consts[left], channels, layout)
        else:
            break
        if c is None or not np.all(np.isfinite(c)):
            break
        if node.op_type == "Sub":
            b = b - c
        elif node.op_type == "Add":
            b = b + c
        elif node.op_type == "Mul":
            a, b = a * c, b * c
        else:
            if np.any(c == 0):
                break
            a, b = a / c, b / c
        current, links = node.output[0], links + 1
    if links == 0 or not np.all(a > 0):
        return None
    std, mean = 1.0 / a, -b / a
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
