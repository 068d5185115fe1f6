"""Recipe files (TOML) and recipe selection by name or pattern.

A recipe file lists teachers as ``[[teacher]]`` tables whose keys are
:class:`~teacher_audit.zoo.recipes.RecipeConfig` fields, e.g.::

    [[teacher]]
    name = "clean_smallcnn"
    kind = "clean"
    arch = "smallcnn"
    epochs = 1.0

    [[teacher]]
    name = "backdoor_badnets_smallcnn"
    kind = "backdoor"
    warm_start = "clean_smallcnn"
    steps = 200
    trigger = { name = "badnets_square", size = 4 }
"""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

from teacher_audit.errors import UsageError
from teacher_audit.zoo.recipes import RecipeConfig


def load_recipe_file(path: str | Path) -> dict[str, RecipeConfig]:
    """Parse a TOML recipe file into ``name -> RecipeConfig`` (file order kept).

    Raises:
        UsageError: unreadable file, bad TOML, unknown keys/kinds, duplicate names (one line).
    """
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read recipe file {p}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"recipe file {p} is not valid TOML: {exc}") from None
    entries = doc.get("teacher")
    if not isinstance(entries, list) or not entries:
        raise UsageError(f"recipe file {p} has no [[teacher]] tables")
    out: dict[str, RecipeConfig] = {}
    for e in entries:
        if not isinstance(e, dict):
            raise UsageError(f"recipe file {p}: every [[teacher]] must be a table")
        cfg = RecipeConfig.from_dict(dict(e))
        if cfg.name in out:
            raise UsageError(f"recipe file {p}: duplicate teacher name {cfg.name!r}")
        out[cfg.name] = cfg
    return out


def select(table: dict[str, RecipeConfig], patterns: list[str]) -> list[RecipeConfig]:
    """Configs whose names match any of ``patterns`` (exact names, shell globs, or ``all``), table order.

    Raises:
        UsageError: a pattern matches nothing.
    """
    if not patterns or "all" in patterns:
        return list(table.values())
    chosen: dict[str, RecipeConfig] = {}
    for pat in patterns:
        hits = [n for n in table if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            raise UsageError(f"no recipe matches {pat!r}; see 'teacher-audit zoo list'")
        for n in hits:
            chosen[n] = table[n]
    return [table[n] for n in table if n in chosen]
