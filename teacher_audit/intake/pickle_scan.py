"""Static pickle scan: walk the opcodes of every pickle in a file and collect every global, never unpickling.

Threat assumption: the checkpoint is hostile. A pickle runs code through the globals it imports
(``GLOBAL``, ``INST``, ``STACK_GLOBAL``, the ``EXT*`` extension registry) and then calls
(``REDUCE``, ``BUILD``, ``NEWOBJ``, ``OBJ``). Every callable must be imported through one of those
opcodes first, so collecting all imports and refusing anything outside a strict allowlist of what a
plain ``state_dict`` needs is sufficient, provided the collection is complete. ``STACK_GLOBAL`` takes its
module/name strings from the stack, so the walk simulates the stack and the memo
(``PUT``/``BINPUT``/``LONG_BINPUT``/``MEMOIZE`` and ``GET``/``BINGET``/``LONG_BINGET``); any argument it
cannot resolve to a string constant is recorded as ``<unresolved>`` and refused.

Scope: every zip member that parses as a pickle (whatever its name or position, not only ``data.pkl``;
duplicate member names are scanned entry by entry), every pickle of the legacy ``torch.save`` stream
(magic, protocol, sys_info, main object, storage keys), every pickle of a raw pickle file, and pickles
nested as ``bytes``/``str`` constants inside another pickle (reported as ``<member>!nested@<offset>``
and scanned recursively up to ``MAX_NESTING`` levels).

Options: ``allow_globals`` widens the allowlist explicitly (``module.qualname`` strings); what it
admitted is recorded in ``ScanReport.extra_allowed``.

Outputs: a ``ScanReport`` (convertible to ``report.model.PickleScan``). ``enforce`` raises
``RefusedPickle`` (exit 3) listing the offending globals; unreadable pickles raise ``CorruptInput``
(exit 2) unless refused globals were already seen (then ``RefusedPickle`` wins).
"""

from __future__ import annotations

import _compat_pickle
import io
import os
import pickletools
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from teacher_audit.errors import CorruptInput, RefusedPickle
from teacher_audit.report.model import PickleScan

UNRESOLVED = "<unresolved>"
MAX_NESTING = 3
#: number of pickles in a legacy torch.save stream before raw storage bytes start.
LEGACY_PICKLES = 5
#: opcode budget when trying to parse a zip member that is not named *.pkl (normally raw storage bytes).
DATA_MEMBER_MAX_OPS = 1_000_000
#: opcode budget of any one pickle (a 10^5-tensor state_dict needs ~2*10^6); beyond it the file is refused as corrupt.
MAX_OPS = 50_000_000

_DTYPES = (
    "float32", "float", "float64", "double", "float16", "half", "bfloat16", "uint8", "int8", "int16",
    "short", "int32", "int", "int64", "long", "bool", "complex64", "cfloat", "complex128", "cdouble",
)
_STORAGES = (
    "FloatStorage", "DoubleStorage", "HalfStorage", "BFloat16Storage", "ByteStorage", "CharStorage",
    "ShortStorage", "IntStorage", "LongStorage", "BoolStorage", "ComplexFloatStorage", "ComplexDoubleStorage",
)
#: exactly what ``torch.save(model.state_dict())`` (zip or legacy) needs; nothing that unpickles or imports.
ALLOWED_GLOBALS: frozenset[str] = frozenset(
    {
        "collections.OrderedDict",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        "torch.Size",
    }
    | {f"torch.{d}" for d in _DTYPES}
    | {f"torch.{s}" for s in _STORAGES}
)

_STRING_OPS = {
    "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8",
}
_BYTES_OPS = {"BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"} | _STRING_OPS
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
_MARK = object()
_OPAQUE = object()


