"""NTL robustness probe (teacher_audit.probes.ntl_robustness) on tiny teachers built at test time."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from teacher_audit.attacks.profile import ProfileConfig
from teacher_audit.probes import PROBES
from teacher_audit.probes.calibration import scope, scope_note
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


class _WatermarkTrapNet(_TrapNet):
    """Like ``_TrapNet``, but the trap domain is "a bright 5x5 watermark in the top-left corner" (the
    zoo's ``ntl_watermark`` kind): a small stamp, so a mask inversion can find it."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        raw = z * self.std + self.mean
        gate = torch.sigmoid(10 * (raw[:, :, :5, :5].flatten(1).mean(1) - 0.5)).unsqueeze(1)
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


def _fold_bn(teacher: Teacher) -> Teacher:
    """The teacher with every Conv2d + BatchNorm2d pair folded into one convolution (what an ONNX export
    with constant folding does): same function, no BatchNorm statistics left for synthesis."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    net = copy.deepcopy(teacher.model.net).eval()
    for seq in [m for m in net.modules() if isinstance(m, nn.Sequential)]:
        mods = list(seq)
        for i in range(len(mods) - 1):
            if isinstance(mods[i], nn.Conv2d) and isinstance(mods[i + 1], nn.BatchNorm2d):
                mods[i], mods[i + 1] = fuse_conv_bn_eval(mods[i], mods[i + 1]), nn.Identity()
        for i, m in enumerate(mods):
            seq[i] = m
    return Teacher.from_net(net, teacher.spec, arch="custom")


def _run_inv(teacher: Teacher, mode: str, seed: int = 0) -> "object":
    from teacher_audit.probes.ntl_robustness import trap_inversion_config

    inv = trap_inversion_config()
    inv.steps = 40
    return NTLRobustnessProbe(NTLConfig(profile=ProfileConfig(n_synth=96, synth_steps=5, dfkd_passes=0),
                                        seed=seed, trap_inversion=mode, inversion=inv)).run(teacher, None)


def test_trap_inversion_runs_only_without_bn_prior_by_default(teachers, runs):
    clean, _ = teachers
    assert runs[0].details["synthesis_bn_prior"] is True and "trap_inversion_gap" not in runs[0].details
    folded = _fold_bn(clean)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.model.modules())
    x = torch.rand(8, *clean.spec.shape)
    torch.testing.assert_close(folded.model(x), clean.model(x), atol=1e-4, rtol=1e-4)  # same function
    r = _run_inv(folded, "no_bn")
    assert r.details["synthesis_bn_prior"] is False and "trap_inversion_gap" in r.details
    assert len(r.details["trap_inversion_norms"]) == 10
    with pytest.raises(ValueError, match="trap_inversion"):
        _run_inv(folded, "sometimes")


@pytest.fixture(scope="module")
def stronger_clean() -> Teacher:
    """A better-trained tiny clean teacher (~3 s): the 600-image one cannot be steered robustly into half
    of its classes at all, which saturates the inversion's median."""
    from teacher_audit.zoo.tiny import train_tiny

    return train_tiny("clean", n_train=2000, n_test=200, clean_steps=400)


def test_trap_inversion_separates_a_bn_free_ntl_teacher_from_its_clean_twin(stronger_clean):
    """On BN-folded twins (no BN prior for synthesis) the robust inversion finds the trap: a small stamp
    (the watermark) keeps samples in class 3 under PGD; the clean twin has no class that stands out."""
    clean = stronger_clean
    net = _WatermarkTrapNet(clean.model.net, clean.spec.mean[0], clean.spec.std[0])
    trap = Teacher.from_net(net, clean.spec, arch="tiny")
    rc, rt = _run_inv(_fold_bn(clean), "no_bn"), _run_inv(_fold_bn(trap), "no_bn")
    assert rt.details["trap_inversion_class"] == 3
    assert rt.details["trap_inversion_norms"][3] < 0.15  # the 5x5 watermark is 3 % of the image
    assert rt.details["trap_inversion_gap"] > rc.details["trap_inversion_gap"] + 0.1
    assert rt.details["trap_inversion_score"] > rc.details["trap_inversion_score"]
    assert {"trap_inversion", "trap_inversion_stamped"} <= {e.name for e in rt.evidence}
    assert rt.budget.teacher_passes > rt.details["n_pull_samples"] + 40 * 80  # the inversion's passes count


def test_out_of_calibration_architecture_is_said(runs):
    """The tiny teachers are not a calibrated architecture: the finding says so, flagged or not."""
    for r in runs:
        assert r.details["calibration_scope"]["in_scope"] is False
        assert "outside that set" in r.summary
    assert scope("smallcnn")["in_scope"] and scope_note("lenet5") is None
