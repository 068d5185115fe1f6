"""ONNX operator coverage beyond the registered architectures: normalisation, Resize, attention, activations,
reductions, Split/Tile/Range/Expand, and the dynamic-batch ``x.view(x.size(0), -1)`` pattern.

Every graph goes through ``load_onnx``, which itself refuses a model whose converted graph disagrees with
onnxruntime; on top of that the torch originals check outputs and input gradients.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from teacher_audit.errors import NotAuditable
from teacher_audit.intake.onnx_import import load_onnx


class DynamicView(nn.Module):
    """``x.view(x.size(0), -1)`` exported with a dynamic batch: Shape -> Gather(scalar) -> Concat -> Reshape."""

    def __init__(self) -> None:
        super().__init__()
        self.c, self.h = nn.Conv2d(3, 4, 3, 2, 1), nn.Linear(4 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.c(x))
        return self.h(y.view(y.size(0), -1))


class Norms(nn.Module):
    """GroupNorm (InstanceNormalization in the export), LayerNorm over C x H x W, InstanceNorm2d."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.g, self.l, self.i = nn.GroupNorm(2, 8), nn.LayerNorm([8, 8, 8]), nn.InstanceNorm2d(8, affine=True)
        self.h = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.h(self.i(self.l(self.g(self.c(x)))).mean((2, 3)))


