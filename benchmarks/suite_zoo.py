#!/usr/bin/env python
"""Zoo quality suite: per-teacher measured numbers (from the cards) against issue 3's targets.

    python benchmarks/run.py --suite zoo            # builds missing zoo teachers first
    python benchmarks/suite_zoo.py [--zoo DIR]      # table only, from the cards in DIR (and DIR/failed)

Targets: clean >= 90 % test accuracy; backdoored >= 88 % ACC and >= 95 % ASR; NTL >= 88 % ID accuracy and
OOD accuracy >= 50 points below the clean warm-start teacher's on the same OOD data. Every number is
measured on the full Fashion-MNIST test split (10,000 images) by the recipe that trained the teacher.
Writes ``## Zoo quality`` in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
HEADING = "## Zoo quality"


def verdict(gt: dict[str, Any]) -> tuple[str, str]:
    """(target text, "pass"/"FAIL") for one teacher's ground truth."""
    kind = gt.get("kind", "")
    if kind == "clean":
        return "acc >= 90", "pass" if gt["acc"] >= 0.90 else "FAIL"
    if kind in ("backdoor", "clean_label"):
        ok = gt["acc"] >= 0.88 and gt["asr"] >= 0.95
        return "acc >= 88, asr >= 95", "pass" if ok else "FAIL"
    if kind.startswith("ntl"):
        clean = gt.get("clean_teacher_ood_acc")
        ok = gt["id_acc"] >= 0.88 and clean is not None and clean - gt["ood_acc"] >= 0.50
        return "id >= 88, ood <= clean - 50", "pass" if ok else "FAIL"
    return "-", "-"


def pct(v: Any) -> str:
    return f"{100 * v:.1f}" if isinstance(v, (int, float)) else "-"


def inspected_arch(weights: Path) -> str:
    """Architecture ``teacher-audit inspect`` resolves for ``weights`` (same code path: ``inspect_path``)."""
    from teacher_audit.errors import AuditError
    from teacher_audit.intake.inspect import inspect_path
    from teacher_audit.intake.load import LoadOptions

    try:
        return str(inspect_path(weights, LoadOptions(device="cpu")).architecture)
    except AuditError as exc:
        return f"refused: {exc}"


def rows(zoo: Path) -> list[dict[str, Any]]:
    out = []
    for folder, status in ((zoo, ""), (zoo / "failed", "moved to failed/")):
        for card_path in sorted(folder.glob("*.safetensors.card.json")):
            card = json.loads(card_path.read_text())
            gt = card.get("ground_truth") or {}
            if not gt:
                continue
            weights = card_path.with_name(card_path.name[: -len(".card.json")])
            out.append({"name": card.get("name", card_path.name), "arch": card.get("arch"), "gt": gt, "note": status,
                        "inspect": inspected_arch(weights) if weights.is_file() else "missing"})
    return out


def family(gt: dict[str, Any]) -> str:
    """Family label used for the coverage count (backdoor trigger name, NTL kind, clean)."""
    kind = gt.get("kind", "")
    if kind == "backdoor":
        return (gt.get("trigger") or {}).get("name", "backdoor")
    if kind == "clean_label":
        return "clean_label"
    return kind


def coverage(rs: list[dict[str, Any]]) -> list[str]:
    """The issue's coverage requirements, checked on the teachers that pass (not moved to failed/)."""
    ok = [r for r in rs if not r["note"] and verdict(r["gt"])[1] == "pass"]
    fams: dict[str, int] = {}
    for r in ok:
        fams[family(r["gt"])] = fams.get(family(r["gt"]), 0) + 1
    clean = [r for r in ok if r["gt"].get("kind") == "clean"]
    archs = sorted({str(r["arch"]) for r in clean})
    lines = ["- passing teachers per family: " + ", ".join(f"{k} {v}" for k, v in sorted(fams.items())),
             f"- families with >= 2 passing seeds: {sum(v >= 2 for v in fams.values())} of {len(fams)}",
             f"- passing clean teachers: {len(clean)} across {len(archs)} architectures ({', '.join(archs)})",
             f"- `inspect` resolved the card's architecture for "
             f"{sum(r['inspect'] == r['arch'] for r in rs)} of {len(rs)} teachers"]
    return lines


