"""Load an untrusted ONNX classifier as a differentiable torch module, checked against onnxruntime.

Threat assumption: the ``.onnx`` file and anything it references are attacker-controlled. Therefore

- the protobuf is parsed with ``load_external_data=False``; every external-data ``location`` is resolved
  relative to the model's folder and the model is refused (:class:`NotAuditable`) when a path is absolute,
  contains ``..``, or resolves (through symlinks) outside that folder; only then is the data read;
- the graph is *interpreted*, never executed as code: nodes run in topological order through the
  whitelist in :mod:`teacher_audit.intake.onnx_ops`; an unknown operator, custom domain or subgraph refuses
  the model naming it;
- the conversion is verified: the torch module and onnxruntime (``CPUExecutionProvider``) see the same
  random inputs and the maximum absolute difference of the logits is reported (and bounded).

BatchNormalization nodes become ``nn.BatchNorm2d`` modules carrying the exported running statistics, so
the BN prior of data-free distillation (Yin et al., CVPR 2020 "DeepInversion"; used by ABD, Hong et al.,
ICML 2023) works when the export kept them (``do_constant_folding=False``). Default exports fold BN into
the convolutions; ``OnnxTeacher.has_batchnorm`` tells the engine whether the prior is available.

Usage::

    t = load_onnx("teacher.onnx")
    t.net(x_normalised)           # logits, differentiable w.r.t. x
    t.spec                        # {"channels", "height", "width", "num_classes"} read off the graph
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from teacher_audit.errors import CorruptInput, NotAuditable
from teacher_audit.intake.onnx_graph import BatchChunked, ChannelsLast, OnnxModule
from teacher_audit.intake.onnx_norm import graph_input_normalisation, implied_value_range

MAX_BATCH = 256
MAX_INPUT_ELEMENTS = 3 * 1024 * 1024


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"


@dataclass
class OnnxTeacher:
    """A converted ONNX classifier.

    Attributes:
        net: torch module taking a normalised NCHW float tensor, returning logits (whatever the graph's
            own layout).
        spec: input-spec fields read off the graph (``channels``, ``height``, ``width``, ``num_classes``;
            dynamic dimensions are left out; ``value_range`` [0, 255] when the graph's own normalisation is on
            the 8-bit scale), ready for ``card.resolve_spec(onnx_spec=...)``.
        parity_max_abs_diff: max |torch - onnxruntime| over the parity inputs.
        has_batchnorm: the graph kept BatchNormalization nodes (BN prior available).
        opset: default-domain opset version.
        ops: operator -> count.
        static_batch: the graph's fixed batch size, or None when dynamic.
        batch_chunked: the graph only runs at its static batch size, so ``net`` splits larger batches.
        external_data: external-data locations that were checked and loaded.
        parity_samples: number of random inputs compared.
        input_layout: the graph's own input layout; for ``"nhwc"`` (channels-last, e.g. TensorFlow exports)
            ``net`` is wrapped in :class:`ChannelsLast`, so it still takes NCHW like every other teacher.
        input_normalisation: per-channel ``(mean, std)`` the graph's first nodes apply to its input
            (:mod:`teacher_audit.intake.onnx_norm`), or None; read only, ``net`` still contains them.
    """

    net: nn.Module
    spec: dict[str, Any]
    parity_max_abs_diff: float
    has_batchnorm: bool
    opset: int = 0
    ops: dict[str, int] = field(default_factory=dict)
    static_batch: int | None = None
    batch_chunked: bool = False
    external_data: list[str] = field(default_factory=list)
    parity_samples: int = 0
    input_layout: str = "nchw"
    input_normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None


# ----------------------------------------------------------------------------- external data

def _all_tensors(graph: Any) -> list[Any]:
    """Initializers and tensor-valued node attributes, including those in subgraphs."""
    tensors = list(graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                tensors.append(attr.t)
            tensors.extend(attr.tensors)
            if attr.HasField("g"):
                tensors.extend(_all_tensors(attr.g))
            for g in attr.graphs:
                tensors.extend(_all_tensors(g))
    return tensors


def check_external_data(model: Any, base_dir: str | os.PathLike[str]) -> list[str]:
    """Validate every external-data location of ``model`` against ``base_dir``; return the locations.

    Raises:
        NotAuditable: a location is absolute, uses ``..``, is not a regular file, or resolves outside.
    """
    import onnx

    root = os.path.realpath(base_dir)
    locations: list[str] = []
    for tensor in _all_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        loc = info.get("location", "")
        shown = loc.encode("unicode_escape").decode()[:100]
        parts = loc.replace("\\", "/").split("/")
        if not loc or os.path.isabs(loc) or loc.startswith(("/", "\\")) or ":" in loc or ".." in parts:
            raise NotAuditable(f"ONNX external data location {shown!r} escapes the model's folder; refused")
        real = os.path.realpath(os.path.join(root, loc))
        if os.path.commonpath([root, real]) != root:
            raise NotAuditable(f"ONNX external data location {shown!r} resolves outside the model's folder; "
                               "refused")
        if not os.path.isfile(real):
            raise CorruptInput(f"ONNX external data file {shown!r} is missing")
        locations.append(loc)
    return sorted(set(locations))


# ----------------------------------------------------------------------------- spec and parity

def _dims(value_info: Any) -> list[int | None]:
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in shape.dim]


#: channel counts that mark an image axis (grey, RGB, RGBA)
_CHANNELS = (1, 3, 4)


def input_layout(dims: list[int | None]) -> str:
    """``"nhwc"`` when a rank-4 input is channels-last (TensorFlow/Keras exports: last axis 1, 3 or 4, second
    axis static and not), else ``"nchw"``."""
    if dims[3] in _CHANNELS and dims[1] is not None and dims[1] not in _CHANNELS and dims[2] is not None:
        return "nhwc"
    return "nchw"


def graph_spec(model: Any, input_name: str) -> tuple[dict[str, int], int | None, str]:
    """Input-spec fields in NCHW terms (static dims only), the static batch size and the input layout."""
    vi = next(v for v in model.graph.input if v.name == input_name)
    if vi.type.tensor_type.elem_type != 1:
        raise NotAuditable("ONNX model input is not float32")
    dims = _dims(vi)
    if len(dims) != 4:
        raise NotAuditable(f"ONNX model input has rank {len(dims)}; expected an NCHW or NHWC image batch")
    layout = input_layout(dims)
    chw = (dims[3], dims[1], dims[2]) if layout == "nhwc" else tuple(dims[1:])
    spec = {k: v for k, v in zip(("channels", "height", "width"), chw) if v is not None}
    out = _dims(model.graph.output[0])
    if len(out) == 2 and out[1] is not None:
        spec["num_classes"] = out[1]
    return spec, dims[0], layout


def onnxruntime_parity(model: Any, net: nn.Module, shape: tuple[int, ...], trials: int = 3,
                       seed: int = 0) -> float:
    """Max |net(x) - onnxruntime(x)| over ``trials`` random normal batches of ``shape``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise NotAuditable(f"onnxruntime cannot load the graph: {' '.join(str(exc).split())[:160]}") from None
    name = sess.get_inputs()[0].name
    run_opts = ort.RunOptions()
    run_opts.log_severity_level = 4  # failures are reported through our one-line error, not ORT's log
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for _ in range(trials):
        x = torch.randn(*shape, generator=gen)
        with torch.no_grad():
            mine = net(x).float().numpy()
        try:
            ref = sess.run(None, {name: x.numpy()}, run_opts)[0]
        except Exception as exc:
            raise NotAuditable(f"onnxruntime cannot run the graph: {' '.join(str(exc).split())[:160]}") from None
        if ref.shape != mine.shape:
            raise NotAuditable(f"converted graph output shape {mine.shape} differs from onnxruntime {ref.shape}")
        worst = max(worst, float(np.max(np.abs(ref.astype(np.float64) - mine.astype(np.float64)))))
    return worst


