"""``teacher-audit inspect``: table on stdout, JSON via atomic write, exit codes per the table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from teacher_audit.intake.archs import build_arch

pytestmark = pytest.mark.filterwarnings("ignore")


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from teacher_audit.cli import main

    with pytest.raises(SystemExit) as ei:
        main(["inspect", *args])
    cap = capsys.readouterr()
    return int(ei.value.code), cap.out, cap.err


@pytest.fixture()
def smallcnn(tmp_path: Path) -> Path:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    p = tmp_path / "teacher.safetensors"
    save_file(build_arch("smallcnn", 10, 1).state_dict(), str(p))
    return p


def test_inspect_ok_table_and_json(smallcnn: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import hashlib

    js = tmp_path / "out" / "intake.json"
    code, out, err = _run(capsys, str(smallcnn), "--json", str(js))
    assert code == 0, err
    digest = hashlib.sha256(smallcnn.read_bytes()).hexdigest()
    for needle in ("safetensors", "smallcnn", "matcher", "1x28x28", digest[:16]):
        assert needle in out
    doc = json.loads(js.read_text())
    assert doc["exit_code"] == 0 and doc["status"] == "ok" and doc["error"] is None
    intake = doc["intake"]
    assert intake["sha256"] == digest and intake["size"] == smallcnn.stat().st_size
    assert intake["architecture"] == "smallcnn" and intake["tensor_count"] > 0 and intake["parameter_count"] > 0
    assert intake["input_spec"]["sources"]["num_classes"] == "weights"
    assert not list(js.parent.glob(".*.tmp"))  # atomic write left no temp file


def test_inspect_json_validates_against_report_model(smallcnn: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from teacher_audit.report.model import IntakeResult

    js = tmp_path / "i.json"
    _run(capsys, str(smallcnn), "--json", str(js))
    IntakeResult.model_validate(json.loads(js.read_text())["intake"])


def test_spec_flags_win_and_are_recorded(smallcnn: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    js = tmp_path / "i.json"
    code, out, err = _run(capsys, str(smallcnn), "--json", str(js), "--arch", "smallcnn", "--input-size", "1x32x32",
                          "--mean", "0.5", "--std", "0.25", "--num-classes", "10")
    assert code == 0, err
    intake = json.loads(js.read_text())["intake"]
    spec = intake["input_spec"]
    assert (spec["height"], spec["width"], spec["mean"], spec["std"]) == (32, 32, [0.5], [0.25])
    assert {spec["sources"][k] for k in ("height", "mean", "std", "num_classes")} == {"flag"}
    assert intake["architecture_source"] == "flag"


@pytest.mark.parametrize("args,code,needle", [
    (["--input-size", "3by32"], 4, "CxHxW"),
    (["--mean", "a,b"], 4, "--mean"),
    (["--arch", "nonexistent_net"], 4, "unknown architecture"),
    (["--num-classes", "0"], 4, ""),
    (["--num-classes", "7"], 3, "num_classes"),
])
def test_bad_flags(smallcnn: Path, capsys: pytest.CaptureFixture[str], args: list[str], code: int,
                   needle: str) -> None:
    got, _out, err = _run(capsys, str(smallcnn), *args)
    assert got == code, err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_missing_file_is_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = _run(capsys, str(tmp_path / "nope.pt"))
    assert code == 4 and "no such file" in err


def test_refused_pickle_json_lists_globals_and_allow_global(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    p = tmp_path / "ck.pt"
    torch.save({"model": build_arch("smallcnn", 10, 1).state_dict(), "args": argparse.Namespace(x=1)}, p)
    js = tmp_path / "r.json"
    code, out, err = _run(capsys, str(p), "--json", str(js))
    assert code == 3 and "argparse.Namespace" in err and "argparse.Namespace" in out
    doc = json.loads(js.read_text())
    assert doc["status"] == "not_auditable" and doc["intake"]["pickle"]["refused"] == ["argparse.Namespace"]
    code, out, err = _run(capsys, str(p), "--json", str(js), "--allow-global", "argparse.Namespace")
    assert code == 0, err
    assert json.loads(js.read_text())["intake"]["pickle"]["extra_allowed"] == ["argparse.Namespace"]


def test_torchscript_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    net = build_arch("smallcnn", 10, 1).eval()
    p = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 1, 28, 28)), str(p))
    code, _out, err = _run(capsys, str(p))
    assert code == 3 and "--trust-torchscript" in err and "code" in err
    code, out, err = _run(capsys, str(p), "--trust-torchscript", "--input-size", "1x28x28", "--num-classes", "10")
    assert code == 0, err
    assert "torchscript" in out


def test_markup_in_names_is_not_interpreted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Globals are printed verbatim; rich markup or terminal escapes inside them are neutralised."""
    p = tmp_path / "evil.pkl"
    p.write_bytes(b"\x80\x02c[bold]os\nsystem\x1b[2J\n)R.")
    code, out, err = _run(capsys, str(p))
    assert code == 3
    assert "[bold]os" in out and "\x1b" not in out and "\x1b" not in err


EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "teachers"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.safetensors")), ids=lambda p: p.stem)
def test_inspect_resolves_every_bundled_example(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--json -`` puts only the JSON document on stdout; every example resolves to its card's arch/spec."""
    code, out, err = _run(capsys, str(path), "--json", "-")
    assert code == 0, err
    doc = json.loads(out)
    card = json.loads(path.with_name(path.name + ".card.json").read_text())
    intake = doc["intake"]
    assert doc["status"] == "ok" and intake["architecture"] == card["arch"]
    spec = intake["input_spec"]
    assert [spec["channels"], spec["height"], spec["width"]] == [card["input"][k] for k in ("channels", "height", "width")]
    assert not Path("-").exists()
