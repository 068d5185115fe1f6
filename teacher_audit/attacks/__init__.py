"""Adversarial attacks used by probes and defenses (white-box, on the raw-input teacher)."""

from teacher_audit.attacks.pgd import PGDResult, kl_at_eps, min_flip_eps, pgd

__all__ = ["PGDResult", "pgd", "min_flip_eps", "kl_at_eps"]
