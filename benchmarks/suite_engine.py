"""Engine suite: data-free KD on a clean Fashion-MNIST teacher, engine overhead, resume equality.

Usage (repo root; zoo teachers are read from ``zoo-cache/``)::

    .venv/bin/python benchmarks/suite_engine.py fmnist   [--presets dfq,fast,...] [--passes N] [--seconds S]
    .venv/bin/python benchmarks/suite_engine.py overhead [--nets smallcnn,wrn16_2,resnet18_cifar] [--batch 64]
    .venv/bin/python benchmarks/suite_engine.py resume   [--passes N]

Each writes its table under its own heading of ``docs/benchmarks.md`` (``## Engine: Fashion-MNIST
DFKD``, ``## Engine: overhead``, ``## Engine: resume``) with the command, date and machine, and the raw
numbers to ``zoo-cache/engine-results/<suite>.json``. Runs use ONE intra-op thread
(``torch.set_num_threads(1)``); wall time and process CPU time are both reported because the shared
2-core machine is usually busy (on an idle machine wall time ~= CPU time for one thread).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from teacher_audit.atomic import atomic_write_text  # noqa: E402
from teacher_audit.synth import PRESETS, Engine  # noqa: E402
from teacher_audit.synth.tiny import InterruptAt  # noqa: E402
from teacher_audit.teacher import Teacher  # noqa: E402

ZOO = ROOT / "zoo-cache"
RESULTS = ZOO / "engine-results"
DOC = ROOT / "docs" / "benchmarks.md"
CLEAN = "clean_smallcnn_s0"


def write_section(title: str, body: str) -> None:
    """Replace (or append) ``## title`` in docs/benchmarks.md, leaving other sections alone."""
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    block = f"## {title}\n\n{body.rstrip()}\n\n"
    pat = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pat.sub(lambda _: block, text) if pat.search(text) else text.rstrip() + "\n\n" + block
    atomic_write_text(DOC, text)


def header(argv: list[str]) -> str:
    cmd = ".venv/bin/python benchmarks/suite_engine.py " + " ".join(argv)
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0]
    return (f"Command: `{cmd}`  \nDate: {when}; machine: 2-core CPU, 1 torch thread, load average at start "
            f"{load:.1f} (shared with other jobs).\n")


def save_json(name: str, data: Any) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / f"{name}.json", json.dumps(data, indent=2) + "\n")


def load_clean() -> Teacher:
    from teacher_audit.intake.load import load_teacher

    path = ZOO / f"{CLEAN}.safetensors"
    if not path.exists():
        sys.exit(f"missing {path}: build the zoo first")
    return load_teacher(path)[0]


