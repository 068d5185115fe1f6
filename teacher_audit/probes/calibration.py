"""What the probes' thresholds were calibrated on, and the note a finding carries outside that set.

The built-in thresholds of the backdoor and NTL probes come from clean zoo teachers only: smallcnn (with
BatchNorm) and LeNet-5 (without), on Fashion-MNIST (docs/backdoor.md, docs/ntl.md). On an architecture the
calibration never saw -- any ONNX graph, any other registered network -- the clean statistics can differ;
measured false alarms on clean vision-transformer (and, in one run, GroupNorm-CNN) ONNX teachers are in
docs/benchmarks.md ("## Unseen architectures (ONNX)"). Findings then say so instead of implying the
zoo's false-alarm rate.

A user calibration (``teacher-audit calibrate``, :mod:`teacher_audit.calibrate`) replaces the built-in
one; its scope is the *structure* of the clean teachers it was made on (:func:`fingerprint`: the names and
shapes of every parameter and buffer), so that retrained copies of the same network are in scope, and a
different network -- or the same one exported with BatchNorm folded away -- is not.
"""

from __future__ import annotations

from typing import Any

from teacher_audit.intake.fingerprint import fingerprint

__all__ = ["CALIBRATED_ARCHS", "fingerprint", "scope", "scope_note"]

#: registered architecture names the built-in calibration used
CALIBRATED_ARCHS: tuple[str, ...] = ("smallcnn", "lenet5")


def scope(arch: str | None, teacher_fingerprint: str | None = None,
          user: dict[str, Any] | None = None) -> dict[str, Any]:
    """Whether a teacher is inside the calibration its thresholds come from.

    ``user``: the ``scope`` of a user calibration (``{"source", "archs", "fingerprints", "n_clean"}``);
    None = the built-in calibration (in scope when ``arch`` is one of :data:`CALIBRATED_ARCHS`).
    """
    if user:
        fps = list(user.get("fingerprints") or [])
        return {"source": user.get("source") or "user calibration", "archs": list(user.get("archs") or []),
                "fingerprints": fps, "teacher_arch": arch, "teacher_fingerprint": teacher_fingerprint,
                "in_scope": teacher_fingerprint is not None and teacher_fingerprint in fps}
    return {"source": "built-in", "archs": list(CALIBRATED_ARCHS), "teacher_arch": arch,
            "teacher_fingerprint": teacher_fingerprint, "in_scope": arch in CALIBRATED_ARCHS}


def scope_note(sc: dict[str, Any] | str | None) -> str | None:
    """The out-of-calibration note for a finding, or None when the teacher is in scope.

    ``sc``: a :func:`scope` dict (or, for the built-in calibration, just the architecture name).
    """
    if not isinstance(sc, dict):
        sc = scope(sc)
    if sc.get("in_scope"):
        return None
    arch = sc.get("teacher_arch")
    if sc.get("source") != "built-in":
        return (f"the thresholds come from a calibration ({sc.get('source')}) made on clean teachers of another "
                f"structure ({', '.join(map(str, sc.get('archs') or [])) or 'unknown'}); this '{arch}' teacher's "
                "parameters differ, so false alarms and misses are more likely: calibrate on clean teachers of "
                "this architecture")
    return (f"the default threshold was calibrated on clean {' and '.join(CALIBRATED_ARCHS)} Fashion-MNIST teachers "
            f"only; architecture '{arch}' is outside that set, so false alarms and misses are more likely "
            "(docs/benchmarks.md, 'Unseen architectures'): calibrate on clean teachers of this architecture "
            "(teacher-audit calibrate)")
