"""NTL suite: robustness asymmetry on real data, NTL-probe detection AUROC, ATEsc defense.

Usage (from the repo root; the zoo is read from ``zoo-cache/``, built by ``benchmarks/suite_zoo.py``)::

    .venv/bin/python benchmarks/suite_ntl.py asym    [--teachers a,b,...] [--n 200]
    .venv/bin/python benchmarks/suite_ntl.py detect  [--teachers ...] [--seeds 0]
    .venv/bin/python benchmarks/suite_ntl.py defense [--teachers ...] [--budget 20000]
    .venv/bin/python benchmarks/suite_ntl.py seeds   --teachers a,b --seeds 0,1,2 [--defenses ...] [--write-docs]

Each writes its table to ``docs/benchmarks.md`` under its own heading (``## Robustness asymmetry``,
``## NTL detection``, ``## ATEsc defense``) with the command, date and machine, and the raw numbers
to ``zoo-cache/ntl-results/<suite>.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from teacher_audit.atomic import atomic_write_text  # noqa: E402
from teacher_audit.teacher import Teacher  # noqa: E402

ZOO = ROOT / "zoo-cache"
ZOOS: list[Path] = [ZOO]  # --extra-zoo adds folders written by the same zoo builder
RESULTS = ZOO / "ntl-results"
DOC = ROOT / "docs" / "benchmarks.md"


# ----------------------------------------------------------------------------- zoo access
def zoo_names() -> list[str]:
    names = {p.name[: -len(".safetensors")] for z in ZOOS for p in z.glob("*.safetensors")
             if (z / (p.name + ".card.json")).exists()}
    return sorted(names)


def load(name: str) -> tuple[Teacher, dict[str, Any]]:
    from teacher_audit.intake.archs import build_arch
    from teacher_audit.zoo.build import load_zoo_teacher

    folder = next((z for z in ZOOS if (z / f"{name}.safetensors").exists()), ZOO)
    net, spec, card = load_zoo_teacher(folder, name, build_arch)
    return Teacher.from_net(net, spec, arch=card["arch"], fmt="safetensors"), card


def kind_of(card: dict[str, Any]) -> str:
    return str((card.get("ground_truth") or {}).get("kind", "clean"))


def ood_transform(desc: dict[str, Any]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The OOD domain of an NTL card (``ground_truth.ood``) as a transform of [0, 1] images."""
    if desc.get("type") == "domain_shift":
        from teacher_audit.data import apply_shift

        return lambda x: apply_shift(str(desc["shift"]), x)
    from teacher_audit.zoo.triggers import apply, from_dict

    spec = from_dict(desc["trigger"])
    return lambda x: apply(x, spec)


def ood_domains(cards: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every distinct OOD domain of the NTL teachers, by a short name."""
    out: dict[str, dict[str, Any]] = {}
    for card in cards.values():
        desc = (card.get("ground_truth") or {}).get("ood")
        if desc:
            name = desc.get("shift") or (desc.get("trigger") or {}).get("name") or desc.get("type")
            out.setdefault(f"{desc.get('type')}:{name}", desc)
    return out


# ----------------------------------------------------------------------------- docs
def write_section(title: str, body: str) -> None:
    """Replace (or append) ``## title`` in docs/benchmarks.md; other sections are left untouched."""
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    block = f"## {title}\n\n{body.rstrip()}\n"
    pat = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pat.search(text):
        text = pat.sub(lambda _m: block + "\n", text, count=1)
    else:
        text = text.rstrip() + "\n\n" + block
    atomic_write_text(DOC, text.rstrip() + "\n")


def header(cmd: str) -> str:
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"Command: `{cmd}`  \nDate: {now}; machine: 2-core CPU (shared with other jobs, so times are "
            f"upper bounds); torch threads: {torch.get_num_threads()}.\n")


def save_json(suite: str, data: Any) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / f"{suite}.json", json.dumps(data, indent=1, default=float))


def auroc(pos: list[float], neg: list[float]) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