@dataclass
class PickleInfo:
    """One pickle stream found in the file.

    Attributes:
        label: where it is (``member``, ``member#k`` for the k-th pickle of a stream, ``...!nested@pos``).
        globals: every import it performs, in order of appearance (``module.name``).
        end: byte offset just after its STOP opcode within its container.
    """

    label: str
    globals: list[str] = field(default_factory=list)
    end: int = 0


@dataclass
class ScanReport:
    """Outcome of scanning every pickle of one file."""

    pickles: list[PickleInfo] = field(default_factory=list)
    allow_globals: tuple[str, ...] = ()
    error: str | None = None

    @property
    def members(self) -> list[str]:
        return [p.label for p in self.pickles]

    @property
    def globals_found(self) -> list[str]:
        return sorted({g for p in self.pickles for g in p.globals})

    @property
    def refused(self) -> list[str]:
        extra = set(self.allow_globals)
        return [g for g in self.globals_found if g == UNRESOLVED or (g not in ALLOWED_GLOBALS and g not in extra)]

    @property
    def allowed(self) -> list[str]:
        refused = set(self.refused)
        return [g for g in self.globals_found if g not in refused]

    @property
    def extra_allowed(self) -> list[str]:
        return [g for g in self.globals_found if g in set(self.allow_globals) and g not in ALLOWED_GLOBALS]

    @property
    def nested(self) -> list[str]:
        return [p.label for p in self.pickles if "!nested@" in p.label]

    def to_model(self) -> PickleScan:
        return PickleScan(
            scanned=True, members=self.members, globals_found=self.globals_found, allowed=self.allowed,
            refused=self.refused, extra_allowed=self.extra_allowed,
        )


class _Unreadable(Exception):
    """A stream that is not a complete pickle (carries the globals seen before the failure)."""

    def __init__(self, msg: str, info: PickleInfo, nested: list[PickleInfo]):
        super().__init__(msg)
        self.info = info
        self.nested = nested


def _looks_nested(arg: Any) -> bytes | None:
    """Bytes of a constant that could itself be a pickle (protocol 2+ header or a protocol-0 GLOBAL)."""
    if isinstance(arg, str):
        try:
            data = arg.encode("latin-1")
        except UnicodeEncodeError:
            return None
    elif isinstance(arg, (bytes, bytearray)):
        data = bytes(arg)
    else:
        return None
    if len(data) >= 4 and ((data[0] == 0x80 and data[1] <= 5) or (data[0] in b"c(i" and b"\n" in data[:512])):
        return data
    return None


def _names(mod: str, qual: str, proto: int) -> list[str]:
    """The global as written, plus the Python 3 name ``pickle`` maps it to (``fix_imports``, protocol < 3)."""
    names = [f"{mod}.{qual}"]
    if proto < 3:
        if (mod, qual) in _compat_pickle.NAME_MAPPING:
            mod, qual = _compat_pickle.NAME_MAPPING[(mod, qual)]
        elif mod in _compat_pickle.IMPORT_MAPPING:
            mod = _compat_pickle.IMPORT_MAPPING[mod]
        if f"{mod}.{qual}" != names[0]:
            names.append(f"{mod}.{qual}")
    return names


def _pop(stack: list[Any], n: int = 1) -> list[Any]:
    if n > len(stack) or any(v is _MARK for v in stack[len(stack) - n:]):
        raise ValueError("stack underflow")
    out = stack[len(stack) - n:]
    del stack[len(stack) - n:]
    return out


def _pop_to_mark(stack: list[Any]) -> None:
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] is _MARK:
            del stack[i:]
            return
    raise ValueError("MARK not found")


