"""Data loaders read the real files (Debian Fashion-MNIST, scikit-learn digits) and fit any geometry."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from teacher_audit.data import DatasetUnavailable, SHIFTS, apply_shift, load_dataset, load_raw, names
from teacher_audit.data.idx import read_idx
from teacher_audit.errors import CorruptInput, UsageError
from teacher_audit.intake.spec import InputSpec

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not (FMNIST / "t10k-labels-idx1-ubyte.gz").is_file(),
                                  reason="apt-get install dataset-fashion-mnist")


@needs_fmnist
def test_fashion_mnist_idx_files_are_read_directly() -> None:
    labels = read_idx(FMNIST / "t10k-labels-idx1-ubyte.gz")
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10
    d = load_raw("fashion-mnist", "test")
    assert d.x.shape == (10000, 1, 28, 28) and d.x.dtype == torch.uint8
    assert torch.equal(d.y, torch.from_numpy(labels.astype(np.int64)))
    assert 60 < d.x.float().mean() < 90  # Fashion-MNIST mean ~0.286 * 255


@needs_fmnist
def test_load_dataset_fits_the_spec() -> None:
    spec = InputSpec(channels=3, height=32, width=32, value_range=(-1.0, 1.0))
    d = load_dataset("fashion-mnist", "test", spec=spec, limit=16)
    assert d.x.shape == (16, 3, 32, 32) and d.x.dtype == torch.float32
    assert d.x.min() >= -1.0 and d.x.max() <= 1.0 and d.x.min() < -0.9
    assert torch.equal(d.x[:, 0], d.x[:, 1])  # grey replicated


@needs_fmnist
def test_rgb32_variant_is_deterministic_colour() -> None:
    d = load_raw("fashion-mnist-rgb32", "test", limit=64)
    assert d.x.shape == (64, 3, 32, 32)
    assert not torch.equal(d.x[:, 0], d.x[:, 1])  # really coloured
    grey = load_raw("fashion-mnist", "test", limit=64).x.float()
    lum = d.x[:, :, 2:30, 2:30].float().mean(1, keepdim=True)
    corr = torch.corrcoef(torch.stack([lum.flatten(), grey.flatten()]))[0, 1]
    assert corr > 0.8  # the object is still there
    from teacher_audit.data.datasets import _rgb32
    again = _rgb32.__wrapped__("test", None)  # bypass the cache: recomputed bit for bit
    assert torch.equal(again.x[:64], d.x)


def test_digits_split_and_resize() -> None:
    tr, te = load_raw("digits", "train"), load_raw("digits", "test")
    assert len(tr) + len(te) == 1797 and len(te) == 359
    assert sorted(set(te.y.tolist())) == list(range(10))
    d = load_dataset("digits", "test", spec=InputSpec(channels=1, height=28, width=28))
    assert d.x.shape == (359, 1, 28, 28) and 0.0 <= d.x.min() and d.x.max() <= 1.0


def test_missing_fashion_mnist_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(DatasetUnavailable) as exc:
        load_raw(f"fashion-mnist:{tmp_path}", "test")
    msg = str(exc.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "\n" not in msg


def test_unknown_names_and_splits_are_usage_errors() -> None:
    with pytest.raises(UsageError):
        load_raw("nope", "test")
    with pytest.raises(UsageError):
        load_raw("digits", "val")
    assert "imagefolder:PATH" in names() and "fashion-mnist-grating" in names()


def test_corrupt_idx_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as fh:
        fh.write(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"\x01\x02")  # says 5 bytes, has 2
    with pytest.raises(CorruptInput):
        read_idx(bad)
    magic = tmp_path / "magic"
    magic.write_bytes(b"PK\x03\x04abcd")
    with pytest.raises(CorruptInput):
        read_idx(magic)


def test_imagefolder(tmp_path: Path) -> None:
    from PIL import Image

    for cls, value in (("cat", 30), ("dog", 220)):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(np.full((12, 10, 3), value + i, dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    d = load_dataset(f"imagefolder:{tmp_path}", "test", spec=InputSpec(channels=3, height=16, width=16))
    assert d.x.shape == (6, 3, 16, 16) and d.class_names == ["cat", "dog"]
    assert d.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert d.x[:3].mean() < 0.2 < 0.8 < d.x[3:].mean()


@pytest.mark.parametrize("shift", SHIFTS.names())
def test_shifts_are_deterministic_and_in_range(shift: str) -> None:
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    a, b = apply_shift(shift, x), apply_shift(shift, x.clone())
    assert torch.equal(a, b) and a.shape == x.shape
    assert a.min() >= 0.0 and a.max() <= 1.0 and not torch.equal(a, x)
