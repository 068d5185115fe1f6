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


def _run(teacher: Teacher) -> "object":
    from teacher_audit.zoo.tiny import TinyCNN

    cfg = PRESETS.get("dfq")()
    cfg.batch_size = 64
    torch.manual_seed(0)
    engine = Engine(teacher, cfg, student=TinyCNN(), device="cpu", seed=0)
    prof = ProfileConfig(n_early=32, n_synth=48, synth_steps=8, dfkd_passes=400, n_dfkd=48)
    return NTLRobustnessProbe(NTLConfig(profile=prof)).run(teacher, engine)


def test_probe_separates_ntl_like_from_clean(teachers):
    clean, trap = teachers
    rc, rt = _run(clean), _run(trap)
    assert rc.status == rt.status == "ok" and rc.threat == "ntl"
    assert rt.score > rc.score + 0.2
    # flagged at the default threshold; the tiny clean teacher (600 training images) is NOT asserted
    # unflagged: the default threshold is calibrated on full-size zoo teachers and this tiny one scores
    # ~0.12, above it (documented limitation in docs/ntl.md)
    assert rt.flagged
    assert rt.target_class == 3  # the class robust samples collapse to
    names = {e.name for e in rt.evidence}
    assert {"robustness_histogram", "fragile_samples", "robust_samples", "ntl_features"} <= names
    hist = next(e for e in rt.evidence if e.name == "robustness_histogram")
    assert hist.png is not None and hist.png[:4] == b"\x89PNG"
    assert rt.budget.teacher_passes > 0 and "backdoor" in rt.summary  # single-class collapse caveat


def test_probe_registered():
    assert PROBES.get("ntl_robustness") is NTLRobustnessProbe
