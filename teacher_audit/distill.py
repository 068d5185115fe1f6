"""``distill``: data-free KD of a student from a teacher on the synthesis engine, with a defense.

Library entry point :func:`distill` (the CLI command is a thin wrapper). Steps: build the engine from
a preset, ask the defense registry for its hooks, run the budgeted loop (checkpointing into
``OUT/checkpoint``; ``resume=True`` continues), evaluate, export ``student.safetensors`` + card and
``student.onnx`` (onnxruntime parity), write ``distill-report.json`` / ``.md`` and a curve plot.

Evaluation: with ``eval_data`` (a ``teacher_audit.data`` name, or a folder read as ImageFolder) the
report gives teacher and student top-1 accuracy on its test split, and with a trigger the attack
success rate (share of triggered non-target images classified as the target, ABD's definition).
Without data the student is judged only by agreement with the teacher on held-out synthetic samples
(fresh noise through the final generator), and the report says so.
"""

from __future__ import annotations

import json
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from teacher_audit.atomic import atomic_path, atomic_write_text
from teacher_audit.errors import UsageError
from teacher_audit.export import export_onnx, save_student
from teacher_audit.synth import PRESETS, Engine
from teacher_audit.synth.checkpoint import CHECKPOINT_NAME
from teacher_audit.synth.students import default_student_arch
from teacher_audit.teacher import Teacher

REPORT_SCHEMA = "teacher-audit/distill/1"


@dataclass
class DistillOptions:
    """Settings of one distillation.

    Attributes:
        method: engine preset (``PRESETS``: zskt, dfad, dafl, dfq, fast, cmi).
        student_arch: registry architecture of the student (default: teacher family, smaller).
        defense: ``DEFENSES`` name (``none``, ``abd``, ``atesc`` when installed).
        defense_options: keyword options of the defense factory.
        budget_passes / budget_seconds: engine budget (default: the preset's ``budget_passes``).
        eval_data: dataset name or folder for ACC/ASR; ``None``: synthetic agreement only.
        eval_limit: cap on evaluation images (``None``: the whole test split).
        trigger: trigger spec dict (``teacher_audit.zoo.triggers``) with an optional ``target`` key.
        curve_points: evaluations recorded during the run (with ``eval_data`` and a passes budget).
        seed, device, resume, progress, keep_checkpoint: as named.
        overrides: ``EngineConfig`` field -> value applied on top of the preset.
    """

    method: str = "fast"
    student_arch: str | None = None
    defense: str = "none"
    defense_options: dict[str, Any] = field(default_factory=dict)
    budget_passes: int | None = None
    budget_seconds: float | None = None
    eval_data: str | None = None
    eval_limit: int | None = None
    trigger: dict[str, Any] | None = None
    curve_points: int = 8
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    progress: bool = True
    keep_checkpoint: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)


