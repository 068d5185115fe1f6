"""Data-free probes. Importing this package registers every probe in ``PROBES``.

Each probe module registers itself with ``@PROBES.register(...)``; add one import line per module below.
"""

from teacher_audit.probes.base import PROBES, Probe

__all__ = ["PROBES", "Probe"]
