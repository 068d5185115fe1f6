"""ATEsc: Adversarial Trap Escaping for data-free KD from a possibly non-transferable teacher.

Paper: Hong et al., ICML 2025. A non-transferable-learning (NTL) teacher pulls synthesis towards its
misleading OOD domain; NTL teachers are more adversarially robust on OOD-like inputs than on ID-like
ones. ATEsc attacks every synthetic batch with PGD against the teacher, splits the batch by
robustness, distils on the fragile (ID-like) group and makes the student *forget* the teacher's
answers on the robust (OOD-like) group: ``loss = L_KD(fragile) + lambda * L_forget(robust)``.

The paper's code is not public; every choice it leaves open is an option here (defaults in
``ATEscConfig``, rationale and measurements in ``docs/ntl.md``):

* attack: L-inf PGD in the teacher's raw range, ``eps`` 8/255 of the range, ``pgd_steps`` 5 (step
  ``2.5 eps / steps``), KL objective with random start;
* robustness score per sample: ``measure="kl"`` -> ``-log10 KL(T(x) || T(x_adv))`` (default; one PGD
  run), or ``measure="flip"`` -> ``log10`` of the smallest flipping radius (bisection, costlier);
* split: a rule learned from the batch (:func:`teacher_audit.attacks.split.robust_split`, ``split``
  ``gmm`` default, ``quantile``, ``otsu``); a unimodal batch (clean teacher) gives no robust group, so
  ATEsc then reduces to plain KD -- never a fixed fraction;
* forgetting: ``forget`` before a trap is seen (default ``"uniform"``: KL(uniform || S), "don't know"),
  ``forget_trap`` on the batch's robust group once a trap is seen (``trap_window``/``trap_share``; default
  ``"uniform"`` too; ``None`` = keep ``forget``) and ``replay_forget`` on the remembered trap samples (below;
  default ``"uniform_other"``: KL(u || S) with u uniform over every class but the teacher's answer, "not that
  label"). The trap's label is also a real ID class whose own images the teacher answers robustly, so
  "not that label" on every robust sample cost the student that class (watermark s0 at 150,000 passes: Bag
  95 % with plain DFKD, 32 %); on the batch it is now "don't know", and "not that label" acts only through the
  gated replay, on samples the student still gives the trap's label (session 18; session 17 had tried
  ``uniform`` for both, which lost the escape on grating s2 at 150,000 passes; ``docs/benchmarks.md``).
  Names: ``uniform``, ``uniform_other``, ``neg_kl`` (bounded ``-min(KL(T || S), forget_cap)``: move away
  from the teacher), ``not_label`` (``-log(1 - S(teacher's answer))``: only that label is pushed down),
  ``none`` (drop robust samples from KD only). ``uniform_other`` on every batch cost clean
  teachers up to 3 points (stray robust splits), hence its gating on the trap;
* a *trap is seen* (what switches on every trap-time measure below) when, over the newest ``trap_window``
  (20) student batches, at least ``trap_collapse`` (0.75) of the robust samples fall in one teacher class and
  that class's robust samples are more than ``trap_share`` (5 %) of the batches. An NTL trap's robust samples
  carry its one misleading OOD label; a clean teacher's stray robust groups (confident synthetic samples)
  are spread over its classes. ``trap_collapse=0``: the robust share alone (up to session 15);
* ``trap_latch`` (default 100; 0 = off): once a trap has been seen in that many student steps it stays seen for
  the rest of the run, and (``latch_attack``, default on) the class most robust samples fell in up to then stays
  attacked in full under the adaptive attack (``latch_attack=0`` keeps the latch and leaves the attack schedule
  alone: the trap stays seen, but its class cools down and the escape is lost, session 20). An escape that
  works moves synthesis off the trap, the robust samples thin out, the trap stops being seen, the
  trap-time measures switch off and synthesis falls back into it: on the held-out NTL teachers at 150,000 passes
  a trap was seen in only 631-647 of ~1,500 steps and the student agreed with the trap's labels on 91.5-100 % of
  its domain (session 19, ``docs/benchmarks.md``). A clean teacher, on which no trap is seen, is not touched;
  a run that sees the trap in every step is the same to the digit;
* ``trap_bn_scale`` (default 0.1): once a trap is seen, the engine's BN prior counts this many times its
  weight (the NTL teacher's BN statistics mix ID and trap batches, so the prior pulls synthesis into the
  trap); 1 = off;
* ``kd_weight``: ``balanced`` (default; class-balanced KD on the fragile group once a trap is seen,
  ``trap_window``/``trap_share``) or ``uniform`` (plain KD);
* ``escape`` (our generator-side extension; the paper's ATEsc is student-side only): ``cover``
  (default; once a trap is seen, ``escape_weight`` x cross-entropy of the teacher on the generator's
  batch towards round-robin assigned labels, so synthesis returns to the classes the trap starves) or
  ``none``;
* ``trap_memory`` (default 256), ``trap_replay`` (32), ``replay_weight`` (0.1): the robust samples of every
  batch are remembered (the newest ``trap_memory``, with the teacher's logits); once a trap is seen every
  student step adds ``lam * replay_weight`` x the forgetting loss on ``trap_replay`` of them. With the BN
  prior weakened few new batches are robust, so without the memory the forgetting acted on few samples and
  the student kept the trap's labels (grating s2: 76-84 % agreement). Student passes only; 0 = off.
  ``replay_forget`` picks the replay's forgetting loss (default ``"uniform_other"``; ``None``: the one in force,
  ``forget_trap``);
  ``replay_gate`` which remembered samples it acts on (default ``"agreeing"``: only those the student still
  gives the teacher's label; ``"all"``). Ungated, "not that label" kept spreading to the ID images of the
  trap's class (held-out texture teacher: ID sandals 98 % -> 8 %, the trap domain still 100 % sandal);
  ``forget_gate`` the same choice for the batch's own robust group once a trap is seen (default ``"all"``);
* ``lam`` = lambda, default 1 (the paper's best);
* ``cache`` (default on): a sample's robustness score is computed once and remembered (keyed by a
  digest of its pixel bytes). Replay presets (``fast``, ``cmi``) draw every student batch
  from a pool of earlier synthetic images; without the cache each replayed image would be attacked
  again on every draw (10 student steps per synthesised batch in ``fast``: ~10x the teacher passes of
  the whole synthesis). The teacher is frozen, so the cached score is the one a new attack would give
  up to PGD's random start. The split is still learned per student batch from these scores;
* ``attack`` (default ``adaptive``; ``every`` = the paper: every new image of every student batch is
  attacked). ``adaptive``: the first ``warmup_steps`` (20) student steps are attacked in full; after that a new image
  is attacked only if the teacher's class for it is *hot* -- more than ``trap_share`` of that class's newest
  ``class_min`` (32) attacked images were robust -- and otherwise with probability ``monitor_share`` (1/8),
  which keeps every class's tally fresh so a trap that shows up later turns its class hot. An image not
  attacked counts as fragile. A batch with at least ``split_min`` (64) scored images is split as usual;
  one with fewer is compared with the threshold learned from the newest ``monitor_pool`` (512) scores
  (a mixture fit on a few images finds stray robust groups). On a clean teacher the attack then costs
  about a fifth of its passes; on an NTL teacher the trap's classes stay attacked in full. Measured on the zoo
  (``docs/benchmarks.md``, ``## ATEsc's adaptive attack``): the same share of NTL runs meeting issue 6's goal as
  ``every``, higher mean ID, and a lower clean-teacher cost at the default budget;
* ``charge_passes`` (default on): PGD passes count against the engine's budget. Off: they are only
  counted in ``ATEscHook.pgd_passes``, so a comparison with plain DFKD can be run at an equal
  *synthesis* budget and report the attack cost separately (``benchmarks/suite_ntl.py defense``).

Threat assumption: the teacher is untrusted but only evaluated; PGD costs teacher passes, which are
added to the engine's budget counter.

Outputs: the hooks; ``ATEscHook.stats`` keeps per-step robust shares and split thresholds.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

from teacher_audit.attacks.pgd import kl_at_eps, min_flip_eps
from teacher_audit.attacks.split import robust_split
from teacher_audit.defenses.base import DEFENSES
from teacher_audit.errors import UsageError
from teacher_audit.registry import Registry
from teacher_audit.synth.hooks import BatchContext, Hook
from teacher_audit.synth.losses import bn_prior, kd_per_sample

FORGET: Registry[Any] = Registry("ATEsc forgetting loss")


@FORGET.register("uniform")
def _forget_uniform(s_logits: torch.Tensor, t_logits: torch.Tensor, cfg: "ATEscConfig") -> torch.Tensor:
    logp = F.log_softmax(s_logits.float(), 1)
    return (-logp.mean(1) - math.log(s_logits.shape[1])).mean()  # KL(uniform || S)


@FORGET.register("neg_kl")
def _forget_neg_kl(s_logits: torch.Tensor, t_logits: torch.Tensor, cfg: "ATEscConfig") -> torch.Tensor:
    kl = F.kl_div(F.log_softmax(s_logits.float(), 1), F.softmax(t_logits.float(), 1), reduction="none").sum(1)
    return -kl.clamp(max=cfg.forget_cap).mean()


@FORGET.register("uniform_other")
def _forget_uniform_other(s_logits: torch.Tensor, t_logits: torch.Tensor, cfg: "ATEscConfig") -> torch.Tensor:
    """KL(u || S) with ``u`` uniform over every class but the teacher's answer: "not that label, and
    no preference among the rest" (stronger than ``uniform`` against the misleading label)."""
    k = s_logits.shape[1]
    logp = F.log_softmax(s_logits.float(), 1)
    keep = torch.ones_like(logp).scatter(1, t_logits.argmax(1, keepdim=True), 0.0)
    return (-(logp * keep).sum(1) / (k - 1) - math.log(k - 1)).mean()


