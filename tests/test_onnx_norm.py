"""Reading an ONNX graph's own input normalisation (teacher_audit.intake.onnx_norm) and using it as the
procedural pictures' statistics."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import pytest
import torch

from teacher_audit.intake.load import LoadOptions, load_teacher
from teacher_audit.intake.onnx_import import load_onnx
from teacher_audit.synth.procedural import spec_moments

MEAN, STD = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)


class Net(torch.nn.Module):
    """A small classifier with a configurable preprocessing in front of it."""

    def __init__(self, pre: str):
        super().__init__()
        torch.manual_seed(0)
        self.pre = pre
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                        torch.nn.Flatten(), torch.nn.Linear(4, 5))
        self.register_buffer("m", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("s", torch.tensor(STD).view(1, 3, 1, 1))
        self.register_buffer("rows", torch.tensor([0.1, 0.2, 0.3]).view(1, 1, 3, 1))  # for 3x3 inputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre == "sub_div":
            return self.body((x - self.m) / self.s)
        if self.pre == "mul_add":
            return self.body(x * (1 / self.s) + (-self.m / self.s))
        if self.pre == "branch":  # the raw input is also used elsewhere: not a pure normalisation
            return self.body((x - self.m) / self.s) + x.mean()
        if self.pre == "rows":  # a per-row constant, which is not a per-channel normalisation
            return self.body(x - self.rows)
        return self.body(x)


def _export(pre: str | Net, path: Path, scale: float = 1.0) -> Path:
    """``Net(pre)`` (or the given net) exported with a dynamic batch; example inputs in [0, ``scale``]."""
    net = Net(pre) if isinstance(pre, str) else pre
    side = 3 if net.pre == "rows" else 8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), torch.rand(1, 3, side, side) * scale, str(path), dynamo=False,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}})
    return path


@pytest.mark.parametrize("pre", ["sub_div", "mul_add"])
def test_graph_normalisation_is_read(tmp_path: Path, pre: str) -> None:
    ot = load_onnx(_export(pre, tmp_path / f"{pre}.onnx"))
    assert ot.input_normalisation is not None
    mean, std = ot.input_normalisation
    assert mean == pytest.approx(MEAN, abs=1e-5) and std == pytest.approx(STD, abs=1e-5)


@pytest.mark.parametrize("pre", ["none", "branch", "rows"])
def test_no_normalisation_is_claimed_where_there_is_none(tmp_path: Path, pre: str) -> None:
    assert load_onnx(_export(pre, tmp_path / f"{pre}.onnx")).input_normalisation is None


def test_intake_uses_the_graph_normalisation_only_when_no_card_gives_statistics(tmp_path: Path) -> None:
    path = _export("sub_div", tmp_path / "m.onnx")
    teacher, intake = load_teacher(str(path), LoadOptions(device="cpu"))
    spec = teacher.spec
    assert spec.mean == (0.0, 0.0, 0.0) and spec.std == (1.0, 1.0, 1.0)  # the wrapper adds nothing
    assert any("normalises its input itself" in n for n in intake.notes)
    assert intake.input_spec["graph_normalisation"]["std"] == pytest.approx(list(STD), abs=1e-5)
    moments = spec_moments(spec)
    assert moments is not None
    assert moments[0].tolist() == pytest.approx(MEAN, abs=1e-5)
    assert moments[1].tolist() == pytest.approx(STD, abs=1e-5)
    # statistics given by a card or a flag take precedence over the graph's
    flagged = dataclasses.replace(spec, mean=(0.5, 0.5, 0.5), std=(0.1, 0.1, 0.1),
                                  sources={**spec.sources, "mean": "flag", "std": "flag"})
    assert spec_moments(flagged)[0].tolist() == pytest.approx([0.5] * 3)
    # without the graph's normalisation the statistics stay unknown
    assert spec_moments(dataclasses.replace(spec, graph_normalisation=None)) is None


def test_eight_bit_constants_give_the_value_range(tmp_path: Path) -> None:
    """ImageNet-style constants on the 0-255 scale: the graph takes pixel values, so the raw range is [0, 255]."""
    net = Net("sub_div")
    net.m.copy_(torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1))
    net.s.copy_(torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1))
    path = _export(net, tmp_path / "imagenet.onnx", scale=255.0)
    teacher, _ = load_teacher(str(path), LoadOptions(device="cpu"))
    assert teacher.spec.value_range == (0.0, 255.0) and teacher.spec.sources["value_range"] == "onnx"
    moments = spec_moments(teacher.spec)
    assert moments is not None and moments[0].tolist() == pytest.approx([0.485, 0.456, 0.406], abs=1e-3)
    # a [0, 1]-scale normalisation leaves the default range
    plain, _ = load_teacher(str(_export("sub_div", tmp_path / "plain.onnx")), LoadOptions(device="cpu"))
    assert plain.spec.value_range == (0.0, 1.0) and plain.spec.sources["value_range"] == "default"
