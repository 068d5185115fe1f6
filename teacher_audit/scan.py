"""Scan orchestration: checkpoint -> intake -> engine -> every enabled probe -> policy -> Report.

Library first: ``scan_file(path, ScanOptions())`` returns a ``Report``; ``scan_many(paths, options,
jobs)`` audits files, directories and globs (parallel processes) and returns a ``ScanSet`` whose
verdict is the worst of all files. The CLI (``teacher-audit scan``) is a thin layer over these.

Threat assumption: the checkpoint is hostile. Intake (``teacher_audit.intake.load``) never executes
it; nothing here loads anything else from next to the model (no policy, no code). The policy comes
only from ``ScanOptions.rules`` (a path or a packaged name) or the packaged default.

Never "pass" for something that was not checked: intake failures become a report with verdict
``error``/``not_auditable``; a probe that errors, is skipped or runs out of the ``budget_seconds``
is recorded as such, and ``policy.evaluate`` makes the verdict non-pass when a required probe or
threat was not covered, or when no probe ran at all.

Probes: every probe in ``teacher_audit.probes.PROBES`` runs unless the policy disables it. A probe
registered with ``@PROBES.register("name", default=False)`` runs only when the policy enables it
(``[probes.name] enabled = true``) or requires it. Per-probe overrides from the policy are applied to
the probe's ``Config`` dataclass: ``threshold`` -> ``config.threshold``, ``options`` -> same-named
fields; the scan seed goes to ``config.seed`` when the Config has one, and the remaining scan budget
caps ``config.budget_seconds`` when it has one.
"""

from __future__ import annotations

import datetime as _dt
import glob
import hashlib
import os
import platform
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import teacher_audit
from teacher_audit.errors import AuditError, RefusedPickle, UsageError
from teacher_audit.exitcodes import ExitCode, exit_code_for
from teacher_audit.policy import Policy, combine, evaluate, load_policy
from teacher_audit.report.coerce import json_safe_result
from teacher_audit.report.model import (
    ArchitectureInfo,
    Budget,
    InputInfo,
    InputSpecInfo,
    IntakeResult,
    ProbeResult,
    Report,
    ScanSet,
    Timings,
    Verdict,
    Versions,
)

#: file suffixes picked up when a DIRECTORY is scanned (explicit file arguments are always scanned).
MODEL_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".onnx", ".pkl", ".pickle", ".tar", ".zip",
                  ".jit", ".torchscript", ".ts")


