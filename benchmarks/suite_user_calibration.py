"""User calibration: does `teacher-audit calibrate` on clean teachers of an unseen architecture fix its verdicts?

Usage (from the repo root)::

    .venv/bin/python benchmarks/suite_user_calibration.py [--out DIR] [--jobs 2] [--write-docs] [--notes FILE]

For each architecture of ``suite_unseen_archs.py`` (a GroupNorm CNN and a 3-layer ViT, ONNX, no BatchNorm,
no builder in the tool) it trains two MORE clean teachers (seeds 2 and 3; the suite's own teachers are
kept), runs ``teacher-audit calibrate`` on those two only (probe seeds 0 and 1, default policy, preset and
budgets), then scans the suite's teachers -- two clean (seeds 0 and 1), two backdoored -- once with the
built-in thresholds and once with ``--calibration``. The evaluated teachers never enter the calibration.
Every command runs with one torch thread; scans and calibration runs are cached under ``<out>``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from suite_heldout import scan, write_table  # noqa: E402
from suite_unseen_archs import TEACHERS, train  # noqa: E402

CALIBRATION_SEEDS = (2, 3)


def calibrate(arch: str, out: Path) -> tuple[Path, dict[str, Any], float]:
    """``teacher-audit calibrate`` on the arch's clean calibration teachers; (file, document, seconds)."""
    files = [train(arch, "clean", s, out) for s in CALIBRATION_SEEDS]
    cal = out / f"calibration_{arch}.json"
    t0 = time.perf_counter()
    if not cal.exists():
        env = dict(os.environ, OMP_NUM_THREADS="1")
        subprocess.run([sys.executable, "-m", "teacher_audit", "calibrate", *map(str, files), "--out", str(cal),
                        "--seeds", "0,1"], env=env, cwd=ROOT, check=True)
    return cal, json.loads(cal.read_text()), time.perf_counter() - t0


def verdict(path: Path, rep: dict[str, Any]) -> tuple[str, bool]:
    """(table cell, right?) of one report against the teacher's ground truth."""
    t = json.loads(Path(str(path)[:-5] + ".truth.json").read_text())
    probes = {p["probe"]: p for p in rep.get("probes", [])}
    bd, ntl = probes.get("backdoor", {}), probes.get("ntl_robustness", {})
    right = (bool(bd.get("flagged")) and bd.get("target_class") == t["target"] if t["kind"] == "backdoor"
             else not (bd.get("flagged") or ntl.get("flagged")))
    cell = (f"z {bd.get('score', float('nan')):.2f}/{bd.get('threshold', float('nan')):.2f}"
            f"{' **flagged** → ' + str(bd.get('target_class')) if bd.get('flagged') else ''}; "
            f"NTL {ntl.get('score', float('nan')):.2f}/{ntl.get('threshold', float('nan')):.2f}"
            f"{' **flagged**' if ntl.get('flagged') else ''}")
    return cell, right


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "zoo-unseen"))
    ap.add_argument("--jobs", type=int, default=2, help="scans run in parallel (one torch thread each)")
    ap.add_argument("--notes", default="", help="Markdown file appended to the docs section")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    archs = list(dict.fromkeys(a for a, _, _ in TEACHERS))
    for arch in archs:  # training first (one process), then the scans in parallel
        for s in CALIBRATION_SEEDS:
            train(arch, "clean", s, out)
        for a, kind, seed in TEACHERS:
            if a == arch:
                train(a, kind, seed, out)
    with ThreadPoolExecutor(args.jobs) as ex:
        cals = dict(zip(archs, ex.map(lambda a: calibrate(a, out), archs)))
        todo = [(out / f"{a}_{k}_s{s}.onnx", a) for a, k, s in TEACHERS]
        default = list(ex.map(lambda pa: scan(pa[0], out / "scans"), todo))
        calibrated = list(ex.map(lambda pa: scan(pa[0], out / "scans", ("--calibration", str(cals[pa[1]][0])),
                                                 tag=".cal"), todo))
    lines = ["| arch | calibration (2 clean teachers x 2 probe seeds) | leave-one-teacher-out |",
             "|---|---|---|"]
    for arch, (_, doc, secs) in cals.items():
        loo = doc["leave_one_out"]
        bad = sum(r["backdoor_flagged"] or r["ntl_flagged"] for r in loo)
        lines.append(f"| {arch} | backdoor z threshold {doc['backdoor']['threshold']:.2f} (built-in 3.33), NTL "
                     f"{doc['ntl']['threshold']:.2f} (built-in 0.22), trap inversion {doc['ntl']['inversion_threshold']:g} "
                     f"(built-in 0.45); {len(doc['runs'])} runs |"
                     f" {bad} of {len(loo)} clean runs flagged by the other teacher's calibration |")
    lines += ["", "| file | kind | built-in thresholds | right | with `--calibration` | right |", "|---|---|---|---|---|---|"]
    n_right = [0, 0]
    for (path, _arch), d, c in zip(todo, default, calibrated):
        t = json.loads(Path(str(path)[:-5] + ".truth.json").read_text())
        kind = "clean" if t["kind"] == "clean" else f"{t['trigger']['name']} → {t['target']}"
        (cd, rd), (cc, rc) = verdict(path, d), verdict(path, c)
        n_right[0] += rd
        n_right[1] += rc
        lines.append(f"| {path.name} | {kind} | {cd} | {'yes' if rd else 'no'} | {cc} | {'yes' if rc else 'no'} |")
        print(lines[-1], flush=True)
    lines.append(f"| **right** | | | **{n_right[0]}/{len(todo)}** | | **{n_right[1]}/{len(todo)}** |")
    print("\n".join(lines))
    if args.write_docs:
        write_table("User calibration on unseen architectures", "suite_user_calibration.py",
                    "`teacher-audit calibrate` on two extra clean ONNX teachers per architecture (seeds 2, 3; probe "
                    "seeds 0, 1), then the `## Unseen architectures (ONNX)` teachers scanned with the built-in "
                    "thresholds and with `--calibration`. None of the evaluated teachers is in the calibration. "
                    "Cells: fused backdoor z / threshold (→ suspected target when flagged); NTL score / threshold. "
                    "'right' = backdoored: flagged with the true target; clean: neither probe flags it.",
                    lines, args.notes)


if __name__ == "__main__":
    main()
