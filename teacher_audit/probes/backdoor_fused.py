"""Fused backdoor probe: the one ``scan`` runs by default for the backdoor threat.

Runs the component probes on one shared budget — max-margin (MM-BD, Wang et al. S&P 2024), trigger
inversion on synthetic samples (Neural Cleanse style), the same inversion with stamped samples that must
survive PGD (robust inversion: global triggers such as Blend and SIG), shuffle agreement (ABD suspect
model, Hong et al. ICML 2023) and the procedural sink (the class that absorbs dead-leaves pictures; no
BN prior, forward passes only) — and fuses their scores.

Fusion (documented in docs/backdoor.md): every component score s_i — the run components, the
per-class ``consensus`` of margin and inversion (:func:`consensus`) and, when ``scan`` also ran the
NTL probe, the synthesis ``pull`` read from its features (:func:`pull_result`, via :meth:`combine`) —
is standardised against the clean calibration runs, z_i = (s_i - mu_i) / sd_i, and the fused score is
max_i z_i. A component whose target is an NTL *trap class* (:func:`trap_classes`: the NTL probe found a
robust mode collapsing into it) is explained by the trap and contributes z = 0. The suspected target
is a z-weighted vote of the components plus the NTL probe's robust-tail class (:func:`tail_class`).
The default threshold is the largest fused score of the clean calibration runs plus a margin
(``CALIBRATION["margin"]``). The calibration set is small (the zoo's clean teachers x 2 seeds), so the
threshold is a measured operating point, not a guaranteed false-positive rate; re-calibrate with
``benchmarks/suite_backdoor.py --calibrate`` on a larger set of clean teachers of your own.

Threat assumption: all-to-one backdoor; any architecture; no data; no BN prior.

Options (``FusedConfig``): one config per component (``margin``, ``inversion``, ``robust`` -- the robust
inversion, ``shuffle``, ``sink``), the
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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from teacher_audit.probes import backdoor_reference as class_reference
from teacher_audit.probes.backdoor_common import Clock, excess_share, has_bn_prior, synthetic_samples
from teacher_audit.probes.backdoor_inversion import (InversionConfig, InversionProbe, RobustInversionConfig,
                                                     RobustInversionProbe)
from teacher_audit.probes.backdoor_margin import MarginConfig, MarginProbe
from teacher_audit.probes.backdoor_shuffle import ShuffleConfig, ShuffleProbe
from teacher_audit.probes.backdoor_sink import SinkConfig, SinkProbe
from teacher_audit.probes.base import PROBES, Probe
from teacher_audit.probes.calibration import fingerprint, scope, scope_note
from teacher_audit.report.model import Budget, ProbeResult
from teacher_audit.severity import Severity
from teacher_audit.teacher import Teacher

# Per-component (mean, sd) of the raw score over clean calibration teachers, and the fused
# threshold. Written by benchmarks/suite_backdoor.py --calibrate (see docs/backdoor.md); the values
# below are its latest output.
CALIBRATION: dict[str, Any] = {
    "components": {
        "backdoor_margin": {
            "mean": 1.6325,
            "sd": 0.5107
        },
        "backdoor_inversion": {
            "mean": 1.6415,
            "sd": 0.742
        },
        "backdoor_robust_inversion": {
            "mean": 0.1117,
            "sd": 0.1
        },
        "consensus": {
            "mean": 4.1086,
            "sd": 1.7099
        },
        "pull": {
            "mean": 0.1073,
            "sd": 0.0345
        },
        "backdoor_sink": {
            "mean": 0.312,
            "sd": 0.1023
        }
    },
    "threshold": 3.3279,
    "margin": 0.5,
    "n_clean": 6,
    "n_clean_runs": 12,
    "source": "benchmarks/suite_backdoor.py --calibrate on 6 clean zoo teachers x 2 probe seeds, 2026-12-07"
}

#: component name -> (probe class, its ``FusedConfig`` field, whether it runs on the shared synthetic samples)
_COMPONENTS: dict[str, tuple[type[Probe], str, bool]] = {
    "backdoor_margin": (MarginProbe, "margin", False),
    "backdoor_inversion": (InversionProbe, "inversion", True),
    "backdoor_robust_inversion": (RobustInversionProbe, "robust", True),
    "backdoor_shuffle": (ShuffleProbe, "shuffle", True),
    "backdoor_sink": (SinkProbe, "sink", False),
}


@dataclass
class FusedConfig:
    """Budget and options of the fused backdoor probe (see module docstring)."""

    margin: MarginConfig = field(default_factory=MarginConfig)
    inversion: InversionConfig = field(default_factory=InversionConfig)
    robust: RobustInversionConfig = field(default_factory=RobustInversionConfig)
    shuffle: ShuffleConfig = field(default_factory=ShuffleConfig)
    sink: SinkConfig = field(default_factory=SinkConfig)
    components: tuple[str, ...] = ("backdoor_sink", "backdoor_margin", "backdoor_inversion",
                                   "backdoor_robust_inversion", "backdoor_shuffle")
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


# --- evidence from the NTL probe (scan runs it anyway; no extra teacher passes) -------------------------

NTL_PROBE = "ntl_robustness"


#: Smallest gap (decades of flip radius) between the two modes of the NTL probe's robustness mixture
#: that counts as a robust trap without the probe's absolute floor: largest gap over the 12 clean
#: calibration runs (0.65, LeNet-5 s1 seed 1) + 0.2 decades. Measured on v2 (2 seeds): robust NTL traps
#: 0.93-1.19, backdoored teachers 0.45-0.73, ntl_grating s0 (no robust trap) 0.61-0.63.
TRAP_GAP_DECADES = 0.85


def trap_classes(ntl: dict[str, Any] | None, min_collapse: float = 0.5) -> set[int]:
    """Classes the NTL probe attributes to a robust OOD trap, from its result details.

    A class is a trap class when the NTL probe flagged the teacher AND found a robust mode — bimodal
    flip-radius profile above its absolute floor, or a two-mode mixture whose robust mode is at least
    ``TRAP_GAP_DECADES`` more robust than the fragile one — AND that robust set collapses into this
    class (share >= ``min_collapse``). ATEsc: an NTL teacher is markedly more robust on its trap
    domain; the synthetic samples a backdoor trigger pulls are about as fragile as the rest (14
    backdoored zoo teachers x 2 seeds: no robust mode, gap <= 0.73). Backdoor evidence pointing at a
    trap class is explained by the trap and reported by the NTL probe instead (docs/backdoor.md).
    """
    if not ntl or not ntl.get("flagged"):
        return set()
    if not ntl.get("bimodal") and float(ntl.get("mixture_gap_decades") or 0.0) < TRAP_GAP_DECADES:
        return set()
    c = ntl.get("collapse_class")
    if c is None or float(ntl.get("collapse_share") or 0.0) < min_collapse:
        return set()
    return {int(c)}


def pull_result(ntl: dict[str, Any] | None, traps: set[int]) -> ProbeResult | None:
    """Synthesis pull as a backdoor component: excess share of synthetic samples in one class.

    ``(share - 1/K) / (1 - 1/K)`` of the class the NTL probe's synthesis collapses to (median over
    synthesis batches); when that class is a trap class, the largest non-trap class share (pooled).
    """
    if not ntl or "class_counts" not in ntl or not ntl.get("use_pull", True):
        return None
    counts = np.asarray(ntl["class_counts"], dtype=float)
    k = counts.size
    if k < 2 or counts.sum() <= 0:
        return None
    c = int(ntl.get("pull_class", int(counts.argmax())))
    share = float(ntl.get("pull_share", counts[c] / counts.sum()))
    if c in traps:
        kept = counts.copy()
        kept[list(traps)] = -1.0
        c = int(kept.argmax())
        share = float(counts[c] / counts.sum())
    score = excess_share(share, k)
    return ProbeResult(probe="pull", threat="backdoor", score=float(score), target_class=c,
                       summary=f"synthesis pulls {100 * share:.0f}% of the NTL probe's synthetic samples into class {c}",
                       details={"share": share, "trap_classes": sorted(traps)})


def explained(r: ProbeResult, traps: set[int]) -> ProbeResult:
    """``r`` marked as explained by the NTL trap when its target class is a trap class."""
    if r.target_class is None or int(r.target_class) not in traps:
        return r
    return r.model_copy(update={"details": dict(r.details or {}, explained_by_trap=True)})


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


def derived(results: dict[str, ProbeResult], ntl: dict[str, Any] | None = None,
            calib: dict[str, Any] | None = None) -> dict[str, ProbeResult]:
    """Every scored component: the run components, ``consensus`` and ``pull``, and with a user calibration
    that has a clean class reference, ``class_reference`` (:mod:`teacher_audit.probes.backdoor_reference`,
    trap classes left out); a component whose target is an NTL trap class is marked ``explained_by_trap``
    (it then adds no backdoor evidence)."""
    traps = trap_classes(ntl)
    everyone = dict(results)
    cons = consensus(everyone)
    if cons is not None:
        everyone["consensus"] = cons
    if calib and calib.get("class_reference"):
        ref = class_reference.result(results, calib["class_reference"], traps)
        if ref is not None:
            everyone[class_reference.NAME] = ref
    everyone = {n: explained(r, traps) for n, r in everyone.items()}
    pull = pull_result(ntl, traps)
    if pull is not None:
        everyone["pull"] = pull
    return everyone


def standardise(results: dict[str, ProbeResult], calib: dict[str, Any],
                ntl: dict[str, Any] | None = None) -> dict[str, float]:
    """z-score of each calibrated component's raw score against the clean calibration statistics."""
    return _z(derived(results, ntl, calib), calib)


