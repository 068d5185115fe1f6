"""Class reference: each class of a suspect teacher against the same class of clean teachers of its kind.

Data-free trigger inversion and max-margin statistics are confounded by classes that are *naturally*
easy to reach: on the Fashion-MNIST ViT and GroupNorm-CNN teachers, every clean teacher's inversion and
consensus point at class 8 (Bag), with magnitudes that overlap a real backdoor's (docs/benchmarks.md,
"User calibration on unseen architectures"). Standardising the magnitude alone, as the built-in
calibration does, cannot tell that a clean teacher's class 8 is normal and a backdoored one's class 3 is
not. With clean teachers of the same architecture and task at hand (``teacher-audit calibrate``), each
class can be compared with ITSELF:

* per-class features of the fused probe's components: log10 of the max-margin (``backdoor_margin``),
  -log10 of the inverted mask size (``backdoor_inversion``) and of the robust inverted mask size
  (``backdoor_robust_inversion``), log10 of the share of dead-leaves pictures the class absorbs
  (``backdoor_sink``; calibration files written before it have no such feature and are used without it);
* per feature, the clean mean of each class and ONE sd pooled over classes and runs (a per-class sd from
  a handful of runs is too noisy), at least :data:`SD_FLOOR`;
* class score = sum over the features of the class's z; the component's score is the largest class
  score (NTL trap classes excluded), its target that class. A backdoor target is anomalous for its own
  class in several features at once.

The threshold of a calibration using it is set from leave-one-teacher-out scores (:func:`fit`): the
in-sample scores of the clean runs are biased low (each run helped fit its own reference), and on the
unseen-architecture teachers a held-out clean teacher scored up to 2x the in-sample maximum.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from teacher_audit.report.model import ProbeResult

NAME = "class_reference"
#: per-class feature -> (component, details key, sign, floor of the raw value). The sink's floor is a 3 % share:
#: below ~30 of the 1,024 pictures the log share of a class is counting noise, and a backdoor raises a share;
#: measured on 3 clean LeNet-5 teachers x 2 seeds, it lowers the leave-one-teacher-out clean maximum from
#: 5.5 (floor 0.1 %) to 3.3 (docs/backdoor.md, "Added in session 12").
FEATURES: dict[str, tuple[str, str, float, float]] = {
    "margin": ("backdoor_margin", "margins", 1.0, 1e-3),
    "inversion": ("backdoor_inversion", "mask_norms", -1.0, 1e-4),
    "robust_inversion": ("backdoor_robust_inversion", "mask_norms", -1.0, 1e-4),
    "sink": ("backdoor_sink", "shares", 1.0, 3e-2),
}
#: smallest pooled sd (decades)
SD_FLOOR = 0.2


def features(results: dict[str, ProbeResult]) -> dict[str, np.ndarray]:
    """Per-class feature vectors of one run (features whose component did not run are left out)."""
    out = {}
    for name, (comp, key, sign, floor) in FEATURES.items():
        r = results.get(comp)
        if r is None or r.status != "ok" or not isinstance(r.details, dict) or key not in r.details:
            continue
        v = np.asarray(r.details[key], dtype=float)
        if v.ndim != 1 or v.size < 2 or not np.all(np.isfinite(v)):
            continue
        v = np.clip(v, floor, None if sign > 0 else 1.0)
        out[name] = sign * np.log10(v)
    return out


def fit_reference(runs: list[dict[str, ProbeResult]]) -> dict[str, Any]:
    """Per feature: clean per-class means and the pooled sd (see module docstring).

    Raises:
        ValueError: no run has any feature, or runs disagree on the number of classes.
    """
    feats = [features(r) for r in runs]
    ref: dict[str, Any] = {}
    for name in FEATURES:
        rows = [f[name] for f in feats if name in f]
        if not rows:
            continue
        if len({len(r) for r in rows}) != 1:
            raise ValueError(f"clean runs disagree on the number of classes ({name})")
        x = np.stack(rows)
        mu = x.mean(0)
        dof = x.size - x.shape[1]
        sd = float(np.sqrt(((x - mu) ** 2).sum() / dof)) if dof > 0 else 0.0
        ref[name] = {"mean": [round(float(m), 5) for m in mu], "sd": round(max(sd, SD_FLOOR), 5), "n": len(rows)}
    if not ref:
        raise ValueError("no clean run has a per-class backdoor feature")
    return ref


def class_scores(results: dict[str, ProbeResult], ref: dict[str, Any]) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    """(sum of z per class, z per feature) of one run against ``ref``; None when no feature matches."""
    feats = features(results)
    zs = {}
    for name, r in ref.items():
        f = feats.get(name)
        if f is None or len(f) != len(r["mean"]):
            continue
        zs[name] = (f - np.asarray(r["mean"], dtype=float)) / max(float(r["sd"]), 1e-6)
    if not zs:
        return None
    return sum(zs.values()), zs  # type: ignore[return-value]


def result(results: dict[str, ProbeResult], ref: dict[str, Any], traps: set[int] | None = None) -> ProbeResult | None:
    """The class-reference component of one run (largest class score outside the trap classes)."""
    got = class_scores(results, ref)
    if got is None:
        return None
    total, zs = got
    masked = total.copy()
    for c in traps or ():
        if 0 <= c < masked.size:
            masked[c] = -np.inf
    if not np.isfinite(masked).any():
        return None
    c = int(np.argmax(masked))
    parts = ", ".join(f"{n} {float(z[c]):+.1f}" for n, z in zs.items())
    return ProbeResult(probe=NAME, threat="backdoor", score=float(masked[c]), target_class=c,
                       summary=f"class {c} is anomalous against the same class of the clean reference teachers "
                               f"(sum of z {float(masked[c]):.1f}: {parts})",
                       details={"class_scores": [round(float(v), 3) for v in total],
                                "z": {n: [round(float(v), 3) for v in z] for n, z in zs.items()}})


def fit(teachers: list[list[dict[str, ProbeResult]]], margin: float) -> dict[str, Any]:
    """Reference over every run and a threshold from leave-one-teacher-out scores.

    ``teachers``: per clean teacher, its runs' component results. With two or more teachers the threshold
    is the largest score of a teacher's runs against a reference fitted WITHOUT that teacher, plus
    ``margin``; with one teacher, the largest in-sample score plus 2 x ``margin``.
    """
    every = [r for runs in teachers for r in runs]
    ref = fit_reference(every)
    if len(teachers) >= 2:
        held = []
        for i, own in enumerate(teachers):
            other = fit_reference([r for j, runs in enumerate(teachers) if j != i for r in runs])
            held += [s.score for s in (result(r, other) for r in own) if s is not None]
        basis, extra = "leave-one-teacher-out", margin
    else:
        held = [s.score for s in (result(r, ref) for r in every) if s is not None]
        basis, extra = "in-sample (one teacher)", 2 * margin
    threshold = round(max(held) + extra, 4) if held else 3.0
    return {"reference": ref, "threshold": threshold, "threshold_basis": basis,
            "max_clean": round(max(held), 4) if held else None}