def scan_stream(
    fh: IO[bytes], label: str, depth: int = 0, max_ops: int | None = None
) -> tuple[PickleInfo, list[PickleInfo]]:
    """Walk ONE pickle from the current position of ``fh`` up to its STOP.

    Args:
        fh: binary stream positioned at the pickle's first byte.
        label: name recorded in the report.
        depth: nesting depth (nested pickles deeper than ``MAX_NESTING`` are refused as unresolved).
        max_ops: give up (as unreadable) after this many opcodes; used for members that are normally raw data.

    Returns:
        (the pickle's info, infos of pickles nested inside it).

    Raises:
        _Unreadable: truncated, garbage or inconsistent opcode stream.
    """
    info = PickleInfo(label)
    nested: list[PickleInfo] = []
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    proto = 0
    start = fh.tell() if fh.seekable() else 0
    try:
        for n_ops, (op, arg, pos) in enumerate(pickletools.genops(fh)):
            if n_ops >= (max_ops or MAX_OPS):
                raise ValueError(f"more than {max_ops or MAX_OPS} opcodes")
            name = op.name
            if name in _STRING_OPS:
                stack.append(arg)
            elif name == "PROTO":
                proto = int(arg)
            elif name in ("GLOBAL", "INST"):
                mod, _, qual = str(arg).partition(" ")
                info.globals.extend(_names(mod, qual, proto))
                if name == "INST":
                    _pop_to_mark(stack)
                stack.append(_OPAQUE)
            elif name == "STACK_GLOBAL":
                mod, qual = _pop(stack, 2)
                ok = isinstance(mod, str) and isinstance(qual, str)
                info.globals.extend(_names(mod, qual, proto) if ok else [UNRESOLVED])
                stack.append(_OPAQUE)
            elif name in ("EXT1", "EXT2", "EXT4"):
                info.globals.append(f"<extension {arg}>")
                stack.append(_OPAQUE)
            elif name in _PUT_OPS:
                memo[int(arg)] = _pop(stack)[0]
                stack.append(memo[int(arg)])
            elif name == "MEMOIZE":
                memo[len(memo)] = _pop(stack)[0]
                stack.append(memo[len(memo) - 1])
            elif name in _GET_OPS:
                stack.append(memo.get(int(arg), _OPAQUE))
            elif name == "DUP":
                top = _pop(stack)[0]
                stack.extend([top, top])
            elif name == "MARK":
                stack.append(_MARK)
            elif name == "STOP":
                _pop(stack)
                break
            else:
                before = [str(x) for x in op.stack_before]
                if "mark" in before:
                    _pop_to_mark(stack)
                    _pop(stack, before.index("mark"))
                else:
                    _pop(stack, len(before))
                stack.extend([_OPAQUE] * len(op.stack_after))
            if name in _BYTES_OPS:
                data = _looks_nested(arg)
                if data is not None:
                    _scan_nested(data, f"{label}!nested@{pos}", depth, info, nested)
        else:
            raise ValueError("pickle exhausted before STOP")
    except _Unreadable:
        raise
    except Exception as exc:  # noqa: BLE001 - genops raises ValueError, UnicodeDecodeError, struct.error...
        raise _Unreadable(" ".join(str(exc).split())[:120] or exc.__class__.__name__, info, nested) from None
    info.end = (fh.tell() - start) if fh.seekable() else 0
    return info, nested


def _scan_nested(data: bytes, label: str, depth: int, parent: PickleInfo, nested: list[PickleInfo]) -> None:
    """Scan a constant that may be a pickle; record it when it parses (or refuse when nested too deep)."""
    if depth + 1 > MAX_NESTING:
        parent.globals.append(UNRESOLVED)
        return
    try:
        inner, deeper = scan_stream(io.BytesIO(data), label, depth + 1)
    except _Unreadable as exc:
        if exc.info.globals:  # a broken pickle that still imports something: keep what it imports
            nested.append(exc.info)
        nested.extend(exc.nested)
        return
    if inner.globals or data[0] == 0x80:
        nested.append(inner)
    nested.extend(deeper)


