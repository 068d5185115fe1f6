"""Tiny teachers and students trained in seconds, for tests, examples and smoke benchmarks.

Not a zoo: the zoo builds the real test bench. These exist so engine tests need no cached files.
"""

from __future__ import annotations

import os
import signal

import torch
import torch.nn.functional as F
from torch import nn

from teacher_audit.intake.spec import InputSpec
from teacher_audit.synth.hooks import BatchContext, Hook
from teacher_audit.teacher import Teacher

FMNIST_SPEC = dict(channels=1, height=28, width=28, value_range=(0.0, 1.0), mean=(0.286,), std=(0.353,))


class TinyCNN(nn.Module):
    """Two conv layers (optionally with BatchNorm), global pooling, a linear classifier (~6 k params)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, bn: bool = True, width: int = 16):
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width // 2, 3, padding=1), norm(width // 2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width // 2, width, 3, padding=1), norm(width), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def random_teacher(bn: bool = True, seed: int = 0, sharpness: float = 8.0) -> Teacher:
    """An untrained TinyCNN made confident: BN statistics calibrated on smooth random images and the
    classifier scaled by ``sharpness``. Costs no training and no data; deterministic for ``seed``."""
    spec = InputSpec(**FMNIST_SPEC)  # type: ignore[arg-type]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = TinyCNN(bn=bn)
        x = F.interpolate(torch.rand(256, 1, 7, 7), size=(28, 28), mode="bilinear", align_corners=False)
        if bn:
            net.train()
            for m in net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.momentum = None  # cumulative average over the calibration batches
            with torch.no_grad():
                for i in range(0, 256, 64):
                    net((x[i:i + 64] - spec.mean[0]) / spec.std[0])
        with torch.no_grad():
            net.classifier.weight.mul_(sharpness)
    net.eval()
    return Teacher.from_net(net, spec, arch="tinycnn")


def tiny_teacher(bn: bool = True, n_train: int = 2000, epochs: int = 2, seed: int = 0) -> Teacher:
    """A TinyCNN trained for a few seconds on ``n_train`` Fashion-MNIST images (Debian package).

    Falls back to a fixed random teacher with sharpened logits when the dataset is missing.
    """
    spec = InputSpec(**FMNIST_SPEC)  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = TinyCNN(bn=bn)
    try:
        from teacher_audit.data import load_dataset

        data = load_dataset("fashion-mnist", "train", limit=n_train)
        x, y = (data.x - spec.mean[0]) / spec.std[0], data.y
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        net.train()
        for _ in range(epochs):
            perm = torch.randperm(x.shape[0], generator=g)
            for i in range(0, x.shape[0], 64):
                idx = perm[i:i + 64]
                loss = F.cross_entropy(net(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    except Exception:  # noqa: BLE001 - dataset not installed: keep the random teacher
        pass
    net.eval()
    return Teacher.from_net(net, spec, arch="tinycnn")


class InterruptAt(Hook):
    """Sends SIGINT to this process during the ``at``-th student batch, as a user's Ctrl-C would."""

    def __init__(self, at: int):
        self.at, self.n = at, 0

    def on_batch(self, ctx: BatchContext) -> None:
        if ctx.phase == "student":
            self.n += 1
            if self.n == self.at:
                os.kill(os.getpid(), signal.SIGINT)