def _z(everyone: dict[str, ProbeResult], calib: dict[str, Any]) -> dict[str, float]:
    """:func:`standardise` on components already :func:`derived`."""
    out = {}
    for name, r in everyone.items():
        if name not in calib["components"] or r.status != "ok" or r.score is None:
            continue
        c = calib["components"][name]
        explained_ = bool((r.details or {}).get("explained_by_trap"))
        out[name] = 0.0 if explained_ else (float(r.score) - float(c["mean"])) / max(float(c["sd"]), 1e-3)
    return out


def tail_class(ntl: dict[str, Any] | None, min_collapse: float = 0.5) -> int | None:
    """The class the NTL probe's relatively most robust synthetic samples collapse into, when that is not a
    robust trap (no bimodal mode) and at least ``min_collapse`` of the tail is in it; else None.

    Trigger-carrying synthetic samples are a little more robust than the rest (the trigger dominates
    the decision), so this tail collapses into the backdoor target (measured: 12 of 14 backdoored zoo
    teachers; wrong on both clean-label ones).
    """
    if not ntl or ntl.get("bimodal") or ntl.get("collapse_class") is None or not ntl.get("use_pull", True):
        return None
    if float(ntl.get("collapse_share") or 0.0) < min_collapse:
        return None
    return int(ntl["collapse_class"])


