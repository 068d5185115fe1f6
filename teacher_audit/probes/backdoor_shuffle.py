"""Shuffle-agreement backdoor probe (ABD's suspect model as a detector).

Hong et al., "Revisiting Data-Free Knowledge Distillation with Poisoned Teachers" (ICML 2023), §4:
an ensemble of 3 "suspect" copies of the teacher, each with the input channels of its last ``n``
conv layers randomly permuted (``teacher_audit.probes.shuffle``), loses the clean features while a
backdoor shortcut tends to survive. On synthetic samples we measure

* the tail ratio: share of samples whose log10 KL(T || suspect) lies below mean - 3 std (ABD's
  self-check; > 0.02 means the suspect is informative),
* the agreement of suspect and teacher (same argmax) per teacher-predicted class, and
* where the suspect ensemble's predictions go: a backdoored teacher's suspect collapses onto the
  target class far more than a clean teacher's suspect collapses onto any class.

Threat assumption: all-to-one backdoor implemented by a few late-layer channels; needs at least one
convolution (falls back to hidden linear layers). No BN prior needed.

Options (``ShuffleConfig``): ``samples`` synthetic samples (256), ``n_layers`` shuffled layers (5),
``n_models`` suspects in the ensemble (3), ``tail_sigma`` (3.0), ``synth_steps``, ``threshold`` on
the score (robust z), ``limit_seconds``, ``seed``.

Output: ``score`` = share (%) of synthetic samples on which the suspect ensemble and the teacher
agree (same argmax) — measured on tiny teachers, this separated backdoored from clean better than
the tail ratio, which is kept in the details (ABD switches SV on above 0.02); ``target_class`` = the
teacher's most frequent label among the agreeing samples; details: tail ratio, per-class agreement
and suspect prediction shares; own threshold 50 % (nominal; the fused probe calibrates); evidence: the synthetic samples on which suspect and teacher agree most
(lowest KL), i.e. the most trigger-like samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from teacher_audit.probes.backdoor_common import Clock, png_evidence, synthetic_samples
from teacher_audit.probes.base import PROBES, Probe
from teacher_audit.probes.shuffle import ensemble_log_probs, suspect_ensemble
from teacher_audit.report.model import Budget, ProbeResult
from teacher_audit.severity import Severity
from teacher_audit.teacher import Teacher


@dataclass
class ShuffleConfig:
    """Budget and options of the shuffle-agreement probe (see module docstring)."""

    samples: int = 256
    n_layers: int = 5
    n_models: int = 3
    tail_sigma: float = 3.0
    synth_steps: int | None = None
    threshold: float = 50.0
    limit_seconds: float | None = 15.0
    seed: int = 0


def kl_per_sample(t_logits: torch.Tensor, s_logp: torch.Tensor) -> torch.Tensor:
    """KL(softmax(t) || exp(s_logp)) per row."""
    t_logp = torch.log_softmax(t_logits.float(), 1)
    return (t_logp.exp() * (t_logp - s_logp)).sum(1)


def tail_ratio(kl: torch.Tensor, sigma: float = 3.0) -> float:
    """ABD's tail ratio: share of samples with log10 KL below mean - sigma * std."""
    lk = torch.log10(kl.clamp_min(1e-12))
    return float((lk < lk.mean() - sigma * lk.std()).float().mean())


@PROBES.register("backdoor_shuffle", threat="backdoor", default=False, component_of="backdoor_fused")
class ShuffleProbe(Probe):
    """ABD suspect-model agreement on synthetic samples (see module docstring)."""

    name = "backdoor_shuffle"
    threat = "backdoor"
    Config = ShuffleConfig

    def run(self, teacher: Teacher, engine: Any = None, samples: torch.Tensor | None = None) -> ProbeResult:
        """Run on ``samples`` when given (the fused probe shares one synthetic batch), else synthesize."""
        cfg: ShuffleConfig = self.config
        clock = Clock(cfg.limit_seconds)
        k = teacher.spec.num_classes
        if samples is not None:
            x, source = samples.to(teacher.device), "shared"
        else:
            x, source = synthetic_samples(teacher, engine, cfg.samples, cfg.synth_steps, cfg.seed, clock)
        try:
            suspects = suspect_ensemble(teacher.model, x[:2], cfg.n_models, cfg.n_layers, cfg.seed)
        except ValueError as e:
            return ProbeResult(probe=self.name, threat="backdoor", status="skipped", summary=str(e), seed=cfg.seed)
        with torch.no_grad():
            t_logits = teacher.model(x)
            s_logp = ensemble_log_probs(suspects, x)
        clock.passes += x.shape[0] * (1 + cfg.n_models)
        kl = kl_per_sample(t_logits, s_logp)
        tr = tail_ratio(kl, cfg.tail_sigma)
        t_pred = t_logits.argmax(1)
        s_pred = s_logp.argmax(1)
        share = torch.bincount(s_pred, minlength=k).float().cpu().numpy() / len(s_pred)
        agree = np.array([float((s_pred[t_pred == c] == c).float().mean()) if (t_pred == c).any() else 0.0
                          for c in range(k)])
        agreeing = s_pred == t_pred
        agree_hist = torch.bincount(t_pred[agreeing], minlength=k).float().cpu().numpy()
        tgt = int(np.argmax(agree_hist)) if agree_hist.sum() > 0 else int(np.argmax(share))
        score = 100.0 * float(agreeing.float().mean())
        flagged = score > cfg.threshold
        order = torch.argsort(kl)[:16]
        ev = png_evidence("suspect_samples", "synthetic samples on which the shuffled suspect agrees most with "
                          "the teacher (most trigger-like)", x[order])
        return ProbeResult(
            probe=self.name, threat="backdoor", score=score, threshold=cfg.threshold, flagged=flagged,
            severity=Severity.MEDIUM if flagged else Severity.INFO, target_class=tgt,
            summary=(f"shuffled suspects still agree with the teacher on {score:.0f}% of synthetic samples, "
                     f"mostly class {tgt}; tail ratio {tr:.3f}"),
            details={"tail_ratio": tr, "agreeing_classes": agree_hist.astype(int).tolist(), "suspect_share": share.round(4).tolist(), "agreement": agree.round(4).tolist(),
                     "agreement_overall": float((s_pred == t_pred).float().mean()),
                     "shuffled_layers": suspects[0].layers, "sample_source": source},
            evidence=[e for e in [ev] if e is not None],
            budget=Budget(teacher_passes=clock.passes, seconds=clock.seconds, limit_seconds=cfg.limit_seconds),
            seed=cfg.seed,
        )
