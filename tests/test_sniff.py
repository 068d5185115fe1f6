"""Format sniffing by content: every format is recognised under a misleading extension; unknowns are refused."""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from teacher_audit.errors import CorruptInput, UnsupportedFormat
from teacher_audit.intake.sniff import MAX_SAFETENSORS_HEADER, Format, sniff


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))


def _make(kind: str, path: Path) -> Path:
    net = _net()
    if kind == "torch_zip":
        torch.save(net.state_dict(), path)
    elif kind == "torch_legacy":
        torch.save(net.state_dict(), path, _use_new_zipfile_serialization=False)
    elif kind == "torchscript":
        torch.jit.save(torch.jit.trace(net, torch.zeros(1, 1, 8, 8)), str(path))
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"a": [1, 2, 3]}, protocol=2))
    elif kind == "safetensors":
        from safetensors.torch import save_file

        save_file(net.state_dict(), str(path))
    elif kind == "onnx":
        torch.onnx.export(net, (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False)
    return path


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("kind", [f.value for f in Format])
def test_each_format_by_content_not_extension(tmp_path: Path, kind: str) -> None:
    # the extension always lies: ".safetensors" for pickles, ".onnx" for zips, ...
    lie = {"torch_zip": "x.onnx", "torch_legacy": "x.safetensors", "torchscript": "x.safetensors",
           "pickle": "x.onnx", "safetensors": "x.pt", "onnx": "x.pt"}[kind]
    res = sniff(_make(kind, tmp_path / lie))
    assert res.format.value == kind and res.reason


def test_protocol0_pickle_is_a_pickle(tmp_path: Path) -> None:
    p = tmp_path / "p0"
    p.write_bytes(pickle.dumps([1, "a"], protocol=0))
    assert sniff(p).format == Format.PICKLE


def test_zip_members_listed(tmp_path: Path) -> None:
    res = sniff(_make("torch_zip", tmp_path / "m.bin"))
    assert any(n.endswith("/data.pkl") for n in res.members)


@pytest.mark.parametrize("content,needle", [
    (b"GIF89a" + bytes(100), "unknown format"),
    (b"\x1f\x8b\x08\x00" + bytes(50), "gzip"),
    (b"\x93NUMPY\x01\x00" + bytes(50), "numpy"),
    (b"\x89HDF\r\n\x1a\n" + bytes(50), "HDF5"),
    (b"hello world, not a model\n", "unknown format"),
])
def test_unknown_content_unsupported(tmp_path: Path, content: bytes, needle: str) -> None:
    p = tmp_path / "model.pt"
    p.write_bytes(content)
    with pytest.raises(UnsupportedFormat, match=needle):
        sniff(p)


def test_plain_zip_is_unsupported(tmp_path: Path) -> None:
    p = tmp_path / "a.pt"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(UnsupportedFormat, match="data.pkl"):
        sniff(p)


def test_empty_file_is_corrupt(tmp_path: Path) -> None:
    p = tmp_path / "e.pt"
    p.write_bytes(b"")
    with pytest.raises(CorruptInput, match="empty"):
        sniff(p)


def _st(header: dict, data: bytes = b"", claim: int | None = None) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h) if claim is None else claim) + h + data


@pytest.mark.parametrize("blob,needle", [
    (_st({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4), "outside the data section"),
    (_st({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, claim=2 * 1024**3), "claims"),
    (_st({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, claim=MAX_SAFETENSORS_HEADER + 1),
     "limit"),
    (_st({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8), "malformed"),
    (_st({"w": 3}), "not an object"),
    (struct.pack("<Q", 6) + b"{nope}", "JSON"),
])
def test_bad_safetensors_headers_are_corrupt(tmp_path: Path, blob: bytes, needle: str) -> None:
    p = tmp_path / "b.safetensors"
    p.write_bytes(blob)
    with pytest.raises(CorruptInput, match=needle):
        sniff(p)


def test_huge_header_claim_is_not_read(tmp_path: Path) -> None:
    """A 2 GB header claim is rejected from the 8-byte length alone (the file is tiny)."""
    p = tmp_path / "huge.safetensors"
    p.write_bytes(struct.pack("<Q", 2 * 1024**3) + b'{"a":1}')
    with pytest.raises(CorruptInput, match=r"2147483648"):
        sniff(p)


@pytest.mark.filterwarnings("ignore")
def test_truncated_onnx_is_corrupt(tmp_path: Path) -> None:
    src = _make("onnx", tmp_path / "m.onnx")
    p = tmp_path / "t.onnx"
    p.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(CorruptInput, match="ONNX"):
        sniff(p)