def _batch_generalises(net: nn.Module, shape: tuple[int, ...], seed: int) -> bool:
    x = torch.randn(3, *shape[1:], generator=torch.Generator().manual_seed(seed + 1))
    try:
        with torch.no_grad():
            joint = net(x)
            single = torch.cat([net(x[i:i + 1]) for i in range(3)])
    except (RuntimeError, ValueError, IndexError):
        return False
    return joint.shape == single.shape and bool(torch.allclose(joint, single, rtol=1e-4, atol=1e-5))


# ----------------------------------------------------------------------------- entry point

def load_onnx(path: str | os.PathLike[str], *, input_shape: tuple[int, int, int] | None = None,
              parity_trials: int = 3, parity_tol: float | None = 1e-3, seed: int = 0) -> OnnxTeacher:
    """Load, convert and verify an ONNX image classifier.

    Args:
        path: the ``.onnx`` file (untrusted).
        input_shape: (C, H, W) for the parity inputs when the graph's dimensions are dynamic
            (default: the graph's static dimensions, else 3x32x32).
        parity_trials: random batches compared with onnxruntime.
        parity_tol: refuse the model when the max abs difference exceeds ``parity_tol * max(1, max|logit|)``;
            None disables the bound (the difference is still reported).
        seed: seed of the parity inputs.

    Returns:
        An :class:`OnnxTeacher`.

    Raises:
        CorruptInput: unreadable or inconsistent protobuf, missing external data.
        NotAuditable: external data escaping the folder, unsupported operators or inputs, parity failure.
    """
    import onnx

    p = Path(path)
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError, OSError, ...
        raise CorruptInput(f"not a readable ONNX model: {' '.join(str(exc).split())[:160]}") from None
    if not model.HasField("graph") or not model.graph.node or model.ir_version <= 0:
        raise CorruptInput("not a readable ONNX model: no graph")
    base_dir = p.resolve().parent if not p.is_symlink() else Path(os.path.abspath(p)).parent
    locations = check_external_data(model, base_dir)
    if locations:
        from onnx.external_data_helper import load_external_data_for_model

        try:
            load_external_data_for_model(model, str(base_dir))
        except Exception as exc:
            raise CorruptInput(f"cannot read ONNX external data: {' '.join(str(exc).split())[:160]}") from None
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise CorruptInput(f"invalid ONNX model: {' '.join(str(exc).split())[:160]}") from None
    try:
        net = OnnxModule(model).eval()
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as exc:
        raise CorruptInput(f"ONNX graph cannot be converted: {_why(exc)}") from None
    spec, static_batch, layout = graph_spec(model, net.input_name)
    chw = input_shape or (spec.get("channels", 3), spec.get("height", 32), spec.get("width", 32))
    c, h, w = chw
    shape = (static_batch or 2, *((h, w, c) if layout == "nhwc" else chw))  # in the graph's own layout
    if shape[0] > MAX_BATCH or int(np.prod(chw)) > MAX_INPUT_ELEMENTS:
        raise NotAuditable(f"ONNX model input {list(shape)} is larger than this tool audits")
    try:
        diff = onnxruntime_parity(model, net, shape, trials=parity_trials, seed=seed)
        with torch.no_grad():
            scale = float(net(torch.randn(*shape, generator=torch.Generator().manual_seed(seed))).abs().max())
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError, ZeroDivisionError) as exc:
        raise NotAuditable(f"ONNX graph cannot be interpreted: {_why(exc)}") from None
    if parity_tol is not None and not diff <= parity_tol * max(1.0, scale):
        raise NotAuditable(f"converted ONNX graph disagrees with onnxruntime (max abs diff {diff:.3g})")
    chunked = False
    module: nn.Module = net
    if static_batch is not None and not _batch_generalises(net, shape, seed):
        module, chunked = BatchChunked(net, static_batch).eval(), True
    if layout == "nhwc":
        module = ChannelsLast(module).eval()
    if "num_classes" not in spec:
        try:
            with torch.no_grad():
                logits = module(torch.zeros(shape[0], *chw))
        except (ValueError, TypeError, KeyError, IndexError, RuntimeError, ZeroDivisionError) as exc:
            raise NotAuditable(f"ONNX graph cannot be interpreted: {_why(exc)}") from None
        if logits.dim() == 2:
            spec["num_classes"] = int(logits.shape[1])
    norm = graph_input_normalisation(model, net.input_name, c, layout)
    vr = implied_value_range(norm)
    out_spec: dict[str, Any] = dict(spec, value_range=list(vr)) if vr is not None else dict(spec)
    return OnnxTeacher(net=module, spec=out_spec, parity_max_abs_diff=diff, has_batchnorm=len(net.bn) > 0,
                       opset=net.opset, ops=dict(net.ops), static_batch=static_batch, batch_chunked=chunked,
                       input_layout=layout, input_normalisation=norm,
                       external_data=locations, parity_samples=parity_trials * shape[0])
