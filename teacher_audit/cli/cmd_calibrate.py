"""`teacher-audit calibrate CLEAN... --out FILE`: fit the probes' thresholds on clean teachers of your architecture.

Scans each clean teacher as ``scan`` would (same rules, preset, budget), once per ``--seeds`` seed, and
writes the calibration file atomically; use it with ``scan --calibration FILE`` or ``[calibration] file``
in the rules. Finished runs are cached in ``--cache-dir`` (default ``FILE.runs/``): an interrupted
calibration resumes. Exit 0 when the file is written, 2 when a teacher could not be scanned, 4 on bad usage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from teacher_audit.cli.app import app, err, guarded, out
from teacher_audit.errors import UsageError
from teacher_audit.exitcodes import ExitCode
from teacher_audit.report.sanitize import clean


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(dict.fromkeys(int(v) for v in text.split(",") if v.strip()))
    except ValueError:
        raise UsageError(f"--seeds wants comma-separated integers, got {clean(text, 40)!r}") from None
    if not seeds:
        raise UsageError("--seeds needs at least one seed")
    return seeds


@app.command("calibrate")
@guarded
def calibrate(
    paths: list[str] = typer.Argument(..., help="clean teachers of the architecture you will scan (files, folders, globs)"),
    out_path: Path = typer.Option(..., "--out", "-o", help="calibration file to write (JSON)"),
    seeds: str = typer.Option("0,1", "--seeds", help="probe seeds per teacher, comma-separated"),
    margin: float = typer.Option(0.5, "--margin", min=0.0, help="added to the largest clean fused backdoor z"),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="finished runs (resume); default OUT.runs/"),
    rules: Optional[str] = typer.Option(None, "--rules", help="policy the scans will use (probe options, budgets)"),
    budget_seconds: Optional[float] = typer.Option(None, "--budget-seconds", min=0.0, help="probe budget per scan"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | auto"),
    preset: str = typer.Option("dfq", "--preset", help="synthesis engine preset"),
    arch: Optional[str] = typer.Option(None, "--arch", help="force the architecture (registry name)"),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="parallel worker processes"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress on stderr"),
) -> ExitCode:
    """Fit the backdoor and NTL thresholds on clean teachers; write a calibration file for scan --calibration."""
    from teacher_audit.calibrate import CalibrateOptions
    from teacher_audit.calibrate import calibrate as run_calibration
    from teacher_audit.device import pick_device
    from teacher_audit.scan import ScanOptions, check_policy_probes, check_preset, expand_paths

    pick_device(device)
    files = expand_paths(paths)
    scan_opts = ScanOptions(rules=rules, device=device, preset=preset, arch=arch, budget_seconds=budget_seconds,
                            policy_calibration=False)
    scan_opts.policy = scan_opts.resolved_policy()
    check_policy_probes(scan_opts.policy)
    check_preset(scan_opts)
    seed_list = _seeds(seeds)
    cache = cache_dir if cache_dir is not None else out_path.with_name(out_path.name + ".runs")

    def progress(path: str, seed: int, phase: str) -> None:
        if not quiet:
            err.print(f"  {clean(path, 200)} seed {seed}: {phase}", markup=False, soft_wrap=True)

    if not quiet:
        err.print(f"teacher-audit calibrate: {len(files)} clean teacher(s) x {len(seed_list)} seed(s); "
                  f"runs cached in {clean(cache, 200)}", markup=False, soft_wrap=True)
    res = run_calibration(files, out_path, CalibrateOptions(seeds=seed_list, margin=margin, scan=scan_opts,
                                                            cache_dir=cache, on_run=progress, jobs=jobs))
    cal = res.calibration
    out.print(f"calibration written to {clean(out_path, 300)}: {cal.scope.n_clean} clean teacher(s), "
              f"{len(cal.runs)} run(s), architecture(s) {', '.join(clean(a, 60) for a in cal.scope.archs)}", markup=False, soft_wrap=True)
    b = cal.backdoor
    out.print(f"  backdoor: class-reference threshold {b.threshold:.2f} (largest clean score, "
              f"{b.threshold_basis or 'in-sample'}, {b.max_clean if b.max_clean is not None else float('nan'):.2f} "
              f"+ margin)", markup=False, soft_wrap=True)
    inv = (f"; robust trap inversion threshold {cal.ntl.inversion_threshold:g} decades (largest clean gap "
           f"{cal.ntl.max_clean_gap:.2f} x 1.25)" if cal.ntl.inversion_fitted else "")
    out.print(f"  ntl: threshold {cal.ntl.threshold:.2f} (largest clean pull/tail score {cal.ntl.max_clean_score:.3f} "
              f"x 1.25, at least 0.05){inv}", markup=False, soft_wrap=True)
    if len(cal.scope.fingerprints) > 1:
        out.print(f"  warning: the clean teachers have {len(cal.scope.fingerprints)} different structures; one class "
                  "reference now covers all of them -- calibrate each architecture separately", markup=False,
                  soft_wrap=True)
    if cal.leave_one_out:
        bad = res.loo_flagged
        out.print(f"  leave-one-teacher-out: {len(bad)} of {len(cal.leave_one_out)} clean run(s) would have been "
                  "flagged by a calibration made without their teacher", markup=False, soft_wrap=True)
        for r in bad:
            what = " and ".join(k for k, v in (("backdoor", r["backdoor_flagged"]), ("ntl", r["ntl_flagged"])) if v)
            out.print(f"    {clean(r['file'], 120)} seed {r['seed']}: {what} (fused z {r['backdoor_fused']:.2f} vs "
                      f"{r['backdoor_threshold']:.2f}; ntl {r['ntl_score']:.3f} vs {r['ntl_threshold']:.2f}) -- "
                      "is it really clean? more clean teachers make the thresholds steadier", markup=False, soft_wrap=True)
    else:
        out.print("  leave-one-teacher-out: needs at least 2 clean teachers; with one, the thresholds only cover "
                  "the seed-to-seed noise of that teacher", markup=False, soft_wrap=True)
    return ExitCode.PASS