# ----------------------------------------------------------------------------- fmnist
def fmnist(args: argparse.Namespace, argv: list[str]) -> None:
    """One run per preset; each writes ``fmnist-<preset>.json``; the table is rendered from all of them,
    so presets can run in separate (parallel) invocations."""
    from teacher_audit.data import load_dataset
    from teacher_audit.distill import Evaluator

    teacher = load_clean()
    test = load_dataset("fashion-mnist", "test", spec=teacher.spec)
    full = Evaluator(test.x, test.y, teacher.spec.value_range)
    curve = Evaluator(test.x[:2000], test.y[:2000], teacher.spec.value_range)
    t_acc = full(teacher.model)["acc"]
    for name in args.presets.split(","):
        cfg = PRESETS.get(name)()
        for kv in args.set or []:
            k, v = kv.split("=", 1)
            setattr(cfg, k, json.loads(v))
        c0 = time.process_time()
        engine = Engine(teacher, cfg, device="cpu", seed=args.seed)

        def ev(s: torch.nn.Module) -> dict[str, float]:
            out = {**curve(s), "cpu_seconds": round(time.process_time() - c0, 1)}
            print(f"  {name}: passes {engine.passes} cpu {out['cpu_seconds']} s acc {100 * out['acc']:.2f}",
                  flush=True)
            return out

        res = engine.run(budget_passes=args.passes, budget_seconds=args.seconds, progress=False, evaluate=ev,
                         eval_every_passes=max(1, (args.passes or 40000) // args.points))
        cpu = time.process_time() - c0
        acc = full(res.student)["acc"]
        curve_pts = [(h["passes"], h["acc"], h["cpu_seconds"]) for h in res.history if h["kind"] == "eval"]
        save_json(f"fmnist-{name}-{res.passes // 1000}k", {
            "preset": name, "command": argv, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="minutes"),
            "load_at_start": os.getloadavg()[0], "overrides": args.set or [], "config": cfg.to_dict(),
            "passes": res.passes, "wall_seconds": res.seconds, "cpu_seconds": cpu, "student_acc": acc,
            "teacher_acc": t_acc, "curve": curve_pts})
        print(f"{name}: student {100 * acc:.2f} % (teacher {100 * t_acc:.2f} %), {res.passes} passes, "
              f"{res.seconds:.0f} s wall, {cpu:.0f} s CPU", flush=True)
    render_fmnist(argv, t_acc)


def render_fmnist(argv: list[str], t_acc: float | None = None) -> None:
    """(Re)write the Fashion-MNIST section from every ``fmnist-*.json`` result file."""
    files = sorted(RESULTS.glob("fmnist-*.json"))
    if t_acc is None:
        t_acc = json.loads(files[0].read_text())["teacher_acc"] if files else float("nan")
    rows = []
    for f in files:
        r = json.loads(f.read_text())
        pts = ", ".join(f"{p / 1000:.0f}k/{c:.0f}s: {100 * a:.1f}" for p, a, c in r["curve"])
        over = " ".join(r["overrides"]) or "—"
        rows.append(f"| {r['preset']} | {over} | {r['passes']} | {r['wall_seconds']:.0f} | {r['cpu_seconds']:.0f} | "
                    f"{100 * r['student_acc']:.2f} | {100 * r['student_acc'] / r['teacher_acc']:.1f} | {pts} | "
                    f"`{' '.join(r['command'])}` |")
    body = header(argv) + (
        f"\nTeacher `zoo-cache/{CLEAN}` (smallcnn, ACC {100 * t_acc:.2f} % on the 10,000-image test set); student "
        "smallcnn from random init; no real image is used for training. *Student ACC*: full test set. *Curve*: "
        "student ACC on the first 2,000 test images at `passes/CPU seconds` points. One torch thread, so CPU "
        "seconds approximate the wall time on an idle machine; wall seconds here include waiting for the other "
        "jobs of a shared, overloaded machine.\n\n"
        "| preset | overrides | teacher passes | wall s | CPU s | student ACC % | % of teacher | curve (passes/CPU s: ACC %) | arguments |\n"
        "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    write_section("Engine: Fashion-MNIST DFKD", body)


# ----------------------------------------------------------------------------- overhead
def _raw_bn_loss(teacher: torch.nn.Module) -> tuple[list[torch.Tensor], list[Any]]:
    store: list[torch.Tensor] = []
    handles = []
    for m in teacher.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            def hook(mod: Any, inp: Any, out: Any) -> None:
                f = inp[0]
                store.append(torch.norm(f.mean((0, 2, 3)) - mod.running_mean, 2)
                             + torch.norm(f.var((0, 2, 3), unbiased=False) - mod.running_var, 2))
            handles.append(m.register_forward_hook(hook))
    return store, handles


def overhead(args: argparse.Namespace, argv: list[str]) -> None:
    from teacher_audit.intake.archs import ARCHS, build_arch
    from teacher_audit.synth.generator import Generator
    from teacher_audit.synth.students import default_student_arch

    rows, raw = [], {}
    for arch in args.nets.split(","):
        c = 1 if arch == "smallcnn" else 3
        spec = ARCHS.get(arch).default_spec(10, c)
        spec.height = spec.width = 28 if arch == "smallcnn" else 32
        torch.manual_seed(0)
        teacher = Teacher.from_net(build_arch(arch, 10, c).eval(), spec, arch=arch)
        cfg = PRESETS.get("dfq")()
        cfg.batch_size, cfg.gen_steps, cfg.kd_steps, cfg.log_every = args.batch, 1, 1, 10**9
        cfg.lr_schedule = "constant"
        engine = Engine(teacher, cfg, device="cpu", seed=0)
        s_arch = default_student_arch(arch)
        # the raw loop: same networks, same losses, written out by hand
        G = Generator(spec, nz=cfg.nz, ngf=cfg.ngf)
        S = Teacher.from_net(build_arch(s_arch, 10, c), spec).model.train()
        for p in S.parameters():
            p.requires_grad_(True)
        T = teacher.model
        opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=(0.5, 0.999))
        opt_s = torch.optim.SGD(S.parameters(), lr=cfg.lr_s, momentum=0.9, nesterov=True, weight_decay=5e-4)
        store, handles = _raw_bn_loss(T)
        tau, B = cfg.temperature, args.batch

        def raw_iteration() -> None:
            store.clear()
            x = G(torch.randn(B, cfg.nz))
            t = T(x)
            S.eval()
            for p in S.parameters():
                p.requires_grad_(False)
            s = S(x)
            for p in S.parameters():
                p.requires_grad_(True)
            S.train()
            pbar = F.softmax(t, 1).mean(0)
            loss = (torch.stack(store).sum() + 0.5 * F.cross_entropy(t, t.argmax(1))
                    - 0.5 * F.kl_div(F.log_softmax(s / tau, 1), F.softmax(t / tau, 1), reduction="batchmean")
                    + 20 * (pbar * pbar.log()).sum())
            opt_g.zero_grad()
            loss.backward()
            opt_g.step()
            store.clear()
            with torch.no_grad():
                x = G(torch.randn(B, cfg.nz))
                t = T(x)
            s = S(x)
            kd = F.kl_div(F.log_softmax(s / tau, 1), F.softmax(t / tau, 1), reduction="batchmean") * tau * tau
            opt_s.zero_grad()
            kd.backward()
            opt_s.step()

        def raw_teacher_fb() -> None:
            x = torch.rand(B, *spec.shape, requires_grad=True)
            T(x).logsumexp(1).sum().backward()

        def timed(fn: Any, n: int) -> float:
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            return (time.perf_counter() - t0) / n

        def engine_iters(n: int) -> None:
            engine.run(budget_passes=engine.passes + 2 * B * n, progress=False)

        raw_iteration(), engine_iters(1), raw_teacher_fb()  # warm-up
        eng, rawt, tfb = [], [], []
        for _ in range(args.repeats):  # interleaved, so load changes hit both alike
            eng.append(timed(lambda: engine_iters(1), args.iters))
            rawt.append(timed(raw_iteration, args.iters))
            tfb.append(timed(raw_teacher_fb, args.iters))
        for h in handles:
            h.remove()
        e, r, f = statistics.median(eng), statistics.median(rawt), statistics.median(tfb)
        raw[arch] = {"engine_s_per_iter": eng, "raw_s_per_iter": rawt, "teacher_fwd_bwd_s": tfb, "batch": B,
                     "student": s_arch}
        rows.append(f"| {arch} -> {s_arch} | {B} | {2 * B / e:.0f} | {2 * B / r:.0f} | {e / r:.2f} | {B / f:.0f} |")
        print(rows[-1], flush=True)
        save_json("overhead", raw)
    body = header(argv) + (
        "\nOne DFQ iteration = one generator step (G forward, teacher forward/backward with BN-statistics hooks, "
        "student forward, loss terms bn/oh/adv/balance, Adam step) + one student KD step (G and teacher forward "
        "without grad, student forward/backward, SGD step). *Raw* is the same computation hand-written in plain "
        "torch (same networks, same losses); *overhead* = engine time / raw time (median of interleaved "
        "repeats). Images/s count the 2 x batch synthetic images per iteration. The last column is a bare "
        "teacher forward+backward on random input, for scale.\n\n"
        "| teacher -> student | batch | engine img/s | raw img/s | overhead | teacher fwd+bwd img/s |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    write_section("Engine: overhead", body)


# ----------------------------------------------------------------------------- resume

def resume(args: argparse.Namespace, argv: list[str]) -> None:
    import tempfile

    teacher = load_clean()
    rows = []
    for name in args.presets.split(","):
        def make() -> Engine:
            return Engine(teacher, PRESETS.get(name)(), device="cpu", seed=args.seed)

        ref = make().run(budget_passes=args.passes, progress=False)
        with tempfile.TemporaryDirectory() as d:
            first = make()
            try:
                first.run(budget_passes=args.passes, progress=False, checkpoint_dir=d, hooks=[InterruptAt(at=args.kill_at)])
                killed_at = None
            except KeyboardInterrupt:
                killed_at = first.passes
            second = make().run(budget_passes=args.passes, progress=False, checkpoint_dir=d, resume=True)
        diffs = [float((a.float() - b.float()).abs().max()) for a, b in
                 zip(ref.student.state_dict().values(), second.student.state_dict().values())]
        same = all(torch.equal(a, b) for a, b in zip(ref.student.state_dict().values(),
                                                      second.student.state_dict().values()))
        rows.append(f"| {name} | {args.passes} | {killed_at} | {second.passes} | {max(diffs):.1e} | "
                    f"{'yes' if same else 'NO'} |")
        print(rows[-1], flush=True)
    body = header(argv) + (
        f"\nTeacher `zoo-cache/{CLEAN}`, student smallcnn, seed {args.seed}, CPU. The first run receives SIGINT "
        f"(as from Ctrl-C) during its {args.kill_at}th student batch, stops at the next iteration boundary and "
        "writes its checkpoint; a freshly built engine resumes from it. Compared with an uninterrupted run "
        "of the same budget: max abs difference over every student parameter and buffer.\n\n"
        "| preset | budget (passes) | interrupted at (passes) | resumed run ended at | max abs diff | bit-identical |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    write_section("Engine: resume", body)


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="suite", required=True)
    a = sub.add_parser("fmnist")
    a.add_argument("--presets", default="dfq,fast,zskt,dfad,dafl,cmi")
    a.add_argument("--passes", type=int, default=None)
    a.add_argument("--seconds", type=float, default=None)
    a.add_argument("--points", type=int, default=8)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--set", action="append", help="override an EngineConfig field, KEY=JSON")
    b = sub.add_parser("overhead")
    b.add_argument("--nets", default="smallcnn,wrn16_2,resnet18_cifar")
    b.add_argument("--batch", type=int, default=64)
    b.add_argument("--iters", type=int, default=2)
    b.add_argument("--repeats", type=int, default=3)
    sub.add_parser("table", help="re-render the Fashion-MNIST table from the saved result files")
    c = sub.add_parser("resume")
    c.add_argument("--presets", default="dfq,fast")
    c.add_argument("--passes", type=int, default=6000)
    c.add_argument("--kill-at", type=int, default=12)
    c.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.suite == "table":
        render_fmnist(argv)
        return
    {"fmnist": fmnist, "overhead": overhead, "resume": resume}[args.suite](args, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
