"""User calibration: fit the probes' thresholds on clean teachers of the user's own architecture.

The built-in thresholds were calibrated on the zoo's clean smallcnn and LeNet-5 teachers. On another
architecture the clean statistics differ (measured: clean vision-transformer ONNX teachers are flagged by
both probes at the built-in thresholds; docs/benchmarks.md). ``teacher-audit calibrate CLEAN...`` scans
teachers the user knows to be clean -- the same network, trained by the user -- exactly as ``scan`` would
(same policy, preset and budgets, one scan per probe seed), fits the thresholds by the rule in
:mod:`teacher_audit.probes.calibration_fit`, and writes a calibration file. ``scan --calibration FILE`` (or
``[calibration] file = ...`` in the rules) then uses it for every teacher whose structure matches one of the
clean teachers (:func:`teacher_audit.probes.calibration.fingerprint`); findings on any other teacher say
that it is outside the calibration.

Library: :func:`collect_runs` (the scans, cached per file and seed so an interrupted run resumes),
:func:`fit` (pure: runs -> calibration document), :func:`leave_one_out` (would each clean teacher have
been flagged by a calibration made without it?), :func:`load_calibration` (validated; one-line errors)
and :meth:`Calibration.overrides` (the probe Config fields it sets).

Threat assumption: the calibration teachers are clean. A backdoored or NTL teacher among them raises the
thresholds and hides its kind; the leave-one-out check shows a teacher that scores far above the others.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

import teacher_audit
from teacher_audit.atomic import atomic_write_text
from teacher_audit.errors import AuditError, UsageError

SCHEMA = 1
KIND = "teacher-audit calibration"
BACKDOOR_PROBE = "backdoor"
NTL_PROBE = "ntl_robustness"
#: largest calibration file read (bytes); a real one is a few kB per run
MAX_FILE_BYTES = 8 << 20


# --- the file --------------------------------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ComponentStats(_Strict):
    mean: float
    sd: float = Field(gt=0)

    @field_validator("mean")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v


class ReferenceFeature(_Strict):
    mean: list[float] = Field(min_length=2)
    sd: float = Field(gt=0)
    n: int = Field(ge=1)

    @field_validator("mean")
    @classmethod
    def _finite(cls, v: list[float]) -> list[float]:
        if not all(math.isfinite(x) for x in v):
            raise ValueError("must be finite numbers")
        return v


class BackdoorCalibration(_Strict):
    components: dict[str, ComponentStats] = Field(min_length=1)
    threshold: float
    margin: float = 0.5
    class_reference: dict[str, ReferenceFeature] | None = None
    threshold_basis: str | None = None
    max_clean: float | None = None


class NTLCalibration(_Strict):
    threshold: float = Field(gt=0, le=1)
    inversion_threshold: float = Field(gt=0)
    inversion_fitted: bool = False
    max_clean_score: float | None = None
    max_clean_gap: float | None = None


class Scope(_Strict):
    archs: list[str]
    fingerprints: list[str] = Field(min_length=1)
    n_clean: int = Field(ge=1)


class Calibration(_Strict):
    """A calibration file (see module docstring); build with :func:`fit`, read with :func:`load_calibration`."""

    schema_: int = Field(alias="schema")
    kind: str
    created: str
    tool_version: str
    options: dict[str, Any] = Field(default_factory=dict)
    scope: Scope
    backdoor: BackdoorCalibration
    ntl: NTLCalibration
    runs: list[dict[str, Any]] = Field(default_factory=list)
    leave_one_out: list[dict[str, Any]] = Field(default_factory=list)
    #: set by the loader: where it came from and the SHA-256 of its bytes
    source: str = Field(default="memory", exclude=True)
    sha256: str = Field(default="", exclude=True)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("schema_")
    @classmethod
    def _schema(cls, v: int) -> int:
        if v != SCHEMA:
            raise ValueError(f"schema {v} is not supported (this version reads schema {SCHEMA})")
        return v

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v != KIND:
            raise ValueError(f"not a calibration file (kind {v!r})")
        return v

    @property
    def label(self) -> str:
        """How findings name this calibration."""
        digest = f", sha256 {self.sha256[:12]}" if self.sha256 else ""
        return f"calibration {Path(self.source).name}{digest}: {self.scope.n_clean} clean teacher(s)"

    def scope_dict(self) -> dict[str, Any]:
        return {"source": self.label, "archs": list(self.scope.archs), "fingerprints": list(self.scope.fingerprints),
                "n_clean": self.scope.n_clean}

    def overrides(self, probe: str) -> dict[str, Any]:
        """Fields of ``probe``'s Config this calibration sets ({} for a probe it does not calibrate)."""
        if probe == BACKDOOR_PROBE:
            b = self.backdoor
            cal: dict[str, Any] = {"components": {n: c.model_dump() for n, c in b.components.items()},
                                   "threshold": b.threshold, "margin": b.margin, "n_clean": self.scope.n_clean,
                                   "source": self.label, "scope": self.scope_dict()}
            if b.class_reference:
                cal["class_reference"] = {n: f.model_dump() for n, f in b.class_reference.items()}
            return {"calibration": cal}
        if probe == NTL_PROBE:
            return {"threshold": self.ntl.threshold, "inversion_threshold": self.ntl.inversion_threshold,
                    "calibration_scope": self.scope_dict()}
        return {}

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", by_alias=True), indent=1, sort_keys=False) + "\n"