@FORGET.register("not_label")
def _forget_not_label(s_logits: torch.Tensor, t_logits: torch.Tensor, cfg: "ATEscConfig") -> torch.Tensor:
    """``-log(1 - S(teacher's answer))``: only the teacher's label is pushed down; the rest of the student's
    answer is left as it is (``uniform_other`` also flattens it). Zero once the student gives that label no mass."""
    p = F.softmax(s_logits.float(), 1).gather(1, t_logits.argmax(1, keepdim=True)).squeeze(1)
    return -torch.log1p(-p.clamp(max=1 - 1e-6)).mean()


@FORGET.register("none")
def _forget_none(s_logits: torch.Tensor, t_logits: torch.Tensor, cfg: "ATEscConfig") -> torch.Tensor:
    return s_logits.sum() * 0.0


GATE: Registry[Any] = Registry("ATEsc forgetting gate")


@GATE.register("all")
def _gate_all(s_logits: torch.Tensor, t_logits: torch.Tensor) -> torch.Tensor:
    return torch.ones(s_logits.shape[0], dtype=torch.bool, device=s_logits.device)


@GATE.register("agreeing")
def _gate_agreeing(s_logits: torch.Tensor, t_logits: torch.Tensor) -> torch.Tensor:
    """Only the samples on which the student still gives the teacher's (trap) label: once it no longer
    does, the forgetting stops pushing, so "not that label" does not keep spreading to ID images of the
    trap's class."""
    return s_logits.argmax(1) == t_logits.argmax(1)