# ----------------------------------------------------------------------------- suites
def suite_asym(args: argparse.Namespace) -> None:
    from teacher_audit.attacks.pgd import kl_at_eps, min_flip_eps
    from teacher_audit.data import load_dataset

    names = args.teachers.split(",") if args.teachers else zoo_names()
    cards = {n: load(n)[1] for n in names}
    domains = ood_domains(cards)
    rows: list[dict[str, Any]] = []
    if args.merge:  # tabulate every earlier asym*.json run instead of measuring again
        rows = [r for f in sorted(RESULTS.glob("asym*.json")) for r in json.loads(f.read_text())]
        names = []
    for name in names:
        teacher, card = load(name)
        kind = kind_of(card)
        if kind.startswith("backdoor") or kind == "clean_label":
            continue
        data = load_dataset("fashion-mnist", "test", spec=teacher.spec, limit=args.n)
        own = (card.get("ground_truth") or {}).get("ood")
        sets = {"ID": None}
        for dn, desc in domains.items():
            if own is None or desc == own:
                sets[("own OOD " if own else "OOD ") + dn] = desc
        for dn, desc in sets.items():
            x = data.x if desc is None else ood_transform(desc)(data.x)
            g = torch.Generator().manual_seed(0)
            eps, cens, _ = min_flip_eps(teacher.model, x, eps_max=32 / 255, bisection_steps=4, pgd_steps=5,
                                        generator=g)
            kl, _ = kl_at_eps(teacher.model, x, eps=8 / 255, steps=5, generator=g)
            with torch.no_grad():
                p = F.softmax(teacher.model(x), 1)
            rows.append({"teacher": name, "kind": kind, "data": dn, "acc": float((p.argmax(1) == data.y).float().mean()),
                         "median_eps255": float(eps.median() * 255), "censored": float(cens.float().mean()),
                         "kl8_median": float(kl.median()), "conf": float(p.max(1)[0].mean()),
                         "top_class_share": float(p.argmax(1).bincount(minlength=p.shape[1]).max() / x.shape[0])})
            print(rows[-1], flush=True)
    if not args.merge:
        save_json("asym" + args.out, rows)
    lines = ["| teacher | kind | data | acc | median flip ε (/255) | robust beyond 32/255 | median KL @ 8/255 | "
             "confidence | top-class share |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['teacher']} | {r['kind']} | {r['data']} | {100 * r['acc']:.1f} | {r['median_eps255']:.2f} | "
                     f"{100 * r['censored']:.0f}% | {r['kl8_median']:.3f} | {r['conf']:.2f} | {r['top_class_share']:.2f} |")
    body = (header(" ".join(["python benchmarks/suite_ntl.py"] + sys.argv[1:])) +
            f"\nReal Fashion-MNIST test images (first {args.n}), ID and the zoo's NTL OOD domains; smallest "
            "label-flipping L∞ radius by geometric bisection (4 rounds x 5-step PGD, ε ≤ 32/255) and the KL "
            "between T(x) and T(x_adv) after 5-step KL-PGD at 8/255.\n\n" + "\n".join(lines))
    write_section("Robustness asymmetry", body)


def run_probe(name: str, seed: int, preset: str | None = None) -> dict[str, Any]:
    """One NTL-probe run at its defaults (its own seeded synthesis engine); ``preset`` overrides it."""
    from teacher_audit.probes.ntl_robustness import NTLConfig, NTLRobustnessProbe

    teacher, card = load(name)
    cfg = NTLConfig(seed=seed, evidence=False)
    if preset:
        cfg.profile.preset = preset
    t0 = time.perf_counter()
    c0 = time.process_time()
    res = NTLRobustnessProbe(cfg).run(teacher, None)
    cpu = time.process_time() - c0
    d = {k: v for k, v in res.details.items() if k not in ("profile",)}
    return {"teacher": name, "kind": kind_of(card), "arch": card.get("arch"), "seed": seed, "score": res.score,
            "flagged": res.flagged, "threshold": res.threshold, "seconds": time.perf_counter() - t0, "cpu_seconds": cpu,
            "passes": res.budget.teacher_passes, "features": d}


