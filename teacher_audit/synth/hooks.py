"""Per-batch extension points of the synthesis engine (how defenses and probes plug in).

A :class:`Hook` can add a term to the generator loss (ABD's shuffling vaccine), replace the
student's loss (ATEsc's split of fragile/robust samples, ABD's self-retrospection) or only
observe batches (probes caching samples and statistics). One loop, no copies of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from teacher_audit.synth.engine import Engine

Phase = Literal["generator", "student"]


@dataclass
class BatchContext:
    """What a hook sees for one batch.

    Attributes:
        x: raw images in ``spec.value_range``; grad-enabled (a function of the generator) in the
            generator phase, detached in the student phase.
        t_logits: teacher logits on ``x`` (grad flows to ``x`` in the generator phase).
        s_logits: student logits on ``x`` (``None`` when there is no student, e.g. ``synthesize``).
        engine: the running engine (``engine.teacher_logits``, ``engine.kd_loss``, ``engine.spec``...).
        step: global step counter (generator and student steps are counted separately).
        phase: ``"generator"`` or ``"student"``.
        student: the student wrapper (takes raw images) or ``None``.
        extra: scratch space shared by the hooks of one batch; the engine puts its loss terms here
            (``extra["terms"]``: name -> detached float) so observers can log them.
    """

    x: torch.Tensor
    t_logits: torch.Tensor
    s_logits: torch.Tensor | None
    engine: "Engine"
    step: int
    phase: Phase
    student: nn.Module | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Hook:
    """Base class; subclass and override what you need. Every method is optional.

    Hooks run in list order. Several ``student_loss`` replacements are summed.
    """

    def generator_loss(self, ctx: BatchContext) -> torch.Tensor | None:
        """Return an extra (scalar) term added to the generator loss, or ``None``."""
        return None

    def student_loss(self, ctx: BatchContext) -> torch.Tensor | None:
        """Return a scalar that REPLACES the default KD loss for this batch, or ``None``."""
        return None

    def on_batch(self, ctx: BatchContext) -> None:
        """Observe a batch (called after the losses were computed, before the optimiser step)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Hook state saved with engine checkpoints (tensors and plain values only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        return None
