"""Default student choice: same family as the teacher, smaller (via the architecture registry)."""

from __future__ import annotations

from torch import nn

from teacher_audit.errors import UsageError
from teacher_audit.intake.spec import InputSpec

#: teacher architecture -> default student architecture (same family, smaller). Others: same arch.
SMALLER: dict[str, str] = {
    "resnet34_cifar": "resnet18_cifar",
    "resnet50_cifar": "resnet18_cifar",
    "wrn40_2": "wrn16_1",
    "wrn16_2": "wrn16_1",
    "wrn28_10": "wrn16_2",
    "vgg16_bn": "vgg11_bn",
    "vgg13_bn": "vgg11_bn",
    "tv_resnet50": "tv_resnet18",
    "tv_resnet34": "tv_resnet18",
    "tv_resnet101": "tv_resnet18",
}


def default_student_arch(teacher_arch: str) -> str:
    """The student architecture used when none is given."""
    return SMALLER.get(teacher_arch, teacher_arch)


def build_student(arch: str, spec: InputSpec) -> nn.Module:
    """Build a fresh student network (normalised input -> logits) from the architecture registry."""
    from teacher_audit.intake.archs import ARCHS, build_arch

    if arch not in ARCHS:
        raise UsageError(f"student architecture {arch!r} is not in the registry (pass --student; known: "
                         f"{', '.join(ARCHS.names())})")
    return build_arch(arch, num_classes=spec.num_classes, in_channels=spec.channels)
