"""Trigger parametrisations for ABD's Self-Retrospection (SR).

SR synthesises a trigger from the teacher — a perturbation that changes the teacher's output on many
synthetic samples at once — and teaches the student to ignore it. How the perturbation is
parametrised decides which backdoors it can express:

- ``additive`` (the paper's): one image ``delta`` added to every sample, ``x' = clip(x + delta)``.
  Searched without a size penalty (the paper's SR), warm-started from the previous step.
- ``mask``: Neural Cleanse's form ``x' = (1 - m) * x + m * p`` with a mask ``m in [0,1]^{HxW}`` and a
  pattern ``p`` in the input range, both as logits. The search maximises KL(T(x') || T(x)) minus
  ``lam * mean(m)``; ``lam`` follows Neural Cleanse's schedule, raised while the trigger changes the
  teacher's answer on at least ``flip_goal`` of the samples and lowered otherwise, so the search
  settles on the *smallest* region that overrides the input — which, for an all-to-one backdoor, is
  the trigger (patches, grids, Trojan patterns; faint full-image blends need a large, low-valued mask).
  Target-agnostic: no class is assumed.
- ``sweep``: a hard patch from a fixed set of candidates (patterns, sizes, positions), the one that sends
  most dead-leaves pictures into one class -- no gradients, found once (session 13, docs/backdoor.md).

Every trigger is a :class:`SRTrigger` in the :data:`SR_TRIGGERS` registry with one packed parameter
tensor ``theta`` (so the hypergradient code can treat it as one variable), :meth:`apply` and
:meth:`search`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from teacher_audit.registry import Registry

Model = Callable[[torch.Tensor], torch.Tensor]


def kl_rows(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(p) || softmax(q)) per row."""
    lp = torch.log_softmax(p_logits.float(), 1)
    return (lp.exp() * (lp - torch.log_softmax(q_logits.float(), 1))).sum(1)


def step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One optimiser step on the trigger alone: gradients go to the trigger's parameters only, never
    into the model's ``.grad`` (the model may be the student in the middle of its own step)."""
    params = [p for group in opt.param_groups for p in group["params"]]
    for p, g in zip(params, torch.autograd.grad(loss, params)):
        p.grad = g
    opt.step()


