"""Policy: typed rules, unknown keys rejected, packaged copies identical, verdict rules."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from teacher_audit.errors import UsageError
from teacher_audit.policy import PACKAGED_RULES, combine, evaluate, load_policy, parse_policy
from teacher_audit.report.model import ProbeResult
from teacher_audit.severity import Severity

ROOT = Path(__file__).resolve().parents[1]
SHA = "cd" * 32
TODAY = dt.date(2026, 6, 1)


def r(name: str, threat: str = "backdoor", status: str = "ok", flagged: bool = False,
      sev: Severity = Severity.INFO) -> ProbeResult:
    return ProbeResult(probe=name, threat=threat, status=status, flagged=flagged, severity=sev, score=1.0,
                       threshold=0.5, summary="why")


def test_packaged_rules_are_the_top_level_rules_byte_for_byte():
    for name in PACKAGED_RULES:
        top = (ROOT / "rules" / f"{name}.toml").read_text()
        pkg = (ROOT / "teacher_audit" / "rules" / f"{name}.toml").read_text()
        assert top == pkg, f"teacher_audit/rules/{name}.toml differs from rules/{name}.toml: copy it"
        pol = load_policy(name)
        assert pol.source == f"packaged:{name}" and pol.name == name


def test_packaged_levels():
    assert load_policy().fail_level == Severity.HIGH and load_policy().name == "default"
    assert load_policy("strict").fail_level == Severity.MEDIUM
    assert load_policy("report-only").fail_level is None
    assert set(load_policy().policy.required_threats) == {"backdoor", "ntl"}


@pytest.mark.parametrize("text,msg", [
    ('[policy]\nname="x"\nfail_levl="high"\n', "unknown key 'policy.fail_levl'"),
    ('[policy]\nname="x"\n[probes.p]\nthreshhold=1\n', "unknown key 'probes.p.threshhold'"),
    ('[policy]\nname="x"\n[surprise]\na=1\n', "unknown key 'surprise'"),
    ('[policy]\nname="x"\nfail_level="severe"\n', "bad value for 'policy.fail_level"),
    ('[policy]\nname="x"\n[[allowlist]]\nsha256="zz"\nreason="r"\nexpires=2027-01-01\n', "sha256 must be 64 hex"),
    (f'[policy]\nname="x"\n[[allowlist]]\nsha256="{SHA}"\nreason=" "\nexpires=2027-01-01\n', "non-empty reason"),
    (f'[policy]\nname="x"\n[[allowlist]]\nsha256="{SHA}"\nreason="r"\n', "allowlist.0.expires"),
    ('[policy]\nname="x"\n[pickle]\nextra_allowed_globals=["os system"]\n', "dotted"),
    ('name="x"\n', "missing the [policy] table"),
    ('[policy\n', "not valid TOML"),
])
def test_bad_rules_one_line_message(text, msg):
    with pytest.raises(UsageError) as ei:
        parse_policy(text, "bad.toml")
    assert msg in str(ei.value) and "\n" not in str(ei.value) and str(ei.value).startswith("bad.toml: ")


def test_rules_only_from_explicit_path_never_next_to_model(tmp_path):
    (tmp_path / "default.toml").write_text('[policy]\nname="evil"\nfail_level="none"\n')
    (tmp_path / "strict").write_text('[policy]\nname="evil2"\nfail_level="none"\n')
    import os
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert load_policy().name == "default"          # packaged, not ./default.toml
        assert load_policy("default").name == "default"  # packaged name
        assert load_policy("default.toml").name == "evil"  # an explicit path is used as given
        assert load_policy("strict").name == "strict"      # a planted ./strict never shadows the packaged one
        assert load_policy("./strict").name == "evil2"
    finally:
        os.chdir(cwd)
    with pytest.raises(UsageError, match="cannot read rules file"):
        load_policy(tmp_path / "missing.toml")


def _pol(extra: str = "", level: str = "high", threats: str = "[]", req: str = "[]") -> object:
    return parse_policy(f'[policy]\nname="t"\nfail_level="{level}"\nrequired_threats={threats}\n'
                        f'required_probes={req}\n{extra}')


def test_verdict_rules():
    p = _pol()
    assert evaluate(p, [r("a")], SHA, today=TODAY).status == "pass"
    v = evaluate(p, [r("a", flagged=True, sev=Severity.HIGH)], SHA, today=TODAY)
    assert v.status == "fail" and v.exit_code == 1 and "a: high backdoor finding" in v.reasons[0]
    v = evaluate(p, [r("a", flagged=True, sev=Severity.MEDIUM)], SHA, today=TODAY)
    assert v.status == "pass" and "below fail level" in v.reasons[0]
    assert evaluate(_pol(level="medium"), [r("a", flagged=True, sev=Severity.MEDIUM)], SHA).status == "fail"
    # report-only never fails on findings but still reports them
    v = evaluate(_pol(level="none"), [r("a", flagged=True, sev=Severity.CRITICAL)], SHA)
    assert v.status == "pass" and "report only" in v.reasons[0]


def test_nothing_checked_is_never_a_pass():
    p = _pol()
    assert evaluate(p, [], SHA).status == "not_auditable"                        # no probe at all
    assert evaluate(p, [r("a", status="skipped")], SHA).exit_code == 3           # only skipped
    # required threat not covered
    v = evaluate(_pol(threats='["backdoor","ntl"]'), [r("a")], SHA)
    assert v.status == "not_auditable" and "no ntl probe ran" in v.reasons[0]
    assert evaluate(_pol(threats='["backdoor","ntl"]'), [r("a"), r("b", threat="ntl")], SHA).status == "pass"
    # required probe skipped / missing / not installed / errored
    req = _pol(req='["b"]')
    assert evaluate(req, [r("a"), r("b", status="skipped")], SHA).status == "not_auditable"
    assert evaluate(req, [r("a")], SHA, installed=["a", "b"]).status == "not_auditable"
    assert "not installed" in evaluate(req, [r("a")], SHA, installed=["a"]).reasons[0]
    assert evaluate(req, [r("a"), r("b", status="error")], SHA).status == "error"
    # any probe error -> error (unless the policy ignores probe errors and something else ran)
    assert evaluate(p, [r("a"), r("c", status="error")], SHA).status == "error"
    ign = parse_policy('[policy]\nname="t"\nprobe_errors="ignore"\n')
    assert evaluate(ign, [r("a"), r("c", status="error")], SHA).status == "pass"
    assert evaluate(ign, [r("c", status="error")], SHA).status == "not_auditable"
    # a finding dominates an error
    assert evaluate(p, [r("a", flagged=True, sev=Severity.HIGH), r("c", status="error")], SHA).status == "fail"


def test_allowlist_valid_waives_expired_fails():
    allow = f'[[allowlist]]\nsha256="{SHA.upper()}"\nreason="reviewed in SEC-1"\nexpires=2026-12-31\n'
    p = _pol(allow)
    finding = [r("a", flagged=True, sev=Severity.CRITICAL)]
    v = evaluate(p, finding, SHA, today=TODAY)
    assert v.status == "pass" and v.waived and "allowlisted until 2026-12-31: reviewed in SEC-1" in v.reasons[0]
    assert "1 finding(s) at or above the fail level waived" in v.reasons[-1]
    assert evaluate(p, [r("a")], SHA, today=TODAY).reasons[-1].endswith("no finding at or above the fail level")
    assert evaluate(p, finding, "ee" * 32, today=TODAY).status == "fail"         # other file: not allowlisted
    v = evaluate(p, [r("a")], SHA, today=dt.date(2027, 1, 1))                    # expired: fails even when clean
    assert v.status == "fail" and "expired on 2026-12-31" in v.reasons[0] and "SEC-1" in v.reasons[0]
    # the allowlist waives findings only: an unchecked file stays not auditable
    assert evaluate(p, [], SHA, today=TODAY).status == "not_auditable"
    m = p.applied(SHA, today=TODAY).allowlist_match
    assert m is not None and not m.expired


def test_combine_worst_wins():
    p = _pol()
    ok = evaluate(p, [r("a")], SHA)
    bad = evaluate(p, [], SHA)
    fail = evaluate(p, [r("a", flagged=True, sev=Severity.HIGH)], SHA)
    assert combine([ok, ok]).status == "pass"
    assert combine([ok, bad]).exit_code == 3
    assert combine([ok, bad, fail]).status == "fail"
    assert combine([]).status == "not_auditable"
    assert "3 file(s)" in combine([ok, bad, fail]).reasons[0]
