"""Defenses plugged into the synthesis engine as hooks (registry in ``base``).

Each defense module registers itself in ``DEFENSES`` on import; add its import line below once the
module exists.
"""

from teacher_audit.defenses.base import DEFENSES, DefenseFactory, no_defense

__all__ = ["DEFENSES", "DefenseFactory", "no_defense"]

from teacher_audit.defenses import atesc  # noqa: E402,F401  (registers "atesc")
from teacher_audit.defenses import abd  # noqa: E402,F401  (registers "abd")
