"""Structure fingerprint of a network: which calibration a teacher belongs to (``teacher-audit calibrate``)."""

from __future__ import annotations

import hashlib
from typing import Any


def fingerprint(net: Any) -> str | None:
    """Structure fingerprint of a network: SHA-256 (first 16 hex digits) over the sorted names and shapes
    of its state dict. Equal for two trainings of one architecture; None when ``net`` has no state dict."""
    try:
        state = net.state_dict()
    except (AttributeError, RuntimeError, TypeError):
        return None
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(f"{name}:{tuple(getattr(state[name], 'shape', ()))};".encode())
    return h.hexdigest()[:16]
