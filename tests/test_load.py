"""Round trips through ``load_teacher``: the loaded network's outputs equal the original's."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from teacher_audit.errors import NotAuditable, RefusedPickle, TrustRequired, UnknownArchitecture, UsageError
from teacher_audit.intake.archs import build_arch
from teacher_audit.intake.load import LoadOptions, load_teacher
from teacher_audit.teacher import Teacher

pytestmark = pytest.mark.filterwarnings("ignore")


def _same(teacher: Teacher, ref: nn.Module, shape: tuple[int, ...], atol: float = 0.0) -> None:
    torch.manual_seed(1)
    x = torch.randn(2, *shape)
    with torch.no_grad():
        got, want = teacher.model.net(x), ref.eval()(x)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= atol


def _randomise_bn(net: nn.Module) -> nn.Module:
    """Non-trivial BN statistics so a wrong buffer mapping would show in the outputs."""
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net.eval()


def test_torchvision_resnet18_state_dict(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    ref = _randomise_bn(torchvision.models.resnet18(num_classes=1000))
    p = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), p)
    teacher, intake = load_teacher(p)
    assert intake.architecture == "tv_resnet18" and intake.architecture_source == "matcher"
    assert intake.format == "torch_zip" and intake.pickle.refused == [] and intake.pickle.scanned
    assert intake.parameter_count == sum(t.numel() for t in ref.parameters())
    assert intake.input_spec["num_classes"] == 1000 and intake.input_spec["sources"]["num_classes"] == "weights"
    assert intake.has_batchnorm is True
    _same(teacher, ref, (3, 64, 64))


def test_cifar_resnet18_wrapped_with_module_prefix(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref = _randomise_bn(build_arch("resnet18_cifar", num_classes=10, in_channels=3))
    sd = {f"module.{k}": v for k, v in ref.state_dict().items()}
    p = tmp_path / "ckpt.tar"
    torch.save({"state_dict": sd, "epoch": 200, "best_acc": 95.1, "optimizer": {"lr": 0.1}}, p)
    teacher, intake = load_teacher(p)
    assert intake.architecture == "resnet18_cifar"
    assert any("state_dict" in n for n in intake.notes) and any("module." in n for n in intake.notes)
    assert intake.input_spec["height"] == 32
    _same(teacher, ref, (3, 32, 32))


def test_wrn16_2_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ref = _randomise_bn(build_arch("wrn16_2", num_classes=100, in_channels=3))
    p = tmp_path / "wrn.bin"  # misleading extension on purpose
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(p))
    teacher, intake = load_teacher(p)
    assert intake.format == "safetensors" and intake.architecture == "wrn16_2"
    assert intake.input_spec["num_classes"] == 100 and not intake.pickle.scanned
    _same(teacher, ref, (3, 32, 32))


def test_onnx_small_cnn(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()
    p = tmp_path / "cnn.onnx"
    torch.onnx.export(ref, (torch.zeros(1, 1, 28, 28),), str(p), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    teacher, intake = load_teacher(p)
    assert intake.format == "onnx" and intake.architecture == "onnx"
    assert intake.input_spec["channels"] == 1 and intake.input_spec["sources"]["height"] == "onnx"
    assert intake.onnx_parity_max_abs_diff is not None and intake.onnx_parity_max_abs_diff < 1e-4
    _same(teacher, ref, (1, 28, 28), atol=1e-5)


def test_legacy_format_and_missing_num_batches_tracked(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref = _randomise_bn(build_arch("smallcnn", num_classes=10, in_channels=1))
    sd = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    p = tmp_path / "old.pt"
    torch.save(sd, p, _use_new_zipfile_serialization=False)
    teacher, intake = load_teacher(p)
    assert intake.format == "torch_legacy" and intake.architecture == "smallcnn"
    assert len(intake.pickle.members) == 5
    _same(teacher, ref, (1, 28, 28))


def test_arch_flag_card_and_spec_precedence(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ref = build_arch("smallcnn", num_classes=10, in_channels=1).eval()
    p = tmp_path / "m.safetensors"
    save_file(ref.state_dict(), str(p))
    card = {"input": {"channels": 1, "height": 28, "width": 28, "mean": [0.5], "std": [0.25]},
            "num_classes": 10, "class_names": [f"c{i}" for i in range(10)]}
    Path(str(p) + ".card.json").write_text(json.dumps(card))
    _, intake = load_teacher(p, LoadOptions(arch="smallcnn", spec_flags={"mean": [0.3]}))
    assert intake.architecture_source == "flag"
    spec = intake.input_spec
    assert spec["mean"] == [0.3] and spec["sources"]["mean"] == "flag"
    assert spec["std"] == [0.25] and spec["sources"]["std"] == "card"
    assert spec["class_names"][3] == "c3"


def test_unknown_architecture_lists_three_closest(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 30 * 30, 7))
    p = tmp_path / "odd.pt"
    torch.save(net.state_dict(), p)
    with pytest.raises(UnknownArchitecture) as ei:
        load_teacher(p)
    msg = str(ei.value)
    assert "closest" in msg and msg.count("%") >= 3 and "\n" not in msg
    assert len(ei.value.intake.architecture_candidates) >= 3  # type: ignore[attr-defined]


def test_arch_flag_that_does_not_fit(tmp_path: Path) -> None:
    p = tmp_path / "sc.pt"
    torch.save(build_arch("smallcnn", 10, 1).state_dict(), p)
    with pytest.raises(UnknownArchitecture, match="do not fit"):
        load_teacher(p, LoadOptions(arch="lenet5"))
    with pytest.raises(UsageError):
        load_teacher(p, LoadOptions(arch="no_such_net"))


def test_allow_global_uses_safe_globals(tmp_path: Path) -> None:
    p = tmp_path / "ns.pt"
    ref = build_arch("smallcnn", 10, 1).eval()
    torch.save({"model": ref.state_dict(), "args": argparse.Namespace(lr=0.1)}, p)
    with pytest.raises(RefusedPickle) as ei:
        load_teacher(p)
    assert ei.value.refused == ["argparse.Namespace"]
    teacher, intake = load_teacher(p, LoadOptions(allow_globals=("argparse.Namespace",)))
    assert intake.pickle.extra_allowed == ["argparse.Namespace"]
    _same(teacher, ref, (1, 28, 28))


def test_torchscript_needs_trust(tmp_path: Path) -> None:
    ref = build_arch("smallcnn", 10, 1).eval()
    p = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.trace(ref, torch.zeros(1, 1, 28, 28)), str(p))
    with pytest.raises(TrustRequired, match="code"):
        load_teacher(p)
    teacher, intake = load_teacher(p, LoadOptions(trust_torchscript=True, spec_flags={
        "channels": 1, "height": 28, "width": 28, "num_classes": 10}))
    assert intake.architecture == "torchscript" and any("trust" in n for n in intake.notes)
    _same(teacher, ref, (1, 28, 28), atol=1e-6)


def test_no_state_dict_inside(tmp_path: Path) -> None:
    p = tmp_path / "x.pt"
    torch.save({"epoch": 1, "lr": [0.1]}, p)
    with pytest.raises(NotAuditable, match="no state_dict"):
        load_teacher(p)


def test_missing_file_is_usage(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        load_teacher(tmp_path / "nope.pt")
