"""distill: library run on a tiny teacher, and the CLI end to end on a registry teacher file."""

from __future__ import annotations

import json
import pytest
import torch

from teacher_audit.distill import DistillOptions, distill
from teacher_audit.synth.tiny import random_teacher

FAST = {"batch_size": 32, "ngf": 8, "log_every": 1}


pytestmark = pytest.mark.usefixtures("one_thread")


def test_distill_without_data_reports_synthetic_agreement(tmp_path) -> None:
    opts = DistillOptions(method="dfq", student_arch="lenet5", budget_passes=32 * 6 * 4, progress=False,
                          device="cpu", overrides=FAST)
    report = distill(random_teacher(), tmp_path, opts)
    ev = report["evaluation"]
    assert ev["mode"] == "synthetic-agreement" and "only by" in ev["note"] and 0.0 <= ev["agreement"] <= 1.0
    assert report["onnx"]["max_abs_diff"] < 1e-4
    assert report["budget"]["teacher_passes"] >= 32 * 6 * 4
    for name in ("student.safetensors", "student.safetensors.card.json", "student.onnx", "distill-report.json",
                 "distill-report.md", "distill-curves.png"):
        assert (tmp_path / name).is_file(), name
    assert not (tmp_path / "checkpoint").exists()
    md = (tmp_path / "distill-report.md").read_text()
    assert "held-out synthetic samples" in md
    from teacher_audit.intake.load import load_teacher

    student, _ = load_teacher(tmp_path / "student.safetensors")
    assert student.arch == "lenet5"


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the real console entry point in-process; returns (exit code, stdout, stderr)."""
    from teacher_audit.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    cap = capsys.readouterr()
    return int(exc.value.code or 0), cap.out, cap.err


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> str:
    from safetensors.torch import save_file

    from teacher_audit.export import student_card
    from teacher_audit.intake.archs import ARCHS, build_arch

    d = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    net = build_arch("lenet5", num_classes=10, in_channels=1).eval()
    path = d / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    card = student_card(ARCHS.get("lenet5").default_spec(10, 1), "lenet5", name="teacher")
    (d / "teacher.safetensors.card.json").write_text(json.dumps(card))
    return str(path)


def test_cli_distill_with_eval_data_and_trigger(teacher_file: str, tmp_path, capsys) -> None:
    code, stdout, stderr = _cli(capsys, "distill", teacher_file, "--out", str(tmp_path), "--budget-passes", "600", "--device", "cpu",
             "--eval-data", "fashion-mnist", "--eval-limit", "300", "--quiet",
             "--trigger", '{"name": "badnets_square", "size": 4, "target": 0}')
    assert code == 0, stderr
    assert "ACC teacher" in stdout and "ASR teacher" in stdout
    rep = json.loads((tmp_path / "distill-report.json").read_text())
    ev = rep["evaluation"]
    assert ev["mode"] == "data" and ev["n"] == 300 and ev["target"] == 0
    assert set(ev["student"]) == {"acc", "asr"}
    assert rep["settings"]["student_arch"] == "lenet5"  # same family as the teacher by default
    assert any(h["kind"] == "eval" for h in rep["curves"])


@pytest.mark.parametrize("args,code", [(["--method", "nope"], 4), (["--resume"], 4), (["--defense", "nope"], 4),
                                       (["--student", "no_such_arch"], 4)])
def test_cli_distill_usage_errors(teacher_file: str, tmp_path, capsys, args: list[str], code: int) -> None:
    got, stdout, stderr = _cli(capsys, "distill", teacher_file, "--out", str(tmp_path), "--budget-passes", "64",
                               "--device", "cpu", "-q", *args)
    assert got == code, (stdout, stderr)
    assert len(stderr.strip().splitlines()) == 1
