"""Small formatting helpers shared by the writers (numbers, sizes, labels). No escaping here."""

from __future__ import annotations

from teacher_audit.report.model import ProbeResult, Report, ScanSet

VERDICT_LABEL = {"pass": "PASS", "fail": "FAIL", "error": "ERROR", "not_auditable": "NOT AUDITABLE"}


def reports_of(doc: Report | ScanSet) -> list[Report]:
    return list(doc.reports) if isinstance(doc, ScanSet) else [doc]


def fmt_num(x: float | int | None, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}g}"


def fmt_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def probe_state(r: ProbeResult) -> str:
    """``FLAGGED`` / ``clean`` / ``skipped`` / ``error`` for one probe result."""
    if r.status != "ok":
        return r.status
    return "FLAGGED" if r.flagged else "clean"


def spec_line(rep: Report) -> str:
    s = rep.input_spec
    if s is None:
        return "-"
    lo, hi = s.value_range
    return f"{s.channels}x{s.height}x{s.width}, range [{lo:g}, {hi:g}], {s.num_classes} classes"


def target_label(rep: Report, r: ProbeResult) -> str:
    """``"3 (Dress)"`` when the spec names the classes, ``"3"`` otherwise, ``"-"`` when no target.

    Not escaped: the class name comes from the (untrusted) card; writers escape the result.
    """
    if r.target_class is None:
        return "-"
    names = rep.input_spec.class_names if rep.input_spec is not None else None
    if names and 0 <= r.target_class < len(names):
        return f"{r.target_class} ({names[r.target_class]})"
    return str(r.target_class)


def thresholds_line(rep: Report) -> str:
    """Where the probes' thresholds came from: the built-in calibration or a user calibration file.

    Not escaped: the file name is the user's; writers escape the result.
    """
    cal = (rep.options or {}).get("calibration")
    if not cal:
        return "built-in calibration (clean smallcnn and LeNet-5 zoo teachers; docs/backdoor.md, docs/ntl.md)"
    archs = ", ".join(map(str, cal.get("archs") or [])) or "?"
    return (f"calibration file {cal.get('source')} (sha256 {str(cal.get('sha256') or '')[:12]}), "
            f"{cal.get('n_clean')} clean teacher(s) of {archs}")