@dataclass
class ScanOptions:
    """Options of one scan.

    Attributes:
        rules: policy file path or packaged name (``default``, ``strict``, ``report-only``); None = default.
        policy: an already loaded ``Policy`` (wins over ``rules``).
        preset: synthesis-engine preset name (``teacher_audit.synth.PRESETS``).
        seed: seed for the engine and every probe (recorded in the report).
        device: ``cpu``, ``cuda`` or ``auto``.
        arch: force an architecture name (intake), else matched from the weights/card.
        allow_globals: extra pickle globals allowed (added to the policy's ``[pickle]`` list).
        trust_torchscript: load TorchScript archives (they are code).
        spec_flags: input-spec overrides for intake (``channels``, ``height``, ``width``, ``mean``,
            ``std``, ``num_classes``).
        budget_seconds: wall-clock budget for the probes; probes that would start after it are
            recorded as skipped (so the verdict is not a pass when they were required).
        engine_factory: optional ``(teacher, options) -> engine`` replacing the default
            ``Engine(teacher, PRESETS.get(preset)(), device=..., seed=...)`` (notebooks reusing an engine).
        on_probe: optional progress callback ``(probe_name, phase)`` with phase ``start``/``done``.
        calibration: a calibration file (``teacher-audit calibrate``) or a loaded ``Calibration``; its
            thresholds replace the built-in ones (rules ``threshold``/``options`` still win). None = the
            policy's ``[calibration] file`` when ``policy_calibration``, else the built-in calibration.
        policy_calibration: whether the policy's ``[calibration] file`` is used when ``calibration`` is None.
    """

    rules: str | Path | None = None
    policy: Policy | None = None
    preset: str = "dfq"
    seed: int = 0
    device: str = "cpu"
    arch: str | None = None
    allow_globals: tuple[str, ...] = ()
    trust_torchscript: bool = False
    spec_flags: dict[str, Any] = field(default_factory=dict)
    budget_seconds: float | None = None
    engine_factory: Callable[[Any, "ScanOptions"], Any] | None = None
    on_probe: Callable[[str, str], None] | None = None
    calibration: Any = None
    policy_calibration: bool = True

    def resolved_policy(self) -> Policy:
        return self.policy if self.policy is not None else load_policy(self.rules)

    def resolved_calibration(self, policy: Policy | None = None) -> Any:
        """The ``Calibration`` in force (loaded and validated; ``UsageError`` if bad), or None."""
        from teacher_audit.calibrate import Calibration, load_calibration

        if isinstance(self.calibration, Calibration):
            return self.calibration
        if self.calibration is not None:
            return load_calibration(self.calibration)
        path = (policy or self.resolved_policy()).calibration_path() if self.policy_calibration else None
        return None if path is None else load_calibration(path)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _versions() -> Versions:
    try:
        import torch

        tv: str | None = torch.__version__
    except Exception:  # noqa: BLE001 - torch missing is reported, not fatal
        tv = None
    return Versions(tool=teacher_audit.__version__, python=platform.python_version(), torch=tv,
                    platform=platform.platform(terse=True))


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Streamed SHA-256 of a file (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _one_line(exc: BaseException) -> str:
    text = " ".join((str(exc) or exc.__class__.__name__).split())
    return text[:1000]


def _spec_info(spec: Any) -> InputSpecInfo | None:
    if spec is None:
        return None
    return InputSpecInfo(channels=int(spec.channels), height=int(spec.height), width=int(spec.width),
                         value_range=[float(v) for v in spec.value_range], mean=[float(v) for v in spec.mean],
                         std=[float(v) for v in spec.std], num_classes=int(spec.num_classes),
                         class_names=list(spec.class_names) if spec.class_names else None,
                         sources=dict(spec.sources or {}))


def _configure(cls: type, name: str, policy: Policy, options: ScanOptions, remaining: float | None) -> Any:
    """The probe's Config with the calibration's and the policy's overrides, the scan seed and the remaining
    budget applied (``options.calibration`` is already resolved by ``scan_file``)."""
    cfg = cls.Config()
    calib = options.calibration
    for key, value in (calib.overrides(name) if calib is not None and hasattr(calib, "overrides") else {}).items():
        if hasattr(cfg, key):
            setattr(cfg, key, value)
    rule = policy.probe_rule(name)
    for key, value in rule.options.items():
        if not hasattr(cfg, key):
            raise UsageError(f"rules: probe {name} has no option {key!r}")
        setattr(cfg, key, value)
    if rule.threshold is not None:
        if not hasattr(cfg, "threshold"):
            raise UsageError(f"rules: probe {name} has no threshold option")
        cfg.threshold = rule.threshold
    if hasattr(cfg, "seed"):
        cfg.seed = options.seed
    if remaining is not None and hasattr(cfg, "budget_seconds"):
        current = getattr(cfg, "budget_seconds")
        cfg.budget_seconds = remaining if current is None else min(float(current), remaining)
    return cfg


def check_policy_probes(policy: Policy) -> None:
    """Reject per-probe rules for unregistered probes or unknown Config fields (typos) before any work."""
    from teacher_audit.probes import PROBES

    unknown = sorted(set(policy.probes) - set(PROBES.names()))
    if unknown:
        known = ", ".join(PROBES.names()) or "(none installed)"
        raise UsageError(f"rules {policy.source}: unknown probe(s) {', '.join(unknown)}; installed: {known}")
    for name, rule in policy.probes.items():
        cfg = PROBES.get(name).Config()
        for key in rule.options:
            if not hasattr(cfg, key):
                raise UsageError(f"rules {policy.source}: probe {name} has no option {key!r}")
        if rule.threshold is not None and not hasattr(cfg, "threshold"):
            raise UsageError(f"rules {policy.source}: probe {name} has no threshold option")


def _run_probes(teacher: Any, engine: Any, policy: Policy, options: ScanOptions, deadline: float | None,
                timings: dict[str, float]) -> tuple[list[ProbeResult], list[str]]:
    import torch

    from teacher_audit.probes import PROBES

    results: list[ProbeResult] = []
    disabled: list[str] = []
    for name in PROBES.names():
        cls = PROBES.get(name)
        if not policy.is_enabled(name, bool(PROBES.meta(name).get("default", True))):
            disabled.append(name)
            continue
        threat = getattr(cls, "threat", "other")
        threat = threat if threat in ("backdoor", "ntl", "intake", "other") else "other"
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            results.append(ProbeResult(probe=name, threat=threat, status="skipped",
                                       summary=f"scan budget of {options.budget_seconds:g} s exhausted before it started"))
            continue
        cfg = _configure(cls, name, policy, options, remaining)
        if options.on_probe:
            options.on_probe(name, "start")
        torch.manual_seed(options.seed)
        t0 = time.monotonic()
        try:
            res = cls(cfg).run(teacher, engine)
            if not isinstance(res, ProbeResult):
                raise TypeError(f"probe returned {type(res).__name__}, not ProbeResult")
        except KeyboardInterrupt:
            raise
        except MemoryError:
            res = ProbeResult(probe=name, threat=threat, status="error", summary="out of memory")
        except Exception as exc:  # noqa: BLE001 - a probe crash is recorded, and never reads as clean
            res = ProbeResult(probe=name, threat=threat, status="error",
                              summary=f"{exc.__class__.__name__}: {_one_line(exc)}")
        dt = time.monotonic() - t0
        timings[name] = round(dt, 3)
        try:
            res = json_safe_result(res)
        except Exception as exc:  # noqa: BLE001 - unserialisable output is a probe error, not a crash
            res = ProbeResult(probe=name, threat=threat, status="error",
                              summary=f"probe output is not serialisable: {exc.__class__.__name__}")
        upd: dict[str, Any] = {}
        if res.probe != name:
            upd["probe"] = name
        if res.budget.seconds == 0.0:
            upd["budget"] = res.budget.model_copy(update={"seconds": round(dt, 3)})
        rule = policy.probe_rule(name)
        if rule.severity is not None and res.flagged:
            upd["severity"] = rule.severity
        if res.seed is None:
            upd["seed"] = options.seed
        results.append(res.model_copy(update=upd) if upd else res)
        if options.on_probe:
            options.on_probe(name, "done")
    return results, disabled


def _combine(results: list[ProbeResult], policy: Policy, options: ScanOptions) -> list[ProbeResult]:
    """Second pass: a probe class with ``combine(result, others)`` re-reads the other probes' results of
    this scan (e.g. the fused backdoor score takes the NTL probe's synthesis pull). No teacher passes;
    a failing combine keeps the probe's own result."""
    from teacher_audit.probes import PROBES

    by_name = {r.probe: r for r in results}
    out = []
    for res in results:
        cls = PROBES.get(res.probe) if res.probe in PROBES.names() else None
        if cls is not None and hasattr(cls, "combine") and res.status == "ok":
            try:
                new = json_safe_result(cls(_configure(cls, res.probe, policy, options, None)).combine(res, by_name))
                rule = policy.probe_rule(res.probe)
                if rule.severity is not None and new.flagged:
                    new = new.model_copy(update={"severity": rule.severity})
                res = new.model_copy(update={"seed": res.seed}) if new.seed is None else new
            except Exception as exc:  # noqa: BLE001 - the probe's own result stands, and says so
                details = {**res.details, "combine_error": f"{type(exc).__name__}: {exc}"}
                res = res.model_copy(update={"details": details})
        out.append(res)
    return out


def check_preset(options: ScanOptions) -> None:
    """Unknown engine preset -> UsageError before any file is opened (when the default engine is used)."""
    if options.engine_factory is not None:
        return
    try:
        from teacher_audit.synth import PRESETS
    except ImportError:
        return  # reported per file as an engine error
    PRESETS.get(options.preset)


def _default_engine(teacher: Any, options: ScanOptions) -> Any:
    from teacher_audit.synth import PRESETS, Engine

    return Engine(teacher, PRESETS.get(options.preset)(), device=options.device, seed=options.seed)


def scan_file(path: str | os.PathLike[str], options: ScanOptions | None = None) -> Report:
    """Audit one checkpoint and return its report (never raises for a bad FILE; raises UsageError
    for bad options or rules, and KeyboardInterrupt).

    Args:
        path: the checkpoint (any supported format; sniffed by content by intake).
        options: ``ScanOptions``.

    Returns:
        ``Report`` with ``verdict.status`` in pass | fail | error | not_auditable.
    """
    options = options or ScanOptions()
    policy = options.resolved_policy()
    check_policy_probes(policy)
    check_preset(options)
    calib = options.resolved_calibration(policy)
    options = replace(options, calibration=calib, policy=policy)
    started = _now()
    t_start = time.monotonic()
    path_s = os.fspath(path)
    info = InputInfo(path=path_s)
    base: dict[str, Any] = {"seeds": {"scan": options.seed}, "versions": _versions(),
                            "options": {"preset": options.preset, "device": options.device, "arch": options.arch,
                                        "allow_globals": list(options.allow_globals),
                                        "trust_torchscript": options.trust_torchscript,
                                        "budget_seconds": options.budget_seconds,
                                        "calibration": None if calib is None else
                                        {"source": calib.source, "sha256": calib.sha256,
                                         "n_clean": calib.scope.n_clean, "archs": list(calib.scope.archs)}}}

    def finish(verdict: Verdict, **kw: Any) -> Report:
        total = time.monotonic() - t_start
        tm = kw.pop("timings", {})
        return Report(input=kw.pop("input", info), policy=kw.pop("policy_applied", policy.applied(info.sha256)),
                      verdict=verdict, timings=Timings(started_at=started, finished_at=_now(),
                                                       total_seconds=round(total, 3), **tm), **base, **kw)

    def failed(exc: BaseException, **kw: Any) -> Report:
        code = exit_code_for(exc)
        status = "not_auditable" if code == ExitCode.NOT_AUDITABLE else "error"
        msg = _one_line(exc)
        return finish(Verdict(status=status, exit_code=int(ExitCode.ERROR if status == "error" else code),
                              reasons=[msg]), error=msg, error_type=exc.__class__.__name__,
                      refused_globals=list(getattr(exc, "refused", []) or []), **kw)

    try:
        info = InputInfo(path=path_s, size=os.path.getsize(path_s), sha256=sha256_file(path_s))
    except OSError as exc:
        return failed(AuditError(f"cannot read {path_s}: {exc.strerror or exc.__class__.__name__}"))

    # 1. intake (the only code that opens the checkpoint)
    t0 = time.monotonic()
    try:
        from teacher_audit.intake.load import LoadOptions, load_teacher

        allow = tuple(dict.fromkeys([*options.allow_globals, *policy.pickle.extra_allowed_globals]))
        teacher, intake = load_teacher(path_s, LoadOptions(arch=options.arch, allow_globals=allow,
                                                           trust_torchscript=options.trust_torchscript,
                                                           spec_flags=dict(options.spec_flags),
                                                           device=options.device))
    except (KeyboardInterrupt, UsageError):
        raise
    except ImportError as exc:
        return failed(AuditError(f"intake is not available in this installation: {_one_line(exc)}"))
    except MemoryError:
        return failed(AuditError("out of memory while loading the checkpoint"))
    except Exception as exc:  # noqa: BLE001 - AuditError subclasses carry their exit code
        partial = getattr(exc, "intake", None)
        kw: dict[str, Any] = {"timings": {"intake_seconds": round(time.monotonic() - t0, 3)}}
        if isinstance(partial, IntakeResult):
            kw["intake"] = partial
            info = info.model_copy(update={"format": partial.format})
        if isinstance(exc, RefusedPickle) and not exc.refused:
            exc.refused = ["<unlisted>"]
        return failed(exc, **kw)
    intake_s = time.monotonic() - t0
    info = info.model_copy(update={"format": intake.format or getattr(teacher, "fmt", None)})
    arch = ArchitectureInfo(name=intake.architecture or getattr(teacher, "arch", None),
                            source=intake.architecture_source, candidates=list(intake.architecture_candidates))
    spec = _spec_info(getattr(teacher, "spec", None))
    common = {"intake": intake, "architecture": arch, "input_spec": spec}

    # 2. engine shared by every probe
    deadline = None if options.budget_seconds is None else time.monotonic() + float(options.budget_seconds)
    t1 = time.monotonic()
    try:
        engine = (options.engine_factory or _default_engine)(teacher, options)
    except (KeyboardInterrupt, UsageError):
        raise
    except Exception as exc:  # noqa: BLE001
        return failed(AuditError(f"synthesis engine could not start: {exc.__class__.__name__}: {_one_line(exc)}"),
                      timings={"intake_seconds": round(intake_s, 3)}, **common)
    engine_s = time.monotonic() - t1

    # 3. probes
    per_probe: dict[str, float] = {}
    t2 = time.monotonic()
    results, disabled = _run_probes(teacher, engine, policy, options, deadline, per_probe)
    results = _combine(results, policy, options)
    probes_s = time.monotonic() - t2

    # 4. policy
    from teacher_audit.probes import PROBES

    verdict = evaluate(policy, results, info.sha256, installed=PROBES.names())
    passes = int(getattr(engine, "passes", 0) or 0) or sum(r.budget.teacher_passes for r in results)
    seeds = {"scan": options.seed, **{r.probe: r.seed for r in results if r.seed is not None}}
    base["seeds"] = seeds
    return finish(verdict, probes=results, policy_applied=policy.applied(info.sha256, disabled=disabled),
                  budget=Budget(teacher_passes=passes, seconds=round(probes_s + engine_s, 3),
                                limit_seconds=options.budget_seconds),
                  timings={"intake_seconds": round(intake_s, 3), "engine_seconds": round(engine_s, 3),
                           "probes_seconds": round(probes_s, 3), "per_probe": per_probe}, **common)


def expand_paths(args: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Files to scan from files, directories (recursive, ``MODEL_SUFFIXES`` only) and glob patterns.

    Raises:
        UsageError: an argument is neither an existing path nor a glob matching a file.
    """
    files: list[str] = []
    for arg in args:
        s = os.fspath(arg)
        p = Path(s)
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*")
                           if f.is_file() and f.suffix.lower() in MODEL_SUFFIXES and not f.name.startswith("."))
            files.extend(found)
        elif p.exists():
            files.append(s)
        elif any(ch in s for ch in "*?["):
            matched = sorted(m for m in glob.glob(s, recursive=True) if Path(m).is_file())
            if not matched:
                raise UsageError(f"pattern {s!r} matched no file")
            files.extend(matched)
        else:
            raise UsageError(f"no such file or directory: {s!r}")
    return list(dict.fromkeys(files))


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def _worker(path: str, options: ScanOptions) -> str:
    return scan_file(path, options).model_dump_json()


@contextmanager
def in_workers(calls: list[tuple[Any, Callable[..., Any], tuple[Any, ...]]],
               jobs: int) -> Iterator[Iterator[tuple[Any, Future]]]:
    """Run ``fn(*args)`` for each ``(key, fn, args)`` in spawned worker processes (one torch thread each);
    the context gives ``(key, future)`` pairs as they complete. An exception in the ``with`` body (Ctrl-C,
    a usage error, a failed call re-raised) drops the queued calls and does not wait for running ones."""
    ex = ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), initializer=_worker_init)
    try:
        futs = {ex.submit(fn, *args): key for key, fn, args in calls}
        yield ((futs[fut], fut) for fut in as_completed(futs))
    except BaseException:
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    ex.shutdown(wait=True)


def scan_many(paths: Iterable[str | os.PathLike[str]], options: ScanOptions | None = None, jobs: int = 1,
              on_report: Callable[[Report], None] | None = None) -> ScanSet:
    """Audit many checkpoints (files, directories, globs); one ``ScanSet`` whose verdict is the worst.

    Args:
        paths: files, directories (recursive; ``MODEL_SUFFIXES``) and glob patterns.
        options: ``ScanOptions`` (the policy is loaded once and shared).
        jobs: parallel worker processes (spawned, 1 torch thread each); 1 = in this process.
        on_report: called with each report as it completes (progress).

    Returns:
        ``ScanSet`` with reports in input order. An empty directory gives ``not_auditable``.
    """
    options = options or ScanOptions()
    options = replace(options, policy=options.resolved_policy())
    check_policy_probes(options.policy)  # type: ignore[arg-type]
    check_preset(options)
    options = replace(options, calibration=options.resolved_calibration(options.policy))  # bad file: before any scan
    files = expand_paths(paths)
    reports: dict[str, Report] = {}
    if jobs <= 1 or len(files) <= 1:
        for f in files:
            reports[f] = scan_file(f, options)
            if on_report:
                on_report(reports[f])
    else:
        # callbacks do not cross process boundaries: workers use the default engine and no probe progress
        options = replace(options, engine_factory=None, on_probe=None)
        with in_workers([(f, _worker, (f, options)) for f in files], jobs) as done:
            for f, fut in done:
                try:
                    reports[f] = Report.model_validate_json(fut.result())
                except (KeyboardInterrupt, UsageError):
                    raise  # in_workers drops the queued files and does not wait for running ones
                except Exception as exc:  # noqa: BLE001 - a dead worker is an error for that file
                    reports[f] = _error_report(f, options, exc)
                if on_report:
                    on_report(reports[f])
    ordered = [reports[f] for f in files]
    return ScanSet(verdict=combine([r.verdict for r in ordered]), reports=ordered)


def _error_report(path: str, options: ScanOptions, exc: BaseException) -> Report:
    policy = options.resolved_policy()
    now = _now()
    msg = f"worker failed: {exc.__class__.__name__}: {_one_line(exc)}"
    return Report(input=InputInfo(path=path), policy=policy.applied(None), error=msg,
                  error_type=exc.__class__.__name__,
                  verdict=Verdict(status="error", exit_code=int(ExitCode.ERROR), reasons=[msg]),
                  timings=Timings(started_at=now, finished_at=now), versions=_versions(),
                  seeds={"scan": options.seed})

