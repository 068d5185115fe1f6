"""Model-card sidecar (``<model file>.card.json``) and input-spec precedence.

The card is untrusted JSON written next to a checkpoint. It is read with a size cap (1 MB), parsed with
the standard JSON parser (no code, no object hooks beyond rejecting NaN/Infinity), and validated field by
field; anything malformed raises :class:`~teacher_audit.errors.CorruptInput` with one line. The schema is
documented in ``docs/card.md``.

Precedence of every input-spec field (:func:`resolve_spec`): command-line flags > card > ONNX graph >
registry default (> built-in default). ``InputSpec.sources`` records which one won per field.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from teacher_audit.errors import AuditError, CorruptInput, UsageError
from teacher_audit.intake.spec import InputSpec

CARD_SUFFIX = ".card.json"
MAX_CARD_BYTES = 1_000_000
MAX_CLASSES = 1_000_000
MAX_CHANNELS = 64
MAX_SIDE = 8192
MAX_NAME_CHARS = 256

TOP_KEYS = frozenset({"schema_version", "name", "description", "arch", "input", "num_classes",
                      "class_names", "ground_truth", "extra"})
INPUT_KEYS = ("channels", "height", "width", "value_range", "mean", "std")
SPEC_FIELDS = ("channels", "height", "width", "value_range", "mean", "std", "num_classes", "class_names")


def card_path(model_path: str | os.PathLike[str]) -> Path:
    """The sidecar path: ``<model file name>.card.json`` in the model's folder."""
    p = Path(model_path)
    return p.with_name(p.name + CARD_SUFFIX)


# ---------------------------------------------------------------- field validators (raise ValueError)

def _int(v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"must be an integer in [{lo}, {hi}], got {_short(v)}")
    return v


def _num(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"must be a finite number, got {_short(v)}")
    return float(v)


def _nums(v: Any, positive: bool = False) -> tuple[float, ...]:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, (list, tuple)) or not 1 <= len(v) <= MAX_CHANNELS:
        raise ValueError(f"must be a list of 1..{MAX_CHANNELS} numbers, got {_short(v)}")
    out = tuple(_num(x) for x in v)
    if positive and any(x <= 0 for x in out):
        raise ValueError("must be positive")
    return out


def _range(v: Any) -> tuple[float, float]:
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise ValueError(f"must be [low, high], got {_short(v)}")
    lo, hi = _num(v[0]), _num(v[1])
    if not lo < hi:
        raise ValueError(f"low must be < high, got [{lo}, {hi}]")
    return (lo, hi)


def _names(v: Any) -> list[str]:
    if not isinstance(v, list) or not 1 <= len(v) <= MAX_CLASSES:
        raise ValueError("must be a non-empty list of strings")
    if not all(isinstance(s, str) and len(s) <= MAX_NAME_CHARS for s in v):
        raise ValueError(f"must hold strings of at most {MAX_NAME_CHARS} characters")
    return list(v)


def _text(v: Any) -> str:
    if not isinstance(v, str) or len(v) > 4096:
        raise ValueError("must be a string of at most 4096 characters")
    return v


def _arch(v: Any) -> str:
    if not isinstance(v, str) or not 1 <= len(v) <= 64 or not all(c.isalnum() or c in "_-." for c in v):
        raise ValueError(f"must be a registry name (letters, digits, _-.), got {_short(v)}")
    return v


