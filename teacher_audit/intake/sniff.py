"""Format sniffing by content (magic bytes and structure), never by file extension.

Threat assumption: the checkpoint is untrusted. Its name and extension say nothing; a ``.safetensors``
file may hold a pickle and a ``.onnx`` file may be a zip. Sniffing reads at most the zip central
directory, the first bytes of the file, and (for ONNX, only after a cheap protobuf-tag check) parses
the protobuf without loading external data. Nothing is unpickled here.

Formats (``Format`` values):
    ``torch_zip``    zip archive with a ``<root>/data.pkl`` member (``torch.save`` since 1.6)
    ``torchscript``  zip archive with ``code/`` entries or ``constants.pkl`` (``torch.jit.save``): code
    ``torch_legacy`` the pre-1.6 ``torch.save`` stream: a pickle of the magic number 0x1950a86a20f9469cfc6c,
                     then more pickles and raw storage bytes
    ``pickle``       any other pickle stream
    ``safetensors``  8-byte little-endian header length + JSON header + raw tensor bytes
    ``onnx``         a protobuf ``ModelProto`` with a non-empty graph

Errors:
    ``CorruptInput`` (exit 2) when the bytes claim a format but cannot be read (empty file, truncated
    zip, safetensors header longer than the file or above 100 MB, unparsable ONNX);
    ``UnsupportedFormat`` (exit 3) when the content matches nothing supported.
"""

from __future__ import annotations

import json
import os
import pickletools
import struct
import zipfile
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from teacher_audit.errors import CorruptInput, UnsupportedFormat

#: largest safetensors JSON header read (the reference implementation uses the same 100 MB cap).
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
#: the legacy torch.save magic number (first pickle of the stream).
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
#: protobuf tags (field << 3 | wire type) of ModelProto fields that can start a serialized model.
_ONNX_FIRST_TAGS = {
    0x08,  # 1 ir_version (varint)
    0x12,  # 2 producer_name
    0x1A,  # 3 producer_version
    0x22,  # 4 domain
    0x28,  # 5 model_version (varint)
    0x32,  # 6 doc_string
    0x3A,  # 7 graph
    0x42,  # 8 opset_import
    0x72,  # 14 metadata_props
    0xA2,  # 20 training_info (2-byte tag 0xA2 0x01)
    0xCA,  # 25 functions (2-byte tag 0xCA 0x01)
}


class Format(str, Enum):
    """Supported checkpoint formats (values appear in reports)."""

    TORCH_ZIP = "torch_zip"
    TORCHSCRIPT = "torchscript"
    TORCH_LEGACY = "torch_legacy"
    PICKLE = "pickle"
    SAFETENSORS = "safetensors"
    ONNX = "onnx"


#: formats whose loading involves unpickling, hence a static scan first.
PICKLE_FORMATS = frozenset({Format.TORCH_ZIP, Format.TORCHSCRIPT, Format.TORCH_LEGACY, Format.PICKLE})


@dataclass
class SniffResult:
    """What the content says the file is.

    Attributes:
        format: the detected format.
        reason: one line saying why (which magic / member matched).
        members: zip member names (zip formats only).
        header: parsed safetensors JSON header (safetensors only).
        header_length: safetensors header byte count.
    """

    format: Format
    reason: str
    members: list[str] = field(default_factory=list)
    header: dict[str, Any] | None = None
    header_length: int | None = None


def _legacy_magic_prefixes() -> list[bytes]:
    """Byte prefixes of ``pickle.dumps(TORCH_LEGACY_MAGIC, protocol=p)`` for p = 2..5 (and 0/1)."""
    body = TORCH_LEGACY_MAGIC.to_bytes(10, "little")
    prefixes = [b"\x80" + bytes([p]) + b"\x8a\x0a" + body for p in (2, 3, 4, 5)]
    prefixes.append(b"\x8a\x0a" + body)  # protocol 1 LONG1 without PROTO
    prefixes.append(b"L" + str(TORCH_LEGACY_MAGIC).encode() + b"L\n")  # protocol 0
    return prefixes


_LEGACY_PREFIXES = _legacy_magic_prefixes()


def _is_pickle_start(head: bytes, size: int) -> bool:
    """True when ``head`` begins a pickle: a protocol 2+ header, or protocol 0/1 opcodes that reach STOP
    (or run on to the end of ``head`` when the file is longer, after at least 8 well-formed opcodes)."""
    if len(head) >= 2 and head[0] == 0x80 and head[1] <= 5:
        return True
    n_ops, last = 0, 0
    try:
        import io

        for op, _arg, pos in pickletools.genops(io.BytesIO(head)):
            if op.name == "STOP":
                return True
            n_ops, last = n_ops + 1, pos or 0
    except Exception:  # noqa: BLE001 - not a pickle, or cut off by the end of ``head``
        return size > len(head) and n_ops >= 8 and last > len(head) - 1024
    return False


def _sniff_zip(path: Path) -> SniffResult:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise CorruptInput(f"zip archive cannot be read ({' '.join(str(exc).split())})") from None
    if not names:
        raise UnsupportedFormat("zip archive is empty")
    parts = [n.split("/") for n in names]
    if any(len(p) >= 2 and p[1] in {"code", "constants.pkl"} for p in parts) or "constants.pkl" in names:
        return SniffResult(Format.TORCHSCRIPT, "zip with code/ or constants.pkl entries (TorchScript)", names)
    if any(len(p) == 2 and p[1] == "data.pkl" for p in parts) or "data.pkl" in names:
        return SniffResult(Format.TORCH_ZIP, "zip with a <root>/data.pkl member (torch.save)", names)
    raise UnsupportedFormat("zip archive is neither a torch checkpoint (no */data.pkl) nor TorchScript")


