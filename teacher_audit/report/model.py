"""The one typed report model; every writer renders from it.

Schema version is bumped on any incompatible change. All models forbid unknown fields.
"""

from __future__ import annotations

from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from teacher_audit.severity import Severity

SCHEMA_VERSION = "1"


class _Strict(BaseModel):
    # bytes (evidence PNGs) travel as base64 in JSON, both ways.
    model_config = ConfigDict(extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")


class Evidence(_Strict):
    """One piece of evidence attached to a probe result.

    ``kind``: ``image`` (PNG bytes, base64 in JSON: inverted trigger, sample grid, histogram plot),
    ``table`` (list of row dicts), ``values`` (a small dict of numbers), ``text``.
    """

    name: str
    kind: Literal["image", "table", "values", "text"]
    caption: str = ""
    png: bytes | None = None
    table: list[dict[str, Any]] | None = None
    values: dict[str, Any] | None = None
    text: str | None = None


class Budget(_Strict):
    """Compute a probe or a run spent."""

    teacher_passes: int = 0
    seconds: float = 0.0
    limit_passes: int | None = None
    limit_seconds: float | None = None


class ProbeResult(_Strict):
    """What one probe found.

    ``status`` is ``ok`` when the probe ran to the end, ``skipped`` (with ``summary`` saying why) or
    ``error``. A skipped or errored probe is never read as "clean" by the policy.
    """

    probe: str
    threat: Literal["backdoor", "ntl", "intake", "other"]
    status: Literal["ok", "skipped", "error"] = "ok"
    score: float | None = None
    threshold: float | None = None
    flagged: bool = False
    severity: Severity = Severity.INFO
    summary: str = ""
    target_class: int | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    evidence: list[Evidence] = Field(default_factory=list)
    budget: Budget = Field(default_factory=Budget)
    seed: int | None = None


class PickleScan(_Strict):
    """Static pickle scan outcome for one file (all members)."""

    scanned: bool = False
    members: list[str] = Field(default_factory=list)
    globals_found: list[str] = Field(default_factory=list)
    allowed: list[str] = Field(default_factory=list)
    refused: list[str] = Field(default_factory=list)
    extra_allowed: list[str] = Field(default_factory=list)


class IntakeResult(_Strict):
    """What intake learned about the file before any probe ran."""

    path: str
    size: int
    sha256: str
    format: str
    pickle: PickleScan = Field(default_factory=PickleScan)
    refused_reason: str | None = None
    tensor_count: int | None = None
    parameter_count: int | None = None
    architecture: str | None = None
    architecture_source: str | None = None
    architecture_candidates: list[dict[str, Any]] = Field(default_factory=list)
    input_spec: dict[str, Any] | None = None
    onnx_parity_max_abs_diff: float | None = None
    has_batchnorm: bool | None = None
    #: names and shapes of the network's parameters and buffers, hashed: the key of a user calibration's scope
    structure_fingerprint: str | None = None
    notes: list[str] = Field(default_factory=list)


# --------------------------------------------------------------------------------------------
# The top-level report (issue 7). Everything below is additive; the classes above are the
# contract probe and intake engineers code against.
# --------------------------------------------------------------------------------------------

VerdictStatus = Literal["pass", "fail", "error", "not_auditable"]


class InputInfo(_Strict):
    """The file that was audited: where, how big, its SHA-256 and its sniffed format."""

    path: str
    size: int | None = None
    sha256: str | None = None
    format: str | None = None


class ArchitectureInfo(_Strict):
    """The resolved architecture, where the choice came from, and the matcher's candidates."""

    name: str | None = None
    source: str | None = None
    candidates: list[dict[str, Any]] = Field(default_factory=list)


class InputSpecInfo(_Strict):
    """The input spec the probes used (raw value range + normalisation) and each field's source."""

    channels: int
    height: int
    width: int
    value_range: list[float]
    mean: list[float]
    std: list[float]
    num_classes: int
    class_names: list[str] | None = None
    sources: dict[str, str] = Field(default_factory=dict)


class AllowlistMatch(_Strict):
    """An allowlist entry of the policy that matched the file's SHA-256."""

    sha256: str
    reason: str
    expires: date
    expired: bool


class PolicyApplied(_Strict):
    """Which policy decided the verdict.

    ``source`` is ``packaged:<name>`` for the shipped rules or the path given with ``--rules``.
    """

    name: str
    source: str
    sha256: str
    fail_level: Severity | None
    required_probes: list[str] = Field(default_factory=list)
    required_threats: list[str] = Field(default_factory=list)
    disabled_probes: list[str] = Field(default_factory=list)
    extra_allowed_globals: list[str] = Field(default_factory=list)
    allowlist_match: AllowlistMatch | None = None


class Verdict(_Strict):
    """The outcome the gate obeys, with the human reasons behind it.

    ``exit_code`` follows ``teacher_audit.exitcodes`` (0 pass, 1 fail, 2 error, 3 not_auditable).
    ``waived`` lists findings that would have failed but were waived by a valid allowlist entry.
    """

    status: VerdictStatus
    exit_code: int
    reasons: list[str] = Field(default_factory=list)
    waived: list[str] = Field(default_factory=list)


class Timings(_Strict):
    """Wall-clock timings (seconds) and UTC start/end stamps (ISO 8601)."""

    started_at: str
    finished_at: str
    intake_seconds: float = 0.0
    engine_seconds: float = 0.0
    probes_seconds: float = 0.0
    total_seconds: float = 0.0
    per_probe: dict[str, float] = Field(default_factory=dict)


class Versions(_Strict):
    """Versions of the tool and of the runtime that produced the report."""

    tool: str
    python: str
    torch: str | None = None
    platform: str | None = None


class Report(_Strict):
    """One audit of one checkpoint; every writer (json, md, html, sarif) renders from this.

    ``intake`` is ``None`` when intake failed before it could describe the file; then ``error``
    carries the one-line reason and ``verdict`` is ``error`` or ``not_auditable``.
    """

    schema_version: Literal["1"] = SCHEMA_VERSION
    tool: Literal["teacher-audit"] = "teacher-audit"
    input: InputInfo
    intake: IntakeResult | None = None
    error: str | None = None
    error_type: str | None = None
    refused_globals: list[str] = Field(default_factory=list)
    architecture: ArchitectureInfo = Field(default_factory=ArchitectureInfo)
    input_spec: InputSpecInfo | None = None
    probes: list[ProbeResult] = Field(default_factory=list)
    policy: PolicyApplied
    verdict: Verdict
    timings: Timings
    budget: Budget = Field(default_factory=Budget)
    seeds: dict[str, int] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)
    versions: Versions


class ScanSet(_Strict):
    """Several reports from one ``scan`` invocation and the single verdict (worst wins)."""

    schema_version: Literal["1"] = SCHEMA_VERSION
    tool: Literal["teacher-audit"] = "teacher-audit"
    verdict: Verdict
    reports: list[Report]
