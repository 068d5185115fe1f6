"""InputSpec: what the teacher expects as input, and where each field came from.

Convention used across the project: every probe, the synthesis engine and the defenses work on
*raw* images in ``value_range`` (e.g. [0, 1]); ``TeacherModel`` applies ``(x - mean) / std`` before
the network. Card loading and precedence live with the architecture matcher (see ``resolve_spec``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class InputSpec:
    """Input geometry, range and labelling of a classifier.

    Attributes:
        channels, height, width: input tensor shape (without batch).
        value_range: (low, high) of raw pixel values before normalisation.
        mean, std: per-channel normalisation applied to raw values.
        num_classes: number of output logits.
        class_names: optional names, ``len == num_classes``.
        sources: field name -> where it came from ("card", "onnx", "registry", "flag", "weights").
    """

    channels: int = 3
    height: int = 32
    width: int = 32
    value_range: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    num_classes: int = 10
    class_names: list[str] | None = None
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["value_range"] = list(self.value_range)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d
