"""Robustness profile of a teacher over synthetic samples (the measurement behind the NTL probe).

ATEsc (Hong et al., ICML 2025) observes that a non-transferable-learning (NTL) teacher is markedly
more adversarially robust on its misleading OOD domain than on its own domain, and that the teacher
pulls data-free synthesis towards that domain ("OOD trap"). We profile robustness on samples the
engine makes from the teacher alone:

* ``early``: the generator's first batches (almost untrained generator; off by default: such
  near-constant images are confidently classified and robust on *every* teacher, so they carry no
  NTL signal and only made the old "growth" feature negative everywhere);
* ``synth``: :meth:`Engine.synthesize` output after ``synth_steps`` teacher-driven updates;
* ``dfkd``: generator batches of a short DFKD run (:meth:`Engine.run`, a budget in passes), i.e.
  what the teacher's pull produces while a student learns.

The samples come from the profile's **own engine** (``ProfileConfig.preset``, default ``fast``),
seeded with the probe's seed, not from the scan's shared engine: the scan's default preset (``dfq``)
degenerates on Fashion-MNIST teachers (its synthetic samples never reach the teacher's confident
regions, so the profile was empty on real NTL teachers), and a shared engine's state depends on which
probes ran before, which made the score vary between runs. ``preset=None`` uses the engine passed in.
Teachers without BatchNorm statistics (e.g. ONNX exports with BN folded) get the preset without its
BN-prior term (the engine switches it off and says so); the detection statistic itself uses only
the teacher's outputs and gradients.

Per sample: the smallest L-infinity radius that flips the teacher's label (bisection, see
:func:`teacher_audit.attacks.pgd.min_flip_eps`, reported in grey levels /255 of the value range,
censored at ``eps_max``), the KL between ``T(x)`` and ``T(x_adv)`` at a fixed radius, the teacher's
confidence, entropy and predicted class. The probe module turns this into features and a score.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from teacher_audit.attacks.pgd import kl_at_eps, min_flip_eps
from teacher_audit.synth.hooks import BatchContext, Hook
from teacher_audit.teacher import Teacher


@dataclass
class ProfileConfig:
    """Budget and attack settings of the profile (defaults tuned for a small CNN within ~30 s).

    Attributes:
        preset: engine preset of the profile's own synthesis engine (``None``: the engine passed in).
        n_early: samples kept from the first generator batches.
        n_synth: samples from ``engine.synthesize`` after ``synth_steps`` updates.
        synth_steps: generator updates before sampling (teacher-only terms).
        dfkd_passes: teacher-pass budget of the short DFKD run (0: skip it).
        n_dfkd: samples kept from the last generator batches of the DFKD run.
        eps_max: largest radius tried (fraction of the value range).
        eps_min: lower end of the bisection bracket (synthetic samples often sit on a decision
            boundary; a low floor keeps them from piling up into a fake "mode").
        bisection_steps: bisection rounds for the smallest flipping radius.
        pgd_steps: PGD iterations per bisection trial.
        kl_eps, kl_steps: radius and PGD iterations of the fixed-radius KL measure (0 steps: skip).
        n_measure: at most this many samples (a seeded random subset, every phase in proportion) are
            PGD-profiled; the teacher's class histogram (the "pull") uses all samples. PGD is ~90 % of
            the cost, so this keeps the probe within its time budget.
    """

    preset: str | None = "fast"
    n_early: int = 0
    n_synth: int = 256
    synth_steps: int = 10
    dfkd_passes: int = 1280
    n_dfkd: int = 128
    eps_max: float = 32 / 255
    eps_min: float = 0.5 / 255
    bisection_steps: int = 4
    pgd_steps: int = 5
    kl_eps: float = 8 / 255
    kl_steps: int = 0
    n_measure: int = 192


@dataclass
class Profile:
    """Per-sample measurements; arrays aligned, ``phase`` tells which set a sample came from."""

    x: torch.Tensor
    phase: np.ndarray
    eps255: np.ndarray
    censored: np.ndarray
    kl: np.ndarray
    conf: np.ndarray
    entropy: np.ndarray
    pred: np.ndarray
    num_classes: int
    passes: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    all_pred: np.ndarray | None = None
    all_phase: np.ndarray | None = None
    all_batch: np.ndarray | None = None
    batch: np.ndarray | None = None

    @property
    def log_eps(self) -> np.ndarray:
        """``log10`` of the smallest flipping radius in grey levels (the robustness score)."""
        return np.log10(np.maximum(self.eps255, 1e-3))

    def select(self, mask: np.ndarray) -> "Profile":
        m = torch.as_tensor(mask)
        return Profile(self.x[m], self.phase[mask], self.eps255[mask], self.censored[mask], self.kl[mask],
                       self.conf[mask], self.entropy[mask], self.pred[mask], self.num_classes)


class _Collect(Hook):
    """Keeps detached generator-phase batches (images only)."""

    def __init__(self) -> None:
        self.batches: list[torch.Tensor] = []

    def on_batch(self, ctx: BatchContext) -> None:
        if ctx.phase == "generator":
            self.batches.append(ctx.x.detach().float().cpu())


def _take_last(batches: list[torch.Tensor], n: int) -> torch.Tensor | None:
    out: list[torch.Tensor] = []
    k = 0
    for b in reversed(batches):
        out.append(b)
        k += b.shape[0]
        if k >= n:
            break
    return torch.cat(out[::-1])[-n:] if out else None


def own_engine(teacher: Teacher, engine: Any, cfg: ProfileConfig, seed: int) -> tuple[Any, list[str]]:
    """The profile's own engine (``cfg.preset``, seeded) or, when ``preset`` is ``None`` or unusable, ``engine``."""
    if cfg.preset is None:
        return engine, []
    from teacher_audit.synth import PRESETS, Engine

    try:
        with torch.random.fork_rng(devices=[]):
            own = Engine(teacher, PRESETS.get(cfg.preset)(), device=teacher.device, seed=seed)
        return own, [f"profile engine: preset {cfg.preset!r}, seed {seed}"] + list(own.notes)
    except Exception as exc:  # an unusable preset must not kill the scan: fall back to the shared engine
        return engine, [f"own {cfg.preset!r} engine unavailable ({str(exc).splitlines()[0][:120]}); shared engine used"]


