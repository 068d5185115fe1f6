"""JSON writer: the report model itself (schema: ``report/schemas/report.schema.json``).

Evidence PNG bytes are base64 (URL-safe alphabet, pydantic's ``ser_json_bytes="base64"``).
Strict JSON (non-finite numbers become ``null``). Output is pure ASCII: control characters and every non-ASCII character (including bidi overrides)
are ``\\uXXXX`` escapes, so hostile names stay data even when the file is printed in a terminal.
"""

from __future__ import annotations

import json

from teacher_audit.report.coerce import finite
from teacher_audit.report.model import Report, ScanSet
from teacher_audit.report.writers import WRITERS


@WRITERS.register("json")
class JsonWriter:
    suffix = ".json"

    def render(self, doc: Report | ScanSet) -> str:
        return json.dumps(finite(doc.model_dump(mode="json")), indent=2, ensure_ascii=True, allow_nan=False) + "\n"
