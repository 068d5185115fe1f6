"""The checked-in JSON schemas are exactly what the pydantic models generate."""

from __future__ import annotations

from pathlib import Path

from teacher_audit.report.schema import SCHEMA_FILES, render

SCHEMAS = Path(__file__).resolve().parents[1] / "teacher_audit" / "report" / "schemas"


def test_published_schemas_are_current():
    for fname, model in SCHEMA_FILES.items():
        current = (SCHEMAS / fname).read_text()
        assert current == render(model), f"{fname} is stale: run python -m teacher_audit.report.schema"
