"""Uniform probe interface and the probe registry.

A probe is ``Probe(config).run(teacher, engine) -> ProbeResult``. Each probe has its own compute
budget in its config. Registering with ``@PROBES.register("name")`` makes ``scan`` and the tests
pick it up.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from teacher_audit.registry import Registry
from teacher_audit.report.model import ProbeResult
from teacher_audit.teacher import Teacher


class Probe(ABC):
    """Base class. Subclasses define ``name``, ``threat``, a ``Config`` dataclass and ``run``."""

    name: ClassVar[str]
    threat: ClassVar[str]
    Config: ClassVar[type]

    def __init__(self, config: Any | None = None):
        self.config = config if config is not None else self.Config()

    @abstractmethod
    def run(self, teacher: Teacher, engine: Any) -> ProbeResult:
        """Run the probe on ``teacher`` using the shared synthesis ``engine``."""


PROBES: Registry[type[Probe]] = Registry("probe")
