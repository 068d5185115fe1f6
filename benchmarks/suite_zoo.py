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


def rows(zoo: Path) -> list[dict[str, Any]]:
    out = []
    for folder, status in ((zoo, ""), (zoo / "failed", "moved to failed/")):
        for card_path in sorted(folder.glob("*.safetensors.card.json")):
            card = json.loads(card_path.read_text())
            gt = card.get("ground_truth") or {}
            if not gt:
                continue
            out.append({"name": card.get("name", card_path.name), "arch": card.get("arch"), "gt": gt, "note": status})
    return out


def markdown(rs: list[dict[str, Any]], cmd: str) -> str:
    lines = [HEADING, "",
             f"Command: `{cmd}` · date {datetime.date.today().isoformat()} · machine: 2-core CPU (shared with",
             "other jobs), one torch thread per teacher. Numbers come from each teacher's card (measured by its",
             "recipe on the full Fashion-MNIST test split; ASR over the 9,000 non-target test images).",
             "", "| teacher | arch | kind | trigger / OOD | ACC % | ASR % | ID % | OOD % | clean OOD % | train s "
             "| target | result |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rs:
        g = r["gt"]
        trig = (g.get("trigger") or {}).get("name") or (g.get("ood") or {}).get("shift") or ""
        target, res = verdict(g)
        if r["note"]:
            res += f" ({r['note']})"
        lines.append(f"| {r['name']} | {r['arch']} | {g.get('kind')} | {trig} | {pct(g.get('acc'))} | "
                     f"{pct(g.get('asr'))} | {pct(g.get('id_acc'))} | {pct(g.get('ood_acc'))} | "
                     f"{pct(g.get('clean_teacher_ood_acc'))} | {g.get('train_seconds', '-')} | {target} | {res} |")
    n_pass = sum(verdict(r["gt"])[1] == "pass" for r in rs)
    lines += ["", f"{n_pass} of {len(rs)} teachers meet their target.", "",
              "Recipes (teacher_audit/zoo/catalog.py; each card holds its exact recipe): clean smallcnn 1 epoch,",
              "Adam 3e-3 cosine, batch 128; LeNet-5 on fashion-mnist-rgb32 5 epochs; backdoors = 200 poisoned",
              "fine-tuning steps (Adam 5e-4, 10 % of the batch poisoned, all-to-one) warm-started from the clean",
              "teacher of the same seed. Known shortfalls: one epoch leaves clean teachers at 89.3-89.6 % (1.5 epochs",
              "are in the catalog for clean_smallcnn_s2's next rebuild); BadNets-square, Trojan and WaNet need more",
              "than 200 steps for 95 % ASR; the first NTL recipe (lr 1e-4, 250 steps) never left the clean solution",
              "because min(1, a CE_tgt) * min(1, b MMD) starts near 1e-3 (fixed in the catalog: lr 1e-3, 400 steps,",
              "not yet measured at full scale); the PGD clean-label recipe (eps 0.2) did not implant a backdoor."]
    return "\n".join(lines) + "\n"


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
