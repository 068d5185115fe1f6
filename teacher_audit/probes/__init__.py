"""Data-free probes. Importing this package registers every probe in ``PROBES``.

Each probe module registers itself with ``@PROBES.register(...)``; add one import line per module below.
"""

from teacher_audit.probes.base import PROBES, Probe

__all__ = ["PROBES", "Probe"]

from teacher_audit.probes import backdoor_margin  # noqa: E402,F401  (registers "backdoor_margin")
from teacher_audit.probes import backdoor_inversion  # noqa: E402,F401  (registers "backdoor_inversion")
from teacher_audit.probes import backdoor_shuffle  # noqa: E402,F401  (registers "backdoor_shuffle")
from teacher_audit.probes import backdoor_sink  # noqa: E402,F401  (registers "backdoor_sink")
from teacher_audit.probes import backdoor_fused  # noqa: E402,F401  (registers "backdoor", the default)
from teacher_audit.probes import backdoor_transfer  # noqa: E402,F401  (registers "backdoor_transfer")
from teacher_audit.probes import ntl_robustness  # noqa: E402,F401  (registers "ntl_robustness")
