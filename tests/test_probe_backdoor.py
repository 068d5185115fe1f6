"""Backdoor probes: each separates a tiny backdoored teacher from a tiny clean one trained here."""

from __future__ import annotations

import pytest
import torch

from teacher_audit.probes import PROBES
from teacher_audit.probes.backdoor_fused import FusedBackdoorProbe, FusedConfig
from teacher_audit.probes.backdoor_inversion import InversionConfig, InversionProbe
from teacher_audit.probes.backdoor_margin import MarginConfig, MarginProbe, gamma_pvalue
from teacher_audit.probes.backdoor_shuffle import ShuffleConfig, ShuffleProbe
from teacher_audit.probes.backdoor_sink import SinkConfig, SinkProbe
from teacher_audit.probes.calibration import scope
from teacher_audit.report.model import ProbeResult

TARGET = 3


@pytest.fixture(scope="module")
def pair():
    from teacher_audit.zoo.tiny import train_tiny

    bd, clean = train_tiny("backdoor", trigger={"name": "badnets_square", "size": 6}, target=TARGET, steps=200,
                           poison_ratio=0.3, return_clean=True)
    assert bd.meta["ground_truth"]["asr"] > 0.7
    return bd, clean


def _engine(teacher):
    from teacher_audit.synth import PRESETS, Engine

    return Engine(teacher, PRESETS.get("dfq")(), device="cpu", seed=0)


@pytest.fixture(scope="module")
def samples(pair):
    return [_engine(t).synthesize(80, steps=20) for t in pair]


def test_registered():
    for name in ("backdoor", "backdoor_margin", "backdoor_inversion", "backdoor_shuffle", "backdoor_sink"):
        assert name in PROBES
    assert PROBES.meta("backdoor")["default"] is True
    assert PROBES.meta("backdoor_margin")["default"] is False


def test_gamma_pvalue_small_only_for_an_outlier():
    base = [10.0, 12.0, 9.0, 11.0, 10.5, 13.0, 9.5, 11.5, 10.2]
    assert gamma_pvalue(torch.tensor(base + [60.0]).numpy()) < 1e-3
    assert gamma_pvalue(torch.tensor(base + [13.5]).numpy()) > 0.05


def test_margin_probe_separates(pair):
    bd, clean = pair
    cfg = MarginConfig(starts=4, steps=40, limit_seconds=None)
    rb, rc = MarginProbe(cfg).run(bd), MarginProbe(cfg).run(clean)
    assert isinstance(rb, ProbeResult) and rb.status == "ok"
    # the backdoor raises the target's reachable margin well above the clean twin's (measured ~2.3x);
    # on tiny teachers a naturally easy class can still win the within-model Gamma test
    assert rb.details["margins"][TARGET] > 1.5 * rc.details["margins"][TARGET]
    assert rb.evidence and rb.evidence[0].png[:4] == b"\x89PNG"


