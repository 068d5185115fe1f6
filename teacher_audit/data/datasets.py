"""Evaluation datasets by name, returned as tensors in the teacher's geometry.

Nothing here downloads: every source is a local file (Debian ``dataset-fashion-mnist``, scikit-learn's
bundled digits, or a folder the user points to). The scan itself stays data-free; these data only serve
evaluation (``distill --eval-data``), the benchmark zoo and tests.

Names (see :data:`DATASETS` and ``teacher_audit.data.names()``):
    ``fashion-mnist`` (1x28x28), ``fashion-mnist-rgb32`` (3x32x32 deterministic colour version),
    ``fashion-mnist-<shift>`` for every style shift in :mod:`teacher_audit.data.domains`, ``digits``
    (scikit-learn 8x8), and prefixed local sources ``fashion-mnist:ROOT``, ``mnist:ROOT``,
    ``cifar10:ROOT``, ``cifar100:ROOT``, ``svhn:ROOT``, ``gtsrb:ROOT`` (torchvision, ``download=False``)
    and ``imagefolder:PATH`` (one sub-folder per class).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from teacher_audit.data.geometry import fit
from teacher_audit.data.idx import read_idx
from teacher_audit.errors import AuditError, UsageError
from teacher_audit.registry import Registry

#: Where Debian's ``dataset-fashion-mnist`` installs the IDX files; ``TA_FASHION_MNIST`` overrides it.
FASHION_MNIST_ROOT = Path(os.environ.get("TA_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


class DatasetUnavailable(AuditError):
    """A named dataset is not present on this machine (the message says how to install it)."""


@dataclass
class LabeledImages:
    """Images and labels.

    Attributes:
        x: uint8 NCHW images in native geometry (``raw=True``) or float32 in the requested geometry/range.
        y: int64 labels.
        class_names: optional label names.
    """

    x: torch.Tensor
    y: torch.Tensor
    class_names: list[str] | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])


#: name -> loader(split, root) returning native uint8 NCHW images.
DATASETS: Registry[Callable[[str, str | None], LabeledImages]] = Registry("dataset")


def _check_split(split: str) -> str:
    if split not in ("train", "test"):
        raise UsageError(f"unknown split {split!r}; use 'train' or 'test'")
    return split


@functools.lru_cache(maxsize=4)
def _fashion_mnist(split: str, root: str | None) -> LabeledImages:
    base = Path(root) if root else FASHION_MNIST_ROOT
    stem = "train" if split == "train" else "t10k"
    img = lbl = None
    for suffix in (".gz", ""):
        cand_i = base / f"{stem}-images-idx3-ubyte{suffix}"
        cand_l = base / f"{stem}-labels-idx1-ubyte{suffix}"
        if cand_i.is_file() and cand_l.is_file():
            img, lbl = cand_i, cand_l
            break
    if img is None or lbl is None:
        raise DatasetUnavailable(f"Fashion-MNIST not found in {base}; install it with "
                                 "'apt-get install dataset-fashion-mnist' or pass fashion-mnist:ROOT")
    x = torch.from_numpy(read_idx(img).copy()).unsqueeze(1)
    y = torch.from_numpy(read_idx(lbl).astype(np.int64))
    if x.shape[0] != y.shape[0]:
        raise AuditError(f"Fashion-MNIST {split}: {x.shape[0]} images but {y.shape[0]} labels")
    return LabeledImages(x, y, list(FASHION_MNIST_CLASSES))


@DATASETS.register("fashion-mnist", channels=1, height=28, width=28, classes=10)
def fashion_mnist(split: str, root: str | None = None) -> LabeledImages:
    """Fashion-MNIST from IDX files (Debian package or ``root``)."""
    return _fashion_mnist(_check_split(split), root)


@functools.lru_cache(maxsize=2)
def _rgb32(split: str, root: str | None) -> LabeledImages:
    base = _fashion_mnist(split, root)
    x = base.x.float() / 255.0
    n = x.shape[0]
    rng = np.random.default_rng(20231 if split == "train" else 20232)
    fg = torch.from_numpy(rng.uniform(0.45, 1.0, size=(n, 3)).astype(np.float32)).view(n, 3, 1, 1)
    bg = torch.from_numpy(rng.uniform(0.0, 0.3, size=(n, 3)).astype(np.float32)).view(n, 3, 1, 1)
    out = torch.empty(n, 3, 32, 32, dtype=torch.uint8)
    for s in range(0, n, 5000):
        xs = x[s:s + 5000]
        canvas = bg[s:s + 5000].expand(-1, -1, 32, 32).clone()
        canvas[:, :, 2:30, 2:30] = xs * fg[s:s + 5000] + (1.0 - xs) * bg[s:s + 5000]
        out[s:s + 5000] = (canvas * 255.0).round().clamp(0, 255).to(torch.uint8)
    return LabeledImages(out, base.y, base.class_names)


@DATASETS.register("fashion-mnist-rgb32", channels=3, height=32, width=32, classes=10)
def fashion_mnist_rgb32(split: str, root: str | None = None) -> LabeledImages:
    """A 3x32x32 colour Fashion-MNIST: per-image seeded foreground/background colours, 2-px padding.

    Deterministic (fixed seeds per split), so CIFAR-geometry networks can be trained and evaluated on
    real images that every machine with the Debian package reproduces bit for bit.
    """
    return _rgb32(_check_split(split), root)


@DATASETS.register("digits", channels=1, height=8, width=8, classes=10)
def digits(split: str, root: str | None = None) -> LabeledImages:
    """scikit-learn's bundled 8x8 digits (1,797 images, values 0-16); a fixed (seed 0) 20 % test split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy((d.images * (255.0 / 16.0)).round().astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    order = torch.from_numpy(np.random.default_rng(0).permutation(x.shape[0]))
    n_test = x.shape[0] // 5
    keep = order[:n_test] if _check_split(split) == "test" else order[n_test:]
    return LabeledImages(x[keep], y[keep], [str(i) for i in range(10)])


