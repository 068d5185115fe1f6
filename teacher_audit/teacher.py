"""Teacher: the loaded network wrapped so that it takes raw images in its value range."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from teacher_audit.intake.spec import InputSpec


class TeacherModel(nn.Module):
    """Wraps ``net`` with the spec's normalisation: ``forward(x_raw) = net((x_raw - mean) / std)``.

    Probes, the engine and defenses all call this wrapper, so epsilons and generators live in the
    raw pixel space of ``spec.value_range``.
    """

    def __init__(self, net: nn.Module, spec: InputSpec):
        super().__init__()
        self.net = net
        self.spec = spec
        c = spec.channels
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, c, 1, 1))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


@dataclass
class Teacher:
    """A loaded, frozen teacher and what is known about it.

    Attributes:
        model: the raw-input wrapper (eval mode, parameters frozen).
        spec: the input spec.
        arch: resolved architecture name (or "onnx"/"torchscript").
        fmt: the sniffed file format.
        meta: free-form facts from intake (card, ONNX parity, ...).
    """

    model: TeacherModel
    spec: InputSpec
    arch: str
    fmt: str
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_net(cls, net: nn.Module, spec: InputSpec, arch: str = "custom", fmt: str = "memory",
                 **meta: Any) -> "Teacher":
        model = TeacherModel(net, spec).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return cls(model=model, spec=spec, arch=arch, fmt=fmt, meta=dict(meta))

    def to(self, device: torch.device | str) -> "Teacher":
        self.model.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.model.mean.device
