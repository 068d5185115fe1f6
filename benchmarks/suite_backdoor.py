"""Backdoor detection suite: run the fused backdoor probe over the zoo, calibrate, report AUROC.

Usage (from the repo root)::

    .venv/bin/python benchmarks/suite_backdoor.py [--zoo zoo-cache] [--calibrate] [--write-docs]

For every ``*.safetensors`` teacher with a ``.card.json`` in the zoo directory, the fused backdoor
probe runs once (all components, default budgets, seed 0); raw component scores are cached in
``<zoo>/backdoor_scores.json`` (keyed by file SHA-256 and probe config, so re-runs only score new
teachers). Then:

* the NTL probe runs once per teacher too (scan defaults, cached in ``--ntl-cache``): its features
  give the fused score's ``pull`` component, the NTL trap classes and the robust-tail target vote,
  exactly as ``scan``'s second pass does (``FusedBackdoorProbe.combine``);
* clean teachers run with every ``--clean-seeds`` probe seed (default 0,1) for the calibration spread;
* ``--calibrate`` standardises each component on the CLEAN runs (kind ``clean``, BN-folded exports
  excluded), sets the fused threshold to the largest clean fused score plus ``margin``, and rewrites
  the ``CALIBRATION`` block in ``teacher_audit/probes/backdoor_fused.py``;
* AUROC of the fused score and of every component (positives: ``backdoor``, ``clean_label`` and
  ``ntl_backdoor`` kinds; negatives: ``clean`` and the NTL kinds), the share of clean teachers
  flagged, the target-class accuracy on backdoored teachers and the seconds per teacher are printed
  (seed-0 run of each teacher; BN-folded ONNX exports in a separate table)
  and, with ``--write-docs``, written to ``docs/benchmarks.md`` under ``## Backdoor detection``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import platform
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from teacher_audit.probes.backdoor_fused import (  # noqa: E402
    CALIBRATION,
    FusedBackdoorProbe,
    FusedConfig,
    consensus,
    derived,
    fuse,
    pull_result,
    trap_classes,
)
from teacher_audit.probes.backdoor_common import robust_z  # noqa: E402
from teacher_audit.probes.calibration_fit import fit_backdoor  # noqa: E402
from teacher_audit.report.model import ProbeResult  # noqa: E402

POSITIVE = {"backdoor", "clean_label", "ntl_backdoor"}
COMPONENTS = ("backdoor_margin", "backdoor_inversion", "backdoor_robust_inversion", "backdoor_shuffle", "consensus", "pull",
              "backdoor_sink")


def bench_config() -> FusedConfig:
    """The default fused config without the components' wall-clock safety caps (``limit_seconds``).

    The step counts are the budget; the caps only protect an interactive scan. On this shared CPU
    (load 5-10 on 2 cores) the 60 s caps cut the margin ascent and the inversion short, so scores
    would depend on the machine's load; on an idle machine the caps are not reached for a smallcnn.
    """
    cfg = FusedConfig()
    for sub in (cfg.margin, cfg.inversion, cfg.robust, cfg.shuffle, cfg.sink):
        if hasattr(sub, "limit_seconds"):
            sub.limit_seconds = None
    return cfg


def config_key(cfg: FusedConfig) -> str:
    return hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str).encode()).hexdigest()[:12]


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def score_teacher(path: Path, cfg: FusedConfig, preset: str) -> dict[str, Any]:
    """Load one zoo teacher and run the fused probe; return raw component scores and ground truth."""
    from teacher_audit.intake.load import LoadOptions, load_teacher
    from teacher_audit.synth import PRESETS, Engine

    teacher, intake = load_teacher(path, LoadOptions(device="cpu"))
    card = json.loads(Path(str(path) + ".card.json").read_text())
    gt = card.get("ground_truth") or {}
    engine = Engine(teacher, PRESETS.get(preset)(), device="cpu", seed=cfg.seed)
    t0 = time.perf_counter()
    res = FusedBackdoorProbe(cfg).run(teacher, engine)
    sec = time.perf_counter() - t0
    comps = res.details.get("components", {})
    return {
        "name": path.name.removesuffix(".safetensors").removesuffix(".onnx"), "kind": gt.get("kind", "unknown"),
        "target": gt.get("target"), "arch": card.get("arch"), "trigger": (gt.get("trigger") or {}).get("name"),
        "seconds": sec, "passes": res.budget.teacher_passes, "format": intake.format,
        "has_batchnorm": intake.has_batchnorm,
        "components": {n: {"score": c.get("score"), "target": c.get("target_class"), "status": c.get("status"),
                           "seconds": c.get("seconds"), "details": c.get("details")} for n, c in comps.items()},
    }


def ntl_key(seed: int) -> str:
    """Cache key part of the NTL probe's features: probe config (defaults, as ``scan`` runs it) and seed."""
    from teacher_audit.probes.ntl_robustness import NTLConfig

    cfg = NTLConfig(seed=seed, evidence=False)
    return "ntl:" + hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str).encode()).hexdigest()[:12]


