"""Malicious-pickle corpus, built at test time: every payload is refused (exit 3) by the real CLI.

Each payload, if unpickled, creates its own canary file in ``tmp_path``. ``test_corpus_is_live`` proves
that by unpickling the payloads in a separate process (so the corpus cannot silently rot into harmless
bytes); ``test_cli_refuses_every_payload`` then runs ``teacher-audit inspect`` on every file and checks
exit code 3, the refused globals in the message and the JSON, and that no canary ever appears.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from teacher_audit.errors import CorruptInput, RefusedPickle
from teacher_audit.intake.pickle_scan import ALLOWED_GLOBALS, UNRESOLVED, enforce, scan_file
from teacher_audit.intake.sniff import sniff

# ---------------------------------------------------------------- a tiny opcode assembler


def s(text: str) -> bytes:
    """BINUNICODE string."""
    b = text.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def g(mod: str, name: str) -> bytes:
    """GLOBAL opcode (protocol 0-3 style)."""
    return b"c" + mod.encode() + b"\n" + name.encode() + b"\n"


def sg(mod: str, name: str) -> bytes:
    """STACK_GLOBAL from two string constants."""
    return s(mod) + s(name) + b"\x93"


def call(fn: bytes, *args: bytes) -> bytes:
    return fn + b"(" + b"".join(args) + b"tR"


def blist(*items: bytes) -> bytes:
    return b"](" + b"".join(items) + b"e"


def bbytes(data: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(data)) + data


def p4(body: bytes) -> bytes:
    return b"\x80\x04" + body + b"."


def p2(body: bytes) -> bytes:
    return b"\x80\x02" + body + b"."


def sh(c: str) -> bytes:
    return blist(s("sh"), s("-c"), s(f"touch {c}"))


def py_touch(c: str) -> str:
    return f"open({c!r}, 'w').close()"


class _Reduce:
    """pickle.dumps helper: ``__reduce__`` returns (callable, args)."""

    def __init__(self, fn: object, *args: object):
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.fn, self.args


# ---------------------------------------------------------------- the corpus


@dataclass
class Case:
    name: str
    payload: bytes  # the pickle that runs code when unpickled (live-checked)
    expect: tuple[str, ...]  # refused globals that must be reported
    wrap: str = "raw"  # raw | zip:<member> | legacy:<k> | dupzip
    live: bool = True


def _payloads(c: str) -> list[Case]:
    import subprocess as sp

    touch = f"touch {c}"
    os_mod = call(g("builtins", "__import__"), s("os"))
    cases = [
        Case("os_system_p2", pickle.dumps(_Reduce(os.system, touch), protocol=2), ("posix.system",)),
        Case("os_system_p0", pickle.dumps(_Reduce(os.system, touch), protocol=0), ("posix.system",)),
        Case("os_system_p4_stack_global", pickle.dumps(_Reduce(os.system, touch), protocol=4), ("posix.system",)),
        Case("os_system_p5", pickle.dumps(_Reduce(os.system, touch), protocol=5), ("posix.system",)),
        Case("os_module_global", p2(call(g("os", "system"), s(touch))), ("os.system",)),
        Case("inst_opcode", b"(S'" + touch.encode() + b"'\nios\nsystem\n.", ("os.system",)),
        Case("obj_opcode", b"(cos\nsystem\nS'" + touch.encode() + b"'\no.", ("os.system",)),
        Case("os_popen", p2(call(g("os", "popen"), s(touch))), ("os.popen",)),
        Case("subprocess_popen", pickle.dumps(_Reduce(sp.Popen, ["sh", "-c", touch]), protocol=2),
             ("subprocess.Popen",)),
        Case("subprocess_run", pickle.dumps(_Reduce(sp.run, ["sh", "-c", touch]), protocol=4), ("subprocess.run",)),
        Case("subprocess_call", p2(call(g("subprocess", "call"), sh(c))), ("subprocess.call",)),
        Case("subprocess_check_output", p2(call(g("subprocess", "check_output"), sh(c))),
             ("subprocess.check_output",)),
        Case("builtins_eval", p2(call(g("builtins", "eval"), s(f"__import__('os').system({touch!r})"))),
             ("builtins.eval",)),
        Case("builtins_exec", pickle.dumps(_Reduce(exec, py_touch(c)), protocol=3), ("builtins.exec",)),
        Case("py2_builtin_eval", b"c__builtin__\neval\n(S\"" + py_touch(c).encode() + b"\"\ntR.", ("__builtin__.eval",)),
        Case("builtins_open", p2(call(g("builtins", "open"), s(c), s("w"))), ("builtins.open",)),
        Case("getattr_import_chain", p2(call(call(g("builtins", "getattr"), os_mod, s("system")), s(touch))),
             ("builtins.getattr", "builtins.__import__")),
        Case("importlib_import_module",
             p4(call(call(sg("builtins", "getattr"), call(sg("importlib", "import_module"), s("os")), s("system")),
                     s(touch))), ("importlib.import_module", "builtins.getattr")),
        Case("runpy_run_code", p2(call(g("runpy", "_run_code"), s(py_touch(c)), b"}")), ("runpy._run_code",)),
        Case("pty_spawn", p2(call(g("pty", "spawn"), sh(c))), ("pty.spawn",)),
        Case("socket_unix_bind",
             p2(call(call(g("builtins", "getattr"), call(g("socket", "socket"), b"K\x01K\x01"), s("bind")), s(c))),
             ("socket.socket", "builtins.getattr")),
        Case("webbrowser_generic_browser",
             p2(call(call(g("builtins", "getattr"),
                          call(g("webbrowser", "GenericBrowser"), blist(s("sh"), s("-c"), s(f"touch {c}; : %s"))),
                          s("open")), s("x"))), ("webbrowser.GenericBrowser", "builtins.getattr")),
        Case("operator_attrgetter",
             p2(call(call(call(g("operator", "attrgetter"), s("system")), call(g("importlib", "import_module"),
                                                                               s("os"))), s(touch))),
             ("operator.attrgetter", "importlib.import_module")),
        Case("operator_methodcaller",
             p2(call(call(g("operator", "methodcaller"), s("system"), s(touch)),
                     call(g("importlib", "import_module"), s("os")))),
             ("operator.methodcaller", "importlib.import_module")),
        Case("functools_partial", p2(call(call(g("functools", "partial"), g("posix", "system"), s(touch)))),
             ("functools.partial", "posix.system")),
        Case("timeit_setup_exec", p2(call(g("timeit", "timeit"), s("pass"), s(py_touch(c)))),
             ("timeit.timeit",)),
        Case("cprofile_run", p2(call(g("cProfile", "run"), s(py_touch(c)))), ("cProfile.run",)),
        Case("numpy_runstring", p2(call(g("numpy.testing._private.utils", "runstring"), s(py_touch(c)), b"}")),
             ("numpy.testing._private.utils.runstring",)),
        Case("codecs_open", p2(call(g("codecs", "open"), s(c), s("w"))), ("codecs.open",)),
        Case("pathlib_touch", p2(call(call(g("builtins", "getattr"), call(g("pathlib", "Path"), s(c)), s("touch")))),
             ("pathlib.Path", "builtins.getattr")),
        Case("compile_exec",
             p2(call(g("builtins", "exec"), call(g("builtins", "compile"), s(py_touch(c)), s("x"), s("exec")))),
             ("builtins.exec", "builtins.compile")),
        # STACK_GLOBAL whose module/name strings only exist in the memo
        Case("stack_global_via_memo",
             b"\x80\x04" + s("os") + b"q\x01" + b"0" + s("system") + b"q\x02" + b"0" + s("noise") + b"0"
             + b"h\x01h\x02\x93(" + s(touch) + b"tR.", ("os.system",)),
        Case("stack_global_long_memo",
             b"\x80\x04" + s("posix") + b"r\x00\x01\x00\x00" + b"0" + s("system") + b"\x94" + b"0"
             + b"j\x00\x01\x00\x00" + b"h\x01\x93(" + s(touch) + b"tR.", ("posix.system",)),
        Case("stack_global_memo_overwrite",
             b"\x80\x04" + s("collections") + b"q\x01" + b"0" + s("os") + b"q\x01" + b"0" + s("system") + b"q\x02"
             + b"0h\x01h\x02\x93(" + s(touch) + b"tR.", ("os.system",)),
        Case("stack_global_dup", b"\x80\x04" + s("os") + b"2" + b"0" + s("system") + b"\x93(" + s(touch) + b"tR.",
             ("os.system",)),
        Case("stack_global_unresolved",
             b"\x80\x04" + call(call(sg("builtins", "getattr"), s(""), s("join")), blist(s("o"), s("s")))
             + s("system") + b"\x93(" + s(touch) + b"tR.", (UNRESOLVED, "builtins.getattr")),
    ]
    # pickles nested as bytes
    inner = pickle.dumps(_Reduce(os.system, touch), protocol=2)
    cases += [
        Case("nested_pickle_loads", p4(call(sg("pickle", "loads"), bbytes(inner))), ("pickle.loads", "posix.system")),
        Case("nested_c_pickle_loads", p2(call(g("_pickle", "loads"), bbytes(inner))), ("_pickle.loads", "posix.system")),
        Case("nested_twice", p2(call(g("pickle", "loads"), bbytes(p2(call(g("pickle", "loads"), bbytes(inner)))))),
             ("pickle.loads", "posix.system")),
        Case("torch_load_from_bytes", p2(call(g("torch.storage", "_load_from_bytes"), bbytes(inner))),
             ("torch.storage._load_from_bytes", "posix.system")),
    ]
    # the same payload in every member position of a torch zip checkpoint, and a duplicate data.pkl
    zp = pickle.dumps(_Reduce(os.system, touch), protocol=2)
    for member in ("data.pkl", "data/0", "version", "byteorder", ".data/serialization_id", ".format_version",
                   "extra/evil.pkl", "data/99"):
        cases.append(Case(f"zip_member_{member}", zp, ("posix.system",), wrap=f"zip:{member}"))
    cases.append(Case("zip_duplicate_data_pkl", zp, ("posix.system",), wrap="dupzip"))
    # legacy torch.save stream: payload in each of its five pickle positions
    for k in range(5):
        cases.append(Case(f"legacy_pickle_{k}", zp, ("posix.system",), wrap=f"legacy:{k}"))
    return cases


def _tiny_sd() -> OrderedDict[str, torch.Tensor]:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)).state_dict()


def _zip_with(payload: bytes, member: str | None, tmp: Path, dup: bool = False) -> bytes:
    src = tmp / "clean_zip.pt"
    torch.save(_tiny_sd(), src)
    buf = io.BytesIO()
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(buf, "w") as zout:
        root = zin.namelist()[0].split("/")[0]
        names = zin.namelist()
        for n in names:
            data = zin.read(n)
            if member is not None and n == f"{root}/{member}":
                data = payload
            zout.writestr(n, data)
            if dup and n.endswith("/data.pkl"):
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    zout.writestr(n, payload)
        if member is not None and f"{root}/{member}" not in names:
            zout.writestr(f"{root}/{member}", payload)
    return buf.getvalue()


def _legacy_with(payload: bytes, k: int, tmp: Path) -> bytes:
    src = tmp / "clean_legacy.pt"
    torch.save(_tiny_sd(), src, _use_new_zipfile_serialization=False)
    data = src.read_bytes()
    f = io.BytesIO(data)
    spans = []
    for _ in range(5):
        start = f.tell()
        for op, _a, _p in pickletools.genops(f):
            if op.name == "STOP":
                break
        spans.append((start, f.tell()))
    a, b = spans[k]
    return data[:a] + payload + data[b:]


def build_corpus(tmp: Path) -> list[tuple[Case, Path, Path]]:
    """Write every case to ``tmp/files``; returns (case, file, canary path)."""
    out = []
    (tmp / "files").mkdir(exist_ok=True)
    for i, probe in enumerate(_payloads("CANARY")):
        canary = tmp / "canaries" / f"c{i:02d}"
        canary.parent.mkdir(exist_ok=True)
        case = next(cs for cs in _payloads(str(canary)) if cs.name == probe.name)
        kind, _, arg = case.wrap.partition(":")
        data = {
            "raw": lambda: case.payload,
            "zip": lambda: _zip_with(case.payload, arg, tmp),
            "dupzip": lambda: _zip_with(case.payload, None, tmp, dup=True),
            "legacy": lambda: _legacy_with(case.payload, int(arg or 0), tmp),
        }[kind]()
        path = tmp / "files" / f"{i:02d}_{case.name.replace('/', '_')}.pt"
        path.write_bytes(data)
        out.append((case, path, canary))
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Case, Path, Path]]:
    return build_corpus(tmp_path_factory.mktemp("malicious"))


def test_corpus_size_and_distinct(corpus: list[tuple[Case, Path, Path]]) -> None:
    assert len(corpus) >= 30
    assert len({c.name for c, _, _ in corpus}) == len(corpus)
    assert len({p.read_bytes() for _, p, _ in corpus}) == len(corpus)


_LIVE = r"""
import pickle, sys, json, os
cases = json.loads(sys.stdin.read())
for name, hexdata in cases:
    try:
        pickle.loads(bytes.fromhex(hexdata))
    except BaseException as exc:
        print(name, 'raised', type(exc).__name__, file=sys.stderr)
