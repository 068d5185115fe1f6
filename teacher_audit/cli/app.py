"""The typer app and the single place where outcomes become exit codes."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from teacher_audit.atomic import atomic_write_text
from teacher_audit.exitcodes import ExitCode, exit_code_for

app = typer.Typer(
    name="teacher-audit",
    help="Audit an untrusted image-classifier checkpoint before data-free distillation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: human output (summaries) goes to stdout; logs, errors and progress go to stderr.
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

F = TypeVar("F", bound=Callable[..., Any])


def is_stdout(path: object) -> bool:
    """True for the conventional ``-`` file argument, meaning standard output."""
    return path is not None and str(path) == "-"


def write_or_stdout(target: Any, text: str) -> bool:
    """Write ``text`` atomically to ``target``, or to standard output for ``-``; True when a file was written."""
    if is_stdout(target):
        sys.stdout.write(text)
        sys.stdout.flush()
        return False
    atomic_write_text(target, text)
    return True


def one_line(exc: BaseException) -> str:
    """A one-line, control-character-free rendering of an exception message."""
    text = str(exc) or exc.__class__.__name__
    text = " ".join(text.split())
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def guarded(fn: F) -> F:
    """Wrap a command: its return value (an ExitCode or verdict) and any exception become the exit code.

    Errors print one line to stderr, never a traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            outcome = fn(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            err.print("teacher-audit: interrupted", markup=False)
            raise typer.Exit(int(ExitCode.ERROR)) from None
        except MemoryError:
            err.print("teacher-audit: error: out of memory", markup=False)
            raise typer.Exit(int(ExitCode.ERROR)) from None
        except Exception as exc:  # noqa: BLE001 - every failure becomes one line + exit code
            code = exit_code_for(exc)
            err.print(f"teacher-audit: {code.name.lower().replace('_', ' ')}: {one_line(exc)}", markup=False, soft_wrap=True)
            raise typer.Exit(int(code)) from None
        raise typer.Exit(int(exit_code_for(outcome if outcome is not None else ExitCode.PASS)))

    return wrapper  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point; usage errors exit with USAGE (4), not the parser's default 2."""
    from teacher_audit.cli import commands  # noqa: F401  (registers every command)

    try:
        rv = app(args=argv, standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("teacher-audit: interrupted", markup=False)
        sys.exit(int(ExitCode.ERROR))
    except typer.TyperException as exc:
        msg = exc.format_message()
        if msg:
            err.print(f"teacher-audit: usage: {one_line(Exception(msg))}", markup=False, soft_wrap=True)
        sys.exit(int(ExitCode.USAGE))
    sys.exit(rv if isinstance(rv, int) else int(ExitCode.PASS))
