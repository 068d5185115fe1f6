"""Policy: ``rules/*.toml`` -> typed rules -> the verdict of one scan.

A policy decides which probe findings fail the gate. It is loaded ONLY from an explicit
``--rules PATH`` or from the rules packaged with the tool (``default``, ``strict``, ``report-only``);
it is never discovered next to a model, because an attacker who ships a checkpoint could ship a
permissive policy beside it.

TOML layout (every key optional except ``[policy].name``; unknown keys are rejected)::

    [policy]
    name = "default"
    fail_level = "high"            # info|low|medium|high|critical, or "none" (report only: never fails)
    required_probes = []           # probe names that must run to the end (status ok) for a pass
    required_threats = ["backdoor", "ntl"]  # each needs >= 1 probe of that threat that ran to the end
    probe_errors = "error"         # "error": any probe error makes the verdict error; "ignore"

    [probes.<name>]                # per-probe overrides (name must be a registered probe)
    enabled = true
    threshold = 0.5                # set on the probe's Config (the probe must have a ``threshold`` option)
    severity = "high"              # severity given to a flagged result of this probe
    options = { steps = 50 }       # other fields of the probe's Config

    [pickle]
    extra_allowed_globals = ["collections.OrderedDict"]

    [[allowlist]]                  # accept THIS file's findings until ``expires`` (an expired entry fails)
    sha256 = "<64 hex>"
    reason = "reviewed by X, ticket 123"
    expires = 2027-01-31

    [calibration]                  # thresholds fitted by ``teacher-audit calibrate`` on clean teachers
    file = "calibration/vit.json"  # relative to this rules file; ``scan --calibration`` overrides it

Verdict rules (``evaluate``), in order; the first that applies wins:

1. intake failed -> ``error`` (exit 2) or ``not_auditable`` (exit 3), decided by the scan.
2. an EXPIRED allowlist entry matches the SHA-256 -> ``fail`` with the entry's reason.
3. a flagged probe result at or above ``fail_level`` -> ``fail`` (unless a valid allowlist entry
   matches: then the finding is listed under ``waived`` and does not fail).
4. a probe error (``probe_errors = "error"``) or an errored required probe -> ``error``.
5. a required probe that is not installed, disabled, skipped or did not run, a required threat
   with no probe that ran to the end, or no probe at all that ran to the end -> ``not_auditable``.
6. otherwise ``pass``.

A skipped probe is never read as clean: rule 5 makes "nothing was checked" a non-pass.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from teacher_audit.errors import UsageError
from teacher_audit.exitcodes import ExitCode
from teacher_audit.report.model import AllowlistMatch, PolicyApplied, ProbeResult, Verdict
from teacher_audit.severity import Severity

#: names of the rules shipped inside the package (``teacher_audit/rules/<name>.toml``).
PACKAGED_RULES = ("default", "strict", "report-only")

_SHA = re.compile(r"^[0-9a-f]{64}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PolicyHeader(_Strict):
    """The ``[policy]`` table."""

    name: str
    description: str = ""
    fail_level: Severity | Literal["none"] = Severity.HIGH
    required_probes: list[str] = Field(default_factory=list)
    required_threats: list[Literal["backdoor", "ntl", "intake", "other"]] = Field(default_factory=list)
    probe_errors: Literal["error", "ignore"] = "error"


class ProbeRule(_Strict):
    """One ``[probes.<name>]`` table."""

    enabled: bool = True
    threshold: float | None = None
    severity: Severity | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class PickleRules(_Strict):
    """The ``[pickle]`` table."""

    extra_allowed_globals: list[str] = Field(default_factory=list)

    @field_validator("extra_allowed_globals")
    @classmethod
    def _dotted(cls, v: list[str]) -> list[str]:
        for g in v:
            if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+", g):
                raise ValueError(f"not a dotted module.name global: {g!r}")
        return v


class AllowEntry(_Strict):
    """One ``[[allowlist]]`` entry: a reviewed file, by SHA-256, with a reason and an expiry date."""

    sha256: str
    reason: str
    expires: _dt.date

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        v = v.lower()
        if not _SHA.match(v):
            raise ValueError("sha256 must be 64 hex digits")
        return v

    @field_validator("reason")
    @classmethod
    def _reason(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("an allowlist entry needs a non-empty reason")
        return v


class CalibrationRef(_Strict):
    """The ``[calibration]`` table: a calibration file (``teacher-audit calibrate``) for the scans."""

    file: str

    @field_validator("file")
    @classmethod
    def _nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the calibration file name is empty")
        return v


class Policy(_Strict):
    """A whole rules file, typed. Build with ``load_policy``/``parse_policy``."""

    policy: PolicyHeader
    probes: dict[str, ProbeRule] = Field(default_factory=dict)
    pickle: PickleRules = Field(default_factory=PickleRules)
    allowlist: list[AllowEntry] = Field(default_factory=list)
    calibration: CalibrationRef | None = None
    #: where it came from ("packaged:default" or a path) and the SHA-256 of its text; set by the loader.
    source: str = "memory"
    sha256: str = ""

    @property
    def name(self) -> str:
        return self.policy.name

    @property
    def fail_level(self) -> Severity | None:
        lvl = self.policy.fail_level
        return None if lvl == "none" else Severity(lvl)

    def calibration_path(self) -> Path | None:
        """The ``[calibration] file``, resolved against the rules file's folder (None when not set)."""
        if self.calibration is None:
            return None
        p = Path(self.calibration.file)
        if p.is_absolute() or self.source.startswith("packaged:") or self.source == "memory":
            return p
        return Path(self.source).parent / p

    def probe_rule(self, name: str) -> ProbeRule:
        return self.probes.get(name, ProbeRule())

    def is_enabled(self, name: str, default: bool = True) -> bool:
        rule = self.probes.get(name)
        if rule is None:
            return default or name in self.policy.required_probes
        return rule.enabled

    def allowlist_match(self, sha256: str | None, today: _dt.date | None = None) -> AllowlistMatch | None:
        """The allowlist entry for ``sha256`` (the latest-expiring one if several), or None."""
        if not sha256:
            return None
        today = today or _dt.datetime.now(_dt.timezone.utc).date()
        hits = [e for e in self.allowlist if e.sha256 == sha256.lower()]
        if not hits:
            return None
        e = max(hits, key=lambda h: h.expires)
        return AllowlistMatch(sha256=e.sha256, reason=e.reason, expires=e.expires, expired=e.expires < today)

    def applied(self, sha256: str | None = None, disabled: list[str] | None = None,
                today: _dt.date | None = None) -> PolicyApplied:
        """The report's record of this policy (with the allowlist match for ``sha256``)."""
        return PolicyApplied(
            name=self.name, source=self.source, sha256=self.sha256, fail_level=self.fail_level,
            required_probes=list(self.policy.required_probes),
            required_threats=list(self.policy.required_threats),
            disabled_probes=sorted(disabled if disabled is not None
                                   else [n for n, r in self.probes.items() if not r.enabled]),
            extra_allowed_globals=list(self.pickle.extra_allowed_globals),
            allowlist_match=self.allowlist_match(sha256, today),
        )