def _first_error(exc: ValidationError, origin: str) -> str:
    e = exc.errors()[0]
    loc = ".".join(str(p) for p in e["loc"]).replace("schema_", "schema") or "(top level)"
    if e["type"] == "extra_forbidden":
        return f"{origin}: unknown key '{loc}'"
    if e["type"] == "missing":
        return f"{origin}: missing key '{loc}'"
    return f"{origin}: bad value for '{loc}': {e['msg'].replace('Value error, ', '')}"


def parse_calibration(text: str, source: str = "memory") -> Calibration:
    """Parse calibration JSON text; any problem raises a one-line ``UsageError``."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise UsageError(f"{source}: not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{source}: not a calibration file (top level is not an object)")
    try:
        cal = Calibration.model_validate(data)
    except ValidationError as exc:
        raise UsageError(_first_error(exc, source)) from None
    return cal.model_copy(update={"source": source, "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()})


def load_calibration(path: str | os.PathLike[str]) -> Calibration:
    """Read and validate a calibration file (``UsageError``, one line, on any problem)."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_FILE_BYTES:
            raise UsageError(f"calibration file {p} is larger than {MAX_FILE_BYTES >> 20} MiB")
        text = p.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read calibration file {p}: {exc.__class__.__name__}") from None
    return parse_calibration(text, str(p))


# --- the runs --------------------------------------------------------------------------------------------

@dataclass
class CalibrateOptions:
    """Options of :func:`collect_runs` / :func:`calibrate`.

    Attributes:
        seeds: probe seeds scanned per teacher (the spread between seeds is part of the clean noise).
        margin: added to the largest clean fused backdoor z for the backdoor threshold.
        scan: the ``ScanOptions`` every calibration scan uses (policy, preset, device, budgets); its seed
            is replaced by each of ``seeds``. Scan the suspects later with the same options.
        cache_dir: finished runs are kept here (one JSON per file and seed) and reused by a rerun with the
            same file, seed, preset, policy and tool version; None = no cache.
        on_run: progress callback ``(path, seed, phase)`` with phase ``start``/``queued``/``cached``/``done``.
        jobs: scans run in parallel worker processes (spawned, one torch thread each); 1 = in this process.
    """

    seeds: tuple[int, ...] = (0, 1)
    margin: float = 0.5
    scan: Any = None
    cache_dir: Path | None = None
    on_run: Callable[[str, int, str], None] | None = None
    jobs: int = 1


