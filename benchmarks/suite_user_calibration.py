"""User calibration: does `teacher-audit calibrate` on clean teachers of an unseen architecture fix its verdicts?

Usage (from the repo root)::

    .venv/bin/python benchmarks/suite_user_calibration.py [--out DIR] [--jobs 2] [--write-docs] [--notes FILE]

For each architecture of ``suite_unseen_archs.py`` (a GroupNorm CNN and a 3-layer ViT, ONNX, no BatchNorm,
no builder in the tool) it trains MORE clean teachers (seeds 2-5; the suite's own teachers are kept), runs
``teacher-audit calibrate`` on two of them (seeds 2, 3) and on all four (probe seeds 0 and 1 each; default
policy, preset and budgets), then scans the suite's teachers -- two clean (seeds 0 and 1), two backdoored --
with the built-in thresholds and with each ``--calibration``. The evaluated teachers never enter a
calibration. Every command runs with one torch thread; scans and calibration runs are cached under ``<out>``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from suite_heldout import scan, write_table  # noqa: E402
from suite_unseen_archs import TEACHERS, train  # noqa: E402

#: clean teacher seeds of each calibration (none of them is evaluated)
CALIBRATION_SETS = ((2, 3), (2, 3, 4, 5))


def calibrate(arch: str, seeds: tuple[int, ...], out: Path, jobs: int) -> tuple[Path, dict[str, Any]]:
    """``teacher-audit calibrate`` on the arch's clean teachers of ``seeds``; (file, document). The runs are
    cached per architecture, so the larger set reuses the smaller one's scans."""
    files = [train(arch, "clean", s, out) for s in seeds]
    cal = out / f"calibration_{arch}_{len(seeds)}.json"
    if not cal.exists():
        env = dict(os.environ, OMP_NUM_THREADS="1")
        subprocess.run([sys.executable, "-m", "teacher_audit", "calibrate", *map(str, files), "--out", str(cal),
                        "--seeds", "0,1", "--jobs", str(jobs), "--cache-dir", str(out / f"calibration_runs_{arch}")],
                       env=env, cwd=ROOT, check=True)
    return cal, json.loads(cal.read_text())


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
        for s in sorted({s for cs in CALIBRATION_SETS for s in cs}):
            train(arch, "clean", s, out)
        for a, kind, seed in TEACHERS:
            if a == arch:
                train(a, kind, seed, out)
    cals = {(a, len(cs)): calibrate(a, cs, out, args.jobs) for a in archs for cs in CALIBRATION_SETS}
    todo = [(out / f"{a}_{k}_s{s}.onnx", a) for a, k, s in TEACHERS]
    with ThreadPoolExecutor(args.jobs) as ex:
        default = list(ex.map(lambda pa: scan(pa[0], out / "scans"), todo))
        calibrated = {n: list(ex.map(lambda pa: scan(pa[0], out / "scans", ("--calibration", str(cals[pa[1], n][0])),
                                                     tag=f".cal{n}"), todo))
                      for n in sorted({len(cs) for cs in CALIBRATION_SETS})}
    lines = ["| arch | clean teachers | backdoor z threshold | NTL threshold | trap-inversion threshold | "
             "leave-one-teacher-out: clean runs flagged |", "|---|---|---|---|---|---|",
             "| any | built-in (smallcnn, LeNet-5) | 3.33 | 0.22 | 0.45 | – |"]
    for (arch, n), (_, doc) in cals.items():
        loo = doc["leave_one_out"]
        bad = sum(r["backdoor_flagged"] or r["ntl_flagged"] for r in loo)
        lines.append(f"| {arch} | {n} ({len(doc['runs'])} runs) | {doc['backdoor']['threshold']:.2f} | "
                     f"{doc['ntl']['threshold']:.2f} | {doc['ntl']['inversion_threshold']:g} | {bad} of {len(loo)} |")
    ns = sorted(calibrated)
    lines += ["", "| file | kind | built-in thresholds | right | " +
              " | ".join(f"calibrated on {n} clean | right" for n in ns) + " |", "|---|---|---|---|" + "---|---|" * len(ns)]
    right = {0: 0, **{n: 0 for n in ns}}
    for i, (path, _arch) in enumerate(todo):
        t = json.loads(Path(str(path)[:-5] + ".truth.json").read_text())
        kind = "clean" if t["kind"] == "clean" else f"{t['trigger']['name']} → {t['target']}"
        cells = []
        for key, rep in ((0, default[i]), *((n, calibrated[n][i]) for n in ns)):
            c, r = verdict(path, rep)
            right[key] += r
            cells.append(f"{c} | {'yes' if r else 'no'}")
        lines.append(f"| {path.name} | {kind} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    lines.append("| **right** | | | " + " | ".join(f"**{right[k]}/{len(todo)}** |" for k in (0, *ns)))
    print("\n".join(lines))
    if args.write_docs:
        write_table("User calibration on unseen architectures", "suite_user_calibration.py",
                    "`teacher-audit calibrate` on 2 and on 4 extra clean ONNX teachers per architecture (seeds 2-5; "
                    "probe seeds 0, 1), then the `## Unseen architectures (ONNX)` teachers scanned with the built-in "
                    "thresholds and with each `--calibration`. None of the evaluated teachers is in a calibration. "
                    "Cells: fused backdoor z / threshold (→ suspected target when flagged); NTL score / threshold. "
                    "'right' = backdoored: flagged with the true target; clean: neither probe flags it.",
                    lines, args.notes)


if __name__ == "__main__":
    main()
