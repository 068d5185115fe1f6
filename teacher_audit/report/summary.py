"""Human summary on stdout (rich): one table row per file, and the probe table for a single file.

Every string is passed through ``sanitize.clean`` and rendered as plain ``rich.text.Text`` (no
console markup), so ANSI escapes or ``[bold]`` in file names print as inert text.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from teacher_audit.report.model import Report, ScanSet
from teacher_audit.report.sanitize import clean
from teacher_audit.report.view import VERDICT_LABEL, fmt_num, probe_state, target_label

_STYLE = {"pass": "bold green", "fail": "bold red", "error": "bold yellow", "not_auditable": "bold magenta"}


def _t(value: object, limit: int = 200, style: str = "") -> Text:
    return Text(clean(value, limit), style=style)


def print_summary(console: Console, doc: Report | ScanSet) -> None:
    """Print the summary of one report or of a scan set to ``console``."""
    reports = list(doc.reports) if isinstance(doc, ScanSet) else [doc]
    table = Table(title="teacher-audit scan", show_lines=False)
    table.add_column("file", overflow="fold")
    table.add_column("verdict", no_wrap=True)
    table.add_column("findings")
    table.add_column("reason", overflow="fold")
    for rep in reports:
        n = sum(1 for r in rep.probes if r.status == "ok" and r.flagged)
        reason = rep.verdict.reasons[0] if rep.verdict.reasons else ""
        table.add_row(_t(rep.input.path, 80), Text(VERDICT_LABEL[rep.verdict.status], style=_STYLE[rep.verdict.status]),
                      Text(str(n)), _t(reason, 120))
    console.print(table)
    if len(reports) == 1 and reports[0].probes:  # one file: its probes too
        pt = Table(title="probes")
        for col in ("probe", "threat", "result", "score", "threshold", "severity", "target", "time"):
            pt.add_column(col)
        for r in reports[0].probes:
            pt.add_row(_t(r.probe), _t(r.threat), Text(probe_state(r), style="red" if r.flagged else ""),
                       Text(fmt_num(r.score)), Text(fmt_num(r.threshold)), _t(r.severity.value),
                       _t(target_label(reports[0], r), 40), Text(f"{r.budget.seconds:.1f} s"))
        console.print(pt)
    v = doc.verdict
    line = Text("verdict: ")
    line.append(VERDICT_LABEL[v.status], style=_STYLE[v.status])
    line.append(f" (exit {v.exit_code})")
    console.print(line)
    for reason in v.reasons[:10]:
        console.print(_t(f"  - {reason}", 300))
