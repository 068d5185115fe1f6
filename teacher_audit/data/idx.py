"""Reader for IDX files (the MNIST / Fashion-MNIST container format), gzip-compressed or not.

Fashion-MNIST (Xiao et al., 2017) ships in Debian as ``dataset-fashion-mnist`` with the four original
``*-ubyte.gz`` files under ``/usr/share/datasets/fashion-mnist``. torchvision only reads unpacked copies
under ``<root>/FashionMNIST/raw``, so we parse the IDX header ourselves (no copy, nothing downloaded).

Threat assumption: these are evaluation data chosen by the user, not attacker input; still, headers are
validated and a malformed file raises ``CorruptInput`` with one line.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from teacher_audit.errors import CorruptInput

#: IDX type byte -> numpy dtype (big-endian where it matters).
_IDX_DTYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.gz`` is decompressed on the fly).

    Args:
        path: file path.

    Returns:
        The array with the shape stored in the header (e.g. ``(60000, 28, 28)`` uint8 images).

    Raises:
        CorruptInput: bad magic, unknown type, or a payload of the wrong size.
    """
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rb") as fh:  # type: ignore[operator]
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise CorruptInput(f"cannot read IDX file {p}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise CorruptInput(f"{p} is not an IDX file (bad magic)")
    dtype = _IDX_DTYPES.get(raw[2])
    if dtype is None:
        raise CorruptInput(f"{p}: unknown IDX element type 0x{raw[2]:02x}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CorruptInput(f"{p}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dt = np.dtype(dtype)
    expected = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    if len(raw) - header != expected:
        raise CorruptInput(f"{p}: IDX payload has {len(raw) - header} bytes, header says {expected}")
    return np.frombuffer(raw, dtype=dt, offset=header).reshape(shape)
