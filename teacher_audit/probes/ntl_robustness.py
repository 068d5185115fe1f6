"""NTL "OOD trap" probe: robustness profiling of the teacher over its own synthetic samples.

Paper: ATEsc, Hong et al., ICML 2025 -- non-transferable-learning (NTL) teachers (Wang et al., ICLR
2022) are markedly more adversarially robust on their misleading OOD domain than on their own domain,
and they pull data-free synthesis into that domain. Nothing published turns this into a detector;
this probe is our construction (documented in ``docs/ntl.md``).

Threat assumption: the teacher may have been trained to answer confidently and wrongly on some input
domain (NTL, ownership-verification NTL, NTL-based backdoor). We only evaluate it: no data, white-box
gradients on its raw-input wrapper.

Method:
1. samples from the profile's own seeded synthesis engine (:mod:`teacher_audit.attacks.profile`,
   independent of the scan's preset): ``synthesize`` output and the last generator batches of a
   short DFKD run;
2. per sample: the teacher's class (all samples); smallest label-flipping L-inf radius (geometric
   bisection over PGD), confidence and entropy (a seeded subset of ``n_measure`` samples);
3. features: the class the synthesis collapses to and its share (median over synthesis batches), a second, robust mode of ``log10(radius)`` (two-component mixture,
   :func:`teacher_audit.attacks.split.robust_split`), its share overall and per phase (growth from
   the first batches to the DFKD batches), the robust tail beyond ``tail_gap`` decades above the
   median, confidence/entropy of robust vs fragile samples, and the classes robust samples collapse to;
4. score (see :func:`ntl_score`): the trap's pull on synthesis (class collapse of the synthetic
   samples) plus the collapsed robust tail, against a threshold calibrated on clean zoo teachers
   only (several probe seeds each; docs/ntl.md).
5. without a BatchNorm prior (BN-folded ONNX exports, BN-free networks) synthesis is not drawn into
   the trap, so the pull is left out of the score and a **robust trap inversion** runs instead: per
   class, the smallest mask + pattern whose stamp keeps the other classes' samples in that class under
   an 8/255 PGD (:func:`teacher_audit.probes.backdoor_inversion.invert_triggers` with ``adv_steps``);
   an NTL trap domain is a transformation the teacher answers robustly, so its class needs a mask
   decades smaller than the median class (``trap_inversion_gap``, own threshold calibrated on clean
   BN-free teachers; put on the score's scale so that it lands on the probe threshold).

Options (``NTLConfig``) with defaults: profile budget (``ProfileConfig``: the profile's own ``fast``
engine seeded with the probe seed, 256 ``synthesize`` + 128 short-DFKD samples, 192 of them
PGD-profiled, radius bracket
[0.5, 32]/255, 4 bisection rounds x 5 PGD steps), ``robust_floor`` 8/255 (mixture modes), ``tail_gap`` 0.6
decades (relative tail), ``threshold`` from the calibration in ``docs/ntl.md``.

Outputs: ``ProbeResult`` (threat ``ntl``) with the score, the threshold, the class synthesis
collapses to as ``target_class`` (when flagged), features in ``details`` and evidence: the robustness
histogram (PNG), grids of the most fragile and the most robust samples, a features table. When it
flags, the summary says that a backdoor trigger pulls synthesis the same way (measured on the zoo) and
points to the backdoor probes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from teacher_audit.attacks.profile import Profile, ProfileConfig, profile_teacher
from teacher_audit.attacks.split import robust_split
from teacher_audit.probes.backdoor_common import Clock, excess_share, has_bn_prior
from teacher_audit.probes.backdoor_inversion import (ROBUST_GAP_THRESHOLD, RobustInversionConfig, invert_triggers,
                                                     mask_gap, trigger_evidence)
from teacher_audit.probes.base import PROBES, Probe
from teacher_audit.probes.calibration import fingerprint, scope, scope_note
from teacher_audit.report.model import Budget, Evidence, ProbeResult
from teacher_audit.severity import Severity
from teacher_audit.teacher import Teacher

#: Default decision threshold on :func:`ntl_score`, calibrated on clean zoo teachers only: largest score
#: of 12 runs (6 clean zoo-v2 teachers, smallcnn and LeNet-5, 2 probe seeds each) 0.175 x 1.25, rounded
#: up to 0.01 (docs/ntl.md, docs/benchmarks.md "## NTL detection").
DEFAULT_THRESHOLD = 0.22

#: Default threshold on the robust trap inversion's gap (decades between the median class's smallest robust
#: mask and the smallest one); calibrated for this probe, kept with the inversion (:data:`ROBUST_GAP_THRESHOLD`).
DEFAULT_INVERSION_THRESHOLD = ROBUST_GAP_THRESHOLD

#: When the robust trap inversion runs: only on teachers whose synthesis has no BatchNorm prior (the pull
#: needs it), on every teacher, or never.
TRAP_INVERSION_MODES = ("no_bn", "always", "never")


def trap_inversion_config() -> RobustInversionConfig:
    """Default robust inversion of the NTL probe: 60 steps, 8 samples per class, stamped samples must
    survive a 2-step 8/255 PGD (about 20,000 teacher passes; docs/ntl.md); no wall-clock cap."""
    return RobustInversionConfig(limit_seconds=None)


@dataclass
class NTLConfig:
    """Options of the NTL probe.

    Attributes:
        profile: sample and attack budget (see :class:`ProfileConfig`).
        tail_gap: decades above the median radius that count as the relative "robust tail".
        robust_floor: radius (grey levels /255) from which a sample counts as robust.
        threshold: decision threshold on the score.
        seed: PGD random starts.
        evidence: attach PNG evidence (histogram, sample grids).
        trap_inversion: when to run the robust trap inversion (``TRAP_INVERSION_MODES``; default
            ``no_bn``: only when synthesis has no BatchNorm prior, e.g. BN-folded ONNX exports).
        inversion: its budget (a robust mask + pattern inversion on the profiled samples).
        inversion_threshold: decision threshold on ``trap_inversion_gap`` (decades).
        calibration_scope: the ``scope`` of a user calibration that set the thresholds
            (:mod:`teacher_audit.calibrate`); None = the built-in calibration.
    """

    profile: ProfileConfig = field(default_factory=ProfileConfig)
    tail_gap: float = 0.6
    robust_floor: float = 8.0
    threshold: float = DEFAULT_THRESHOLD
    seed: int = 0
    evidence: bool = True
    trap_inversion: str = "no_bn"
    inversion: RobustInversionConfig = field(default_factory=trap_inversion_config)
    inversion_threshold: float = DEFAULT_INVERSION_THRESHOLD
    calibration_scope: dict[str, Any] | None = None


def features(prof: Profile, tail_gap: float = 0.6, robust_floor: float = 8.0) -> dict[str, Any]:
    """Robustness-profile features (see module docstring). All plain floats/ints/lists.

    ``robust_floor`` (grey levels /255) is the absolute radius from which a sample counts as robust:
    synthetic samples of clean teachers sit near decision boundaries (median radius ~1/255), so a
    mixture alone would find "modes" in their skewed, quantised distribution; a robust mode must
    also lie above this floor.
    """
    r = prof.log_eps
    floor = math.log10(robust_floor)
    main = prof.phase != "early"
    if not main.any():
        main = np.ones_like(r, dtype=bool)
    rm = r[main]
    med = float(np.median(rm))
    split = robust_split(rm)
    bimodal = bool(split.bimodal and split.mixture.mu1 >= floor)
    robust_main = split.robust.numpy() if bimodal else np.zeros(rm.size, dtype=bool)
    above = rm >= floor
    tail = rm > med + tail_gap
    rob = robust_main if robust_main.any() else tail
    k = prof.num_classes
    pred, conf, ent = prof.pred[main], prof.conf[main], prof.entropy[main]
    counts = np.bincount(pred[rob], minlength=k) if rob.any() else np.zeros(k, dtype=int)
    top = int(counts.argmax()) if rob.any() else None
    collapse = float(counts.max() / max(1, rob.sum())) if rob.any() else 0.0

    cut = float(split.threshold) if bimodal else med + tail_gap
    if prof.all_pred is not None:  # every synthetic sample, PGD-profiled or not
        amain = prof.all_phase != "early" if (prof.all_phase != "early").any() else np.ones(prof.all_pred.size, bool)
        apred = prof.all_pred[amain]
        abatch = prof.all_batch[amain] if prof.all_batch is not None else np.zeros(apred.size, dtype=int)
    else:
        apred, abatch = pred, np.zeros(pred.size, dtype=int)
    all_counts, n_all = np.bincount(apred, minlength=k), int(apred.size)
    mbatch = prof.batch[main] if prof.batch is not None else np.zeros(rm.size, dtype=int)

    def batch_median(hit: np.ndarray, ids: np.ndarray) -> float:
        """Median over synthesis batches of the share of ``hit`` (robust to one degenerate batch)."""
        shares = [float(hit[ids == b].mean()) for b in np.unique(ids)]
        return float(np.median(shares)) if shares else 0.0

    pull_class = int(all_counts.argmax())
    pull_share = batch_median(apred == pull_class, abatch)
    tail_counts = np.bincount(pred[tail], minlength=k) if tail.any() else np.zeros(k, dtype=int)
    mode_counts = np.bincount(pred[robust_main], minlength=k) if robust_main.any() else np.zeros(k, dtype=int)
    tail_top, mode_top = int(tail_counts.argmax()), int(mode_counts.argmax())

    def share(phase: str) -> float | None:
        m = prof.phase == phase
        return float((r[m] > cut).mean()) if m.any() else None

    early = share("early") if (prof.phase == "early").any() else share("synth")
    late = share("dfkd")
    return {
        "n_samples": int(r.size), "median_eps255": float(10 ** med), "q90_eps255": float(10 ** np.quantile(rm, 0.9)),
        "censored_share": float(prof.censored[main].mean()), "robust_floor_eps255": robust_floor,
        "bimodal": bimodal, "mixture_robust_share": float(split.mixture.w1),
        "mixture_separation": float(split.mixture.separation),
        "mixture_gap_decades": float(split.mixture.mu1 - split.mixture.mu0),
        "mixture_robust_mean_eps255": float(10 ** split.mixture.mu1),
        "robust_share": float(robust_main.mean()), "above_floor_share": float(above.mean()),
        "tail_share": float(tail.mean()),
        "share_early": early, "share_late": late,
        "growth": None if early is None or late is None else float(late - early),
        "conf_robust": float(conf[rob].mean()) if rob.any() else None,
        "conf_fragile": float(conf[~rob].mean()) if (~rob).any() else None,
        "entropy_robust": float(ent[rob].mean()) if rob.any() else None,
        "entropy_fragile": float(ent[~rob].mean()) if (~rob).any() else None,
        "robust_classes": counts.tolist(), "collapse_class": top, "collapse_share": collapse,
        "split_threshold_log10": cut,
        "collapsed_tail_share": batch_median(tail & (pred == tail_top), mbatch) if tail.any() else 0.0,
        "collapsed_mode_share": batch_median(robust_main & (pred == mode_top), mbatch) if robust_main.any() else 0.0,
        "pull_class": pull_class, "pull_share": pull_share, "pull_share_pooled": float(all_counts.max() / n_all),
        "pull_excess": float(max(0.0, excess_share(pull_share, k))),
        "n_pull_samples": n_all, "n_batches": int(np.unique(abatch).size),
        "class_counts": all_counts.tolist(),
    }


def ntl_score(f: dict[str, Any], use_pull: bool = True) -> float:
    """Fuse the features into one score in [0, 1] (higher = more NTL-like). See docs/ntl.md.

    ``score = min(1, pull_excess + collapsed_tail_share)``:

    * ``pull_excess`` -- the **OOD-trap pull** on synthesis: the share of synthetic samples the teacher
      puts in its most common class, as excess over a uniform class mix (``(share - 1/K) / (1 - 1/K)``).
      The engine's class-balance term spreads a clean teacher's samples over the classes; an NTL
      teacher drags the generator into its misleading domain, which it maps to one class (the ATEsc
      premise, measured on the zoo: 39-65 % of the samples in one class vs <= 19 % for clean teachers).
    * ``collapsed_tail_share`` -- the robustness profile: samples more than ``tail_gap`` decades more
      robust than the median flip radius AND in the most common class among those (or the same count
      in the mixture's robust mode above the absolute floor, whichever is larger). A clean teacher's
      few unusually robust synthetic samples are spread over classes; an NTL teacher's pile up in the
      trap class.

    Confidence / entropy of robust vs fragile samples and the DFKD growth are reported, not fused.

    ``use_pull=False`` leaves the pull out: without the teacher's BatchNorm prior synthesis is not drawn
    into the trap, and the class share then reflects the generator more than the teacher (BN-folded clean
    exports pulled up to 29 % into one class, as much as some NTL exports); the probe passes
    ``use_pull=False`` when synthesis had no BN prior and relies on the robust trap inversion instead.
    """
    tail = max(f["collapsed_tail_share"], f.get("collapsed_mode_share", 0.0))
    return float(min(1.0, (f.get("pull_excess", 0.0) if use_pull else 0.0) + tail))


def inversion_features(norms: np.ndarray) -> dict[str, Any]:
    """Features of the robust trap inversion: per class, the smallest mask (share of the image) whose
    stamp keeps samples of the other classes in that class under PGD (1.0 = never reached).

    ``trap_inversion_gap`` is how many decades the smallest mask lies below the median class's; an NTL
    trap domain is reached with a small stamp and is robust, so its class stands out, and the teacher's
    other classes often cannot be reached robustly at all.
    """
    top = int(np.argmin(norms))
    return {"trap_inversion_class": top, "trap_inversion_gap": mask_gap(norms),
            "trap_inversion_norms": [float(v) for v in norms],
            "trap_inversion_unreachable": int((norms >= 1.0).sum())}


def _evidence(prof: Profile, f: dict[str, Any], thr_log10: float | None,
              vr: tuple[float, float] = (0.0, 1.0)) -> list[Evidence]:
    from teacher_audit.report.plots import histogram_png, image_grid_png

    ev: list[Evidence] = []
    r = prof.log_eps
    groups = {ph: r[prof.phase == ph] for ph in ("early", "synth", "dfkd") if (prof.phase == ph).any()}
    ev.append(Evidence(name="robustness_histogram", kind="image",
                       caption="log10 smallest label-flipping L-inf radius (grey levels /255) per synthetic "
                               "sample, by phase; dashed: robust/fragile split",
                       png=histogram_png(r, groups=groups, thresholds=[thr_log10] if thr_log10 is not None else [],
                                         xlabel="log10 eps (/255)", title="NTL robustness profile")))
    order = np.argsort(r)
    n = min(32, r.size)
    for name, idx, cap in (("fragile_samples", order[:n], "most fragile synthetic samples"),
                           ("robust_samples", order[::-1][:n], "most robust synthetic samples")):
        labels = [f"{int(prof.pred[i])} e{prof.eps255[i]:.1f}" for i in idx]
        ev.append(Evidence(name=name, kind="image", caption=cap + " (teacher class, eps/255)",
                           png=image_grid_png(prof.x[idx.copy()], value_range=vr, labels=labels)))
    return ev


@PROBES.register("ntl_robustness", threat="ntl")
class NTLRobustnessProbe(Probe):
    """Data-free NTL-trap probe (see module docstring)."""

    name = "ntl_robustness"
    threat = "ntl"
    Config = NTLConfig

    def run(self, teacher: Teacher, engine: Any) -> ProbeResult:
        cfg: NTLConfig = self.config
        t0 = time.perf_counter()
        if cfg.trap_inversion not in TRAP_INVERSION_MODES:
            raise ValueError(f"trap_inversion must be one of {TRAP_INVERSION_MODES}, got {cfg.trap_inversion!r}")
        prof = profile_teacher(teacher, engine, cfg.profile, seed=cfg.seed)
        f = features(prof, cfg.tail_gap, cfg.robust_floor)
        bn_prior = has_bn_prior(teacher, engine)
        f["synthesis_bn_prior"] = bn_prior
        inv_passes, inv = 0, None
        if cfg.trap_inversion == "always" or (cfg.trap_inversion == "no_bn" and not bn_prior):
            clock = Clock(cfg.inversion.limit_seconds)
            inv = invert_triggers(teacher, prof.x.to(teacher.device), cfg.inversion, clock)
            f.update(inversion_features(inv.norms))
            inv_passes = clock.passes
        score = ntl_score(f, use_pull=bn_prior)
        trap_cls = f["pull_class"] if bn_prior else f["collapse_class"]
        msg = (f"synthesis pulled {100 * f['pull_share']:.0f}% of {f['n_pull_samples']} samples into class "
               f"{f['pull_class']}; {100 * f['collapsed_tail_share']:.1f}% are > {cfg.tail_gap:g} decades more "
               f"robust than the median (flip radius {f['median_eps255']:.2f}/255) and in robust class "
               f"{f['collapse_class']}; {'pull/tail' if bn_prior else 'tail (no BN prior: pull not scored)'} score "
               f"{score:.3f} vs threshold {cfg.threshold:.3f}")
        if "trap_inversion_gap" in f:
            # on the score's scale: the inversion's own calibrated threshold lands on the probe's threshold
            inv_score = float(min(1.0, cfg.threshold * f["trap_inversion_gap"] / cfg.inversion_threshold))
            f["trap_inversion_score"] = inv_score
            inv_msg = (f"robust trap inversion: class {f['trap_inversion_class']} is kept under "
                       f"{cfg.inversion.adv_eps * 255:g}/255 PGD by a mask {f['trap_inversion_gap']:.2f} decades smaller "
                       f"than the median class's ({f['trap_inversion_unreachable']} classes never reached; threshold "
                       f"{cfg.inversion_threshold:g})")
            # without a BN prior the inversion is the deciding signal: say it first
            msg = f"{inv_msg}; {msg}" if not bn_prior else f"{msg}; {inv_msg}"
            if inv_score > score:
                score, trap_cls = inv_score, f["trap_inversion_class"]
        flagged = score >= cfg.threshold
        notes = list(prof.notes)
        if flagged:
            notes.append(f"suspected trap class {trap_cls}: a backdoor trigger pulls synthesis (and a global trigger "
                         "such as Blend survives the robust inversion) the same way (measured on the zoo's backdoored "
                         "teachers) -- read the backdoor probes' result before concluding NTL rather than backdoor")
        sc = scope(teacher.arch, fingerprint(teacher.model.net), cfg.calibration_scope)
        # no note when the user set the threshold by hand (a user calibration sets its own scope)
        out_of_scope = (scope_note(sc) if cfg.threshold == DEFAULT_THRESHOLD or cfg.calibration_scope
                        else None)
        if out_of_scope:
            notes.append(out_of_scope)
        summary = ("NTL trap suspected: " if flagged else "no NTL trap pattern: ") + msg
        if notes:
            summary += "; " + "; ".join(notes)
        vr = (float(teacher.spec.value_range[0]), float(teacher.spec.value_range[1]))
        ev = _evidence(prof, f, f["split_threshold_log10"], vr) if cfg.evidence else []
        if inv is not None and cfg.evidence:
            c = f["trap_inversion_class"]
            ev += trigger_evidence(inv, c, prof.x, ("trap_inversion", f"robust trap inversion: mask x pattern of class {c}"),
                                   ("trap_inversion_stamped", f"profiled samples with the class-{c} stamp"))
        ev.append(Evidence(name="ntl_features", kind="values", caption="robustness-profile features",
                           values={k: v for k, v in f.items() if not isinstance(v, list)}))
        return ProbeResult(
            probe=self.name, threat="ntl", status="ok", score=score, threshold=cfg.threshold, flagged=flagged,
            severity=Severity.HIGH if flagged else Severity.INFO, summary=summary,
            target_class=trap_cls if flagged else None,
            details={**f, "notes": notes, "calibration_scope": sc,
                     "profile": {"eps_max_255": cfg.profile.eps_max * 255,
                                 "bisection_steps": cfg.profile.bisection_steps,
                                 "pgd_steps": cfg.profile.pgd_steps}},
            evidence=ev, budget=Budget(teacher_passes=prof.passes + inv_passes, seconds=round(time.perf_counter() - t0, 2)), seed=cfg.seed)
