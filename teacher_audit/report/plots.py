"""Evidence pictures as PNG bytes (matplotlib, Agg backend: no display, no network).

Probe engineers call these to attach ``Evidence(kind="image", png=...)`` to a ``ProbeResult``:

- ``image_grid_png(batch)``: a grid of (synthetic or suspect) samples;
- ``histogram_png(values)``: e.g. the per-sample robustness histogram of the NTL probe (ATEsc,
  Hong et al. ICML 2025), with optional threshold lines;
- ``trigger_png(delta)``: an inverted trigger / universal perturbation (ABD, Hong et al. ICML 2023),
  shown signed (diverging colours) next to its magnitude.

Inputs are tensors or arrays in the teacher's raw value range; nothing is read from disk. The
figures are small (a few tens of KB) so that the HTML report stays one reasonable file.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg", force=True)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

_DPI = 80


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _hwc(img: np.ndarray) -> np.ndarray:
    """CHW (C in 1,3) -> HW or HWC for imshow."""
    if img.ndim == 3 and img.shape[0] in (1, 3):
        img = img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0))
    return img


def image_grid_png(batch: Any, *, value_range: tuple[float, float] = (0.0, 1.0), nrow: int | None = None,
                   labels: Sequence[str] | None = None, max_images: int = 64, title: str | None = None) -> bytes:
    """A grid of images as PNG bytes.

    Args:
        batch: NCHW (C = 1 or 3) or NHW tensor/array in ``value_range``.
        value_range: raw pixel range used for display (clipped).
        nrow: images per row (default: about sqrt(N)).
        labels: optional per-image caption (e.g. the teacher's predicted class).
        max_images: at most this many of the first images are drawn.
        title: optional figure title.
    """
    arr = _to_numpy(batch)
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[0] == 0:
        raise ValueError(f"image_grid_png wants a non-empty NCHW batch, got shape {tuple(arr.shape)}")
    arr = arr[:max_images]
    lo, hi = float(value_range[0]), float(value_range[1])
    arr = np.clip((arr - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    n = arr.shape[0]
    cols = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    cell_h = 1.1 + (0.25 if labels is not None else 0.0)
    fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols, cell_h * rows + (0.3 if title else 0)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < n:
            img = _hwc(arr[i])
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
            if labels is not None and i < len(labels):
                ax.set_title(str(labels[i])[:16], fontsize=7)
    if title:
        fig.suptitle(title[:80], fontsize=9)
    return _png(fig)


def histogram_png(values: Any, *, bins: int = 40, thresholds: Sequence[float] = (), xlabel: str = "value",
                  title: str | None = None, log_y: bool = False, groups: dict[str, Any] | None = None) -> bytes:
    """A histogram as PNG bytes (e.g. per-sample minimal flipping epsilon).

    Args:
        values: 1-D values (ignored when ``groups`` is given).
        bins: number of bins.
        thresholds: vertical dashed lines (e.g. the robust/fragile split).
        xlabel, title: labels.
        log_y: logarithmic counts.
        groups: optional ``{label: values}`` drawn as overlaid histograms with a legend.
    """
    fig, ax = plt.subplots(figsize=(4.8, 3.0))
    series = {k: _to_numpy(v).ravel() for k, v in (groups or {"": values}).items()}
    allv = np.concatenate([v for v in series.values() if v.size] or [np.zeros(0)])
    allv = allv[np.isfinite(allv)]
    if allv.size == 0:
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
    else:
        lo, hi = float(allv.min()), float(allv.max())
        if hi - lo <= 1e-6 * max(1.0, abs(lo), abs(hi)):  # (near-)constant values: one visible bar
            pad = 0.5 * max(1.0, abs(lo)) * 1e-3 if lo else 0.5
            lo, hi, bins = lo - pad, hi + pad, 1
        edges = np.histogram_bin_edges(allv, bins=bins, range=(lo, hi))
        for label, v in series.items():
            v = v[np.isfinite(v)]
            ax.hist(v, bins=edges, alpha=0.6 if groups else 0.9, label=label or None)
        for t in thresholds:
            ax.axvline(float(t), color="crimson", linestyle="--", linewidth=1.2)
        if groups:
            ax.legend(fontsize=7)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel[:60])
    ax.set_ylabel("count")
    if title:
        ax.set_title(title[:80], fontsize=9)
    return _png(fig)


def trigger_png(delta: Any, *, mask: Any | None = None, title: str | None = None) -> bytes:
    """An inverted trigger / perturbation as PNG bytes: signed mean over channels and |delta| (or mask).

    Args:
        delta: CHW or HW perturbation (raw-range units) or a pattern; a leading batch dim of 1 is dropped.
        mask: optional HW / 1HW mask in [0, 1] (mask+pattern inversion); shown instead of |delta|.
        title: optional title.
    """
    d = _to_numpy(delta)
    if d.ndim == 4 and d.shape[0] == 1:
        d = d[0]
    if d.ndim == 3:
        signed, mag = d.mean(axis=0), np.abs(d).max(axis=0)
    elif d.ndim == 2:
        signed, mag = d, np.abs(d)
    else:
        raise ValueError(f"trigger_png wants CHW or HW, got shape {tuple(d.shape)}")
    if mask is not None:
        m = _to_numpy(mask)
        mag = m.reshape(m.shape[-2], m.shape[-1])
    fig, axes = plt.subplots(1, 2, figsize=(4.6, 2.4))
    lim = float(np.abs(signed).max()) or 1.0
    im0 = axes[0].imshow(signed, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    axes[0].set_title("signed (channel mean)", fontsize=8)
    im1 = axes[1].imshow(mag, cmap="magma", vmin=0.0, vmax=float(mag.max()) or 1.0, interpolation="nearest")
    axes[1].set_title("mask" if mask is not None else "|delta| (channel max)", fontsize=8)
    for ax, im in ((axes[0], im0), (axes[1], im1)):
        ax.set_axis_off()
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title[:80], fontsize=9)
    return _png(fig)
