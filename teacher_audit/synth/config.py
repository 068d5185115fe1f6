"""Engine settings and the method presets (ZSKT, DFAD, DAFL, DFQ, Fast, CMI-light).

``PRESETS.get(name)()`` returns a fresh :class:`EngineConfig`. The table of presets, the published
reference settings they derive from and the CPU adaptations are documented in ``docs/presets.md``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal

from teacher_audit.registry import Registry


@dataclass
class EngineConfig:
    """All knobs of the data-free KD loop.

    Attributes:
        name: preset name (for reports).
        weights: generator-loss term name -> weight (names from ``LOSS_TERMS``: bn, oh, adv,
            adv_l1, balance, act, cr). Zero or absent terms are not computed.
        temperature: KD temperature τ (also used by ``adv``).
        batch_size: synthetic images per generator/student batch.
        gen_steps: generator updates per iteration (per synthesised batch in meta mode).
        kd_steps: student updates per iteration.
        lr_g: generator Adam learning rate (betas 0.5, 0.999).
        lr_z: learning rate of the per-batch latent codes (meta mode only; 0 keeps them fixed).
        lr_s: student learning rate.
        student_optimizer: ``sgd`` (momentum 0.9, Nesterov) or ``adam``.
        weight_decay: student weight decay.
        lr_schedule: ``cosine`` over the budget, or ``constant``.
        nz: generator noise size. ngf: generator width.
        meta: Fast-DFKD mode (Fang et al., AAAI 2022): each batch starts from a meta generator, takes
            ``gen_steps`` adaptation steps, and the meta generator moves ``reptile_lr`` of the way
            towards the adapted weights (Reptile).
        reptile_lr: meta step size.
        pool_size: synthetic images kept (with their teacher logits) for student replay; 0 trains
            the student on fresh batches only. Replay costs no teacher passes.
        pool_max_bytes: memory cap of the pool.
        bank_size: memory bank size of the ``cr`` term.
        synth_steps: default generator updates of :meth:`Engine.synthesize`.
        budget_passes: default budget (teacher image passes) of :meth:`Engine.run`.
        checkpoint_every: iterations between checkpoints (when a checkpoint dir is given).
        log_every: iterations between history records.
        student_arch: architecture of the default student (``None``: same family, smaller).
        amp: fp16 autocast on CUDA (never on CPU).
    """

    name: str = "custom"
    weights: dict[str, float] = field(default_factory=lambda: {"bn": 1.0, "oh": 0.5, "adv": 0.5, "balance": 20.0})
    temperature: float = 20.0
    batch_size: int = 128
    gen_steps: int = 1
    kd_steps: int = 5
    lr_g: float = 1e-3
    lr_z: float = 0.0
    lr_s: float = 0.05
    student_optimizer: Literal["sgd", "adam"] = "sgd"
    weight_decay: float = 5e-4
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    nz: int = 256
    ngf: int = 16
    meta: bool = False
    reptile_lr: float = 0.5
    pool_size: int = 0
    pool_max_bytes: int = 512 * 2**20
    bank_size: int = 2048
    synth_steps: int = 20
    budget_passes: int = 150_000
    checkpoint_every: int = 50
    log_every: int = 10
    student_arch: str | None = None
    amp: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def active_terms(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.weights.items() if v}


PRESETS: Registry[Callable[[], EngineConfig]] = Registry("DFKD method")


@PRESETS.register("zskt", paper="Micaelli & Storkey, NeurIPS 2019")
def zskt() -> EngineConfig:
    """Adversarial only: the generator seeks teacher/student disagreement (KL)."""
    return EngineConfig(name="zskt", weights={"adv": 1.0}, temperature=20.0, gen_steps=1, kd_steps=5, lr_g=1e-3)


@PRESETS.register("dfad", paper="Fang et al., arXiv:1912.11006, 2019")
def dfad() -> EngineConfig:
    """Adversarial with the L1 logit distance, τ = 1."""
    return EngineConfig(name="dfad", weights={"adv_l1": 1.0}, temperature=1.0, gen_steps=1, kd_steps=5, lr_g=1e-3)


@PRESETS.register("dafl", paper="Chen et al., ICCV 2019")
def dafl() -> EngineConfig:
    """One-hot + activation + class balance, no adversary."""
    return EngineConfig(name="dafl", weights={"oh": 1.0, "act": 0.1, "balance": 20.0}, temperature=20.0,
                        gen_steps=1, kd_steps=5, lr_g=1e-3)


@PRESETS.register("dfq", paper="Choi et al., CVPR-W 2020")
def dfq() -> EngineConfig:
    """BN prior + one-hot + adversarial + balance (CPU adaptation: lr_g 1e-3 instead of 1e-4)."""
    return EngineConfig(name="dfq", weights={"bn": 1.0, "oh": 0.5, "adv": 0.5, "balance": 20.0},
                        temperature=20.0, gen_steps=1, kd_steps=5, lr_g=1e-3)


@PRESETS.register("fast", paper="Fang et al., AAAI 2022")
def fast() -> EngineConfig:
    """Meta-learned generator re-used across batches, few adaptation steps, replay pool."""
    return EngineConfig(name="fast", weights={"bn": 10.0, "oh": 1.0, "adv": 0.5, "balance": 5.0},
                        temperature=20.0, gen_steps=5, kd_steps=10, lr_g=5e-3, lr_z=0.015, meta=True,
                        reptile_lr=0.5, pool_size=20_000)


@PRESETS.register("cmi", paper="Fang et al., IJCAI 2021 (light reconstruction)")
def cmi() -> EngineConfig:
    """Fast's loop plus the light contrastive ``cr`` term (see losses.py: a reconstruction)."""
    cfg = fast()
    cfg.name = "cmi"
    cfg.weights = {"bn": 10.0, "oh": 1.0, "adv": 0.5, "cr": 0.8}
    return cfg
