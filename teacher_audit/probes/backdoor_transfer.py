"""Backdoor-transfer probe: does a data-free student actually inherit the teacher's trigger?

The mission's own question (Hong et al., ICML 2023, §3: DFKD transfers backdoors although the
student never sees a triggered image). Steps:

1. invert a trigger per class on synthetic samples (``backdoor_inversion``'s mask + pattern);
2. run a short, budgeted DFKD on the shared engine (``budget_passes`` teacher passes);
3. stamp each class's inverted trigger on fresh synthetic samples of the other classes and measure
   how often the teacher and the student flip to that class.

A backdoor that transfers makes the student follow the teacher's inverted trigger for the target
class far more than for the other classes (whose "triggers" are adversarial patches specific to the
teacher and transfer poorly).

Threat assumption: all-to-one backdoor; the engine's preset is the DFKD method the user will run.
Costly (a DFKD run), so it is not in the default ``scan``; run it with ``--probe backdoor_transfer``
or from the library.

Options (``TransferConfig``): ``budget_passes`` of the DFKD run (20 000), ``samples`` fresh samples
for the flip test (128), ``inversion`` (an :class:`InversionConfig`), ``threshold`` on the score
(0.3), ``seed``.

Output: ``score`` = student flip rate of the suspected target's trigger minus the median student flip
rate of the other classes' triggers; ``target_class`` = class whose trigger the student follows
most; details: per-class teacher and student flip rates, the inversion norms, DFKD passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from teacher_audit.probes.backdoor_common import Clock, png_evidence, synthetic_samples
from teacher_audit.probes.backdoor_inversion import InversionConfig, invert_triggers
from teacher_audit.probes.base import PROBES, Probe
from teacher_audit.report.model import Budget, ProbeResult
from teacher_audit.severity import Severity
from teacher_audit.teacher import Teacher


@dataclass
class TransferConfig:
    """Budget and options of the transfer probe (see module docstring)."""

    budget_passes: int = 20_000
    samples: int = 128
    inversion: InversionConfig = field(default_factory=lambda: InversionConfig(limit_seconds=None))
    threshold: float = 0.3
    seed: int = 0


def flip_rates(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor,
               patterns: torch.Tensor) -> np.ndarray:
    """Per class c: share of samples not labelled c that ``model`` assigns to c with trigger c stamped."""
    k = masks.shape[0]
    out = np.zeros(k)
    with torch.no_grad():
        for c in range(k):
            sel = labels != c
            if not sel.any():
                continue
            xs = (1 - masks[c]) * x[sel] + masks[c] * patterns[c]
            out[c] = float((model(xs).argmax(1) == c).float().mean())
    return out


@PROBES.register("backdoor_transfer", threat="backdoor", default=False)
class TransferProbe(Probe):
    """Short DFKD run, then the student's flip rate under the teacher's inverted triggers."""

    name = "backdoor_transfer"
    threat = "backdoor"
    Config = TransferConfig

    def run(self, teacher: Teacher, engine: Any = None) -> ProbeResult:
        cfg: TransferConfig = self.config
        if engine is None or not hasattr(engine, "run"):
            return ProbeResult(probe=self.name, threat="backdoor", status="skipped", seed=cfg.seed,
                               summary="needs the synthesis engine (a DFKD run)")
        clock = Clock(None)
        x, source = synthetic_samples(teacher, engine, cfg.inversion.samples, None, cfg.seed, clock)
        inv = invert_triggers(teacher, x, cfg.inversion, clock)
        start = int(engine.passes)
        result = engine.run(budget_passes=start + cfg.budget_passes, progress=False)
        student = result.student.eval()
        clock.passes += int(engine.passes) - start
        fresh, _ = synthetic_samples(teacher, engine, cfg.samples, None, cfg.seed + 1, clock)
        with torch.no_grad():
            labels = teacher.model(fresh).argmax(1)
        clock.passes += fresh.shape[0] * (1 + teacher.spec.num_classes)
        t_flip = flip_rates(teacher.model, fresh, labels, inv.masks, inv.patterns)
        s_flip = flip_rates(student, fresh, labels, inv.masks, inv.patterns)
        tgt = int(np.argmax(s_flip))
        score = float(s_flip[tgt] - np.median(np.delete(s_flip, tgt)))
        flagged = score > cfg.threshold
        ev = png_evidence("transfer_trigger", f"inverted trigger of class {tgt} that the student follows",
                          (inv.masks[tgt] * inv.patterns[tgt]).unsqueeze(0), "trigger")
        return ProbeResult(
            probe=self.name, threat="backdoor", score=score, threshold=cfg.threshold, flagged=flagged,
            severity=Severity.HIGH if flagged else Severity.INFO, target_class=tgt,
            summary=(f"after {int(engine.passes) - start} DFKD passes the student follows class {tgt}'s inverted "
                     f"trigger on {100 * s_flip[tgt]:.0f}% of samples (teacher {100 * t_flip[tgt]:.0f}%)"),
            details={"student_flip": s_flip.round(4).tolist(), "teacher_flip": t_flip.round(4).tolist(),
                     "mask_norms": [float(v) for v in inv.norms], "dfkd_passes": int(engine.passes) - start,
                     "sample_source": source},
            evidence=[e for e in [ev] if e is not None],
            budget=Budget(teacher_passes=clock.passes, seconds=clock.seconds), seed=cfg.seed,
        )
