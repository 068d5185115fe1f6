"""Unseen architectures: the scan's verdict on ONNX teachers of architectures the tool has no builder for.

Usage (from the repo root)::

    .venv/bin/python benchmarks/suite_unseen_archs.py [--out DIR] [--write-docs] [--notes FILE]

Trains Fashion-MNIST teachers of two architectures that are not in ``teacher_audit.intake.archs`` and
have no BatchNorm -- a GroupNorm/SiLU CNN and a 3-layer vision transformer (4x4 patches) -- clean and with
an all-to-one backdoor (10 % poisoned), exports each to ONNX (opset 17, dynamic batch), and scans the file
exactly as a user would (``teacher-audit scan FILE --json``, default policy and budgets, one torch thread;
the reports are cached in ``<out>/scans/``). The ground truth goes to ``<name>.truth.json``, which the
scan never reads. Nothing here feeds back into thresholds: the probes were calibrated on the zoo's
smallcnn (BatchNorm) and LeNet-5 teachers only. Training is resumable: an existing ``.onnx`` is kept.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from suite_heldout import scan, write_table  # noqa: E402

from teacher_audit.atomic import atomic_write_text  # noqa: E402
from teacher_audit.data.datasets import load_raw  # noqa: E402
from teacher_audit.zoo.triggers import apply, make_spec, spec_to_dict  # noqa: E402


class GroupNormCNN(nn.Module):
    """Three 3x3 conv blocks with GroupNorm and SiLU, global average pooling."""

    def __init__(self, k: int = 10):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.SiLU(), nn.MaxPool2d(2),
                               nn.Conv2d(32, 64, 3, padding=1), nn.GroupNorm(8, 64), nn.SiLU(), nn.MaxPool2d(2),
                               nn.Conv2d(64, 64, 3, padding=1), nn.GroupNorm(8, 64), nn.SiLU(),
                               nn.AdaptiveAvgPool2d(1))
        self.h = nn.Linear(64, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.h(torch.flatten(self.f(x), 1))


class TinyViT(nn.Module):
    """4x4 patches (49 tokens), 3 pre-norm encoder layers of width 64, mean-pooled head."""

    def __init__(self, k: int = 10, d: int = 64):
        super().__init__()
        self.p = nn.Conv2d(1, d, 4, 4)
        self.pos = nn.Parameter(torch.randn(1, 49, d) * .02)
        layer = nn.TransformerEncoderLayer(d, 4, 128, dropout=0.0, batch_first=True, activation="gelu",
                                           norm_first=True)
        self.enc = nn.TransformerEncoder(layer, 3, enable_nested_tensor=False)
        self.n, self.h = nn.LayerNorm(d), nn.Linear(d, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.p(x).flatten(2).transpose(1, 2) + self.pos
        return self.h(self.n(self.enc(z)).mean(1))


ARCHS = {"gnnet": (GroupNormCNN, 2e-3), "vit": (TinyViT, 1e-3)}
#: kind -> (trigger, target); a SIG frequency, patch corner and blend pattern the zoo does not use
BACKDOORS = {"sig": (make_spec("sig", params={"f": 5.0}), 4), "square": (make_spec("badnets_square", size=3,
             position="tl"), 3), "blend": (make_spec("blend", seed=7), 6)}
TEACHERS = [("gnnet", "clean", 0), ("gnnet", "clean", 1), ("gnnet", "sig", 0), ("gnnet", "blend", 1),
            ("vit", "clean", 0), ("vit", "clean", 1), ("vit", "square", 0), ("vit", "sig", 1)]
EPOCHS = 3


def train(arch: str, kind: str, seed: int, out: Path) -> Path:
    """Train one teacher (3 epochs, Adam + one-cycle), export it to ONNX; returns the ONNX path."""
    path = out / f"{arch}_{kind}_s{seed}.onnx"
    if path.exists():
        return path
    torch.manual_seed(seed)
    cls, lr = ARCHS[arch]
    m = cls()
    tr, te = load_raw("fashion-mnist", "train"), load_raw("fashion-mnist", "test")
    xtr, ytr = tr.x.float() / 255, tr.y.clone()
    xte, yte = te.x.float() / 255, te.y
    trig, target = BACKDOORS.get(kind, (None, None))
    if trig is not None:
        idx = torch.randperm(len(ytr), generator=torch.Generator().manual_seed(seed))[: len(ytr) // 10]
        xtr[idx] = apply(xtr[idx], trig)
        ytr[idx] = target
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=EPOCHS * (len(ytr) // 128 + 1))
    t0 = time.time()
    for ep in range(EPOCHS):
        m.train()
        perm = torch.randperm(len(ytr))
        for i in range(0, len(ytr), 128):
            b = perm[i:i + 128]
            loss = F.cross_entropy(m(xtr[b]), ytr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    m.eval()
    with torch.no_grad():
        acc = float((torch.cat([m(xte[i:i + 1000]).argmax(1) for i in range(0, len(yte), 1000)]) == yte).float().mean())
        asr = None
        if trig is not None:
            xt = apply(xte[yte != target][:3000], trig)
            asr = float((m(xt).argmax(1) == target).float().mean())
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".onnx.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (xte[:1],), str(tmp), dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}})
    truth = {"arch": arch, "kind": "clean" if trig is None else "backdoor", "target": target, "acc": acc, "asr": asr,
             "trigger": spec_to_dict(trig) if trig else None, "train_seconds": round(time.time() - t0, 1)}
    atomic_write_text(Path(str(path)[:-5] + ".truth.json"), json.dumps(truth, indent=1))
    tmp.replace(path)
    print(f"trained {path.name}: acc {acc:.3f} asr {asr}", flush=True)
    return path


def row(path: Path, report: dict[str, Any]) -> str:
    t = json.loads(Path(str(path)[:-5] + ".truth.json").read_text())
    probes = {p["probe"]: p for p in report.get("probes", [])}
    bd, ntl = probes.get("backdoor", {}), probes.get("ntl_robustness", {})
    z = (bd.get("details") or {}).get("z") or {}
    lead = max(z, key=z.get) if z else "–"
    trig = t.get("trigger") or {}
    what = "–" if not trig else trig["name"] + (f" @{trig['position']}" if trig["name"] == "badnets_square" else "")

    def cell(p: dict[str, Any], with_target: bool) -> str:
        if not p or p.get("score") is None:
            return "–"
        c = f"{p['score']:.2f}{' **flagged**' if p.get('flagged') else ''}"
        return c + (f", class {p.get('target_class')}" if with_target and p.get("flagged") else "")

    right = (bool(bd.get("flagged")) and bd.get("target_class") == t["target"] if t["kind"] == "backdoor"
             else not (bd.get("flagged") or ntl.get("flagged")))
    quality = f"{100 * t['acc']:.1f}" + (f" / {100 * t['asr']:.1f}" if t.get("asr") is not None else "")
    return (f"| {path.name} | {t['kind']} | {what} | {t['target'] if t['target'] is not None else '–'} | {quality} | "
            f"{cell(bd, True)} | {lead} | {cell(ntl, False)} | {(report.get('verdict') or {}).get('status', '?')} "
            f"(exit {report['_meta']['rc']}) | {'yes' if right else 'no'} | {report['_meta']['seconds']:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "zoo-unseen"))
    ap.add_argument("--notes", default="", help="Markdown file appended to the docs section")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    lines = ["| file | kind | trigger | target | teacher ACC / ASR | backdoor fused z | lead component | NTL score | "
             "verdict | right | scan s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for arch, kind, seed in TEACHERS:
        path = train(arch, kind, seed, out)
        lines.append(row(path, scan(path, out / "scans")))
        print(lines[-1], flush=True)
    if args.write_docs:
        write_table("Unseen architectures (ONNX)", "suite_unseen_archs.py",
                    "ONNX teachers of two architectures the tool has no builder for and that have no BatchNorm "
                    "(`gnnet`: GroupNorm/SiLU CNN; `vit`: 3-layer vision transformer), trained here on Fashion-MNIST "
                    "for 3 epochs; none was used to set a threshold. 'right' = backdoored: flagged with the true "
                    "target; clean: neither probe flags it. Default policy, budgets and preset.", lines, args.notes)


if __name__ == "__main__":
    main()
