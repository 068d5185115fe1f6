"""Held-out teachers: the scan's verdict on teachers unlike those the probes were tuned and calibrated on.

Usage (from the repo root)::

    .venv/bin/python benchmarks/suite_heldout.py [--zoo zoo-cache] [--out zoo-heldout] [--write-docs]

The recipes in ``benchmarks/heldout.toml`` differ from the v2 zoo in architecture (a backdoored LeNet-5
without BatchNorm), trigger position, colour and pattern seed, target class, and NTL domain (``inverted``,
``blurnoise``; the zoo has ``grating`` and ``watermark``). Their clean warm starts are linked from
``--zoo`` (the zoo's clean teachers), the teachers are built into ``--out`` (``teacher-audit zoo build``,
resumable), every one is also exported to ONNX with BatchNorm folded (``suite_backdoor.export_onnx``), and
each file is scanned exactly as a user would (``teacher-audit scan FILE --json``, default policy and
budgets, one torch thread). Scan reports are cached in ``<out>/scans/``. With ``--write-docs`` the table goes
to ``docs/benchmarks.md`` under ``## Held-out teachers``. Nothing here feeds back into thresholds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from suite_backdoor import export_onnx  # noqa: E402
from suite_ntl import header, write_section  # noqa: E402

from teacher_audit.atomic import atomic_write_text  # noqa: E402
from teacher_audit.zoo.recipe_file import load_recipe_file  # noqa: E402

RECIPES = ROOT / "benchmarks" / "heldout.toml"


def link_warm_starts(names: set[str], zoo: Path, out: Path) -> None:
    """Symlink every warm-start teacher in ``names`` (and its card) from ``zoo`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for name in sorted(names):
        for suffix in (".safetensors", ".safetensors.card.json"):
            src, dst = zoo / f"{name}{suffix}", out / f"{name}{suffix}"
            if not src.exists():
                raise SystemExit(f"warm start {src} missing: build the zoo first (benchmarks/suite_zoo.py)")
            if not dst.exists():
                dst.symlink_to(src.resolve())


def scan(path: Path, cache: Path, extra: tuple[str, ...] = (), tag: str = "") -> dict[str, Any]:
    """``teacher-audit scan path --json [extra...]`` (cached under ``<name><tag>``); returns the report plus the
    wall time and exit code."""
    out = cache / f"{path.name}{tag}.json"
    meta = cache / f"{path.name}{tag}.meta.json"
    if out.exists() and meta.exists():
        return dict(json.loads(out.read_text()), _meta=json.loads(meta.read_text()))
    cache.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    rc = subprocess.run([sys.executable, "-m", "teacher_audit", "scan", str(path), "--json", str(out), "-q", *extra],
                        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    info = {"rc": rc, "seconds": time.perf_counter() - t0}
    atomic_write_text(meta, json.dumps(info))
    return dict(json.loads(out.read_text()), _meta=info)


def row(path: Path, report: dict[str, Any]) -> str:
    card = json.loads(Path(str(path) + ".card.json").read_text())
    gt = card.get("ground_truth") or {}
    trig = gt.get("trigger") or {}
    probes = {p["probe"]: p for p in report.get("probes", [])}
    bd, ntl = probes.get("backdoor", {}), probes.get("ntl_robustness", {})
    kind = gt.get("kind", "?")
    patch = trig.get("name") in ("badnets_square", "badnets_grid", "trojan")  # the others cover the whole image
    what = (f"{trig.get('name')}{' @' + str(trig.get('position')) if patch else ''}, seed {trig.get('seed')}" if trig
            else f"OOD {(gt.get('ood') or {}).get('shift', '?')}")
    quality = (f"{100 * gt['acc']:.1f} / {100 * gt['asr']:.1f}" if gt.get("asr") is not None else
               f"{100 * gt.get('acc', 0):.1f} / OOD {100 * gt.get('ood_acc', 0):.1f}" if gt.get("ood_acc") is not None
               else f"{100 * gt.get('acc', 0):.1f}")

    def probe_cell(p: dict[str, Any], with_target: bool) -> str:
        if not p or p.get("score") is None:
            return "–"
        cell = f"{p['score']:.2f}{' **flagged**' if p.get('flagged') else ''}"
        if with_target and p.get("flagged"):
            cell += f", class {p.get('target_class')}"
        return cell

    right = {"backdoor": bool(bd.get("flagged")) and bd.get("target_class") == gt.get("target"),
             "ntl_target": bool(ntl.get("flagged")), "ntl_watermark": bool(ntl.get("flagged"))}.get(kind)
    verdict = (report.get("verdict") or {}).get("status", "?")
    return (f"| {path.name} | {kind} | {card.get('arch') or 'onnx'} | {what} | {gt.get('target', '–')} | {quality} | "
            f"{probe_cell(bd, True)} | {probe_cell(ntl, False)} | {verdict} (exit {report['_meta']['rc']}) | "
            f"{'yes' if right else 'no'} | {report['_meta']['seconds']:.0f} |")


def write_table(title: str, script: str, intro: str, lines: list[str], notes: str = "") -> None:
    """Write ``## title`` of docs/benchmarks.md: the command and machine header, ``intro``, the table
    ``lines`` and, when given, the Markdown of the ``notes`` file."""
    body = header(" ".join([f"python benchmarks/{script}"] + sys.argv[1:])) + "\n" + intro + "\n\n" + "\n".join(lines)
    if notes:
        body += "\n\n" + Path(notes).read_text().strip()
    write_section(title, body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default=str(ROOT / "zoo-cache"), help="folder with the zoo's clean teachers")
    ap.add_argument("--out", default=str(ROOT / "zoo-heldout"))
    ap.add_argument("--recipes", default=str(RECIPES))
    ap.add_argument("--no-build", action="store_true", help="only scan what is already built")
    ap.add_argument("--no-onnx", action="store_true", help="skip the BN-folded ONNX exports")
    ap.add_argument("--notes", default="", help="Markdown file appended to the docs section")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)  # the header reports this; the scans themselves run with OMP_NUM_THREADS=1
    out = Path(args.out)
    recipes = list(load_recipe_file(args.recipes).values())
    link_warm_starts({r.warm_start for r in recipes if r.warm_start}, Path(args.zoo), out)
    if not args.no_build:
        subprocess.run([sys.executable, "-m", "teacher_audit", "zoo", "build", "--out", str(out), "--recipe-file",
                        args.recipes, "--recipe", "heldout_*"], cwd=ROOT, check=True)
    files = [out / f"{r.name}.safetensors" for r in recipes if (out / f"{r.name}.safetensors").exists()]
    if not args.no_onnx:
        files += [f for f in (export_onnx(p, out / "onnx") for p in list(files)) if f is not None]
    lines = ["| file | kind | arch | trigger / domain | target | teacher ACC / ASR (or OOD acc) | backdoor fused z | "
             "NTL score | verdict | right | scan s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for f in files:
        rep = scan(f, out / "scans")
        lines.append(row(f, rep))
        print(lines[-1], flush=True)
    if args.write_docs:
        write_table("Held-out teachers", "suite_heldout.py",
                    "Teachers built from `benchmarks/heldout.toml` after the probes' thresholds were fixed; none of them "
                    "was used to calibrate a threshold (the reading below says which were looked at while a later rule "
                    "was designed). 'right' = backdoored: flagged with the true target; NTL: "
                    "the NTL probe flags it. Default policy, budgets and preset (`dfq`); thresholds: backdoor fused z "
                    "3.33, NTL 0.22.", lines, args.notes)


if __name__ == "__main__":
    main()