ESCAPE: Registry[Any] = Registry("ATEsc generator-side escape")


@ESCAPE.register("none")
def _escape_none(ctx: BatchContext, hook: "ATEscHook") -> torch.Tensor | None:
    return None


@ESCAPE.register("cover")
def _escape_cover(ctx: BatchContext, hook: "ATEscHook") -> torch.Tensor | None:
    """Once a trap is seen (:attr:`ATEscHook.trap_seen`), make the generator cover every class:
    ``escape_weight * CE(T(G(z)), i mod K)`` with labels assigned round-robin to the batch positions.
    The trap starves whole ID classes of synthetic samples (measured: two classes below 0.3 % of the
    pool) and no student-side split can teach what synthesis never produces. No extra teacher passes;
    on a teacher without a trap the term is never added, so the run is plain DFKD."""
    if not hook.trap_seen:
        return None
    t = ctx.t_logits.float()
    y = torch.arange(t.shape[0], device=t.device) % t.shape[1]
    return hook.cfg.escape_weight * F.cross_entropy(t, y)


def _top_class(stats: list[dict[str, Any]]) -> tuple[int | None, float]:
    """The teacher class most of the robust samples of ``stats`` (per-step ``robust_classes``) fell in, and
    its share of them; ``(None, 0.0)`` without robust samples."""
    pooled: dict[int, int] = {}
    for r in stats:
        for c, n in (r.get("robust_classes") or {}).items():
            pooled[int(c)] = pooled.get(int(c), 0) + int(n)
    total = sum(pooled.values())
    if not total:
        return None, 0.0
    top = max(pooled, key=lambda c: (pooled[c], -c))
    return top, pooled[top] / total


