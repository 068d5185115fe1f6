"""Markdown writer: a concise summary fit for a pull-request comment (GitHub-flavoured).

Every string that comes from the report goes through ``sanitize.md`` (punctuation as character
references), so file names, class names and pickle globals cannot inject links, HTML, tables or
mentions. Evidence images are not embedded (PR comments strip data: URIs); use ``--html`` for them.
"""

from __future__ import annotations

from teacher_audit.report.model import Report, ScanSet
from teacher_audit.report.sanitize import md
from teacher_audit.report.view import (VERDICT_LABEL, fmt_num, fmt_size, probe_state, reports_of, spec_line,
                                       target_label, thresholds_line)
from teacher_audit.report.writers import WRITERS


def _report_section(rep: Report, level: str = "###") -> list[str]:
    v = rep.verdict
    lines = [f"{level} teacher-audit: **{VERDICT_LABEL[v.status]}** (exit {v.exit_code}) for {md(rep.input.path)}", ""]
    for reason in v.reasons:
        lines.append(f"- {md(reason)}")
    for w in v.waived:
        lines.append(f"- waived by allowlist: {md(w)}")
    lines.append("")
    sha = rep.input.sha256 or "-"
    arch = rep.architecture.name or "-"
    lines += [
        "| file | format | size | sha256 | architecture | input |",
        "|---|---|---|---|---|---|",
        f"| {md(rep.input.path, 120)} | {md(rep.input.format or '-')} | {fmt_size(rep.input.size)} | "
        f"{md(sha[:16])} | {md(arch)} ({md(rep.architecture.source or '-')}) | {md(spec_line(rep))} |",
        "",
    ]
    if rep.error:
        lines += [f"**Intake:** {md(rep.error)}", ""]
    if rep.refused_globals:
        lines += ["**Refused pickle globals:** " + ", ".join(md(g, 200) for g in rep.refused_globals[:20]), ""]
    if rep.probes:
        lines += ["| probe | threat | result | score | threshold | severity | target | summary |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rep.probes:
            tgt = md(target_label(rep, r), 80)
            lines.append(f"| {md(r.probe)} | {md(r.threat)} | {md(probe_state(r))} | {fmt_num(r.score)} | "
                         f"{fmt_num(r.threshold)} | {md(r.severity.value)} | {tgt} | {md(r.summary, 200)} |")
        lines.append("")
    p = rep.policy
    lvl = p.fail_level.value if p.fail_level is not None else "none (report only)"
    lines.append(f"Policy {md(p.name)} ({md(p.source)}), fail level {md(lvl)}; "
                 f"{rep.timings.total_seconds:.1f} s, {rep.budget.teacher_passes} teacher passes; "
                 f"teacher-audit {md(rep.versions.tool)}.")
    lines.append(f"Thresholds: {md(thresholds_line(rep), 300)}.")
    lines.append("")
    return lines


@WRITERS.register("md")
class MarkdownWriter:
    suffix = ".md"

    def render(self, doc: Report | ScanSet) -> str:
        if isinstance(doc, Report):
            return "\n".join(_report_section(doc)).rstrip() + "\n"
        v = doc.verdict
        lines = [f"## teacher-audit: **{VERDICT_LABEL[v.status]}** (exit {v.exit_code})", ""]
        lines += [f"- {md(r)}" for r in v.reasons] + [""]
        lines += ["| file | verdict | findings | reason |", "|---|---|---|---|"]
        for rep in reports_of(doc):
            n = sum(1 for r in rep.probes if r.status == "ok" and r.flagged)
            first = rep.verdict.reasons[0] if rep.verdict.reasons else ""
            lines.append(f"| {md(rep.input.path, 120)} | {VERDICT_LABEL[rep.verdict.status]} | {n} | {md(first, 160)} |")
        lines.append("")
        for rep in reports_of(doc):
            if rep.verdict.status != "pass":
                lines += ["<details><summary>" + md(rep.input.path, 120) + "</summary>", ""]
                lines += _report_section(rep, "####")
                lines += ["</details>", ""]
        return "\n".join(lines).rstrip() + "\n"
