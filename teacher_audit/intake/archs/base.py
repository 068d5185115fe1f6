"""The architecture registry: named builders plus the defaults needed to audit their weights.

A checkpoint is only weights; to audit it the tool must rebuild the network *without running any code
from the checkpoint*. Every architecture the tool can rebuild is registered here with

- a builder ``(num_classes, in_channels) -> nn.Module`` (fresh, random init; forward takes a normalised
  NCHW float tensor and returns logits),
- where ``num_classes`` and ``in_channels`` can be read off a state_dict (``classifier_key``'s first dim
  and ``first_conv_key``'s second dim), used by :func:`~teacher_audit.intake.archs.match.match_state_dict`,
- the input geometry and normalisation it is usually trained with, used as the lowest-precedence source
  of the :class:`~teacher_audit.intake.spec.InputSpec` (see ``card.resolve_spec``).

Adding an architecture::

    @register_arch("mynet", family="cifar", input_size=(32, 32), stats="cifar10",
                   classifier_key="fc.weight", first_conv_key="conv1.weight")
    def mynet(num_classes: int, in_channels: int) -> nn.Module: ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from teacher_audit.errors import UsageError
from teacher_audit.intake.spec import InputSpec
from teacher_audit.registry import Registry

Builder = Callable[[int, int], nn.Module]

#: per-dataset normalisation statistics (mean, std) used for registry default specs.
STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    # CIFAR-10 statistics as used by the DFKD reference code (CMI, ABD).
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "none": ((0.0,), (1.0,)),
}


def _fit_channels(values: tuple[float, ...], channels: int) -> tuple[float, ...]:
    """Per-channel stats for ``channels`` channels: as-is if the count fits, else their mean repeated."""
    if len(values) == channels:
        return tuple(values)
    avg = sum(values) / len(values)
    return tuple([round(avg, 4)] * channels)


@dataclass(frozen=True)
class ArchEntry:
    """One registered architecture.

    Attributes:
        name: registry name (``"resnet18_cifar"``, ``"tv_resnet50"``...).
        builder: ``(num_classes, in_channels) -> nn.Module``.
        family: "small" (1x28x28 nets), "cifar" (CIFAR-style, work at 28x28 and 32x32) or "imagenet".
        input_size: default (height, width).
        default_channels: channel count the architecture is usually trained with.
        stats: key of :data:`STATS` giving the default mean/std.
        classifier_key: state_dict key of the final linear weight, ``(num_classes, features)``.
        first_conv_key: state_dict key of the first conv weight, ``(out, in_channels, kh, kw)``.
        description: one line for ``--help`` and docs.
    """

    name: str
    builder: Builder
    family: str
    input_size: tuple[int, int]
    default_channels: int
    stats: str
    classifier_key: str
    first_conv_key: str
    description: str = ""

    def build(self, num_classes: int = 10, in_channels: int | None = None) -> nn.Module:
        """A fresh, randomly initialised network."""
        if num_classes < 1:
            raise UsageError(f"num_classes must be >= 1, got {num_classes}")
        ch = self.default_channels if in_channels is None else in_channels
        if ch < 1:
            raise UsageError(f"in_channels must be >= 1, got {ch}")
        return self.builder(int(num_classes), int(ch))

    def default_spec(self, num_classes: int = 10, in_channels: int | None = None) -> InputSpec:
        """The registry's default :class:`InputSpec`; every field's source is ``"registry"``."""
        ch = self.default_channels if in_channels is None else int(in_channels)
        mean, std = STATS[self.stats]
        spec = InputSpec(
            channels=ch,
            height=self.input_size[0],
            width=self.input_size[1],
            value_range=(0.0, 1.0),
            mean=_fit_channels(mean, ch),
            std=_fit_channels(std, ch),
            num_classes=int(num_classes),
            class_names=None,
        )
        spec.sources = {k: "registry" for k in ("channels", "height", "width", "value_range", "mean",
                                                "std", "num_classes")}
        return spec


ARCHS: Registry[ArchEntry] = Registry("architecture")


def register_arch(name: str, *, family: str, input_size: tuple[int, int], stats: str,
                  classifier_key: str, first_conv_key: str, default_channels: int = 3,
                  description: str = "") -> Callable[[Builder], Builder]:
    """Decorator: register ``builder`` as architecture ``name`` (see :class:`ArchEntry`)."""
    if stats not in STATS:
        raise ValueError(f"unknown stats {stats!r}")

    def deco(builder: Builder) -> Builder:
        doc = (builder.__doc__ or "").strip()
        desc = description or (doc.splitlines()[0] if doc else "")
        entry = ArchEntry(name=name, builder=builder, family=family, input_size=input_size,
                          default_channels=default_channels, stats=stats, classifier_key=classifier_key,
                          first_conv_key=first_conv_key, description=desc)
        ARCHS.register(name, family=family)(entry)
        return builder

    return deco


def build_arch(name: str, num_classes: int = 10, in_channels: int | None = None) -> nn.Module:
    """Build registered architecture ``name`` with fresh random weights (unknown name -> UsageError).

    ``in_channels=None`` uses the architecture's usual channel count (1 for "smallcnn"/"lenet5", else 3).
    """
    return ARCHS.get(name).build(num_classes, in_channels)
