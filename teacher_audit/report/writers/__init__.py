"""Report writers, one module per format, registered in ``WRITERS``.

A writer is a class with ``suffix`` and ``render(doc) -> str`` where ``doc`` is a ``Report`` or a
``ScanSet`` (several files). ``write_report(fmt, doc, path)`` renders and writes atomically.
"""

from __future__ import annotations

import os
from typing import Protocol

from teacher_audit.atomic import atomic_write_text
from teacher_audit.registry import Registry
from teacher_audit.report.model import Report, ScanSet


class Writer(Protocol):
    suffix: str

    def render(self, doc: Report | ScanSet) -> str: ...


WRITERS: Registry[type[Writer]] = Registry("report format")

from teacher_audit.report.writers import html, json_writer, markdown, sarif  # noqa: E402,F401


def render(fmt: str, doc: Report | ScanSet) -> str:
    """Render ``doc`` in format ``fmt`` (``json``, ``md``, ``html``, ``sarif``)."""
    return WRITERS.get(fmt)().render(doc)


def write_report(fmt: str, doc: Report | ScanSet, path: str | os.PathLike[str]) -> None:
    """Render and write atomically (temp file + rename: Ctrl-C leaves no half-written file)."""
    atomic_write_text(path, render(fmt, doc))


__all__ = ["WRITERS", "Writer", "render", "write_report"]
