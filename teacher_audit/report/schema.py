"""The published JSON schemas of the report, generated from the pydantic models.

``teacher_audit/report/schemas/report.schema.json`` (one file's ``--json``) and
``scanset.schema.json`` (``--json`` of a multi-file scan) are checked in; ``tests/test_report_schema.py``
fails when they are not current. Regenerate with ``python -m teacher_audit.report.schema``.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from teacher_audit.atomic import atomic_write_text
from teacher_audit.report.model import SCHEMA_VERSION, Report, ScanSet

SCHEMA_FILES = {"report.schema.json": Report, "scanset.schema.json": ScanSet}
_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def generate(model: type[Report] | type[ScanSet]) -> dict[str, Any]:
    """The JSON schema (draft 2020-12) of what the JSON writer emits for ``model``."""
    schema = model.model_json_schema(mode="serialization")
    name = "report" if model is Report else "scanset"
    return {"$schema": _DIALECT,
            "$id": f"https://teacher-audit.invalid/schemas/{name}-v{SCHEMA_VERSION}.schema.json", **schema}


def render(model: type[Report] | type[ScanSet]) -> str:
    return json.dumps(generate(model), indent=2, sort_keys=True) + "\n"


def published(name: str = "report.schema.json") -> dict[str, Any]:
    """The checked-in schema shipped with the package."""
    text = resources.files("teacher_audit.report").joinpath("schemas", name).read_text("utf-8")
    return json.loads(text)


def write_all(folder: str | Path | None = None) -> list[Path]:
    """(Re)generate every schema file into ``folder`` (default: the package's ``schemas/``)."""
    out = Path(folder) if folder else Path(__file__).parent / "schemas"
    written = []
    for fname, model in SCHEMA_FILES.items():
        atomic_write_text(out / fname, render(model))
        written.append(out / fname)
    return written


if __name__ == "__main__":
    for p in write_all():
        print(p)
