"""Suspect models for ABD's Shuffling Vaccine: the teacher with channel-shuffled late layers.

Hong et al., "Revisiting Data-Free Knowledge Distillation with Poisoned Teachers" (ICML 2023), §4:
permuting the *input* channels of the last ``n`` convolution layers of a backdoored teacher destroys
its clean features, while the backdoor shortcut (a few channels driven hard by the trigger) tends to
survive. A synthetic sample on which the suspect and the teacher still agree therefore looks
trigger-like.

Threat assumption: none on the architecture. Layers are chosen by MODULE TYPE (``nn.Conv1d/2d/3d``,
including the ones an ONNX converter emits inside an ``fx.GraphModule``) in the order the forward
pass *executes* them (traced once on a dummy input), never by parameter names. BatchNorm layers,
the classifier and every weight are left untouched: the permutation is applied to the layer's
input tensor by a forward pre-hook on a deep copy, so grouped/depthwise convolutions are handled
the same way as dense ones. A graph module that calls convolutions functionally (our ONNX
interpreter) has no conv modules: its convolutions are found by tracing ``F.conv*`` calls
(``TorchFunctionMode``), and the copy's weight of each chosen (ungrouped) convolution is permuted
along its input-channel axis, which is the same function. A network with no convolution falls back
to its hidden ``nn.Linear`` layers (all but the last executed one, which is the classifier).

Outputs: :func:`build_suspect` returns a frozen eval-mode copy of ``teacher.model`` and the list of
(module name, permutation) pairs it applied; :func:`suspect_ensemble` builds several.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_FUNCTIONAL_CONV = {F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d}


@dataclass
class Suspect:
    """A shuffled copy of the teacher.

    Attributes:
        model: the suspect (raw-input wrapper copy, eval, frozen).
        layers: names (in ``model``) of the shuffled modules, in execution order.
        perms: one permutation of input channels per shuffled module.
    """

    model: nn.Module
    layers: list[str]
    perms: list[torch.Tensor]


def execution_order(model: nn.Module, x: torch.Tensor, types: tuple[type, ...]) -> list[str]:
    """Names of the modules of ``types`` in the order a forward pass on ``x`` calls them."""
    names = {id(m): n for n, m in model.named_modules()}
    order: list[str] = []
    handles = []

    def hook(mod: nn.Module, _inp: object) -> None:
        n = names.get(id(mod))
        if n is not None and n not in order:
            order.append(n)

    for m in model.modules():
        if isinstance(m, types):
            handles.append(m.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return order


class _ConvTrace(TorchFunctionMode):
    """Records the weight of every functional convolution call (graph modules without nn.Conv)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, int]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func in _FUNCTIONAL_CONV:
            w = args[1] if len(args) > 1 else kwargs.get("weight")
            groups = args[6] if len(args) > 6 else kwargs.get("groups", 1)
            if isinstance(w, torch.Tensor):
                self.calls.append((w, int(groups)))
        return func(*args, **kwargs)


def functional_convs(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the parameters used as weights of ungrouped functional convolutions, in call order."""
    names = {id(p): n for n, p in model.named_parameters()}
    trace = _ConvTrace()
    with torch.no_grad(), trace:
        model(example)
    order: list[str] = []
    for w, groups in trace.calls:
        n = names.get(id(w))
        if n is not None and groups == 1 and w.dim() >= 3 and n not in order:
            order.append(n)
    return order


def shuffle_candidates(model: nn.Module, example: torch.Tensor) -> tuple[list[str], str]:
    """Layers eligible for shuffling, in execution order, and their kind.

    ``conv`` (conv modules), ``functional`` (weights of functional convolutions, e.g. an ONNX graph
    interpreter), or ``linear`` (hidden linear layers when there is no convolution at all).
    """
    convs = execution_order(model, example, _CONV)
    if convs:
        return convs, "conv"
    fconvs = functional_convs(model, example)
    if fconvs:
        return fconvs, "functional"
    linears = execution_order(model, example, (nn.Linear,))
    return linears[:-1], "linear"


def _permute_hook(perm: torch.Tensor):
    def hook(_mod: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x = inputs[0]
        p = perm.to(x.device)
        x = x.index_select(1, p) if isinstance(_mod, _CONV) else x.index_select(-1, p)
        return (x, *inputs[1:])

    return hook


def copy_without_hooks(model: nn.Module) -> nn.Module:
    """Deep copy of ``model`` without the hooks others attached to it (e.g. the engine's BN taps,
    whose closures may hold non-leaf tensors that cannot be deep-copied)."""
    saved: list[tuple[nn.Module, str, object]] = []
    for m in model.modules():
        for attr, val in list(vars(m).items()):
            if attr.startswith("_") and "hooks" in attr and isinstance(val, dict) and val:
                saved.append((m, attr, val))
                setattr(m, attr, type(val)())
    try:
        return copy.deepcopy(model)
    finally:
        for m, attr, val in saved:
            setattr(m, attr, val)


def build_suspect(model: nn.Module, example: torch.Tensor, n_layers: int = 5,
                  generator: torch.Generator | None = None) -> Suspect:
    """Deep-copy ``model`` and permute the input channels of its last ``n_layers`` conv layers.

    Args:
        model: the teacher's raw-input wrapper (``teacher.model``) or any module taking raw images.
        example: one input batch (only its shape matters; used to trace the execution order).
        n_layers: how many of the last eligible layers to shuffle (ABD default 5).
        generator: torch RNG for the permutations (seed it for repeatability).

    Raises:
        ValueError: when the model has neither convolution nor hidden linear layers.
    """
    cands, kind = shuffle_candidates(model, example)
    if not cands:
        raise ValueError("no convolution or hidden linear layer to shuffle")
    chosen = cands[-n_layers:] if n_layers > 0 else []
    suspect = copy_without_hooks(model).eval()
    for p in suspect.parameters():
        p.requires_grad_(False)
    mods = dict(suspect.named_modules())
    perms: list[torch.Tensor] = []
    if kind == "functional":
        # conv(x[:, perm], W) == conv(x, W[:, argsort(perm)]): permute the copy's weight instead
        for name in chosen:
            w = suspect.get_parameter(name)
            perm = torch.randperm(w.shape[1], generator=generator)
            with torch.no_grad():
                w.copy_(w[:, torch.argsort(perm).to(w.device)].clone())
            perms.append(perm)
        return Suspect(model=suspect, layers=list(chosen), perms=perms)
    for name in chosen:
        mod = mods[name]
        n_in = mod.in_channels if isinstance(mod, _CONV) else mod.in_features
        perm = torch.randperm(n_in, generator=generator)
        mod.register_forward_pre_hook(_permute_hook(perm))
        perms.append(perm)
    return Suspect(model=suspect, layers=list(chosen), perms=perms)


def suspect_ensemble(model: nn.Module, example: torch.Tensor, n_models: int = 3, n_layers: int = 5,
                     seed: int = 0) -> list[Suspect]:
    """``n_models`` independently shuffled suspects (ABD averages 3)."""
    g = torch.Generator().manual_seed(seed)
    return [build_suspect(model, example, n_layers, g) for _ in range(n_models)]


def ensemble_log_probs(suspects: list[Suspect], x: torch.Tensor) -> torch.Tensor:
    """Log of the mean suspect softmax over the ensemble (N x K)."""
    probs = torch.stack([torch.softmax(s.model(x).float(), dim=1) for s in suspects]).mean(0)
    return probs.clamp_min(1e-12).log()
