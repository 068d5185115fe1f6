"""The one typed report model; every writer renders from it.

Schema version is bumped on any incompatible change. All models forbid unknown fields.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from teacher_audit.severity import Severity

SCHEMA_VERSION = "1"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
    notes: list[str] = Field(default_factory=list)
