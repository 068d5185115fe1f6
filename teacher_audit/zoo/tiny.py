"""Tiny teachers in seconds, for tests across the project.

``train_tiny`` runs the real zoo recipes (same code paths as ``teacher-audit zoo build``) at tiny scale: a
few hundred real Fashion-MNIST images, ~100-200 Adam steps, and a ~10 k-parameter BatchNorm CNN
(:class:`TinyCNN`). Backdoor and NTL kinds are warm-started from a tiny clean teacher trained first, exactly
like the full zoo. Results are cached per argument tuple inside the process (a deep copy is returned).

Example::

    from teacher_audit.zoo.tiny import train_tiny
    t = train_tiny("backdoor", trigger={"name": "badnets_square"}, target=0)
    t.meta["ground_truth"]["asr"]   # measured on held-out images
"""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

import torch
from torch import nn

from teacher_audit.intake.spec import InputSpec
from teacher_audit.teacher import Teacher
from teacher_audit.zoo.recipes import RECIPES, RecipeConfig, RecipeContext, Trained


class TinyCNN(nn.Module):
    """conv8-BN-ReLU-pool -> conv16-BN-ReLU-pool -> adaptive 4x4 -> linear(256 -> 32) -> linear(32 -> classes).

    Works for any input size >= 8x8 and any channel count; ~10 k parameters.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(256, 32), nn.ReLU(),
        )
        self.classifier = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _build_net(arch: str, num_classes: int, in_channels: int) -> nn.Module:
    if arch == "tiny":
        return TinyCNN(num_classes, in_channels)
    from teacher_audit.intake.archs import build_arch

    return build_arch(arch, num_classes, in_channels)


def _to_teacher(tr: Trained, arch: str) -> Teacher:
    return Teacher.from_net(copy.deepcopy(tr.net), copy.deepcopy(tr.spec), arch=arch, fmt="memory", ground_truth=tr.ground_truth)


@functools.lru_cache(maxsize=32)
def _cached(recipe: str, frozen: str) -> tuple[Teacher, Teacher | None]:
    kw: dict[str, Any] = json.loads(frozen)
    arch = kw.pop("arch")
    clean_steps = kw.pop("clean_steps")
    store: dict[str, Trained] = {}

    def warm(name: str) -> tuple[nn.Module, InputSpec]:
        return copy.deepcopy(store[name].net), copy.deepcopy(store[name].spec)

    ctx = RecipeContext(warm=warm, build_net=_build_net)
    common = {k: kw[k] for k in ("dataset", "seed", "batch_size", "train_limit", "test_limit")}
    clean_cfg = RecipeConfig("tiny_clean", "clean", arch=arch, steps=clean_steps, lr=3e-3, **common)
    store["tiny_clean"] = RECIPES.get("clean")(clean_cfg, ctx)
    clean_teacher = _to_teacher(store["tiny_clean"], arch)
    if recipe == "clean":
        return clean_teacher, None
    cfg = RecipeConfig("tiny_" + recipe, recipe, arch=arch, warm_start="tiny_clean", **kw)
    return _to_teacher(RECIPES.get(recipe)(cfg, ctx), arch), clean_teacher


def train_tiny(recipe: str = "clean", *, trigger: dict[str, Any] | None = None, target: int = 0,
               dataset: str = "fashion-mnist", arch: str = "tiny", seed: int = 0, n_train: int = 800,
               n_test: int = 400, steps: int = 150, clean_steps: int = 150, batch_size: int = 64,
               lr: float | None = None, poison_ratio: float = 0.1, ood: str | None = None,
               alpha: float = 0.1, beta: float = 0.1, return_clean: bool = False,
               ) -> Teacher | tuple[Teacher, Teacher]:
    """Train a tiny teacher with a zoo recipe kind, in seconds on a CPU.

    Args:
        recipe: a recipe kind (``clean``, ``backdoor``, ``clean_label``, ``ntl_target``, ``ntl_watermark``,
            ``ntl_backdoor``).
        trigger: trigger spec dict (backdoor kinds); family defaults if None.
        target: backdoor target class.
        dataset: training dataset name (``fashion-mnist``, ``fashion-mnist-rgb32``...).
        arch: ``"tiny"`` (:class:`TinyCNN`) or any architecture registry name.
        seed: seed of everything.
        n_train, n_test: number of training / held-out test images (first N of each split).
        steps: optimiser steps of the recipe (fine-tuning steps for warm-started kinds).
        clean_steps: steps of the clean teacher (the warm start of the other kinds).
        batch_size: images per step.
        lr: learning rate (kind default if None; NTL kinds use 1e-3 here because tiny runs are short).
        poison_ratio, ood, alpha, beta: as in :class:`~teacher_audit.zoo.recipes.RecipeConfig`.
        return_clean: also return the clean warm-start teacher (same data, same seed).

    Returns:
        A frozen :class:`~teacher_audit.teacher.Teacher` (``fmt="memory"``) whose ``meta["ground_truth"]``
        holds the measured numbers (acc, asr, id_acc, ood_acc...) on the ``n_test`` held-out images; with
        ``return_clean`` a ``(teacher, clean_teacher)`` pair.
    """
    RECIPES.get(recipe)
    if lr is None and recipe.startswith("ntl"):
        lr = 1e-3
    kw = {"arch": arch, "clean_steps": clean_steps, "dataset": dataset, "seed": seed, "batch_size": batch_size,
          "train_limit": n_train, "test_limit": n_test, "steps": steps, "lr": lr, "trigger": trigger,
          "target": target, "poison_ratio": poison_ratio, "ood": ood, "alpha": alpha, "beta": beta}
    if recipe == "clean":
        kw = {k: kw[k] for k in ("arch", "clean_steps", "dataset", "seed", "batch_size", "train_limit",
                                 "test_limit")}
    teacher, clean = _cached(recipe, json.dumps(kw, sort_keys=True))
    teacher = copy.deepcopy(teacher)
    if return_clean:
        return teacher, copy.deepcopy(clean if clean is not None else teacher)
    return teacher
