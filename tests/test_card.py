"""Model-card sidecar loading/validation and input-spec precedence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from teacher_audit.errors import CorruptInput, UsageError
from teacher_audit.intake.archs import ARCHS
from teacher_audit.intake.card import card_path, load_card, resolve_spec

GOOD = {
    "schema_version": 1,
    "arch": "smallcnn",
    "input": {"channels": 1, "height": 28, "width": 28, "value_range": [0, 1], "mean": [0.5], "std": [0.25]},
    "num_classes": 3,
    "class_names": ["a", "b", "c"],
    "ground_truth": {"kind": "clean", "acc": 0.91, "seed": 0},
    "extra": {"anything": [1, 2, 3]},
}


def _write(tmp_path: Path, content: str | bytes) -> Path:
    model = tmp_path / "teacher.safetensors"
    model.write_bytes(b"x")
    data = content.encode() if isinstance(content, str) else content
    card_path(model).write_bytes(data)
    return model


def test_sidecar_name() -> None:
    assert card_path("/a/b/m.safetensors") == Path("/a/b/m.safetensors.card.json")


def test_no_card_is_none(tmp_path: Path) -> None:
    assert load_card(tmp_path / "m.pt") is None


def test_good_card_round_trips(tmp_path: Path) -> None:
    card = load_card(_write(tmp_path, json.dumps(GOOD)))
    assert card is not None
    assert card["arch"] == "smallcnn" and card["input"]["mean"] == [0.5]
    assert card["ground_truth"]["kind"] == "clean" and card["extra"] == {"anything": [1, 2, 3]}


@pytest.mark.parametrize("content,needle", [
    ("", "not valid JSON"),
    ("{", "not valid JSON"),
    (b"\xff\xfe{}", "not valid JSON"),
    ("[1, 2]", "must be an object"),
    ('{"num_classes": NaN}', "not valid JSON"),
    ('{"num_classes": "10"}', "num_classes"),
    ('{"num_classes": true}', "num_classes"),
    ('{"num_classes": 0}', "num_classes"),
    ('{"num_classes": 3, "class_names": ["a"]}', "class_names has 1"),
    ('{"input": {"channels": 1e9}}', "input.channels"),
    ('{"input": {"std": [0.0]}}', "input.std"),
    ('{"input": {"value_range": [1, 0]}}', "input.value_range"),
    ('{"input": {"mean": "abc"}}', "input.mean"),
    ('{"input": {"depth": 3}}', "unknown input keys"),
    ('{"arch": "../../etc/passwd"}', "arch"),
    ('{"arch": 5}', "arch"),
    ('{"evil": 1}', "unknown top-level keys"),
    ('{"ground_truth": [1]}', "ground_truth"),
    ("[" * 100000 + "]" * 100000, "card"),
])
def test_hostile_cards_are_one_line_corrupt_input(tmp_path: Path, content: str | bytes, needle: str) -> None:
    with pytest.raises(CorruptInput) as exc:
        load_card(_write(tmp_path, content))
    msg = str(exc.value)
    assert needle in msg and "\n" not in msg and len(msg) < 300


def test_oversized_card_is_refused_without_parsing(tmp_path: Path) -> None:
    big = json.dumps({"extra": {"pad": "x" * 1_100_000}})
    with pytest.raises(CorruptInput, match="larger than"):
        load_card(_write(tmp_path, big))


def test_card_that_is_a_directory(tmp_path: Path) -> None:
    model = tmp_path / "m.pt"
    card_path(model).mkdir()
    with pytest.raises(CorruptInput, match="not a regular file"):
        load_card(model)


def test_precedence_flags_card_onnx_registry() -> None:
    registry = ARCHS.get("resnet18_cifar").default_spec(10, 3)
    registry.sources["num_classes"] = "weights"
    card = {"input": {"height": 40, "mean": [0.1, 0.2, 0.3]}, "class_names": [str(i) for i in range(10)]}
    onnx_spec = {"height": 64, "width": 48, "channels": 3}
    flags = {"mean": [0.5, 0.5, 0.5], "std": None}
    spec = resolve_spec(card=card, onnx_spec=onnx_spec, arch_default=registry, flags=flags)
    assert spec.mean == (0.5, 0.5, 0.5) and spec.sources["mean"] == "flag"
    assert spec.height == 40 and spec.sources["height"] == "card"
    assert spec.width == 48 and spec.sources["width"] == "onnx"
    assert spec.std == registry.std and spec.sources["std"] == "registry"
    assert spec.num_classes == 10 and spec.sources["num_classes"] == "weights"
    assert spec.class_names == [str(i) for i in range(10)] and spec.sources["class_names"] == "card"


def test_nothing_known_gives_defaults() -> None:
    spec = resolve_spec(card=None, onnx_spec=None, arch_default=None, flags={})
    assert spec.shape == (3, 32, 32) and set(spec.sources.values()) == {"default"}


def test_registry_stats_adapt_to_channel_flag() -> None:
    registry = ARCHS.get("resnet18_cifar").default_spec(10, 3)
    spec = resolve_spec(card=None, onnx_spec=None, arch_default=registry, flags={"channels": 1})
    assert spec.channels == 1 and len(spec.mean) == 1 and len(spec.std) == 1


def test_inconsistent_sources_raise() -> None:
    with pytest.raises(UsageError, match="mean has 2 values"):
        resolve_spec(card=None, onnx_spec=None, arch_default=None, flags={"mean": [0.1, 0.2], "channels": 3})
    with pytest.raises(CorruptInput, match="class names"):
        resolve_spec(card={"class_names": ["a", "b"]}, onnx_spec={"num_classes": 5}, arch_default=None, flags={})
    with pytest.raises(UsageError, match="height"):
        resolve_spec(card=None, onnx_spec=None, arch_default=None, flags={"height": -1})
    with pytest.raises(UsageError, match="unknown input-spec field"):
        resolve_spec(card=None, onnx_spec=None, arch_default=None, flags={"depth": 3})
