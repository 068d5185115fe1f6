"""The one table of process exit codes, and the one function that maps outcomes onto it."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of every ``teacher-audit`` command (documented in README)."""

    PASS = 0
    FINDINGS = 1
    ERROR = 2
    NOT_AUDITABLE = 3
    USAGE = 4


def exit_code_for(outcome: object) -> ExitCode:
    """Map an outcome (an exception, a verdict string or an ExitCode) to the exit code.

    Args:
        outcome: an ``AuditError`` (carries its own code), any other exception (an error while
            auditing), a verdict string ``"pass" | "fail" | "error" | "not_auditable"``, or an ExitCode.

    Returns:
        The exit code. Unknown verdicts map to ERROR so nothing unknown can read as a pass.
    """
    from teacher_audit.errors import AuditError

    if isinstance(outcome, ExitCode):
        return outcome
    if isinstance(outcome, AuditError):
        return outcome.exit_code
    if isinstance(outcome, KeyboardInterrupt):
        return ExitCode.ERROR
    if isinstance(outcome, BaseException):
        return ExitCode.ERROR
    verdicts = {
        "pass": ExitCode.PASS,
        "fail": ExitCode.FINDINGS,
        "error": ExitCode.ERROR,
        "not_auditable": ExitCode.NOT_AUDITABLE,
    }
    return verdicts.get(str(outcome), ExitCode.ERROR)
