"""The one safe-load path: sniff -> static pickle scan -> restricted load -> architecture -> spec -> Teacher.

Threat assumption: the file is hostile until proven to be plain weights. Nothing is unpickled before the
static scan (``pickle_scan``) has accepted every global of every pickle in the file; unpickling then uses
``torch.load(weights_only=True, map_location="cpu")`` only (never ``weights_only=False``), with globals
admitted through ``--allow-global`` passed via ``torch.serialization.safe_globals``. safetensors files are
read with ``safe_open``; ONNX goes through ``onnx_import.load_onnx`` (no external data outside the model's
folder); TorchScript archives are code and are loaded only with ``trust_torchscript=True``. The network is
rebuilt from the architecture registry, never from the checkpoint.

Options (``LoadOptions``): ``arch`` (override the matcher; default None), ``allow_globals`` (extra pickle
globals, default none), ``trust_torchscript`` (default False), ``spec_flags`` (``InputSpec`` field ->
value from the command line, highest precedence), ``device`` (default ``"cpu"``).

Outputs: ``(Teacher, IntakeResult)``. Every failure is an ``errors`` exception with a one-line message;
the partially filled ``IntakeResult`` is attached to it as ``exc.intake`` so ``inspect --json`` can still
report what was found (e.g. the refused globals).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from teacher_audit.device import pick_device
from teacher_audit.errors import (
    AuditError, CorruptInput, NotAuditable, RefusedPickle, TrustRequired, UnknownArchitecture, UnsupportedFormat,
    UsageError,
)
from teacher_audit.intake import pickle_scan
from teacher_audit.intake.fingerprint import fingerprint
from teacher_audit.intake.sniff import PICKLE_FORMATS, Format, sniff
from teacher_audit.intake.spec import InputSpec
from teacher_audit.registry import Registry
from teacher_audit.report.model import IntakeResult
from teacher_audit.teacher import Teacher

#: keys under which training scripts commonly nest the weights, tried in this order.
WRAPPER_KEYS: tuple[str, ...] = ("state_dict", "model_state_dict", "model", "net", "state_dict_ema", "module")
_MAX_UNWRAP = 4


@dataclass
class LoadOptions:
    """How to load a teacher (see the module docstring)."""

    arch: str | None = None
    allow_globals: tuple[str, ...] = ()
    trust_torchscript: bool = False
    spec_flags: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"


@dataclass
class _Loaded:
    """What a format loader produced before spec resolution."""

    net: nn.Module
    arch: str
    arch_source: str
    onnx_spec: dict[str, Any] | None = None
    arch_default: InputSpec | None = None
    has_batchnorm: bool | None = None
    graph_normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None


LOADERS: Registry[Any] = Registry("format loader")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or exc.__class__.__name__


def _sha256(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


def _resolve_global(qualified: str) -> Any:
    """Import an explicitly user-allowed ``module.qualname`` (longest importable module prefix wins)."""
    parts = qualified.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except Exception:  # noqa: BLE001 - try a shorter module path
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            continue
        return obj
    raise UsageError(f"--allow-global {qualified}: no importable object by that name")


def _torch_load(path: Path, extra: list[str]) -> Any:
    """``torch.load(weights_only=True)`` with the explicitly allowed globals; failures -> one-line errors."""
    safe = [(_resolve_global(g), g) for g in extra]
    try:
        with torch.serialization.safe_globals(safe):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = _one_line(exc)
        if "Unsupported global" in msg or "not an allowed global" in msg:
            raise NotAuditable(f"torch weights_only loader refused the file: {msg[:160]}") from None
        raise CorruptInput(f"torch.load(weights_only=True) failed: {msg[:160]}") from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - RuntimeError (zip reader), EOFError, KeyError, struct.error...
        raise CorruptInput(f"torch.load(weights_only=True) failed: {exc.__class__.__name__}: "
                           f"{_one_line(exc)[:160]}") from None


def _is_tensor_map(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def unwrap_state_dict(obj: Any, notes: list[str]) -> dict[str, torch.Tensor]:
    """Find the state_dict inside a checkpoint object (``{"state_dict"|"model"|"net"|...: sd}``), strip prefixes."""
    from teacher_audit.intake.archs import strip_wrapper_prefix

    path: list[str] = []
    for _ in range(_MAX_UNWRAP):
        if _is_tensor_map(obj):
            break
        if not isinstance(obj, Mapping):
            raise NotAuditable(f"checkpoint holds a {type(obj).__name__}, not a state_dict of tensors")
        key = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            keys = ", ".join(repr(k)[:40] for k in list(obj)[:8])
            raise NotAuditable(f"no state_dict found (top-level keys: {keys}; tensors must be the values)")
        path.append(key)
        obj = obj[key]
    if not _is_tensor_map(obj):
        raise NotAuditable("no mapping of parameter names to tensors found in the checkpoint")
    if path:
        notes.append("unwrapped " + "".join(f"[{k!r}]" for k in path))
    sd, prefix = strip_wrapper_prefix(obj)
    if prefix:
        notes.append(f"stripped key prefix {prefix!r}")
    return sd


def _build_and_load(sd: dict[str, torch.Tensor], opts: LoadOptions, card: dict[str, Any] | None,
                    intake: IntakeResult) -> _Loaded:
    """Resolve the architecture (flag > card > matcher), build it, ``load_state_dict(strict=True)``."""
    from teacher_audit.intake.archs import ARCHS, match_state_dict

    intake.tensor_count = len(sd)
    card_arch = (card or {}).get("arch")
    name, source = (opts.arch, "flag") if opts.arch else (card_arch, "card") if card_arch else (None, "matcher")
    if name is not None and name not in ARCHS:
        err = UsageError if source == "flag" else UnknownArchitecture
        raise err(f"unknown architecture {name!r} (from {source}); known: {', '.join(ARCHS.names())}")
    result = match_state_dict(sd)
    intake.architecture_candidates = [
        {k: c[k] for k in ("name", "score", "num_classes", "in_channels", "differences") if k in c}
        for c in result.candidates[:5]
    ]
    if name is None:
        if result.best is None:
            raise UnknownArchitecture(f"no registered architecture fits the weights; closest: {result.closest(3)}")
        name = result.best
        nc, ch = result.num_classes, result.in_channels
        if result.ambiguous:
            intake.notes.append(f"also matched exactly: {', '.join(result.ambiguous)}")
    else:
        one = match_state_dict(sd, names=[name]).candidates[0]
        nc, ch = one["num_classes"], one["in_channels"]
    net = ARCHS.get(name).build(int(nc or 10), int(ch) if ch else None)
    expected = net.state_dict()
    for k, v in expected.items():  # checkpoints from older torch lack BN num_batches_tracked buffers
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = v.clone()
    try:
        net.load_state_dict(sd, strict=True)
    except (RuntimeError, ValueError, TypeError) as exc:
        first = _one_line(exc).replace("Error(s) in loading state_dict for", "state_dict does not fit")[:220]
        raise UnknownArchitecture(f"weights do not fit architecture {name!r} ({source}): {first}") from None
    default = ARCHS.get(name).default_spec(int(nc or 10), int(ch) if ch else None)
    default.sources.update({"num_classes": "weights", "channels": "weights"})
    return _Loaded(net=net, arch=name, arch_source=source, arch_default=default)


@LOADERS.register(Format.TORCH_ZIP.value)
@LOADERS.register(Format.TORCH_LEGACY.value)
def _load_torch(path: Path, opts: LoadOptions, card: dict[str, Any] | None, intake: IntakeResult) -> _Loaded:
    obj = _torch_load(path, intake.pickle.extra_allowed)
    return _build_and_load(unwrap_state_dict(obj, intake.notes), opts, card, intake)


@LOADERS.register(Format.PICKLE.value)
def _load_pickle(path: Path, opts: LoadOptions, card: dict[str, Any] | None, intake: IntakeResult) -> _Loaded:
    raise UnsupportedFormat("raw pickle (not torch.save): tensors cannot be rebuilt from it without executing "
                            "code; re-save the state_dict with torch.save or safetensors")


@LOADERS.register(Format.SAFETENSORS.value)
def _load_safetensors(path: Path, opts: LoadOptions, card: dict[str, Any] | None,
                      intake: IntakeResult) -> _Loaded:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            sd = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
            meta = fh.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - SafetensorError and friends
        raise CorruptInput(f"safetensors file cannot be read: {_one_line(exc)[:160]}") from None
    if meta:
        intake.notes.append("safetensors metadata keys: " + ", ".join(sorted(meta)[:8]))
    if not sd:
        raise NotAuditable("safetensors file holds no tensors")
    return _build_and_load(unwrap_state_dict(sd, intake.notes), opts, card, intake)


@LOADERS.register(Format.ONNX.value)
def _load_onnx(path: Path, opts: LoadOptions, card: dict[str, Any] | None, intake: IntakeResult) -> _Loaded:
    from teacher_audit.intake.onnx_import import load_onnx

    ot = load_onnx(path)
    intake.onnx_parity_max_abs_diff = float(ot.parity_max_abs_diff)
    intake.tensor_count = len(ot.net.state_dict())
    if ot.input_layout == "nhwc":
        intake.notes.append("ONNX input is channels-last (N,H,W,C); images are transposed from NCHW for it")
    if opts.arch:
        intake.notes.append(f"--arch {opts.arch} ignored: ONNX files carry their own graph")
    return _Loaded(net=ot.net, arch="onnx", arch_source="onnx", onnx_spec=dict(ot.spec),
                   has_batchnorm=bool(ot.has_batchnorm), graph_normalisation=ot.input_normalisation)


@LOADERS.register(Format.TORCHSCRIPT.value)
def _load_torchscript(path: Path, opts: LoadOptions, card: dict[str, Any] | None,
                      intake: IntakeResult) -> _Loaded:
    if not opts.trust_torchscript:
        raise TrustRequired("TorchScript archives are code, not weights; loading one runs it. Pass "
                            "--trust-torchscript only if you trust its author")
    intake.notes.append("TorchScript loaded with --trust-torchscript: its code was trusted, not audited")
    try:
        net = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001
        raise CorruptInput(f"torch.jit.load failed: {_one_line(exc)[:160]}") from None
    intake.tensor_count = len(net.state_dict())
    return _Loaded(net=net, arch="torchscript", arch_source="torchscript")


def _check_forward(net: nn.Module, spec: InputSpec) -> None:
    """One zero input of the spec's shape must give ``num_classes`` logits (catches wrong sizes/cards)."""
    try:
        with torch.no_grad():
            out = net(torch.zeros(1, *spec.shape))
    except Exception as exc:  # noqa: BLE001
        raise NotAuditable(f"network does not accept input {'x'.join(map(str, spec.shape))}: "
                           f"{_one_line(exc)[:160]}") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] != spec.num_classes:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise NotAuditable(f"network output {shape} does not match num_classes={spec.num_classes}")