def _scan_sequence(fh: IO[bytes], label: str, count: int | None, report: ScanReport, required: bool) -> int:
    """Scan consecutive pickles; ``count`` None means until EOF. Returns how many parsed."""
    n = 0
    while count is None or n < count:
        pos = fh.tell()
        if not fh.read(1):
            break
        fh.seek(pos)
        try:
            info, nested = scan_stream(fh, f"{label}#{n}" if (count or 0) != 1 else label)
        except _Unreadable as exc:
            report.pickles.append(exc.info)
            report.pickles.extend(exc.nested)
            if required or n == 0 or exc.info.globals:
                raise CorruptInput(f"pickle {exc.info.label} is unreadable ({exc})") from None
            break
        report.pickles.append(info)
        report.pickles.extend(nested)
        n += 1
    return n


def _scan_zip(path: Path, report: ScanReport) -> None:
    with zipfile.ZipFile(path) as zf:
        for i, zi in enumerate(zf.infolist()):
            if zi.is_dir():
                continue
            label = zi.filename if zf.namelist().count(zi.filename) == 1 else f"{zi.filename}[{i}]"
            is_pkl = zi.filename.endswith(".pkl")
            with zf.open(zi) as raw:
                head = raw.read(2)
            if not head:
                continue
            with zf.open(zi) as raw:
                stream = io.BufferedReader(raw)  # type: ignore[arg-type]
                try:
                    info, nested = scan_stream(stream, label, max_ops=None if is_pkl else DATA_MEMBER_MAX_OPS)
                except _Unreadable as exc:
                    if is_pkl or (head[:1] == b"\x80" and exc.info.globals):
                        report.pickles.append(exc.info)
                        report.pickles.extend(exc.nested)
                        if is_pkl:
                            raise CorruptInput(f"zip member {label} is not a readable pickle ({exc})") from None
                    continue
                # a non-.pkl member counts as a pickle when it has a protocol header or is one pickle end to end
                if is_pkl or head[:1] == b"\x80" or info.end == zi.file_size:
                    report.pickles.append(info)
                    report.pickles.extend(nested)


def scan_file(path: str | os.PathLike[str], fmt: str, allow_globals: Iterable[str] = ()) -> ScanReport:
    """Scan every pickle of ``path`` according to its sniffed format.

    Args:
        path: the file.
        fmt: a pickle-bearing ``sniff.Format`` value (``torch_zip``, ``torchscript``, ``torch_legacy``, ``pickle``).
        allow_globals: extra ``module.name`` globals to admit (recorded in the report).

    Returns:
        The ``ScanReport`` (check ``.refused`` or call ``enforce``).

    Raises:
        CorruptInput: a pickle that must be read is truncated or garbage (and imports nothing refused).
        RefusedPickle: an unreadable pickle that already imported refused globals.
    """
    p = Path(path)
    report = ScanReport(allow_globals=tuple(allow_globals))
    try:
        if fmt in ("torch_zip", "torchscript"):
            _scan_zip(p, report)
        else:
            with open(p, "rb") as fh:
                if fmt == "torch_legacy":
                    _scan_sequence(fh, "legacy", LEGACY_PICKLES, report, required=True)
                else:
                    _scan_sequence(fh, "pickle", None, report, required=False)
    except CorruptInput as exc:
        if report.refused:
            raise RefusedPickle(f"{exc}; refused globals: {', '.join(report.refused)}", report.refused) from None
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError, NotImplementedError) as exc:
        if report.refused:
            raise RefusedPickle(f"refused globals: {', '.join(report.refused)}", report.refused) from None
        raise CorruptInput(f"cannot read archive ({' '.join(str(exc).split())[:120]})") from None
    return report


def enforce(report: ScanReport) -> None:
    """Raise ``RefusedPickle`` (exit 3) listing every global outside the allowlist."""
    refused = report.refused
    if refused:
        where = sorted({p.label for p in report.pickles if set(p.globals) & set(refused)})
        raise RefusedPickle(
            f"refused pickle globals: {', '.join(refused)} (in {', '.join(where)}); nothing was unpickled. "
            "Use --allow-global MODULE.NAME only if you trust them", refused,
        )
