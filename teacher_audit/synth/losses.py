"""Composable loss terms of data-free KD (ALGORITHMS.md §1) and the teacher taps they read.

Generator-loss terms, each ``term(state) -> scalar`` registered in :data:`LOSS_TERMS`:

- ``bn``      DeepInversion prior (Yin et al., CVPR 2020): per teacher BN layer,
              ``||mean(f) - running_mean||_2 + ||var(f) - running_var||_2`` of the BN input over the
              batch, summed over layers. Needs BN layers with running statistics; when the teacher has
              none (ONNX with folded BN) the term is OFF and the engine records a note.
- ``oh``      one-hot (Chen et al., DAFL, ICCV 2019): ``CE(T(x), argmax T(x))``.
- ``adv``     adversarial (Micaelli & Storkey, ZSKT, NeurIPS 2019): ``-KL(T/τ || S/τ)``.
- ``adv_l1``  DFAD (Fang et al., 2019): ``-mean |T(x) - S(x)|`` on logits.
- ``balance`` class balance (DAFL): ``log K + sum_c pbar_c log pbar_c`` of the batch-mean teacher
              softmax, i.e. KL(pbar || uniform) >= 0.
- ``act``     DAFL activation: ``-mean |f|`` of the penultimate features (input of the last Linear).
- ``cr``      light contrastive term in the spirit of CMI (Fang et al., IJCAI 2021). RECONSTRUCTION,
              not CMI's InfoNCE with a learned head: per-sample BN-input statistics (channel means of
              every BN input, concatenated, L2-normalised) are pushed apart from each other and from a
              memory bank of past batches with the uniformity loss ``log mean exp(-t ||f_i - f_j||^2)``
              (Wang & Isola, ICML 2020), t = 2. Needs BN layers, like ``bn``.

Student loss: :func:`kd_loss` = ``KL(softmax(T/τ) || softmax(S/τ)) * τ²``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from teacher_audit.registry import Registry


class TeacherTaps:
    """Forward hooks on the teacher that collect BN-input statistics and penultimate features.

    The hooks only record while :attr:`active` is true (the generator phase), so plain teacher
    forwards cost nothing extra.

    Args:
        model: the teacher wrapper (its BN layers and last Linear layer are hooked).
        want_features: hook the last ``nn.Linear`` to capture its input (for ``act``).
        want_instance: keep per-sample channel means of BN inputs (for ``cr``).
    """

    def __init__(self, model: nn.Module, want_features: bool = False, want_instance: bool = False):
        self.active = False
        self.want_instance = want_instance
        self.bn_losses: list[torch.Tensor] = []
        self.instance: list[torch.Tensor] = []
        self.features: torch.Tensor | None = None
        self._handles: list[Any] = []
        self.bn_layers = [m for m in model.modules()
                          if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None]
        for m in self.bn_layers:
            self._handles.append(m.register_forward_hook(self._bn_hook))
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        self.has_linear = bool(linears)
        if want_features and linears:
            self._handles.append(linears[-1].register_forward_hook(self._feat_hook))

    @property
    def has_bn(self) -> bool:
        return bool(self.bn_layers)

    def reset(self) -> None:
        self.bn_losses, self.instance, self.features = [], [], None

    def _bn_hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if not self.active:
            return
        f = inputs[0].float()
        dims = [0] + list(range(2, f.dim()))
        mean = f.mean(dim=dims)
        var = f.var(dim=dims, unbiased=False)
        rm = module.running_mean.float()  # type: ignore[union-attr]
        rv = module.running_var.float()  # type: ignore[union-attr]
        self.bn_losses.append(torch.norm(mean - rm, 2) + torch.norm(var - rv, 2))
        if self.want_instance and f.dim() > 2:
            self.instance.append(f.flatten(2).mean(-1))

    def _feat_hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if self.active:
            self.features = inputs[0].float()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


@dataclass
class TermState:
    """Inputs of the loss terms for one generator batch."""

    t_logits: torch.Tensor
    s_logits: torch.Tensor | None
    taps: TeacherTaps
    temperature: float
    bank: "FeatureBank | None" = None
    cache: dict[str, Any] = field(default_factory=dict)


TermFn = Callable[[TermState], "torch.Tensor | None"]
LOSS_TERMS: Registry[TermFn] = Registry("loss term")


def bn_prior(taps: TeacherTaps) -> torch.Tensor | None:
    """The BN-statistics prior of the teacher forward ``taps`` recorded (None when nothing was recorded)."""
    if not taps.bn_losses:
        return None
    return torch.stack(taps.bn_losses).sum()


@LOSS_TERMS.register("bn", needs="bn")
def bn_term(st: TermState) -> torch.Tensor | None:
    return bn_prior(st.taps)


@LOSS_TERMS.register("oh")
def oh_term(st: TermState) -> torch.Tensor:
    t = st.t_logits.float()
    return F.cross_entropy(t, t.argmax(1))


@LOSS_TERMS.register("adv", needs="student")
def adv_kl_term(st: TermState) -> torch.Tensor | None:
    if st.s_logits is None:
        return None
    tau = st.temperature
    return -F.kl_div(F.log_softmax(st.s_logits.float() / tau, 1), F.softmax(st.t_logits.float() / tau, 1),
                     reduction="batchmean")


@LOSS_TERMS.register("adv_l1", needs="student")
def adv_l1_term(st: TermState) -> torch.Tensor | None:
    if st.s_logits is None:
        return None
    return -(st.t_logits.float() - st.s_logits.float()).abs().mean()


@LOSS_TERMS.register("balance")
def balance_term(st: TermState) -> torch.Tensor:
    p = F.softmax(st.t_logits.float(), 1).mean(0)
    return math.log(p.numel()) + (p * torch.log(p.clamp_min(1e-12))).sum()


@LOSS_TERMS.register("act", needs="features")
def act_term(st: TermState) -> torch.Tensor | None:
    if st.taps.features is None:
        return None
    return -st.taps.features.abs().mean()


class FeatureBank:
    """Ring buffer of past per-sample feature vectors for the ``cr`` term."""

    def __init__(self, size: int = 2048):
        self.size = size
        self.data: torch.Tensor | None = None

    def push(self, f: torch.Tensor) -> None:
        f = f.detach()
        self.data = f if self.data is None else torch.cat([f, self.data])[: self.size]

    def state_dict(self) -> dict[str, Any]:
        return {"data": None if self.data is None else self.data.cpu()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        d = state.get("data")
        self.data = None if d is None else d.to(device)


@LOSS_TERMS.register("cr", needs="bn")
def cr_term(st: TermState) -> torch.Tensor | None:
    if not st.taps.instance:
        return None
    f = F.normalize(torch.cat(st.taps.instance, dim=1), dim=1)
    others = f if st.bank is None or st.bank.data is None else torch.cat([f, st.bank.data.to(f.dtype)])
    d2 = torch.cdist(f, others).pow(2)
    n = f.shape[0]
    mask = torch.ones_like(d2, dtype=torch.bool)
    mask[torch.arange(n), torch.arange(n)] = False  # no self-pairs
    loss = torch.logsumexp(-2.0 * d2[mask], 0) - math.log(int(mask.sum()))
    if st.bank is not None:
        st.bank.push(f)
    return loss


def kd_per_sample(t_logits: torch.Tensor, s_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton KD per sample, shape ``(B,)``: the terms whose mean is :func:`kd_loss` (for weighted KD)."""
    tau = temperature
    return F.kl_div(F.log_softmax(s_logits.float() / tau, 1), F.softmax(t_logits.float() / tau, 1),
                    reduction="none").sum(1) * tau * tau


def kd_loss(t_logits: torch.Tensor, s_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton KD: ``KL(softmax(T/τ) || softmax(S/τ)) * τ²`` (batch mean)."""
    tau = temperature
    return F.kl_div(F.log_softmax(s_logits.float() / tau, 1), F.softmax(t_logits.float() / tau, 1),
                    reduction="batchmean") * tau * tau
