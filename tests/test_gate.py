"""The gate: exit-code matrix through the real CLI (real intake, real engine, a test-only probe).

The test-only probe (``report_kit.CollapseProbe``) tests the gate, not a detector: it flags a teacher
whose predictions on engine samples collapse to one class. Every other registered probe is disabled
by the test rules so the matrix stays fast and deterministic.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest
import torch

from report_kit import (TEST_PROBE, make_teacher_file, register_test_probe, rules_only,
                        unregister_test_probe)
from teacher_audit.cli import main
from teacher_audit.scan import sha256_file


@pytest.fixture(scope="module", autouse=True)
def _probe():
    register_test_probe()
    yield
    unregister_test_probe()


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("gate")
    clean = make_teacher_file(d, "clean.safetensors")
    rigged = make_teacher_file(d, "rigged.safetensors", rigged=True)
    trunc = d / "truncated.safetensors"
    trunc.write_bytes(clean.read_bytes()[:300])
    garbage = d / "garbage.bin"
    garbage.write_bytes(bytes(range(256)) * 8)
    canary = d / "CANARY"
    onebad = d / "onebad"
    onebad.mkdir()
    make_teacher_file(onebad, "good.safetensors")
    (onebad / "bad.bin").write_bytes(b"\x00" * 64)

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {canary}",))

    evil = d / "evil.pt"
    torch.save({"w": torch.zeros(2), "payload": Evil()}, evil)
    return {"dir": d, "onebad": onebad, "clean": clean, "rigged": rigged, "trunc": trunc, "garbage": garbage, "evil": evil,
            "canary": canary}


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as ei:
        main(argv)
    cap = capsys.readouterr()
    return int(ei.value.code), cap.out, cap.err


def test_exit_code_matrix(bench, tmp_path, capsys):
    d = bench["dir"]
    rules = rules_only(tmp_path, [TEST_PROBE])
    today = dt.datetime.now(dt.timezone.utc).date()
    rigged_sha = sha256_file(bench["rigged"])
    allow = rules_only(tmp_path, [TEST_PROBE], name="allow",
                       allow=[(rigged_sha, "reviewed: synthetic test teacher", today + dt.timedelta(days=30))])
    expired = rules_only(tmp_path, [TEST_PROBE], name="expired",
                         allow=[(sha256_file(bench["clean"]), "old review", today - dt.timedelta(days=1))])
    cases = [
        ("pass", [str(bench["clean"]), "--rules", str(rules)], 0),
        ("findings", [str(bench["rigged"]), "--rules", str(rules)], 1),
        ("error (truncated safetensors)", [str(bench["trunc"]), "--rules", str(rules)], 2),
        ("unsupported", [str(bench["garbage"]), "--rules", str(rules)], 3),
        ("refused pickle", [str(bench["evil"]), "--rules", str(rules)], 3),
        ("allowlisted", [str(bench["rigged"]), "--rules", str(allow)], 0),
        ("expired allowlist", [str(bench["clean"]), "--rules", str(expired)], 1),
        ("directory with one bad file", [str(bench["onebad"]), "--rules", str(rules)], 3),
        ("whole bench directory", [str(d), "--rules", str(rules)], 1),
    ]
    seen = {}
    for label, argv, want in cases:
        js = tmp_path / f"{label.split()[0]}.json"
        code, out, err = run(["scan", *argv, "--json", str(js), "-q"], capsys)
        assert code == want, f"{label}: exit {code}, want {want}; stderr: {err}"
        assert "Traceback" not in err and "verdict:" in out
        seen[label.split()[0]] = json.loads(js.read_text())
    assert not bench["canary"].exists()
    from jsonschema import Draft202012Validator

    from teacher_audit.report.schema import published

    for key, doc in seen.items():   # real scan output validates against the published schemas
        schema = published("scanset.schema.json" if "reports" in doc else "report.schema.json")
        assert not list(Draft202012Validator(schema).iter_errors(doc)), key

    rep = seen["findings"]
    probe = [p for p in rep["probes"] if p["probe"] == TEST_PROBE][0]
    assert probe["flagged"] and probe["target_class"] == 0 and rep["verdict"]["status"] == "fail"
    assert [p["probe"] for p in seen["pass"]["probes"]] == [TEST_PROBE]  # every other probe disabled by rules
    assert seen["pass"]["input"]["format"] == "safetensors" and seen["pass"]["architecture"]["name"] == "smallcnn"
    assert seen["pass"]["input_spec"]["channels"] == 1 and seen["pass"]["seeds"]["scan"] == 0
    assert seen["error"]["error"] and seen["error"]["verdict"]["status"] == "error"
    assert seen["unsupported"]["verdict"]["status"] == "not_auditable"
    refused = seen["refused"]
    assert any("system" in g for g in refused["refused_globals"]), refused["refused_globals"]
    assert refused["input"]["sha256"] == sha256_file(bench["evil"])
    assert seen["allowlisted"]["verdict"]["waived"] and "reviewed: synthetic" in seen["allowlisted"]["verdict"]["reasons"][0]
    assert "expired" in seen["expired"]["verdict"]["reasons"][0]
    one = seen["directory"]
    assert [r["verdict"]["status"] for r in one["reports"]] == ["not_auditable", "pass"]  # bad.bin, good.safetensors
    dset = seen["whole"]
    assert {Path(r["input"]["path"]).name for r in dset["reports"]} == {
        "clean.safetensors", "rigged.safetensors", "truncated.safetensors", "garbage.bin", "evil.pt",
        "good.safetensors", "bad.bin"}
    assert dset["verdict"]["status"] == "fail"  # worst wins: the rigged teacher's finding


def test_directory_one_bad_file_and_parallel_jobs(bench, tmp_path, capsys):
    d = tmp_path / "models"
    d.mkdir()
    make_teacher_file(d, "ok.safetensors")
    (d / "notes.txt").write_text("ignored: not a model suffix")
    rules = rules_only(tmp_path, [TEST_PROBE])
    code, out, _ = run(["scan", str(d), "--rules", str(rules), "-q", "--json", str(tmp_path / "d.json")], capsys)
    assert code == 0 and "PASS" in out
    assert [Path(r["input"]["path"]).name for r in json.loads((tmp_path / "d.json").read_text())["reports"]] == [
        "ok.safetensors"]
    (d / "broken.pt").write_bytes(b"PK\x03\x04 not really a zip")
    code, out, _ = run(["scan", str(d), "--rules", str(rules), "-q", "--sarif", str(tmp_path / "all.sarif")], capsys)
    assert code != 0 and "broken" in out
    sarif = json.loads((tmp_path / "all.sarif").read_text())
    assert len(sarif["runs"][0]["artifacts"]) == 2 and sarif["runs"][0]["invocations"][0]["exitCode"] == code
    import jsonschema

    official = json.loads((Path(__file__).parent / "data" / "sarif-schema-2.1.0.json").read_text())
    jsonschema.Draft4Validator(official).validate(sarif)     # intake-failure results validate too
    assert {r["ruleId"] for r in sarif["runs"][0]["results"]} >= {f"probe/{TEST_PROBE}"}
    assert any(r["ruleId"].startswith("intake/") and r["level"] == "error" for r in sarif["runs"][0]["results"])
    # --jobs 2: spawned worker processes (intake failures need no probe), one exit code, worst wins
    code, out, _ = run(["scan", str(bench["trunc"]), str(bench["garbage"]), "--jobs", "2", "-q",
                        "--json", str(tmp_path / "set.json")], capsys)
    data = json.loads((tmp_path / "set.json").read_text())
    assert code == 2 and [r["verdict"]["exit_code"] for r in data["reports"]] == [2, 3]


def test_no_probe_or_uncovered_threat_is_never_a_pass(bench, tmp_path, capsys):
    none = rules_only(tmp_path, [], name="none")
    code, out, _ = run(["scan", str(bench["clean"]), "--rules", str(none), "-q"], capsys)
    assert code == 3 and "nothing was audited" in out.replace("\n", " ")
    both = rules_only(tmp_path, [TEST_PROBE], name="both", threats=["backdoor", "ntl"])
    code, out, _ = run(["scan", str(bench["clean"]), "--rules", str(both), "-q"], capsys)
    assert code == 3
    budget = rules_only(tmp_path, [TEST_PROBE], name="budget")
    code, _, _ = run(["scan", str(bench["clean"]), "--rules", str(budget), "--budget-seconds", "0", "-q"], capsys)
    assert code == 3


def test_usage_errors(bench, tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[policy]\nname="x"\nfail_levle="high"\n')
    for argv in (["scan", str(bench["clean"]), "--rules", str(bad)],
                 ["scan", str(tmp_path / "missing.pt")],
                 ["scan", str(tmp_path / "*.nothing")],
                 ["scan", str(bench["clean"]), str(bench["rigged"]), "--html", str(tmp_path / "x.html")],
                 ["scan", str(bench["clean"]), "--input-size", "banana"]):
        code, _, err = run(argv, capsys)
        assert code == 4, (argv, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    typo = tmp_path / "typo.toml"
    typo.write_text('[policy]\nname="x"\n[probes.no_such_probe]\nenabled=true\n')
    code, _, err = run(["scan", str(bench["clean"]), "--rules", str(typo)], capsys)
    assert code == 4 and "unknown probe(s) no_such_probe" in err


def test_policy_extra_pickle_globals_reach_intake(tmp_path, capsys):
    """[pickle] extra_allowed_globals widens intake's allowlist (and is recorded); without it: refused."""
    import datetime as _d

    from safetensors.torch import load_file

    src = make_teacher_file(tmp_path, "t.safetensors")
    ckpt = tmp_path / "with_date.pt"
    torch.save({"state_dict": load_file(str(src)), "saved": _d.date(2020, 1, 1)}, ckpt)
    Path(str(ckpt) + ".card.json").write_text(Path(str(src) + ".card.json").read_text())
    strict = rules_only(tmp_path, [TEST_PROBE], name="strict")
    code, _, _ = run(["scan", str(ckpt), "--rules", str(strict), "-q", "--json", str(tmp_path / "a.json")], capsys)
    assert code == 3 and "datetime.date" in json.loads((tmp_path / "a.json").read_text())["refused_globals"]
    widened = rules_only(tmp_path, [TEST_PROBE], name="widened")
    widened.write_text(widened.read_text() + '\n[pickle]\nextra_allowed_globals = ["datetime.date", "_codecs.encode"]\n')
    code, _, err = run(["scan", str(ckpt), "--rules", str(widened), "-q", "--json", str(tmp_path / "b.json")], capsys)
    rep = json.loads((tmp_path / "b.json").read_text())
    assert code == 0, err
    assert rep["policy"]["extra_allowed_globals"] == ["datetime.date", "_codecs.encode"]
    assert "datetime.date" in rep["intake"]["pickle"]["globals_found"]