def fuse(results: dict[str, ProbeResult], calib: dict[str, Any],
         ntl: dict[str, Any] | None = None) -> tuple[float, int | None, dict[str, float]]:
    """Fused score (max z), suspected target class and the per-component z.

    ``ntl``: the NTL probe's result details plus ``flagged`` (None when it did not run): adds the
    ``pull`` component, marks components pointing at a trap class as explained (:func:`trap_classes`)
    and adds the robust-tail class vote (:func:`tail_class`).

    Target: every component not explained by a trap votes for its class with weight max(z, 0); the
    robust-tail class votes with weight 2 x the calibrated threshold (a component has to be more than
    twice as far over the threshold to overrule it). Ties/no votes: the class of the largest z.
    """
    everyone = derived(results, ntl, calib)
    z = _z(everyone, calib)
    if not z:
        return float("nan"), None, z
    best = max(z, key=z.get)
    weight: dict[int, float] = {}
    for n, v in z.items():
        r = everyone[n]
        if r.target_class is not None and not (r.details or {}).get("explained_by_trap"):
            weight[int(r.target_class)] = weight.get(int(r.target_class), 0.0) + max(v, 0.0)
    tail = None if calib.get("class_reference") else tail_class(ntl)  # the reference compares classes itself
    if tail is not None and tail not in trap_classes(ntl):
        weight[tail] = weight.get(tail, 0.0) + 2.0 * float(calib.get("threshold", 0.0))
    tgt = everyone[best].target_class
    if weight and max(weight.values()) > 0:
        tgt = max(weight, key=weight.get)
    return float(z[best]), tgt, z


