"""`teacher-audit scan PATH...`: audit checkpoints, write reports, exit with the gate's verdict.

One file: ``--json/--md/--html/--sarif FILE`` write that file's report.
Several files (or a directory / glob): ``--json`` writes a ScanSet (all reports + overall verdict),
``--md`` a summary table with a section per non-passing file, ``--sarif`` one SARIF run covering
every file (what a CI uploads); ``--html`` needs a single file — use ``--out-dir DIR`` to get every
format for every file as ``DIR/NNN-<name>.{json,md,html,sarif}`` (NNN = position in the scan order).
Human summary to stdout; progress and logs to stderr; all files written atomically.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer

from teacher_audit.cli.app import app, err, guarded, is_stdout, out, write_or_stdout
from teacher_audit.errors import UsageError
from teacher_audit.exitcodes import ExitCode
from teacher_audit.report.model import Report, ScanSet
from teacher_audit.report.sanitize import clean


def _parse_size(text: str) -> dict[str, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*[xX,]\s*(\d+)\s*", text)
    if not m:
        raise UsageError(f"--input-size wants CxHxW (e.g. 3x32x32), got {clean(text, 40)!r}")
    c, h, w = (int(g) for g in m.groups())
    return {"channels": c, "height": h, "width": w}


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"{flag} wants comma-separated numbers, got {clean(text, 40)!r}") from None


def _safe_name(path: str) -> str:
    stem = Path(path).name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:80] or "file"


def write_outputs(doc: Report | ScanSet, *, json_path: Optional[Path], md_path: Optional[Path],
                  html_path: Optional[Path], sarif_path: Optional[Path], out_dir: Optional[Path]) -> list[Path]:
    """Write the requested report files (atomic; ``-`` = standard output). Returns the paths written."""
    from teacher_audit.report.writers import render, write_report

    written: list[Path] = []
    for fmt, target in (("json", json_path), ("md", md_path), ("html", html_path), ("sarif", sarif_path)):
        if target is not None and write_or_stdout(target, render(fmt, doc)):
            written.append(target)
    if out_dir is not None:
        reports = list(doc.reports) if isinstance(doc, ScanSet) else [doc]
        for i, rep in enumerate(reports):
            stem = f"{i:03d}-{_safe_name(rep.input.path)}"
            for fmt, suffix in (("json", ".json"), ("md", ".md"), ("html", ".html"), ("sarif", ".sarif")):
                target = out_dir / f"{stem}{suffix}"
                write_report(fmt, rep, target)
                written.append(target)
    return written


def _scan_many_with_progress(files: list[str], options: object, jobs: int, quiet: bool) -> ScanSet:
    """scan_many with a rich progress bar (files done, ETA) on a terminal, one line per file otherwise."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from teacher_audit.scan import scan_many

    if quiet or not err.is_terminal:
        def line(rep: Report) -> None:
            if not quiet:
                err.print(f"  {clean(rep.input.path, 200)}: {rep.verdict.status}", markup=False)

        return scan_many(files, options, jobs=jobs, on_report=line)  # type: ignore[arg-type]
    with Progress(TextColumn("scanning"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("eta"), TimeRemainingColumn(), console=err, transient=True) as bar:
        task = bar.add_task("files", total=len(files))

        def step(rep: Report) -> None:
            bar.console.print(f"  {clean(rep.input.path, 200)}: {rep.verdict.status}", markup=False)
            bar.advance(task)

        return scan_many(files, options, jobs=jobs, on_report=step)  # type: ignore[arg-type]


@app.command("scan")
@guarded
def scan(
    paths: list[str] = typer.Argument(..., help="checkpoint files, directories (recursive) or glob patterns"),
    rules: Optional[str] = typer.Option(None, "--rules", help="policy TOML path, or packaged: default | strict | report-only"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the JSON report here ('-' = stdout)"),
    md_out: Optional[Path] = typer.Option(None, "--md", help="write the Markdown report (PR comment) here ('-' = stdout)"),
    html_out: Optional[Path] = typer.Option(None, "--html", help="write the self-contained HTML report here (one file only)"),
    sarif_out: Optional[Path] = typer.Option(None, "--sarif", help="write SARIF 2.1.0 here ('-' = stdout)"),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="write every format for every file into this folder"),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="parallel worker processes"),
    budget_seconds: Optional[float] = typer.Option(None, "--budget-seconds", min=0.0, help="wall-clock budget for the probes of each file"),
    seed: int = typer.Option(0, "--seed", help="seed of the engine and every probe"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | auto"),
    preset: str = typer.Option("dfq", "--preset", help="synthesis engine preset"),
    arch: Optional[str] = typer.Option(None, "--arch", help="force the architecture (registry name)"),
    allow_global: list[str] = typer.Option([], "--allow-global", help="extra allowed pickle global MODULE.NAME (repeatable)"),
    trust_torchscript: bool = typer.Option(False, "--trust-torchscript", help="load TorchScript archives (they are code)"),
    input_size: Optional[str] = typer.Option(None, "--input-size", help="override input CxHxW"),
    mean: Optional[str] = typer.Option(None, "--mean", help="override normalisation mean, e.g. 0.5,0.5,0.5"),
    std: Optional[str] = typer.Option(None, "--std", help="override normalisation std"),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="override number of classes"),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="thresholds from `teacher-audit calibrate` (wins over the rules' [calibration])"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress on stderr"),
) -> ExitCode:
    """Audit checkpoints for transferable backdoors and NTL traps; the exit code is the gate's verdict."""
    from teacher_audit.scan import ScanOptions, expand_paths, scan_file

    to_stdout = [flag for flag, p in (("--json", json_out), ("--md", md_out), ("--html", html_out),
                                      ("--sarif", sarif_out)) if is_stdout(p)]
    if len(to_stdout) > 1:
        raise UsageError(f"only one report can go to standard output ('-'), got {' and '.join(to_stdout)}")

    spec_flags: dict[str, object] = {}
    if input_size:
        spec_flags.update(_parse_size(input_size))
    if mean:
        spec_flags["mean"] = _floats(mean, "--mean")
    if std:
        spec_flags["std"] = _floats(std, "--std")
    if num_classes is not None:
        spec_flags["num_classes"] = num_classes
    from teacher_audit.device import pick_device

    pick_device(device)  # bad or unavailable device -> one-line usage error before any work

    files = expand_paths(paths)
    single = len(files) == 1 and len(paths) == 1 and Path(paths[0]).is_file()
    if html_out is not None and not single:
        raise UsageError("--html writes one file's report; with several files use --out-dir DIR")

    def progress(name: str, phase: str) -> None:
        if not quiet:
            err.print(f"  probe {clean(name, 60)}: {phase}", markup=False)

    options = ScanOptions(rules=rules, seed=seed, device=device, preset=preset, arch=arch,
                          allow_globals=tuple(allow_global), trust_torchscript=trust_torchscript,
                          spec_flags=spec_flags, budget_seconds=budget_seconds, on_probe=progress,
                          calibration=calibration)
    options.policy = options.resolved_policy()
    options.calibration = options.resolved_calibration(options.policy)  # bad file: usage error before any work
    if not quiet:
        err.print(f"teacher-audit: policy {clean(options.policy.name)} ({clean(options.policy.source)}); "
                  f"{len(files)} file(s)", markup=False)
        if options.calibration is not None:
            err.print(f"thresholds from {clean(options.calibration.label, 300)}", markup=False)

    doc: Report | ScanSet
    if single:
        if not quiet:
            err.print(f"scanning {clean(files[0], 200)}", markup=False)
        doc = scan_file(files[0], options)
    else:
        doc = _scan_many_with_progress(files, options, jobs, quiet)

    written = write_outputs(doc, json_path=json_out, md_path=md_out, html_path=html_out, sarif_path=sarif_out,
                            out_dir=out_dir)
    from teacher_audit.report.summary import print_summary

    print_summary(err if to_stdout else out, doc)  # stdout carries the report when '-' was given
    if not quiet:
        for p in written:
            err.print(f"wrote {clean(p, 300)}", markup=False)
    return ExitCode(doc.verdict.exit_code)
