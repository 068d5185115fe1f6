"""Max-margin backdoor probe (MM-BD statistic).

Wang et al., "MM-BD: Post-Training Detection of Backdoor Attacks with Arbitrary Backdoor Pattern
Types Using a Maximum Margin Statistic" (IEEE S&P 2024). For every class t, starting from random
images in the teacher's input range, maximise the margin ``logit_t - max_{k != t} logit_k`` by
gradient ascent on the pixels (clamped to the range); ``r_t`` is the best margin reached. A
backdoor target class admits an abnormally large margin (the trigger is a strong shortcut). A Gamma
distribution is fitted to the ``r`` of all classes but the largest; the p-value of the largest is
``1 - F(r_max)^K``.

Threat assumption: all-to-one backdoor (one target class), any trigger type. Data-free: uses no
samples at all (random starts), no BN statistics, so it works on ONNX exports with BN folded away.

Options (``MarginConfig``): ``starts`` random starts per class (MM-BD uses 30; default 4 to fit the
CPU budget), ``steps`` ascent steps (default 150; MM-BD <= 300; at 60 steps the target of a
BadNets-square teacher had not yet overtaken the naturally large-margin classes, at 150 it had), ``lr`` (Adam, in raw pixel units
relative to the range), ``alpha`` p-value level for the probe's own verdict (0.05),
``limit_seconds`` wall-clock cap (the ascent stops early and says so), ``seed``.

Output: ``score = -log10(p)``, ``threshold = -log10(alpha)``, ``target_class = argmax r``;
details hold the per-class margins, the p-value and a robust z-score of ``r_max``; evidence is the
max-margin image of the suspected target class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats

from teacher_audit.probes.backdoor_common import (
    Clock,
    png_evidence,
    robust_z,
    safe_log10_p,
    uniform_images,
    value_range,
)
from teacher_audit.probes.base import PROBES, Probe
from teacher_audit.report.model import Budget, ProbeResult
from teacher_audit.severity import Severity
from teacher_audit.teacher import Teacher


@dataclass
class MarginConfig:
    """Budget and options of the max-margin probe (see module docstring)."""

    starts: int = 4
    steps: int = 150
    lr: float = 0.05
    alpha: float = 0.05
    limit_seconds: float | None = 60.0
    seed: int = 0


def max_margins(teacher: Teacher, cfg: MarginConfig, clock: Clock) -> tuple[np.ndarray, torch.Tensor, int]:
    """Per-class best margin (K,), the best image per class (K x C x H x W) and the steps run."""
    k = teacher.spec.num_classes
    lo, hi = value_range(teacher)
    g = torch.Generator().manual_seed(cfg.seed)
    x = uniform_images(teacher, k * cfg.starts, g).requires_grad_(True)
    y = torch.arange(k, device=x.device).repeat_interleave(cfg.starts)
    opt = torch.optim.Adam([x], lr=cfg.lr * (hi - lo))
    onehot = torch.nn.functional.one_hot(y, k).bool()
    done = 0
    for _ in range(cfg.steps):
        logits = teacher.model(x)
        clock.passes += x.shape[0]
        own = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.masked_fill(onehot, float("-inf")).amax(1)
        loss = -(own - other).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(lo, hi)
        done += 1
        if clock.out_of_time():
            break
    with torch.no_grad():
        logits = teacher.model(x)
        clock.passes += x.shape[0]
        margin = logits.gather(1, y[:, None]).squeeze(1) - logits.masked_fill(onehot, float("-inf")).amax(1)
    m = margin.view(k, cfg.starts)
    best = m.argmax(1)
    r = m.max(1).values.cpu().numpy().astype(np.float64)
    imgs = x.detach().view(k, cfg.starts, *x.shape[1:])[torch.arange(k), best]
    return r, imgs, done


def gamma_pvalue(r: np.ndarray) -> float:
    """MM-BD p-value of the largest statistic under a Gamma null fitted to the others."""
    k = len(r)
    i = int(np.argmax(r))
    shift = float(min(r.min(), 0.0))
    vals = r - shift + 1e-6
    null = np.delete(vals, i)
    if np.ptp(null) < 1e-9:
        return 0.0 if vals[i] > null.max() * 1.5 else 1.0
    try:
        a, loc, scale = stats.gamma.fit(null, floc=0.0)
        cdf = float(stats.gamma.cdf(vals[i], a, loc=loc, scale=scale))
    except Exception:  # noqa: BLE001 - degenerate fit: fall back to a moment fit
        mu, var = float(null.mean()), float(null.var()) + 1e-12
        cdf = float(stats.gamma.cdf(vals[i], mu * mu / var, scale=var / mu))
    return float(1.0 - cdf ** k)


@PROBES.register("backdoor_margin", threat="backdoor", default=False, component_of="backdoor_fused")
class MarginProbe(Probe):
    """MM-BD max-margin statistic (see module docstring)."""

    name = "backdoor_margin"
    threat = "backdoor"
    Config = MarginConfig

    def run(self, teacher: Teacher, engine: Any = None) -> ProbeResult:
        cfg: MarginConfig = self.config
        clock = Clock(cfg.limit_seconds)
        r, imgs, done = max_margins(teacher, cfg, clock)
        p = gamma_pvalue(r)
        tgt = int(np.argmax(r))
        score = safe_log10_p(p)
        thr = safe_log10_p(cfg.alpha)
        flagged = score > thr
        ev = png_evidence("max_margin_image", f"max-margin image of class {tgt}", imgs[tgt:tgt + 1], "trigger")
        return ProbeResult(
            probe=self.name, threat="backdoor", score=score, threshold=thr, flagged=flagged,
            severity=Severity.MEDIUM if flagged else Severity.INFO, target_class=tgt,
            summary=(f"class {tgt} reaches margin {r[tgt]:.1f} (others median {np.median(np.delete(r, tgt)):.1f}); "
                     f"MM-BD p={p:.2g}"),
            details={"margins": [float(v) for v in r], "p_value": p, "robust_z": robust_z(r, tgt),
                     "steps_run": done, "starts": cfg.starts},
            evidence=[e for e in [ev] if e is not None],
            budget=Budget(teacher_passes=clock.passes, seconds=clock.seconds, limit_seconds=cfg.limit_seconds),
            seed=cfg.seed,
        )
