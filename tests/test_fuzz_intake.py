"""Fuzz: mutated checkpoints of every format through sniff + scan + load raise only ``AuditError``s.

Bounded for the test suite (``TA_FUZZ_EXAMPLES``, default 200); ``make fuzz`` raises it. Two mutation modes:
raw byte edits of the whole file (flip, overwrite, insert, delete, truncate, duplicate), and edits of one
zip member re-packed into a valid zip (so mutated pickles reach the scanner and ``torch.load`` instead of
failing the zip CRC). ``load_teacher`` wraps unexpected exceptions as ``CorruptInput("unexpected failure
...")``; such a message fails the test too, so that safety net cannot hide a bug.
"""

from __future__ import annotations

import functools
import io
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teacher_audit.errors import AuditError
from teacher_audit.intake.load import LoadOptions, load_teacher
from teacher_audit.intake.pickle_scan import scan_file
from teacher_audit.intake.sniff import PICKLE_FORMATS, sniff

EXAMPLES = int(os.environ.get("TA_FUZZ_EXAMPLES", "200"))
pytestmark = pytest.mark.filterwarnings("ignore")


@functools.lru_cache(maxsize=1)
def seeds() -> dict[str, bytes]:
    """One small valid checkpoint per format (the registry's smallcnn, so intact files load fully)."""
    from safetensors.torch import save

    from teacher_audit.intake.archs import build_arch

    torch.manual_seed(0)
    net = build_arch("smallcnn", num_classes=10, in_channels=1).eval()
    sd = net.state_dict()
    out: dict[str, bytes] = {}
    buf = io.BytesIO()
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, buf)
    out["torch_zip"] = buf.getvalue()
    buf = io.BytesIO()
    torch.save(sd, buf, _use_new_zipfile_serialization=False)
    out["torch_legacy"] = buf.getvalue()
    out["safetensors"] = save(dict(sd))
    out["pickle"] = pickle.dumps({"weights": [1.0, 2.0], "name": "x"}, protocol=2)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.onnx"
        torch.onnx.export(net, (torch.zeros(1, 1, 28, 28),), str(p), dynamo=False)
        out["onnx"] = p.read_bytes()
        p = Path(d) / "ts.pt"
        torch.jit.save(torch.jit.trace(net, torch.zeros(1, 1, 28, 28)), str(p))
        out["torchscript"] = p.read_bytes()
    return out


def _mutate(data: bytes, draw: st.DrawFn) -> bytes:
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "overwrite", "insert", "delete", "truncate", "dup", "int"]))
        n = len(buf)
        if n == 0:
            buf += draw(st.binary(min_size=1, max_size=16))
            continue
        # bias positions towards headers, where the parsers make decisions
        pos = draw(st.one_of(st.integers(0, min(n - 1, 64)), st.integers(0, n - 1)))
        if kind == "flip":
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            buf[pos:pos + len(chunk)] = chunk
        elif kind == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del buf[pos:pos + draw(st.integers(1, 32))]
        elif kind == "truncate":
            del buf[pos:]
        elif kind == "dup":
            buf[pos:pos] = buf[pos:pos + draw(st.integers(1, 64))]
        else:  # an interesting integer (lengths, counts, offsets)
            val = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 2**63 - 1]))
            width = draw(st.sampled_from([1, 2, 4, 8]))
            buf[pos:pos + width] = (val % (1 << (8 * width))).to_bytes(width, "little")
    return bytes(buf)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    fmt = draw(st.sampled_from(sorted(seeds())))
    data = seeds()[fmt]
    if data[:2] == b"PK" and draw(st.booleans()):
        zin = zipfile.ZipFile(io.BytesIO(data))
        names = zin.namelist()
        target = draw(st.sampled_from(names))
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as zout:
            for name in names:
                content = zin.read(name)
                zout.writestr(name, _mutate(content, draw) if name == target else content)
        return f"{fmt}:{target}", out.getvalue()
    return fmt, _mutate(data, draw)


def _check(exc: BaseException) -> None:
    assert isinstance(exc, AuditError), f"{type(exc).__name__}: {exc}"
    msg = str(exc)
    assert "\n" not in msg and msg.strip()
    assert not msg.startswith("unexpected failure"), msg


@settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=mutated())
def test_fuzz_sniff_scan_load(case: tuple[str, bytes]) -> None:
    label, data = case
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.bin"
        path.write_bytes(data)
        try:  # sniff + scan directly: no safety net at all
            res = sniff(path)
            if res.format in PICKLE_FORMATS:
                scan_file(path, res.format.value)
        except Exception as exc:  # noqa: BLE001
            _check(exc)
        for trust in (False, True):
            try:
                load_teacher(path, LoadOptions(trust_torchscript=trust, spec_flags={} if not trust else {
                    "channels": 1, "height": 28, "width": 28, "num_classes": 10}))
            except Exception as exc:  # noqa: BLE001
                _check(exc)
            if not label.startswith("torchscript"):
                break


def test_seeds_are_valid() -> None:
    """The unmutated seeds load (pickle: refused as unsupported, TorchScript: needs trust) -> mutations matter."""
    from teacher_audit.errors import TrustRequired, UnsupportedFormat

    with tempfile.TemporaryDirectory() as d:
        for fmt, data in seeds().items():
            path = Path(d) / f"{fmt}.bin"
            path.write_bytes(data)
            assert sniff(path).format.value == fmt
            if fmt == "pickle":
                with pytest.raises(UnsupportedFormat):
                    load_teacher(path)
            elif fmt == "torchscript":
                with pytest.raises(TrustRequired):
                    load_teacher(path)
            else:
                _, intake = load_teacher(path)
                assert intake.architecture in ("smallcnn", "onnx")
