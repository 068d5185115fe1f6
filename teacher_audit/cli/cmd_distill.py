"""`teacher-audit distill` (not built yet: its issue has not landed)."""

from __future__ import annotations

from teacher_audit.cli.app import app, guarded
from teacher_audit.errors import NotAuditable


@app.command("distill", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@guarded
def distill() -> None:
    """Not built yet."""
    raise NotAuditable("'distill' is not built yet")