"""


def test_corpus_is_live(corpus: list[tuple[Case, Path, Path]], tmp_path: Path) -> None:
    """Unpickling each payload (in a child process) really creates its canary: the corpus is not inert."""
    todo = [(c.name, c.payload.hex()) for c, _, _ in corpus if c.live and c.wrap == "raw"]
    todo += [(c.name, c.payload.hex()) for c, _, _ in corpus if c.wrap != "raw"][:1]
    subprocess.run([sys.executable, "-c", _LIVE], input=json.dumps(todo), text=True, cwd=tmp_path,
                   stdin=None, capture_output=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    import time

    deadline = time.monotonic() + 10  # Popen/popen payloads do not wait for their shell
    while True:
        dead = [c.name for c, _, canary in corpus if c.name in dict(todo) and not canary.exists()]
        if not dead or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not dead, f"payloads that did not create their canary: {dead}"
    for _, _, canary in corpus:  # clean up for the refusal tests
        if canary.exists():
            canary.unlink()


@pytest.mark.parametrize("idx", range(len(_payloads("x"))))
def test_scan_refuses(corpus: list[tuple[Case, Path, Path]], idx: int) -> None:
    case, path, canary = corpus[idx]
    report = scan_file(path, sniff(path).format.value)
    for want in case.expect:
        assert want in report.refused, (case.name, report.refused)
    with pytest.raises(RefusedPickle) as ei:
        enforce(report)
    assert set(case.expect) <= set(ei.value.refused)
    assert not canary.exists()


def test_cli_refuses_every_payload(corpus: list[tuple[Case, Path, Path]], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from teacher_audit.cli import main

    for case, path, canary in corpus:
        js = tmp_path / f"{path.stem}.json"
        with pytest.raises(SystemExit) as ei:
            main(["inspect", str(path), "--json", str(js)])
        captured = capsys.readouterr()
        assert ei.value.code == 3, (case.name, captured.err)
        line = captured.err.strip()
        assert "\n" not in line and "Traceback" not in captured.err
        for want in case.expect:
            assert want in line, (case.name, line)
        doc = json.loads(js.read_text())
        assert doc["exit_code"] == 3 and set(case.expect) <= set(doc["intake"]["pickle"]["refused"])
        assert not canary.exists(), case.name


def test_cli_subprocess_refuses(corpus: list[tuple[Case, Path, Path]]) -> None:
    """The installed entry point (a fresh process) refuses too."""
    case, path, canary = next(x for x in corpus if x[0].name == "zip_member_data.pkl")
    r = subprocess.run([sys.executable, "-m", "teacher_audit", "inspect", str(path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 3 and "posix.system" in r.stderr and "Traceback" not in r.stderr
    assert not canary.exists()


def test_allowlist_is_minimal() -> None:
    for bad in ("torch.storage._load_from_bytes", "builtins.getattr", "_codecs.encode", "builtins.set",
                "numpy.core.multiarray._reconstruct", "torch.load", "collections.defaultdict"):
        assert bad not in ALLOWED_GLOBALS


def test_clean_state_dict_passes(tmp_path: Path) -> None:
    p = tmp_path / "ok.pt"
    torch.save({"state_dict": _tiny_sd(), "epoch": 3}, p)
    report = scan_file(p, "torch_zip")
    assert report.refused == [] and "torch._utils._rebuild_tensor_v2" in report.allowed
    enforce(report)


def test_allow_global_widens_and_is_recorded(tmp_path: Path) -> None:
    import argparse

    p = tmp_path / "ns.pt"
    torch.save({"state_dict": _tiny_sd(), "args": argparse.Namespace(lr=0.1)}, p)
    report = scan_file(p, "torch_zip")
    assert report.refused == ["argparse.Namespace"]
    report = scan_file(p, "torch_zip", allow_globals=("argparse.Namespace",))
    assert report.refused == [] and report.extra_allowed == ["argparse.Namespace"]
    assert report.to_model().extra_allowed == ["argparse.Namespace"]


def test_truncated_pickle_is_corrupt(tmp_path: Path) -> None:
    p = tmp_path / "t.pkl"
    p.write_bytes(pickle.dumps({"a": list(range(100))}, protocol=2)[:-7])
    with pytest.raises(CorruptInput):
        scan_file(p, "pickle")


def test_truncated_malicious_pickle_still_refused(tmp_path: Path) -> None:
    p = tmp_path / "t.pkl"
    p.write_bytes(p2(call(g("os", "system"), s("touch x")))[:-3])
    with pytest.raises(RefusedPickle) as ei:
        scan_file(p, "pickle")
    assert "os.system" in ei.value.refused
