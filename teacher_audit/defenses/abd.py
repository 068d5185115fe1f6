"""ABD: Anti-Backdoor data-free KD (Hong et al., "Revisiting Data-Free Knowledge Distillation with
Poisoned Teachers", ICML 2023), as two engine hooks.

Threat: the teacher may carry an all-to-one backdoor; data-free KD would transfer it because the
generator drifts towards trigger-like features. Nothing here needs data.

1. **Shuffling Vaccine (SV)** — generator side (:class:`ShufflingVaccine`). A suspect ensemble
   (``teacher_audit.probes.shuffle``: input channels of the last ``n_layers`` conv layers permuted,
   BN and classifier untouched, ``n_models`` copies) agrees with the teacher mostly on trigger-like
   samples. The generator loss gains ``- coef * mean_s KL(T(x) || suspect_s(x))``, pushing G away
   from them. Self-check: the first ``check_batches`` generator batches are cached; the tail ratio
   (share of samples with log10 KL below mean - 3 std) must exceed ``tail_min`` (0.02) for SV to
   switch on; otherwise the suspects are re-shuffled (up to ``max_tries`` = 8) and the check is
   repeated on the cached batches; if no shuffle passes, SV stays off and says so.
2. **Self-Retrospection (SR)** — student side, after ``sr_start`` of the budget
   (:class:`SelfRetrospection`). Every ``search_every`` student steps a trigger is synthesised from
   the teacher on the synthetic batch (``delta_steps`` Adam steps of lr ``delta_lr``, warm-started;
   ``warmup`` steps the first time); its teacher passes count against the budget. The trigger's form
   is a registry entry (``teacher_audit.defenses.sr_triggers``): ``trigger="additive"`` (the paper's:
   one image maximising KL(T(x + delta) || T(x))) or ``"nc"`` (default: one Neural-Cleanse mask +
   pattern per class, the ``targets`` classes with the smallest masks are stamped; the mask is widened
   — ``mask_gain``, max-pool ``dilate`` — and with ``fill="mixed"`` every second sample gets random
   black/white content in the region, because the smallest flipping mask on synthetic samples is only
   part of the real trigger) or ``"sweep"`` (a hard patch picked without gradients from a fixed set of
   candidates: the one sending most dead-leaves pictures at the teacher's mean/sd into one class; found
   once, its passes counted; an option measured on patch backdoors, docs/backdoor.md). Then the student is
   updated with
   ``mode="plain"`` (default): KD + ``plain_weight`` * KL(ref || S(x')) on stamped samples x', where
   ref is the teacher on the clean sample (``anchor="teacher"``, default) or the student
   (``anchor="student"``, the paper's plain variant; an additive delta is then clipped to an L2 ball of
   radius ``plain_radius`` * sqrt(C*H*W) * range width); or ``mode="hyper"``, the paper's: the implicit
   hypergradient of the KD loss on a batch in which a share ``poison_share`` of samples carries
   theta*(student) = argmin -KL(S(x') || S(x)) + ``reg`` * size (``inner_steps`` gradient steps of size
   ``inner_lr`` from the teacher's trigger, inverse Hessian by ``neumann_steps`` Neumann iterations).
   ``search_model`` = ``student``/``both`` searches triggers on the student (measured worse, kept as
   options). ``variant="paper"`` restores the paper's SR settings (:data:`PAPER_SR`).

Options are passed through ``DEFENSES.get("abd")(teacher, engine, **options)`` (CLI:
``distill --defense abd``); every option has the default listed in :class:`ABDConfig`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from teacher_audit.defenses.base import DEFENSES
from teacher_audit.defenses.sr_triggers import (SR_TRIGGERS, AdditiveTrigger, ClassTriggers, MaskTrigger, SRTrigger,
                                                 SweepTrigger, kl_rows)
from teacher_audit.errors import UsageError
from teacher_audit.modes import EvalMode
from teacher_audit.probes.shuffle import Suspect, suspect_ensemble
from teacher_audit.synth.hooks import BatchContext, Hook
from teacher_audit.synth.procedural import spec_moments


@dataclass
class ABDConfig:
    """Options of the ABD defense (see module docstring); :data:`PAPER_SR` lists the paper's SR settings."""

    variant: str = "default"
    sv: bool = True
    coef: float = 0.1
    n_layers: int = 5
    n_models: int = 3
    check_batches: int = 10
    tail_min: float = 0.02
    tail_sigma: float = 3.0
    max_tries: int = 8
    sr: bool = True
    mode: str = "plain"
    sr_start: float = 0.5
    budget_passes: int | None = None
    trigger: str = "nc"
    anchor: str = "teacher"
    delta_lr: float = 0.1
    delta_steps: int = 3
    delta_samples: int = 64
    search_every: int = 10
    warmup: int = 60
    search_model: str = "teacher"
    per_target: int = 8
    targets: int = 1
    mask_init: float = -3.0
    mask_lam: float = 1.0
    flip_goal: float = 0.8
    mask_gain: float = 2.0
    dilate: int = 3
    fill: str = "mixed"
    hard: bool = False
    max_mask: float = 1.0
    min_anomaly: float = 0.0
    plain_weight: float = 2.0
    plain_radius: float = 0.1
    poison_share: float = 0.02
    reg: float = 1e-3
    inner_steps: int = 3
    inner_lr: float = 0.1
    neumann_steps: int = 5
    seed: int = 0


