"""ONNX import: own graph interpreter vs onnxruntime and vs the torch original; external-data safety."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from teacher_audit.errors import CorruptInput, NotAuditable
from teacher_audit.intake.archs import ARCHS, build_arch
from teacher_audit.intake.onnx_import import load_onnx


def _randomise_bn(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial BN statistics so that folding really changes the conv weights."""
    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=gen) * 0.1)
    return net.eval()


def _export(net: torch.nn.Module, shape: tuple[int, ...], path: Path, fold: bool) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.randn(*shape), str(path), dynamo=False, do_constant_folding=fold,
                          input_names=["input"], output_names=["logits"])
    return path


CASES = [(name, fold) for name in ("smallcnn", "resnet18_cifar", "wrn16_2") for fold in (True, False)]


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, bool], tuple[torch.nn.Module, Path]]:
    root = tmp_path_factory.mktemp("onnx")
    out = {}
    for i, name in enumerate(("smallcnn", "resnet18_cifar", "wrn16_2")):
        torch.manual_seed(i)
        spec = ARCHS.get(name).default_spec(10, None)
        net = _randomise_bn(build_arch(name, 10, spec.channels), i)
        for fold in (True, False):
            out[(name, fold)] = (net, _export(net, (1, *spec.shape), root / f"{name}_{fold}.onnx", fold))
    return out


