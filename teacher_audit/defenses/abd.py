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
2. **Self-Retrospection (SR)** — student side, in the final phase (after ``sr_start`` of the budget,
   :class:`SelfRetrospection`). Each student step: find a universal perturbation delta maximising
   KL(T(x + delta) || T(x)) (Adam, lr ``delta_lr``, ``delta_steps`` steps, warm-started from the
   previous step's delta) — a synthesised trigger. Then the student is updated with
   ``mode="hyper"``: the implicit hypergradient of the KD loss on a batch in which a share
   ``poison_share`` of samples carries delta*(theta) = argmin_delta -KL(S(x+delta) || S(x)) +
   ``reg`` ||delta||^2 (inner problem solved by ``inner_steps`` gradient steps of size
   ``inner_lr``, inverse Hessian by ``neumann_steps`` Neumann fixed-point iterations, as in the
   paper); or with ``mode="plain"`` (cheaper): KD + ``plain_weight`` * KL(S(x) || S(x + delta)), delta
   clipped to an L2 ball of radius ``plain_radius`` * sqrt(C*H*W) * (range width).

Options are passed through ``DEFENSES.get("abd")(teacher, engine, **options)`` (CLI:
``distill --defense abd``); every option has the default listed in :class:`ABDConfig`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from teacher_audit.defenses.base import DEFENSES
from teacher_audit.errors import UsageError
from teacher_audit.probes.shuffle import Suspect, suspect_ensemble
from teacher_audit.synth.hooks import BatchContext, Hook


@dataclass
class ABDConfig:
    """Options of the ABD defense (see module docstring)."""

    sv: bool = True
    coef: float = 0.1
    n_layers: int = 5
    n_models: int = 3
    check_batches: int = 10
    tail_min: float = 0.02
    tail_sigma: float = 3.0
    max_tries: int = 8
    sr: bool = True
    mode: str = "hyper"
    sr_start: float = 0.8
    budget_passes: int | None = None
    delta_lr: float = 0.1
    delta_steps: int = 3
    delta_samples: int = 64
    poison_share: float = 0.02
    reg: float = 1e-3
    inner_steps: int = 3
    inner_lr: float = 0.1
    neumann_steps: int = 5
    plain_weight: float = 0.5
    plain_radius: float = 0.1
    seed: int = 0


def kl_rows(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(p) || softmax(q)) per row."""
    lp = torch.log_softmax(p_logits.float(), 1)
    return (lp.exp() * (lp - torch.log_softmax(q_logits.float(), 1))).sum(1)


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


def universal_delta(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, init: torch.Tensor,
                    steps: int, lr: float, lo: float, hi: float) -> torch.Tensor:
    """A perturbation (one image) maximising KL(model(x + delta) || model(x)) — a synthesised trigger."""
    delta = init.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([delta], lr=lr)
    with torch.no_grad():
        ref = model(x)
    for _ in range(steps):
        loss = -kl_rows(model((x + delta).clamp(lo, hi)), ref).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            delta.clamp_(lo - hi, hi - lo)
    return delta.detach()


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


class _EvalMode:
    """Context: module in eval mode (BN running statistics untouched by perturbed samples)."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.was = module.training

    def __enter__(self) -> nn.Module:
        self.module.eval()
        return self.module

    def __exit__(self, *exc: Any) -> None:
        self.module.train(self.was)


class SelfRetrospection(Hook):
    """Student-loss hook: make the student ignore synthesised triggers in the final phase."""

    def __init__(self, cfg: ABDConfig):
        self.cfg = cfg
        self.delta: torch.Tensor | None = None
        self.steps = 0
        self.delta_norms: list[float] = []

    def _started(self, ctx: BatchContext) -> bool:
        eng = ctx.engine
        budget = self.cfg.budget_passes or getattr(getattr(eng, "config", None), "budget_passes", None)
        return not budget or eng.passes >= self.cfg.sr_start * budget

    def student_loss(self, ctx: BatchContext) -> torch.Tensor | None:
        if ctx.phase != "student" or not self.cfg.sr or ctx.student is None or not self._started(ctx):
            return None
        cfg, eng, student = self.cfg, ctx.engine, ctx.student
        lo, hi = (float(v) for v in eng.spec.value_range)
        x, t = ctx.x.detach(), ctx.t_logits.detach()
        xs = x[: cfg.delta_samples]
        if self.delta is None:
            g = torch.Generator().manual_seed(cfg.seed)
            self.delta = (torch.randn((1, *x.shape[1:]), generator=g) * 0.01 * (hi - lo)).to(x.device)
        self.delta = universal_delta(eng.teacher.model, xs, self.delta, cfg.delta_steps, cfg.delta_lr, lo, hi)
        eng.passes += xs.shape[0] * (cfg.delta_steps + 1)
        self.delta_norms.append(float(self.delta.norm()))
        self.steps += 1
        if cfg.mode == "plain":
            return self._plain(ctx, x, t, xs, lo, hi)
        return self._hyper(ctx, student, x, t, xs, lo, hi)

    def _plain(self, ctx: BatchContext, x: torch.Tensor, t: torch.Tensor, xs: torch.Tensor, lo: float,
               hi: float) -> torch.Tensor:
        assert self.delta is not None and ctx.s_logits is not None and ctx.student is not None
        radius = self.cfg.plain_radius * (hi - lo) * float(self.delta[0].numel()) ** 0.5
        d = self.delta * torch.clamp(radius / self.delta.norm().clamp_min(1e-12), max=1.0)
        s_adv = ctx.student((xs + d).clamp(lo, hi))
        retro = kl_rows(ctx.s_logits[: xs.shape[0]].detach(), s_adv).mean()
        return ctx.engine.kd_loss(t, ctx.s_logits) + self.cfg.plain_weight * retro

    def _hyper(self, ctx: BatchContext, student: nn.Module, x: torch.Tensor, t: torch.Tensor, xs: torch.Tensor,
               lo: float, hi: float) -> torch.Tensor:
        cfg = self.cfg
        assert self.delta is not None
        params = [p for p in student.parameters() if p.requires_grad]
        m = max(1, int(round(cfg.poison_share * x.shape[0])))

        def inner(delta: torch.Tensor) -> torch.Tensor:
            with _EvalMode(student):
                ref = student(xs)
                return -kl_rows(student((xs + delta).clamp(lo, hi)), ref).mean() + cfg.reg * delta.pow(2).sum()

        delta = self.delta.clone()
        for _ in range(cfg.inner_steps):  # delta*(theta): a few descent steps from the teacher's trigger
            d = delta.detach().requires_grad_(True)
            grad = torch.autograd.grad(inner(d), d)[0]
            delta = (d - cfg.inner_lr * grad).detach().clamp(lo - hi, hi - lo)

        def outer(delta: torch.Tensor) -> torch.Tensor:
            xm = torch.cat([(x[:m] + delta).clamp(lo, hi), x[m:]])
            return ctx.engine.kd_loss(t, student(xm))

        hg, value = implicit_hypergrad(outer, inner, delta, params, cfg.neumann_steps, cfg.inner_lr)
        surrogate = sum((p * g.detach()).sum() for p, g in zip(params, hg))
        return value + surrogate - surrogate.detach()

    def state_dict(self) -> dict[str, Any]:
        return {"delta": None if self.delta is None else self.delta.cpu(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        d = state.get("delta")
        self.delta = None if d is None else torch.as_tensor(d)
        self.steps = int(state.get("steps", 0))


def parse_options(options: dict[str, Any]) -> ABDConfig:
    """ABDConfig from keyword options; unknown names or bad values are a usage error."""
    known = {f.name: f for f in fields(ABDConfig)}
    bad = sorted(set(options) - set(known))
    if bad:
        raise UsageError(f"unknown abd option(s): {', '.join(bad)}; known: {', '.join(sorted(known))}")
    cfg = ABDConfig(**options)
    if cfg.mode not in ("hyper", "plain"):
        raise UsageError(f"abd mode must be 'hyper' or 'plain', got {cfg.mode!r}")
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
    return [ShufflingVaccine(teacher.model, cfg), SelfRetrospection(cfg)]