def test_per_probe_overrides_from_rules(bench, tmp_path):
    """threshold / severity / options from [probes.<name>] reach the probe and the verdict."""
    from teacher_audit.errors import UsageError
    from teacher_audit.scan import ScanOptions, scan_file

    def rules_with(extra: str, name: str) -> str:
        path = rules_only(tmp_path, [TEST_PROBE], name=name)
        text = path.read_text().replace(f"[probes.{TEST_PROBE}]\nenabled = true\n",
                                        f"[probes.{TEST_PROBE}]\nenabled = true\n{extra}\n")
        path.write_text(text)
        return str(path)

    base = scan_file(bench["rigged"], ScanOptions(rules=rules_with("", "base")))
    assert base.verdict.status == "fail" and base.probes[0].threshold == 50.0
    high_thr = scan_file(bench["rigged"], ScanOptions(rules=rules_with("threshold = 1e9", "thr")))
    assert high_thr.probes[0].threshold == 1e9 and not high_thr.probes[0].flagged and high_thr.verdict.status == "pass"
    sev = scan_file(bench["rigged"], ScanOptions(rules=rules_with('severity = "medium"\noptions = { n = 4 }', "sev")))
    assert sev.probes[0].flagged and sev.probes[0].severity.value == "medium"
    assert sev.verdict.status == "pass" and "below fail level" in sev.verdict.reasons[0]
    assert sev.probes[0].budget.teacher_passes == 4                      # options.n reached the Config
    with pytest.raises(UsageError, match="has no option 'nope'"):
        scan_file(bench["rigged"], ScanOptions(rules=rules_with("options = { nope = 1 }", "bad")))
