"""HTML writer: ONE self-contained file (jinja2, autoescape on).

- Evidence PNGs are inlined as ``data:image/png;base64`` URIs; nothing else is referenced.
- A Content-Security-Policy meta tag forbids every network fetch and every script
  (``default-src 'none'; img-src data:; style-src 'unsafe-inline'``), so even a rendering bug cannot
  make the page call out.
- Every dynamic string goes through autoescape plus ``sanitize.clean`` (control characters shown).
"""

from __future__ import annotations

import base64
from importlib import resources

from jinja2 import Environment, StrictUndefined, select_autoescape
from markupsafe import Markup

from teacher_audit.report.model import Report, ScanSet
from teacher_audit.report.sanitize import clean
from teacher_audit.report.view import (VERDICT_LABEL, fmt_num, fmt_size, probe_state, spec_line, target_label,
                                       thresholds_line)
from teacher_audit.report.writers import WRITERS

CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; "
       "form-action 'none'; frame-ancestors 'none'")


def _data_uri(png: bytes | None) -> str:
    if not png or not png.startswith(b"\x89PNG\r\n\x1a\n"):
        return ""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _value(v: object, limit: int = 300) -> str:
    """A table cell: floats with 6 significant digits, everything else as clean text."""
    if isinstance(v, float):
        return fmt_num(v, 6)
    return clean(v, limit)


def _env() -> Environment:
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(clean=clean, num=fmt_num, size=fmt_size, data_uri=_data_uri, val=_value)
    env.globals.update(VERDICT_LABEL=VERDICT_LABEL, probe_state=probe_state, spec_line=spec_line,
                       target_label=target_label, thresholds_line=thresholds_line,
                       CSP=Markup(CSP))  # CSP: our constant, kept literal
    return env


def _template_text() -> str:
    return resources.files("teacher_audit.report").joinpath("templates", "report.html.j2").read_text("utf-8")


@WRITERS.register("html")
class HtmlWriter:
    suffix = ".html"

    def render(self, doc: Report | ScanSet) -> str:
        reports = list(doc.reports) if isinstance(doc, ScanSet) else [doc]
        tmpl = _env().from_string(_template_text())
        return tmpl.render(doc=doc, reports=reports, overall=doc.verdict, many=isinstance(doc, ScanSet))
