"""Batched, budgeted L-infinity PGD against a teacher in its raw input range.

Used by the NTL robustness probe and by the ATEsc defense (Adversarial Trap Escaping, Hong et al.,
ICML 2025). The paper attacks every synthetic batch
with k-step PGD but does not publish epsilon, step size, steps or norm; our reconstruction
(documented in ``docs/ntl.md``) is L-infinity PGD (Madry et al., ICLR 2018) in the teacher's raw pixel
space ``spec.value_range``:

* ``eps`` is given as a *fraction of the value range* (8/255 means 8 grey levels whatever the range)
  and may differ per sample (a tensor of shape ``(B,)``), which the bisection below relies on.
* the step size defaults to ``2.5 * eps / steps`` (Madry's rule; 2/255 for eps 8/255 and 10 steps).
* the objective is cross-entropy against the teacher's own clean label (``loss="ce"``, used to find
  label flips) or ``KL(T(x) || T(x_adv))`` (``loss="kl"``, used for the fixed-eps robustness score);
  KL PGD needs a random start because its gradient vanishes at ``x``.

Threat assumption: white-box gradient access to the teacher (we hold its weights); the teacher is
frozen and in eval mode, so PGD never changes BatchNorm statistics.

Outputs are tensors; every function also reports how many teacher image passes it spent
(forward+backward of one image = one pass) so probes can fill their ``Budget``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PGDResult", "pgd", "min_flip_eps", "kl_at_eps", "as_eps_tensor"]


@dataclass
class PGDResult:
    """Result of one PGD run.

    Attributes:
        x_adv: adversarial images (raw range), the last iterate, or the first label-flipping iterate
            when ``keep_first_flip`` is set.
        flipped: bool ``(B,)`` -- some iterate changed the teacher's argmax away from ``labels``.
        logits_adv: teacher logits on ``x_adv``.
        passes: teacher image passes spent.
        logits_clean: teacher logits on the clean ``x`` (computed once, at the start).
    """

    x_adv: Tensor
    flipped: Tensor
    logits_adv: Tensor
    passes: int
    logits_clean: Tensor | None = None


def as_eps_tensor(eps: float | Tensor, n: int, value_range: tuple[float, float], device: torch.device) -> Tensor:
    """Per-sample epsilon in raw units, shape ``(n, 1, 1, 1)``, from a fraction of the value range."""
    span = float(value_range[1]) - float(value_range[0])
    e = torch.as_tensor(eps, dtype=torch.float32, device=device)
    if e.ndim == 0:
        e = e.expand(n)
    if e.shape != (n,):
        raise ValueError(f"eps must be a scalar or have shape ({n},), got {tuple(e.shape)}")
    return (e * span).view(n, 1, 1, 1)


def _objective(logits: Tensor, labels: Tensor, p_clean: Tensor | None, loss: str) -> Tensor:
    if loss == "ce":
        return F.cross_entropy(logits, labels, reduction="sum")
    if loss == "kl":
        assert p_clean is not None
        logq = F.log_softmax(logits, dim=1)
        return (p_clean * (torch.log(p_clean.clamp_min(1e-12)) - logq)).sum()
    raise ValueError(f"unknown PGD loss {loss!r} (choose 'ce' or 'kl')")


def pgd(model: nn.Module, x: Tensor, eps: float | Tensor, *, steps: int = 10,
        step_size: float | Tensor | None = None, labels: Tensor | None = None,
        value_range: tuple[float, float] = (0.0, 1.0), random_start: bool = True, loss: str = "ce",
        keep_first_flip: bool = False, generator: torch.Generator | None = None) -> PGDResult:
    """Untargeted L-infinity PGD maximising ``loss`` w.r.t. the teacher's clean prediction.

    Args:
        model: raw-input teacher wrapper (``teacher.model``), frozen, eval mode.
        x: raw images ``(B, C, H, W)`` inside ``value_range``.
        eps: radius as a fraction of the value range, scalar or per-sample ``(B,)``.
        steps: PGD iterations (default 10).
        step_size: fraction of the value range per step; default ``2.5 * eps / steps``.
        labels: labels to move away from; default the teacher's argmax on ``x``.
        value_range: raw pixel range; iterates are clipped to it.
        random_start: start from a uniform point of the ball (needed for ``loss="kl"``).
        loss: ``"ce"`` (label flip) or ``"kl"`` (output divergence).
        keep_first_flip: return, per sample, the first iterate that flipped the label.
        generator: torch RNG for the random start (repeatability).

    Returns:
        PGDResult.
    """
    if steps < 1:
        raise ValueError("PGD needs steps >= 1")
    x = x.detach()
    n = x.shape[0]
    lo, hi = float(value_range[0]), float(value_range[1])
    e = as_eps_tensor(eps, n, value_range, x.device)
    if step_size is None:
        a = 2.5 * e / steps
    else:
        a = as_eps_tensor(step_size, n, value_range, x.device)
    passes = 0
    with torch.no_grad():
        clean_logits = model(x)
        passes += n
        if labels is None:
            labels = clean_logits.argmax(1)
        p_clean = F.softmax(clean_logits, 1) if loss == "kl" else None
    if random_start:
        noise = torch.rand(x.shape, generator=generator, device="cpu").to(x.device) * 2 - 1
        x_adv = (x + noise * e).clamp(lo, hi)
    else:
        x_adv = x.clone()
    flipped = torch.zeros(n, dtype=torch.bool, device=x.device)
    best = x_adv.clone()
    with torch.enable_grad():
        for _ in range(steps):
            x_adv.requires_grad_(True)
            logits = model(x_adv)
            obj = _objective(logits, labels, p_clean, loss)
            (g,) = torch.autograd.grad(obj, x_adv)
            passes += n
            with torch.no_grad():
                now = logits.argmax(1) != labels
                if keep_first_flip:
                    new = now & ~flipped
                    best[new] = x_adv.detach()[new]
                flipped |= now
                x_adv = x_adv.detach() + a * g.sign()
                x_adv = torch.max(torch.min(x_adv, x + e), x - e).clamp(lo, hi)
    with torch.no_grad():
        logits_adv = model(x_adv)
        passes += n
        now = logits_adv.argmax(1) != labels
        if keep_first_flip:
            new = now & ~flipped
            best[new] = x_adv[new]
            keep = ~flipped & ~now
            best[keep] = x_adv[keep]
            x_out = best
            logits_adv = model(x_out)
            passes += n
        else:
            x_out = x_adv
        flipped |= now
    return PGDResult(x_adv=x_out.detach(), flipped=flipped, logits_adv=logits_adv.detach(), passes=passes,
                     logits_clean=clean_logits)


def min_flip_eps(model: nn.Module, x: Tensor, *, eps_max: float = 32 / 255, eps_min: float = 0.25 / 255,
                 bisection_steps: int = 5, pgd_steps: int = 7, value_range: tuple[float, float] = (0.0, 1.0), batch_size: int = 256,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, int]:
    """Smallest L-infinity radius that flips the teacher's label, per sample, by bisection.

    First PGD at ``eps_max``; samples that do not flip are *censored* (robust beyond ``eps_max``) and
    get ``eps_max``. The others are bisected *geometrically* (robustness spans orders of magnitude)
    on ``[eps_min, eps_max]`` for ``bisection_steps`` rounds, each round a batched PGD with per-sample
    radius; the returned value is the upper end of the final bracket (a radius at which a flip was
    found), so the resolution is a factor ``(eps_max / eps_min) ** (1 / 2**bisection_steps)``.

    Args:
        model: raw-input teacher wrapper.
        x: raw images.
        eps_max: largest radius tried (fraction of the value range, default 32/255).
        eps_min: lower end of the bracket (default 0.25/255).
        bisection_steps: halvings of the bracket (resolution ``eps_max / 2**k``).
        pgd_steps: PGD iterations per trial.
        value_range: raw pixel range.
        batch_size: images per PGD call.
        generator: RNG for PGD random starts.

    Returns:
        ``(eps, censored, passes)``: radii ``(B,)`` as fractions of the range, bool ``(B,)``, passes.
    """
    outs, cens, passes = [], [], 0
    for xb in x.split(batch_size):
        nb = xb.shape[0]
        with torch.no_grad():
            labels = model(xb).argmax(1)
        passes += nb
        r = pgd(model, xb, eps_max, steps=pgd_steps, labels=labels, value_range=value_range,
                generator=generator)
        passes += r.passes
        flipped = r.flipped
        lo = torch.full((nb,), float(eps_min), device=xb.device)
        hi = torch.full((nb,), float(eps_max), device=xb.device)
        idx = flipped.nonzero().flatten()
        for _ in range(bisection_steps if idx.numel() else 0):
            mid = torch.sqrt(lo[idx] * hi[idx])
            rr = pgd(model, xb[idx], mid, steps=pgd_steps, labels=labels[idx], value_range=value_range,
                     generator=generator)
            passes += rr.passes
            hi[idx] = torch.where(rr.flipped, mid, hi[idx])
            lo[idx] = torch.where(rr.flipped, lo[idx], mid)
        outs.append(hi)
        cens.append(~flipped)
    return torch.cat(outs), torch.cat(cens), passes


def kl_at_eps(model: nn.Module, x: Tensor, *, eps: float = 8 / 255, steps: int = 10,
              value_range: tuple[float, float] = (0.0, 1.0), batch_size: int = 256,
              generator: torch.Generator | None = None) -> tuple[Tensor, int]:
    """``KL(T(x) || T(x_adv))`` per sample after KL-maximising PGD of radius ``eps``.

    Small values mean the teacher's output barely moves inside the ball: a robust sample.

    Returns:
        ``(kl, passes)`` with ``kl`` of shape ``(B,)`` (nats).
    """
    outs, passes = [], 0
    for xb in x.split(batch_size):
        r = pgd(model, xb, eps, steps=steps, value_range=value_range, loss="kl", generator=generator)
        passes += r.passes
        with torch.no_grad():
            p = F.softmax(r.logits_clean, 1)  # the attack's own clean pass: no second forward
            logq = F.log_softmax(r.logits_adv, 1)
            outs.append((p * (torch.log(p.clamp_min(1e-12)) - logq)).sum(1).clamp_min(0))
    return torch.cat(outs), passes
