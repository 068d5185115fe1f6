"""Corrupt and hostile non-pickle inputs: the documented exit code and ONE line on stderr, never a traceback.

Documented codes (docs/intake.md): empty file, truncated zip, truncated safetensors, absurd safetensors header,
truncated ONNX -> 2 (error: corrupt input); content matching no format (garbage ONNX) and ONNX external data
outside the model's folder -> 3 (not auditable).
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.filterwarnings("ignore")


def _cli(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    from teacher_audit.cli import main

    with pytest.raises(SystemExit) as ei:
        main(["inspect", str(path), *extra])
    err = capsys.readouterr().err
    return int(ei.value.code), err


def _sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)).state_dict()


def _onnx(tmp: Path, **kw: object) -> Path:
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    p = tmp / "m.onnx"
    torch.onnx.export(net, (torch.zeros(1, 1, 8, 8),), str(p), dynamo=False, **kw)
    return p


def _empty(tmp: Path) -> Path:
    p = tmp / "empty.pt"
    p.write_bytes(b"")
    return p


def _truncated_zip(tmp: Path) -> Path:
    src = tmp / "full.pt"
    torch.save(_sd(), src)
    p = tmp / "trunc.pt"
    p.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    return p


def _truncated_safetensors(tmp: Path) -> Path:
    from safetensors.torch import save_file

    src = tmp / "full.safetensors"
    save_file(_sd(), str(src))
    p = tmp / "trunc.safetensors"
    p.write_bytes(src.read_bytes()[:-40])
    return p


def _header_2gb(tmp: Path) -> Path:
    p = tmp / "huge.safetensors"
    p.write_bytes(struct.pack("<Q", 2 * 1024**3) + json.dumps({"w": {"dtype": "F32", "shape": [1],
                                                                     "data_offsets": [0, 4]}}).encode())
    return p


def _garbage_onnx(tmp: Path) -> Path:
    p = tmp / "garbage.onnx"
    p.write_bytes(bytes(range(7, 256)) * 40)
    return p


def _truncated_onnx(tmp: Path) -> Path:
    src = _onnx(tmp)
    p = tmp / "trunc.onnx"
    p.write_bytes(src.read_bytes()[:-100])
    return p


def _onnx_external_outside(tmp: Path, how: str = "dotdot") -> Path:
    import onnx

    model_dir = tmp / "model"
    model_dir.mkdir()
    (tmp / "secret.bin").write_bytes(b"\0" * 4096)
    src = _onnx(tmp)
    model = onnx.load(str(src))
    onnx.save_model(model, str(model_dir / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    model = onnx.load(str(model_dir / "ext.onnx"), load_external_data=False)
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = {"dotdot": "../secret.bin", "absolute": str(tmp / "secret.bin"),
                               "symlink": "link.bin"}[how]
    if how == "symlink":
        (model_dir / "link.bin").symlink_to(tmp / "secret.bin")
    p = model_dir / "escape.onnx"
    onnx.save_model(model, str(p))
    return p


CASES = {
    "empty file": (_empty, 2, "empty"),
    "truncated zip": (_truncated_zip, 2, "zip"),
    "truncated safetensors": (_truncated_safetensors, 2, "safetensors"),
    "safetensors header claiming 2 GB": (_header_2gb, 2, "2147483648"),
    "garbage ONNX": (_garbage_onnx, 3, "unknown format"),
    "truncated ONNX": (_truncated_onnx, 2, "ONNX"),
    "ONNX external data outside its folder": (_onnx_external_outside, 3, "folder"),
    "ONNX external data absolute path": (lambda t: _onnx_external_outside(t, "absolute"), 3, "folder"),
    "ONNX external data symlink escaping": (lambda t: _onnx_external_outside(t, "symlink"), 3, "folder"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_corrupt_input_exit_code_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    make, code, needle = CASES[name]
    path = make(tmp_path)
    capsys.readouterr()
    got, err = _cli(path, capsys, "--json", str(tmp_path / "out.json"))
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert got == code, (name, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert needle in lines[0], lines[0]
    doc = json.loads((tmp_path / "out.json").read_text())
    assert doc["exit_code"] == code and doc["error"]


def test_corrupt_zip_subprocess_no_traceback(tmp_path: Path) -> None:
    p = _truncated_zip(tmp_path)
    r = subprocess.run([sys.executable, "-m", "teacher_audit", "inspect", str(p)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 1


def test_zip_with_corrupt_storage_member(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A zip whose data.pkl references a storage that is missing: torch.load fails -> exit 2, one line."""
    import zipfile

    src = tmp_path / "full.pt"
    torch.save(_sd(), src)
    p = tmp_path / "missing.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(p, "w") as zout:
        for n in zin.namelist():
            if not n.endswith("/data/0"):
                zout.writestr(n, zin.read(n))
    got, err = _cli(p, capsys)
    assert got == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
