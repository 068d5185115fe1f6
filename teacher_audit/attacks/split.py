"""Split samples into a fragile and a robust group by a rule learned from the batch.

ATEsc (Hong et al., ICML 2025) separates ID-like (adversarially fragile) from OOD-like (robust)
synthetic samples but does not publish its rule. Ours, a documented reconstruction:

* ``gmm`` (default): fit a two-component 1-D Gaussian mixture (EM, variance floor) to per-sample
  robustness scores (higher = more robust, e.g. ``log10`` of the smallest label-flipping radius or
  ``-log10`` KL at a fixed radius). A robust group exists only if the mixture is *clearly* bimodal:
  BIC prefers two components, Ashman's separation ``D = sqrt(2) |mu1 - mu2| / sqrt(s1^2 + s2^2)``
  is at least ``min_separation`` (default 2.0; D > 2 is the usual "clean separation" criterion), the
  means are at least ``min_gap`` score units apart (default 0.5: with log10 scores, the robust mode is
  >= 3x more robust -- a skewed single mode can pass the D test, not this one) and the robust
  component holds at least ``min_share`` of the samples. The threshold is where the two
  weighted densities cross between the means. If the batch is unimodal (a clean teacher), nothing
  is robust -- never a fixed fraction.
* ``quantile``: the same bimodality test decides *whether* to split; if it passes, the top
  ``quantile`` share is robust (a fixed share only once two modes were found).
* ``otsu``: Otsu's between-class-variance threshold on the scores, with the same separation test.

Outputs a :class:`SplitResult` with the mask, the threshold and the mixture parameters (reported
as probe evidence).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch

from teacher_audit.registry import Registry

__all__ = ["SplitResult", "Mixture2", "fit_mixture2", "robust_split", "SPLITS"]


@dataclass
class Mixture2:
    """Two-component 1-D Gaussian mixture; component 1 is the one with the larger mean."""

    w0: float
    mu0: float
    s0: float
    w1: float
    mu1: float
    s1: float
    bic1: float
    bic2: float

    @property
    def separation(self) -> float:
        """Ashman's D between the two components."""
        return math.sqrt(2.0) * abs(self.mu1 - self.mu0) / math.sqrt(self.s0**2 + self.s1**2)

    def crossing(self) -> float:
        """Point between the means where ``w0 N0 = w1 N1`` (midpoint if there is none)."""
        a = 1 / (2 * self.s1**2) - 1 / (2 * self.s0**2)
        b = self.mu0 / self.s0**2 - self.mu1 / self.s1**2
        c = (self.mu1**2 / (2 * self.s1**2) - self.mu0**2 / (2 * self.s0**2)
             + math.log((self.w0 * self.s1) / (self.w1 * self.s0)))
        roots: list[float] = []
        if abs(a) < 1e-12:
            if abs(b) > 1e-12:
                roots = [-c / b]
        else:
            disc = b * b - 4 * a * c
            if disc >= 0:
                r = math.sqrt(disc)
                roots = [(-b - r) / (2 * a), (-b + r) / (2 * a)]
        inside = [r for r in roots if self.mu0 <= r <= self.mu1]
        return inside[0] if inside else 0.5 * (self.mu0 + self.mu1)


def _logpdf(x: np.ndarray, mu: float, s: float) -> np.ndarray:
    return -0.5 * ((x - mu) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)