def suite_detect(args: argparse.Namespace) -> None:
    names = args.teachers.split(",") if args.teachers else zoo_names()
    rows = []
    prev = {(r["teacher"], r["seed"]): r for r in (json.loads((RESULTS / f"detect{args.out}.json").read_text())
                                                    if (RESULTS / f"detect{args.out}.json").exists() and args.reuse else [])}
    if args.merge:  # tabulate every earlier detect*.json run instead of probing again
        rows = [r for f in sorted(RESULTS.glob("detect*.json")) for r in json.loads(f.read_text())]
        names = []
    for name in names:
        if args.wait:  # the zoo is still being built: wait for the teacher's card
            while not any((z / f"{name}.safetensors.card.json").exists() for z in ZOOS):
                time.sleep(20)
        seeds = args.clean_seeds if args.clean_seeds and kind_of(load(name)[1]) == "clean" else args.seeds
        for seed in [int(s) for s in seeds.split(",")]:
            r = prev.get((name, seed)) or run_probe(name, seed, args.probe_preset or None)
            rows.append(r)
            print(f"{name} seed {seed}: score {r['score']:.3f} flagged {r['flagged']} {r['seconds']:.1f}s", flush=True)
            save_json("detect" + args.out, rows)
    write_detect(rows, args)


def calibrate(clean_scores: list[float], margin: float = 1.25, per_unit: int = 100) -> float:
    """Default-threshold rule (clean teachers only): largest clean score x ``margin``, rounded up to
    ``1 / per_unit`` (0.01 by default)."""
    from teacher_audit.probes.calibration_fit import headroom_threshold  # the rule `teacher-audit calibrate` uses

    return headroom_threshold(clean_scores, 1.0 / per_unit, margin)