def _slim(result: Any) -> dict[str, Any]:
    """A probe result as JSON without its evidence images (the fit needs scores and details only)."""
    d = result.model_dump(mode="json")
    d["evidence"] = []
    return d


def _cache_key(sha: str, seed: int, scan_opts: Any) -> str:
    policy = scan_opts.resolved_policy()
    raw = json.dumps([sha, seed, scan_opts.preset, policy.sha256, teacher_audit.__version__,
                      sorted(scan_opts.spec_flags.items()), scan_opts.arch, scan_opts.budget_seconds], default=str)
    return f"{sha[:16]}-s{seed}-{hashlib.sha256(raw.encode()).hexdigest()[:12]}.json"


def _run_one(path: str, seed: int, scan_opts: Any) -> dict[str, Any]:
    from teacher_audit.scan import scan_file

    # raw scores only: no calibration, not even the one the rules name (it may be the file being written)
    rep = scan_file(path, replace(scan_opts, seed=seed, calibration=None, policy_calibration=False))
    if rep.verdict.status in ("error", "not_auditable") and not rep.probes:
        raise AuditError(f"calibration teacher {path}: {'; '.join(rep.verdict.reasons) or rep.verdict.status}")
    by = {r.probe: r for r in rep.probes}
    for name in (BACKDOOR_PROBE, NTL_PROBE):
        r = by.get(name)
        if r is None or r.status != "ok":
            why = "did not run" if r is None else f"{r.status}: {r.summary}"
            raise AuditError(f"calibration teacher {path} seed {seed}: probe {name} {why}"[:400])
    fp = rep.intake.structure_fingerprint if rep.intake is not None else None
    return {"file": Path(path).name, "path": str(path), "sha256": rep.input.sha256, "seed": seed,
            "arch": rep.architecture.name if rep.architecture else None, "fingerprint": fp,
            "seconds": rep.timings.total_seconds,
            "backdoor": _slim(by[BACKDOOR_PROBE]), "ntl": _slim(by[NTL_PROBE])}


def collect_runs(paths: list[str], opts: CalibrateOptions) -> list[dict[str, Any]]:
    """Scan every clean teacher at every seed (reusing cached runs); returns one record per run.

    Raises:
        UsageError: no teacher, duplicate teachers (same SHA-256) or no seed.
        AuditError: a teacher could not be loaded, or a probe did not run to the end.
    """
    from teacher_audit.scan import ScanOptions, sha256_file

    if not paths:
        raise UsageError("calibrate needs at least one clean teacher")
    if not opts.seeds:
        raise UsageError("calibrate needs at least one seed")
    scan_opts = opts.scan or ScanOptions()
    if scan_opts.policy is None:
        scan_opts = replace(scan_opts, policy=scan_opts.resolved_policy())
    shas: dict[str, str] = {}
    for p in paths:
        try:
            sha = sha256_file(p)
        except OSError as exc:
            raise UsageError(f"cannot read {p}: {exc.strerror or exc.__class__.__name__}") from None
        if sha in shas:
            raise UsageError(f"{p} and {shas[sha]} are the same file (SHA-256 {sha[:12]}); give distinct teachers")
        shas[sha] = p
    done: dict[tuple[str, int], dict[str, Any]] = {}
    todo: list[tuple[str, str, int, Path | None]] = []
    for sha, p in shas.items():
        for seed in opts.seeds:
            cached = None if opts.cache_dir is None else Path(opts.cache_dir) / _cache_key(sha, seed, scan_opts)
            rec = _read_cached(cached, sha, seed)
            if rec is not None:
                done[(sha, seed)] = dict(rec, path=str(p), file=Path(p).name)
                if opts.on_run:
                    opts.on_run(p, seed, "cached")
            else:
                todo.append((sha, p, seed, cached))

    def finished(sha: str, p: str, seed: int, cached: Path | None, rec: dict[str, Any]) -> None:
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(cached, json.dumps(rec))
        done[(sha, seed)] = rec
        if opts.on_run:
            opts.on_run(p, seed, "done")

    if opts.jobs <= 1 or len(todo) <= 1:
        for sha, p, seed, cached in todo:
            if opts.on_run:
                opts.on_run(p, seed, "start")
            finished(sha, p, seed, cached, _run_one(p, seed, scan_opts))
    else:
        _run_parallel(todo, replace(scan_opts, engine_factory=None, on_probe=None), opts, finished)
    return [done[(sha, seed)] for sha in shas for seed in opts.seeds]