def _load(p: Path, opts: LoadOptions, intake: IntakeResult) -> Teacher:
    from teacher_audit.intake.card import load_card, resolve_spec

    sn = sniff(p)
    intake.format = sn.format.value
    if sn.format in PICKLE_FORMATS:
        report = pickle_scan.scan_file(p, sn.format.value, opts.allow_globals)
        intake.pickle = report.to_model()
        unused = sorted(set(opts.allow_globals) - set(report.globals_found))
        if unused:
            intake.notes.append("--allow-global given but not imported by the file: " + ", ".join(unused[:8]))
        if report.nested:
            intake.notes.append("pickles nested as bytes inside the file were scanned: " + ", ".join(report.nested[:5]))
        if sn.format != Format.TORCHSCRIPT:
            pickle_scan.enforce(report)
        elif not opts.trust_torchscript:
            shown = ", ".join(report.refused[:6]) + (" ..." if len(report.refused) > 6 else "")
            raise TrustRequired("TorchScript archives are code, not weights; loading one runs it. Pass "
                                "--trust-torchscript only if you trust its author"
                                + (f" (its pickles import: {shown})" if shown else ""))
    card = load_card(p)
    loaded: _Loaded = LOADERS.get(sn.format.value)(p, opts, card, intake)
    net = loaded.net.eval()
    spec = resolve_spec(card=card, onnx_spec=loaded.onnx_spec, arch_default=loaded.arch_default,
                        flags=dict(opts.spec_flags))
    if loaded.graph_normalisation is not None:
        spec.graph_normalisation = loaded.graph_normalisation
        mean, std = (", ".join(f"{v:.4g}" for v in vec) for vec in loaded.graph_normalisation)
        intake.notes.append(f"the ONNX graph normalises its input itself (mean {mean}; std {std}); "
                            "used as the input statistics of the procedural pictures when no card gives them")
    _check_forward(net, spec)
    intake.architecture, intake.architecture_source = loaded.arch, loaded.arch_source
    intake.parameter_count = int(sum(t.numel() for t in net.parameters()))
    intake.has_batchnorm = loaded.has_batchnorm if loaded.has_batchnorm is not None else any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) or "BatchNorm" in str(getattr(m, "original_name", ""))
        for m in net.modules())
    intake.input_spec = spec.to_dict()
    intake.structure_fingerprint = fingerprint(net)
    meta = {"sha256": intake.sha256, "path": intake.path, "card": card,
            "onnx_parity_max_abs_diff": intake.onnx_parity_max_abs_diff}
    return Teacher.from_net(net, spec, arch=loaded.arch, fmt=intake.format, **meta).to(pick_device(opts.device))