class SRTrigger:
    """A synthesised trigger: packed parameters ``theta`` of shape ``(1, *param_shape)``."""

    def __init__(self, shape: tuple[int, int, int], lo: float, hi: float, seed: int, **options: Any):
        self.shape, self.lo, self.hi, self.seed = shape, lo, hi, seed
        self.options = options
        self.theta = self.init(torch.Generator().manual_seed(seed))

    def init(self, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def apply(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """Samples with the trigger ``theta`` stamped, in the input range."""
        raise NotImplementedError

    def size(self, theta: torch.Tensor) -> torch.Tensor:
        """The trigger's size (what the student-side inner problem penalises)."""
        raise NotImplementedError

    def search(self, model: Model, x: torch.Tensor, steps: int, lr: float) -> int:
        """Update ``self.theta`` to change ``model``'s answer on ``x``; returns the teacher passes used."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"theta": self.theta.detach().cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("theta") is not None:
            self.theta = torch.as_tensor(state["theta"]).to(self.theta.device)


SR_TRIGGERS: Registry[type[SRTrigger]] = Registry("SR trigger")


@SR_TRIGGERS.register("additive", summary="one universal image added to every sample (the ABD paper's SR)")
class AdditiveTrigger(SRTrigger):
    def init(self, gen: torch.Generator) -> torch.Tensor:
        return torch.randn((1, *self.shape), generator=gen) * 0.01 * (self.hi - self.lo)

    def apply(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return (x + theta).clamp(self.lo, self.hi)

    def size(self, theta: torch.Tensor) -> torch.Tensor:
        return theta.pow(2).sum()

    def search(self, model: Model, x: torch.Tensor, steps: int, lr: float) -> int:
        delta = self.theta.detach().clone().to(x.device).requires_grad_(True)
        opt = torch.optim.Adam([delta], lr=lr)
        with torch.no_grad():
            ref = model(x)
        for _ in range(steps):
            loss = -kl_rows(model(self.apply(x, delta)), ref).mean()
            step(opt, loss)
            with torch.no_grad():
                delta.clamp_(self.lo - self.hi, self.hi - self.lo)
        self.theta = delta.detach()
        return x.shape[0] * (steps + 1)


@SR_TRIGGERS.register("mask", summary="Neural-Cleanse mask + pattern, smallest region that overrides the teacher")
class MaskTrigger(SRTrigger):
    """``theta = cat([mask logit (1 channel), pattern logits (C channels)])``; see module docstring."""

    def init(self, gen: torch.Generator) -> torch.Tensor:
        c, h, w = self.shape
        m = torch.full((1, 1, h, w), float(self.options.get("mask_init", -3.0)))
        p = torch.randn((1, c, h, w), generator=gen) * 0.5
        self.lam = float(self.options.get("lam", 1.0))
        self._opt_state: dict[str, Any] | None = None
        return torch.cat([m, p], 1)

    def parts(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = torch.sigmoid(theta[:, :1])
        p = self.lo + (self.hi - self.lo) * torch.sigmoid(theta[:, 1:])
        return m, p

    def apply(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        m, p = self.parts(theta)
        return (1 - m) * x + m * p

    def size(self, theta: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(theta[:, :1]).sum()

    def search(self, model: Model, x: torch.Tensor, steps: int, lr: float) -> int:
        goal = float(self.options.get("flip_goal", 0.8))
        theta = self.theta.detach().clone().to(x.device).requires_grad_(True)
        opt = torch.optim.Adam([theta], lr=lr)
        if self._opt_state is not None:
            opt.load_state_dict(self._opt_state)
        with torch.no_grad():
            ref = model(x)
        ref_label = ref.argmax(1)
        for _ in range(steps):
            out = model(self.apply(x, theta))
            m = torch.sigmoid(theta[:, :1])
            loss = -kl_rows(out, ref).mean() + self.lam * m.mean()
            step(opt, loss)
            flip = float((out.argmax(1) != ref_label).float().mean())
            self.lam = min(1e3, self.lam * 1.2) if flip >= goal else max(1e-3, self.lam / 1.2)
        self.theta = theta.detach()
        self._opt_state = opt.state_dict()
        self.last_flip = flip if steps else 0.0
        return x.shape[0] * (steps + 1)

    def mask_share(self) -> float:
        return float(torch.sigmoid(self.theta[:, :1]).mean())

    def state_dict(self) -> dict[str, Any]:
        return {"theta": self.theta.detach().cpu(), "lam": self.lam}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.lam = float(state.get("lam", self.lam))


@SR_TRIGGERS.register("sweep", summary="the patch (of a fixed set) that sends most procedural pictures to one class")
class SweepTrigger(MaskTrigger):
    """A patch trigger found without gradients: stamp each candidate of
    :func:`teacher_audit.synth.procedural.patch_stamps` (4 patterns x 2 sizes x 9 positions) on ``pictures``
    dead-leaves pictures at the teacher's input mean/sd (option ``moments``; without it, on the synthetic batch
    the search is given) and keep the (patch, class) pair with the largest flip rate into that class. A
    backdoored teacher's patch trigger is answered by a similar patch in or near its place (measured in
    docs/backdoor.md, session 13). Found once, on the first search; later searches cost nothing. The mask is
    hard (logits +-10), so ``apply`` stamps the patch exactly. Options: ``moments``, ``pictures`` (128); the
    pictures are drawn from the trigger's seed. After the search: ``found`` (name), ``found_class``, ``last_flip``."""

    def init(self, gen: torch.Generator) -> torch.Tensor:
        self.found: str | None = None
        self.found_class: int | None = None
        self.last_flip = 0.0
        return super().init(gen)

    def search(self, model: Model, x: torch.Tensor, steps: int, lr: float) -> int:
        if self.found is not None:
            return 0
        from teacher_audit.synth.procedural import dead_leaves, match_moments, patch_stamps

        span = self.hi - self.lo
        moments = self.options.get("moments")
        if moments is not None:
            g = torch.Generator().manual_seed(self.seed + 7)
            u = match_moments(dead_leaves(int(self.options.get("pictures", 128)), self.shape, g), *moments)
        else:
            u = ((x.detach().cpu() - self.lo) / span).clamp(0.0, 1.0)
        u = u.to(x.device)
        with torch.no_grad():
            base = model(self.lo + span * u).argmax(1)
            best = (-1.0, "", 0, None, None)
            candidates = patch_stamps(self.shape)
            for name, m, p in candidates:
                m, p = m.to(x.device), p.to(x.device)
                lab = model(self.lo + span * ((1 - m) * u + m * p)).argmax(1)
                for c in torch.unique(lab).tolist():
                    others = base != c
                    rate = float((lab[others] == c).float().mean()) if bool(others.any()) else 0.0
                    if rate > best[0]:
                        best = (rate, name, int(c), m, p)
        rate, name, c, m, p = best
        logit_p = torch.logit(p.clamp(1e-3, 1 - 1e-3))
        self.theta = torch.cat([torch.where(m > 0.5, 10.0, -10.0), logit_p], 1).to(x.device)
        self.found, self.found_class, self.last_flip = name, c, rate
        return int(u.shape[0]) * (1 + len(candidates))