def collect_samples(teacher: Teacher, engine: Any, cfg: ProfileConfig) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Synthesise the sample sets from ``engine`` (see module docstring)."""
    notes: list[str] = []
    sets: dict[str, torch.Tensor] = {}
    early = _Collect()
    x_synth = engine.synthesize(cfg.n_synth, steps=cfg.synth_steps, hooks=[early] if cfg.n_early else []
                                ).detach().float().cpu()
    if early.batches and cfg.n_early:
        sets["early"] = torch.cat(early.batches[:2])[: cfg.n_early]
    sets["synth"] = x_synth
    if cfg.dfkd_passes > 0:
        grab = _Collect()
        try:
            engine.run(budget_passes=engine.passes + cfg.dfkd_passes, hooks=[grab], progress=False)
            late = _take_last(grab.batches, cfg.n_dfkd)
            if late is not None:
                sets["dfkd"] = late
        except Exception as exc:  # a student that cannot be built must not kill the scan
            notes.append(f"short DFKD run skipped: {str(exc).splitlines()[0][:160]}")
    return sets, notes


def measure(teacher: Teacher, sets: dict[str, torch.Tensor], cfg: ProfileConfig, seed: int = 0,
            batch_size: int = 128) -> Profile:
    """Teacher classes of every sample of ``sets``; PGD profile of up to ``cfg.n_measure`` of them.

    ``batch_size`` is the synthesis batch size (samples are tagged with their generator batch).
    """
    model = teacher.model
    dev = teacher.device
    vr = tuple(float(v) for v in teacher.spec.value_range)
    names = list(sets)
    x = torch.cat([sets[k] for k in names]).to(dev)
    phase = np.concatenate([np.array([k] * sets[k].shape[0]) for k in names])
    # synthesis batch of every sample (phase, block of ``batch_size``): one degenerate generator batch
    # must not look like a pull, so the probe's statistics are medians over batches
    bid, off = [], 0
    for k in names:
        bid.append(off + np.arange(sets[k].shape[0]) // max(1, batch_size))
        off = int(bid[-1].max()) + 1 if sets[k].shape[0] else off
    batch = np.concatenate(bid) if bid else np.zeros(0, dtype=int)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        all_pred = model(x).argmax(1).cpu().numpy()
    passes_all = x.shape[0]
    all_phase, all_batch = phase, batch
    if 0 < cfg.n_measure < x.shape[0]:
        keep = torch.randperm(x.shape[0], generator=gen)[: cfg.n_measure].sort().values
        x, phase, batch = x[keep.to(dev)], phase[keep.numpy()], batch[keep.numpy()]
    eps, cens, passes = min_flip_eps(model, x, eps_max=cfg.eps_max, eps_min=cfg.eps_min, bisection_steps=cfg.bisection_steps,
                                     pgd_steps=cfg.pgd_steps, value_range=vr, generator=gen)  # type: ignore[arg-type]
    if cfg.kl_steps > 0:
        kl, p2 = kl_at_eps(model, x, eps=cfg.kl_eps, steps=cfg.kl_steps, value_range=vr, generator=gen)  # type: ignore[arg-type]
        passes += p2
    else:
        kl = torch.full((x.shape[0],), float("nan"))
    with torch.no_grad():
        p = F.softmax(model(x).float(), 1)
    passes += x.shape[0]
    ent = -(p * torch.log(p.clamp_min(1e-12))).sum(1) / math.log(p.shape[1])
    return Profile(x=x.cpu(), phase=phase, eps255=(eps * 255).cpu().numpy(), censored=cens.cpu().numpy(),
                   kl=kl.cpu().numpy(), conf=p.max(1)[0].cpu().numpy(), entropy=ent.cpu().numpy(),
                   pred=p.argmax(1).cpu().numpy(), num_classes=p.shape[1], passes=passes + passes_all,
                   all_pred=all_pred, all_phase=all_phase, all_batch=all_batch, batch=batch)


def profile_teacher(teacher: Teacher, engine: Any, cfg: ProfileConfig | None = None, seed: int = 0) -> Profile:
    """Collect synthetic samples and measure their robustness; counts passes and seconds."""
    cfg = cfg or ProfileConfig()
    t0 = time.perf_counter()
    eng, notes = own_engine(teacher, engine, cfg, seed)
    p0 = int(getattr(eng, "passes", 0))
    with torch.random.fork_rng(devices=[]):  # deterministic given the seed, and leaves the caller's RNG alone
        torch.manual_seed(seed)
        sets, more = collect_samples(teacher, eng, cfg)
        bs = int(getattr(getattr(eng, "config", None), "batch_size", 128) or 128)
        prof = measure(teacher, sets, cfg, seed=seed, batch_size=bs)
    prof.passes += int(getattr(eng, "passes", 0)) - p0
    prof.seconds = time.perf_counter() - t0
    prof.notes = notes + more
    return prof
