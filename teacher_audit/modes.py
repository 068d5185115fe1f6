"""Module-mode helpers shared by the engine, the defenses and the zoo."""

from __future__ import annotations

from typing import Any

from torch import nn


class EvalMode:
    """Context: module in eval mode, so samples that are not training data for it (stamped, replayed,
    evaluated) leave its BatchNorm running statistics untouched; the previous mode is restored on exit."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.was = module.training

    def __enter__(self) -> nn.Module:
        self.module.eval()
        return self.module

    def __exit__(self, *exc: Any) -> None:
        self.module.train(self.was)
