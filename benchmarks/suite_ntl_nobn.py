"""NTL detection on teachers WITHOUT a BatchNorm prior: BN-folded ONNX exports and BN-free architectures.

The NTL probe's synthesis pull needs the teacher's BatchNorm statistics; without them (an ONNX export
with BN folded into the convolutions, or a network that never had BN) the probe runs its robust trap
inversion instead (``NTLConfig.trap_inversion = "no_bn"``). This suite measures that path and
calibrates its threshold (``DEFAULT_INVERSION_THRESHOLD``) on the clean teachers only.

Usage (from the repo root)::

    .venv/bin/python benchmarks/suite_ntl_nobn.py --zoo /work/zoo-v2 --export clean_smallcnn_s0,... \\
        --onnx-dir DIR --files more.onnx,lenet.safetensors --clean-seeds 0,1 --cache runs.jsonl --write-docs

``--export`` names zoo teachers to export BN-folded first (``suite_backdoor.export_onnx``, skipped when the
file exists). Every run is one JSON line in ``--cache`` (an interrupted suite resumes). Kinds come from the
cards' ``ground_truth``. With ``--write-docs`` the table goes to ``docs/benchmarks.md`` under
``## NTL detection without a BN prior``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from suite_ntl import auroc, calibrate, header, kind_of, write_section  # noqa: E402

TITLE = "NTL detection without a BN prior"


def card_of(path: Path) -> dict[str, Any]:
    p = Path(str(path) + ".card.json")
    return json.loads(p.read_text()) if p.exists() else {}


def run_one(path: Path, seed: int) -> dict[str, Any]:
    """The NTL probe at its defaults on one file (loaded through the tool's own intake)."""
    from teacher_audit.intake.load import LoadOptions, load_teacher
    from teacher_audit.probes.ntl_robustness import NTLConfig, NTLRobustnessProbe

    teacher, intake = load_teacher(path, LoadOptions(device="cpu"))
    card = card_of(path)
    t0, c0 = time.perf_counter(), time.process_time()
    res = NTLRobustnessProbe(NTLConfig(seed=seed, evidence=False)).run(teacher, None)
    d = res.details
    gt = card.get("ground_truth") or {}
    return {"file": path.name, "format": intake.format, "kind": kind_of(card), "seed": seed,
            "truth_target": gt.get("recipe", {}).get("target") if kind_of(card) in ("backdoor", "clean_label") else None,
            "score": res.score, "flagged": res.flagged, "target": res.target_class,
            "bn_prior": d.get("synthesis_bn_prior"), "pull_share": d["pull_share"], "pull_class": d["pull_class"],
            "gap": d.get("trap_inversion_gap"), "inv_class": d.get("trap_inversion_class"),
            "unreachable": d.get("trap_inversion_unreachable"), "norms": d.get("trap_inversion_norms"),
            "inv_score": d.get("trap_inversion_score"), "passes": res.budget.teacher_passes,
            "cpu_seconds": time.process_time() - c0, "seconds": time.perf_counter() - t0}


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| file | kind | probe seed | BN prior | pull share (class) | inversion gap (decades) | inversion class | "
            "classes never reached | score | flagged | CPU s |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    order = {"ntl_target": 0, "ntl_watermark": 0, "clean": 1}
    body = ""
    for r in sorted(rows, key=lambda r: (order.get(r["kind"], 2), r["file"], r["seed"])):
        body += (f"| {r['file']} | {r['kind']} | {r['seed']} | {'yes' if r['bn_prior'] else 'no'} | "
                 f"{r['pull_share']:.2f} ({r['pull_class']}) | {r['gap']:.3f} | {r['inv_class']} | {r['unreachable']} | "
                 f"{r['score']:.3f} | {'**yes**' if r['flagged'] else 'no'} | {r['cpu_seconds']:.1f} |\n")
    return head + body


def summary(rows: list[dict[str, Any]]) -> str:
    from teacher_audit.probes.ntl_robustness import DEFAULT_INVERSION_THRESHOLD

    def mean_by_file(kinds: tuple[str, ...], key: str) -> list[float]:
        files = sorted({r["file"] for r in rows if r["kind"] in kinds})
        return [sum(r[key] for r in rows if r["file"] == f) / len([r for r in rows if r["file"] == f]) for f in files]

    ntl, clean, bd = ("ntl_target", "ntl_watermark"), ("clean",), ("backdoor", "clean_label")
    clean_gaps = [r["gap"] for r in rows if r["kind"] == "clean"]
    if not clean_gaps:
        return "(no clean runs: nothing to calibrate against)\n"
    n_clean = len({r["file"] for r in rows if r["kind"] == "clean"})
    lines = [
        "| metric | value |", "|---|---|",
        f"| clean runs (teachers x probe seeds) | {len(clean_gaps)} ({n_clean} teachers) |",
        f"| clean inversion gap: max / rule max x 1.25 rounded up to 0.05 | {max(clean_gaps):.3f} / {calibrate(clean_gaps, per_unit=20):.2f} "
        f"(`DEFAULT_INVERSION_THRESHOLD` = {DEFAULT_INVERSION_THRESHOLD}) |",
        f"| AUROC NTL vs clean: inversion gap / probe score (per teacher, mean over seeds) | "
        f"{auroc(mean_by_file(ntl, 'gap'), mean_by_file(clean, 'gap')):.3f} / "
        f"{auroc(mean_by_file(ntl, 'score'), mean_by_file(clean, 'score')):.3f} |",
        f"| AUROC NTL vs clean: pull share alone (what the probe had before) | "
        f"{auroc(mean_by_file(ntl, 'pull_share'), mean_by_file(clean, 'pull_share')):.3f} |",
        f"| AUROC NTL vs clean + backdoored (probe score) | "
        f"{auroc(mean_by_file(ntl, 'score'), mean_by_file(clean + bd, 'score')):.3f} |",
        f"| clean runs flagged at the default thresholds | {sum(r['flagged'] for r in rows if r['kind'] == 'clean')} / {len(clean_gaps)} |",
        f"| NTL runs flagged | {sum(r['flagged'] for r in rows if r['kind'] in ntl)} / {sum(r['kind'] in ntl for r in rows)} |",
        f"| backdoored runs flagged as NTL | {sum(r['flagged'] for r in rows if r['kind'] in bd)} / {sum(r['kind'] in bd for r in rows)} |",
        f"| median CPU s per run (whole NTL probe) | {sorted(r['cpu_seconds'] for r in rows)[len(rows) // 2]:.1f} |",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", default=str(ROOT / "zoo-cache"), help="zoo folder for --export")
    ap.add_argument("--export", default="", help="zoo teachers to export BN-folded (comma-separated names)")
    ap.add_argument("--onnx-dir", default="", help="where exports go (default <zoo>/onnx-bnfolded)")
    ap.add_argument("--files", default="", help="more teacher files (comma-separated): exports, BN-free nets")
    ap.add_argument("--seeds", default="0", help="probe seeds")
    ap.add_argument("--clean-seeds", default="0,1", help="probe seeds for clean teachers (calibration)")
    ap.add_argument("--cache", required=True, help="JSON-lines file of runs (resumable)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--notes", default="", help="a Markdown file appended to the section (the reading)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from suite_backdoor import export_onnx

    zoo = Path(args.zoo)
    onnx_dir = Path(args.onnx_dir) if args.onnx_dir else zoo / "onnx-bnfolded"
    files = [export_onnx(zoo / f"{n}.safetensors", onnx_dir) for n in args.export.split(",") if n]
    files += [Path(f) for f in args.files.split(",") if f]
    cache = Path(args.cache)
    rows = [json.loads(line) for line in cache.read_text().splitlines()] if cache.exists() else []
    done = {(r["file"], r["seed"]) for r in rows}
    for f in [f for f in files if f is not None]:
        seeds = args.clean_seeds if kind_of(card_of(f)) == "clean" else args.seeds
        for seed in [int(s) for s in seeds.split(",")]:
            if (f.name, seed) in done:
                continue
            r = run_one(f, seed)
            rows.append(r)
            with cache.open("a") as fh:
                fh.write(json.dumps(r, default=float) + "\n")
            print(f"{f.name} seed {seed}: score {r['score']:.3f} gap {r['gap']:.3f} class {r['inv_class']} "
                  f"flagged {r['flagged']} {r['cpu_seconds']:.1f} CPU s", flush=True)
    names = {f.name for f in files if f is not None}
    rows = [r for r in rows if r["file"] in names]
    print(summary(rows))
    if args.write_docs:
        cmd = "python benchmarks/suite_ntl_nobn.py " + " ".join(sys.argv[1:])
        notes = Path(args.notes).read_text() if args.notes else ""
        write_section(TITLE, header(cmd) + "\n" + summary(rows) + "\n" + table(rows) + ("\n" + notes if notes else ""))


if __name__ == "__main__":
    main()