#: ``variant="paper"``: Self-Retrospection as the ABD paper describes it (universal additive trigger from
#: the teacher every student step, implicit hypergradient, final phase, 2 % of the batch); explicit
#: options still win. The default variant is ours, chosen on the zoo (docs/backdoor.md).
PAPER_SR: dict[str, Any] = {"mode": "hyper", "sr_start": 0.8, "trigger": "additive", "anchor": "student",
                            "search_every": 1, "warmup": 0, "targets": 0, "mask_gain": 1.0, "dilate": 1,
                            "fill": "pattern", "plain_weight": 0.5}


class ShufflingVaccine(Hook):
    """Generator-loss hook: push synthetic samples away from teacher/suspect agreement."""

    def __init__(self, teacher_model: nn.Module, cfg: ABDConfig):
        self.model = teacher_model
        self.cfg = cfg
        self.suspects: list[Suspect] | None = None
        self.cache: list[torch.Tensor] = []
        self.tries = 0
        self.active = False
        self.decided = False
        self.tail_ratios: list[float] = []
        self.note = ""

    def _shuffle(self, example: torch.Tensor) -> None:
        self.suspects = suspect_ensemble(self.model, example[:2].detach(), self.cfg.n_models, self.cfg.n_layers,
                                         seed=self.cfg.seed + 1000 * self.tries)
        self.tries += 1

    def _suspect_logits(self, x: torch.Tensor) -> torch.Tensor:
        assert self.suspects is not None
        return torch.stack([s.model(x) for s in self.suspects])

    def tail_ratio(self, x: torch.Tensor) -> float:
        """ABD's self-check on cached samples with the current suspects."""
        with torch.no_grad():
            t = self.model(x)
            kl = torch.stack([kl_rows(t, s) for s in self._suspect_logits(x)]).mean(0)
        lk = torch.log10(kl.clamp_min(1e-12))
        return float((lk < lk.mean() - self.cfg.tail_sigma * lk.std()).float().mean())

    def _decide(self) -> None:
        x = torch.cat(self.cache)
        while True:
            tr = self.tail_ratio(x)
            self.tail_ratios.append(tr)
            if tr > self.cfg.tail_min:
                self.active = True
                self.note = f"shuffling vaccine on (tail ratio {tr:.3f} after {self.tries} shuffle(s))"
                break
            if self.tries >= self.cfg.max_tries:
                self.note = f"shuffling vaccine off: tail ratio <= {self.cfg.tail_min} after {self.tries} shuffles"
                break
            self._shuffle(x)
        self.decided = True
        self.cache = []

    def generator_loss(self, ctx: BatchContext) -> torch.Tensor | None:
        if ctx.phase != "generator" or not self.cfg.sv:
            return None
        if self.suspects is None:
            self._shuffle(ctx.x)
        if not self.decided:
            self.cache.append(ctx.x.detach())
            if len(self.cache) >= self.cfg.check_batches:
                self._decide()
            return None
        if not self.active:
            return None
        kl = torch.stack([kl_rows(ctx.t_logits, s).mean() for s in self._suspect_logits(ctx.x)]).mean()
        return -self.cfg.coef * kl

    def state_dict(self) -> dict[str, Any]:
        return {"tries": self.tries, "active": self.active, "decided": self.decided,
                "tail_ratios": list(self.tail_ratios), "note": self.note}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # the suspects are rebuilt lazily from the seed of the last shuffle (same permutations)
        self.tries = max(0, int(state.get("tries", 0)) - 1)
        self.suspects = None
        self.active, self.decided = bool(state.get("active")), bool(state.get("decided"))
        self.tail_ratios, self.note = list(state.get("tail_ratios", [])), str(state.get("note", ""))


