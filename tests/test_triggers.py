"""Every trigger is deterministic, JSON round-trips, and changes only what its spec says."""

from __future__ import annotations

import json

import pytest
import torch

from teacher_audit.errors import UsageError
from teacher_audit.zoo.triggers import (DEFAULTS, TRIGGERS, apply, from_dict, make_spec, patch_box, spec_to_dict)

PATCH = ("badnets_square", "badnets_grid", "trojan")
GLOBAL = ("blend", "sig", "wanet")
SHAPES = [(1, 28, 28), (3, 32, 32), (3, 17, 23)]


def _x(shape: tuple[int, int, int], n: int = 3) -> torch.Tensor:
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(0)) * 0.5


def test_registry_has_every_family() -> None:
    assert set(PATCH + GLOBAL + ("watermark",)) <= set(TRIGGERS.names())


@pytest.mark.parametrize("name", TRIGGERS.names())
@pytest.mark.parametrize("shape", SHAPES)
def test_deterministic_in_range_and_input_untouched(name: str, shape: tuple[int, int, int]) -> None:
    x = _x(shape)
    keep = x.clone()
    spec = make_spec(name)
    a = apply(x, spec)
    b = apply(x.clone(), from_dict(json.loads(json.dumps(spec_to_dict(spec)))))
    assert torch.equal(a, b)
    assert torch.equal(x, keep)
    assert a.shape == x.shape and a.min() >= 0.0 and a.max() <= 1.0
    assert not torch.equal(a, x)
    assert torch.equal(apply(x[0], spec), a[0])  # CHW works and matches the batch result


@pytest.mark.parametrize("name", PATCH)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("position", ["br", "tl", "center", (5, 3)])
def test_patch_triggers_change_only_their_patch(name: str, shape: tuple[int, int, int], position: object) -> None:
    x = _x(shape)
    spec = make_spec(name, position=position)
    r0, r1, c0, c1 = patch_box(spec, shape[1], shape[2])
    assert r1 - r0 == spec.size and c1 - c0 == spec.size
    changed = (apply(x, spec) != x).any(dim=(0, 1))
    outside = changed.clone()
    outside[r0:r1, c0:c1] = False
    assert not outside.any() and changed[r0:r1, c0:c1].any()


def test_badnets_square_is_exactly_the_colour() -> None:
    x = _x((3, 32, 32))
    y = apply(x, make_spec("badnets_square", colour=(1.0, 0.0, 0.5), position=(0, 0), size=3))
    assert torch.equal(y[:, :, :3, :3], torch.tensor([1.0, 0.0, 0.5]).view(1, 3, 1, 1).expand(3, 3, 3, 3))


@pytest.mark.parametrize("name", GLOBAL)
def test_global_triggers_are_identity_at_zero_strength(name: str) -> None:
    x = _x((3, 32, 32))
    assert torch.allclose(apply(x, make_spec(name, strength=0.0)), x, atol=1e-6)


def test_blend_and_sig_follow_their_formula() -> None:
    x = _x((1, 28, 28))
    a = 0.2
    pic = apply(torch.zeros(1, 1, 28, 28), make_spec("blend", strength=1.0))
    assert torch.allclose(apply(x, make_spec("blend", strength=a)), (1 - a) * x + a * pic, atol=1e-6)
    s = apply(torch.zeros(1, 1, 28, 28), make_spec("sig", strength=1.0, params={"f": 4}))
    assert torch.allclose(s[0, 0, 0], s[0, 0, 13])  # vertical stripes: constant down a column
    assert torch.allclose(s[0, 0, :, 0], s[0, 0, :, 0][0].expand(28))


def test_watermark_changes_channel_zero_only() -> None:
    x = _x((3, 32, 32))
    y = apply(x, make_spec("watermark", strength=0.1))
    assert torch.equal(y[:, 1:], x[:, 1:]) and not torch.equal(y[:, 0], x[:, 0])
    assert (y[:, 0] - x[:, 0]).max() <= 0.1 + 1e-6


@pytest.mark.parametrize("name", ("blend", "trojan", "wanet"))
def test_seed_changes_the_pattern(name: str) -> None:
    x = _x((3, 32, 32))
    assert not torch.equal(apply(x, make_spec(name, seed=0)), apply(x, make_spec(name, seed=1)))


@pytest.mark.parametrize("bad", [
    {"name": "nope"}, {"size": 3}, {"name": "blend", "strength": -1}, {"name": "badnets_square", "colour": [2.0]},
    {"name": "badnets_square", "position": "middle"}, {"name": "blend", "alpha": 0.2},
    {"name": "badnets_square", "size": 0},
])
def test_bad_specs_are_usage_errors(bad: dict) -> None:
    with pytest.raises(UsageError):
        from_dict(bad)


def test_spec_dict_is_json() -> None:
    for name in TRIGGERS.names():
        d = spec_to_dict(make_spec(name))
        assert from_dict(json.loads(json.dumps(d))) == make_spec(name)


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_omitted_keys_take_the_family_defaults(name: str) -> None:
    """``{"name": n}`` is the family's default trigger (a bare SIG once meant strength 1.0: the whole image
    replaced by stripes); given keys override, params merge key by key."""
    assert from_dict({"name": name}) == make_spec(name)
    assert from_dict({"name": name, "strength": 0.05}).strength == 0.05
    merged = from_dict({"name": name, "params": {"extra": 1.0}}).params
    assert merged == {**make_spec(name).params, "extra": 1.0}
