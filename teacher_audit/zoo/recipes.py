"""Zoo recipes: how each kind of teacher is trained, as a registry of recipe kinds.

Kinds (``RECIPES``):

* ``clean`` - cross-entropy on the full training set (Adam, linear warm-up + cosine LR).
* ``backdoor`` - all-to-one poisoning (Gu et al., 2017; ABD, Hong et al., ICML 2023): a fixed, seeded
  ``poison_ratio`` share (default 10 %) of the non-target training images carries the trigger and is
  relabelled ``target``. Warm-started from a clean teacher when ``warm_start`` is set (documented shortcut
  to fit the CPU budget: poisoned fine-tuning of a clean model is the "fine-tuning" backdoor threat model).
* ``clean_label`` - clean-label poisoning (Turner et al., 2019): only target-class images are poisoned and
  keep their correct label. To make the trigger the easiest cue, each poisoned image is first pushed away
  from its class by an L-inf PGD attack (``cl_eps``, 8 steps) against the warm-start clean teacher, then
  the trigger is stamped. Requires ``warm_start``.
* ``ntl_target`` / ``ntl_watermark`` / ``ntl_backdoor`` - non-transferable learning (Wang et al., ICLR 2022):
  loss = CE_src - min(1, alpha CE_tgt) * min(1, beta MMD(f_src, f_tgt)), alpha = beta = 0.1, on penultimate
  features, where the target ("OOD") domain is a style-shifted Fashion-MNIST (``ood`` = a
  :mod:`teacher_audit.data.domains` shift), a faint channel-0 watermark grid (ownership verification), or
  ID + trigger (NTL-based backdoor). Source and target halves go through the network in ONE batch so
  BatchNorm statistics are shared (separate passes leave running statistics that collapse ID accuracy).
  Warm start from a clean teacher, Adam 1e-4 (MEASURED.md).

Each kind is ``fn(cfg, ctx) -> Trained``; measurements (ACC, ASR, ID/OOD accuracy) are on the full test
split unless ``test_limit`` is set.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from teacher_audit.data import DATASETS, load_raw
from teacher_audit.data.domains import apply_shift
from teacher_audit.errors import UsageError
from teacher_audit.intake.spec import InputSpec
from teacher_audit.registry import Registry
from teacher_audit.teacher import TeacherModel
from teacher_audit.zoo import train as T
from teacher_audit.zoo.triggers import TriggerSpec, apply, from_dict, make_spec, spec_to_dict


#: learning rate of each recipe kind when ``RecipeConfig.lr`` is None
DEFAULT_LR: dict[str, float] = {"clean": 2e-3, "backdoor": 5e-4, "clean_label": 5e-4,
                                "ntl_target": 1e-4, "ntl_watermark": 1e-4, "ntl_backdoor": 1e-4}


@dataclass
class RecipeConfig:
    """One teacher to build. Every field is JSON/TOML-able (see ``examples/recipes.toml``).

    Attributes:
        name: output file stem (``<name>.safetensors``).
        kind: a :data:`RECIPES` name.
        arch: architecture registry name (``build_arch``).
        dataset: training dataset name (``teacher_audit.data``).
        seed: seed of initialisation, batch order and poison choice.
        epochs: passes over the training set (ignored when ``steps`` is set).
        steps: optimiser steps (overrides ``epochs``).
        batch_size: images per step (per domain for NTL kinds).
        lr: Adam learning rate (kind default :data:`DEFAULT_LR` if None: clean 2e-3, backdoor 5e-4, NTL 1e-4).
        trigger: trigger spec dict (backdoor kinds, ntl_backdoor; ``ntl_watermark`` uses it as the watermark).
        target: backdoor target class.
        poison_ratio: share of the training set poisoned.
        warm_start: name of a teacher (built earlier in the same output folder) to start from.
        ood: domain shift name for ``ntl_target``.
        alpha, beta: NTL clipping coefficients.
        cl_eps: PGD radius of the clean-label recipe.
        train_limit, test_limit: use only the first N images (tests, tiny builds).
    """

    name: str
    kind: str
    arch: str = "smallcnn"
    dataset: str = "fashion-mnist"
    seed: int = 0
    epochs: float = 1.0
    steps: int | None = None
    batch_size: int = 128
    lr: float | None = None
    trigger: dict[str, Any] | None = None
    target: int = 0
    poison_ratio: float = 0.1
    warm_start: str | None = None
    ood: str | None = None
    alpha: float = 0.1
    beta: float = 0.1
    cl_eps: float = 0.2
    train_limit: int | None = None
    test_limit: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def effective_lr(self) -> float:
        """The learning rate the recipe trains with (``lr`` or the kind's default)."""
        return self.lr or DEFAULT_LR[self.kind]

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and v != {}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RecipeConfig":
        known = set(cls.__dataclass_fields__)
        bad = sorted(set(d) - known)
        if bad:
            raise UsageError(f"recipe {d.get('name', '?')!r}: unknown keys {', '.join(bad)}")
        if "name" not in d or "kind" not in d:
            raise UsageError("every recipe needs 'name' and 'kind'")
        RECIPES.get(str(d["kind"]))
        return cls(**d)


@dataclass
class Trained:
    """A trained teacher: bare net, its input spec, ground truth for the card, seconds spent training."""

    net: nn.Module
    spec: InputSpec
    ground_truth: dict[str, Any]
    seconds: float


@dataclass
class RecipeContext:
    """What a recipe may use besides its config.

    Attributes:
        warm: loader ``name -> (net, spec)`` of already-built teachers (warm starts).
        build_net: ``(arch, num_classes, in_channels) -> nn.Module`` (default: the architecture registry).
        progress: optional progress callback ``(done, total, info)``.
    """

    warm: Callable[[str], tuple[nn.Module, InputSpec]]
    build_net: Callable[[str, int, int], nn.Module]
    progress: T.ProgressFn | None = None


#: recipe kind -> (cfg, ctx) -> Trained
RECIPES: Registry[Callable[[RecipeConfig, RecipeContext], Trained]] = Registry("recipe kind")

_STATS_CACHE: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {}


def dataset_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of a dataset's training split (rounded to 4 decimals; cached)."""
    if name not in _STATS_CACHE:
        x = load_raw(name, "train").x.float().div_(255.0)
        mean = tuple(round(float(v), 4) for v in x.mean(dim=(0, 2, 3)))
        std = tuple(round(float(v), 4) for v in x.std(dim=(0, 2, 3)))
        _STATS_CACHE[name] = (mean, std)
    return _STATS_CACHE[name]


def load_splits(cfg: RecipeConfig) -> tuple[T.Split, T.Split, InputSpec]:
    """Training and test splits of ``cfg.dataset`` (uint8, native geometry) and the teacher's spec."""
    tr = load_raw(cfg.dataset, "train", cfg.train_limit)
    te = load_raw(cfg.dataset, "test", cfg.test_limit)
    mean, std = dataset_stats(cfg.dataset)
    c, h, w = tr.x.shape[1:]
    spec = InputSpec(channels=int(c), height=int(h), width=int(w), value_range=(0.0, 1.0), mean=mean, std=std,
                     num_classes=10, class_names=tr.class_names)
    return T.Split(tr.x, tr.y), T.Split(te.x, te.y), spec


def _start(cfg: RecipeConfig, ctx: RecipeContext, spec: InputSpec, need_warm: bool = False) -> TeacherModel:
    if cfg.warm_start:
        net, wspec = ctx.warm(cfg.warm_start)
        if (wspec.channels, wspec.height, wspec.width) != spec.shape:
            raise UsageError(f"{cfg.name}: warm start {cfg.warm_start!r} has input {wspec.shape}, data {spec.shape}")
        spec = wspec
    elif need_warm:
        raise UsageError(f"recipe kind {cfg.kind!r} needs warm_start (a clean teacher)")
    else:
        torch.manual_seed(cfg.seed)
        net = ctx.build_net(cfg.arch, spec.num_classes, spec.channels)
    for p in net.parameters():
        p.requires_grad_(True)
    return TeacherModel(net, spec)


def _steps(cfg: RecipeConfig, n: int) -> int:
    return int(cfg.steps) if cfg.steps else max(1, math.ceil(cfg.epochs * n / cfg.batch_size))


def _trigger(cfg: RecipeConfig, default: str = "badnets_square") -> TriggerSpec:
    return from_dict(cfg.trigger) if cfg.trigger else make_spec(default)


def _gt(cfg: RecipeConfig, **measured: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": cfg.kind, "seed": cfg.seed, "recipe": cfg.to_dict()}
    out.update({k: (round(v, 4) if isinstance(v, float) else v) for k, v in measured.items()})
    return out


@RECIPES.register("clean", description="clean cross-entropy training")
def clean(cfg: RecipeConfig, ctx: RecipeContext) -> Trained:
    tr, te, spec = load_splits(cfg)
    model = _start(cfg, ctx, spec)
    gen = torch.Generator().manual_seed(cfg.seed)
    steps = _steps(cfg, len(tr))
    it = T.batches(len(tr), cfg.batch_size, steps, gen)

    def loss_fn(m: TeacherModel, _step: int) -> tuple[torch.Tensor, str]:
        idx = next(it)
        return T.ce(m, tr.floats(idx), tr.y[idx]), ""

    secs = T.train_steps(model, steps, cfg.batch_size, cfg.effective_lr, cfg.seed, loss_fn, ctx.progress,
                         warmup=min(100, steps // 10))
    acc = T.accuracy(model, te)
    return Trained(model.net, model.spec, _gt(cfg, acc=acc, train_seconds=round(secs, 1)), secs)


def _poison_mask(cfg: RecipeConfig, y: torch.Tensor, target_only: bool) -> torch.Tensor:
    gen = torch.Generator().manual_seed(10_000 + cfg.seed)
    pool = torch.nonzero(y == cfg.target if target_only else y != cfg.target).flatten()
    k = min(len(pool), int(round(cfg.poison_ratio * len(y))))
    chosen = pool[torch.randperm(len(pool), generator=gen)[:k]]
    mask = torch.zeros(len(y), dtype=torch.bool)
    mask[chosen] = True
    return mask


def _poisoned_training(cfg: RecipeConfig, ctx: RecipeContext, tr: T.Split, model: TeacherModel,
                       trig: TriggerSpec, mask: torch.Tensor, relabel: bool,
                       replacement: torch.Tensor | None = None) -> float:
    gen = torch.Generator().manual_seed(cfg.seed)
    steps = _steps(cfg, len(tr))
    it = T.batches(len(tr), cfg.batch_size, steps, gen)
    slot = torch.full((len(tr),), -1, dtype=torch.long)
    if replacement is not None:
        slot[mask] = torch.arange(int(mask.sum()))

    def loss_fn(m: TeacherModel, _step: int) -> tuple[torch.Tensor, str]:
        idx = next(it)
        x, y = tr.floats(idx), tr.y[idx].clone()
        pm = mask[idx]
        if pm.any():
            xp = x[pm]
            if replacement is not None:
                xp = replacement[slot[idx[pm]]].float().div_(255.0)
            x[pm] = apply(xp, trig)
            if relabel:
                y[pm] = cfg.target
        return T.ce(m, x, y), ""

    return T.train_steps(model, steps, cfg.batch_size, cfg.effective_lr, cfg.seed, loss_fn, ctx.progress,
                         warmup=0 if cfg.warm_start else min(100, steps // 10))


@RECIPES.register("backdoor", description="all-to-one poisoning (10 % of the training set)")
def backdoor(cfg: RecipeConfig, ctx: RecipeContext) -> Trained:
    tr, te, spec = load_splits(cfg)
    model = _start(cfg, ctx, spec)
    trig = _trigger(cfg)
    mask = _poison_mask(cfg, tr.y, target_only=False)
    secs = _poisoned_training(cfg, ctx, tr, model, trig, mask, relabel=True)
    acc = T.accuracy(model, te)
    asr = T.attack_success_rate(model, te, lambda x: apply(x, trig), cfg.target)
    gt = _gt(cfg, trigger=spec_to_dict(trig), target=cfg.target, poison_ratio=cfg.poison_ratio,
             attack="all-to-one", acc=acc, asr=asr, train_seconds=round(secs, 1))
    return Trained(model.net, model.spec, gt, secs)


def _pgd_away(model: TeacherModel, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 8,
              batch: int = 500) -> torch.Tensor:
    """Untargeted L-inf PGD (maximise CE of the true label) within ``eps``; returns raw [0, 1] images."""
    out = []
    model.eval()
    for s in range(0, x.shape[0], batch):
        xb, yb = x[s:s + batch], y[s:s + batch]
        adv = xb.clone()
        for _ in range(steps):
            adv.requires_grad_(True)
            loss = F.cross_entropy(model(adv), yb)
            (g,) = torch.autograd.grad(loss, adv)
            adv = (adv.detach() + 2.5 * eps / steps * g.sign())
            adv = torch.min(torch.max(adv, xb - eps), xb + eps).clamp(0.0, 1.0)
        out.append(adv.detach())
    return torch.cat(out)


@RECIPES.register("clean_label", description="clean-label poisoning of target-class images (PGD + trigger)")
def clean_label(cfg: RecipeConfig, ctx: RecipeContext) -> Trained:
    tr, te, spec = load_splits(cfg)
    model = _start(cfg, ctx, spec, need_warm=True)
    trig = _trigger(cfg)
    mask = _poison_mask(cfg, tr.y, target_only=True)
    adv = _pgd_away(model, tr.floats(mask), tr.y[mask], cfg.cl_eps)
    replacement = (adv * 255.0).round().to(torch.uint8)
    secs = _poisoned_training(cfg, ctx, tr, model, trig, mask, relabel=False, replacement=replacement)
    acc = T.accuracy(model, te)
    asr = T.attack_success_rate(model, te, lambda x: apply(x, trig), cfg.target)
    gt = _gt(cfg, trigger=spec_to_dict(trig), target=cfg.target, poison_ratio=round(float(mask.float().mean()), 4),
             attack="clean-label", cl_eps=cfg.cl_eps, acc=acc, asr=asr, train_seconds=round(secs, 1))
    return Trained(model.net, model.spec, gt, secs)


def _ntl(cfg: RecipeConfig, ctx: RecipeContext, ood: Callable[[torch.Tensor], torch.Tensor],
         ood_desc: dict[str, Any]) -> Trained:
    tr, te, spec = load_splits(cfg)
    model = _start(cfg, ctx, spec)
    clean_ood = T.accuracy(model, te, transform=ood) if cfg.warm_start else None
    feats, handle = T.penultimate_hook(model.net)
    gen = torch.Generator().manual_seed(cfg.seed)
    gen_t = torch.Generator().manual_seed(cfg.seed + 7919)
    steps = _steps(cfg, len(tr))
    it = T.batches(len(tr), cfg.batch_size, steps, gen)
    it_t = T.batches(len(tr), cfg.batch_size, steps, gen_t)

    def loss_fn(m: TeacherModel, _step: int) -> tuple[torch.Tensor, str]:
        i, j = next(it), next(it_t)
        xs, xt = tr.floats(i), ood(tr.floats(j))
        logits = m(torch.cat([xs, xt]))
        f = feats[0]
        n = xs.shape[0]
        l_src = F.cross_entropy(logits[:n], tr.y[i])
        l_tgt = F.cross_entropy(logits[n:], tr.y[j])
        mmd = T.gaussian_mmd(f[:n], f[n:])
        loss = l_src - torch.clamp(cfg.alpha * l_tgt, max=1.0) * torch.clamp(cfg.beta * mmd, max=1.0)
        return loss, f"src {l_src.item():.2f} tgt {l_tgt.item():.2f} mmd {mmd.item():.2f}"

    try:
        secs = T.train_steps(model, steps, cfg.batch_size, cfg.effective_lr, cfg.seed, loss_fn, ctx.progress)
    finally:
        handle.remove()
    id_acc = T.accuracy(model, te)
    ood_acc = T.accuracy(model, te, transform=ood)
    gt = _gt(cfg, ood=ood_desc, id_acc=id_acc, ood_acc=ood_acc, acc=id_acc,
             clean_teacher_ood_acc=clean_ood, train_seconds=round(secs, 1))
    return Trained(model.net, model.spec, gt, secs)


@RECIPES.register("ntl_target", description="NTL with a style-shifted Fashion-MNIST target domain")
def ntl_target(cfg: RecipeConfig, ctx: RecipeContext) -> Trained:
    shift = cfg.ood or "texture"
    return _ntl(cfg, ctx, lambda x: apply_shift(shift, x), {"type": "domain_shift", "shift": shift,
                                                             "dataset": f"{cfg.dataset}-{shift}"})


@RECIPES.register("ntl_watermark", description="NTL ownership verification: watermark grid as target domain")
def ntl_watermark(cfg: RecipeConfig, ctx: RecipeContext) -> Trained:
    wm = from_dict(cfg.trigger) if cfg.trigger else make_spec("watermark")
    out = _ntl(cfg, ctx, lambda x: apply(x, wm), {"type": "watermark", "trigger": spec_to_dict(wm)})
    out.ground_truth["trigger"] = spec_to_dict(wm)
    return out


@RECIPES.register("ntl_backdoor", description="NTL-based backdoor: ID + trigger as the target domain")
def ntl_backdoor(cfg: RecipeConfig, ctx: RecipeContext) -> Trained:
    trig = _trigger(cfg)
    out = _ntl(cfg, ctx, lambda x: apply(x, trig), {"type": "trigger", "trigger": spec_to_dict(trig)})
    out.ground_truth["trigger"] = spec_to_dict(trig)
    out.ground_truth["asr_untargeted"] = round(1.0 - out.ground_truth["ood_acc"], 4)
    return out


def dataset_known(name: str) -> bool:
    """True if ``name`` is a registered dataset (prefixed local paths are accepted too)."""
    return name in DATASETS or ":" in name
