"""Architecture registry and state_dict matcher."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from teacher_audit.errors import UsageError
from teacher_audit.intake.archs import ARCHS, build_arch, match_state_dict

REQUIRED = {"smallcnn", "lenet5", "resnet18_cifar", "resnet34_cifar", "wrn16_1", "wrn16_2", "wrn40_2",
            "vgg11_bn", "vgg16_bn", "mobilenetv2_cifar", "tv_resnet18", "tv_resnet50", "tv_mobilenet_v2",
            "tv_vgg11_bn"}


def test_registry_has_required_names() -> None:
    assert REQUIRED <= set(ARCHS.names())


@pytest.mark.parametrize("name", ARCHS.names())
def test_builds_forwards_and_matches_itself(name: str) -> None:
    entry = ARCHS.get(name)
    spec = entry.default_spec(7, entry.default_channels)
    assert spec.sources["height"] == "registry" and len(spec.mean) == spec.channels
    net = build_arch(name, num_classes=7, in_channels=spec.channels).eval()
    sizes = [(spec.height, spec.width)]
    if entry.family != "imagenet":
        sizes += [(28, 28), (32, 32)]
    with torch.no_grad():
        for h, w in sizes:
            assert net(torch.randn(1, spec.channels, h, w)).shape == (1, 7)
    result = match_state_dict(net.state_dict())
    assert result.best == name, result.candidates[:3]
    assert (result.num_classes, result.in_channels) == (7, spec.channels)
    assert result.candidates[0]["score"] == 1.0 and result.candidates[0]["differences"] == []
    assert all(c["score"] < 1.0 for c in result.candidates[1:])


@pytest.mark.parametrize("name,nc,ch", [("resnet18_cifar", 100, 3), ("wrn16_2", 43, 1), ("smallcnn", 26, 3),
                                        ("tv_resnet18", 5, 1), ("vgg11_bn", 2, 3)])
def test_reads_num_classes_and_channels_off_weights(name: str, nc: int, ch: int) -> None:
    sd = build_arch(name, num_classes=nc, in_channels=ch).state_dict()
    result = match_state_dict(sd)
    assert (result.best, result.num_classes, result.in_channels) == (name, nc, ch)


def test_module_prefix_and_missing_bn_counters() -> None:
    sd = build_arch("wrn16_1", 10, 3).state_dict()
    wrapped = {f"module.{k}": v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    result = match_state_dict(wrapped)
    assert result.best == "wrn16_1" and result.stripped_prefix == "module."


def test_unmatched_dict_lists_candidates_with_differences() -> None:
    sd = build_arch("resnet18_cifar", 10, 3).state_dict()
    del sd["layer4.1.conv2.weight"]
    sd["extra.weight"] = torch.zeros(3)
    sd["layer1.0.conv1.weight"] = torch.zeros(64, 64, 5, 5)
    result = match_state_dict(sd)
    assert result.best is None
    top = result.candidates[0]
    assert top["name"] == "resnet18_cifar" and 0.9 < top["score"] < 1.0
    diffs = top["differences"]
    assert "missing layer4.1.conv2.weight" in diffs
    assert "unexpected extra.weight" in diffs
    assert "shape layer1.0.conv1.weight (64,64,5,5) vs (64,64,3,3)" in diffs
    assert "resnet18_cifar" in result.closest()
    scores = [c["score"] for c in result.candidates]
    assert scores == sorted(scores, reverse=True)


def test_garbage_dict_matches_nothing() -> None:
    result = match_state_dict({"a": torch.zeros(2), "b": torch.zeros(3, 3)})
    assert result.best is None and all(c["score"] == 0.0 for c in result.candidates)
    assert match_state_dict({}).best is None


def test_identical_parameter_sets_resolve_deterministically(monkeypatch: pytest.MonkeyPatch) -> None:
    # a second name for the same network: both match exactly, the first by name wins, the other is listed
    twin = dataclasses.replace(ARCHS.get("wrn16_2"), name="aaa_twin")
    monkeypatch.setitem(ARCHS._items, "aaa_twin", twin)
    monkeypatch.setitem(ARCHS._meta, "aaa_twin", {})
    sd = build_arch("wrn16_2", 10, 3).state_dict()
    for _ in range(2):
        result = match_state_dict(sd)
        assert result.best == "aaa_twin" and result.ambiguous == ["wrn16_2"]


def test_unknown_arch_is_usage_error() -> None:
    with pytest.raises(UsageError):
        build_arch("no_such_net")
