"""Fit the backdoor and NTL probes' thresholds from runs on clean teachers (pure functions, no teacher passes).

Used by ``teacher-audit calibrate`` (:mod:`teacher_audit.calibrate`) on a user's clean teachers and by
``benchmarks/suite_backdoor.py --calibrate`` for the built-in constants, so both follow one rule:

* **Backdoor (fused probe)**: every fused component's raw score as the fusion uses it (:func:`derived`:
  NTL trap classes neutralised, consensus and pull added) gets a clean mean and sd; the sd is at least a
  quarter of |mean| and a per-component floor (:data:`SD_FLOOR`; the clean sets are small). The threshold is
  the largest fused z of the clean runs under that standardisation plus ``margin`` (z units).
* **NTL probe**: the threshold is the largest clean pull/tail score x ``headroom`` (1.25), rounded up to
  0.01 and at least :data:`NTL_MIN_THRESHOLD`; the robust trap inversion's threshold (decades) is the
  largest clean gap x ``headroom``, rounded up to 0.05 and at least :data:`GAP_MIN_THRESHOLD`, fitted only
  when the clean runs ran the inversion (teachers without a BatchNorm prior), else left at its default.

Both are measured operating points on the clean set given, not guaranteed false-alarm rates;
:func:`teacher_audit.calibrate.leave_one_out` estimates how well they carry to a clean teacher not in the set.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from teacher_audit.probes.backdoor_fused import derived, fuse
from teacher_audit.probes.ntl_robustness import ntl_score
from teacher_audit.report.model import ProbeResult

#: components that enter the fused score. ``backdoor_shuffle`` still runs and is reported, but its agreement
#: score did not separate on the zoo (AUROC ~0.5; a BN-folded ONNX export of a clean teacher scored like a
#: backdoor), so it is left out of the fusion.
FUSED_COMPONENTS: tuple[str, ...] = ("backdoor_margin", "backdoor_inversion", "backdoor_robust_inversion",
                                     "consensus", "pull", "backdoor_sink")

#: smallest sd per component; default :data:`DEFAULT_SD_FLOOR`. The pull is a share (clean spread ~0.05), the
#: other scores are on a -log10 p / robust-z scale. The sink is a share too, but its floor is wide: clean
#: teachers of architectures outside the zoo have natural sinks up to an excess share of 0.56 (a ViT and a
#: GroupNorm CNN, docs/backdoor.md "Procedural sink"), well above the zoo's clean 0.18-0.41.
SD_FLOOR: dict[str, float] = {"pull": 0.02, "backdoor_sink": 0.1}
DEFAULT_SD_FLOOR = 0.1

NTL_HEADROOM = 1.25
NTL_MIN_THRESHOLD = 0.05
GAP_MIN_THRESHOLD = 0.1

#: one clean run of the fused backdoor probe: its component results and the NTL probe's details (or None)
BackdoorRun = tuple[dict[str, ProbeResult], "dict[str, Any] | None"]


def headroom_threshold(clean: list[float], step: float, headroom: float = NTL_HEADROOM) -> float:
    """Largest clean value x ``headroom``, rounded up to a multiple of ``step`` (NaN for no value)."""
    if not clean:
        return float("nan")
    return round(math.ceil(max(clean) * headroom / step - 1e-9) * step, 4)


def fit_components(runs: list[BackdoorRun]) -> dict[str, dict[str, float]]:
    """Clean mean and sd of every fused component's score as the fusion uses it."""
    comps: dict[str, dict[str, float]] = {}
    used = [derived(res, ntl) for res, ntl in runs]
    for n in FUSED_COMPONENTS:
        v = np.array([float(u[n].score) for u in used
                      if n in u and u[n].status == "ok" and u[n].score is not None], dtype=float)
        if len(v):
            sd = max(float(v.std(ddof=1)) if len(v) > 1 else 0.0, 0.25 * abs(float(v.mean())),
                     SD_FLOOR.get(n, DEFAULT_SD_FLOOR))
            comps[n] = {"mean": round(float(v.mean()), 4), "sd": round(sd, 4)}
    return comps


def fit_backdoor(runs: list[BackdoorRun], margin: float = 0.5) -> dict[str, Any]:
    """The fused probe's calibration (``components`` and ``threshold``) from clean runs.

    Raises:
        ValueError: no run produced a component score.
    """
    comps = fit_components(runs)
    if not comps:
        raise ValueError("no clean run produced a backdoor component score")
    calib: dict[str, Any] = {"components": comps, "threshold": 0.0, "margin": float(margin)}
    fused = [fuse(res, calib, ntl)[0] for res, ntl in runs]
    fused = [f for f in fused if math.isfinite(f)]
    calib["threshold"] = round(max(fused) + margin, 4) if fused else 3.0
    return calib


def ntl_parts(details: dict[str, Any]) -> tuple[float, float | None]:
    """(pull/tail score, robust trap inversion gap or None) of one NTL probe result's details."""
    base = ntl_score(details, use_pull=bool(details.get("synthesis_bn_prior", True)))
    gap = details.get("trap_inversion_gap")
    return base, None if gap is None else float(gap)


def ntl_rescore(details: dict[str, Any], threshold: float, inversion_threshold: float) -> float:
    """The NTL probe's score of a run under other thresholds (the inversion gap is put on the score's scale
    so that ``inversion_threshold`` lands on ``threshold``, as the probe does)."""
    base, gap = ntl_parts(details)
    if gap is None:
        return base
    return max(base, min(1.0, threshold * gap / inversion_threshold))


def fit_ntl(runs: list[dict[str, Any]], default_inversion_threshold: float,
            headroom: float = NTL_HEADROOM) -> dict[str, Any]:
    """The NTL probe's ``threshold`` and ``inversion_threshold`` from clean runs' details.

    Raises:
        ValueError: no run given.
    """
    if not runs:
        raise ValueError("no clean NTL probe run to calibrate on")
    parts = [ntl_parts(d) for d in runs]
    thr = max(headroom_threshold([b for b, _ in parts], 0.01, headroom), NTL_MIN_THRESHOLD)
    gaps = [g for _, g in parts if g is not None]
    inv = (max(headroom_threshold(gaps, 0.05, headroom), GAP_MIN_THRESHOLD) if gaps
           else float(default_inversion_threshold))
    return {"threshold": thr, "inversion_threshold": inv, "inversion_fitted": bool(gaps),
            "max_clean_score": round(max(b for b, _ in parts), 4),
            "max_clean_gap": round(max(gaps), 4) if gaps else None}
