"""Defense registry: a defense is a factory of engine hooks.

``DEFENSES.get(name)(teacher, engine, **options) -> list[Hook]``; ``distill --defense NAME`` and the
benchmarks pass the returned hooks to :meth:`teacher_audit.synth.Engine.run`. A defense must not
copy the loop: it adds generator-loss terms, replaces the student loss or observes batches.

Registered here: ``none`` (plain DFKD). ``abd`` (Hong et al., ICML 2023) and ``atesc`` (Hong et al.,
ICML 2025) register themselves from their own modules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from teacher_audit.registry import Registry
from teacher_audit.synth.hooks import Hook

DefenseFactory = Callable[..., list[Hook]]
DEFENSES: Registry[DefenseFactory] = Registry("defense")


@DEFENSES.register("none", summary="plain data-free KD, no defense")
def no_defense(teacher: Any, engine: Any, **options: Any) -> list[Hook]:
    """No hooks: the preset's loop as is. Unknown options are refused."""
    if options:
        from teacher_audit.errors import UsageError

        raise UsageError(f"defense 'none' takes no options, got: {', '.join(sorted(options))}")
    return []

