"""Registry of architectures the tool can rebuild without user code, and the state_dict matcher.

Public API::

    from teacher_audit.intake.archs import ARCHS, build_arch, match_state_dict, ArchEntry, MatchResult
    net = build_arch("wrn16_2", num_classes=10, in_channels=3)
    spec = ARCHS.get("wrn16_2").default_spec(10, 3)
    result = match_state_dict(state_dict)          # result.best, result.candidates
"""

from __future__ import annotations

# importing the model modules registers them
from teacher_audit.intake.archs import mobilenetv2, resnet_cifar, small, tv, vgg, wrn  # noqa: F401
from teacher_audit.intake.archs.base import ARCHS, STATS, ArchEntry, build_arch, register_arch
from teacher_audit.intake.archs.match import MatchResult, match_state_dict, strip_wrapper_prefix

__all__ = ["ARCHS", "STATS", "ArchEntry", "MatchResult", "build_arch", "match_state_dict", "register_arch",
           "strip_wrapper_prefix"]