def _read_cached(cached: Path | None, sha: str, seed: int) -> dict[str, Any] | None:
    if cached is None or not cached.is_file():
        return None
    try:
        rec = json.loads(cached.read_text("utf-8"))
    except (OSError, ValueError):
        return None  # unreadable cache entry: run again
    return rec if isinstance(rec, dict) and rec.get("sha256") == sha and rec.get("seed") == seed else None


def _run_parallel(todo: list[tuple[str, str, int, Path | None]], scan_opts: Any, opts: CalibrateOptions,
                  finished: Callable[..., None]) -> None:
    from teacher_audit.scan import in_workers

    if opts.on_run:
        for _sha, p, seed, _cached in todo:
            opts.on_run(p, seed, "queued")
    with in_workers([(item, _run_one, (item[1], item[2], scan_opts)) for item in todo], opts.jobs) as done:
        for item, fut in done:
            finished(*item, fut.result())  # a failed run raises here; the finished ones stay cached


# --- the fit ---------------------------------------------------------------------------------------------

def _ntl_details(run: dict[str, Any], ntl_cal: dict[str, Any]) -> dict[str, Any]:
    """The NTL result's details as the fused probe takes them, flagged under the fitted NTL thresholds."""
    from teacher_audit.probes.calibration_fit import ntl_rescore

    d = run["ntl"]["details"]
    s = ntl_rescore(d, ntl_cal["threshold"], ntl_cal["inversion_threshold"])
    bn = bool(run["backdoor"]["details"].get("synthesis_bn_prior", True))
    return dict(d, flagged=s >= ntl_cal["threshold"], use_pull=bn)