def score_ntl(path: Path, seed: int) -> dict[str, Any]:
    """Run the NTL probe (scan defaults, probe seed ``seed``) on one teacher; its features feed the fused
    backdoor score (the pull component and the trap-class exclusion, see ``backdoor_fused``)."""
    from teacher_audit.intake.load import LoadOptions, load_teacher
    from teacher_audit.probes.ntl_robustness import NTLConfig, NTLRobustnessProbe

    teacher, _ = load_teacher(path, LoadOptions(device="cpu"))
    t0 = time.perf_counter()
    res = NTLRobustnessProbe(NTLConfig(seed=seed, evidence=False)).run(teacher, None)
    return {"seed": seed, "score": res.score, "flagged": res.flagged, "threshold": res.threshold,
            "details": {k: v for k, v in res.details.items() if k != "notes"}, "seconds": time.perf_counter() - t0}


def export_onnx(path: Path, out_dir: Path) -> Path | None:
    """Export a zoo teacher to ONNX with constant folding (BatchNorm folded into Conv), card copied."""
    from teacher_audit.intake.load import LoadOptions, load_teacher

    out = out_dir / (path.name.removesuffix(".safetensors") + "_bnfolded.onnx")
    if out.exists():
        return out
    teacher, _ = load_teacher(path, LoadOptions(device="cpu"))
    net = teacher.model.net.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    x = torch.zeros(1, *teacher.spec.shape)
    try:
        torch.onnx.export(net, (x,), str(out), dynamo=False, do_constant_folding=True, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}})
    except Exception as e:  # noqa: BLE001 - an export failure only removes that teacher from the ONNX rows
        print(f"onnx export of {path.name} failed: {e}", file=sys.stderr)
        return None
    card = json.loads(Path(str(path) + ".card.json").read_text())
    card.pop("arch", None)
    card["name"] = out.name.removesuffix(".onnx")
    Path(str(out) + ".card.json").write_text(json.dumps(card, indent=2))
    return out


def auroc(pos: list[float], neg: list[float]) -> float:
    """Probability a positive scores above a negative (ties count half)."""
    if not pos or not neg:
        return float("nan")
    p, n = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float((p > n).mean() + 0.5 * (p == n).mean())


def as_results(row: dict[str, Any]) -> dict[str, ProbeResult]:
    return {n: ProbeResult(probe=n, threat="backdoor", status=c["status"] or "error", score=c["score"],
                           target_class=c["target"], details=c.get("details") or {})
            for n, c in row["components"].items() if n not in ("consensus", "pull")}