def _obj(v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ValueError(f"must be an object, got {type(v).__name__}")
    return v


FIELD_CHECKS: dict[str, Callable[[Any], Any]] = {
    "channels": lambda v: _int(v, 1, MAX_CHANNELS),
    "height": lambda v: _int(v, 1, MAX_SIDE),
    "width": lambda v: _int(v, 1, MAX_SIDE),
    "value_range": _range,
    "mean": _nums,
    "std": lambda v: _nums(v, positive=True),
    "num_classes": lambda v: _int(v, 1, MAX_CLASSES),
    "class_names": _names,
}


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


# ---------------------------------------------------------------- card loading

def _reject_constant(name: str) -> None:
    raise ValueError(f"non-standard JSON constant {name}")


def validate_card(raw: Any, where: str = "card") -> dict[str, Any]:
    """Validate a parsed card; return a normalised copy. Raises CorruptInput with one line."""
    try:
        card = _obj(raw)
        unknown = sorted(set(card) - TOP_KEYS)
        if unknown:
            raise ValueError(f"unknown top-level keys {unknown[:5]} (put free-form data under \"extra\")")
        out: dict[str, Any] = {}
        for key, check in (("schema_version", lambda v: _int(v, 1, 1)), ("name", _text), ("description", _text),
                           ("arch", _arch), ("num_classes", FIELD_CHECKS["num_classes"]),
                           ("class_names", _names), ("ground_truth", _obj), ("extra", _obj)):
            if key in card:
                try:
                    out[key] = check(card[key])
                except ValueError as exc:
                    raise ValueError(f"{key} {exc}") from None
        if "input" in card:
            inp = _obj(card["input"])
            bad = sorted(set(inp) - set(INPUT_KEYS))
            if bad:
                raise ValueError(f"unknown input keys {bad[:5]}")
            out["input"] = {}
            for key in INPUT_KEYS:
                if key in inp:
                    try:
                        val = FIELD_CHECKS[key](inp[key])
                    except ValueError as exc:
                        raise ValueError(f"input.{key} {exc}") from None
                    out["input"][key] = list(val) if isinstance(val, tuple) else val
        names, n = out.get("class_names"), out.get("num_classes")
        if names is not None and n is not None and len(names) != n:
            raise ValueError(f"class_names has {len(names)} entries but num_classes is {n}")
        return out
    except ValueError as exc:
        raise CorruptInput(f"invalid {where}: {exc}") from None


def load_card(model_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Read and validate ``<model file>.card.json`` next to ``model_path``; None if there is none.

    Raises:
        CorruptInput: the card is larger than 1 MB, not UTF-8 JSON, too deeply nested, or fails the schema.
    """
    path = card_path(model_path)
    if not path.exists():
        return None
    if not path.is_file():
        raise CorruptInput(f"model card {path.name} is not a regular file")
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CARD_BYTES + 1)
    except OSError as exc:
        raise CorruptInput(f"cannot read model card {path.name}: {exc.strerror or exc}") from None
    if len(data) > MAX_CARD_BYTES:
        raise CorruptInput(f"model card {path.name} is larger than {MAX_CARD_BYTES} bytes")
    try:
        raw = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptInput(f"model card {path.name} is not valid JSON: {' '.join(str(exc).split())[:120]}") from None
    except RecursionError:
        raise CorruptInput(f"model card {path.name} is nested too deeply") from None
    return validate_card(raw, where=f"model card {path.name}")


# ---------------------------------------------------------------- precedence

def _card_fields(card: Mapping[str, Any] | None) -> dict[str, Any]:
    if not card:
        return {}
    fields = dict(card.get("input") or {})
    for key in ("num_classes", "class_names"):
        if card.get(key) is not None:
            fields[key] = card[key]
    return fields


def _checked(fields: Mapping[str, Any] | None, source: str, error: type[AuditError]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (fields or {}).items():
        if value is None:
            continue
        if key not in FIELD_CHECKS:
            raise error(f"unknown input-spec field {key!r} from {source}; known: {', '.join(SPEC_FIELDS)}")
        try:
            out[key] = FIELD_CHECKS[key](value)
        except ValueError as exc:
            raise error(f"{key} from {source} {exc}") from None
    return out


def resolve_spec(*, card: Mapping[str, Any] | None, onnx_spec: Mapping[str, Any] | None,
                 arch_default: InputSpec | None, flags: Mapping[str, Any] | None) -> InputSpec:
    """Merge the input-spec sources field by field: flags > card > ONNX graph > registry default.

    Args:
        card: a validated card (:func:`load_card`) or None.
        onnx_spec: fields read off an ONNX graph (``channels``, ``height``, ``width``, ``num_classes``) or None.
        arch_default: the registry's default spec; its ``sources`` (e.g. "weights" for num_classes read off
            a state_dict) are kept for the fields it wins.
        flags: field -> value from the command line; None values are ignored.

    Returns:
        The merged :class:`InputSpec`; ``sources[field]`` names the winner ("flag", "card", "onnx",
        "registry"/"weights", or "default" when nobody set it). Per-channel mean/std from the registry
        or the built-in default are adapted when another source changes the channel count.

    Raises:
        UsageError: a flag is malformed or inconsistent; CorruptInput: the card is inconsistent.
    """
    layers: list[tuple[str, dict[str, Any]]] = [("flag", _checked(flags, "flags", UsageError)),
                                                ("card", _checked(_card_fields(card), "card", CorruptInput)),
                                                ("onnx", _checked(onnx_spec, "ONNX graph", CorruptInput))]
    if arch_default is not None:
        d = arch_default.to_dict()
        layers.append(("registry", {k: d[k] for k in SPEC_FIELDS if d.get(k) is not None}))
    base = InputSpec()
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name in SPEC_FIELDS:
        for source, fields in layers:
            if name in fields:
                values[name] = fields[name]
                if source == "registry" and arch_default is not None:
                    sources[name] = arch_default.sources.get(name, "registry")
                else:
                    sources[name] = source
                break
        else:
            values[name] = getattr(base, name)
            sources[name] = "default"
    ch = values["channels"]
    for key in ("mean", "std"):
        vec = tuple(float(x) for x in values[key])
        if len(vec) != ch:
            if len(vec) == 1 or sources[key] in ("registry", "default"):
                vec = tuple([round(sum(vec) / len(vec), 4)] * ch)
            else:
                err = UsageError if "flag" in (sources[key], sources["channels"]) else CorruptInput
                raise err(f"{key} has {len(vec)} values ({sources[key]}) but channels is {ch} "
                          f"({sources['channels']})")
        values[key] = vec
    names = values["class_names"]
    if names is not None and len(names) != values["num_classes"]:
        err = UsageError if "flag" in (sources["class_names"], sources["num_classes"]) else CorruptInput
        raise err(f"{len(names)} class names ({sources['class_names']}) but num_classes is "
                  f"{values['num_classes']} ({sources['num_classes']})")
    return InputSpec(channels=ch, height=values["height"], width=values["width"],
                     value_range=tuple(values["value_range"]), mean=values["mean"], std=values["std"],
                     num_classes=values["num_classes"], class_names=names, sources=sources)
