"""Synthesis engine: generator, composable DFKD loss terms, presets, hooks and the budgeted loop.

Public API (the contract other modules code against)::

    from teacher_audit.synth import Engine, EngineConfig, Hook, BatchContext, PRESETS
    engine = Engine(teacher, PRESETS.get("dfq")(), student=None, device="auto", seed=0)
    x = engine.synthesize(256)                      # teacher-driven synthetic samples (raw range)
    result = engine.run(budget_passes=50_000, hooks=[...])
"""

from teacher_audit.synth.config import PRESETS, EngineConfig
from teacher_audit.synth.engine import Engine, RunResult
from teacher_audit.synth.generator import Generator
from teacher_audit.synth.hooks import BatchContext, Hook
from teacher_audit.synth.losses import LOSS_TERMS, kd_loss

__all__ = ["Engine", "EngineConfig", "Hook", "BatchContext", "PRESETS", "RunResult", "Generator",
           "LOSS_TERMS", "kd_loss"]
