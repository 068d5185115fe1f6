"""Exception hierarchy; each class carries the exit code it maps to (see ``exitcodes``)."""

from __future__ import annotations

from teacher_audit.exitcodes import ExitCode


class AuditError(Exception):
    """An error while auditing (corrupt file, out of memory, ...). Message is one line."""

    exit_code: ExitCode = ExitCode.ERROR


class CorruptInput(AuditError):
    """The file claims a known format but cannot be read (truncated, inconsistent header...)."""


class NotAuditable(AuditError):
    """Nothing auditable: unsupported format, refused pickle, unknown architecture."""

    exit_code = ExitCode.NOT_AUDITABLE


class UnsupportedFormat(NotAuditable):
    """The content matches no supported checkpoint format."""


class RefusedPickle(NotAuditable):
    """The static pickle scan found globals outside the allowlist; nothing was unpickled."""

    def __init__(self, message: str, refused: list[str]):
        super().__init__(message)
        self.refused = list(refused)


class UnknownArchitecture(NotAuditable):
    """No registered architecture fits the weights."""


class TrustRequired(NotAuditable):
    """The file is code (e.g. TorchScript) and was not loaded without an explicit trust flag."""


class UsageError(AuditError):
    """Bad command-line usage or bad option values."""

    exit_code = ExitCode.USAGE
