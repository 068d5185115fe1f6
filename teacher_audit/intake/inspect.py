"""``inspect``: describe an untrusted checkpoint (format, hashes, pickle globals, architecture, input spec).

Library half of ``teacher-audit inspect``: parsing of the spec flags, running the safe loader, a rich
table for humans and the JSON document for machines. Nothing here loads anything by itself; it all goes
through ``load.load_teacher`` (sniff -> static scan -> weights-only load).

JSON document (``inspect_document``)::

    {"schema_version": "1", "tool": "teacher-audit", "version": ..., "command": "inspect",
     "status": "ok" | "error" | "not_auditable" | "usage", "exit_code": int, "error": str | null,
     "intake": IntakeResult (report/model.py) | null}
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

from rich.table import Table
from rich.text import Text

from teacher_audit.errors import AuditError, UsageError
from teacher_audit.exitcodes import ExitCode
from teacher_audit.intake.load import LoadOptions, load_teacher
from teacher_audit.report.model import SCHEMA_VERSION, IntakeResult


def parse_input_size(text: str) -> tuple[int, int, int]:
    """``"3x32x32"`` -> (3, 32, 32); anything else -> UsageError."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise UsageError(f"--input-size must look like CxHxW (e.g. 3x32x32), got {text!r}") from None
    if len(dims) != 3 or not all(1 <= d <= 8192 for d in dims):
        raise UsageError(f"--input-size must be three positive integers CxHxW, got {text!r}")
    return dims  # type: ignore[return-value]


def parse_floats(text: str, flag: str) -> tuple[float, ...]:
    """``"0.5,0.5,0.5"`` (commas or spaces) -> a tuple of finite floats; else UsageError."""
    try:
        vals = tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise UsageError(f"{flag} must be comma-separated numbers, got {text!r}") from None
    if not vals or not all(math.isfinite(v) for v in vals):
        raise UsageError(f"{flag} must be comma-separated finite numbers, got {text!r}")
    return vals


def spec_flags(input_size: str | None = None, mean: str | None = None, std: str | None = None,
               num_classes: int | None = None) -> dict[str, Any]:
    """Command-line spec options -> the ``flags`` mapping of ``card.resolve_spec`` (InputSpec field names)."""
    flags: dict[str, Any] = {}
    if input_size:
        flags["channels"], flags["height"], flags["width"] = parse_input_size(input_size)
    if mean:
        flags["mean"] = list(parse_floats(mean, "--mean"))
    if std:
        flags["std"] = list(parse_floats(std, "--std"))
    if num_classes is not None:
        flags["num_classes"] = int(num_classes)
    return flags


def inspect_path(path: str | os.PathLike[str], options: LoadOptions) -> IntakeResult:
    """Load ``path`` through the safe loader and return what intake learned (raises like ``load_teacher``)."""
    _teacher, intake = load_teacher(path, options)
    return intake


def inspect_document(intake: IntakeResult | None, code: ExitCode, error: str | None) -> dict[str, Any]:
    """The ``--json`` document for one inspect run."""
    from teacher_audit import __version__

    return {
        "schema_version": SCHEMA_VERSION,
        "tool": "teacher-audit",
        "version": __version__,
        "command": "inspect",
        "status": {0: "ok", 2: "error", 3: "not_auditable", 4: "usage"}.get(int(code), "error"),
        "exit_code": int(code),
        "error": error,
        "intake": intake.model_dump(mode="json") if intake is not None else None,
    }


def to_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=False, allow_nan=False) + "\n"


def _fmt_list(items: Sequence[str], limit: int = 12) -> str:
    if not items:
        return "-"
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def render_table(intake: IntakeResult, error: AuditError | None = None) -> Table:
    """A two-column rich table of the intake result (all values rendered as plain text)."""
    t = Table(title=f"teacher-audit inspect: {os.path.basename(intake.path)}", show_header=False,
              title_justify="left")
    t.add_column("field", style="bold")
    t.add_column("value", overflow="fold")
    rows: list[tuple[str, str]] = [
        ("path", intake.path), ("size", f"{intake.size:,} bytes"), ("sha256", intake.sha256),
        ("format", intake.format),
    ]
    pk = intake.pickle
    if pk.scanned:
        rows += [("pickles scanned", _fmt_list(pk.members, 6)), ("globals allowed", _fmt_list(pk.allowed)),
                 ("globals refused", _fmt_list(pk.refused)), ("extra allowed (--allow-global)",
                                                              _fmt_list(pk.extra_allowed))]
    if intake.tensor_count is not None:
        rows.append(("tensors", str(intake.tensor_count)))
    if intake.parameter_count is not None:
        rows.append(("parameters", f"{intake.parameter_count:,}"))
    if intake.architecture:
        rows.append(("architecture", f"{intake.architecture} (from {intake.architecture_source})"))
    elif intake.architecture_candidates:
        rows.append(("closest architectures", "; ".join(
            f"{c['name']} {c['score']:.0%}" + (f" ({c['differences'][0]})" if c.get("differences") else "")
            for c in intake.architecture_candidates[:3])))
    if intake.input_spec:
        s = intake.input_spec
        src = s.get("sources", {})
        rows += [
            ("input", f"{s['channels']}x{s['height']}x{s['width']} in {s['value_range']} "
                      f"(shape from {src.get('height', '?')})"),
            ("mean / std", f"{s['mean']} / {s['std']} (from {src.get('mean', '?')})"),
            ("classes", f"{s['num_classes']} (from {src.get('num_classes', '?')})"
                        + (f": {_fmt_list(s['class_names'], 10)}" if s.get("class_names") else "")),
        ]
    if intake.has_batchnorm is not None:
        rows.append(("batchnorm", "yes" if intake.has_batchnorm else "no"))
    if intake.structure_fingerprint:
        rows.append(("structure fingerprint", f"{intake.structure_fingerprint} (what a calibration's scope matches)"))
    if intake.onnx_parity_max_abs_diff is not None:
        rows.append(("onnx parity (max abs diff)", f"{intake.onnx_parity_max_abs_diff:.3g}"))
    for note in intake.notes:
        rows.append(("note", note))
    if error is not None:
        rows.append(("result", f"{type(error).__name__}: {' '.join(str(error).split())}"))
    else:
        rows.append(("result", "loaded"))
    for k, v in rows:
        t.add_row(Text(k), Text(printable(v)))  # Text: names from the file are never rich markup
    return t


def printable(text: str) -> str:
    """Replace control characters (terminal escapes smuggled in global names, paths...) by ``?``."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)
