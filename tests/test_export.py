"""Student export: safetensors + card reload, ONNX parity with onnxruntime."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from teacher_audit.export import export_onnx, save_student
from teacher_audit.intake.archs import build_arch
from teacher_audit.intake.card import validate_card
from teacher_audit.intake.spec import InputSpec


@pytest.mark.parametrize("arch,c,hw", [("smallcnn", 1, 28), ("wrn16_1", 3, 32)])
def test_onnx_export_parity(arch: str, c: int, hw: int, tmp_path) -> None:
    torch.manual_seed(0)
    net = build_arch(arch, num_classes=10, in_channels=c)
    net.train()
    net(torch.randn(16, c, hw, hw))  # non-trivial BN running statistics
    spec = InputSpec(channels=c, height=hw, width=hw, mean=(0.5,) * c, std=(0.25,) * c)
    info = export_onnx(net, spec, tmp_path / "student.onnx")
    assert info["max_abs_diff"] < 1e-4
    model = onnx.load(str(tmp_path / "student.onnx"))
    assert any(n.op_type == "BatchNormalization" for n in model.graph.node)  # BN kept for later audits
    assert not net.training


def test_parity_failure_leaves_no_file(tmp_path) -> None:
    net = build_arch("smallcnn", num_classes=10, in_channels=1).eval()
    spec = InputSpec(channels=1, height=28, width=28, mean=(0.0,), std=(1.0,))
    from teacher_audit.errors import AuditError

    with pytest.raises(AuditError, match="parity"):
        export_onnx(net, spec, tmp_path / "s.onnx", tolerance=0.0)
    assert list(tmp_path.iterdir()) == []


def test_safetensors_and_card_reload(tmp_path) -> None:
    from teacher_audit.intake.load import load_teacher

    torch.manual_seed(1)
    net = build_arch("smallcnn", num_classes=10, in_channels=1).eval()
    spec = InputSpec(channels=1, height=28, width=28, mean=(0.286,), std=(0.353,),
                     class_names=[f"c{i}" for i in range(10)])
    paths = save_student(net, spec, "smallcnn", tmp_path / "student.safetensors", extra={"distill": {"method": "dfq"}})
    card = json.loads(open(paths["card"]).read())
    assert validate_card(card)["arch"] == "smallcnn"
    teacher, _ = load_teacher(paths["weights"])
    assert teacher.arch == "smallcnn" and teacher.spec.class_names == spec.class_names
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(teacher.model(x), net((x - 0.286) / 0.353), atol=1e-6)
