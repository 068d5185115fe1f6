"""Helpers shared by the backdoor probes: budgets, synthetic samples, statistics, evidence.

Not a probe (registers nothing). Keeps the probe modules to their one job.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from teacher_audit.report.model import Evidence
from teacher_audit.teacher import Teacher


@dataclass
class Clock:
    """Wall-clock and teacher-pass accounting for one probe run."""

    limit_seconds: float | None = None
    passes: int = 0

    def __post_init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def out_of_time(self) -> bool:
        return self.limit_seconds is not None and self.seconds > self.limit_seconds


def value_range(teacher: Teacher) -> tuple[float, float]:
    lo, hi = teacher.spec.value_range
    return float(lo), float(hi)


def has_bn_prior(teacher: Teacher, engine: Any = None) -> bool:
    """True when synthesis can use BatchNorm statistics (the engine says so, else BN modules exist)."""
    if engine is not None and hasattr(engine, "bn_prior_available"):
        return bool(engine.bn_prior_available)
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in teacher.model.modules())


def uniform_images(teacher: Teacher, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` images drawn uniformly from the teacher's raw value range."""
    lo, hi = value_range(teacher)
    x = torch.rand((n, *teacher.spec.shape), generator=gen)
    return (lo + (hi - lo) * x).to(teacher.device)


def synthetic_samples(teacher: Teacher, engine: Any, n: int, steps: int | None, seed: int,
                      clock: Clock) -> tuple[torch.Tensor, str]:
    """Synthetic samples for a probe: the engine's generator when there is one, else class-conditional
    pixel optimisation from noise (a DeepInversion-style fallback without any BN prior).

    Returns the images (raw range, on the teacher's device) and where they came from.
    """
    if engine is not None and hasattr(engine, "synthesize"):
        before = int(getattr(engine, "passes", 0))
        x = engine.synthesize(n, steps=steps)
        clock.passes += int(getattr(engine, "passes", 0)) - before
        return x.detach().to(teacher.device), "engine"
    return class_conditional(teacher, n, steps or 30, seed, clock), "pixel-optimisation"


def class_conditional(teacher: Teacher, n: int, steps: int, seed: int, clock: Clock) -> torch.Tensor:
    """Noise images pushed for ``steps`` Adam steps towards a balanced set of classes."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = value_range(teacher)
    k = teacher.spec.num_classes
    y = (torch.arange(n) % k).to(teacher.device)
    z = torch.logit(torch.rand((n, *teacher.spec.shape), generator=g).clamp(0.05, 0.95)).to(teacher.device)
    z.requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.1)
    for _ in range(steps):
        x = lo + (hi - lo) * torch.sigmoid(z)
        loss = torch.nn.functional.cross_entropy(teacher.model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        clock.passes += n
    return (lo + (hi - lo) * torch.sigmoid(z)).detach()


def robust_z(values: np.ndarray, idx: int, low_is_anomalous: bool = False, min_mad: float = 0.0) -> float:
    """Neural-Cleanse-style anomaly index of ``values[idx]`` against the others: |v - median| / (1.4826 MAD).

    ``min_mad`` floors the spread (several equal values, e.g. masks that never flipped, would make it 0).
    """
    others = np.delete(values, idx)
    med = float(np.median(others))
    mad = float(np.median(np.abs(others - med))) * 1.4826
    mad = max(mad, min_mad, 1e-6 * max(1.0, abs(med)), 1e-9)
    d = (med - values[idx]) if low_is_anomalous else (values[idx] - med)
    return float(d / mad)


def excess_share(share: float, k: int) -> float:
    """``(share - 1/k) / (1 - 1/k)``: 0 for a uniform spread over ``k`` classes, 1 for all in one."""
    return (share - 1.0 / k) / (1.0 - 1.0 / k)


def safe_log10_p(p: float) -> float:
    """-log10 of a p-value, finite even for p == 0."""
    return float(-math.log10(max(p, 1e-300)))


def png_evidence(name: str, caption: str, images: torch.Tensor, kind: str = "grid") -> Evidence | None:
    """An image ``Evidence``; uses the report engineer's plot helpers when present, else a plain PNG."""
    try:
        from teacher_audit.report import plots  # type: ignore[attr-defined]

        fn = plots.trigger_png if kind == "trigger" else plots.image_grid_png
        png = fn(images.detach().cpu())
    except Exception:  # noqa: BLE001 - evidence is best effort; fall back to our own grid
        png = _grid_png(images.detach().cpu())
    if not png:
        return None
    return Evidence(name=name, kind="image", caption=caption, png=png)


def _grid_png(images: torch.Tensor) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = images.float()
    if x.dim() == 3:
        x = x.unsqueeze(0)
    x = x - x.amin(dim=(1, 2, 3), keepdim=True)
    x = x / x.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-8)
    n = x.shape[0]
    cols = min(8, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.2, rows * 1.2), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            img = x[i].permute(1, 2, 0).numpy()
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", dpi=80)
    plt.close(fig)
    return buf.getvalue()
