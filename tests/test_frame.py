"""The project frame: exit-code table, severity order, registry behaviour, CLI usage errors."""

import subprocess
import sys

import pytest

from teacher_audit.errors import CorruptInput, NotAuditable, RefusedPickle, UsageError
from teacher_audit.exitcodes import ExitCode, exit_code_for
from teacher_audit.registry import Registry
from teacher_audit.severity import Severity


def test_exit_code_table():
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 4]
    assert exit_code_for(CorruptInput("x")) == ExitCode.ERROR
    assert exit_code_for(RefusedPickle("x", ["os.system"])) == ExitCode.NOT_AUDITABLE
    assert exit_code_for(NotAuditable("x")) == ExitCode.NOT_AUDITABLE
    assert exit_code_for(UsageError("x")) == ExitCode.USAGE
    assert exit_code_for(RuntimeError("x")) == ExitCode.ERROR
    assert exit_code_for("pass") == ExitCode.PASS
    assert exit_code_for("fail") == ExitCode.FINDINGS
    assert exit_code_for("something-unknown") == ExitCode.ERROR


def test_severity_order_and_sarif():
    assert Severity.INFO < Severity.LOW < Severity.MEDIUM < Severity.HIGH < Severity.CRITICAL
    assert max([Severity.LOW, Severity.CRITICAL, Severity.MEDIUM]) == Severity.CRITICAL
    assert Severity.HIGH.sarif_level == "error" and Severity.INFO.sarif_level == "note"


def test_registry_rejects_duplicates_and_unknown_names():
    reg: Registry[object] = Registry("thing")

    @reg.register("a", note=1)
    class A:
        pass

    assert reg.get("a") is A and reg.meta("a") == {"note": 1} and "a" in reg
    with pytest.raises(ValueError):
        reg.register("a")(A)
    with pytest.raises(UsageError, match="unknown thing 'b'; known: a"):
        reg.get("b")


def test_cli_usage_error_exit_code():
    proc = subprocess.run([sys.executable, "-m", "teacher_audit", "--no-such-flag"], capture_output=True, text=True)
    assert proc.returncode == 4
    assert "Traceback" not in proc.stderr
