"""Training and measurement primitives shared by the zoo recipes (CPU-friendly, deterministic seeds).

Everything trains the raw-input wrapper :class:`~teacher_audit.teacher.TeacherModel` (normalisation
inside), so triggers and domain shifts are applied in raw [0, 1] pixel space exactly as the audit sees
images. Images stay uint8 in memory and are converted per batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from teacher_audit.modes import EvalMode
from teacher_audit.teacher import TeacherModel

#: Callback receiving (done_steps, total_steps, info) for progress display.
ProgressFn = Callable[[int, int, str], None]


@dataclass
class Split:
    """uint8 NCHW images and int64 labels of one split, already in the teacher's geometry."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def floats(self, idx: torch.Tensor | slice) -> torch.Tensor:
        """Images ``idx`` as float32 in [0, 1]."""
        return self.x[idx].float().div_(255.0)


def batches(n: int, batch_size: int, steps: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """``steps`` index batches drawn epoch-wise from seeded permutations of ``range(n)``."""
    perm = torch.randperm(n, generator=gen)
    pos = 0
    for _ in range(steps):
        if pos + batch_size > n:
            perm = torch.randperm(n, generator=gen)
            pos = 0
        yield perm[pos:pos + batch_size]
        pos += batch_size


def cosine_lr(opt: torch.optim.Optimizer, base_lr: float, step: int, total: int, warmup: int = 0) -> None:
    """Set a linear-warmup + cosine-decay learning rate for ``step`` of ``total``."""
    if warmup and step < warmup:
        lr = base_lr * (step + 1) / warmup
    else:
        t = (step - warmup) / max(1, total - warmup)
        lr = base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    for g in opt.param_groups:
        g["lr"] = lr


def penultimate_hook(net: nn.Module) -> tuple[list[torch.Tensor], torch.utils.hooks.RemovableHandle]:
    """Capture the input of the network's last ``nn.Linear`` (the penultimate features) on every forward."""
    last = None
    for m in net.modules():
        if isinstance(m, nn.Linear):
            last = m
    if last is None:
        raise ValueError("network has no nn.Linear classifier to take penultimate features from")
    store: list[torch.Tensor] = []

    def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        store.clear()
        store.append(inputs[0].flatten(1))

    return store, last.register_forward_hook(hook)


@torch.no_grad()
def predict(model: TeacherModel, x: torch.Tensor | Split, batch_size: int = 1000,
            transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Predicted labels of ``model`` (eval mode) on raw images (float [0, 1] tensor or uint8 Split)."""
    n = len(x) if isinstance(x, Split) else x.shape[0]
    out = []
    with EvalMode(model):
        for s in range(0, n, batch_size):
            xb = x.floats(slice(s, s + batch_size)) if isinstance(x, Split) else x[s:s + batch_size]
            if transform is not None:
                xb = transform(xb)
            out.append(model(xb).argmax(1))
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def accuracy(model: TeacherModel, data: Split,
             transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
    """Top-1 accuracy (0-1) on ``data``, optionally after ``transform`` of the raw images."""
    pred = predict(model, data, transform=transform)
    return float((pred == data.y).float().mean()) if len(data) else float("nan")


def attack_success_rate(model: TeacherModel, data: Split, trigger: Callable[[torch.Tensor], torch.Tensor],
                        target: int) -> float:
    """ASR (0-1): share of triggered test images whose true class is not ``target`` predicted as ``target``."""
    keep = data.y != target
    sub = Split(data.x[keep], data.y[keep])
    pred = predict(model, sub, transform=trigger)
    return float((pred == target).float().mean()) if len(sub) else float("nan")


def gaussian_mmd(a: torch.Tensor, b: torch.Tensor, kernels: int = 5) -> torch.Tensor:
    """Biased MMD^2 with a sum of ``kernels`` Gaussian kernels (bandwidth = mean pairwise sq. distance / 4,
    times 2^i), as in NTL (Wang et al., ICLR 2022)."""
    z = torch.cat([a, b])
    d2 = torch.cdist(z, z).pow(2)
    n = z.shape[0]
    bw = d2.detach().sum() / max(1, n * n - n) / (2 ** (kernels // 2))
    k = sum(torch.exp(-d2 / (bw * (2 ** i) + 1e-8)) for i in range(kernels))
    m = a.shape[0]
    return k[:m, :m].mean() + k[m:, m:].mean() - 2 * k[:m, m:].mean()


def train_steps(model: TeacherModel, steps: int, batch_size: int, lr: float, seed: int,
                loss_fn: Callable[[TeacherModel, int], tuple[torch.Tensor, str]],
                progress: ProgressFn | None = None, warmup: int = 0, weight_decay: float = 0.0) -> float:
    """Run ``steps`` Adam steps with cosine LR; ``loss_fn(model, step)`` builds each batch's loss.

    Returns:
        Wall-clock seconds spent.
    """
    torch.manual_seed(seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    model.train()
    t0 = time.perf_counter()
    every = max(1, steps // 50)
    for step in range(steps):
        cosine_lr(opt, lr, step, steps, warmup)
        loss, info = loss_fn(model, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress is not None and (step % every == 0 or step == steps - 1):
            progress(step + 1, steps, f"loss {loss.item():.3f} {info}".strip())
    model.eval()
    return time.perf_counter() - t0


def ce(model: TeacherModel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``model`` on raw images."""
    return F.cross_entropy(model(x), y)
