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
        graph_normalisation: per-channel ``(mean, std)`` an ONNX graph applies to its raw input itself
            (read off its first nodes, :mod:`teacher_audit.intake.onnx_norm`), or None. Not applied again by
            the wrapper (that is ``mean``/``std``); it tells the raw pictures' statistics when no card does.
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
    graph_normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["value_range"] = list(self.value_range)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        if self.graph_normalisation is None:
            d.pop("graph_normalisation")
        else:
            d["graph_normalisation"] = {"mean": list(self.graph_normalisation[0]),
                                        "std": list(self.graph_normalisation[1])}
        return d
