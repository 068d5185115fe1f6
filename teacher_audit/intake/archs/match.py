"""Pick the registered architecture whose parameter names and shapes fit a state_dict.

Threat assumption: the state_dict is untrusted data. Nothing in it is executed or used to choose code;
only its key names and tensor shapes are compared against networks the registry builds itself. Each
candidate is built on the ``meta`` device (no memory, no compute), with ``num_classes`` read off the
candidate's classifier weight and ``in_channels`` off its first convolution.

Scoring: 1.0 for an exact match of every key and shape (``num_batches_tracked`` buffers are ignored,
older checkpoints lack them), otherwise the fraction of keys (over the union of both key sets) present
on both sides with equal shapes. Candidates are sorted by score, then name; ties between exact matches
are resolved by name and the others are listed in ``MatchResult.ambiguous``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch

from teacher_audit.intake.archs.base import ARCHS, ArchEntry

#: wrapper prefixes stripped when *every* key carries them (DataParallel, torch.compile).
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")
MAX_DIFFERENCES = 8
_IGNORED_SUFFIX = "num_batches_tracked"
_MAX_CLASSES = 1_000_000
_MAX_CHANNELS = 64


@dataclass
class MatchResult:
    """Outcome of :func:`match_state_dict`.

    Attributes:
        best: name of the exactly matching architecture, or None when nothing fits exactly.
        num_classes: classes read off the best (or closest) candidate's classifier weight.
        in_channels: input channels read off its first convolution.
        candidates: ``{"name", "score", "num_classes", "in_channels", "differences"}`` dicts, best first.
        ambiguous: other architectures that also matched exactly.
        stripped_prefix: wrapper prefix removed from every key ("" if none).
    """

    best: str | None
    num_classes: int | None
    in_channels: int | None
    candidates: list[dict[str, Any]] = field(default_factory=list)
    ambiguous: list[str] = field(default_factory=list)
    stripped_prefix: str = ""

    def closest(self, n: int = 3) -> str:
        """One line naming the ``n`` closest candidates and their first difference (for error messages)."""
        parts = []
        for c in self.candidates[:n]:
            diff = c["differences"][0] if c["differences"] else "exact"
            parts.append(f"{c['name']} ({c['score']:.0%}: {diff})")
        return "; ".join(parts) or "(no architectures registered)"


def strip_wrapper_prefix(sd: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """Remove ``module.`` / ``_orig_mod.`` prefixes shared by every key; return (dict, removed prefix)."""
    out = dict(sd)
    removed = ""
    changed = True
    while changed and out:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in out):
                out = {k[len(prefix):]: v for k, v in out.items()}
                removed += prefix
                changed = True
    return out, removed


def _shape(v: Any) -> tuple[int, ...]:
    shape = getattr(v, "shape", None)
    return tuple(int(s) for s in shape) if shape is not None else ()


@lru_cache(maxsize=256)
def arch_shapes(name: str, num_classes: int, in_channels: int) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """(key, shape) pairs of architecture ``name``'s state_dict, built on the meta device."""
    with torch.device("meta"):
        net = ARCHS.get(name).build(num_classes, in_channels)
    return tuple((k, tuple(v.shape)) for k, v in net.state_dict().items()
                 if not k.endswith(_IGNORED_SUFFIX))


def _read_dims(entry: ArchEntry, shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, int]:
    nc, ch = 10, entry.default_channels
    head = shapes.get(entry.classifier_key)
    if head is not None and len(head) == 2 and 1 <= head[0] <= _MAX_CLASSES:
        nc = head[0]
    stem = shapes.get(entry.first_conv_key)
    if stem is not None and len(stem) == 4 and 1 <= stem[1] <= _MAX_CHANNELS:
        ch = stem[1]
    return nc, ch


def _fmt(shape: tuple[int, ...]) -> str:
    return "(" + ",".join(str(s) for s in shape) + ")"


def compare(name: str, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """Score one architecture against a key -> shape map (see the module docstring)."""
    entry = ARCHS.get(name)
    nc, ch = _read_dims(entry, shapes)
    expected = dict(arch_shapes(name, nc, ch))
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    mismatched = [k for k in expected if k in shapes and shapes[k] != expected[k]]
    union = len(expected) + len(unexpected)
    matched = len(expected) - len(missing) - len(mismatched)
    exact = not (missing or unexpected or mismatched)
    score = 1.0 if exact else (matched / union if union else 0.0)
    diffs = ([f"missing {k}" for k in missing]
             + [f"shape {k} {_fmt(shapes[k])} vs {_fmt(expected[k])}" for k in mismatched]
             + [f"unexpected {k}" for k in unexpected])
    if len(diffs) > MAX_DIFFERENCES:
        diffs = diffs[:MAX_DIFFERENCES] + [f"... and {len(diffs) - MAX_DIFFERENCES} more"]
    return {"name": name, "score": score, "num_classes": nc, "in_channels": ch, "differences": diffs}


def match_state_dict(sd: Mapping[str, Any], names: list[str] | None = None) -> MatchResult:
    """Match a state_dict against the registered architectures.

    Args:
        sd: parameter/buffer name -> tensor (any object with ``.shape``); untrusted.
        names: restrict to these registry names (default: all).

    Returns:
        A :class:`MatchResult`; ``best`` is None unless some architecture fits exactly.
    """
    clean, prefix = strip_wrapper_prefix(sd)
    shapes = {str(k): _shape(v) for k, v in clean.items() if not str(k).endswith(_IGNORED_SUFFIX)}
    candidates = [compare(n, shapes) for n in (names if names is not None else ARCHS.names())]
    candidates.sort(key=lambda c: (-c["score"], c["name"]))
    exact = [c["name"] for c in candidates if c["score"] == 1.0]
    top = candidates[0] if candidates else None
    return MatchResult(
        best=exact[0] if exact else None,
        num_classes=top["num_classes"] if top else None,
        in_channels=top["in_channels"] if top else None,
        candidates=candidates,
        ambiguous=exact[1:],
        stripped_prefix=prefix,
    )
