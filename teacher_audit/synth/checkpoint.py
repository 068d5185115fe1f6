"""Engine checkpoints: one file, written atomically, read back with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from teacher_audit.atomic import atomic_path
from teacher_audit.errors import CorruptInput

CHECKPOINT_NAME = "engine-state.pt"


def save_checkpoint(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``directory/engine-state.pt`` (temp file + rename: never half-written)."""
    target = Path(directory) / CHECKPOINT_NAME
    with atomic_path(target) as tmp:
        torch.save(state, tmp)
    return target


def load_checkpoint(directory: str | Path) -> dict[str, Any] | None:
    """Read the checkpoint in ``directory``, or ``None`` when there is none."""
    target = Path(directory) / CHECKPOINT_NAME
    if not target.exists():
        return None
    try:
        return torch.load(target, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CorruptInput(f"cannot read checkpoint {target}: {type(exc).__name__}") from None