def with_consensus(row: dict[str, Any]) -> dict[str, Any]:
    """Add the derived ``consensus`` component (computed from the cached details, no probe run) and
    re-derive the inversion score from the cached per-class norms with the current formula."""
    row = dict(row, components=dict(row["components"]))
    inv = row["components"].get("backdoor_inversion")
    if inv and inv.get("details") and inv["details"].get("mask_norms"):
        norms = np.clip(np.asarray(inv["details"]["mask_norms"], dtype=float), 1e-4, 1.0)
        t = int(np.argmin(norms))
        row["components"]["backdoor_inversion"] = dict(inv, target=t, score=robust_z(np.log10(norms), t, True, 0.1))
    sh = row["components"].get("backdoor_shuffle")
    if sh and sh.get("details") and "agreement_overall" in sh["details"]:
        d = sh["details"]
        agree = d.get("agreeing_classes") or d.get("agreement") or [0]
        row["components"]["backdoor_shuffle"] = dict(sh, score=100.0 * float(d["agreement_overall"]),
                                                     target=int(np.argmax(agree)))
    c = consensus(as_results(row))
    row["components"]["consensus"] = {"score": None if c is None else c.score,
                                      "target": None if c is None else c.target_class, "status": "ok" if c else "error"}
    # the scores as the fusion uses them: NTL trap classes neutralised, plus the synthesis pull
    used = derived(as_results(row), row.get("ntl"))
    row["used"] = {n: {"score": r.score, "target": r.target_class} for n, r in used.items()}
    raw_pull = pull_result(row.get("ntl"), set())  # the probe's own pull, before the trap-class exclusion
    if raw_pull is not None:
        row["components"]["pull"] = {"score": raw_pull.score, "target": raw_pull.target_class, "status": "ok"}
    return row


def calibrate(rows: list[dict[str, Any]], margin: float) -> dict[str, Any]:
    """Per-component clean mean/sd and the fused threshold (max clean fused + margin), by the library's rule
    (:func:`teacher_audit.probes.calibration_fit.fit_backdoor`, the one ``teacher-audit calibrate`` uses).

    Uses every clean run (all ``--clean-seeds``), with the component scores as the fusion uses them.
    """
    clean = [r for r in rows if r["kind"] == "clean" and r.get("format") != "onnx"]  # exports: out-of-sample check
    fitted = fit_backdoor([(as_results(r), r.get("ntl")) for r in clean], margin)
    n_teachers = len({r["name"] for r in clean})
    return {**fitted, "n_clean": n_teachers, "n_clean_runs": len(clean),
            "source": f"benchmarks/suite_backdoor.py --calibrate on {n_teachers} clean zoo teachers x "
                      f"{len(clean) / max(1, n_teachers):g} probe seeds, {datetime.now(timezone.utc).date()}"}


def write_calibration(calib: dict[str, Any]) -> None:
    path = ROOT / "teacher_audit/probes/backdoor_fused.py"
    text = path.read_text()
    block = "CALIBRATION: dict[str, Any] = " + json.dumps(calib, indent=4) + "\n"
    new = re.sub(r"CALIBRATION: dict\[str, Any\] = \{.*?\n\}\n", lambda _m: block, text, count=1, flags=re.S)
    path.write_text(new)


