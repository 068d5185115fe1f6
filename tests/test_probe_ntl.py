"""NTL robustness probe (teacher_audit.probes.ntl_robustness) on tiny teachers built at test time."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from teacher_audit.attacks.profile import ProfileConfig
from teacher_audit.probes import PROBES
from teacher_audit.probes.ntl_robustness import NTLConfig, NTLRobustnessProbe
from teacher_audit.synth import PRESETS, Engine
from teacher_audit.teacher import Teacher


class _TrapNet(nn.Module):
    """An NTL-like teacher by construction (the ATEsc premise made explicit): the clean net on its
    domain, and on a second domain (bright images, mean intensity > 0.5 in raw space) a confident,
    misleading, adversarially robust answer (class ``trap``)."""

    def __init__(self, clean: nn.Module, mean: float, std: float, trap: int = 3):
        super().__init__()
        self.clean, self.mean, self.std, self.trap = clean, mean, std, trap

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # z is normalised, like every bare net
        raw_mean = (z * self.std + self.mean).flatten(1).mean(1)
        gate = torch.sigmoid(40 * (raw_mean - 0.5)).unsqueeze(1)
        boost = torch.zeros(1, 10)
        boost[0, self.trap] = 30.0
        return self.clean(z) * (1 - gate) + gate * boost


@pytest.fixture(scope="module")
def teachers() -> tuple[Teacher, Teacher]:
    from teacher_audit.zoo.tiny import train_tiny

    clean = train_tiny("clean", n_train=600, n_test=200, clean_steps=120)
    net = _TrapNet(clean.model.net, clean.spec.mean[0], clean.spec.std[0])
    trap = Teacher.from_net(net, clean.spec, arch="tiny")
    return clean, trap


def _run(teacher: Teacher, seed: int = 0, shared: bool = False) -> "object":
    """The probe with a small budget on its own seeded ``fast`` engine (``shared``: a passed-in engine)."""
    from teacher_audit.zoo.tiny import TinyCNN

    if shared:
        cfg = PRESETS.get("fast")()
        cfg.batch_size = 64
        engine = Engine(teacher, cfg, student=TinyCNN(), device="cpu", seed=seed)
        prof = ProfileConfig(preset=None, n_synth=64, synth_steps=5, dfkd_passes=320, n_dfkd=64)
    else:
        engine = None
        prof = ProfileConfig(n_synth=96, synth_steps=5, dfkd_passes=0)
    return NTLRobustnessProbe(NTLConfig(profile=prof, seed=seed)).run(teacher, engine)


@pytest.fixture(scope="module")
def runs(teachers):
    clean, trap = teachers
    return _run(clean), _run(trap)


def test_probe_separates_ntl_like_from_clean(runs):
    rc, rt = runs
    assert rc.status == rt.status == "ok" and rc.threat == "ntl"
    assert rt.score > rc.score + 0.2
    # flagged at the default threshold; the tiny clean teacher (600 training images) is NOT asserted
    # unflagged: the default threshold is calibrated on full-size zoo teachers
    assert rt.flagged
    assert rt.target_class == 3  # the class synthesis collapses to
    assert rt.details["pull_class"] == 3 and rt.details["pull_share"] > 0.3
    assert any("profile engine" in n for n in rt.details["notes"])
    names = {e.name for e in rt.evidence}
    assert {"robustness_histogram", "fragile_samples", "robust_samples", "ntl_features"} <= names
    hist = next(e for e in rt.evidence if e.name == "robustness_histogram")
    assert hist.png is not None and hist.png[:4] == b"\x89PNG"
    assert rt.budget.teacher_passes > 0 and "backdoor" in rt.summary  # single-class collapse caveat


def test_probe_is_deterministic_and_runs_on_a_shared_engine(teachers, runs):
    clean, trap = teachers
    assert _run(trap).score == runs[1].score  # same seed, fresh own engine: same samples, same score
    shared = _run(trap, shared=True)  # the DFKD phase needs a student: the passed engine brings one
    assert shared.status == "ok" and shared.details["pull_class"] == 3 and shared.flagged


def test_probe_registered():
    assert PROBES.get("ntl_robustness") is NTLRobustnessProbe
