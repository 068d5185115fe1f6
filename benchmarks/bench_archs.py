"""Architecture registry benchmark: size, cost and forward throughput per arch; smallcnn accuracy.

Usage::

    python benchmarks/bench_archs.py --threads 2 [--train-epochs 3] [--names smallcnn,wrn16_2]

Prints a Markdown table (params, multiply-adds counted with conv/linear hooks, forward images/s at the
default input size, batch 128) and, with ``--train-epochs``, smallcnn's Fashion-MNIST test accuracy after
each epoch (Adam lr 1e-3, batch 128, no augmentation, normalised with the registry default spec).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from teacher_audit.intake.archs import ARCHS, build_arch


def count_macs(net: nn.Module, shape: tuple[int, ...]) -> int:
    """Multiply-adds of conv and linear layers for one input of ``shape`` (C, H, W)."""
    total = 0

    def hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            total += out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        net(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    return total


def throughput(net: nn.Module, shape: tuple[int, ...], batch: int, seconds: float) -> float:
    x = torch.randn(batch, *shape)
    with torch.no_grad():
        net(x)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            net(x)
            n += batch
    return n / (time.perf_counter() - start)


def train_smallcnn(epochs: int, seed: int = 0) -> list[tuple[int, float, float]]:
    from teacher_audit.data.datasets import fashion_mnist

    torch.manual_seed(seed)
    spec = ARCHS.get("smallcnn").default_spec(10, 1)
    mean, std = spec.mean[0], spec.std[0]
    train, test = fashion_mnist("train"), fashion_mnist("test")
    xtr = (train.x.float() / 255 - mean) / std
    xte = (test.x.float() / 255 - mean) / std
    net = build_arch("smallcnn", 10, 1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    rows = []
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        net.train()
        perm = torch.randperm(len(train))
        for i in range(0, len(perm), 128):
            idx = perm[i:i + 128]
            loss = F.cross_entropy(net(xtr[idx]), train.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            correct = sum(int((net(xte[i:i + 1000]).argmax(1) == test.y[i:i + 1000]).sum())
                          for i in range(0, len(test), 1000))
        rows.append((epoch, correct / len(test), time.perf_counter() - start))
        print(f"epoch {epoch}: test acc {correct / len(test):.4f}, {rows[-1][2]:.0f} s", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--names", default="")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--train-epochs", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = [n for n in args.names.split(",") if n] or ARCHS.names()
    print("| arch | input | params (M) | MACs (M) | forward img/s |")
    print("|---|---|---|---|---|")
    for name in names:
        entry = ARCHS.get(name)
        spec = entry.default_spec(10, None)
        net = build_arch(name, 10, spec.channels).eval()
        params = sum(p.numel() for p in net.parameters()) / 1e6
        macs = count_macs(net, spec.shape) / 1e6
        batch = args.batch if entry.family != "imagenet" else max(1, args.batch // 16)
        ips = throughput(net, spec.shape, batch, args.seconds)
        print(f"| {name} | {'x'.join(map(str, spec.shape))} | {params:.3f} | {macs:.1f} | {ips:,.0f} |", flush=True)
    if args.train_epochs:
        train_smallcnn(args.train_epochs)


if __name__ == "__main__":
    main()
