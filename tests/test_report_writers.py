"""Writers: SARIF vs the official 2.1.0 schema + sarif-tools, JSON vs the published schema,
Markdown/HTML/terminal/SARIF inert for hostile strings, plots are real PNGs, atomic writes."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import jsonschema
import pytest
from rich.console import Console

from report_kit import HOSTILE, HOSTILE_MARKERS, sample_report
from teacher_audit.report.model import Report, ScanSet, Verdict
from teacher_audit.report.plots import histogram_png, image_grid_png, trigger_png
from teacher_audit.report.schema import published
from teacher_audit.report.summary import print_summary
from teacher_audit.report.writers import WRITERS, render, write_report

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def reports() -> dict[str, Report]:
    return {"plain": sample_report(), "hostile": sample_report(hostile=True),
            "pass": sample_report(verdict="pass")}


def scanset(*reps: Report) -> ScanSet:
    from teacher_audit.policy import combine

    return ScanSet(verdict=combine([r.verdict for r in reps]), reports=list(reps))


def test_writer_registry():
    assert WRITERS.names() == ["html", "json", "md", "sarif"]


def test_sarif_validates_against_official_schema_and_sarif_tools_reads_it(reports, tmp_path):
    schema = json.loads((DATA / "sarif-schema-2.1.0.json").read_text())
    assert schema["id"].endswith("sarif-schema-2.1.0.json")
    validator = jsonschema.Draft4Validator(schema, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)
    doc = scanset(reports["plain"], reports["hostile"], reports["pass"])
    for obj in (reports["plain"], reports["hostile"], doc):
        log = json.loads(render("sarif", obj))
        errors = sorted(validator.iter_errors(log), key=lambda e: list(e.path))
        assert not errors, [f"{list(e.path)}: {e.message}" for e in errors[:5]]
    log = json.loads(render("sarif", reports["plain"]))
    run = log["runs"][0]
    rule_ids = [r["id"] for r in run["tool"]["driver"]["rules"]]
    assert len(rule_ids) == len(set(rule_ids)) and "probe/backdoor_fused" in rule_ids
    fail = [x for x in run["results"] if x["kind"] == "fail"]
    assert [x["level"] for x in fail] == ["error"] and fail[0]["ruleId"] == "probe/backdoor_fused"
    assert run["artifacts"][0]["hashes"]["sha-256"] == "ab" * 32
    assert fail[0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "models/teacher.pt"

    from sarif.loader import load_sarif_file

    write_report("sarif", doc, tmp_path / "all.sarif")
    sf = load_sarif_file(str(tmp_path / "all.sarif"))
    assert sf.get_distinct_tool_names() == ["teacher-audit"]
    assert sf.get_result_count() == len(json.loads((tmp_path / "all.sarif").read_text())["runs"][0]["results"])
    assert any(rec.get("Severity") == "error" for rec in sf.get_records())


def test_json_validates_against_published_schema_and_round_trips(reports):
    for name, model in (("report.schema.json", None), ("scanset.schema.json", None)):
        jsonschema.Draft202012Validator.check_schema(published(name))
    v = jsonschema.Draft202012Validator(published("report.schema.json"))
    for rep in reports.values():
        text = render("json", rep)
        data = json.loads(text)
        errors = list(v.iter_errors(data))
        assert not errors, errors[0].message
        back = Report.model_validate_json(text)
        assert back == rep                                  # PNG bytes survive the base64 trip
    vs = jsonschema.Draft202012Validator(published("scanset.schema.json"))
    assert not list(vs.iter_errors(json.loads(render("json", scanset(*reports.values())))))
    # the schema really constrains: an unknown field or a bad verdict is rejected
    data = json.loads(render("json", reports["plain"]))
    data["surprise"] = 1
    assert list(v.iter_errors(data))
    data = json.loads(render("json", reports["plain"]))
    data["verdict"]["status"] = "maybe"
    assert list(v.iter_errors(data))


#: what must never appear raw, per format: control/bidi characters anywhere; HTML tags in HTML and
#: Markdown; Markdown links, table breaks and mentions in Markdown; embedded links in SARIF text.
_RAW = {
    "json": ["\x1b", "\u202e"],
    "sarif": ["\x1b", "\u202e"],
    "html": ["\x1b", "\u202e", "<script>", "<img src=x"],
    "md": HOSTILE_MARKERS,
}


def _assert_inert(text: str, fmt: str) -> None:
    for marker in _RAW[fmt]:
        assert marker not in text, f"{fmt}: raw {marker!r} in output"
    if fmt == "sarif":
        for res in json.loads(text)["runs"][0]["results"]:
            assert not re.search(r"(?<!\\)\]\(", res["message"]["text"]), res["message"]["text"]


def test_hostile_strings_inert_in_every_writer(reports):
    rep = reports["hostile"]
    for fmt in WRITERS.names():
        for doc in (rep, scanset(rep, reports["pass"])):
            text = render(fmt, doc)
            _assert_inert(text, fmt)
    md = render("md", rep)
    assert "&#60;script&#62;" in md and "&#91;click&#93;&#40;http&#58;" in md and "&#92;x1b&#91;31mRED" in md
    assert "&#64;admin" in md and "&#92;u202e" in md
    html = render("html", rep)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "\\x1b[31mRED" in html
    sarif = json.loads(render("sarif", rep))
    msgs = [r["message"]["text"] for r in sarif["runs"][0]["results"]]
    assert any("\\\\x1b\\[31mRED" in m for m in msgs) and any("\\[click\\](http" in m for m in msgs)
    assert all("markdown" not in r["message"] for r in sarif["runs"][0]["results"])
    uri = sarif["runs"][0]["artifacts"][0]["location"]["uri"]
    assert re.fullmatch(r"[A-Za-z0-9%/._~-]+", uri), uri
    # JSON keeps the exact string (it is data) but escapes control characters
    js = render("json", rep)
    assert "\x1b" not in js and json.loads(js)["input"]["path"] == f"models/teacher{HOSTILE}.pt"


def test_terminal_summary_inert(reports):
    buf = io.StringIO()
    con = Console(file=buf, force_terminal=True, color_system="truecolor", width=200)
    print_summary(con, reports["hostile"])
    out = buf.getvalue()
    assert "\x1b[31mRED" not in out and "\u202e" not in out and "\\x1b[31mRED" in out.replace("\n", "")
    buf2 = io.StringIO()
    print_summary(Console(file=buf2, width=200), scanset(reports["hostile"], reports["pass"]))
    assert "FAIL" in buf2.getvalue() and "\x1b" not in buf2.getvalue()


def test_markdown_concise_and_html_self_contained(reports):
    md = render("md", reports["plain"])
    assert md.startswith("### teacher-audit: **FAIL** (exit 1)") and len(md) < 3000
    assert "data:image" not in md
    html = render("html", reports["plain"])
    assert 'http-equiv="Content-Security-Policy"' in html and "default-src 'none'" in html
    srcs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<script" not in html and "<link" not in html and "url(" not in html
    # every image evidence is inline and decodes to the exact PNG bytes
    pngs = [e.png for p in reports["plain"].probes for e in p.evidence if e.kind == "image"]
    assert len(srcs) == len(pngs) == 3
    assert [base64.b64decode(s.split(",", 1)[1]) for s in srcs] == pngs


def test_plots_are_pngs():
    import torch

    for png in (image_grid_png(torch.rand(5, 3, 32, 32)), image_grid_png(torch.rand(4, 28, 28)),
                histogram_png([0.1, 0.2, float("nan"), 0.3], thresholds=[0.15]), histogram_png([]),
                histogram_png([1000.0001, 1000.0002, 1000.0]), histogram_png([0.0, 0.0]),
                histogram_png(None, groups={"robust": [1, 2], "fragile": [0.1]}),
                trigger_png(torch.randn(3, 8, 8)), trigger_png(torch.randn(8, 8), mask=torch.rand(1, 8, 8))):
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 500
    with pytest.raises(ValueError):
        image_grid_png(torch.rand(0, 1, 4, 4))


def test_atomic_write_leaves_no_partial_file(reports, tmp_path, monkeypatch):
    target = tmp_path / "r.html"
    write_report("html", reports["plain"], target)
    before = target.read_text()

    def boom(self, doc):  # noqa: ANN001
        raise KeyboardInterrupt

    from teacher_audit.report.writers import html as html_mod

    monkeypatch.setattr(html_mod.HtmlWriter, "render", boom)
    with pytest.raises(KeyboardInterrupt):
        write_report("html", reports["plain"], target)
    assert target.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["r.html"]


def test_verdict_labels_all_render(reports):
    for status, code in (("pass", 0), ("error", 2), ("not_auditable", 3)):
        rep = reports["plain"].model_copy(update={"verdict": Verdict(status=status, exit_code=code, reasons=["x"])})
        for fmt in WRITERS.names():
            assert render(fmt, rep)


def test_probe_output_coerced_to_strict_json(reports):
    import numpy as np
    import torch

    from teacher_audit.report.coerce import json_safe_result
    from teacher_audit.report.model import Evidence, ProbeResult

    raw = ProbeResult(probe="p", threat="ntl", score=float("nan"), threshold=float("inf"),
                      details={"a": np.float32(0.5), "arr": np.arange(3), "t": torch.tensor([1.0, float("nan")]),
                               "big": torch.zeros(10_000), "nested": {"x": (np.int64(2),)}},
                      evidence=[Evidence(name="v", kind="values", values={"k": np.float64(2.0)})])
    with pytest.raises(Exception):
        raw.model_dump(mode="json")                     # what a naive writer would hit
    safe = json_safe_result(raw)
    assert safe.details["arr"] == [0, 1, 2] and safe.details["t"] == [1.0, None] and safe.score is None
    assert safe.details["big"].startswith("<tensor shape (10000,)") and safe.details["nested"] == {"x": [2]}
    assert safe.details["score_non_finite"] == "nan" and safe.evidence[0].values == {"k": 2.0}
    rep = reports["plain"].model_copy(update={"probes": [safe, raw.model_copy(update={"details": {}})]})
    for fmt in ("json", "sarif"):
        text = render(fmt, rep)
        assert "NaN" not in text and "Infinity" not in text
        json.loads(text)