def _pil_to_uint8(img: object) -> torch.Tensor:
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def _from_pil_dataset(ds: object, limit: int | None = None) -> LabeledImages:
    n = len(ds)  # type: ignore[arg-type]
    if limit is not None:
        n = min(n, limit)
    xs, ys = [], []
    size = None
    for i in range(n):
        img, label = ds[i]  # type: ignore[index]
        t = _pil_to_uint8(img)
        if size is None:
            size = t.shape
        if t.shape != size:  # mixed sizes (ImageFolder, GTSRB): resize to the first image's size
            t = (fit(t[None].float() / 255.0, size[0], size[1], size[2])[0] * 255).round().to(torch.uint8)
        xs.append(t)
        ys.append(int(label))
    if not xs:
        raise AuditError("dataset is empty")
    names = getattr(ds, "classes", None)
    return LabeledImages(torch.stack(xs), torch.tensor(ys, dtype=torch.int64),
                         list(names) if names else None)


def _torchvision(kind: str, split: str, root: str, limit: int | None) -> LabeledImages:
    import torchvision.datasets as tvd

    train = split == "train"
    try:
        if kind == "cifar10":
            ds = tvd.CIFAR10(root, train=train, download=False)
        elif kind == "cifar100":
            ds = tvd.CIFAR100(root, train=train, download=False)
        elif kind == "mnist":
            ds = tvd.MNIST(root, train=train, download=False)
        elif kind == "svhn":
            ds = tvd.SVHN(root, split="train" if train else "test", download=False)
        elif kind == "gtsrb":
            ds = tvd.GTSRB(root, split="train" if train else "test", download=False)
        else:
            ds = tvd.ImageFolder(root)
    except (RuntimeError, FileNotFoundError, OSError) as exc:
        msg = " ".join(str(exc).split())
        raise DatasetUnavailable(f"{kind} not found under {root} (nothing is downloaded): {msg}") from None
    return _from_pil_dataset(ds, limit)


_PREFIXED = ("fashion-mnist", "mnist", "cifar10", "cifar100", "svhn", "gtsrb", "imagefolder")


def names() -> list[str]:
    """Registered dataset names plus the ``prefix:PATH`` forms."""
    return DATASETS.names() + [f"{p}:PATH" for p in _PREFIXED]


def load_raw(name: str, split: str = "test", limit: int | None = None) -> LabeledImages:
    """Load a dataset by name in its native geometry as uint8 NCHW (see module docstring for names)."""
    _check_split(split)
    if ":" in name:
        kind, _, path = name.partition(":")
        if kind not in _PREFIXED or not path:
            raise UsageError(f"unknown dataset {name!r}; known: {', '.join(names())}")
        data = fashion_mnist(split, path) if kind == "fashion-mnist" else _torchvision(kind, split, path, limit)
    else:
        data = DATASETS.get(name)(split, None)
    if limit is not None and limit < len(data):
        data = LabeledImages(data.x[:limit], data.y[:limit], data.class_names)
    return data


def load_dataset(name: str, split: str = "test", spec: object | None = None, limit: int | None = None,
                 ) -> LabeledImages:
    """Load a dataset as float32 images in [0, 1] (or ``spec.value_range``), resized to ``spec``.

    Args:
        name: dataset name (``fashion-mnist``, ``fashion-mnist-rgb32``, ``digits``, ``imagefolder:PATH``...).
        split: ``"train"`` or ``"test"``.
        spec: an :class:`~teacher_audit.intake.spec.InputSpec` (channels/height/width/value_range) or None
            for the native geometry.
        limit: keep only the first ``limit`` images.

    Returns:
        :class:`LabeledImages` with float32 ``x`` and int64 ``y``.

    Raises:
        DatasetUnavailable: the files are missing (one line with the install command).
        UsageError: unknown name or split.
    """
    data = load_raw(name, split, limit)
    x = data.x.float() / 255.0
    if spec is not None:
        x = fit(x, spec.channels, spec.height, spec.width, tuple(spec.value_range))  # type: ignore[attr-defined]
    return LabeledImages(x, data.y, data.class_names)


def _make_shifted(shift: str) -> Callable[[str, str | None], LabeledImages]:
    def loader(split: str, root: str | None = None) -> LabeledImages:
        return _shifted(_check_split(split), root, shift)

    loader.__doc__ = f"Fashion-MNIST with the {shift!r} style shift (see teacher_audit.data.domains)."
    return loader


@functools.lru_cache(maxsize=4)
def _shifted(split: str, root: str | None, shift: str) -> LabeledImages:
    from teacher_audit.data.domains import apply_shift

    base = _fashion_mnist(split, root)
    x = apply_shift(shift, base.x.float() / 255.0)
    return LabeledImages((x * 255.0).round().clamp(0, 255).to(torch.uint8), base.y, base.class_names)


def _register_shifts() -> None:
    from teacher_audit.data.domains import SHIFTS

    for shift in SHIFTS.names():
        DATASETS.register(f"fashion-mnist-{shift}", channels=1, height=28, width=28, classes=10,
                          shift=shift)(_make_shifted(shift))


_register_shifts()
