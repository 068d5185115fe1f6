"""What the probes' built-in thresholds were calibrated on, and the note a finding carries outside that set.

The default thresholds of the backdoor and NTL probes come from clean zoo teachers only: smallcnn (with
BatchNorm) and LeNet-5 (without), on Fashion-MNIST (docs/backdoor.md, docs/ntl.md). On an architecture the
calibration never saw -- any ONNX graph, any other registered network -- the clean statistics can differ;
measured false alarms on clean vision-transformer (and, in one run, GroupNorm-CNN) ONNX teachers are in
docs/benchmarks.md ("## Unseen architectures (ONNX)"). Findings then say so instead of implying the
zoo's false-alarm rate.
"""

from __future__ import annotations

from typing import Any

#: registered architecture names the built-in calibration used
CALIBRATED_ARCHS: tuple[str, ...] = ("smallcnn", "lenet5")


def scope(arch: str | None) -> dict[str, Any]:
    """``{"archs", "teacher_arch", "in_scope"}`` for a teacher's architecture name."""
    return {"archs": list(CALIBRATED_ARCHS), "teacher_arch": arch, "in_scope": arch in CALIBRATED_ARCHS}


def scope_note(arch: str | None) -> str | None:
    """The out-of-calibration note for a finding, or None when ``arch`` was calibrated."""
    if arch in CALIBRATED_ARCHS:
        return None
    return (f"the default threshold was calibrated on clean {' and '.join(CALIBRATED_ARCHS)} Fashion-MNIST teachers "
            f"only; architecture '{arch}' is outside that set, so false alarms and misses are more likely "
            "(docs/benchmarks.md, 'Unseen architectures'): calibrate on clean teachers of this architecture")
