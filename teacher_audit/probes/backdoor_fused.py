"""Fused backdoor probe: the one ``scan`` runs by default for the backdoor threat.

Runs the component probes on one shared budget — max-margin (MM-BD, Wang et al. S&P 2024), trigger
inversion on synthetic samples (Neural Cleanse style) and shuffle agreement (ABD suspect model,
Hong et al. ICML 2023) — and fuses their scores.

Fusion (documented in docs/backdoor.md): every component score s_i — plus the per-class
``consensus`` of margin and inversion (:func:`consensus`) — is standardised against the
clean calibration teachers, z_i = (s_i - mu_i) / sd_i (mu, sd = mean and standard deviation of s_i
over the clean zoo teachers, sd floored), and the fused score is max_i z_i. The suspected target
class is the target of the component with the largest z (ties: majority vote). The default
threshold is the largest fused score of any clean calibration teacher plus a margin
(``CALIBRATION["margin"]``). The calibration set is small (the zoo's clean and NTL teachers), so the
threshold is a measured operating point, not a guaranteed false-positive rate; re-calibrate with
``python benchmarks/run.py --suite backdoor`` (``benchmarks/suite_backdoor.py --calibrate``) on a
larger set of clean teachers of your own.

Threat assumption: all-to-one backdoor; any architecture; no data; no BN prior.

Options (``FusedConfig``): one config per component (``margin``, ``inversion``, ``shuffle``), the
shared synthetic sample count ``samples`` and generator steps ``synth_steps``, ``components`` to
run, ``threshold`` (None = calibrated default), ``calibration`` (None = built-in constants),
``budget_seconds`` (overall cap set by ``scan``; shared out over the remaining components, each
also keeps its own ``limit_seconds``), ``seed`` (propagated to every component).

Output: ``score`` = fused z, ``threshold``, ``flagged``, ``severity`` (HIGH when flagged, CRITICAL at
twice the threshold, LOW when only one component exceeds its own threshold), ``target_class``,
details with every component's score, z, target and summary, and the components' evidence.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from teacher_audit.probes.backdoor_common import Clock, synthetic_samples
from teacher_audit.probes.backdoor_inversion import InversionConfig, InversionProbe
from teacher_audit.probes.backdoor_margin import MarginConfig, MarginProbe
from teacher_audit.probes.backdoor_shuffle import ShuffleConfig, ShuffleProbe
from teacher_audit.probes.base import PROBES, Probe
from teacher_audit.report.model import Budget, ProbeResult
from teacher_audit.severity import Severity
from teacher_audit.teacher import Teacher

# Per-component (mean, sd) of the raw score over clean calibration teachers, and the fused
# threshold. Written by benchmarks/suite_backdoor.py --calibrate (see docs/backdoor.md); the values
# below are its latest output.
CALIBRATION: dict[str, Any] = {
    "components": {
        "backdoor_margin": {
            "mean": 1.9272,
            "sd": 0.6578
        },
        "backdoor_inversion": {
            "mean": 1.5297,
            "sd": 0.681
        },
        "consensus": {
            "mean": 4.5183,
            "sd": 2.1678
        }
    },
    "threshold": 2.5416,
    "margin": 0.5,
    "n_clean": 7,
    "source": "benchmarks/suite_backdoor.py --calibrate on 7 clean zoo teachers, 2026-11-22"
}

_COMPONENTS = {"backdoor_margin": MarginProbe, "backdoor_inversion": InversionProbe,
               "backdoor_shuffle": ShuffleProbe}


@dataclass
class FusedConfig:
    """Budget and options of the fused backdoor probe (see module docstring)."""

    margin: MarginConfig = field(default_factory=MarginConfig)
    inversion: InversionConfig = field(default_factory=InversionConfig)
    shuffle: ShuffleConfig = field(default_factory=ShuffleConfig)
    components: tuple[str, ...] = ("backdoor_margin", "backdoor_inversion", "backdoor_shuffle")
    samples: int = 96
    synth_steps: int | None = None
    threshold: float | None = None
    calibration: dict[str, Any] | None = None
    budget_seconds: float | None = None
    seed: int = 0


def _class_z(values: np.ndarray, min_mad: float) -> np.ndarray:
    med = float(np.median(values))
    mad = max(float(np.median(np.abs(values - med))) * 1.4826, min_mad)
    return (values - med) / mad


def consensus(results: dict[str, ProbeResult]) -> ProbeResult | None:
    """Per-class agreement of the margin and inversion components.

    For every class c: robust z of its max margin among the classes plus robust z of
    -log10(its inverted mask size); the score is the largest sum, the target its class. A backdoor
    target is anomalous in both; a class that is merely easy (large natural margin) usually needs a
    large mask, and a fragile class (small mask) usually has an ordinary margin, so they cancel.
    """
    m, i = results.get("backdoor_margin"), results.get("backdoor_inversion")
    if m is None or i is None or m.status != "ok" or i.status != "ok":
        return None
    try:
        margins = np.asarray(m.details["margins"], dtype=float)
        norms = np.clip(np.asarray(i.details["mask_norms"], dtype=float), 1e-4, 1.0)
    except (KeyError, TypeError, ValueError):
        return None
    total = _class_z(margins, 0.05 * abs(float(np.median(margins))) + 1e-3) + _class_z(-np.log10(norms), 0.1)
    tgt = int(np.argmax(total))
    return ProbeResult(probe="consensus", threat="backdoor", score=float(total[tgt]), target_class=tgt,
                       summary=f"class {tgt} is anomalous in both margin and trigger size (sum of z {total[tgt]:.1f})")


def standardise(results: dict[str, ProbeResult], calib: dict[str, Any]) -> dict[str, float]:
    """z-score of each component's raw score (and of the consensus) against the clean calibration statistics."""
    out = {}
    cons = consensus(results)
    items = list(results.items()) + ([("consensus", cons)] if cons is not None else [])
    for name, r in items:
        if name not in calib["components"] or r.status != "ok" or r.score is None:
            continue
        c = calib["components"].get(name, {"mean": 0.0, "sd": 1.0})
        out[name] = (float(r.score) - float(c["mean"])) / max(float(c["sd"]), 1e-3)
    return out


