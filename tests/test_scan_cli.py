"""`teacher-audit scan` end to end with hostile names: every writer and the terminal stay inert;
--out-dir layout; the library API returns the same report the CLI writes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from report_kit import HOSTILE, TEST_PROBE, make_teacher_file, register_test_probe, rules_only, unregister_test_probe
from teacher_audit.cli import main
from teacher_audit.report.model import Report
from teacher_audit.scan import ScanOptions, scan_file

# a file name may hold anything but "/" and NUL
HOSTILE_NAME = HOSTILE.replace("/", "_") + ".safetensors"


@pytest.fixture(scope="module", autouse=True)
def _probe():
    register_test_probe()
    yield
    unregister_test_probe()


def _inert(text: str, fmt: str) -> None:
    assert "\x1b" not in text and "\u202e" not in text, fmt
    if fmt in ("md", "html"):  # in a terminal, tags are inert text; control characters are the threat
        assert "<script>" not in text and "<img src=x" not in text, fmt
    if fmt == "md":
        assert "](http" not in text and "@admin" not in text, fmt


def test_hostile_names_end_to_end(tmp_path, capsys):
    models = tmp_path / "models"
    models.mkdir()
    make_teacher_file(models, HOSTILE_NAME, rigged=True, class_names=[HOSTILE[:200]] + [f"c{i}" for i in range(9)])
    # a raw pickle whose GLOBAL names are hostile (refused by intake before anything runs)
    evil = models / "evil.pkl"
    evil.write_bytes(b"\x80\x02c" + b"<b>os</b>[x](http://e)\x1b[31m\nsystem\n" + b"X\x02\x00\x00\x00id\x85R.")
    rules = rules_only(tmp_path, [TEST_PROBE])
    out_dir = tmp_path / "out"
    with pytest.raises(SystemExit) as ei:
        main(["scan", str(models), "--rules", str(rules), "--out-dir", str(out_dir), "--md", str(tmp_path / "all.md"),
              "--sarif", str(tmp_path / "all.sarif"), "--json", str(tmp_path / "all.json")])
    cap = capsys.readouterr()
    assert ei.value.code == 1                      # the rigged teacher's finding wins over the refused pickle
    _inert(cap.out, "stdout")
    _inert(cap.err, "stdout")
    files = sorted(p.name for p in out_dir.iterdir())
    assert len(files) == 8 and all(re.fullmatch(r"00[01]-[A-Za-z0-9._-]+\.(json|md|html|sarif)", f) for f in files)
    for p in [*out_dir.iterdir(), tmp_path / "all.md", tmp_path / "all.sarif", tmp_path / "all.json"]:
        fmt = p.suffix.lstrip(".")
        _inert(p.read_text(), fmt)
    data = json.loads((tmp_path / "all.json").read_text())
    by_name = {Path(r["input"]["path"]).name: r for r in data["reports"]}
    assert set(by_name) == {HOSTILE_NAME, "evil.pkl"}          # exact strings survive as data
    assert by_name["evil.pkl"]["refused_globals"] == ["<b>os</b>[x](http://e)\x1b[31m.system"]
    assert by_name[HOSTILE_NAME]["input_spec"]["class_names"][0] == HOSTILE[:200]
    html = next(out_dir.glob("*.html")).read_text()
    assert "&lt;script&gt;" in html


def test_library_api_matches_cli_and_records_everything(tmp_path):
    teacher = make_teacher_file(tmp_path, "t.safetensors")
    rules = rules_only(tmp_path, [TEST_PROBE])
    rep = scan_file(teacher, ScanOptions(rules=str(rules), seed=7))
    assert isinstance(rep, Report) and rep.verdict.status == "pass" and rep.verdict.exit_code == 0
    assert rep.seeds == {"scan": 7, TEST_PROBE: 7} and rep.probes[0].seed == 7
    assert rep.policy.source == str(rules) and len(rep.policy.sha256) == 64
    assert TEST_PROBE not in rep.policy.disabled_probes and rep.budget.teacher_passes > 0
    assert rep.timings.total_seconds >= rep.timings.probes_seconds > 0 and TEST_PROBE in rep.timings.per_probe
    assert rep.versions.torch and rep.versions.python and rep.input.size == teacher.stat().st_size
    assert rep.intake is not None and rep.intake.format == "safetensors"


def test_subprocess_streams(tmp_path):
    """Real process: summary on stdout, progress on stderr, one-line error, no traceback."""
    garbage = tmp_path / "x.pt"
    garbage.write_bytes(b"\x00garbage" * 10)
    proc = subprocess.run([sys.executable, "-m", "teacher_audit", "scan", str(garbage), "--md", str(tmp_path / "r.md")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3 and "NOT AUDITABLE" in proc.stdout and "Traceback" not in proc.stderr
    assert "scanning" in proc.stderr and "wrote" in proc.stderr and "scanning" not in proc.stdout
    assert (tmp_path / "r.md").read_text().startswith("### teacher-audit: **NOT AUDITABLE** (exit 3)")


def test_ci_examples(tmp_path):
    """The workflow parses and scans with '--'; the pre-commit hook refuses a non-auditable checkpoint."""
    import os
    import shutil

    import yaml

    root = Path(__file__).resolve().parents[1]
    wf = yaml.safe_load((root / "examples/ci/teacher-audit.yml").read_text())
    steps = wf["jobs"]["audit"]["steps"]
    run = "\n".join(s.get("run", "") for s in steps)
    assert "teacher-audit scan" in run and '-- "${files[@]}"' in run and "--sarif" in run
    assert 'git show "$base:rules/teacher-audit.toml"' in run  # policy from the base commit
    assert any(s.get("uses", "").startswith("github/codeql-action/upload-sarif") for s in steps)

    hook = root / "examples/ci/pre-commit-hook.sh"
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=300)

    git("init", "-q")
    shutil.copy(hook, repo / ".git/hooks/pre-commit")
    (repo / "README").write_text("no model here")
    git("add", "README")
    assert git("commit", "-q", "-m", "docs").returncode == 0          # no checkpoint: hook passes
    (repo / "-tricky name.pt").write_bytes(b"\x00not a checkpoint" * 8)
    git("add", "--", "-tricky name.pt")
    res = git("commit", "-q", "-m", "model")
    assert res.returncode != 0 and "could not be audited" in res.stderr
    assert "Traceback" not in res.stderr


def test_report_to_stdout_with_dash(tmp_path, capsys):
    """``--json -`` puts exactly the JSON report on stdout (summary moves to stderr); two '-' is a usage error."""
    teacher = make_teacher_file(tmp_path, "t.safetensors")
    rules = rules_only(tmp_path, [TEST_PROBE])
    with pytest.raises(SystemExit) as ei:
        main(["scan", str(teacher), "--rules", str(rules), "--json", "-", "--quiet"])
    cap = capsys.readouterr()
    assert ei.value.code == 0, cap.err
    doc = json.loads(cap.out)
    assert doc["verdict"]["exit_code"] == 0 and not Path("-").exists()
    with pytest.raises(SystemExit) as ei:
        main(["scan", str(teacher), "--json", "-", "--md", "-"])
    assert ei.value.code == 4 and "standard output" in capsys.readouterr().err