def _sniff_safetensors(path: Path, head: bytes, size: int) -> SniffResult | None:
    if len(head) < 9 or head[8:9] != b"{":
        return None
    (n,) = struct.unpack("<Q", head[:8])
    if n > MAX_SAFETENSORS_HEADER:
        raise CorruptInput(f"safetensors header claims {n} bytes (limit {MAX_SAFETENSORS_HEADER})")
    if n > size - 8:
        raise CorruptInput(f"safetensors header claims {n} bytes but the file has {size - 8} after the length")
    with open(path, "rb") as fh:
        fh.seek(8)
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise CorruptInput("safetensors header is not valid UTF-8 JSON") from None
    if not isinstance(header, dict):
        raise CorruptInput("safetensors header is not a JSON object")
    _check_safetensors_header(header, size - 8 - n)
    return SniffResult(Format.SAFETENSORS, "8-byte header length + JSON header", header=header, header_length=n)


def _check_safetensors_header(header: dict[str, Any], data_len: int) -> None:
    """Validate every tensor entry's dtype, shape and offsets against the data section length."""
    for name, entry in header.items():
        if name == "__metadata__":
            if entry is not None and not isinstance(entry, dict):
                raise CorruptInput("safetensors __metadata__ is not an object")
            continue
        if not isinstance(entry, dict):
            raise CorruptInput(f"safetensors entry {name[:60]!r} is not an object")
        offs, shape = entry.get("data_offsets"), entry.get("shape")
        if (
            not isinstance(offs, list) or len(offs) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)
            or not isinstance(shape, list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
            or not isinstance(entry.get("dtype"), str)
        ):
            raise CorruptInput(f"safetensors entry {name[:60]!r} has a malformed dtype/shape/data_offsets")
        if not 0 <= offs[0] <= offs[1] <= data_len:
            raise CorruptInput(
                f"safetensors entry {name[:60]!r} points outside the data section ({offs} vs {data_len} bytes)"
            )


def _sniff_onnx(path: Path, head: bytes) -> SniffResult | None:
    """Cheap protobuf check on the first tag, then a real parse (no external data)."""
    if not head or head[0] not in _ONNX_FIRST_TAGS:
        return None
    if head[0] in (0xA2, 0xCA) and head[1:2] != b"\x01":
        return None
    if head[0] == 0x08 and (len(head) < 2 or head[1] > 0x7F or head[1] == 0):  # ir_version: small varint
        return None
    if head[0] != 0x08 and b"onnx" not in head and b"ai.onnx" not in head and b"pytorch" not in head:
        return None
    try:
        import onnx
        from google.protobuf.message import DecodeError  # noqa: F401  (documents the expected failure)

        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure means a corrupt ONNX file
        msg = " ".join(str(exc).split())[:160] or exc.__class__.__name__
        raise CorruptInput(f"file looks like ONNX but does not parse ({msg})") from None
    if model.ir_version <= 0 or not model.HasField("graph") or len(model.graph.node) == 0:
        raise CorruptInput("file looks like ONNX but has no graph nodes")
    return SniffResult(Format.ONNX, "protobuf ModelProto with a non-empty graph")


def sniff(path: str | os.PathLike[str]) -> SniffResult:
    """Detect the format of ``path`` from its content.

    Args:
        path: the file to inspect.

    Returns:
        A ``SniffResult``.

    Raises:
        CorruptInput: empty file, unreadable zip, bad safetensors header, unparsable ONNX.
        UnsupportedFormat: no supported format matches.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            head = fh.read(4096)
    except OSError as exc:
        raise CorruptInput(f"cannot read file ({exc.strerror or exc})") from None
    if size == 0:
        raise CorruptInput("file is empty")
    if head[:4] in _ZIP_MAGICS:
        return _sniff_zip(p)
    if any(head.startswith(pre) for pre in _LEGACY_PREFIXES):
        return SniffResult(Format.TORCH_LEGACY, "pickle of the torch legacy magic number")
    st = _sniff_safetensors(p, head, size)
    if st is not None:
        return st
    if _is_pickle_start(head, size):
        return SniffResult(Format.PICKLE, "pickle opcode stream")
    onnx_res = _sniff_onnx(p, head)
    if onnx_res is not None:
        return onnx_res
    if head[:2] == b"\x1f\x8b":
        raise UnsupportedFormat("gzip data; decompress it first (no supported format is gzip-wrapped)")
    if len(head) > 262 and head[257:262] == b"ustar":
        raise UnsupportedFormat("tar archive (pre-0.4 torch tar format is not supported)")
    if head[:6] == b"\x93NUMPY":
        raise UnsupportedFormat("numpy .npy array, not a model checkpoint")
    if head[:8] == b"\x89HDF\r\n\x1a\n":
        raise UnsupportedFormat("HDF5 file (Keras/TF); export to ONNX first")
    raise UnsupportedFormat(f"unknown format (first bytes {head[:8].hex()}); supported: "
                            + ", ".join(f.value for f in Format))