def evaluate(rows: list[dict[str, Any]], calib: dict[str, Any]) -> dict[str, Any]:
    """AUROC (fused, each component raw and as fused), flags and target accuracy.

    AUROC and the per-teacher table use each teacher's seed-0 run; the clean-flag count and the clean
    spread use every clean run (all calibration seeds).
    """
    onnx = [r for r in rows if r.get("format") == "onnx"]
    rows = [r for r in rows if r.get("format") != "onnx"]
    main = [r for r in rows if r.get("seed", 0) == 0]
    pos = [r for r in main if r["kind"] in POSITIVE]
    neg = [r for r in main if r["kind"] not in POSITIVE]
    clean_runs = [r for r in rows if r["kind"] == "clean"]
    fz = {id(r): fuse(as_results(r), calib, r.get("ntl")) for r in rows}
    out: dict[str, Any] = {"n_pos": len(pos), "n_neg": len(neg), "threshold": calib["threshold"],
                           "n_clean_runs": len(clean_runs)}
    out["auroc_fused"] = auroc([fz[id(r)][0] for r in pos], [fz[id(r)][0] for r in neg])
    out["auroc_by_seed"] = {}
    names = {r["name"] for r in main}
    for seed in sorted({r.get("seed", 0) for r in rows} - {0}):
        sr = [r for r in rows if r.get("seed", 0) == seed]
        if {r["name"] for r in sr} == names:  # every teacher ran this seed
            out["auroc_by_seed"][seed] = {
                "auroc": auroc([fz[id(r)][0] for r in sr if r["kind"] in POSITIVE],
                               [fz[id(r)][0] for r in sr if r["kind"] not in POSITIVE]),
                "target_right": sum(fz[id(r)][1] == r["target"] for r in sr if r["kind"] in POSITIVE),
                "pos_flagged": sum(fz[id(r)][0] > calib["threshold"] for r in sr if r["kind"] in POSITIVE),
                "neg_flagged": sum(fz[id(r)][0] > calib["threshold"] for r in sr if r["kind"] not in POSITIVE)}
    for n in COMPONENTS:
        raw = [(r in pos, r["components"].get(n, {}).get("score")) for r in pos + neg]
        used = [(r in pos, fz[id(r)][2].get(n)) for r in pos + neg]  # z as fused (0 when explained by a trap)
        for key, sc in (("raw", raw), ("used", used)):
            out[f"auroc_{n}_{key}"] = auroc([v for p, v in sc if p and v is not None],
                                            [v for p, v in sc if not p and v is not None])
    clean_f = [fz[id(r)][0] for r in clean_runs]
    out["clean_flagged"] = sum(v > calib["threshold"] for v in clean_f)
    out["clean_max"] = max(clean_f) if clean_f else float("nan")
    out["clean_mean"] = float(np.mean(clean_f)) if clean_f else float("nan")
    out["neg_flagged"] = sum(fz[id(r)][0] > calib["threshold"] for r in neg)
    out["pos_flagged"] = sum(fz[id(r)][0] > calib["threshold"] for r in pos)
    out["target_right"] = sum(fz[id(r)][1] == r["target"] for r in pos)
    out["seconds_median"] = float(np.median([r["seconds"] for r in main])) if main else float("nan")

    def val(r: dict[str, Any], n: str) -> float | None:
        v = r["used"].get(n, {}).get("score")
        return None if v is None else round(float(v), 2)

    out["per_teacher"] = [{"name": r["name"], "kind": r["kind"], "trigger": r["trigger"], "target": r["target"],
                           "fused": round(fz[id(r)][0], 2), "suspected": fz[id(r)][1],
                           "lead": max(fz[id(r)][2], key=fz[id(r)][2].get) if fz[id(r)][2] else None,
                           **{n.removeprefix("backdoor_"): val(r, n) for n in COMPONENTS},
                           "traps": sorted(trap_classes(r.get("ntl"))),
                           "seconds": round(r["seconds"], 1)} for r in main]
    by_name = {r["name"]: r for r in main}
    out["onnx"] = []
    for r in onnx:
        f = fuse(as_results(r), calib, r.get("ntl"))
        orig = by_name.get(r["name"].removesuffix("_bnfolded"))
        fo = fuse(as_results(orig), calib, orig.get("ntl")) if orig else None
        out["onnx"].append({"name": r["name"], "kind": r["kind"], "target": r["target"], "fused": round(f[0], 2),
                            "suspected": f[1], "flagged": f[0] > calib["threshold"],
                            "orig_fused": None if fo is None else round(fo[0], 2),
                            "orig_suspected": None if fo is None else fo[1]})
    return out