@SR_TRIGGERS.register("nc", summary="one Neural-Cleanse mask + pattern per target class; students see them all")
class ClassTriggers(MaskTrigger):
    """Per-class inversion (Neural Cleanse on the synthetic batch), refreshed a few steps per SR step.

    ``theta`` holds one mask + pattern per class, shape ``(K, 1 + C, H, W)``. The search pushes
    samples the teacher labels other than ``t`` to ``t`` with the smallest mask (CE + ``lam_t`` *
    mean mask, ``lam_t`` raised while the flip rate of ``t`` is >= ``flip_goal``). For an all-to-one
    backdoor the target's trigger is the smallest; as the target is not known, :meth:`apply` stamps
    every sample with the trigger of a class drawn per sample (not the teacher's label for it), from
    all classes or — with ``targets`` = k > 0 — from the k classes with the smallest masks.
    """

    def __init__(self, shape: tuple[int, int, int], lo: float, hi: float, seed: int, num_classes: int = 10,
                 **options: Any):
        self.k = num_classes
        super().__init__(shape, lo, hi, seed, **options)
        self.gen = torch.Generator().manual_seed(seed + 7)
        self.assign: torch.Tensor | None = None
        self.allowed: torch.Tensor | None = None

    def init(self, gen: torch.Generator) -> torch.Tensor:
        c, h, w = self.shape
        m = torch.full((self.k, 1, h, w), float(self.options.get("mask_init", -3.0)))
        p = torch.randn((self.k, c, h, w), generator=gen) * 0.5
        self.lams = torch.full((self.k,), float(self.options.get("lam", 1.0)))
        self.flips = torch.zeros(self.k)
        self._opt_state = None
        return torch.cat([m, p], 1)

    def norms(self) -> torch.Tensor:
        return torch.sigmoid(self.theta[:, :1]).flatten(1).mean(1).cpu()

    def draw(self, labels: torch.Tensor) -> None:
        """Pick, per sample, a class whose trigger it gets (never the label the model gives it).

        Candidates: ``options["allowed"]`` when set (a boolean mask over classes, e.g. chosen on another
        model), else :meth:`top`; a class whose mask covers more than ``max_mask`` of the image is never
        used. With no candidate left, :attr:`assign` is ``None``.
        """
        allowed = self.options.get("allowed")
        allowed = self.top() if allowed is None else allowed.cpu()
        allowed = allowed & (self.norms() <= float(self.options.get("max_mask", 1.0)))
        gate = float(self.options.get("min_anomaly", 0.0))
        if gate > 0:  # only triggers that stand out from the other classes' (Neural Cleanse's anomaly index)
            allowed = allowed & (self.anomaly() >= gate)
        self.allowed = allowed
        if not bool(allowed.any()):
            self.assign = None
            return
        w = allowed.float().expand(labels.numel(), -1).clone()
        w[torch.arange(labels.numel()), labels.cpu()] = 0.0
        w[w.sum(1) == 0] = allowed.float()
        self.assign = torch.multinomial(w, 1, generator=self.gen).flatten().to(labels.device)

    def anomaly(self) -> torch.Tensor:
        """Per class, how far its log10 mask norm lies below the other classes' median, in robust
        standard deviations (1.4826 MAD, floored at 0.1 decades)."""
        from teacher_audit.probes.backdoor_common import robust_z

        ln = torch.log10(self.norms().clamp_min(1e-4)).double().numpy()
        return torch.tensor([robust_z(ln, c, low_is_anomalous=True, min_mad=0.1) for c in range(self.k)])

    def top(self) -> torch.Tensor:
        """Boolean mask of the ``targets`` classes with the smallest masks (all when 0)."""
        n_top = int(self.options.get("targets", 0)) or self.k
        out = torch.zeros(self.k, dtype=torch.bool)
        out[torch.argsort(self.norms())[:n_top]] = True
        return out

    def apply(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        if theta.shape[0] == 1 or self.assign is None:
            return super().apply(x, theta)
        m, p = self.parts(theta[self.assign[: x.shape[0]]])
        m = (m * float(self.options.get("mask_gain", 1.0))).clamp(max=1.0)
        k = int(self.options.get("dilate", 1))
        if k > 1:  # the smallest flipping mask is a part of the trigger: widen it
            m = torch.nn.functional.max_pool2d(m, k, stride=1, padding=k // 2)[..., : x.shape[-2], : x.shape[-1]]
        if bool(self.options.get("hard", False)):  # binary mask: the region, fully replaced
            m = (m >= 0.5 * m.flatten(1).amax(1).view(-1, 1, 1, 1)).to(m)
        fill = self.options.get("fill", "pattern")
        if fill in ("mixed", "solid"):
            # what the region holds matters less than where it is: some samples get random black/white
            # content there (mixed: every second sample), or (solid) a quarter each of the pattern,
            # white, black and random black/white
            n = x.shape[0]
            rnd = torch.randint(0, 2, p.shape, generator=self.gen).to(p) * (self.hi - self.lo) + self.lo
            which = torch.arange(n, device=x.device) % (2 if fill == "mixed" else 4)
            if fill == "solid":
                rnd = torch.where((which == 2).view(-1, 1, 1, 1), torch.full_like(p, self.hi), rnd)
                rnd = torch.where((which == 3).view(-1, 1, 1, 1), torch.full_like(p, self.lo), rnd)
            p = torch.where((which > 0).view(-1, 1, 1, 1), rnd.detach(), p)
        return (1 - m) * x + m * p

    def search(self, model: Model, x: torch.Tensor, steps: int, lr: float) -> int:
        goal = float(self.options.get("flip_goal", 0.8))
        per = max(1, int(self.options.get("per_target", 8)))
        k, dev = self.k, x.device
        with torch.no_grad():
            labels = model(x).argmax(1)
        rows = []
        for t in range(k):  # per target, samples the teacher does not already give that label
            idx = torch.nonzero(labels != t).flatten()
            idx = idx if idx.numel() else torch.arange(x.shape[0], device=dev)
            rows.append(idx[torch.randint(idx.numel(), (per,), generator=self.gen).to(dev)])
        xs = x[torch.cat(rows)]
        tgt = torch.arange(k, device=dev).repeat_interleave(per)
        theta = self.theta.detach().clone().to(dev).requires_grad_(True)
        opt = torch.optim.Adam([theta], lr=lr)
        if self._opt_state is not None:
            opt.load_state_dict(self._opt_state)
        lams = self.lams.to(dev)
        for _ in range(steps):
            m, p = self.parts(theta)
            mm, pp = m.repeat_interleave(per, 0), p.repeat_interleave(per, 0)
            out = model((1 - mm) * xs + mm * pp)
            ce = torch.nn.functional.cross_entropy(out.float(), tgt, reduction="none").view(k, per).mean(1)
            loss = (ce + lams * m.flatten(1).mean(1)).sum()
            step(opt, loss)
            with torch.no_grad():
                self.flips = (out.argmax(1) == tgt).float().view(k, per).mean(1).cpu()
                lams = torch.where(self.flips.to(dev) >= goal, lams * 1.2, lams / 1.2).clamp(1e-3, 1e3)
        self.lams = lams.cpu()
        self.theta = theta.detach()
        self._opt_state = opt.state_dict()
        self.draw(labels)
        return x.shape[0] + xs.shape[0] * steps

    def mask_share(self) -> float:
        return float(self.norms().min())

    def state_dict(self) -> dict[str, Any]:
        return {"theta": self.theta.detach().cpu(), "lams": self.lams.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        SRTrigger.load_state_dict(self, state)
        if state.get("lams") is not None:
            self.lams = torch.as_tensor(state["lams"]).float()