def write_detect(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """The ``## NTL detection`` section: calibration, AUROCs, per-run table (backdoor targets beside)."""
    from teacher_audit.probes.ntl_robustness import DEFAULT_THRESHOLD

    def mean_by_teacher(sel: Callable[[dict[str, Any]], bool]) -> list[float]:
        by: dict[str, list[float]] = {}
        for r in rows:
            if sel(r):
                by.setdefault(r["teacher"], []).append(r["score"])
        return [float(np.mean(v)) for v in by.values()]

    is_ntl = lambda r: r["kind"].startswith("ntl")  # noqa: E731
    is_clean = lambda r: r["kind"] == "clean"  # noqa: E731
    clean = [r["score"] for r in rows if is_clean(r)]
    thr = calibrate(clean)
    pos, neg_c = mean_by_teacher(is_ntl), mean_by_teacher(is_clean)
    neg_all = mean_by_teacher(lambda r: not is_ntl(r))
    flagged = lambda r, t: r["score"] >= t  # noqa: E731
    clean_flag_def = sorted({r["teacher"] for r in rows if is_clean(r) and flagged(r, DEFAULT_THRESHOLD)})
    bd = [r for r in rows if r["kind"] not in ("clean",) and not is_ntl(r)]
    bd_flag = sorted({r["teacher"] for r in bd if flagged(r, DEFAULT_THRESHOLD)})
    ntl_missed = sorted({r["teacher"] for r in rows if is_ntl(r) and not flagged(r, DEFAULT_THRESHOLD)})
    cpu = [r.get("cpu_seconds", float("nan")) for r in rows if r.get("arch") == "smallcnn"]
    lines = ["| teacher | kind | probe seed | score | flagged @ default | pull class (share) | backdoor target | "
             "collapsed robust tail | robust mode share | median flip ε (/255) | cpu s | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (not is_ntl(r), r["kind"] != "clean", r["teacher"], r["seed"])):
        f = r["features"]
        _, card = load(r["teacher"]) if r["teacher"] in zoo_names() else (None, {})
        tgt = (card.get("ground_truth") or {}).get("target") if r["kind"].startswith("backdoor") else None
        lines.append(f"| {r['teacher']} | {r['kind']} | {r['seed']} | {r['score']:.3f} | "
                     f"{'**yes**' if flagged(r, DEFAULT_THRESHOLD) else 'no'} | {f.get('pull_class')} "
                     f"({f.get('pull_share', float('nan')):.2f}) | {'–' if tgt is None else tgt} | "
                     f"{f.get('collapsed_tail_share', float('nan')):.3f} | {f.get('collapsed_mode_share', float('nan')):.3f} | "
                     f"{f['median_eps255']:.2f} | {r.get('cpu_seconds', float('nan')):.1f} | {r['seconds']:.0f} |")
    body = (header(" ".join(["python benchmarks/suite_ntl.py"] + sys.argv[1:])) +
            f"\n**Calibration (clean teachers only).** {len(clean)} runs on {len(neg_c)} clean teachers "
            f"(several probe seeds each = independent syntheses): clean scores {min(clean) if clean else float('nan'):.3f}–"
            f"{max(clean) if clean else float('nan'):.3f}; rule: largest clean score × 1.25 rounded up to 0.01 "
            f"→ **{thr:.2f}**; `DEFAULT_THRESHOLD` in the probe = **{DEFAULT_THRESHOLD:.2f}**.\n\n"
            f"**Detection** (per teacher, score averaged over its probe seeds): AUROC NTL vs clean "
            f"**{auroc(pos, neg_c):.3f}** ({len(pos)} NTL, {len(neg_c)} clean); AUROC NTL vs clean + backdoored "
            f"**{auroc(pos, neg_all):.3f}** ({len(neg_all)} negatives). At the default threshold: clean teachers "
            f"flagged {len(clean_flag_def)} {clean_flag_def or ''}; NTL teachers missed {len(ntl_missed)} "
            f"{ntl_missed or ''}; backdoored teachers flagged as NTL {len(bd_flag)} of {len({r['teacher'] for r in bd})}"
            f". Probe cost on smallcnn teachers: median {np.median(cpu) if cpu else float('nan'):.1f} CPU s "
            f"(single-thread process time, max {max(cpu) if cpu else float('nan'):.1f}); wall times are "
            f"inflated by the shared machine.\n\n" + "\n".join(lines))
    write_section("NTL detection", body)


def defense_runs(args: argparse.Namespace) -> list[tuple[str, str, dict[str, Any]]]:
    """``--defenses`` items as ``(label, defense, options)``: ``none``, ``atesc`` or
    ``label=defense:k=v;k=v`` for an ablation (e.g. ``no_escape=atesc:escape=none``). ATEsc runs start from
    ``--atesc-options``; an item's own options go on top."""
    runs = []
    for item in filter(None, args.defenses.split(",")):
        label, _, rest = item.partition("=")
        defense, _, text = (rest or label).partition(":")
        opts = parse_options(args.atesc_options) if defense == "atesc" else {}
        opts.update(parse_options(text.replace(";", ",")))
        runs.append((label, defense, opts))
    return runs


def pct(v: float | None) -> str:
    """A share as a percentage with one decimal ("–" when missing)."""
    return "–" if v is None else f"{100 * v:.1f}"


def goal_met(kind: str, id0: float | None, id1: float | None, agree0: float | None,
             agree1: float | None) -> bool | None:
    """Issue 6's defense goal for one comparison, DFKD (``*0``) against the defense (``*1``): clean teachers
    ΔID >= -1 point; NTL teachers ΔID >= +3 points and agreement with the trap's labels at most half of
    DFKD's. ΔID is rounded to the printed 0.1 point. None when either ID accuracy is missing."""
    if id0 is None or id1 is None:
        return None
    gain = round(100 * (id1 - id0), 1)
    if kind == "clean":
        return gain >= -1.0
    return gain >= 3.0 and agree0 is not None and agree1 is not None and agree1 <= agree0 / 2


def met_text(ok: bool | None) -> str:
    return "–" if ok is None else "met" if ok else "not met"


class DefenseBench:
    """One teacher's test data and the measurements of a defended (or plain) DFKD run on it."""

    def __init__(self, name: str, n: int):
        from teacher_audit.data import load_dataset

        self.name = name
        self.teacher, self.card = load(name)
        desc = (self.card.get("ground_truth") or {}).get("ood")
        self.data = load_dataset("fashion-mnist", "test", spec=self.teacher.spec, limit=n)
        self.xo = ood_transform(desc)(self.data.x) if desc else None

    def acc(self, model: torch.nn.Module, x: torch.Tensor) -> float:
        with torch.no_grad():
            return float((model(x).argmax(1) == self.data.y).float().mean())

    def per_class(self, model: torch.nn.Module) -> list[float]:
        """ID accuracy of ``model`` per true class (where an ID loss sits)."""
        with torch.no_grad():
            hit = model(self.data.x).argmax(1) == self.data.y
        return [float(hit[self.data.y == c].float().mean()) for c in sorted(set(self.data.y.tolist()))]

    def agree_ood(self, model: torch.nn.Module) -> float | None:
        """Share of the OOD images the teacher gets wrong on which ``model`` copies the wrong label."""
        if self.xo is None:
            return None
        with torch.no_grad():
            t = self.teacher.model(self.xo).argmax(1)
            wrong = t != self.data.y  # the teacher's misleading OOD labels
            return float((model(self.xo).argmax(1)[wrong] == t[wrong]).float().mean()) if wrong.any() else None

    def row(self) -> dict[str, Any]:
        t = self.teacher.model
        return {"teacher": self.name, "kind": kind_of(self.card), "teacher_id": self.acc(t, self.data.x),
                "teacher_ood": self.acc(t, self.xo) if self.xo is not None else None}

    def run(self, label: str, defense: str, opts: dict[str, Any], seed: int, budget: int,
            preset: str, seconds: float | None = None) -> dict[str, Any]:
        """Distil at engine seed ``seed`` with ``defense`` (``none``: plain DFKD); ``{label}_*`` fields.
        ``seconds``: a wall-clock budget instead of ``budget`` teacher passes."""
        from teacher_audit.defenses import DEFENSES
        from teacher_audit.synth import PRESETS, Engine

        torch.manual_seed(seed)
        engine = Engine(self.teacher, PRESETS.get(preset)(), device="cpu", seed=seed)
        hooks = DEFENSES.get(defense)(self.teacher, engine, **opts)
        t0 = time.perf_counter()
        res = engine.run(budget_passes=None if seconds else budget, budget_seconds=seconds, hooks=hooks,
                         progress=False)
        s = res.student
        pgd = int(getattr(hooks[0], "pgd_passes", 0)) if hooks else 0  # the attack's passes (ATEsc)
        out: dict[str, Any] = {
            f"{label}_options": opts,
            f"{label}_passes": int(engine.passes) + (0 if opts.get("charge_passes", True) else pgd),
            f"{label}_iterations": int(engine.iteration),
            f"{label}_id": self.acc(s, self.data.x),
            f"{label}_id_per_class": self.per_class(s),
            f"{label}_ood": self.acc(s, self.xo) if self.xo is not None else None,
            f"{label}_agree_ood": self.agree_ood(s),
            f"{label}_seconds": time.perf_counter() - t0,
            f"{label}_pgd_passes": pgd,
        }
        if defense == "atesc":
            sm = hooks[0].summary()  # type: ignore[attr-defined]
            out.update({f"{label}_{k}": sm[k] for k in ("robust_share", "trap_steps", "steps", "pgd_seconds",
                                                     "attacked", "passed_over", "hot_classes",
                                                     "latch_class")})
        return out


def suite_defense(args: argparse.Namespace) -> None:
    if args.merge:
        rows = merge_rows("defense")
        write_defense(rows, args)
        return
    names = args.teachers.split(",") if args.teachers else [n for n in zoo_names()
                                                             if kind_of(load(n)[1]) in ("clean", "ntl_target", "ntl_watermark")]
    seed = int(args.seeds.split(",")[0])  # the engine seed of every run (the first of --seeds)
    rows = []
    for name in names:
        bench = DefenseBench(name, args.n)
        row = dict(bench.row(), seed=seed)
        for label, defense, opts in defense_runs(args):
            row.update(bench.run(label, defense, opts, seed, args.budget, args.preset))
        rows.append(row)
        print(row, flush=True)
        save_json("defense" + args.out, rows)
        write_defense(rows, args)  # after every teacher: a partial table survives an interrupted run


def run_key(name: str, label: str, defense: str, opts: dict[str, Any], seed: int, args: argparse.Namespace) -> str:
    """File name of one cached seeds-suite run (teacher, label, seed and a hash of what it ran)."""
    import hashlib

    spec = {"defense": defense, "opts": opts, "budget": args.budget, "n": args.n, "preset": args.preset}
    if args.budget_seconds:  # a wall-clock budget replaces the passes budget (older keys unchanged)
        spec = dict(spec, budget=None, budget_seconds=args.budget_seconds)
    what = json.dumps(spec, sort_keys=True)
    return f"{name}__{label}__s{seed}__{hashlib.sha256(what.encode()).hexdigest()[:10]}.json"


def suite_seeds(args: argparse.Namespace) -> None:
    """Every ``--defenses`` run at every ``--seeds`` engine seed, one cached JSON per run
    (``<results>/runs/``; an interrupted suite resumes), then the ``## ATEsc defense, several seeds``
    table: per teacher and variant the mean ID / agreement over seeds and, per seed, the change
    against plain DFKD at the same seed."""
    names = [n for n in args.teachers.split(",") if n]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    runs = defense_runs(args)
    folder = RESULTS / "runs"
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for name in names:
        bench: DefenseBench | None = None
        for seed in seeds:
            row: dict[str, Any] = {"seed": seed}
            for label, defense, opts in runs:
                f = folder / run_key(name, label, defense, opts, seed, args)
                if not f.exists():
                    if args.merge:
                        continue
                    bench = bench or DefenseBench(name, args.n)
                    got = dict(bench.row(), **bench.run(label, defense, opts, seed, args.budget, args.preset,
                                                        args.budget_seconds))
                    atomic_write_text(f, json.dumps(got, indent=1, default=float))
                    print(name, seed, label, {k: v for k, v in got.items() if not k.endswith("_options")}, flush=True)
                row.update(json.loads(f.read_text()))
            if "teacher" in row:
                rows.append(row)
        if args.write_docs:
            write_seeds(rows, runs, args)


def write_seeds(rows: list[dict[str, Any]], runs: list[tuple[str, str, dict[str, Any]]],
                args: argparse.Namespace) -> None:
    """The ``## ATEsc defense, several seeds`` section from the cached runs measured so far."""
    labels = [lab for lab, _, _ in runs if lab != "none"]

    def mean(vals: list[float | None]) -> float | None:
        vals = [v for v in vals if v is not None]
        return float(np.mean(vals)) if vals else None

    lines = ["| teacher | kind | variant | seeds | student ID (mean) | agree w/ misleading OOD (mean) | "
             "ΔID per seed (pts) | goal met (seeds) | goal on the means |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["teacher"] for r in rows):
        rs = [r for r in rows if r["teacher"] == name]
        kind = rs[0]["kind"]
        for lab in ["none"] + labels:
            have = [r for r in rs if r.get(f"{lab}_id") is not None]
            if not have:
                continue
            mid, mag = mean([r[f"{lab}_id"] for r in have]), mean([r.get(f"{lab}_agree_ood") for r in have])
            if lab == "none":
                lines.append(f"| {name} | {kind} | DFKD | {','.join(str(r['seed']) for r in have)} | {pct(mid)} | "
                             f"{pct(mag)} | | | |")
                continue
            paired = [r for r in have if r.get("none_id") is not None]
            deltas = ", ".join(f"s{r['seed']} {100 * (r[f'{lab}_id'] - r['none_id']):+.1f}" for r in paired)
            oks = [goal_met(kind, r["none_id"], r[f"{lab}_id"], r.get("none_agree_ood"), r.get(f"{lab}_agree_ood"))
                   for r in paired]
            on_means = met_text(goal_met(kind, mean([r["none_id"] for r in paired]),
                                         mean([r[f"{lab}_id"] for r in paired]),
                                         mean([r.get("none_agree_ood") for r in paired]),
                                         mean([r.get(f"{lab}_agree_ood") for r in paired])))
            lines.append(f"| {name} | {kind} | {lab} | {','.join(str(r['seed']) for r in have)} | {pct(mid)} | "
                         f"{pct(mag)} | {deltas} | {sum(bool(o) for o in oks)}/{len(oks)} | {on_means} |")
    variants = "; ".join(f"`{lab}` = `{d}` `{o}`" for lab, d, o in runs)
    body = (header(" ".join(["python benchmarks/suite_ntl.py"] + sys.argv[1:])) +
            f"\nPreset `{args.preset}`, {args.budget} synthesis passes per run, first {args.n} Fashion-MNIST test "
            f"images, engine seeds `{args.seeds}`. Variants: {variants}. Goal per seed as in `## ATEsc defense` "
            "(NTL: ΔID >= +3 points and agreement at most half of DFKD's at the same seed; clean: ΔID >= -1).\n\n"
            + "\n".join(lines))
    if getattr(args, "notes", ""):
        body += "\n\n" + Path(args.notes).read_text().strip()
    write_section("ATEsc defense, several seeds", body)


def merge_rows(suite: str) -> list[dict[str, Any]]:
    """Rows of every ``<suite>*.json`` in the results folder, merged per teacher (later files win)."""
    by: dict[str, dict[str, Any]] = {}
    for f in sorted(RESULTS.glob(f"{suite}*.json"), key=lambda p: p.stat().st_mtime):
        for r in json.loads(f.read_text()):
            by.setdefault(r["teacher"], {}).update(r)
    order = {"ntl_target": 0, "ntl_watermark": 1, "clean": 2}
    return sorted(by.values(), key=lambda r: (order.get(r["kind"], 3), r["teacher"]))


def write_defense(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """The ``## ATEsc defense`` section from the rows measured so far (plus an ablation table when
    labelled variants were run)."""

    def goal(r: dict[str, Any]) -> str:
        return met_text(goal_met(r["kind"], r.get("none_id"), r.get("atesc_id"), r.get("none_agree_ood"),
                                 r.get("atesc_agree_ood")))

    lines = ["| teacher | kind | teacher ID/OOD | DFKD student ID/OOD | DFKD agree w/ misleading OOD | "
             "ATEsc student ID/OOD | ATEsc agree w/ misleading OOD | ATEsc robust share | ΔID (pts) | goal | "
             "teacher passes DFKD / ATEsc | s DFKD / ATEsc |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        g = r.get
        d = "–" if g("none_id") is None or g("atesc_id") is None else f"{100 * (r['atesc_id'] - r['none_id']):+.1f}"
        share = g("atesc_robust_share")
        lines.append(f"| {r['teacher']} | {r['kind']} | {pct(g('teacher_id'))}/{pct(g('teacher_ood'))} | "
                     f"{pct(g('none_id'))}/{pct(g('none_ood'))} | {pct(g('none_agree_ood'))} | "
                     f"{pct(g('atesc_id'))}/{pct(g('atesc_ood'))} | {pct(g('atesc_agree_ood'))} | "
                     f"{'–' if share is None else f'{share:.2f}'} | {d} | {goal(r)} | "
                     f"{g('none_passes')} / {g('atesc_passes')} | "
                     f"{g('none_seconds') or 0:.0f} / {g('atesc_seconds') or 0:.0f} |")
    opts = next((r["atesc_options"] for r in rows if r.get("atesc_options") is not None), None)
    body = (header(" ".join(["python benchmarks/suite_ntl.py"] + sys.argv[1:])) +
            f"\nPreset `{args.preset}`, budget {args.budget} teacher passes per run; ATEsc options "
            f"`{opts if opts is not None else (args.atesc_options or 'defaults')}` on top of the defaults "
            "(with `charge_passes=0` the budget is the same *synthesis* budget "
            f"for both and ATEsc's PGD passes are added in the passes column), first {args.n} Fashion-MNIST test images; OOD = the NTL teacher's own "
            "domain; 'agree' = share of OOD images the teacher gets wrong on which the student copies the "
            "teacher's wrong label. Goal: NTL teachers ΔID >= +3 points and agreement at most half of DFKD's; "
            "clean teachers ΔID >= -1 point.\n\n" + "\n".join(lines))
    labels = sorted({k[: -len("_id")] for r in rows for k in r if k.endswith("_id") and k != "teacher_id"}
                    - {"none", "atesc"})
    if labels:
        ab = ["| teacher | " + " | ".join(f"{lab} ID/OOD | {lab} agree" for lab in labels) + " |",
              "|---|" + "---|---|" * len(labels)]
        for r in (r for r in rows if any(r.get(f"{lab}_id") is not None for lab in labels)):
            cells = [f"{pct(r.get(f'{lab}_id'))}/{pct(r.get(f'{lab}_ood'))} | {pct(r.get(f'{lab}_agree_ood'))}"
                     for lab in labels]
            ab.append(f"| {r['teacher']} | " + " | ".join(cells) + " |")
        variants = {lab: next((r.get(f"{lab}_options") for r in rows if r.get(f"{lab}_options") is not None), {})
                    for lab in labels}
        body += ("\n\nAblations (same budget and seed; options on top of the ATEsc defaults): "
                 + "; ".join(f"`{lab}` = `{v}`" for lab, v in variants.items()) + "\n\n" + "\n".join(ab))
    if getattr(args, "notes", ""):
        body += "\n\n" + Path(args.notes).read_text().strip()
    write_section("ATEsc defense", body)


def parse_options(text: str) -> dict[str, Any]:
    """``"a=1,b=x"`` -> ``{"a": 1, "b": "x"}`` (ints, floats, 0/1 for booleans as ints)."""
    out: dict[str, Any] = {}
    for part in filter(None, text.split(",")):
        k, v = part.split("=", 1)
        for cast in (int, float):
            try:
                out[k] = cast(v)
                break
            except ValueError:
                continue
        else:
            out[k] = v
    for flag in ("charge_passes", "cache", "latch_attack"):
        if flag in out:
            out[flag] = bool(out[flag])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suite", choices=["asym", "detect", "defense", "seeds"])
    ap.add_argument("--teachers", default="")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--budget", type=int, default=20000)
    ap.add_argument("--preset", default="fast", help="engine preset of the defense runs (detect: the probe's own)")
    ap.add_argument("--zoo", default="", help="zoo folder (default zoo-cache/); results go to <zoo>/ntl-results")
    ap.add_argument("--results", default="", help="folder for the raw JSON results (default <zoo>/ntl-results)")
    ap.add_argument("--wait", action="store_true", help="detect: wait for teachers still being built")
    ap.add_argument("--clean-seeds", default="", help="detect: probe seeds for clean teachers (calibration)")
    ap.add_argument("--probe-preset", default="", help="detect: override the probe's own synthesis preset")
    ap.add_argument("--atesc-options", default="", help="defense: ATEsc options, e.g. charge_passes=0,lam=1")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--budget-seconds", type=float, default=None,
                    help="seeds: a wall-clock budget per run instead of --budget passes (run the compared "
                         "variants side by side so they see the same machine load)")
    ap.add_argument("--reuse", action="store_true", help="reuse rows of an earlier detect run")
    ap.add_argument("--extra-zoo", action="append", default=[], help="another folder of zoo-built teachers")
    ap.add_argument("--out", default="", help="results file suffix (keeps runs apart)")
    ap.add_argument("--merge", action="store_true",
                    help="detect/defense: tabulate all earlier detect*.json / defense*.json runs")
    ap.add_argument("--write-docs", action="store_true", help="seeds: write the docs section")
    ap.add_argument("--notes", default="", help="defense: a Markdown file appended to the section (the reading)")
    ap.add_argument("--defenses", default="none,atesc",
                    help="defense: runs, 'none', 'atesc' or 'label=defense:k=v;k=v' (ablations)")
    args = ap.parse_args()
    global RESULTS
    if args.zoo:
        ZOOS[:] = [Path(args.zoo)]
        RESULTS = Path(args.zoo) / "ntl-results"
    if args.results:
        RESULTS = Path(args.results)
    ZOOS.extend(Path(p) for p in args.extra_zoo)
    torch.set_num_threads(args.threads)
    {"asym": suite_asym, "detect": suite_detect, "defense": suite_defense, "seeds": suite_seeds}[args.suite](args)


if __name__ == "__main__":
    main()