def fit_mixture2(values: np.ndarray, *, iters: int = 100, var_floor: float = 1e-3) -> Mixture2:
    """EM fit of a 2-component Gaussian mixture (deterministic init at the 25th/75th percentiles)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    n = x.size
    sfloor = math.sqrt(var_floor)
    s_all = max(float(x.std()), sfloor)
    ll1 = float(_logpdf(x, float(x.mean()), s_all).sum())
    bic1 = -2 * ll1 + 2 * math.log(max(n, 2))
    mu = np.array([np.percentile(x, 25), np.percentile(x, 75)], dtype=np.float64)
    if mu[1] - mu[0] < 1e-9:
        mu[1] = mu[0] + sfloor
    s = np.array([s_all, s_all]) / 2 + sfloor
    w = np.array([0.5, 0.5])
    ll = -np.inf
    for _ in range(iters):
        lp = np.stack([np.log(w[k]) + _logpdf(x, mu[k], s[k]) for k in range(2)])
        m = lp.max(0)
        tot = m + np.log(np.exp(lp - m).sum(0))
        r = np.exp(lp - tot)
        nk = r.sum(1) + 1e-12
        w = np.clip(nk / n, 1e-6, 1.0)
        mu = (r * x).sum(1) / nk
        s = np.sqrt(np.maximum((r * (x - mu[:, None]) ** 2).sum(1) / nk, var_floor))
        new = float(tot.sum())
        if abs(new - ll) < 1e-8 * max(1.0, abs(new)):
            ll = new
            break
        ll = new
    bic2 = -2 * ll + 5 * math.log(max(n, 2))
    o = np.argsort(mu)
    return Mixture2(w0=float(w[o[0]]), mu0=float(mu[o[0]]), s0=float(s[o[0]]), w1=float(w[o[1]]),
                    mu1=float(mu[o[1]]), s1=float(s[o[1]]), bic1=bic1, bic2=bic2)


@dataclass
class SplitResult:
    """Outcome of a split.

    Attributes:
        robust: bool mask ``(B,)`` of robust (OOD-like) samples; all False when unimodal.
        threshold: score threshold (``inf`` when no robust group was found).
        bimodal: whether the separation test passed.
        mixture: the fitted mixture (always reported).
        method: the split rule used.
    """

    robust: torch.Tensor
    threshold: float
    bimodal: bool
    mixture: Mixture2
    method: str

    @property
    def share(self) -> float:
        return float(self.robust.float().mean()) if self.robust.numel() else 0.0

    def summary(self) -> dict[str, Any]:
        d = {"method": self.method, "threshold": self.threshold, "bimodal": self.bimodal,
             "robust_share": self.share, "separation": self.mixture.separation}
        d.update({f"mixture_{k}": v for k, v in asdict(self.mixture).items()})
        return d


SPLITS: Registry[Callable[..., float]] = Registry("split rule")


@SPLITS.register("gmm")
def _gmm_threshold(x: np.ndarray, mix: Mixture2, **_: Any) -> float:
    return mix.crossing()


@SPLITS.register("quantile")
def _quantile_threshold(x: np.ndarray, mix: Mixture2, quantile: float = 0.5, **_: Any) -> float:
    # share taken = the robust component's weight capped by `quantile`
    share = min(mix.w1, quantile)
    return float(np.quantile(x, 1.0 - share))


@SPLITS.register("otsu")
def _otsu_threshold(x: np.ndarray, mix: Mixture2, **_: Any) -> float:
    xs = np.sort(x)
    best, thr = -1.0, float(xs[len(xs) // 2])
    for i in range(1, len(xs)):
        a, b = xs[:i], xs[i:]
        v = len(a) * len(b) * (a.mean() - b.mean()) ** 2
        if v > best:
            best, thr = v, 0.5 * (xs[i - 1] + xs[i])
    return thr


def robust_split(scores: torch.Tensor | np.ndarray, *, method: str = "gmm", min_separation: float = 2.0,
                 min_gap: float = 0.5, min_share: float = 0.03, var_floor: float = 5e-3,
                 **options: Any) -> SplitResult:
    """Split ``scores`` (higher = more robust) into fragile/robust by a rule learned from them.

    Args:
        scores: per-sample robustness scores.
        method: ``gmm`` (default), ``quantile`` or ``otsu`` (see module docstring).
        min_separation: Ashman's D needed to accept two modes.
        min_gap: smallest distance between the two means (score units; log10 decades by default).
        min_share: smallest share of the robust component to accept it.
        var_floor: variance floor of the mixture (about the score's resolution squared; the default
            suits log10 radii from a 4-round geometric bisection, steps of 0.13 decades).
        **options: rule options (``quantile=0.5`` for ``quantile``).

    Returns:
        SplitResult.
    """
    rule = SPLITS.get(method)
    t = torch.as_tensor(scores).detach().float().cpu()
    x = t.numpy().astype(np.float64)
    if x.size < 4:
        mix = Mixture2(1.0, float(x.mean()) if x.size else 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0)
        return SplitResult(torch.zeros(t.shape[0], dtype=torch.bool), math.inf, False, mix, method)
    mix = fit_mixture2(x, var_floor=var_floor)
    bimodal = (mix.bic2 < mix.bic1 and mix.separation >= min_separation and mix.mu1 - mix.mu0 >= min_gap
               and mix.w1 >= min_share)
    if not bimodal:
        return SplitResult(torch.zeros(t.shape[0], dtype=torch.bool), math.inf, False, mix, method)
    thr = float(rule(x, mix, **options))
    return SplitResult(t > thr, thr, True, mix, method)