@pytest.mark.parametrize("name,fold", CASES)
def test_parity_outputs_and_input_gradients(exports: dict, name: str, fold: bool) -> None:
    original, path = exports[(name, fold)]
    t = load_onnx(path)
    spec = ARCHS.get(name).default_spec(10, None)
    assert t.spec == {"channels": spec.channels, "height": spec.height, "width": spec.width, "num_classes": 10}
    assert t.parity_max_abs_diff < 1e-4
    # BN is folded away by default exports, except WRN's pre-activation BN (nothing to fold into)
    assert t.has_batchnorm == (not fold or name == "wrn16_2")
    bns = [m for m in t.net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if not fold:
        want = [m for m in original.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert len(bns) == len(want)
        assert sorted(float(m.running_var.sum()) for m in bns) == pytest.approx(
            sorted(float(m.running_var.sum()) for m in want))
    x = torch.randn(5, *spec.shape, generator=torch.Generator().manual_seed(3), requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    w = torch.randn(5, 10, generator=torch.Generator().manual_seed(4))
    y_ref, y = original(x), t.net(x2)
    assert y.shape == (5, 10)
    assert float((y - y_ref).detach().abs().max()) < 1e-4 * max(1.0, float(y_ref.detach().abs().max()))
    (g_ref,) = torch.autograd.grad((y_ref * w).sum(), x)
    (g,) = torch.autograd.grad((y * w).sum(), x2)
    assert float((g - g_ref).abs().max()) < 1e-4 * max(1.0, float(g_ref.abs().max()))


class _StaticBatch(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).view(1, -1))  # batch size baked into the graph


def test_static_batch_graph_is_chunked(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = _StaticBatch().eval()
    t = load_onnx(_export(net, (1, 1, 8, 8), tmp_path / "static.onnx", True))
    assert t.static_batch == 1 and t.batch_chunked
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        ref = torch.cat([net(x[i:i + 1]) for i in range(4)])
        assert torch.allclose(t.net(x), ref, atol=1e-5)


def _with_external_data(tmp_path: Path) -> tuple[Path, onnx.ModelProto]:
    net = build_arch("lenet5", 10, 1).eval()
    src = _export(net, (1, 1, 28, 28), tmp_path / "src.onnx", True)
    model = onnx.load(str(src))
    folder = tmp_path / "model"
    folder.mkdir()
    path = folder / "m.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    return path, onnx.load(str(path), load_external_data=False)


def _relocate(model: onnx.ModelProto, location: str, path: Path) -> None:
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    onnx.save_model(model, str(path))


def test_external_data_inside_folder_loads(tmp_path: Path) -> None:
    path, _ = _with_external_data(tmp_path)
    t = load_onnx(path)
    assert t.external_data == ["weights.bin"] and t.parity_max_abs_diff < 1e-4


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "nested_dotdot"])
def test_external_data_escape_is_refused(tmp_path: Path, kind: str) -> None:
    path, model = _with_external_data(tmp_path)
    outside = tmp_path / "outside.bin"
    os.replace(path.parent / "weights.bin", outside)
    location = {"dotdot": "../outside.bin", "absolute": str(outside), "symlink": "link.bin",
                "nested_dotdot": "sub/../../outside.bin"}[kind]
    if kind == "symlink":
        (path.parent / "link.bin").symlink_to(outside)
    _relocate(model, location, path)
    with pytest.raises(NotAuditable, match="external data .* (escapes|resolves outside)") as exc:
        load_onnx(path)
    assert "\n" not in str(exc.value)


def test_missing_external_data_is_corrupt(tmp_path: Path) -> None:
    path, _ = _with_external_data(tmp_path)
    (path.parent / "weights.bin").unlink()
    with pytest.raises(CorruptInput, match="missing"):
        load_onnx(path)


def test_unknown_operator_is_named(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])
    nodes = [helper.make_node("Flatten", ["x"], ["f"]),
             helper.make_node("Einsum", ["f"], ["y"], equation="ij->ij")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(model, str(tmp_path / "e.onnx"))
    with pytest.raises(NotAuditable, match="Einsum"):
        load_onnx(tmp_path / "e.onnx")


def test_custom_domain_is_refused(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"], domain="evil.ops")],
                                                "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("evil.ops", 1)])
    onnx.save_model(model, str(tmp_path / "c.onnx"))
    with pytest.raises(NotAuditable, match="evil.ops:Relu"):
        load_onnx(tmp_path / "c.onnx")


@pytest.mark.parametrize("content", [b"", b"\x00" * 64, np.random.default_rng(0).bytes(4096),
                                     b"\x08\x07\x12\x04junk"])
def test_garbage_is_corrupt_input(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "g.onnx"
    p.write_bytes(content)
    with pytest.raises(CorruptInput) as exc:
        load_onnx(p)
    assert "\n" not in str(exc.value)


def test_structured_graph_mutations_fail_cleanly(exports: dict, tmp_path: Path) -> None:
    """Mutated graphs (attributes, operators, wiring, input dims) load or fail with one AuditError line."""
    import copy
    import random

    from teacher_audit.errors import AuditError
    from teacher_audit.intake.onnx_ops import ONNX_OPS

    rng = random.Random(0)
    base = onnx.load(str(exports[("smallcnn", False)][1]))
    ops = ONNX_OPS.names()
    outcomes = []
    for k in range(30):
        model = copy.deepcopy(base)
        g = model.graph
        node = rng.choice(list(g.node))
        r = rng.random()
        if r < 0.3 and node.attribute:
            attr = rng.choice(list(node.attribute))
            if attr.ints:
                attr.ints[rng.randrange(len(attr.ints))] = rng.choice([-3, 0, 2, 7, 10**6])
            else:
                attr.i = rng.choice([-1, 0, 5, 10**6])
        elif r < 0.6:
            node.op_type = rng.choice(ops)
        elif r < 0.8 and node.input:
            node.input[0] = rng.choice([o for n in g.node for o in n.output])
        else:
            g.input[0].type.tensor_type.shape.dim[rng.randrange(4)].dim_value = rng.choice([0, 2, 5, 10**5])
        path = tmp_path / f"m{k}.onnx"
        onnx.save_model(model, str(path))
        try:
            load_onnx(path, parity_trials=1)
            outcomes.append("ok")
        except AuditError as exc:
            assert "\n" not in str(exc) and str(exc)
            outcomes.append(type(exc).__name__)
    assert len(set(outcomes)) >= 2  # the mutations really reach different outcomes