def markdown(ev: dict[str, Any], cmd: str) -> str:
    lines = ["## Backdoor detection", "",
             f"Command: `{cmd}` — {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, 2-core CPU "
             f"({platform.machine()}), shared with other jobs (times are upper bounds).", "",
             f"Zoo: {ev['n_pos']} backdoored teachers vs {ev['n_neg']} clean + NTL teachers (NTL = negatives). "
             f"Calibration: clean teachers only ({ev['n_clean_runs']} clean runs: every clean teacher x the "
             f"calibration probe seeds), threshold = max clean fused z + margin = {ev['threshold']:.2f} "
             "(in-sample: the same clean runs set the threshold and are counted below).", "",
             "| metric | value |", "|---|---|",
             f"| AUROC fused | {ev['auroc_fused']:.3f} |"]
    for seed, v in ev.get("auroc_by_seed", {}).items():
        lines.append(f"| AUROC fused, every teacher at probe seed {seed} (same calibration) | {v['auroc']:.3f} "
                     f"(target right {v['target_right']}/{ev['n_pos']}, backdoored flagged {v['pos_flagged']}, "
                     f"negatives flagged {v['neg_flagged']}) |")
    for n in COMPONENTS:
        used = ev["auroc_" + n + "_used"]
        lines.append(f"| AUROC {n.removeprefix('backdoor_')} (own score / as fused: z, 0 when explained by an NTL trap) | "
                     f"{ev['auroc_' + n + '_raw']:.3f} / {'not fused' if used != used else f'{used:.3f}'} |")
    lines += [f"| clean runs flagged at default threshold | {ev['clean_flagged']} / {ev['n_clean_runs']} "
              f"(clean fused z: mean {ev['clean_mean']:.2f}, max {ev['clean_max']:.2f}) |",
              f"| NTL/clean (negatives) flagged | {ev['neg_flagged']} / {ev['n_neg']} |",
              f"| backdoored flagged | {ev['pos_flagged']} / {ev['n_pos']} |",
              f"| suspected target right (backdoored) | {ev['target_right']} / {ev['n_pos']} |",
              f"| median seconds per teacher (fused probe incl. synthesis, without the NTL probe) | "
              f"{ev['seconds_median']:.1f} |", "",
              "Per teacher (seed 0): component scores as fused (z-scored against the clean runs; `lead` = the "
              "component with the largest z).", "",
              "| teacher | kind | trigger | target | fused z | suspected | lead | margin | inversion | robust inversion "
              "| consensus | pull | sink | NTL trap class (left out) | shuffle (not fused) | s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in ev["per_teacher"]:
        lines.append(f"| {r['name']} | {r['kind']} | {r['trigger'] or ''} | {r['target'] if r['target'] is not None else ''} "
                     f"| {r['fused']} | {r['suspected']} | {r['lead'] or ''} | {r.get('margin')} | {r.get('inversion')} | "
                     f"{r.get('robust_inversion')} | {r.get('consensus')} | {r.get('pull')} | {r.get('sink')} | {','.join(map(str, r['traps']))} | {r.get('shuffle')} | "
                     f"{r['seconds']} |")
    if ev.get("onnx"):
        lines += ["", "BN-folded ONNX exports (`torch.onnx.export`, constant folding; not in the AUROC above), scored "
                  "with the same calibration:", "",
                  "| export | kind | target | fused z | suspected | flagged | PyTorch original: fused z / suspected |",
                  "|---|---|---|---|---|---|---|"]
        for r in ev["onnx"]:
            lines.append(f"| {r['name']} | {r['kind']} | {r['target'] if r['target'] is not None else ''} | {r['fused']} "
                         f"| {r['suspected']} | {'yes' if r['flagged'] else 'no'} | {r['orig_fused']} / {r['orig_suspected']} |")
    return "\n".join(lines) + "\n"


def write_docs(section: str, heading: str = "## Backdoor detection") -> None:
    path = ROOT / "docs/benchmarks.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _m: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    from teacher_audit.atomic import atomic_write_text

    atomic_write_text(path, text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default=str(ROOT / "zoo-cache"))
    ap.add_argument("--preset", default="dfq")
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--margin", type=float, default=0.5)
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--only", default="", help="substring filter on teacher names")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--onnx", action="store_true", help="also score BN-folded ONNX exports of the zoo teachers")
    ap.add_argument("--onnx-dir", default="", help="where the ONNX exports go (default <zoo>/onnx)")
    ap.add_argument("--onnx-existing", action="store_true", help="with --onnx: score only the exports already there")
    ap.add_argument("--notes", default="", help="Markdown file appended to the docs section (the reading)")
    ap.add_argument("--cached-only", action="store_true", help="evaluate cached scores only; score nothing new")
    ap.add_argument("--cache", default="backdoor_scores.json", help="score cache file name inside the zoo dir")
    ap.add_argument("--extra-cache", action="append", default=[], help="more cache files to read (parallel runs)")
    ap.add_argument("--ntl-cache", default="ntl_features.json",
                    help="cache of the NTL probe's features (file name inside the zoo dir, or a path)")
    ap.add_argument("--no-ntl", action="store_true", help="fuse without the NTL probe's features (pull, trap classes)")
    ap.add_argument("--all-seeds", action="store_true",
                    help="run every teacher (not only the clean ones) with all --clean-seeds: AUROC per seed")
    ap.add_argument("--clean-seeds", default="0,1",
                    help="probe seeds run on CLEAN teachers (calibration spread); others run seed 0 only")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    zoo = Path(args.zoo)
    from teacher_audit.atomic import atomic_write_text

    cache_path = zoo / args.cache
    cache: dict[str, Any] = {}
    for name in [args.cache, *args.extra_cache]:
        if (zoo / name).exists():
            cache.update(json.loads((zoo / name).read_text()))
    ntl_path = zoo / args.ntl_cache
    ntl_cache: dict[str, Any] = json.loads(ntl_path.read_text()) if ntl_path.exists() else {}
    clean_seeds = [int(v) for v in args.clean_seeds.split(",") if v.strip()] or [0]
    rows = []
    # clean teachers first: they set the calibration, so a partial run is still usable
    paths = sorted((p for p in zoo.glob("*.safetensors") if Path(str(p) + ".card.json").exists()),
                   key=lambda p: (not p.name.startswith("clean"), not p.name.startswith("ntl"), p.name))
    if args.onnx:
        onnx_dir = Path(args.onnx_dir) if args.onnx_dir else zoo / "onnx"
        if args.cached_only or args.onnx_existing:  # no new exports: only the ONNX files already there
            paths += sorted(onnx_dir.glob("*.onnx"))
        else:
            paths += [o for o in (export_onnx(p, onnx_dir) for p in paths if not args.only or args.only in p.name)
                      if o is not None]
    for path in paths:
        if args.only and args.only not in path.name:
            continue
        sha = file_sha(path)
        seeds = clean_seeds if (path.name.startswith("clean") or args.all_seeds) and path.suffix != ".onnx" else [0]
        for seed in seeds:
            cfg = bench_config()
            cfg.seed = seed
            ck = sha + ":" + config_key(cfg) + ":" + args.preset
            nk = sha + ":" + ntl_key(seed)
            if (ck not in cache or (not args.no_ntl and nk not in ntl_cache)) and args.cached_only:
                continue
            if ck not in cache:
                print(f"scoring {path.name} (seed {seed}) ...", file=sys.stderr, flush=True)
                cache[ck] = score_teacher(path, cfg, args.preset)
                atomic_write_text(cache_path, json.dumps(cache, indent=1))
            row = dict(cache[ck], seed=seed)
            if not args.no_ntl:
                if nk not in ntl_cache:
                    print(f"NTL features {path.name} (seed {seed}) ...", file=sys.stderr, flush=True)
                    ntl_cache[nk] = dict(score_ntl(path, seed), name=path.name)
                    atomic_write_text(ntl_path, json.dumps(ntl_cache, indent=1))
                n = ntl_cache[nk]
                row["ntl"] = dict(n["details"], flagged=bool(n["flagged"]), use_pull=bool(row.get("has_batchnorm", True)))
            rows.append(with_consensus(row))
    calib = calibrate(rows, args.margin) if args.calibrate else CALIBRATION
    if args.calibrate:
        write_calibration(calib)
        print("calibration:", json.dumps(calib), file=sys.stderr)
    ev = evaluate(rows, calib)
    cmd = "python benchmarks/suite_backdoor.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = markdown(ev, cmd.strip())
    if args.notes:
        md += "\n" + Path(args.notes).read_text().strip() + "\n"
    print(md)
    if args.write_docs:
        write_docs(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