def fuse(results: dict[str, ProbeResult], calib: dict[str, Any]) -> tuple[float, int | None, dict[str, float]]:
    """Fused score (max z), suspected target class and the per-component z."""
    z = standardise(results, calib)
    if not z:
        return float("nan"), None, z
    cons = consensus(results)
    everyone = dict(results, **({"consensus": cons} if cons is not None else {}))
    best = max(z, key=z.get)
    votes = Counter(everyone[n].target_class for n in z if everyone[n].target_class is not None)
    tgt = everyone[best].target_class
    top, count = votes.most_common(1)[0] if votes else (None, 0)
    if count >= 2 and z[best] < 2 * max(z[n] for n in z if everyone[n].target_class == top):
        tgt = top
    return float(z[best]), tgt, z


@PROBES.register("backdoor", threat="backdoor", default=True)
class FusedBackdoorProbe(Probe):
    """Fused data-free backdoor detector (see module docstring)."""

    name = "backdoor"
    threat = "backdoor"
    Config = FusedConfig

    def run(self, teacher: Teacher, engine: Any = None) -> ProbeResult:
        cfg: FusedConfig = self.config
        calib = cfg.calibration or CALIBRATION
        thr = cfg.threshold if cfg.threshold is not None else float(calib["threshold"])
        clock = Clock(None)
        need_samples = any(c in cfg.components for c in ("backdoor_inversion", "backdoor_shuffle"))
        x, source = (synthetic_samples(teacher, engine, cfg.samples, cfg.synth_steps, cfg.seed, clock)
                     if need_samples else (None, "none"))
        results: dict[str, ProbeResult] = {}
        for i, name in enumerate(cfg.components):
            probe_cls = _COMPONENTS[name]
            sub = copy.copy({"backdoor_margin": cfg.margin, "backdoor_inversion": cfg.inversion,
                             "backdoor_shuffle": cfg.shuffle}[name])
            sub.seed = cfg.seed
            if cfg.budget_seconds is not None:
                share = max(0.5, (cfg.budget_seconds - clock.seconds) / (len(cfg.components) - i))
                sub.limit_seconds = share if sub.limit_seconds is None else min(sub.limit_seconds, share)
            probe = probe_cls(sub)
            try:
                results[name] = probe.run(teacher, engine) if name == "backdoor_margin" else \
                    probe.run(teacher, engine, samples=x)
            except (RuntimeError, ValueError) as e:  # one failing component must not hide the others
                results[name] = ProbeResult(probe=name, threat="backdoor", status="error", summary=str(e)[:200])
        score, tgt, z = fuse(results, calib)
        ok = [r for r in results.values() if r.status == "ok"]
        passes = clock.passes + sum(r.budget.teacher_passes for r in ok)
        budget = Budget(teacher_passes=passes, seconds=clock.seconds)
        if not z:
            return ProbeResult(probe=self.name, threat="backdoor", status="error", budget=budget, seed=cfg.seed,
                               summary="no backdoor component produced a score",
                               details={n: r.summary for n, r in results.items()})
        flagged = score > thr
        own = [n for n, r in results.items() if r.flagged]
        if flagged:
            sev = Severity.CRITICAL if score > 2 * thr and len(own) >= 2 else Severity.HIGH
        else:
            sev = Severity.LOW if own else Severity.INFO
        lead = max(z, key=z.get)
        cons = consensus(results)
        lead_summary = cons.summary if lead == "consensus" and cons is not None else results[lead].summary
        summary = (f"backdoor suspected, target class {tgt} (fused z {score:.1f} > {thr:.1f}; strongest signal: "
                   f"{lead_summary})" if flagged else
                   f"no backdoor signal above threshold (fused z {score:.1f} <= {thr:.1f})")
        return ProbeResult(
            probe=self.name, threat="backdoor", score=score, threshold=thr, flagged=flagged, severity=sev,
            target_class=tgt if flagged else None, summary=summary,
            details={"components": {n: {"status": r.status, "score": r.score, "z": z.get(n),
                                        "target_class": r.target_class, "flagged": r.flagged,
                                        "summary": r.summary, "details": r.details,
                                        "seconds": r.budget.seconds} for n, r in results.items()},
                     "consensus": None if cons is None else {"score": cons.score, "target_class": cons.target_class},
                     "z": z, "suspected_target_any": tgt, "sample_source": source,
                     "calibration": {"source": calib.get("source"), "n_clean": calib.get("n_clean")}},
            evidence=[e for r in ok for e in r.evidence],
            budget=budget, seed=cfg.seed,
        )
