"""`teacher-audit distill TEACHER --out DIR`: data-free KD of a student, with an optional defense.

Writes ``DIR/student.safetensors`` (+ ``.card.json``), ``DIR/student.onnx`` (onnxruntime parity
checked), ``DIR/distill-report.json`` / ``.md`` and ``DIR/distill-curves.png``. Progress on stderr,
summary on stdout. Ctrl-C leaves ``DIR/checkpoint`` for ``--resume``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from teacher_audit.cli.app import app, err, guarded, out
from teacher_audit.errors import UsageError
from teacher_audit.exitcodes import ExitCode


def _json_obj(text: str | None, flag: str) -> dict | None:
    if text is None:
        return None
    src = Path(text)
    raw = src.read_text() if src.is_file() else text
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{flag} wants a JSON object or a file holding one: {exc.msg}") from None
    if not isinstance(obj, dict):
        raise UsageError(f"{flag} wants a JSON object")
    return obj


@app.command("distill")
@guarded
def distill(
    teacher: Path = typer.Argument(..., help="teacher checkpoint (any supported format; card next to it is read)"),
    out_dir: Path = typer.Option(..., "--out", help="output folder"),
    student: Optional[str] = typer.Option(None, "--student", help="student architecture (registry name)"),
    method: str = typer.Option("fast", "--method", help="engine preset: zskt | dfad | dafl | dfq | fast | cmi (default fast: the only preset measured to reach 80 % on Fashion-MNIST within a CPU budget, see docs/benchmarks.md)"),
    defense: str = typer.Option("none", "--defense", help="defense: none | abd | atesc (when installed)"),
    defense_options: Optional[str] = typer.Option(None, "--defense-options", help="JSON object of defense options"),
    budget_passes: Optional[int] = typer.Option(None, "--budget-passes", min=1, help="teacher image passes"),
    budget_seconds: Optional[float] = typer.Option(None, "--budget-seconds", min=1.0, help="wall-clock seconds"),
    eval_data: Optional[str] = typer.Option(None, "--eval-data", help="dataset name or image folder for ACC/ASR"),
    eval_limit: Optional[int] = typer.Option(None, "--eval-limit", min=1, help="evaluate on at most N images"),
    trigger: Optional[str] = typer.Option(None, "--trigger", help="trigger spec JSON (or file), optional \"target\""),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda[:N]"),
    resume: bool = typer.Option(False, "--resume", help="continue from DIR/checkpoint"),
    keep_checkpoint: bool = typer.Option(False, "--keep-checkpoint", help="keep DIR/checkpoint after success"),
    arch: Optional[str] = typer.Option(None, "--arch", help="force the teacher architecture"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
) -> ExitCode:
    """Distil a student from TEACHER without data; export safetensors + ONNX and a report."""
    from teacher_audit.distill import DistillOptions
    from teacher_audit.distill import distill as run_distill
    from teacher_audit.intake.load import LoadOptions, load_teacher

    opts = DistillOptions(method=method, student_arch=student, defense=defense,
                          defense_options=_json_obj(defense_options, "--defense-options") or {},
                          budget_passes=budget_passes, budget_seconds=budget_seconds, eval_data=eval_data,
                          eval_limit=eval_limit, trigger=_json_obj(trigger, "--trigger"), seed=seed,
                          device=device, resume=resume, progress=not quiet, keep_checkpoint=keep_checkpoint)
    from teacher_audit.device import pick_device

    dev = pick_device(device)
    t, _ = load_teacher(teacher, LoadOptions(arch=arch, device=str(dev)))
    if not quiet:
        err.print(f"distilling {teacher.name} ({t.arch}) with {method}, defense {defense}", markup=False)
    try:
        report = run_distill(t, out_dir, opts, teacher_path=str(teacher))
    except KeyboardInterrupt:
        err.print(f"teacher-audit: interrupted; resume with --resume (state in {out_dir / 'checkpoint'})",
                  markup=False)
        raise
    ev, b = report["evaluation"], report["budget"]
    out.print(f"student: {report['files']['weights']}  (onnx parity {report['onnx']['max_abs_diff']:.1e})",
              markup=False)
    out.print(f"budget: {b['teacher_passes']} teacher passes, {b['seconds']:.0f} s", markup=False)
    if ev["mode"] == "data":
        line = f"ACC teacher {100 * ev['teacher']['acc']:.2f} %  student {100 * ev['student']['acc']:.2f} %"
        if "asr" in ev["student"]:
            line += f"  |  ASR teacher {100 * ev['teacher']['asr']:.2f} %  student {100 * ev['student']['asr']:.2f} %"
        out.print(line, markup=False)
    else:
        out.print(f"no eval data: agreement with the teacher on held-out synthetic samples "
                  f"{100 * ev['agreement']:.2f} %", markup=False)
    for note in report["notes"]:
        out.print(f"note: {note}", markup=False)
    out.print(f"report: {report['files']['report_md']}", markup=False)
    return ExitCode.PASS
