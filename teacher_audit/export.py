"""Student export: ``student.safetensors`` + model card, and ``student.onnx`` checked with onnxruntime.

The exported network is the bare student (normalised NCHW input -> logits), the same convention as
every registry architecture; the card's ``input`` block (value range, mean, std) tells a consumer how
to normalise, so ``teacher-audit scan student.safetensors`` reloads it like any zoo teacher.

ONNX: exported with the TorchScript-based exporter (``dynamo=False``), opset 17, dynamic batch axis,
``do_constant_folding=False`` so BatchNormalization nodes (and their running statistics) survive,
which keeps the student auditable by the BN-prior probes. Parity: random raw inputs in the value
range, normalised, through torch and onnxruntime (CPU provider); the file is only moved into place
when the max abs difference is below the tolerance (default 1e-4).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from teacher_audit.atomic import atomic_path, atomic_write_text
from teacher_audit.errors import AuditError
from teacher_audit.intake.spec import InputSpec

PARITY_TOLERANCE = 1e-4


def student_card(spec: InputSpec, arch: str, name: str = "student", description: str = "",
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A model card (docs/card.md keys) for an exported student."""
    card: dict[str, Any] = {
        "schema_version": 1, "name": name, "description": description, "arch": arch,
        "input": {"channels": spec.channels, "height": spec.height, "width": spec.width,
                  "value_range": list(spec.value_range), "mean": list(spec.mean), "std": list(spec.std)},
        "num_classes": spec.num_classes,
    }
    if spec.class_names:
        card["class_names"] = list(spec.class_names)
    if extra:
        card["extra"] = extra
    return card


def save_student(net: nn.Module, spec: InputSpec, arch: str, path: str | Path, description: str = "",
                 extra: dict[str, Any] | None = None) -> dict[str, str]:
    """Write ``path`` (safetensors state_dict of the bare net) and ``path.card.json``; returns both paths."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "arch": arch})
    card = student_card(spec, arch, name=path.stem, description=description, extra=extra)
    card_file = Path(str(path) + ".card.json")
    atomic_write_text(card_file, json.dumps(card, indent=2) + "\n")
    return {"weights": str(path), "card": str(card_file)}


def export_onnx(net: nn.Module, spec: InputSpec, path: str | Path, n_check: int = 64, seed: int = 0,
                tolerance: float = PARITY_TOLERANCE, opset: int = 17) -> dict[str, Any]:
    """Export ``net`` to ONNX and check it against onnxruntime.

    Returns:
        ``{"path", "max_abs_diff", "n_inputs", "tolerance", "opset", "provider"}``.

    Raises:
        AuditError: export failed or parity exceeded ``tolerance`` (no file is left behind).
    """
    import numpy as np
    import onnxruntime as ort

    path = Path(path)
    net = net.cpu().eval()
    g = torch.Generator().manual_seed(seed)
    lo, hi = spec.value_range
    raw = lo + (hi - lo) * torch.rand((n_check, *spec.shape), generator=g)
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1)
    x = (raw - mean) / std
    with atomic_path(path) as tmp:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
                torch.onnx.export(net, (x[:1],), str(tmp), dynamo=False, opset_version=opset,
                                  input_names=["input"], output_names=["logits"],
                                  dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                                  do_constant_folding=False)
        except Exception as exc:  # noqa: BLE001
            raise AuditError(f"ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(tmp), opts, providers=["CPUExecutionProvider"])
        got = sess.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            want = net(x).numpy()
        diff = float(np.abs(got - want).max())
        if not diff < tolerance:
            raise AuditError(f"ONNX parity check failed: max abs difference {diff:.3g} >= {tolerance:g}")
    return {"path": str(path), "max_abs_diff": diff, "n_inputs": n_check, "tolerance": tolerance,
            "opset": opset, "provider": "CPUExecutionProvider"}
