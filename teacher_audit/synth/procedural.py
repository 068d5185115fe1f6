"""Procedural probe images: dead-leaves pictures drawn from noise, with no data and no teacher pass.

A dead-leaves image (Matheron's model; used as data-free pre-training images by Baradad et al., NeurIPS
2021) is a stack of occluding discs and rectangles whose sizes follow a power law (radius density ~ r^-3),
which gives it the edges, flat regions and scale mix of natural pictures without any object in it. The
backdoor probes use such pictures as inputs that carry no class evidence: they need no BatchNorm prior
(unlike the engine's generator), so they behave the same on a teacher and on its BN-folded ONNX export.

Each picture's per-channel mean and standard deviation are moved to the teacher's own input statistics
(``InputSpec.mean`` / ``std``, when intake knows them from a card, a flag or the architecture registry): a
Fashion-MNIST teacher sees dark pictures with bright shapes, an ImageNet one mid-grey colour pictures.
An ONNX graph that normalises its own input tells them too (:mod:`teacher_audit.intake.onnx_norm`).
Unknown statistics (intake's defaults) leave the pictures as drawn; :func:`spec_moments` says which case
holds, and the sink probe does not score a teacher whose statistics are unknown (docs/backdoor.md).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from teacher_audit.intake.spec import InputSpec


def dead_leaves(n: int, shape: tuple[int, int, int], generator: torch.Generator, shapes: int = 60,
                rmin: float = 0.03, rmax: float = 0.5) -> torch.Tensor:
    """``n`` dead-leaves pictures of ``shape`` (C, H, W) in [0, 1], on the CPU.

    Args:
        shapes: discs and rectangles stacked per picture (later ones occlude earlier ones).
        rmin, rmax: smallest and largest radius as a fraction of the picture's side.
    """
    c, h, w = shape
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.rand((n, c, 1, 1), generator=generator).expand(n, c, h, w).clone()
    a, b = rmin ** -2, rmax ** -2
    for _ in range(shapes):
        r = (a - torch.rand(n, generator=generator) * (a - b)) ** -0.5  # inverse CDF of density ~ r^-3
        cx = torch.rand(n, generator=generator)[:, None, None]
        cy = torch.rand(n, generator=generator)[:, None, None]
        disc = torch.rand(n, generator=generator)[:, None, None] < 0.5
        rr = r[:, None, None]
        inside = torch.where(disc, (xx - cx) ** 2 + (yy - cy) ** 2 < rr ** 2,
                             ((xx - cx).abs() < rr) & ((yy - cy).abs() < 0.6 * rr))[:, None].float()
        colour = torch.rand((n, c, 1, 1), generator=generator)
        if c > 1 and torch.rand(1, generator=generator).item() < 0.5:
            colour = colour.mean(1, keepdim=True).expand(n, c, 1, 1)  # half of the shapes grey
        img = img * (1 - inside) + colour * inside
    return img


def match_moments(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Each picture's per-channel mean and sd moved to ``mean`` / ``std`` (unit scale), clamped to [0, 1]."""
    m = x.mean(dim=(2, 3), keepdim=True)
    s = x.std(dim=(2, 3), keepdim=True).clamp_min(1e-3)
    return ((x - m) / s * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)).clamp(0.0, 1.0)


def _unknown(source: str | None, values: tuple[float, ...], default: float) -> bool:
    """Intake's default (or, for a spec built in code without sources, the default values themselves)."""
    return source == "default" if source is not None else all(float(v) == default for v in values)


def spec_moments(spec: InputSpec) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The teacher's input mean and sd on the unit scale of its value range, or None when intake does not
    know them (defaults) or they are not those of pictures in the range.

    Known means: set by a card, a flag or the registry; or, when those leave them at the defaults, the
    normalisation an ONNX graph applies to its own input (``spec.graph_normalisation``)."""
    if _unknown(spec.sources.get("mean"), spec.mean, 0.0) or _unknown(spec.sources.get("std"), spec.std, 1.0):
        if spec.graph_normalisation is None:
            return None
        mean_v, std_v = spec.graph_normalisation
    else:
        mean_v, std_v = spec.mean, spec.std
    lo, hi = (float(v) for v in spec.value_range)
    if hi <= lo or len(mean_v) != spec.channels or len(std_v) != spec.channels:
        return None
    mean = (torch.tensor(mean_v, dtype=torch.float32) - lo) / (hi - lo)
    std = torch.tensor(std_v, dtype=torch.float32) / (hi - lo)
    if not (bool(((mean > 0) & (mean < 1)).all()) and bool(((std > 0) & (std <= 0.5)).all())):
        return None
    return mean, std


def probe_images(spec: InputSpec, n: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``n`` dead-leaves pictures for a teacher of ``spec``, moment-matched when its statistics are known,
    in its raw value range on ``device``."""
    g = torch.Generator().manual_seed(seed)
    x = dead_leaves(n, (spec.channels, spec.height, spec.width), g)
    moments = spec_moments(spec)
    if moments is not None:
        x = match_moments(x, *moments)
    lo, hi = (float(v) for v in spec.value_range)
    return (lo + (hi - lo) * x).to(device)


#: most picture values drawn at once (64 MB of float32): larger inputs are drawn in chunks
MAX_FLOATS = 1 << 24


def probe_batches(spec: InputSpec, n: int, seed: int, device: torch.device | str = "cpu",
                  max_floats: int = MAX_FLOATS) -> Iterator[torch.Tensor]:
    """:func:`probe_images` in chunks of at most ``max_floats`` values, so memory stays bounded at any input
    size. When all ``n`` pictures fit in one chunk it yields exactly ``probe_images(spec, n, seed)``; otherwise
    chunk ``j`` is drawn with its own seed (``seed * 1_000_003 + j``)."""
    per = max(1, max_floats // max(1, spec.channels * spec.height * spec.width))
    if per >= n:
        yield probe_images(spec, n, seed, device)
        return
    for j, start in enumerate(range(0, n, per)):
        yield probe_images(spec, min(per, n - start), seed * 1_000_003 + j, device)


def patch_stamps(shape: tuple[int, int, int], seed: int = 0,
                 sizes: tuple[float, ...] = (0.11, 0.18)) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """Candidate patch triggers for a ``shape`` (C, H, W) input: white, black, checkerboard and a random binary
    pattern, at ``sizes`` (fractions of the shorter side), on a 3 x 3 grid of positions (corners, edge centres,
    centre; 1-pixel margin). Each is ``(name, mask (1, 1, H, W) in {0, 1}, pattern (1, C, H, W) in [0, 1])``."""
    c, h, w = shape
    g = torch.Generator().manual_seed(seed)
    out: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    for frac in sizes:
        p = max(2, round(frac * min(h, w)))
        grid = (torch.arange(p)[:, None] + torch.arange(p)[None]) % 2
        pats = {"white": torch.ones(p, p), "black": torch.zeros(p, p), "checker": grid.float(),
                "random": (torch.rand(p, p, generator=g) < 0.5).float()}
        rows, cols = (1, (h - p) // 2, h - p - 1), (1, (w - p) // 2, w - p - 1)
        for name, pat in pats.items():
            for i, y0 in enumerate(rows):
                for j, x0 in enumerate(cols):
                    m = torch.zeros(1, 1, h, w)
                    m[..., y0:y0 + p, x0:x0 + p] = 1.0
                    full = torch.zeros(1, c, h, w)
                    full[..., y0:y0 + p, x0:x0 + p] = pat
                    out.append((f"{name}{p}@{i}{j}", m, full))
    return out
