"""SARIF 2.1.0 writer (for GitHub code scanning and other SARIF viewers).

- One run per invocation; every audited checkpoint is an artifact (URI, length, SHA-256).
- One rule per finding type: each probe name (``probe/<name>``), plus fixed rules for intake and
  gate outcomes (``intake/refused-pickle``, ``intake/not-auditable``, ``intake/error``,
  ``policy/expired-allowlist``, ``gate/not-audited``, ``gate/probe-error``).
- Levels come from ``Severity.sarif_level`` for probe findings; probes that ran clean appear as
  ``kind: pass`` results (level ``none``) so a viewer shows what was checked.
- Text is plain (``message.text`` only, control characters made visible, ``[``/``]`` escaped); no
  Markdown is emitted, so hostile names cannot render as links. URIs are percent-encoded.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote

import teacher_audit
from teacher_audit.report.coerce import finite
from teacher_audit.report.model import ProbeResult, Report, ScanSet
from teacher_audit.report.sanitize import clean
from teacher_audit.report.view import reports_of
from teacher_audit.severity import Severity
from teacher_audit.report.writers import WRITERS

SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"

_FIXED_RULES: dict[str, tuple[str, str, str]] = {
    # id: (name, short description, default level)
    "intake/refused-pickle": ("RefusedPickle", "The checkpoint's pickle imports globals outside the allowlist; "
                              "nothing was unpickled.", "error"),
    "intake/not-auditable": ("NotAuditable", "The file could not be audited (unsupported format, unknown "
                             "architecture, untrusted code).", "error"),
    "intake/error": ("IntakeError", "The file could not be read (corrupt or truncated).", "error"),
    "policy/expired-allowlist": ("ExpiredAllowlist", "An allowlist entry for this file has expired.", "error"),
    "gate/not-audited": ("NotAudited", "A required check did not run to the end; the file is not a pass.", "error"),
    "gate/probe-error": ("ProbeError", "A probe failed with an error while auditing.", "error"),
}


def _text(value: Any, limit: int = 4000) -> str:
    """SARIF plain text: control characters visible, and ``[``/``]`` escaped so that no embedded link
    (SARIF 2.1.0 section 3.11.6, ``[text](target)``) can be formed by a hostile name."""
    return clean(value, limit).replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")


def _uri(path: str) -> tuple[str, str | None]:
    p = PurePosixPath(path.replace("\\", "/"))
    if p.is_absolute():
        return "file://" + quote(str(p), safe="/"), None
    return quote(str(p), safe="/"), "%SRCROOT%"


def _location(rep: Report, index: int) -> dict[str, Any]:
    uri, base = _uri(rep.input.path)
    loc: dict[str, Any] = {"uri": uri, "index": index}
    if base:
        loc["uriBaseId"] = base
    # GitHub code scanning needs region.startLine (sarif-sdk rule GH1003); a checkpoint is binary, so
    # the whole file is the finding's location and line 1 is where viewers anchor it.
    return {"physicalLocation": {"artifactLocation": loc, "region": {"startLine": 1}}}


def _probe_rule(r: ProbeResult) -> dict[str, Any]:
    return {
        "id": f"probe/{clean(r.probe, 100)}",
        "name": "".join(w.capitalize() for w in clean(r.probe, 100).replace("-", "_").split("_")) or "Probe",
        "shortDescription": {"text": f"teacher-audit {clean(r.threat)} probe {clean(r.probe, 100)}"},
        "fullDescription": {"text": f"Data-free {clean(r.threat)} probe '{clean(r.probe, 100)}' of teacher-audit "
                                    "flagged this checkpoint."},
        "defaultConfiguration": {"level": "error"},
        "help": {"text": "See the teacher-audit report (--html) for this probe's evidence and docs/report.md."},
        "properties": {"threat": clean(r.threat)},
    }


def _result(rule_id: str, rule_index: int, level: str, text: str, rep: Report, art: int,
            kind: str = "fail", props: dict[str, Any] | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {
        "ruleId": rule_id, "ruleIndex": rule_index, "kind": kind, "level": level if kind == "fail" else "none",
        "message": {"text": _text(text)},
        "locations": [_location(rep, art)],
        "partialFingerprints": {"checkpointSha256/v1": f"{rep.input.sha256 or clean(rep.input.path)}:{rule_id}"},
    }
    if props:
        res["properties"] = props
    return res


@WRITERS.register("sarif")
class SarifWriter:
    suffix = ".sarif"

    def render(self, doc: Report | ScanSet) -> str:
        reps = reports_of(doc)
        rules: list[dict[str, Any]] = []
        rule_index: dict[str, int] = {}

        def rule(rule_id: str, make: Any) -> int:
            if rule_id not in rule_index:
                rule_index[rule_id] = len(rules)
                rules.append(make())
            return rule_index[rule_id]

        def fixed(rule_id: str) -> int:
            name, desc, lvl = _FIXED_RULES[rule_id]
            return rule(rule_id, lambda: {"id": rule_id, "name": name, "shortDescription": {"text": desc},
                                          "fullDescription": {"text": desc}, "help": {"text": desc},
                                          "defaultConfiguration": {"level": lvl}})

        artifacts: list[dict[str, Any]] = []
        results: list[dict[str, Any]] = []
        art_index: dict[tuple[str, str | None], int] = {}
        for rep in reps:
            uri, base = _uri(rep.input.path)
            key = (uri, rep.input.sha256)
            if key not in art_index:  # SARIF requires unique artifacts
                art_index[key] = len(artifacts)
                a: dict[str, Any] = {"location": {"uri": uri, **({"uriBaseId": base} if base else {})},
                                     "roles": ["analysisTarget"]}
                if rep.input.size is not None:
                    a["length"] = rep.input.size
                if rep.input.sha256:
                    a["hashes"] = {"sha-256": rep.input.sha256}
                artifacts.append(a)
            art = art_index[key]
            who = clean(rep.input.path, 300)
            if rep.error is not None:
                rid = ("intake/refused-pickle" if rep.refused_globals else
                       "intake/error" if rep.verdict.status == "error" else "intake/not-auditable")
                props = {"refusedGlobals": [clean(g, 300) for g in rep.refused_globals]} if rep.refused_globals else None
                results.append(_result(rid, fixed(rid), "error", f"{who}: {rep.error}", rep, art, props=props))
                continue
            m = rep.policy.allowlist_match
            if m is not None and m.expired:
                rid = "policy/expired-allowlist"
                results.append(_result(rid, fixed(rid), "error", f"{who}: allowlist entry expired on "
                                       f"{m.expires.isoformat()} (reason was: {m.reason})", rep, art))
            for r in rep.probes:
                rid = f"probe/{clean(r.probe, 100)}"
                idx = rule(rid, lambda r=r: _probe_rule(r))
                props = {"score": r.score, "threshold": r.threshold, "severity": r.severity.value,
                         "threat": r.threat, "status": r.status}
                if r.target_class is not None:
                    props["targetClass"] = r.target_class
                if r.status == "ok" and r.flagged:
                    waived = any(w.startswith(f"{r.probe}:") for w in rep.verdict.waived)
                    text = f"{who}: {r.severity.value} {r.threat} finding by {r.probe}: {r.summary}"
                    res = _result(rid, idx, Severity(r.severity).sarif_level, text, rep, art, props=props)
                    if waived and m is not None:
                        res["suppressions"] = [{"kind": "external", "status": "accepted",
                                                "justification": clean(f"allowlisted until {m.expires}: {m.reason}")}]
                    results.append(res)
                elif r.status == "ok":
                    results.append(_result(rid, idx, "none", f"{who}: {r.probe} found nothing: {r.summary}", rep,
                                           art, kind="pass", props=props))
                elif r.status == "error":
                    rid2 = "gate/probe-error"
                    results.append(_result(rid2, fixed(rid2), "error" if rep.verdict.status == "error" else "warning",
                                           f"{who}: probe {r.probe} failed: {r.summary}", rep, art, props=props))
            if rep.verdict.status == "not_auditable":
                rid = "gate/not-audited"
                results.append(_result(rid, fixed(rid), "error", f"{who}: not audited: " + "; ".join(rep.verdict.reasons),
                                       rep, art))
        exit_code = doc.verdict.exit_code
        log = {
            "$schema": SARIF_SCHEMA,
            "version": "2.1.0",
            "runs": [{
                "tool": {"driver": {"name": "teacher-audit", "version": teacher_audit.__version__,
                                    "semanticVersion": teacher_audit.__version__,
                                    "rules": rules}},
                "invocations": [{"executionSuccessful": exit_code in (0, 1), "exitCode": exit_code}],
                "artifacts": artifacts,
                "results": results,
                "columnKind": "unicodeCodePoints",
                "properties": {"verdict": doc.verdict.status,
                               "reasons": [clean(x) for x in doc.verdict.reasons]},
            }],
        }
        return json.dumps(finite(log), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