def _first_error(exc: ValidationError, origin: str) -> str:
    e = exc.errors()[0]
    loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
    if e["type"] == "extra_forbidden":
        return f"{origin}: unknown key '{loc}'"
    msg = e["msg"].replace("Value error, ", "")
    return f"{origin}: bad value for '{loc}': {msg}"


def parse_policy(text: str, source: str = "memory") -> Policy:
    """Parse rules TOML text into a ``Policy``; any problem raises one-line ``UsageError``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{source}: not valid TOML: {exc}") from None
    if "policy" not in data:
        raise UsageError(f"{source}: missing the [policy] table")
    try:
        pol = Policy.model_validate(data)
    except ValidationError as exc:
        raise UsageError(_first_error(exc, source)) from None
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return pol.model_copy(update={"source": source, "sha256": digest})


def packaged_rules_text(name: str) -> str:
    """Text of a packaged rules file (``teacher_audit/rules/<name>.toml``, shipped in the wheel)."""
    if name not in PACKAGED_RULES:
        raise UsageError(f"unknown packaged rules {name!r}; known: {', '.join(PACKAGED_RULES)}")
    return resources.files("teacher_audit").joinpath("rules", f"{name}.toml").read_text("utf-8")


def load_policy(rules: str | Path | None = None) -> Policy:
    """Load the policy.

    Args:
        rules: ``None`` -> the packaged ``default``; a packaged name (``default``, ``strict``,
            ``report-only``) -> that packaged file, always (a local file of that name needs ``./``);
            anything else -> a path to a TOML file. Nothing is ever looked up next to the audited model.

    Raises:
        UsageError: missing/unreadable file, bad TOML, unknown keys, bad values (one line).
    """
    if rules is None:
        return parse_policy(packaged_rules_text("default"), "packaged:default")
    text_name = str(rules)
    if isinstance(rules, str) and text_name in PACKAGED_RULES:
        # a bare packaged name ALWAYS means the packaged file, even if a file of that name sits in the
        # working directory (a checked-out pull request could add one); write ./strict for such a file.
        return parse_policy(packaged_rules_text(text_name), f"packaged:{text_name}")
    path = Path(rules)
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read rules file {text_name}: {exc.__class__.__name__}") from None
    return parse_policy(text, str(path))


def _is_finding(r: ProbeResult) -> bool:
    return r.status == "ok" and r.flagged


def evaluate(policy: Policy, results: list[ProbeResult], sha256: str | None, *,
             installed: list[str] | None = None, today: _dt.date | None = None) -> Verdict:
    """Apply ``policy`` to probe results (intake succeeded). See the module docstring for the rules.

    Args:
        policy: the typed policy.
        results: one ``ProbeResult`` per probe that was attempted (ok, skipped or error).
        sha256: the file's SHA-256 (for the allowlist).
        installed: names of registered probes (to tell "required but not installed").
        today: date used for allowlist expiry (default: today, UTC).
    """
    reasons: list[str] = []
    waived: list[str] = []
    match = policy.allowlist_match(sha256, today)
    by_name = {r.probe: r for r in results}
    fail_level = policy.fail_level

    def finding_text(r: ProbeResult) -> str:
        score = "" if r.score is None else f" (score {r.score:.4g}"
        score += "" if not score or r.threshold is None else f" > threshold {r.threshold:.4g}"
        score += ")" if score else ""
        tgt = "" if r.target_class is None else f", suspected target class {r.target_class}"
        return f"{r.probe}: {r.severity.value} {r.threat} finding{score}{tgt}"

    # 2. expired allowlist entry
    if match is not None and match.expired:
        reasons.append(f"allowlist entry for this file expired on {match.expires.isoformat()} "
                       f"(reason was: {match.reason})")
        return Verdict(status="fail", exit_code=int(ExitCode.FINDINGS), reasons=reasons)

    # 3. findings at or above the fail level
    failing = [r for r in results if _is_finding(r) and fail_level is not None and r.severity >= fail_level]
    below = [r for r in results if _is_finding(r) and r not in failing]
    if failing and match is not None:
        waived = [finding_text(r) for r in failing]
        reasons.append(f"allowlisted until {match.expires.isoformat()}: {match.reason}")
        failing = []
    if failing:
        reasons.extend(finding_text(r) for r in failing)
        return Verdict(status="fail", exit_code=int(ExitCode.FINDINGS), reasons=reasons)
    reported_only = [finding_text(r) + (" [below fail level]" if fail_level is not None else " [report only]")
                     for r in below]

    # 4. probe errors
    errored = [r for r in results if r.status == "error"]
    req_err = [r for r in errored if r.probe in policy.policy.required_probes]
    if req_err or (errored and policy.policy.probe_errors == "error"):
        reasons.extend(f"probe {r.probe} failed with an error: {r.summary or 'no message'}" for r in errored)
        return Verdict(status="error", exit_code=int(ExitCode.ERROR), reasons=reasons + reported_only,
                       waived=waived)

    # 5. nothing (required) was checked
    missing: list[str] = []
    for name in policy.policy.required_probes:
        r = by_name.get(name)
        if installed is not None and name not in installed:
            missing.append(f"required probe {name} is not installed")
        elif r is None:
            missing.append(f"required probe {name} did not run (disabled or out of budget)")
        elif r.status != "ok":
            missing.append(f"required probe {name} was {r.status}: {r.summary or 'no reason given'}")
    ran = [r for r in results if r.status == "ok"]
    for threat in policy.policy.required_threats:
        if not any(r.threat == threat for r in ran):
            missing.append(f"no {threat} probe ran to the end (required by the policy)")
    if not ran:
        missing.append("no probe ran to the end; nothing was audited")
    if missing:
        skipped = [f"probe {r.probe} skipped: {r.summary or 'no reason given'}"
                   for r in results if r.status == "skipped"]
        return Verdict(status="not_auditable", exit_code=int(ExitCode.NOT_AUDITABLE),
                       reasons=missing + skipped + reported_only, waived=waived)

    # 6. pass
    reasons.extend(reported_only)
    reasons.extend(f"probe {r.probe} skipped: {r.summary or 'no reason given'}"
                   for r in results if r.status == "skipped")
    if waived:
        reasons.append(f"{len(ran)} probe(s) ran; {len(waived)} finding(s) at or above the fail level "
                       "waived by the allowlist")
    elif not reasons:
        reasons.append(f"{len(ran)} probe(s) ran; no finding at or above the fail level"
                       if fail_level is not None else f"{len(ran)} probe(s) ran; report-only policy")
    return Verdict(status="pass", exit_code=int(ExitCode.PASS), reasons=reasons, waived=waived)


#: order used when several verdicts are combined into one exit code (worst wins).
_WORST = {"pass": 0, "not_auditable": 1, "error": 2, "fail": 3}


def combine(verdicts: list[Verdict]) -> Verdict:
    """One verdict for many files: the worst wins (fail > error > not_auditable > pass).

    A confirmed finding outranks an error so that the CI message names the finding; any
    non-pass file makes the whole set non-pass. An empty list is ``not_auditable``.
    """
    if not verdicts:
        return Verdict(status="not_auditable", exit_code=int(ExitCode.NOT_AUDITABLE),
                       reasons=["no file was scanned"])
    worst = max(verdicts, key=lambda v: _WORST[v.status])
    counts: dict[str, int] = {}
    for v in verdicts:
        counts[v.status] = counts.get(v.status, 0) + 1
    summary = ", ".join(f"{k}: {counts[k]}" for k in ("pass", "fail", "error", "not_auditable") if k in counts)
    return Verdict(status=worst.status, exit_code=worst.exit_code, reasons=[f"{len(verdicts)} file(s): {summary}"])
