"""ABD defense suite: teacher / DFKD / DFKD+ABD ACC and ASR per backdoor family.

Usage (from the repo root)::

    .venv/bin/python benchmarks/suite_abd.py --zoo DIR [--budget-passes 30000] [--preset fast] [--only blend]
        [--mode hyper|plain] [--cache FILE] [--write-docs]

For every backdoored zoo teacher (card kind ``backdoor``; filter with ``--only``), measured on the
first ``--test-limit`` Fashion-MNIST test images with the card's trigger (``teacher_audit.zoo.triggers``):
ACC = clean top-1, ASR = share of triggered non-target images classified as the target. Two runs of
the same engine preset, seed and budget: plain DFKD and DFKD with ``DEFENSES.get("abd")``. The default
preset is ``fast`` (the only one that distils on Fashion-MNIST here). Results are cached in
``<zoo>/abd_scores.json`` (``--cache``; an absolute path keeps the zoo folder untouched) and written to ``docs/benchmarks.md`` under ``## ABD defense``.
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


def acc_asr(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, xt: torch.Tensor, target: int) -> tuple[float, float]:
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)])
        keep = y != target
        pt = torch.cat([model(xt[keep][i:i + 500]).argmax(1) for i in range(0, int(keep.sum()), 500)])
    return float((pred == y).float().mean()), float((pt == target).float().mean())


def run_teacher(path: Path, budget: int, preset: str, mode: str, test_limit: int, seed: int) -> dict[str, Any]:
    from teacher_audit.data import load_dataset
    from teacher_audit.defenses import DEFENSES
    from teacher_audit.intake.load import LoadOptions, load_teacher
    from teacher_audit.synth import PRESETS, Engine
    from teacher_audit.zoo import triggers

    teacher, _ = load_teacher(path, LoadOptions(device="cpu"))
    gt = json.loads(Path(str(path) + ".card.json").read_text())["ground_truth"]
    data = load_dataset(gt.get("recipe", {}).get("dataset", "fashion-mnist"), "test", spec=teacher.spec,
                        limit=test_limit)
    xt = triggers.apply(data.x, triggers.from_dict(gt["trigger"]))
    target = int(gt["target"])
    row: dict[str, Any] = {"name": path.name.removesuffix(".safetensors"), "trigger": gt["trigger"]["name"],
                           "target": target, "budget_passes": budget, "preset": preset, "mode": mode}
    row["teacher"] = acc_asr(teacher.model, data.x, data.y, xt, target)
    for label, defense in (("dfkd", "none"), ("abd", "abd")):
        engine = Engine(teacher, PRESETS.get(preset)(), device="cpu", seed=seed)
        opts: dict[str, Any] = {} if defense == "none" else {"mode": mode, "budget_passes": budget}
        hooks = DEFENSES.get(defense)(teacher, engine, **opts)
        t0 = time.perf_counter()
        res = engine.run(budget_passes=budget, hooks=hooks, progress=False)
        row[label] = acc_asr(res.student.eval(), data.x, data.y, xt, target)
        row[label + "_seconds"] = round(time.perf_counter() - t0, 1)
        if defense == "abd":
            row["sv_note"] = hooks[0].note
    return row


def goal(row: dict[str, Any]) -> str:
    """Issue 5's target: where undefended DFKD's ASR >= 20 %, ABD's ASR <= 3 % at <= 3 ACC points cost."""
    if row["dfkd"][1] < 0.20:
        return "n/a (DFKD ASR < 20 %)"
    ok = row["abd"][1] <= 0.03 and row["dfkd"][0] - row["abd"][0] <= 0.03
    return "met" if ok else "not met"


def markdown(rows: list[dict[str, Any]], cmd: str) -> str:
    lines = ["## ABD defense", "",
             f"Command: `{cmd}` — {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, 2-core CPU shared with other jobs.",
             "ACC / ASR in % on Fashion-MNIST test images (ASR: triggered non-target images sent to the target).", "",
             "| teacher | trigger | teacher ACC/ASR | DFKD ACC/ASR | DFKD+ABD ACC/ASR | goal | ABD mode | passes | s (DFKD / ABD) | SV self-check |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = lambda p: f"{100 * p[0]:.1f} / {100 * p[1]:.1f}"  # noqa: E731
        lines.append(f"| {r['name']} | {r['trigger']} | {f(r['teacher'])} | {f(r['dfkd'])} | {f(r['abd'])} | "
                     f"{goal(r)} | {r['mode']} | {r['budget_passes']} | {r.get('dfkd_seconds', '')} / "
                     f"{r.get('abd_seconds', '')} | {r.get('sv_note', '')} |")
    lines += ["", "Paper (CIFAR-10, WRN-16-2 -> WRN-16-1, ZSKT vs ZSKT+ABD): BadNets grid 71.9/96.9 -> 68.3/0.7, "
              "Blend 77.0/74.4 -> 71.5/23.1, BadNets square 80.8/37.8 -> 77.9/1.9; mean ASR after ABD 11.1 % at a "
              "mean cost of 6.6 ACC points."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="ABD defense suite")
    ap.add_argument("--zoo", default=str(ROOT / "zoo-cache"))
    ap.add_argument("--budget-passes", type=int, default=30_000)
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--cache", default="abd_scores.json", help="cache file (name inside the zoo dir, or a path)")
    ap.add_argument("--mode", default="hyper", choices=["hyper", "plain"])
    ap.add_argument("--only", default="")
    ap.add_argument("--test-limit", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--cached-only", action="store_true", help="tabulate cached runs only; distil nothing new")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    zoo = Path(args.zoo)
    cache_path = zoo / args.cache
    cache: dict[str, Any] = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    rows = []
    for path in sorted(zoo.glob("backdoor_*.safetensors")):
        if args.only and args.only not in path.name:
            continue
        card = json.loads(Path(str(path) + ".card.json").read_text())
        if card.get("ground_truth", {}).get("kind") != "backdoor":
            continue
        key = f"{path.name}:{args.budget_passes}:{args.preset}:{args.mode}:{args.seed}:{args.test_limit}"
        if key not in cache and args.cached_only:
            continue
        if key not in cache:
            print(f"distilling {path.name} ...", file=sys.stderr, flush=True)
            cache[key] = run_teacher(path, args.budget_passes, args.preset, args.mode, args.test_limit, args.seed)
            from teacher_audit.atomic import atomic_write_text

            atomic_write_text(cache_path, json.dumps(cache, indent=1))
        rows.append(cache[key])
    cmd = "python benchmarks/suite_abd.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = markdown(rows, cmd.strip())
    print(md)
    if args.write_docs:
        from suite_backdoor import write_docs  # type: ignore[import-not-found]

        write_docs(md, heading="## ABD defense")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