def ntl_details(result: ProbeResult | None, bn_prior: bool = True) -> dict[str, Any] | None:
    """The NTL probe's features as :func:`fuse` takes them (None unless it ran and scored).

    ``bn_prior``: whether synthesis had the teacher's BatchNorm prior. Without it (BN-folded ONNX
    exports) the synthesis pull lands in the naturally dominant class, not the backdoor target
    (measured on the zoo's BN-folded exports), so the pull and the tail-class vote are left out
    (``use_pull`` False); the trap classes (a robustness property) are still used.
    """
    if result is None or result.status != "ok" or not isinstance(result.details, dict):
        return None
    return dict(result.details, flagged=bool(result.flagged), use_pull=bool(bn_prior))


def component_results(comps: dict[str, dict[str, Any]]) -> dict[str, ProbeResult]:
    """The component results back from a fused result's ``details["components"]`` (as JSON or as built)."""
    return {n: ProbeResult(probe=n, threat="backdoor", status=c.get("status") or "error", score=c.get("score"),
                           target_class=c.get("target_class"), flagged=bool(c.get("flagged")),
                           summary=c.get("summary") or "", details=c.get("details") or {},
                           budget=Budget(seconds=float(c.get("seconds") or 0.0)))
            for n, c in comps.items()}


@PROBES.register("backdoor", threat="backdoor", default=True)
class FusedBackdoorProbe(Probe):
    """Fused data-free backdoor detector (see module docstring)."""

    name = "backdoor"
    threat = "backdoor"
    Config = FusedConfig

    def run(self, teacher: Teacher, engine: Any = None) -> ProbeResult:
        cfg: FusedConfig = self.config
        clock = Clock(None)
        need_samples = any(_COMPONENTS[c][2] for c in cfg.components)
        x, source = (synthetic_samples(teacher, engine, cfg.samples, cfg.synth_steps, cfg.seed, clock)
                     if need_samples else (None, "none"))
        results: dict[str, ProbeResult] = {}
        for i, name in enumerate(cfg.components):
            probe_cls, field_name, on_samples = _COMPONENTS[name]
            sub = copy.copy(getattr(cfg, field_name))
            sub.seed = cfg.seed
            if cfg.budget_seconds is not None:
                share = max(0.5, (cfg.budget_seconds - clock.seconds) / (len(cfg.components) - i))
                sub.limit_seconds = share if sub.limit_seconds is None else min(sub.limit_seconds, share)
            probe = probe_cls(sub)
            try:
                results[name] = probe.run(teacher, engine, samples=x) if on_samples else probe.run(teacher, engine)
            except (RuntimeError, ValueError) as e:  # one failing component must not hide the others
                results[name] = ProbeResult(probe=name, threat="backdoor", status="error", summary=str(e)[:200])
        ok = [r for r in results.values() if r.status == "ok"]
        passes = clock.passes + sum(r.budget.teacher_passes for r in ok)
        budget = Budget(teacher_passes=passes, seconds=clock.seconds)
        return self.conclude(results, budget, [e for r in ok for e in r.evidence],
                             {"sample_source": source, "synthesis_bn_prior": has_bn_prior(teacher, engine),
                              "calibration_scope": scope(teacher.arch, fingerprint(teacher.model.net),
                                                         (cfg.calibration or {}).get("scope"))})

    def conclude(self, results: dict[str, ProbeResult], budget: Budget, evidence: list[Any],
                 extra: dict[str, Any] | None = None, ntl: ProbeResult | None = None) -> ProbeResult:
        """Fuse the component results (and the NTL probe's features when given) into the probe's result."""
        cfg: FusedConfig = self.config
        calib = cfg.calibration or CALIBRATION
        thr = cfg.threshold if cfg.threshold is not None else float(calib["threshold"])
        nd = ntl_details(ntl, bool((extra or {}).get("synthesis_bn_prior", True)))
        score, tgt, z = fuse(results, calib, nd)
        if not z:
            why = "no backdoor component produced a score"
            ref = calib.get("class_reference")
            if ref:
                k = {len(f["mean"]) for f in ref.values()}
                why += (f": the calibration's class reference ({calib.get('source') or 'user calibration'}) has "
                        f"{'/'.join(map(str, sorted(k)))} classes and none of its features matches this teacher's "
                        "component results (another number of classes, or the components did not run)")
            return ProbeResult(probe=self.name, threat="backdoor", status="error", budget=budget, seed=cfg.seed,
                               summary=why, details={n: r.summary for n, r in results.items()})
        everyone = derived(results, nd, calib)
        flagged = score > thr
        own = [n for n, r in results.items() if r.flagged]
        if flagged:
            sev = Severity.CRITICAL if score > 2 * thr and len(own) >= 2 else Severity.HIGH
        else:
            sev = Severity.LOW if own else Severity.INFO
        lead = max(z, key=z.get)
        traps = sorted(trap_classes(nd))
        summary = (f"backdoor suspected, target class {tgt} (fused z {score:.1f} > {thr:.1f}; strongest signal: "
                   f"{everyone[lead].summary})" if flagged else
                   f"no backdoor signal above threshold (fused z {score:.1f} <= {thr:.1f})")
        sc = (extra or {}).get("calibration_scope")
        # no note when the user set the threshold or a calibration of their own without a scope
        scoped = cfg.threshold is None and (cfg.calibration is None or "scope" in cfg.calibration)
        out_of_scope = scope_note(sc) if sc and scoped else None
        if out_of_scope:
            summary += "; " + out_of_scope
        if traps:
            summary += (f"; class {', '.join(map(str, traps))} left out: the NTL probe attributes it to a robust "
                        "OOD trap (see the NTL finding)")
        cons, pull, cref = everyone.get("consensus"), everyone.get("pull"), everyone.get(class_reference.NAME)
        return ProbeResult(
            probe=self.name, threat="backdoor", score=score, threshold=thr, flagged=flagged, severity=sev,
            target_class=tgt if flagged else None, summary=summary,
            details={"components": {n: {"status": r.status, "score": r.score, "z": z.get(n),
                                        "target_class": r.target_class, "flagged": r.flagged,
                                        "summary": r.summary, "details": r.details,
                                        "seconds": r.budget.seconds} for n, r in results.items()},
                     "consensus": None if cons is None else {"score": cons.score, "target_class": cons.target_class},
                     "pull": None if pull is None else {"score": pull.score, "target_class": pull.target_class,
                                                        **pull.details},
                     "class_reference": None if cref is None else {"score": cref.score, "target_class": cref.target_class,
                                                                   **cref.details},
                     "trap_classes": traps, "ntl_used": nd is not None,
                     "z": z, "suspected_target_any": tgt, **(extra or {}),
                     "calibration": {"source": calib.get("source"), "n_clean": calib.get("n_clean")}},
            evidence=evidence, budget=budget, seed=cfg.seed,
        )

    def combine(self, result: ProbeResult, others: dict[str, ProbeResult]) -> ProbeResult:
        """Re-fuse ``result`` (this probe's own output) with the other probes' results of the same scan.

        ``scan`` calls this after every probe ran: the NTL probe's features (synthesis pull, robust trap
        classes) enter the fused score at no extra cost. Returns ``result`` unchanged when there is
        nothing to add or ``result`` is not a scored fused result.
        """
        ntl = others.get(NTL_PROBE)
        comps = result.details.get("components") if isinstance(result.details, dict) else None
        if ntl is None or ntl.status != "ok" or result.status != "ok" or not comps:
            return result
        results = component_results(comps)
        extra = {k: v for k, v in result.details.items()
                 if k not in ("components", "consensus", "pull", "class_reference", "trap_classes", "ntl_used", "z",
                              "suspected_target_any", "calibration")}
        return self.conclude(results, result.budget, list(result.evidence), extra, ntl=ntl)