def class_balanced_weights(t_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample weights (mean 1) that give every teacher-predicted class of the group the same total."""
    y = t_logits.argmax(1)
    counts = torch.bincount(y, minlength=t_logits.shape[1]).float()
    w = 1.0 / counts[y]
    return w * (w.numel() / w.sum())


#: attack schedules (module docstring, ``attack``)
ATTACK_SCHEDULES = ("every", "adaptive")


@dataclass
class ATEscConfig:
    """ATEsc options (see module docstring)."""

    eps: float = 8 / 255
    pgd_steps: int = 5
    measure: str = "kl"
    split: str = "gmm"
    min_gap: float = 0.5
    min_separation: float = 2.0
    forget: str = "uniform"
    forget_trap: str | None = "uniform"
    forget_cap: float = 2.0
    lam: float = 1.0
    cache: bool = True
    charge_passes: bool = True
    kd_weight: str = "balanced"
    trap_window: int = 20
    trap_share: float = 0.05
    trap_collapse: float = 0.75
    trap_latch: int = 100
    latch_attack: bool = True
    escape: str = "cover"
    escape_weight: float = 10.0
    trap_bn_scale: float = 0.1
    trap_memory: int = 256
    trap_replay: int = 32
    replay_weight: float = 0.1
    replay_forget: str | None = "uniform_other"
    replay_gate: str = "agreeing"
    forget_gate: str = "all"
    attack: str = "adaptive"
    warmup_steps: int = 20
    monitor_share: float = 0.125
    monitor_pool: int = 512
    class_min: int = 32
    split_min: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.measure not in ("kl", "flip"):
            raise UsageError(f"atesc: measure must be 'kl' or 'flip', got {self.measure!r}")
        FORGET.get(self.forget)
        if self.forget_trap is not None:
            FORGET.get(self.forget_trap)
        if self.replay_forget is not None:
            FORGET.get(self.replay_forget)
        GATE.get(self.replay_gate)
        GATE.get(self.forget_gate)
        ESCAPE.get(self.escape)
        if self.kd_weight not in ("uniform", "balanced"):
            raise UsageError(f"atesc: kd_weight must be 'uniform' or 'balanced', got {self.kd_weight!r}")
        if self.trap_memory < 0 or self.trap_replay < 0 or self.replay_weight < 0:
            raise UsageError("atesc: trap_memory, trap_replay and replay_weight must be >= 0")
        if self.attack not in ATTACK_SCHEDULES:
            raise UsageError(f"atesc: attack must be one of {', '.join(ATTACK_SCHEDULES)}, got {self.attack!r}")
        if not 0 < self.monitor_share <= 1 or min(self.warmup_steps, self.class_min, self.split_min) < 0 \
                or self.monitor_pool < self.split_min:
            raise UsageError("atesc: 0 < monitor_share <= 1, warmup_steps, class_min, split_min >= 0 and "
                             "monitor_pool >= split_min are required")
        if self.trap_latch < 0:
            raise UsageError(f"atesc: trap_latch must be >= 0, got {self.trap_latch}")
        if not 0 <= self.trap_collapse <= 1:
            raise UsageError(f"atesc: trap_collapse must be in [0, 1], got {self.trap_collapse}")
        if self.eps <= 0 or self.pgd_steps < 1 or self.lam < 0:
            raise UsageError("atesc: eps > 0, pgd_steps >= 1 and lam >= 0 are required")


class ATEscHook(Hook):
    """Replaces the student loss by ``KD(fragile) + lam * forget(robust)`` (see module docstring)."""

    #: entries kept in the score cache before it is cleared (bounded memory on long runs)
    CACHE_MAX = 500_000
    #: added to ``seed`` for the adaptive schedule's sampling generator
    DRAW_SEED_OFFSET = 7919

    def __init__(self, config: ATEscConfig | None = None):
        self.cfg = config or ATEscConfig()
        self.gen = torch.Generator().manual_seed(self.cfg.seed)  # PGD's random starts, the replay's draws
        # attack="adaptive": the sampling draw has a stream of its own, so the schedule never moves the attack's
        self.draw_gen = torch.Generator().manual_seed(self.cfg.seed + self.DRAW_SEED_OFFSET)
        self.stats: list[dict[str, Any]] = []  # per student step; "robust_classes" is {class: count}
        self.attacked = 0  # images attacked with PGD (cache misses)
        self.pgd_passes = 0  # teacher passes spent by the attack
        self.pgd_seconds = 0.0  # wall-clock seconds spent by the attack
        self._cache: dict[bytes, float] = {}
        self.mem_x: torch.Tensor | None = None  # robust samples kept for replay (trap_memory)
        self.mem_t: torch.Tensor | None = None  # the teacher's logits on them
        # attack="adaptive": newest robust flags of the attacked images per teacher class, pool of scores,
        # images passed over
        self._flags: dict[int, list[bool]] = {}
        self._pool: list[float] = []
        self._passed: set[bytes] = set()
        self._trap_steps = 0  # student steps with a trap seen (``trap_latch``)
        self.latch_class: int | None = None  # the trap's class when the latch closed (attacked in full after)

    def _keys(self, x: torch.Tensor) -> list[bytes]:
        """One key per image: a digest of its pixels' bytes. Exact, and the same whichever batch the image
        comes in (a float projection computed as one matrix product was not: its rounding depended on
        the batch, so a few replayed images missed the cache and were attacked again)."""
        rows = x.detach().float().cpu().contiguous().flatten(1).numpy()
        return [hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in rows]

    def scores(self, engine: Any, x: torch.Tensor) -> torch.Tensor:
        """Robustness scores of ``x``, attacking only the images not seen before (when ``cache`` is on)."""
        if not self.cfg.cache:
            self.attacked += int(x.shape[0])
            return self.robustness(engine, x).float().cpu()
        keys = self._keys(x)
        self._attack_into_cache(engine, x, keys, [i for i, k in enumerate(keys) if k not in self._cache])
        return torch.tensor([self._cache[k] for k in keys], dtype=torch.float32)

    def _attack_into_cache(self, engine: Any, x: torch.Tensor, keys: list[bytes], todo: list[int]) -> list[float]:
        """Attack the images ``todo`` of ``x`` and cache their scores under ``keys`` (the cache is cleared
        first when it would outgrow ``CACHE_MAX``); returns the new scores."""
        if not todo:
            return []
        if len(self._cache) + len(todo) > self.CACHE_MAX:
            self._cache.clear()
        new = self.robustness(engine, x[todo]).float().cpu().tolist()
        self.attacked += len(todo)
        self._cache.update((keys[i], v) for i, v in zip(todo, new))
        return new

    def robustness(self, engine: Any, x: torch.Tensor) -> torch.Tensor:
        """Per-sample robustness score (higher = more robust); counts the PGD passes and seconds."""
        t0 = time.perf_counter()
        model = engine.teacher.model
        vr = tuple(float(v) for v in engine.spec.value_range)
        if self.cfg.measure == "kl":
            kl, passes = kl_at_eps(model, x.detach(), eps=self.cfg.eps, steps=self.cfg.pgd_steps,
                                   value_range=vr, generator=self.gen)  # type: ignore[arg-type]
            score = -torch.log10(kl + 1e-8)
        else:
            eps, _, passes = min_flip_eps(model, x.detach(), eps_max=4 * self.cfg.eps, bisection_steps=3,
                                          pgd_steps=self.cfg.pgd_steps, value_range=vr,  # type: ignore[arg-type]
                                          generator=self.gen)
            score = torch.log10(eps * 255)
        self.pgd_passes += int(passes)
        self.pgd_seconds += time.perf_counter() - t0
        if self.cfg.charge_passes:
            engine.passes += int(passes)
        return score

    @property
    def trap_seen(self) -> bool:
        """Whether recent student batches show a trap: over the last ``trap_window`` batches (this one
        included) the robust samples *collapse* -- at least ``trap_collapse`` of them in one teacher class --
        and that class's robust samples are more than ``trap_share`` of the batches. One stray bimodal batch
        does not count, and a batch whose split missed the robust mode is still treated as coming from a
        trapped teacher. A clean teacher's stray robust groups are confident samples of many classes; an NTL
        trap's are its misleading OOD label (``docs/ntl.md``). With ``trap_latch`` > 0, once a trap has been
        seen in that many student steps it stays seen for the rest of the run (:attr:`latched`)."""
        if self.latched:
            return True
        recent = self.stats[-self.cfg.trap_window:]
        if not recent:
            return False
        share = sum(r["robust_share"] for r in recent) / len(recent)
        if self.cfg.trap_collapse <= 0:
            return share > self.cfg.trap_share
        _, concentration = _top_class(recent)
        return concentration >= self.cfg.trap_collapse and share * concentration > self.cfg.trap_share

    @property
    def latched(self) -> bool:
        """``trap_latch`` > 0 and a trap has been seen in at least that many student steps. An escape that
        works moves synthesis off the trap, the robust samples thin out, the trap stops being seen and the
        trap-time measures switch off -- and synthesis falls back into the trap (held-out inverted teacher at
        150,000 passes: a trap seen in 647 of 1,490 steps, the student agreeing 100 % with the trap's labels).
        The latch is hysteresis for that loop; a clean teacher, on which no trap is ever seen, is not touched.
        Under ``attack="adaptive"`` (and ``latch_attack``) the class most robust samples fell in up to then
        (:attr:`latch_class`) is attacked in full from then on, so trap samples that come back are not passed
        over as fragile."""
        return 0 < self.cfg.trap_latch <= self._trap_steps

    @property
    def hot_classes(self) -> list[int]:
        """``attack="adaptive"``: the teacher classes whose new images are attacked in full at this point."""
        if self.cfg.attack != "adaptive" or len(self.stats) < self.cfg.warmup_steps:
            return []
        return sorted(c for c in self._flags if self._rate(c) >= 1.0)

    def summary(self) -> dict[str, Any]:
        """The run so far: student steps, steps with a trap seen, mean robust share, the class most robust
        samples fell in and its share of them, attack cost."""
        steps = len(self.stats)
        top, concentration = _top_class(self.stats)
        return {"steps": steps, "trap_steps": self._trap_steps,
                "robust_share": sum(r["robust_share"] for r in self.stats) / steps if steps else 0.0,
                "robust_top_class": top, "robust_top_share": concentration,
                "pgd_passes": self.pgd_passes, "pgd_seconds": self.pgd_seconds, "attacked": self.attacked,
                "passed_over": len(self._passed), "hot_classes": self.hot_classes, "latch_class": self.latch_class}

    @property
    def note(self) -> str:
        """One line for the distill report: the attack's cost and whether (how often) a trap was seen."""
        sm = self.summary()
        charged = "counted in the budget" if self.cfg.charge_passes else "not counted in the budget"
        seen = (f"trap seen in {sm['trap_steps']} of {sm['steps']} student steps" if sm["trap_steps"] else
                f"no trap seen in {sm['steps']} student steps (no trap-time measures)")
        if sm["robust_top_class"] is not None:
            seen += (f"; robust samples: {100 * sm['robust_top_share']:.0f}% of them in teacher class "
                     f"{sm['robust_top_class']}")
        if self.cfg.attack == "adaptive":
            hot = ", ".join(map(str, self.hot_classes)) or "none"
            seen += (f"; adaptive attack: {sm['passed_over']} new images passed over, classes attacked in full at "
                     f"the end: {hot}")
        if sm["latch_class"] is not None:
            seen += f"; trap latched after {self.cfg.trap_latch} trap steps (class {sm['latch_class']})"
        return (f"{seen}; mean robust share {100 * sm['robust_share']:.1f}%; PGD attack {sm['pgd_passes']} "
                f"teacher passes on {sm['attacked']} images ({charged}), {sm['pgd_seconds']:.0f} s")

    def generator_loss(self, ctx: BatchContext) -> torch.Tensor | None:
        if ctx.phase != "generator":
            return None
        loss = ESCAPE.get(self.cfg.escape)(ctx, self)
        prior = self._bn_prior_change(ctx)
        if prior is not None:
            loss = prior if loss is None else loss + prior
        return loss

    def _bn_prior_change(self, ctx: BatchContext) -> torch.Tensor | None:
        """Once a trap is seen, ``(trap_bn_scale - 1) * w_bn * L_bn``: the engine's BN prior then counts
        ``trap_bn_scale`` times its weight. The running BN statistics of an NTL teacher were collected on
        mixed ID and OOD batches, so the prior itself pulls synthesis into the trap. The engine's config
        is not touched (a checkpoint stays resumable); nothing changes on a teacher without a trap."""
        scale = self.cfg.trap_bn_scale
        if scale == 1.0 or not self.trap_seen:
            return None
        weight = ctx.engine.config.active_terms().get("bn")
        taps = getattr(ctx.engine, "taps", None)
        prior = bn_prior(taps) if weight and taps is not None else None
        return None if prior is None else (scale - 1.0) * weight * prior

    def _rate(self, cls: int) -> float:
        """``attack="adaptive"``: the share of new images of teacher class ``cls`` to attack. Everything during
        the warm-up and for a class with fewer than ``class_min`` attacked images; after that everything
        for a *hot* class (robust share of its newest ``class_min`` attacked images above ``trap_share``)
        and ``monitor_share`` for the others."""
        cfg = self.cfg
        flags = self._flags.get(cls, [])
        latch_full = cfg.latch_attack and cls == self.latch_class
        if len(self.stats) < cfg.warmup_steps or len(flags) < cfg.class_min or latch_full:
            return 1.0
        return 1.0 if sum(flags) / len(flags) > cfg.trap_share else cfg.monitor_share

    def _adaptive_scores(self, engine: Any, x: torch.Tensor, t_logits: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """Scores of ``x`` under ``attack="adaptive"`` (NaN = not attacked) and the indices attacked now.
        An image passed over once is attacked when it comes back while its class is hot."""
        keys = self._keys(x)
        cls = t_logits.detach().argmax(1).tolist()
        draw = torch.rand(len(keys), generator=self.draw_gen).tolist()
        todo, passed = [], []
        for i, k in enumerate(keys):
            if k in self._cache:
                continue
            rate = self._rate(cls[i])
            if rate >= 1.0 or (k not in self._passed and draw[i] < rate):
                todo.append(i)
            else:
                passed.append(k)
        self._passed.update(passed)
        if len(self._passed) > self.CACHE_MAX:
            self._passed.clear()
        new = self._attack_into_cache(engine, x, keys, todo)
        if new:
            self._pool = (self._pool + new)[-self.cfg.monitor_pool:]
        return torch.tensor([self._cache.get(k, math.nan) for k in keys], dtype=torch.float32), todo

    def _split(self, ctx: BatchContext) -> tuple[torch.Tensor, float, float]:
        """Robust mask of the batch, its share and the threshold used. ``every``: all of the batch is scored
        and split. ``adaptive``: the scored images are split when there are at least ``split_min`` of
        them; fewer are compared with the threshold learned from the pool of the newest ``monitor_pool``
        attacked images (a mixture fit on a few images finds stray robust groups, ``docs/ntl.md``); an
        image not attacked counts as fragile."""
        cfg = self.cfg
        opts = {"method": cfg.split, "min_separation": cfg.min_separation, "min_gap": cfg.min_gap}
        if cfg.attack == "every":
            sp = robust_split(self.scores(ctx.engine, ctx.x), **opts)
            return sp.robust.to(ctx.x.device), sp.share, sp.threshold
        score, todo = self._adaptive_scores(ctx.engine, ctx.x, ctx.t_logits)
        scored = ~torch.isnan(score)
        if int(scored.sum()) >= cfg.split_min:
            thr = robust_split(score[scored], **opts).threshold
        else:
            thr = robust_split(torch.tensor(self._pool), **opts).threshold if len(self._pool) >= cfg.split_min \
                else math.inf
        robust = scored & (score > thr)
        cls = ctx.t_logits.detach().argmax(1).tolist()
        for i in todo:  # the class tallies that set the attack rates
            self._flags[cls[i]] = (self._flags.get(cls[i], []) + [bool(robust[i])])[-cfg.class_min:]
        return robust.to(ctx.x.device), float(robust.float().mean()), thr

    def student_loss(self, ctx: BatchContext) -> torch.Tensor | None:
        if ctx.phase != "student" or ctx.s_logits is None:
            return None
        cfg = self.cfg
        robust, share, thr = self._split(ctx)
        cls = ctx.t_logits.detach().argmax(1)[robust.to(ctx.t_logits.device)].tolist()
        self.stats.append({"step": float(ctx.step), "robust_share": share,
                           "threshold": thr if math.isfinite(thr) else float("nan"),
                           "robust_classes": dict(Counter(cls))})
        trapped = self.trap_seen  # this batch included
        self.stats[-1]["trap"] = float(trapped)
        self._trap_steps += int(trapped)
        if self.latched and self.latch_class is None:
            self.latch_class = _top_class(self.stats)[0]
        fragile = ~robust
        s, t = ctx.s_logits, ctx.t_logits
        loss = s.sum() * 0.0
        if fragile.any():
            tf, sf = t[fragile], s[fragile]
            if cfg.kd_weight == "balanced" and trapped:
                kd = (kd_per_sample(tf, sf, ctx.engine.config.temperature) * class_balanced_weights(tf)).mean()
            else:
                kd = ctx.engine.kd_loss(tf, sf)
            loss = loss + kd * fragile.float().mean()
        forget = cfg.forget_trap if cfg.forget_trap is not None and trapped else cfg.forget
        if robust.any():
            self._remember(ctx.x[robust], t[robust])
            gate = robust & GATE.get(cfg.forget_gate if trapped else "all")(s.detach(), t)
            loss = loss + cfg.lam * self._forget_on(forget, s, t, gate)
        if trapped and cfg.trap_replay and self.mem_x is not None and ctx.student is not None:
            loss = loss + cfg.lam * cfg.replay_weight * self._replay(ctx, cfg.replay_forget or forget)
        ctx.extra["atesc_robust_share"] = share
        return loss

    def _remember(self, x: torch.Tensor, t: torch.Tensor) -> None:
        """Keep up to ``trap_memory`` robust samples (newest first out when full): the trap is seen in
        bursts, and the student should keep forgetting it between bursts."""
        if not self.cfg.trap_memory:
            return
        x, t = x.detach().cpu(), t.detach().float().cpu()
        if self.mem_x is None or self.mem_t is None:
            self.mem_x, self.mem_t = x, t
        else:
            self.mem_x, self.mem_t = torch.cat([self.mem_x, x]), torch.cat([self.mem_t, t])
        self.mem_x, self.mem_t = self.mem_x[-self.cfg.trap_memory:], self.mem_t[-self.cfg.trap_memory:]

    def _replay(self, ctx: BatchContext, forget: str) -> torch.Tensor:
        """The forgetting loss on ``trap_replay`` remembered robust samples (student passes only: the
        teacher's answers were stored with them). The student stays in train mode, like for its own batch;
        in eval mode (BN statistics untouched by the replay) the replay was measured to do much less
        (``docs/ntl.md``)."""
        assert self.mem_x is not None and self.mem_t is not None and ctx.student is not None
        n = self.mem_x.shape[0]
        idx = torch.randint(n, (min(n, self.cfg.trap_replay),), generator=self.gen)
        dev = ctx.x.device
        s, t = ctx.student(self.mem_x[idx].to(dev)), self.mem_t[idx].to(dev)
        return self._forget_on(forget, s, t, GATE.get(self.cfg.replay_gate)(s.detach(), t))

    def _forget_on(self, forget: str, s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The forgetting loss ``forget`` on the rows ``mask`` selects, weighted by their share of the rows
        (zero when it selects none)."""
        if not mask.any():
            return s.sum() * 0.0
        return FORGET.get(forget)(s[mask], t[mask], self.cfg) * mask.float().mean()

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state(), "draw_gen": self.draw_gen.get_state(), "stats": list(self.stats),
                "cache": dict(self._cache),
                "attacked": self.attacked, "pgd_passes": self.pgd_passes,
                "pgd_seconds": self.pgd_seconds, "mem_x": self.mem_x, "mem_t": self.mem_t,
                "flags": {int(c): list(f) for c, f in self._flags.items()}, "pool": list(self._pool),
                "passed": list(self._passed), "latch_class": self.latch_class}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"])
        if "draw_gen" in state:  # checkpoints written before session 16 had one generator
            self.draw_gen.set_state(state["draw_gen"])
        self.stats = list(state.get("stats", []))
        self._trap_steps = int(sum(bool(r.get("trap")) for r in self.stats))
        # checkpoints written before session 19 have no latch class: a run already past the latch takes the
        # top robust class of all its steps at its next student step
        self.latch_class = state.get("latch_class")
        # keys of checkpoints written before the digest keys were floats; they would never match
        self._cache = {k: v for k, v in state.get("cache", {}).items() if isinstance(k, bytes)}
        self.attacked = int(state.get("attacked", 0))
        self.pgd_passes = int(state.get("pgd_passes", 0))
        self.pgd_seconds = float(state.get("pgd_seconds", 0.0))
        self.mem_x, self.mem_t = state.get("mem_x"), state.get("mem_t")
        self._flags = {int(c): [bool(v) for v in f] for c, f in state.get("flags", {}).items()}
        self._pool = [float(v) for v in state.get("pool", [])]
        self._passed = {k for k in state.get("passed", []) if isinstance(k, bytes)}


@DEFENSES.register("atesc", summary="ATEsc (Hong et al., ICML 2025): KD on fragile, forgetting on robust samples")
def atesc(teacher: Any, engine: Any, **options: Any) -> list[Hook]:
    """Build the ATEsc hook; ``options`` are :class:`ATEscConfig` fields (unknown ones are refused)."""
    known = {f.name for f in fields(ATEscConfig)}
    bad = sorted(set(options) - known)
    if bad:
        raise UsageError(f"atesc: unknown option(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
    return [ATEscHook(ATEscConfig(**options))]


__all__ = ["ATEscConfig", "ATEscHook", "ESCAPE", "FORGET", "GATE", "atesc", "asdict"]
