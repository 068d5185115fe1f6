"""Backdoor triggers: a registry of named, parameterised, deterministic image transforms.

A trigger is described by a small JSON/TOML-able :class:`TriggerSpec` (name, position, size, colour,
strength, seed, params) that cards, reports and ``distill --eval-data`` carry; ``apply(x, spec)`` stamps it
on a [0, 1] NCHW batch of any geometry. Families follow the ABD paper's list (Hong et al., ICML 2023) and
BackdoorBench:

* ``badnets_square`` - solid ``size`` x ``size`` patch of ``colour`` (Gu et al., 2017).
* ``badnets_grid`` - ``size`` x ``size`` checkerboard of ``colour`` / 0 (BackdoorBench grid).
* ``blend`` - ``(1 - a) x + a P`` with a fixed uniform-noise picture ``P`` made from ``seed`` (Chen et al., 2017);
  ``a = strength``.
* ``trojan`` - additive colour patch: a seeded binary ``size`` x ``size`` pattern times ``colour`` times
  ``strength`` added to the image and clipped (Trojan-style watermark, Liu et al., 2018).
* ``sig`` - ``(1 - d) x + d s(col)`` with a vertical sinusoid ``s = (1 + sin(2 pi f col / W)) / 2``
  (Barni et al., 2019); ``d = strength``, ``f = params["f"]``.
* ``watermark`` - faint grid of lines every ``params["period"]`` px added to channel 0 only with amplitude
  ``strength`` (the ownership-verification "target domain" of NTL; Wang et al., ICLR 2022).
* ``wanet`` - smooth warp (Nguyen & Tran, ICLR 2021): a seeded ``k`` x ``k`` flow field in [-1, 1], normalised
  by its mean magnitude, upsampled bicubically; sampling grid = identity + ``s * flow / H``; ``s = strength``,
  ``k = params["k"]``.

Patch triggers change only their patch; global ones (blend, sig, wanet) change the whole image and are the
identity at strength 0. The clean-label attack is a *recipe* (poison target-class images only, see
:mod:`teacher_audit.zoo.recipes`), not a trigger.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

from teacher_audit.errors import UsageError
from teacher_audit.registry import Registry

_CORNERS = ("br", "bl", "tr", "tl", "center")


@dataclass(frozen=True)
class TriggerSpec:
    """A trigger and its parameters.

    Attributes:
        name: registered family (``badnets_square``, ``badnets_grid``, ``blend``, ``trojan``, ``sig``, ``wanet``).
        position: ``"br"``/``"bl"``/``"tr"``/``"tl"``/``"center"`` (1-px margin) or ``[row, col]`` of the
            patch's top-left pixel. Patch families only.
        size: patch side in pixels (patch families).
        colour: per-channel patch colour in [0, 1]; one value is broadcast, three are averaged for grey images.
        strength: family-specific magnitude (blend alpha, SIG delta, WaNet s, Trojan amplitude; ignored by
            BadNets).
        seed: seed of fixed random patterns (blend picture, Trojan pattern, WaNet flow field).
        params: extra family parameters (``f`` for SIG, ``k`` for WaNet).
    """

    name: str
    position: str | tuple[int, int] = "br"
    size: int = 4
    colour: tuple[float, ...] = (1.0,)
    strength: float = 1.0
    seed: int = 0
    params: dict[str, float] = field(default_factory=dict, hash=False, compare=True)

    def with_(self, **changes: Any) -> "TriggerSpec":
        """A copy with some fields changed."""
        return replace(self, **changes)


#: family name -> (x, spec) -> x'
TRIGGERS: Registry[Callable[[torch.Tensor, TriggerSpec], torch.Tensor]] = Registry("trigger")

#: sensible defaults per family (used by recipes and ``make_spec``)
DEFAULTS: dict[str, dict[str, Any]] = {
    "badnets_square": {"size": 4, "position": "br", "colour": (1.0,)},
    "badnets_grid": {"size": 3, "position": "br", "colour": (1.0,)},
    "blend": {"strength": 0.2, "seed": 0},
    "trojan": {"size": 6, "position": "br", "colour": (1.0, 0.2, 0.6), "strength": 0.8, "seed": 0},
    "sig": {"strength": 0.2, "params": {"f": 4.0}},
    "wanet": {"strength": 4.0, "seed": 0, "params": {"k": 4.0}},
    "watermark": {"strength": 0.1, "params": {"period": 4.0}},
}


def make_spec(name: str, **overrides: Any) -> TriggerSpec:
    """A spec for family ``name`` with its defaults, then ``overrides`` (params merged key by key)."""
    return from_dict({"name": name, **overrides})


def spec_to_dict(spec: TriggerSpec) -> dict[str, Any]:
    """JSON/TOML-able dict (lists instead of tuples)."""
    d = asdict(spec)
    d["position"] = spec.position if isinstance(spec.position, str) else list(spec.position)
    d["colour"] = list(spec.colour)
    d["params"] = dict(spec.params)
    return d


def from_dict(d: dict[str, Any]) -> TriggerSpec:
    """Parse and validate a trigger spec dict (inverse of :func:`spec_to_dict`); omitted keys take the
    family defaults (:data:`DEFAULTS`), so ``{"name": "sig"}`` is the same trigger as ``make_spec("sig")``.

    Raises:
        UsageError: unknown family or key, or an out-of-range value (one line).
    """
    if not isinstance(d, dict) or "name" not in d:
        raise UsageError("a trigger spec needs a 'name'")
    known = {"name", "position", "size", "colour", "strength", "seed", "params"}
    extra = set(d) - known
    if extra:
        raise UsageError(f"unknown trigger spec keys: {', '.join(sorted(extra))}")
    name = str(d["name"])
    TRIGGERS.get(name)
    # keys the spec leaves out take the family's defaults (params merged key by key)
    defaults = DEFAULTS.get(name, {})
    params_in = {**dict(defaults.get("params", {})), **dict(d.get("params", {}))}
    d = {**defaults, **d, "params": params_in}
    pos = d.get("position", "br")
    if isinstance(pos, str):
        if pos not in _CORNERS:
            raise UsageError(f"trigger position {pos!r} must be one of {', '.join(_CORNERS)} or [row, col]")
    else:
        if len(pos) != 2:
            raise UsageError("trigger position must be [row, col]")
        pos = (int(pos[0]), int(pos[1]))
    size = int(d.get("size", 4))
    if size < 1:
        raise UsageError("trigger size must be >= 1")
    colour = tuple(float(c) for c in d.get("colour", (1.0,)))
    if not colour or any(c < 0.0 or c > 1.0 for c in colour):
        raise UsageError("trigger colour values must be in [0, 1]")
    strength = float(d.get("strength", 1.0))
    if not math.isfinite(strength) or strength < 0:
        raise UsageError("trigger strength must be a finite number >= 0")
    params = {str(k): float(v) for k, v in dict(d.get("params", {})).items()}
    return TriggerSpec(name=name, position=pos, size=size, colour=colour, strength=strength,
                       seed=int(d.get("seed", 0)), params=params)


def apply(x: torch.Tensor, spec: TriggerSpec | dict[str, Any]) -> torch.Tensor:
    """Stamp the trigger on a [0, 1] NCHW (or CHW) batch; returns a new tensor, ``x`` is untouched."""
    if isinstance(spec, dict):
        spec = from_dict(spec)
    squeeze = x.dim() == 3
    xb = x.unsqueeze(0) if squeeze else x
    if xb.dim() != 4:
        raise UsageError(f"triggers apply to CHW or NCHW tensors, got shape {tuple(x.shape)}")
    out = TRIGGERS.get(spec.name)(xb, spec)
    return out.squeeze(0) if squeeze else out


def patch_box(spec: TriggerSpec, height: int, width: int) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1) of a patch trigger inside an ``height`` x ``width`` image (exclusive ends)."""
    s = min(spec.size, height, width)
    if isinstance(spec.position, str):
        m = 1 if min(height, width) > s + 1 else 0
        r0 = {"t": m, "b": height - s - m, "c": (height - s) // 2}[spec.position[0]]
        c0 = {"l": m, "r": width - s - m, "e": (width - s) // 2}[spec.position[-1]]
    else:
        r0 = min(max(spec.position[0], 0), height - s)
        c0 = min(max(spec.position[1], 0), width - s)
    return r0, r0 + s, c0, c0 + s


def _colour(spec: TriggerSpec, channels: int, x: torch.Tensor) -> torch.Tensor:
    col = torch.tensor(spec.colour, dtype=x.dtype, device=x.device)
    if col.numel() == channels:
        pass
    elif col.numel() == 1:
        col = col.expand(channels)
    elif channels == 1:
        col = col.mean().view(1)
    else:
        raise UsageError(f"trigger colour has {col.numel()} values for {channels}-channel images")
    return col.view(1, channels, 1, 1)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


@TRIGGERS.register("badnets_square")
def _badnets_square(x: torch.Tensor, spec: TriggerSpec) -> torch.Tensor:
    r0, r1, c0, c1 = patch_box(spec, x.shape[-2], x.shape[-1])
    out = x.clone()
    out[:, :, r0:r1, c0:c1] = _colour(spec, x.shape[1], x)
    return out


@TRIGGERS.register("badnets_grid")
def _badnets_grid(x: torch.Tensor, spec: TriggerSpec) -> torch.Tensor:
    r0, r1, c0, c1 = patch_box(spec, x.shape[-2], x.shape[-1])
    h, w = r1 - r0, c1 - c0
    checker = ((torch.arange(h).view(h, 1) + torch.arange(w).view(1, w)) % 2 == 0).to(x.dtype).to(x.device)
    out = x.clone()
    out[:, :, r0:r1, c0:c1] = checker.view(1, 1, h, w) * _colour(spec, x.shape[1], x)
    return out


@TRIGGERS.register("blend")
def _blend(x: torch.Tensor, spec: TriggerSpec) -> torch.Tensor:
    pic = torch.rand((x.shape[1], x.shape[2], x.shape[3]), generator=_gen(spec.seed)).to(x.device, x.dtype)
    a = spec.strength
    return ((1.0 - a) * x + a * pic.unsqueeze(0)).clamp(0.0, 1.0)


@TRIGGERS.register("trojan")
def _trojan(x: torch.Tensor, spec: TriggerSpec) -> torch.Tensor:
    r0, r1, c0, c1 = patch_box(spec, x.shape[-2], x.shape[-1])
    pattern = (torch.rand((r1 - r0, c1 - c0), generator=_gen(spec.seed)) > 0.5).to(x.device, x.dtype)
    add = pattern.view(1, 1, r1 - r0, c1 - c0) * _colour(spec, x.shape[1], x) * spec.strength
    out = x.clone()
    out[:, :, r0:r1, c0:c1] = (out[:, :, r0:r1, c0:c1] + add).clamp(0.0, 1.0)
    return out


@TRIGGERS.register("sig")
def _sig(x: torch.Tensor, spec: TriggerSpec) -> torch.Tensor:
    f = float(spec.params.get("f", 4.0))
    w = x.shape[-1]
    col = torch.arange(w, dtype=x.dtype, device=x.device)
    s = 0.5 * (1.0 + torch.sin(2.0 * math.pi * f * col / w))
    d = spec.strength
    return ((1.0 - d) * x + d * s.view(1, 1, 1, w)).clamp(0.0, 1.0)


def wanet_grid(spec: TriggerSpec, height: int, width: int) -> torch.Tensor:
    """The fixed WaNet sampling grid (1, H, W, 2) for ``spec`` (identity at strength 0)."""
    k = max(2, int(spec.params.get("k", 4)))
    flow = torch.rand((1, 2, k, k), generator=_gen(spec.seed)) * 2.0 - 1.0
    flow = flow / flow.abs().mean()
    flow = F.interpolate(flow, size=(height, width), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    ys = torch.linspace(-1.0, 1.0, height)
    xs = torch.linspace(-1.0, 1.0, width)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    ident = torch.stack((gx, gy), dim=-1).unsqueeze(0)
    return (ident + spec.strength * flow / height).clamp(-1.0, 1.0)


@TRIGGERS.register("wanet")
def _wanet(x: torch.Tensor, spec: TriggerSpec) -> torch.Tensor:
    if spec.strength == 0:
        return x.clone()
    grid = wanet_grid(spec, x.shape[-2], x.shape[-1]).to(x.device, x.dtype).expand(x.shape[0], -1, -1, -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True).clamp(0.0, 1.0)


@TRIGGERS.register("watermark")
def _watermark(x: torch.Tensor, spec: TriggerSpec) -> torch.Tensor:
    period = max(2, int(spec.params.get("period", 4)))
    h, w = x.shape[-2], x.shape[-1]
    rows = (torch.arange(h) % period == 0).view(h, 1)
    cols = (torch.arange(w) % period == 0).view(1, w)
    grid = (rows | cols).to(x.device, x.dtype)
    out = x.clone()
    out[:, 0] = (out[:, 0] + spec.strength * grid).clamp(0.0, 1.0)
    return out


def describe(spec: TriggerSpec) -> str:
    """A short human description, e.g. ``badnets_square 4px br``."""
    if spec.name in ("badnets_square", "badnets_grid", "trojan"):
        pos = spec.position if isinstance(spec.position, str) else f"@{spec.position[0]},{spec.position[1]}"
        return f"{spec.name} {spec.size}px {pos}"
    extra = " ".join(f"{k}={v:g}" for k, v in sorted(spec.params.items()))
    return f"{spec.name} strength={spec.strength:g} {extra}".strip()