def implicit_hypergrad(outer: Callable[[torch.Tensor], torch.Tensor], inner: Callable[[torch.Tensor], torch.Tensor],
                       delta: torch.Tensor, params: Sequence[torch.Tensor], neumann_steps: int, alpha: float
                       ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Total derivative of ``outer(delta*(theta))`` w.r.t. ``params`` at a stationary point ``delta`` of ``inner``.

    Implicit function theorem: d delta*/d theta = -H^-1 d^2 g/(d delta d theta) with H = d^2 g/d delta^2,
    so the hypergradient is ``d f/d theta - (d^2 g/(d theta d delta)) p`` with ``p = H^-1 d f/d delta``,
    ``p`` approximated by the Neumann series ``alpha * sum_{i<=K} (I - alpha H)^i v`` (fixed-point
    iterations, Lorraine et al. 2020). ``outer``/``inner`` map delta to scalars and may depend on
    ``params`` directly; ``params`` must require grad. Returns the hypergradient (one tensor per
    parameter) and the detached value of ``outer``.
    """
    delta = delta.detach().requires_grad_(True)
    f = outer(delta)
    df_dd, *df_dp = torch.autograd.grad(f, [delta, *params], allow_unused=True)
    g = inner(delta)
    dg_dd = torch.autograd.grad(g, delta, create_graph=True)[0]
    v = df_dd.detach()
    p = v.clone()
    for _ in range(neumann_steps):
        hv = torch.autograd.grad(dg_dd, delta, grad_outputs=v, retain_graph=True)[0]
        v = v - alpha * hv
        p = p + v
    p = alpha * p
    mixed = torch.autograd.grad(dg_dd, params, grad_outputs=p, allow_unused=True)
    out = []
    for prm, a, b in zip(params, df_dp, mixed):
        a = torch.zeros_like(prm) if a is None else a
        b = torch.zeros_like(prm) if b is None else b
        out.append(a - b)
    return out, f.detach()


class SelfRetrospection(Hook):
    """Student-loss hook: make the student ignore synthesised triggers in the final phase."""

    def __init__(self, cfg: ABDConfig, num_classes: int = 10):
        self.cfg = cfg
        self.num_classes = num_classes
        self.trigger: SRTrigger | None = None
        self.s_trigger: SRTrigger | None = None
        self.steps = 0
        self._pending: dict[str, Any] | None = None
        self._pending_s: dict[str, Any] | None = None

    @property
    def delta(self) -> torch.Tensor | None:
        """The current synthesised trigger's packed parameters (``None`` before SR started)."""
        return None if self.trigger is None else self.trigger.theta

    @property
    def stamp(self) -> SRTrigger:
        """The trigger stamped on the student's samples (the student's own with ``search_model=both``)."""
        trig = self.s_trigger if self.cfg.search_model == "both" else self.trigger
        assert trig is not None
        return trig

    @property
    def note(self) -> str:
        if self.trigger is None:
            return "self-retrospection not started"
        trig = self.trigger
        extra = f", mask {100 * trig.mask_share():.1f}% of the image" if isinstance(trig, MaskTrigger) else ""
        if isinstance(trig, SweepTrigger) and trig.found is not None:
            extra += f" (patch {trig.found} sends {100 * trig.last_flip:.0f}% of the pictures to class {trig.found_class})"
        return f"self-retrospection: {self.steps} steps, {self.cfg.mode}, {self.cfg.trigger} trigger{extra}"

    def _started(self, ctx: BatchContext) -> bool:
        """After ``sr_start`` of the budget: of ``budget_passes`` when given, else of the running
        engine's own budget (passes or seconds, whichever ``Engine.run`` was given)."""
        eng = ctx.engine
        if self.cfg.budget_passes:
            return eng.passes >= self.cfg.sr_start * self.cfg.budget_passes
        share = getattr(eng, "budget_share", None)
        if share is not None:
            return share >= self.cfg.sr_start
        budget = getattr(getattr(eng, "config", None), "budget_passes", None)
        return not budget or eng.passes >= self.cfg.sr_start * budget

    def _make_trigger(self, x: torch.Tensor, lo: float, hi: float, spec: Any = None) -> SRTrigger:
        cfg = self.cfg
        extra: dict[str, Any] = {"num_classes": self.num_classes} if cfg.trigger == "nc" else {}
        if cfg.trigger == "sweep":
            extra = {"moments": None if spec is None else spec_moments(spec)}
        trig = SR_TRIGGERS.get(cfg.trigger)(tuple(x.shape[1:]), lo, hi, cfg.seed, mask_init=cfg.mask_init,
                                            lam=cfg.mask_lam, flip_goal=cfg.flip_goal, targets=cfg.targets,
                                            per_target=cfg.per_target, max_mask=cfg.max_mask,
                                            mask_gain=cfg.mask_gain, dilate=cfg.dilate, fill=cfg.fill, hard=cfg.hard,
                                            min_anomaly=cfg.min_anomaly, **extra)
        trig.theta = trig.theta.to(x.device)
        if self._pending is not None:
            trig.load_state_dict(self._pending)
            self._pending = None
        return trig

    def student_loss(self, ctx: BatchContext) -> torch.Tensor | None:
        if ctx.phase != "student" or not self.cfg.sr or ctx.student is None or not self._started(ctx):
            return None
        cfg, eng, student = self.cfg, ctx.engine, ctx.student
        lo, hi = (float(v) for v in eng.spec.value_range)
        x, t = ctx.x.detach(), ctx.t_logits.detach()
        xs = x[: cfg.delta_samples]
        if self.trigger is None:
            self.trigger = self._make_trigger(x, lo, hi, eng.spec)
        if cfg.search_model == "both" and self.s_trigger is None:
            self.s_trigger = self._make_trigger(x, lo, hi, eng.spec)
            if self._pending_s is not None:
                self.s_trigger.load_state_dict(self._pending_s)
                self._pending_s = None
        if self.steps % cfg.search_every == 0:
            n_steps = cfg.warmup if self.steps == 0 and cfg.warmup else cfg.delta_steps
            if cfg.search_model in ("teacher", "both"):
                eng.passes += self.trigger.search(eng.teacher.model, xs, n_steps, cfg.delta_lr)
            if cfg.search_model == "both":  # the teacher picks the classes, the student's own triggers are stamped
                assert isinstance(self.trigger, ClassTriggers) and isinstance(self.s_trigger, ClassTriggers)
                self.s_trigger.options["allowed"] = self.trigger.top()
            if cfg.search_model in ("student", "both"):  # retrospection on the student itself: no teacher passes
                with EvalMode(student):
                    self.stamp.search(student, xs, n_steps, cfg.delta_lr)
        elif isinstance(self.stamp, ClassTriggers):
            with torch.no_grad():
                self.stamp.draw(t[: xs.shape[0]].argmax(1))
        self.steps += 1
        if cfg.mode == "plain":
            return self._plain(ctx, t, xs)
        return self._hyper(ctx, student, x, t, xs, lo, hi)

    def _plain(self, ctx: BatchContext, t: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        assert ctx.s_logits is not None and ctx.student is not None
        trig = self.stamp
        theta = trig.theta
        if isinstance(trig, ClassTriggers) and trig.assign is None:  # no trigger small enough to unlearn
            return ctx.engine.kd_loss(t, ctx.s_logits)
        if isinstance(trig, AdditiveTrigger):  # the paper's plain variant bounds ||delta||
            lo, hi = trig.lo, trig.hi
            radius = self.cfg.plain_radius * (hi - lo) * float(theta[0].numel()) ** 0.5
            theta = theta * torch.clamp(radius / theta.norm().clamp_min(1e-12), max=1.0)
        s_adv = ctx.student(trig.apply(xs, theta))
        ref = t[: xs.shape[0]] if self.cfg.anchor == "teacher" else ctx.s_logits[: xs.shape[0]].detach()
        retro = kl_rows(ref, s_adv).mean()
        return ctx.engine.kd_loss(t, ctx.s_logits) + self.cfg.plain_weight * retro

    def _hyper(self, ctx: BatchContext, student: nn.Module, x: torch.Tensor, t: torch.Tensor, xs: torch.Tensor,
               lo: float, hi: float) -> torch.Tensor:
        cfg, trig = self.cfg, self.stamp
        if isinstance(trig, ClassTriggers) and trig.assign is None:  # no trigger small enough to unlearn
            return ctx.engine.kd_loss(t, ctx.s_logits if ctx.s_logits is not None else student(x))
        params = [p for p in student.parameters() if p.requires_grad]
        m = max(1, int(round(cfg.poison_share * x.shape[0])))

        def inner(theta: torch.Tensor) -> torch.Tensor:
            with EvalMode(student):
                ref = student(xs)
                return -kl_rows(student(trig.apply(xs, theta)), ref).mean() + cfg.reg * trig.size(theta)

        theta = trig.theta.clone()
        for _ in range(cfg.inner_steps):  # theta*(student): a few descent steps from the teacher's trigger
            d = theta.detach().requires_grad_(True)
            grad = torch.autograd.grad(inner(d), d)[0]
            theta = d - cfg.inner_lr * grad
            if isinstance(trig, AdditiveTrigger):
                theta = theta.clamp(lo - hi, hi - lo)
            theta = theta.detach()

        def outer(theta: torch.Tensor) -> torch.Tensor:
            xm = torch.cat([trig.apply(x[:m], theta), x[m:]])
            return ctx.engine.kd_loss(t, student(xm))

        hg, value = implicit_hypergrad(outer, inner, theta, params, cfg.neumann_steps, cfg.inner_lr)
        surrogate = sum((p * g.detach()).sum() for p, g in zip(params, hg))
        return value + surrogate - surrogate.detach()

    def state_dict(self) -> dict[str, Any]:
        return {"trigger": None if self.trigger is None else self.trigger.state_dict(), "steps": self.steps,
                "s_trigger": None if self.s_trigger is None else self.s_trigger.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # the trigger is rebuilt at the next SR step (it needs the batch's device and shape)
        self._pending = state.get("trigger") or ({"theta": state["delta"]} if state.get("delta") is not None else None)
        self._pending_s = state.get("s_trigger")
        self.trigger = self.s_trigger = None
        self.steps = int(state.get("steps", 0))


def parse_options(options: dict[str, Any]) -> ABDConfig:
    """ABDConfig from keyword options; unknown names or bad values are a usage error."""
    known = {f.name: f for f in fields(ABDConfig)}
    bad = sorted(set(options) - set(known))
    if bad:
        raise UsageError(f"unknown abd option(s): {', '.join(bad)}; known: {', '.join(sorted(known))}")
    variant = options.get("variant", "default")
    if variant not in ("default", "paper"):
        raise UsageError(f"abd variant must be 'default' or 'paper', got {variant!r}")
    cfg = ABDConfig(**{**(PAPER_SR if variant == "paper" else {}), **options})
    if cfg.fill not in ("pattern", "mixed", "solid"):
        raise UsageError(f"abd fill must be 'pattern', 'mixed' or 'solid', got {cfg.fill!r}")
    if cfg.mode not in ("hyper", "plain"):
        raise UsageError(f"abd mode must be 'hyper' or 'plain', got {cfg.mode!r}")
    if cfg.trigger not in SR_TRIGGERS:
        raise UsageError(f"abd trigger must be one of {', '.join(SR_TRIGGERS.names())}, got {cfg.trigger!r}")
    if cfg.search_every < 1:
        raise UsageError("abd search_every must be >= 1")
    if cfg.search_model not in ("teacher", "student", "both"):
        raise UsageError(f"abd search_model must be 'teacher', 'student' or 'both', got {cfg.search_model!r}")
    if cfg.search_model == "both" and cfg.trigger != "nc":
        raise UsageError("abd search_model=both needs trigger=nc (the teacher picks classes for the student's triggers)")
    if cfg.anchor not in ("student", "teacher"):
        raise UsageError(f"abd anchor must be 'student' or 'teacher', got {cfg.anchor!r}")
    if not 0.0 <= cfg.sr_start <= 1.0 or not 0.0 < cfg.poison_share <= 1.0:
        raise UsageError("abd sr_start must be in [0, 1] and poison_share in (0, 1]")
    return cfg


@DEFENSES.register("abd", summary="ABD (Hong et al., ICML 2023): shuffling vaccine + self-retrospection")
def abd_defense(teacher: Any, engine: Any, **options: Any) -> list[Hook]:
    """Build the ABD hooks for ``engine.run(hooks=...)``.

    Args:
        teacher: the loaded :class:`~teacher_audit.teacher.Teacher`.
        engine: the :class:`~teacher_audit.synth.Engine` that will run (its budget sets SR's start).
        **options: :class:`ABDConfig` fields, e.g. ``mode="plain"``, ``sv=False``.

    Returns:
        ``[ShufflingVaccine, SelfRetrospection]`` (a disabled part is still returned; it stays inert).
    """
    cfg = parse_options(options)
    return [ShufflingVaccine(teacher.model, cfg), SelfRetrospection(cfg, teacher.spec.num_classes)]