def _backdoor_run(run: dict[str, Any], ntl_cal: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    from teacher_audit.probes.backdoor_fused import component_results

    return component_results(run["backdoor"]["details"]["components"]), _ntl_details(run, ntl_cal)


def fit_parts(runs: list[dict[str, Any]], margin: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """(backdoor calibration, NTL calibration) from run records.

    NTL: :func:`teacher_audit.probes.calibration_fit.fit_ntl`. Backdoor: the clean class reference
    (:mod:`teacher_audit.probes.backdoor_reference`) is the one fused component, its threshold from
    leave-one-teacher-out scores. Measured on the unseen-architecture teachers, it beat standardising the
    built-in components' magnitudes on the user's teachers (docs/benchmarks.md, "User calibration on
    unseen architectures").
    """
    from teacher_audit.probes import backdoor_reference
    from teacher_audit.probes.calibration_fit import fit_ntl
    from teacher_audit.probes.ntl_robustness import DEFAULT_INVERSION_THRESHOLD

    ntl = fit_ntl([r["ntl"]["details"] for r in runs], DEFAULT_INVERSION_THRESHOLD)
    from teacher_audit.probes.backdoor_fused import component_results

    by_teacher: dict[str, list[Any]] = {}
    for r in runs:  # the reference reads the components only (no NTL details needed)
        by_teacher.setdefault(r["sha256"], []).append(component_results(r["backdoor"]["details"]["components"]))
    try:
        got = backdoor_reference.fit(list(by_teacher.values()), margin)
    except ValueError as exc:
        raise AuditError(f"calibration: {exc}") from None
    bd = {"components": {backdoor_reference.NAME: {"mean": 0.0, "sd": 1.0}}, "threshold": got["threshold"],
          "margin": margin, "class_reference": got["reference"], "threshold_basis": got["threshold_basis"],
          "max_clean": got["max_clean"]}
    return bd, ntl


def score_run(run: dict[str, Any], bd: dict[str, Any], ntl: dict[str, Any]) -> dict[str, Any]:
    """One run's fused backdoor z and NTL score under a calibration, and whether either flags it."""
    from teacher_audit.probes.backdoor_fused import fuse
    from teacher_audit.probes.calibration_fit import ntl_rescore

    res, nd = _backdoor_run(run, ntl)
    z, target, _ = fuse(res, bd, nd)
    s = ntl_rescore(run["ntl"]["details"], ntl["threshold"], ntl["inversion_threshold"])
    return {"backdoor_fused": round(z, 3), "backdoor_threshold": bd["threshold"], "backdoor_flagged": bool(z > bd["threshold"]),
            "backdoor_target": target, "ntl_score": round(s, 4), "ntl_threshold": ntl["threshold"],
            "ntl_flagged": bool(s >= ntl["threshold"])}


def leave_one_out(runs: list[dict[str, Any]], margin: float) -> list[dict[str, Any]]:
    """For every clean teacher: its runs scored by a calibration fitted on the OTHER teachers only.

    An estimate of how the calibration carries to a clean teacher it did not see; [] with one teacher.
    """
    teachers = list(dict.fromkeys(r["sha256"] for r in runs))
    if len(teachers) < 2:
        return []
    out = []
    for sha in teachers:
        rest = [r for r in runs if r["sha256"] != sha]
        bd, ntl = fit_parts(rest, margin)
        for r in runs:
            if r["sha256"] == sha:
                out.append({"file": r["file"], "seed": r["seed"], **score_run(r, bd, ntl)})
    return out


def fit(runs: list[dict[str, Any]], margin: float = 0.5, options: dict[str, Any] | None = None) -> Calibration:
    """The calibration document from run records (:func:`collect_runs`). Pure: no teacher passes."""
    if not runs:
        raise UsageError("no calibration run to fit")
    bd, ntl = fit_parts(runs, margin)
    n = len({r["sha256"] for r in runs})
    doc = {
        "schema": SCHEMA, "kind": KIND,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tool_version": teacher_audit.__version__, "options": dict(options or {}, margin=margin),
        "scope": {"archs": sorted({str(r.get("arch")) for r in runs}),
                  "fingerprints": sorted({r["fingerprint"] for r in runs if r.get("fingerprint")}) or ["unknown"],
                  "n_clean": n},
        "backdoor": bd, "ntl": ntl,
        "runs": [{"file": r["file"], "sha256": r["sha256"], "seed": r["seed"], "arch": r.get("arch"),
                  "fingerprint": r.get("fingerprint"), **score_run(r, bd, ntl)} for r in runs],
        "leave_one_out": leave_one_out(runs, margin),
    }
    return Calibration.model_validate(doc)


@dataclass
class CalibrationResult:
    calibration: Calibration
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def loo_flagged(self) -> list[dict[str, Any]]:
        """Leave-one-out runs a calibration without that teacher would have flagged."""
        return [r for r in self.calibration.leave_one_out if r["backdoor_flagged"] or r["ntl_flagged"]]


def calibrate(paths: list[str], out: str | os.PathLike[str], opts: CalibrateOptions | None = None) -> CalibrationResult:
    """Scan the clean teachers, fit, write the calibration file atomically; returns it with the runs."""
    opts = opts or CalibrateOptions()
    runs = collect_runs(paths, opts)
    scan_opts = opts.scan
    options = {"seeds": list(opts.seeds)}
    if scan_opts is not None:
        pol = scan_opts.resolved_policy()
        options.update(preset=scan_opts.preset, policy=pol.name, policy_sha256=pol.sha256,
                       budget_seconds=scan_opts.budget_seconds)
    cal = fit(runs, opts.margin, options)
    text = cal.to_json()
    atomic_write_text(out, text)
    return CalibrationResult(calibration=parse_calibration(text, os.fspath(out)), runs=runs)