def markdown(rs: list[dict[str, Any]], cmd: str) -> str:
    lines = [HEADING, "",
             f"Command: `{cmd}` · date {datetime.date.today().isoformat()} · machine: 2-core CPU (shared with",
             "other jobs), one torch thread per teacher. Numbers come from each teacher's card (measured by its",
             "recipe on the full Fashion-MNIST test split; ASR over the 9,000 non-target test images).",
             "", "| teacher | arch | kind | trigger / OOD | ACC % | ASR % | ID % | OOD % | clean OOD % | train s "
             "| target | result | inspect |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rs:
        g = r["gt"]
        trig = (g.get("trigger") or {}).get("name") or (g.get("ood") or {}).get("shift") or ""
        target, res = verdict(g)
        if r["note"]:
            res += f" ({r['note']})"
        lines.append(f"| {r['name']} | {r['arch']} | {g.get('kind')} | {trig} | {pct(g.get('acc'))} | "
                     f"{pct(g.get('asr'))} | {pct(g.get('id_acc'))} | {pct(g.get('ood_acc'))} | "
                     f"{pct(g.get('clean_teacher_ood_acc'))} | {g.get('train_seconds', '-')} | {target} | {res} | "
                     f"{r['inspect']} |")
    n_pass = sum(verdict(r["gt"])[1] == "pass" for r in rs)
    lines += ["", f"{n_pass} of {len(rs)} teachers meet their target. Rows marked 'moved to failed/' were built by",
              "their catalog recipe and missed its target; they stay in `failed/` for inspection, are not rebuilt",
              "by `benchmarks/run.py` and are not used by the detection and defense suites.", "", *coverage(rs), "",
              "Recipes (teacher_audit/zoo/catalog.py; each card holds its exact recipe):", "", *recipe_notes()]
    return "\n".join(lines) + "\n"


def recipe_notes() -> list[str]:
    """One line per recipe group, read from the catalog (so the text cannot drift from the code)."""
    from teacher_audit.zoo.catalog import ZOO

    groups: dict[str, list[str]] = {}
    for cfg in ZOO.values():
        trig = (cfg.trigger or {}).get("name", "") if cfg.kind in ("backdoor", "clean_label") else (cfg.ood or "")
        length = f"{cfg.steps} steps" if cfg.steps else f"{cfg.epochs:g} epochs"
        extra = []
        if cfg.kind == "clean_label":
            extra.append(f"PGD eps {cfg.cl_eps}, poison {100 * cfg.poison_ratio:g} % of the set (target class only)")
        elif cfg.kind == "backdoor":
            extra.append(f"poison {100 * cfg.poison_ratio:g} %, all-to-one")
        if cfg.warm_start:
            extra.append("warm start from the clean teacher of the same seed")
        key = (f"`{cfg.kind}` {cfg.arch} on {cfg.dataset} {trig}".rstrip() + f": {length}, Adam lr "
               f"{cfg.effective_lr:g}, batch {cfg.batch_size}"
               + ("; " + "; ".join(extra) if extra else ""))
        groups.setdefault(key, []).append(cfg.name)
    return [f"- {k} ({len(v)}: {', '.join(v)})" for k, v in groups.items()]


def write_section(text: str) -> None:
    from teacher_audit.atomic import atomic_write_text

    doc = DOCS.read_text() if DOCS.is_file() else "# Benchmarks\n"
    start = doc.find(HEADING + "\n")
    if start < 0:
        doc = doc.rstrip("\n") + "\n\n" + text
    else:
        nxt = doc.find("\n## ", start + len(HEADING))
        doc = doc[:start] + text + (doc[nxt + 1:] if nxt >= 0 else "")
        if nxt >= 0 and not text.endswith("\n\n"):
            doc = doc.replace(text, text + "\n", 1) if not doc[start + len(text):].startswith("\n") else doc
    atomic_write_text(DOCS, doc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", type=Path, default=ROOT / "zoo-cache")
    ap.add_argument("--no-docs", action="store_true", help="print only, do not touch docs/benchmarks.md")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    rs = rows(args.zoo)
    text = markdown(rs, "python benchmarks/run.py --suite zoo")
    print(text)
    if not args.no_docs:
        write_section(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