class Resized(nn.Module):
    def __init__(self, **kw: object) -> None:
        super().__init__()
        self.kw = kw
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        with torch.no_grad():
            n = F.interpolate(torch.zeros(1, 4, 8, 8), **kw).numel()  # type: ignore[arg-type]
        self.h = nn.Linear(n, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.h(torch.flatten(F.interpolate(torch.tanh(self.c(x)), **self.kw), 1))  # type: ignore[arg-type]


class ActsReductions(nn.Module):
    """PReLU (per channel and shared), SELU, Mish, GELU, Softsign; L2 norm, max, min, logsumexp, sum; where."""

    def __init__(self) -> None:
        super().__init__()
        self.c, self.p, self.p1 = nn.Conv2d(3, 8, 3, padding=1), nn.PReLU(8), nn.PReLU()
        self.h = nn.Linear(8 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.p(self.c(x))
        a, b = y.chunk(2, dim=1)
        y = torch.cat([F.selu(a), F.mish(b)], 1)
        y = F.gelu(y) + F.softsign(self.p1(y))
        y = (y / (y.norm(dim=1, keepdim=True) + 1) + y.amax((2, 3), keepdim=True) - y.amin((2, 3), keepdim=True)
             + torch.logsumexp(y, 1, keepdim=True) * y.sum((2, 3), keepdim=True) / 64)
        y = F.adaptive_avg_pool2d(torch.where(y > 0, y, y * y), 2)
        return self.h(y.reshape(y.size(0), -1))


class Attention(nn.Module):
    """A class token and one multi-head attention block (Mod, Equal, Expand, Where in the export)."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 16, 4, 4)
        self.a = nn.MultiheadAttention(16, 2, batch_first=True)
        self.cls = nn.Parameter(torch.randn(1, 1, 16))
        self.n, self.h = nn.LayerNorm(16), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.c(x).flatten(2).transpose(1, 2)
        z = torch.cat([self.cls.expand(z.shape[0], -1, -1), z], 1)
        z = z + self.a(z, z, z, need_weights=False)[0]
        return self.h(F.gelu(self.n(z[:, 0]), approximate="tanh"))


MODELS = {
    "dynamic_view": DynamicView, "norms": Norms, "acts_reductions": ActsReductions, "attention": Attention,
    "nearest_x2": lambda: Resized(scale_factor=2, mode="nearest"),
    "nearest_to_13": lambda: Resized(size=(13, 13), mode="nearest"),
    "bilinear_align_corners": lambda: Resized(scale_factor=2, mode="bilinear", align_corners=True),
    "bilinear_down": lambda: Resized(size=(5, 5), mode="bilinear"),
    "bilinear_x1.5": lambda: Resized(scale_factor=1.5, mode="bilinear"),
}
CASES = [(m, o) for m in MODELS for o in (11, 17, 18) if not (m == "attention" and o < 17)] + [
    ("acts_reductions", 20), ("attention", 20)]


def _export(net: nn.Module, path: Path, opset: int) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(1, 3, 8, 8),), str(path), dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}})
    return path


@pytest.mark.parametrize("name,opset", CASES)
def test_exported_model_matches_torch(tmp_path: Path, name: str, opset: int) -> None:
    torch.manual_seed(0)
    net = MODELS[name]().eval()
    t = load_onnx(_export(net, tmp_path / f"{name}.onnx", opset))
    assert t.parity_max_abs_diff < 1e-4
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y_ref, y = net(x), t.net(x2)
    assert y.shape == (3, 10)
    assert float((y - y_ref).detach().abs().max()) < 1e-4 * max(1.0, float(y_ref.detach().abs().max()))
    w = torch.randn(3, 10, generator=torch.Generator().manual_seed(2))
    (g_ref,) = torch.autograd.grad((y_ref * w).sum(), x)
    (g,) = torch.autograd.grad((y * w).sum(), x2)
    assert float(g.abs().max()) > 0
    assert float((g - g_ref).abs().max()) < 1e-4 * max(1.0, float(g_ref.abs().max()))


def _graph(tmp_path: Path, nodes: list, inits: list, opset: int, out_shape: list, name: str = "g") -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)
    model = helper.make_model(helper.make_graph(nodes, name, [x], [y], initializer=inits),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    path = tmp_path / f"{name}.onnx"
    onnx.save_model(model, str(path))
    return path


def _i64(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def _scalar(name: str, value: int) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.int64), name)


def _f32(name: str, values: list[float]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.float32), name)


def _flat(src: str) -> list:
    return [helper.make_node("GlobalAveragePool", [src], ["p"]), helper.make_node("Flatten", ["p"], ["y"])]


@pytest.mark.parametrize("opset", [13, 18])
def test_split_tile_range_and_unary_ops_agree_with_onnxruntime(tmp_path: Path, opset: int) -> None:
    split = (helper.make_node("Split", ["x", "sizes"], ["a", "b"], axis=1) if opset < 18 else
             helper.make_node("Split", ["x"], ["a", "b"], axis=1, num_outputs=2))
    nodes = [split,
             helper.make_node("Mish", ["a"], ["a1"]) if opset >= 18 else helper.make_node("Softplus", ["a"], ["a1"]),
             helper.make_node("Softsign", ["b"], ["b1"]),
             helper.make_node("Tile", ["b1", "reps"], ["b2"]),
             helper.make_node("Range", ["start", "limit", "delta"], ["r"]),
             helper.make_node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["b2", "rf"], ["b3"]),
             helper.make_node("Concat", ["a1", "b3"], ["c"], axis=1),
             *_flat("c")]
    inits = [_i64("sizes", [2, 2]), _i64("reps", [1, 2, 1, 1]), _scalar("start", 0), _scalar("limit", 6),
             _scalar("delta", 1)]
    t = load_onnx(_graph(tmp_path, nodes, [i for i in inits if opset < 18 or i.name != "sizes"], opset,
                         ["n", 6], f"split{opset}"))
    assert {"Split", "Tile", "Range", "Softsign"} <= set(t.ops)
    assert t.parity_max_abs_diff < 1e-5
    assert t.net(torch.rand(2, 4, 6, 6)).shape == (2, 6)


@pytest.mark.parametrize("coord", ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"])
@pytest.mark.parametrize("mode,nearest", [("linear", "round_prefer_floor"), ("nearest", "round_prefer_floor"),
                                          ("nearest", "round_prefer_ceil"), ("nearest", "floor"),
                                          ("nearest", "ceil")])
def test_resize_modes_agree_with_onnxruntime(tmp_path: Path, coord: str, mode: str, nearest: str) -> None:
    """Non-integer scales up and down, per axis (opset 13 scales), every coordinate mode."""
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["r"], mode=mode, coordinate_transformation_mode=coord,
                              nearest_mode=nearest),
             *_flat("r")]
    t = load_onnx(_graph(tmp_path, nodes, [_f32("scales", [1, 1, 1.7, 0.6])], 13, ["n", 4], "resize"))
    assert t.parity_max_abs_diff < 1e-5
    assert t.net(torch.rand(2, 4, 6, 6)).shape == (2, 4)


def test_resize_with_axes_and_sizes_opset18(tmp_path: Path) -> None:
    nodes = [helper.make_node("Resize", ["x", "", "", "sizes"], ["r"], mode="linear", axes=[3, 2]),
             helper.make_node("Flatten", ["r"], ["y"])]
    t = load_onnx(_graph(tmp_path, nodes, [_i64("sizes", [3, 9])], 18, ["n", 4 * 9 * 3], "resize18"))
    assert t.parity_max_abs_diff < 1e-5
    assert t.net(torch.rand(2, 4, 6, 6)).shape == (2, 4 * 9 * 3)


def test_resize_refusals_are_named(tmp_path: Path) -> None:
    cubic = [helper.make_node("Resize", ["x", "", "scales"], ["r"], mode="cubic"), *_flat("r")]
    with pytest.raises(NotAuditable, match="Resize mode=cubic"):
        load_onnx(_graph(tmp_path, cubic, [_f32("scales", [1, 1, 2, 2])], 13, ["n", 4], "cubic"))
    huge = [helper.make_node("Resize", ["x", "", "", "sizes"], ["r"], mode="nearest"), *_flat("r")]
    with pytest.raises(NotAuditable, match="Resize would create"):
        load_onnx(_graph(tmp_path, huge, [_i64("sizes", [2, 4, 1 << 16, 1 << 16])], 13, ["n", 4], "huge"))


class ChannelsLastNet(nn.Module):
    """A Keras-style graph: NHWC input, transposed inside."""

    def __init__(self) -> None:
        super().__init__()
        self.c, self.h = nn.Conv2d(3, 4, 3, 2, 1), nn.Linear(4, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.h(torch.relu(self.c(x.permute(0, 3, 1, 2))).mean((2, 3)))


def test_channels_last_graph_is_fed_nchw(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = ChannelsLastNet().eval()
    path = tmp_path / "nhwc.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(1, 10, 12, 3),), str(path), dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}})
    t = load_onnx(path)
    assert t.input_layout == "nhwc"
    assert t.spec == {"channels": 3, "height": 10, "width": 12, "num_classes": 7}
    x = torch.rand(2, 3, 10, 12)
    assert torch.allclose(t.net(x), net(x.permute(0, 2, 3, 1)), atol=1e-5)
    nchw = load_onnx(_export(DynamicView().eval(), tmp_path / "nchw.onnx", 17))
    assert nchw.input_layout == "nchw"