def load_teacher(path: str | os.PathLike[str], options: LoadOptions | None = None) -> tuple[Teacher, IntakeResult]:
    """Load an untrusted checkpoint as a frozen ``Teacher`` (see the module docstring).

    Args:
        path: checkpoint file (any supported format, detected by content).
        options: ``LoadOptions``; default: auto architecture, strict allowlist, no TorchScript.

    Returns:
        ``(teacher, intake)``.

    Raises:
        UsageError (4), CorruptInput (2), UnsupportedFormat / RefusedPickle / UnknownArchitecture /
        TrustRequired / NotAuditable (3); each carries the partial ``IntakeResult`` as ``.intake``.
    """
    opts = options or LoadOptions()
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"no such file: {p}" if not p.exists() else f"not a regular file: {p}")
    try:
        size, digest = _sha256(p)
    except OSError as exc:
        raise CorruptInput(f"cannot read {p.name}: {exc.strerror or exc}") from None
    intake = IntakeResult(path=str(p), size=size, sha256=digest, format="unknown")
    try:
        teacher = _load(p, opts, intake)
    except AuditError as exc:
        intake.refused_reason = _one_line(exc)
        exc.intake = intake  # type: ignore[attr-defined]
        raise
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - never a traceback on untrusted input
        wrapped = CorruptInput(f"unexpected failure while loading: {exc.__class__.__name__}: {_one_line(exc)}")
        intake.refused_reason = str(wrapped)
        wrapped.intake = intake  # type: ignore[attr-defined]
        raise wrapped from exc
    return teacher, intake


__all__ = ["LOADERS", "LoadOptions", "RefusedPickle", "load_teacher", "unwrap_state_dict"]
