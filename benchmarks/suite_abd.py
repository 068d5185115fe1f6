"""ABD defense suite: teacher / DFKD / DFKD+ABD ACC and ASR per backdoor family.

Usage (from the repo root)::

    .venv/bin/python benchmarks/suite_abd.py --zoo DIR [--budget-passes 30000] [--preset fast] [--only blend]
        [--runs "dfkd=none,abd=abd:mode=hyper;sr_start=0.5"] [--cache FILE] [--cached-only] [--write-docs]

For every backdoored zoo teacher (card kind ``backdoor`` or ``clean_label``; filter with ``--only``,
a comma-separated list of name substrings), measured on the first ``--test-limit`` Fashion-MNIST test
images with the card's trigger (``teacher_audit.zoo.triggers``): ACC = clean top-1, ASR = share of
triggered non-target images classified as the target.

``--runs`` lists labelled runs ``label=defense:k=v;k=v`` (all with the same preset, engine seed and
budget). Each run is cached on its own (key: teacher, defense, options, budget, preset, seed, test
images), so the undefended DFKD baseline is distilled once and reused by every ABD variant. The table
has one column per label; the goal column compares the label ``--defended`` (default ``abd``) with
``--baseline`` (default ``dfkd``). Results go to ``--cache`` (a name inside the zoo dir or a path) and,
with ``--write-docs``, to ``docs/benchmarks.md`` under ``## ABD defense`` (``--notes`` appends a reading).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from suite_ntl import parse_options  # noqa: E402

PAPER = ("Paper (CIFAR-10, WRN-16-2 -> WRN-16-1, ZSKT vs ZSKT+ABD): BadNets grid 71.9/96.9 -> 68.3/0.7, "
         "Trojan WM 82.7/93.9 -> 78.2/22.5, Blend 77.0/74.4 -> 71.5/23.1, BadNets square 80.8/37.8 -> 77.9/1.9, "
         "CL 76.8/17.5 -> 67.4/10.2, SIG 77.9/0.0 -> 72.2/0.0; mean ASR after ABD 11.1 % at a mean cost of 6.6 ACC points.")


def acc_asr(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, xt: torch.Tensor, target: int) -> tuple[float, float]:
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)])
        keep = y != target
        pt = torch.cat([model(xt[keep][i:i + 500]).argmax(1) for i in range(0, int(keep.sum()), 500)])
    return float((pred == y).float().mean()), float((pt == target).float().mean())


def parse_runs(text: str) -> tuple[list[tuple[str, str, dict[str, Any]]], dict[str, float]]:
    """``"dfkd=none,abd@0.5=abd:mode=plain;sr_start=0.5"`` -> ``[(label, defense, options), ...]`` and the
    per-label fork fractions (``label@F``: start from the undefended run's state at F; else ``--fork``)."""
    runs, forks = [], {}
    for item in filter(None, text.split(",")):
        label, _, rest = item.partition("=")
        label, _, fork = label.partition("@")
        defense, _, opts = (rest or label).partition(":")
        runs.append((label, defense, parse_options(opts.replace(";", ","))))
        if fork:
            forks[label] = float(fork)
    return runs, forks


def run_key(name: str, defense: str, options: dict[str, Any], args: argparse.Namespace) -> str:
    fork = f":fork={args.fork}" if args.fork and defense != "none" else ""
    return (f"{name}:{defense}:{json.dumps(options, sort_keys=True)}:{args.budget_passes}:{args.preset}:"
            f"{args.seed}:{args.test_limit}{fork}")


def fork_file(args: argparse.Namespace, name: str, frac: float) -> Path:
    return Path(args.forks_dir) / f"{name}_{args.preset}_{args.budget_passes}_s{args.seed}_at{frac}.pt"


def run_engine(make: Any, name: str, hooks: list[Any], defense: str, args: argparse.Namespace) -> Any:
    """Run to the budget. Undefended runs with ``--save-forks`` pause at each fraction and keep the
    engine state there; defended runs with ``--fork F`` start from the undefended run's state at F
    (same seed and schedule, so the first F of the budget is shared and not recomputed)."""
    import shutil
    import tempfile

    from teacher_audit.synth.checkpoint import CHECKPOINT_NAME

    with tempfile.TemporaryDirectory() as tmp:
        if defense != "none" and args.fork:
            src = fork_file(args, name, args.fork)
            if not src.exists():
                raise SystemExit(f"no fork state {src}: run the undefended baseline with --save-forks {args.fork}")
            shutil.copy(src, Path(tmp) / CHECKPOINT_NAME)
            return make().run(budget_passes=args.budget_passes, hooks=hooks, progress=False, checkpoint_dir=tmp,
                              resume=True)
        fracs = sorted(float(f) for f in args.save_forks.split(",") if f) if defense == "none" else []
        for i, frac in enumerate(fracs):
            make().run(budget_passes=args.budget_passes, progress=False, checkpoint_dir=tmp, resume=i > 0,
                       pause_at_passes=int(frac * args.budget_passes))
            Path(args.forks_dir).mkdir(parents=True, exist_ok=True)
            shutil.copy(Path(tmp) / CHECKPOINT_NAME, fork_file(args, name, frac))
        return make().run(budget_passes=args.budget_passes, hooks=hooks, progress=False,
                          checkpoint_dir=tmp if fracs else None, resume=bool(fracs))


def distil_one(path: Path, defense: str, options: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """One DFKD run (with ``defense``) on the teacher at ``path``; teacher and student ACC/ASR."""
    from teacher_audit.data import load_dataset
    from teacher_audit.defenses import DEFENSES
    from teacher_audit.intake.load import LoadOptions, load_teacher
    from teacher_audit.synth import PRESETS, Engine
    from teacher_audit.zoo import triggers

    teacher, _ = load_teacher(path, LoadOptions(device="cpu"))
    gt = json.loads(Path(str(path) + ".card.json").read_text())["ground_truth"]
    data = load_dataset(gt.get("recipe", {}).get("dataset", "fashion-mnist"), "test", spec=teacher.spec,
                        limit=args.test_limit)
    trig = gt.get("trigger")
    target = int(gt["target"]) if trig else 0
    xt = triggers.apply(data.x, triggers.from_dict(trig)) if trig else data.x  # clean teacher: ASR is meaningless
    engines: list[Any] = []

    def make() -> Any:
        engines.append(Engine(teacher, PRESETS.get(args.preset)(), device="cpu", seed=args.seed))
        return engines[-1]

    opts = dict(options)
    if defense == "abd":
        opts.setdefault("budget_passes", args.budget_passes)
    hooks = DEFENSES.get(defense)(teacher, None, **opts)
    t0 = time.perf_counter()
    res = run_engine(make, path.name.removesuffix(".safetensors"), hooks, defense, args)
    engine = engines[-1]
    row: dict[str, Any] = {
        "name": path.name.removesuffix(".safetensors"), "trigger": trig["name"] if trig else "none (clean)",
        "target": target if trig else None,
        "defense": defense, "options": options, "budget_passes": args.budget_passes, "preset": args.preset,
        "seed": args.seed, "test_limit": args.test_limit,
        "teacher": acc_asr(teacher.model, data.x, data.y, xt, target),
        "student": acc_asr(res.student.eval(), data.x, data.y, xt, target),
        "seconds": round(time.perf_counter() - t0, 1), "passes": int(engine.passes),
        "fork": args.fork if defense != "none" else None,
        "notes": "; ".join(n for n in (getattr(h, "note", "") for h in hooks) if n),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return row


def read_caches(paths: list[Path]) -> dict[str, Any]:
    """Union of the run caches that exist (later files win)."""
    out: dict[str, Any] = {}
    for p in paths:
        if p.exists():
            out.update(json.loads(p.read_text()))
    return out


def sv_check(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The Shuffling Vaccine's self-check alone: a short run (``--sv-check-passes``) of the same engine
    with the ABD hooks (SR off) until SV has decided; its note and tail ratios."""
    from teacher_audit.defenses import DEFENSES
    from teacher_audit.intake.load import LoadOptions, load_teacher
    from teacher_audit.synth import PRESETS, Engine

    teacher, _ = load_teacher(path, LoadOptions(device="cpu"))
    engine = Engine(teacher, PRESETS.get(args.preset)(), device="cpu", seed=args.seed)
    hooks = DEFENSES.get("abd")(teacher, None, sr=False)
    engine.run(budget_passes=args.sv_check_passes, hooks=hooks, progress=False)
    sv = hooks[0]
    return {"decided": sv.decided, "active": sv.active, "note": sv.note or "undecided",
            "tail_ratios": [round(v, 4) for v in sv.tail_ratios]}


def goal(base: tuple[float, float] | None, defended: tuple[float, float] | None) -> str:
    """Issue 5's target: where undefended DFKD's ASR >= 20 %, ABD's ASR <= 3 % at <= 3 ACC points cost."""
    if base is None or defended is None:
        return ""
    if base[1] < 0.20:
        return "n/a (DFKD ASR < 20 %)"
    ok = defended[1] <= 0.03 and base[0] - defended[0] <= 0.03
    return "met" if ok else "not met"


def markdown(table: list[tuple[str, dict[str, dict[str, Any]]]], labels: list[tuple[str, str, dict[str, Any]]],
             args: argparse.Namespace, cmd: str, forks: dict[str, float] | None = None) -> str:
    forks = forks or {}
    f = lambda p: "" if p is None else f"{100 * p[0]:.1f} / {100 * p[1]:.1f}"  # noqa: E731
    head = " | ".join(f"{lab} ACC/ASR" for lab, _, _ in labels)
    lines = ["## ABD defense", "",
             f"Command: `{cmd}` — {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, 2-core CPU, one torch thread per run.",
             f"Preset `{args.preset}`, {args.budget_passes} teacher passes per run (SR's trigger search included), engine "
             f"seed {args.seed}, first {args.test_limit} Fashion-MNIST test images. ACC / ASR in % (ASR: triggered "
             "non-target images sent to the target).", "",
             "Runs: " + "; ".join(f"`{lab}` = {d}" + (f" ({', '.join(f'{k}={v}' for k, v in o.items())})" if o else "")
                                  + (f", from the undefended run's state at {forks.get(lab, args.fork)} of the budget"
                                     if d != "none" and forks.get(lab, args.fork) else "")
                                  for lab, d, o in labels), "",
             f"| teacher | trigger | teacher ACC/ASR | {head} | goal ({args.defended} vs {args.baseline}) | s per run | notes ({args.defended}) | SV self-check |",
             "|---|---|---|" + "---|" * len(labels) + "---|---|---|---|"]
    for name, runs in table:
        any_row = next(v for k, v in runs.items() if k != "_sv")
        cells = " | ".join(f(runs[lab]["student"]) if lab in runs else "" for lab, _, _ in labels)
        base, dfd = runs.get(args.baseline), runs.get(args.defended)
        secs = " / ".join(str(runs[lab]["seconds"]) for lab, _, _ in labels if lab in runs)
        lines.append(f"| {name} | {any_row['trigger']} | {f(any_row['teacher'])} | {cells} | "
                     f"{goal(base and base['student'], dfd and dfd['student'])} | {secs} | {(dfd or {}).get('notes', '')} | "
                     f"{runs.get('_sv', {}).get('note', '')} |")
    lines += ["", PAPER]
    if args.notes:
        lines += ["", Path(args.notes).read_text().strip()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="ABD defense suite")
    ap.add_argument("--zoo", default=str(ROOT / "zoo-cache"))
    ap.add_argument("--budget-passes", type=int, default=30_000)
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--cache", default="abd_runs.json", help="cache file (name inside the zoo dir, or a path)")
    ap.add_argument("--extra-cache", action="append", default=[], help="more cache files to read (parallel jobs)")
    ap.add_argument("--runs", default="dfkd=none,abd=abd", help="labelled runs 'label=defense:k=v;k=v', comma-separated")
    ap.add_argument("--baseline", default="dfkd")
    ap.add_argument("--defended", default="abd")
    ap.add_argument("--only", default="", help="comma-separated substrings of teacher names")
    ap.add_argument("--test-limit", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save-forks", default="", help="undefended runs keep their engine state at these budget "
                    "fractions (e.g. 0.5,0.8)")
    ap.add_argument("--fork", type=float, default=0.0, help="defended runs start from the undefended run's state at "
                    "this budget fraction (ablations; the defense acts only after it)")
    ap.add_argument("--forks-dir", default="abd-forks", help="where fork states are kept")
    ap.add_argument("--clean", action="store_true", help="clean zoo teachers instead (ACC cost only; ASR column "
                    "is the share of non-class-0 images sent to class 0)")
    ap.add_argument("--sv-check", action="store_true", help="also run SV's self-check alone per teacher (short run)")
    ap.add_argument("--sv-check-passes", type=int, default=3000)
    ap.add_argument("--notes", default="", help="Markdown file appended to the docs section")
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--cached-only", action="store_true", help="tabulate cached runs only; distil nothing new")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    zoo = Path(args.zoo)
    cache_path = zoo / args.cache
    labels, forks = parse_runs(args.runs)
    only = [s for s in args.only.split(",") if s]
    table = []
    pattern = "clean_*.safetensors" if args.clean else "backdoor_*.safetensors"
    for path in sorted(zoo.glob(pattern)):
        if only and not any(s in path.name for s in only):
            continue
        card = json.loads(Path(str(path) + ".card.json").read_text())
        if card.get("ground_truth", {}).get("kind", "clean") not in (("clean",) if args.clean else ("backdoor", "clean_label")):
            continue
        name = path.name.removesuffix(".safetensors")
        runs: dict[str, dict[str, Any]] = {}
        for label, defense, options in labels:
            rargs = argparse.Namespace(**{**vars(args), "fork": forks.get(label, args.fork)})
            key = run_key(name, defense, options, rargs)
            cache = read_caches([cache_path, *map(Path, args.extra_cache)])
            if key not in cache and not args.cached_only:
                print(f"{datetime.now(timezone.utc):%H:%M:%S} {name}: {label} ...", file=sys.stderr, flush=True)
                row = distil_one(path, defense, options, rargs)
                own = read_caches([cache_path])
                own[key] = cache[key] = row
                from teacher_audit.atomic import atomic_write_text

                atomic_write_text(cache_path, json.dumps(own, indent=1))
                print(f"  -> student ACC/ASR {row['student']}  {row['notes']}", file=sys.stderr, flush=True)
            if key in cache:
                runs[label] = cache[key]
        if args.sv_check:
            key = f"svcheck:{name}:{args.preset}:{args.seed}:{args.sv_check_passes}"
            cache = read_caches([cache_path, *map(Path, args.extra_cache)])
            if key not in cache and not args.cached_only:
                own = read_caches([cache_path])
                own[key] = cache[key] = sv_check(path, args)
                from teacher_audit.atomic import atomic_write_text

                atomic_write_text(cache_path, json.dumps(own, indent=1))
            if key in cache and runs:
                runs["_sv"] = cache[key]
        if runs:
            table.append((name, runs))
    cmd = "python benchmarks/suite_abd.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = markdown(table, labels, args, cmd.strip(), forks)
    print(md)
    if args.write_docs:
        from suite_backdoor import write_docs  # type: ignore[import-not-found]

        write_docs(md, heading="## ABD defense")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
