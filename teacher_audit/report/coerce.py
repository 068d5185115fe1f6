"""Make probe output JSON-safe before it enters a report.

Probes may put numpy scalars/arrays or torch tensors into ``ProbeResult.details`` or evidence
``values``/``table``, and scores may be NaN/inf. ``jsonable`` converts such values to plain Python
(arrays to lists, capped), ``json_safe_result`` applies it to a ``ProbeResult``, and ``finite``
replaces non-finite floats by ``None`` so every JSON/SARIF file is strict JSON (no ``NaN`` tokens).
"""

from __future__ import annotations

import math
from typing import Any

from teacher_audit.report.model import ProbeResult

#: arrays longer than this are summarised instead of listed (keeps reports small).
MAX_ITEMS = 4096


def jsonable(obj: Any, max_items: int = MAX_ITEMS, _depth: int = 0) -> Any:
    """A JSON-representable copy of ``obj`` (dict/list/str/int/float/bool/None)."""
    if _depth > 20:
        return "<nested too deeply>"
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "detach") and hasattr(obj, "tolist"):  # torch.Tensor
        obj = obj.detach().cpu()
        if obj.numel() > max_items:
            return f"<tensor shape {tuple(obj.shape)} omitted>"
        return jsonable(obj.tolist(), max_items, _depth + 1)
    if hasattr(obj, "item") and getattr(obj, "shape", None) == ():  # numpy / torch scalar
        return jsonable(obj.item(), max_items, _depth + 1)
    if hasattr(obj, "tolist") and hasattr(obj, "shape"):  # numpy array
        if getattr(obj, "size", 0) > max_items:
            return f"<array shape {tuple(obj.shape)} omitted>"
        return jsonable(obj.tolist(), max_items, _depth + 1)
    if isinstance(obj, dict):
        return {str(k): jsonable(v, max_items, _depth + 1) for k, v in list(obj.items())[:max_items]}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v, max_items, _depth + 1) for v in list(obj)[:max_items]]
    if hasattr(obj, "value") and isinstance(getattr(obj, "value"), (str, int)):  # Enum
        return obj.value
    return str(obj)


def finite(obj: Any) -> Any:
    """Replace non-finite floats anywhere in a JSON-like structure by ``None``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite(v) for v in obj]
    return obj


def json_safe_result(res: ProbeResult) -> ProbeResult:
    """``res`` with details, evidence values/tables and numbers made JSON-safe."""
    ev = [e.model_copy(update={"values": jsonable(e.values) if e.values is not None else None,
                               "table": jsonable(e.table) if e.table is not None else None})
          for e in res.evidence]
    upd: dict[str, Any] = {"details": jsonable(res.details), "evidence": ev}
    for key in ("score", "threshold"):
        v = getattr(res, key)
        if v is not None and not math.isfinite(v):
            upd[key] = None
            upd["details"] = {**upd["details"], f"{key}_non_finite": str(v)}
    return res.model_copy(update=upd)