class Evaluator:
    """ACC (and ASR) of a raw-input model on labelled images."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, value_range: tuple[float, float],
                 trigger: dict[str, Any] | None = None, batch: int = 500):
        self.x, self.y, self.batch = x, y, batch
        self.trigger = dict(trigger) if trigger else None
        self.target: int | None = None
        self.x_trig: torch.Tensor | None = None
        if self.trigger is not None:
            from teacher_audit.zoo.triggers import apply, from_dict

            self.target = int(self.trigger.pop("target", 0))
            spec = from_dict(self.trigger)
            keep = y != self.target
            lo, hi = value_range
            x01 = (x[keep] - lo) / (hi - lo)
            self.x_trig = lo + (hi - lo) * apply(x01, spec)

    def _pred(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        dev = next(iter(model.buffers()), torch.empty(0)).device
        with torch.no_grad():
            return torch.cat([model(x[i:i + self.batch].to(dev)).argmax(1).cpu() for i in range(0, len(x), self.batch)])

    def __call__(self, model: nn.Module) -> dict[str, float]:
        out = {"acc": float((self._pred(model, self.x) == self.y).float().mean())}
        if self.x_trig is not None and len(self.x_trig):
            out["asr"] = float((self._pred(model, self.x_trig) == self.target).float().mean())
        return out


def _load_eval(name: str, teacher: Teacher, limit: int | None) -> tuple[torch.Tensor, torch.Tensor, str]:
    from teacher_audit.data import load_dataset

    key = name
    if Path(name).is_dir():
        key = f"imagefolder:{name}"
    data = load_dataset(key, "test", spec=teacher.spec, limit=limit)
    return data.x, data.y, key


def _agreement(engine: Engine, student: nn.Module, n: int = 1024) -> dict[str, float]:
    """Student/teacher top-1 agreement on fresh synthetic samples of the final generator."""
    agree = 0
    total = 0
    student.eval()
    for i in range(0, n, engine.config.batch_size):
        b = min(engine.config.batch_size, n - i)
        x = engine.synthesize(b, steps=0)
        t = engine.teacher_logits(x)
        with torch.no_grad():
            s = student(x)
        agree += int((s.argmax(1) == t.argmax(1)).sum())
        total += b
    return {"agreement": agree / max(1, total), "n": total}


def distill(teacher: Teacher, out_dir: str | Path, options: DistillOptions | None = None,
            teacher_path: str | None = None) -> dict[str, Any]:
    """Distil a student from ``teacher`` into ``out_dir``; returns the report dict (also written as JSON/MD).

    Raises:
        UsageError: bad options (unknown method/defense/architecture, bad budget).
        AuditError: ONNX parity failure, evaluation data unavailable.
        KeyboardInterrupt: Ctrl-C; ``OUT/checkpoint`` then holds a resumable state.
    """
    from teacher_audit.defenses import DEFENSES

    opt = options or DistillOptions()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = PRESETS.get(opt.method)()
    for key, value in opt.overrides.items():
        if not hasattr(cfg, key):
            raise UsageError(f"unknown engine setting {key!r}")
        setattr(cfg, key, value)
    cfg.student_arch = opt.student_arch or cfg.student_arch or default_student_arch(teacher.arch)
    engine = Engine(teacher, cfg, device=opt.device, seed=opt.seed)
    _ = engine.student  # build (and validate) the student before any compute
    hooks = DEFENSES.get(opt.defense)(teacher, engine, **opt.defense_options)

    evaluator: Evaluator | None = None
    data_key = None
    if opt.eval_data:
        x, y, data_key = _load_eval(opt.eval_data, teacher, opt.eval_limit)
        evaluator = Evaluator(x, y, tuple(teacher.spec.value_range), opt.trigger)
    elif opt.trigger:
        raise UsageError("--trigger needs --eval-data (ASR is measured on real images)")
    curve_eval = None
    every = None
    if evaluator is not None and opt.curve_points > 0 and (opt.budget_passes or not opt.budget_seconds):
        n = min(len(evaluator.y), 2000)
        curve_eval = Evaluator(evaluator.x[:n], evaluator.y[:n], tuple(teacher.spec.value_range),
                               {**opt.trigger} if opt.trigger else None)
        every = max(1, int((opt.budget_passes or cfg.budget_passes) / opt.curve_points))
    ckpt = out / "checkpoint"
    if opt.resume and not (ckpt / CHECKPOINT_NAME).exists():
        raise UsageError(f"--resume: no checkpoint in {ckpt}")
    result = engine.run(budget_passes=opt.budget_passes, budget_seconds=opt.budget_seconds, hooks=hooks,
                        progress=opt.progress, checkpoint_dir=ckpt, resume=opt.resume, evaluate=curve_eval,
                        eval_every_passes=every)
    student = result.student.eval()

    if evaluator is not None:
        evaluation: dict[str, Any] = {
            "mode": "data", "data": data_key, "n": int(len(evaluator.y)),
            "teacher": evaluator(teacher.model), "student": evaluator(student)}
        if evaluator.target is not None:
            evaluation["trigger"] = {**(opt.trigger or {})}
            evaluation["target"] = evaluator.target
        t_acc = evaluation["teacher"]["acc"]
        evaluation["student_over_teacher"] = evaluation["student"]["acc"] / t_acc if t_acc else None
    else:
        evaluation = {"mode": "synthetic-agreement", **_agreement(engine, student),
                      "note": "no evaluation data: the student is judged only by top-1 agreement with the "
                              "teacher on held-out synthetic samples; accuracy on real data is unknown"}

    net = student.net.cpu()
    spec = teacher.spec
    settings = {"method": opt.method, "defense": opt.defense, "defense_options": opt.defense_options,
                "student_arch": cfg.student_arch, "seed": opt.seed, "device": str(engine.device),
                "budget_passes": opt.budget_passes, "budget_seconds": opt.budget_seconds,
                "resumed": opt.resume, "engine": cfg.to_dict()}
    files = save_student(net, spec, cfg.student_arch, out / "student.safetensors",
                         description=f"student distilled data-free from {teacher.arch} ({opt.method}, "
                                     f"defense {opt.defense})",
                         extra={"distill": {k: settings[k] for k in ("method", "defense", "student_arch", "seed")}})
    onnx_info = export_onnx(net, spec, out / "student.onnx", seed=opt.seed)
    files["onnx"] = onnx_info["path"]
    report = {
        "schema": REPORT_SCHEMA,
        "teacher": {"path": teacher_path, "arch": teacher.arch, "format": teacher.fmt, "spec": spec.to_dict()},
        "settings": settings,
        "budget": {"teacher_passes": result.passes, "seconds": round(result.seconds, 2), "stopped": result.stopped,
                   "limit_passes": opt.budget_passes if (opt.budget_passes or opt.budget_seconds) else cfg.budget_passes,
                   "limit_seconds": opt.budget_seconds},
        "notes": result.notes + [f"defense {opt.defense}: {n}" for n in (getattr(h, "note", "") for h in hooks) if n],
        "evaluation": evaluation,
        "onnx": onnx_info,
        "curves": result.history,
        "files": files,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    plot = _plot_curves(result.history, out / "distill-curves.png")
    if plot:
        files["curves_png"] = plot
    files["report_json"] = str(out / "distill-report.json")
    files["report_md"] = str(out / "distill-report.md")
    atomic_write_text(out / "distill-report.json", json.dumps(report, indent=2, default=str) + "\n")
    atomic_write_text(out / "distill-report.md", render_markdown(report))
    if not opt.keep_checkpoint:
        shutil.rmtree(ckpt, ignore_errors=True)
    return report


def _plot_curves(history: list[dict[str, Any]], path: Path) -> str | None:
    evals = [h for h in history if h.get("kind") == "eval"]
    train = [h for h in history if h.get("kind") == "train" and "agree" in h]
    if not evals and not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if train:
        ax.plot([h["passes"] for h in train], [h["agree"] for h in train], lw=0.8, alpha=0.6,
                label="agreement with teacher (training batches)")
    for key in ("acc", "asr"):
        pts = [(h["passes"], h[key]) for h in evals if key in h]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=f"student {key.upper()} (eval data)")
    ax.set_xlabel("teacher image passes")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return str(path)


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * float(v):.2f} %"


def render_markdown(report: dict[str, Any]) -> str:
    """The human-readable distill report."""
    s, b, ev = report["settings"], report["budget"], report["evaluation"]
    lines = ["# Distill report", "",
             f"- teacher: `{report['teacher']['path']}` ({report['teacher']['arch']}, {report['teacher']['format']})",
             f"- method: **{s['method']}**, defense: **{s['defense']}**, student: `{s['student_arch']}`, "
             f"seed {s['seed']}, device {s['device']}",
             f"- budget spent: {b['teacher_passes']} teacher image passes, {b['seconds']} s (stopped by {b['stopped']})",
             f"- ONNX parity (onnxruntime CPU, {report['onnx']['n_inputs']} random inputs): max abs difference "
             f"{report['onnx']['max_abs_diff']:.2e} (tolerance {report['onnx']['tolerance']:g})", ""]
    if report["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    lines += ["## Evaluation", ""]
    if ev["mode"] == "data":
        lines += [f"On `{ev['data']}` test split ({ev['n']} images):", "", "| model | ACC | ASR |", "|---|---|---|",
                  f"| teacher | {_pct(ev['teacher']['acc'])} | {_pct(ev['teacher'].get('asr'))} |",
                  f"| student | {_pct(ev['student']['acc'])} | {_pct(ev['student'].get('asr'))} |", "",
                  f"Student / teacher accuracy: {_pct(ev['student_over_teacher'])}.", ""]
    else:
        lines += [f"**{ev['note']}.**", "", f"Agreement on {ev['n']} held-out synthetic samples: {_pct(ev['agreement'])}.", ""]
    evals = [h for h in report["curves"] if h.get("kind") == "eval"]
    if evals:
        lines += ["## Curve", "", "| teacher passes | seconds | student ACC | student ASR |", "|---|---|---|---|"]
        lines += [f"| {h['passes']} | {h['seconds']:.0f} | {_pct(h.get('acc'))} | {_pct(h.get('asr'))} |" for h in evals]
        lines.append("")
    lines += ["## Files", ""] + [f"- {k}: `{v}`" for k, v in report["files"].items()] + [""]
    lines += ["## Engine settings", "", "```json", json.dumps(s["engine"], indent=1), "```", ""]
    return "\n".join(lines)