def test_inversion_probe_separates(pair, samples):
    bd, clean = pair
    cfg = InversionConfig(limit_seconds=None)
    rb = InversionProbe(cfg).run(bd, None, samples=samples[0])
    rc = InversionProbe(cfg).run(clean, None, samples=samples[1])
    nb, nc = rb.details["mask_norms"], rc.details["mask_norms"]
    # what must hold (not knife-edge ranks: at one vs two torch threads the argmin moved between the
    # target and a fragile neighbour class): the target's trigger is clearly smaller than the same
    # class's adversarial mask on the clean twin, and among the smaller half of the backdoored teacher's
    assert nb[TARGET] < 0.75 * nc[TARGET]
    assert nb[TARGET] <= sorted(nb)[len(nb) // 2]
    assert rb.target_class is not None and 0 <= rb.target_class < len(nb)
    assert {e.name for e in rb.evidence} == {"inverted_trigger", "stamped_samples"}


def test_shuffle_probe_separates(pair, samples):
    bd, clean = pair
    cfg = ShuffleConfig(n_layers=2)
    rb = ShuffleProbe(cfg).run(bd, None, samples=samples[0])
    rc = ShuffleProbe(cfg).run(clean, None, samples=samples[1])
    assert rb.status == "ok" and rb.details["shuffled_layers"]
    # % of samples where suspects agree with the teacher: higher with the backdoor (no fixed gap: the
    # gap depends on the synthetic batch, which moves with the torch thread count)
    assert rb.score > rc.score


def test_sink_probe_separates(pair):
    bd, clean = pair
    rb, rc = SinkProbe(SinkConfig()).run(bd), SinkProbe(SinkConfig()).run(clean)
    sb, sc = rb.details["shares"], rc.details["shares"]
    print("sink shares", [round(v, 3) for v in sb], [round(v, 3) for v in sc])
    assert rb.status == "ok" and rb.budget.teacher_passes == 1024 and len(sb) == len(sc) == 10
    assert abs(sum(sb) - 1) < 1e-3  # shares are rounded to 4 decimals
    # the backdoor target absorbs the dead-leaves pictures; the clean twin's same class does not
    assert rb.target_class == TARGET
    assert sb[TARGET] > 2 * sc[TARGET]
    assert rb.evidence and rb.evidence[0].name == "sink_samples"


def test_probe_batches_bound_memory_and_match_the_single_draw(pair):
    from teacher_audit.synth.procedural import probe_batches, probe_images

    spec = pair[0].spec
    whole = list(probe_batches(spec, 100, seed=3))
    assert len(whole) == 1 and torch.equal(whole[0], probe_images(spec, 100, seed=3))
    per_picture = spec.channels * spec.height * spec.width
    chunks = list(probe_batches(spec, 100, seed=3, max_floats=30 * per_picture))
    assert [c.shape[0] for c in chunks] == [30, 30, 30, 10]
    lo, hi = spec.value_range
    assert all(float(c.min()) >= lo and float(c.max()) <= hi for c in chunks)
    assert not torch.equal(chunks[0], chunks[1])  # each chunk has its own draw


def test_sink_probe_skips_without_input_statistics(pair):
    import dataclasses

    from teacher_audit.teacher import Teacher

    bd, _ = pair
    spec = dataclasses.replace(bd.spec, sources={**bd.spec.sources, "mean": "default", "std": "default"})
    r = SinkProbe(SinkConfig()).run(Teacher(model=bd.model, spec=spec, arch=bd.arch, fmt=bd.fmt))
    assert r.status == "skipped" and r.score is None and "mean/std" in r.summary


def test_sink_probe_takes_the_statistics_an_onnx_graph_normalises_with(pair):
    """Unknown mean/std but a normalisation read off the graph: the same pictures, the same score as with a card."""
    import dataclasses

    from teacher_audit.teacher import Teacher

    bd, _ = pair
    spec = dataclasses.replace(bd.spec, sources={**bd.spec.sources, "mean": "default", "std": "default"},
                               graph_normalisation=(tuple(bd.spec.mean), tuple(bd.spec.std)))
    r = SinkProbe(SinkConfig()).run(Teacher(model=bd.model, spec=spec, arch=bd.arch, fmt=bd.fmt))
    ref = SinkProbe(SinkConfig()).run(bd)
    assert r.status == ref.status == "ok"
    assert r.score == pytest.approx(ref.score) and r.target_class == ref.target_class


def test_fused_probe_flags_backdoor_not_clean(pair):
    bd, clean = pair
    cfg = FusedConfig(margin=MarginConfig(starts=4, steps=40, limit_seconds=None),
                      inversion=InversionConfig(limit_seconds=None),
                      shuffle=ShuffleConfig(n_layers=2), samples=80, synth_steps=20)
    rb, rc = FusedBackdoorProbe(cfg).run(bd, _engine(bd)), FusedBackdoorProbe(cfg).run(clean, _engine(clean))
    # The fused z uses the zoo (smallcnn) calibration, which does not transfer to this tiny architecture
    # (measured: the tiny clean twin scores above the backdoored one); the calibration-free per-class
    # consensus of margin and inversion is what must separate here.
    assert rb.details["consensus"]["target_class"] == TARGET
    assert rb.details["consensus"]["score"] > rc.details["consensus"]["score"]
    assert set(rb.details["components"]) == {"backdoor_margin", "backdoor_inversion", "backdoor_robust_inversion",
                                             "backdoor_shuffle", "backdoor_sink"}
    assert rb.budget.teacher_passes > 0


def _component_results(target: int) -> dict[str, ProbeResult]:
    """Margin and inversion results with class ``target`` an outlier in both (no teacher needed)."""
    margins = [10.0, 11.0, 9.5, 10.5, 10.2, 9.8, 10.1, 10.4, 9.9, 10.3]
    norms = [0.10, 0.12, 0.09, 0.11, 0.10, 0.13, 0.10, 0.12, 0.11, 0.10]
    margins[target], norms[target] = 40.0, 0.005
    return {"backdoor_margin": ProbeResult(probe="backdoor_margin", threat="backdoor", score=8.0, target_class=target,
                                           details={"margins": margins}),
            "backdoor_inversion": ProbeResult(probe="backdoor_inversion", threat="backdoor", score=9.0,
                                              target_class=target, details={"mask_norms": norms})}


def _ntl(pull_class: int, share: float, flagged: bool, bimodal: bool, collapse_class: int | None) -> ProbeResult:
    counts = [20] * 10
    counts[pull_class] = int(share * 384)
    return ProbeResult(probe="ntl_robustness", threat="ntl", score=0.5, flagged=flagged,
                       details={"class_counts": counts, "pull_class": pull_class, "pull_share": share,
                                "bimodal": bimodal, "collapse_class": collapse_class, "collapse_share": 0.95})


def test_trap_classes_need_flag_robust_mode_and_collapse():
    from teacher_audit.probes.backdoor_fused import ntl_details, trap_classes

    assert trap_classes(ntl_details(_ntl(3, 0.8, True, True, 3))) == {3}
    assert trap_classes(ntl_details(_ntl(3, 0.8, True, False, 3))) == set()   # fragile pull: a backdoor's
    assert trap_classes(ntl_details(_ntl(3, 0.8, False, True, 3))) == set()   # NTL probe did not flag
    assert trap_classes(None) == set()


def test_combine_adds_pull_and_leaves_out_trap_class():
    from teacher_audit.report.model import Budget

    calib = {"components": {"backdoor_margin": {"mean": 2.0, "sd": 1.0}, "backdoor_inversion": {"mean": 1.5, "sd": 0.7},
                            "consensus": {"mean": 4.5, "sd": 2.0}, "pull": {"mean": 0.1, "sd": 0.05}},
             "threshold": 3.0}
    probe = FusedBackdoorProbe(FusedConfig(calibration=calib))
    own = probe.conclude(_component_results(3), Budget(), [])
    assert own.flagged and own.target_class == 3 and own.details["pull"] is None
    # fragile pull into the same class (backdoor-like): pull joins, verdict unchanged
    bd = probe.combine(own, {"ntl_robustness": _ntl(3, 0.6, True, False, 3)})
    assert bd.flagged and bd.target_class == 3 and bd.details["pull"]["target_class"] == 3
    assert bd.details["trap_classes"] == [] and "pull" in bd.details["z"]
    # robust trap in class 3 (NTL-like): class 3 is neutralised in every component
    ntl = probe.combine(own, {"ntl_robustness": _ntl(3, 0.8, True, True, 3)})
    assert ntl.details["trap_classes"] == [3]
    assert ntl.score < own.score and not ntl.flagged
    assert ntl.details["pull"]["target_class"] != 3
    # nothing to combine with: unchanged
    assert probe.combine(own, {}) is own


def test_scan_second_pass_refuses_backdoor_with_ntl():
    """scan's second pass hands the NTL probe's result to the fused backdoor probe (no teacher needed)."""
    from teacher_audit.policy import load_policy
    from teacher_audit.report.model import Budget
    from teacher_audit.scan import ScanOptions, _combine

    own = FusedBackdoorProbe().conclude(_component_results(3), Budget(), [])
    ntl = _ntl(3, 0.8, True, True, 3)
    out = _combine([own, ntl], load_policy(None), ScanOptions())
    assert out[1] is ntl
    assert out[0].details["trap_classes"] == [3] and out[0].details["ntl_used"]
    assert out[0].score < own.score


@pytest.fixture(scope="module")
def blend_pair():
    from teacher_audit.zoo.tiny import train_tiny

    bd, clean = train_tiny("backdoor", trigger={"name": "blend"}, target=TARGET, steps=200, poison_ratio=0.3,
                           return_clean=True)
    assert bd.meta["ground_truth"]["asr"] > 0.7
    return bd, clean


def test_robust_inversion_finds_a_global_trigger(blend_pair):
    """A faint whole-image Blend trigger is answered robustly: a small stamp keeps the other classes'
    samples in the target under PGD; the clean twin has no class that stands out."""
    from teacher_audit.probes.backdoor_inversion import RobustInversionConfig, RobustInversionProbe, mask_gap

    bd, clean = blend_pair
    cfg = RobustInversionConfig(limit_seconds=None)
    rb = RobustInversionProbe(cfg).run(bd, _engine(bd))
    rc = RobustInversionProbe(cfg).run(clean, _engine(clean))
    assert rb.status == rc.status == "ok"
    assert rb.target_class == TARGET
    assert rb.score == pytest.approx(mask_gap(rb.details["mask_norms"]))
    assert rb.score > rc.score + 0.2
    # the PGD passes are counted: more than a plain inversion's 60 steps x 80 stamped samples
    assert rb.budget.teacher_passes > 3 * 60 * 80
    assert PROBES.get("backdoor_robust_inversion") is RobustInversionProbe
    assert "backdoor_robust_inversion" in FusedConfig().components


def test_out_of_calibration_architecture_is_said():
    """With the built-in calibration, a teacher outside its architectures gets the note; a calibrated one, or
    the user's own calibration/threshold, does not; ``combine`` keeps it."""
    from teacher_audit.report.model import Budget

    res = _component_results(3)
    out = FusedBackdoorProbe().conclude(res, Budget(), [], {"calibration_scope": scope("onnx")})
    assert out.flagged and "outside that set" in out.summary
    sc = out.details["calibration_scope"]
    assert (sc["source"], sc["archs"], sc["teacher_arch"], sc["in_scope"]) == ("built-in", ["smallcnn", "lenet5"],
                                                                            "onnx", False)
    again = FusedBackdoorProbe().combine(out, {"ntl_robustness": _ntl(5, 0.2, False, False, None)})
    assert "outside that set" in again.summary
    inside = FusedBackdoorProbe().conclude(res, Budget(), [], {"calibration_scope": scope("smallcnn")})
    assert "outside" not in inside.summary
    own = FusedBackdoorProbe(FusedConfig(threshold=5.0)).conclude(res, Budget(), [], {"calibration_scope": scope("onnx")})
    assert "outside" not in own.summary
