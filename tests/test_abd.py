"""ABD defense: suspect model, implicit hypergradient, hooks on the real engine."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from teacher_audit.defenses import DEFENSES
from teacher_audit.defenses.abd import ABDConfig, SelfRetrospection, ShufflingVaccine, implicit_hypergrad
from teacher_audit.errors import UsageError
from teacher_audit.probes.shuffle import build_suspect, execution_order


def test_hypergradient_matches_finite_differences():
    torch.manual_seed(0)
    n, d = 4, 6
    q = torch.randn(d, d, dtype=torch.float64)
    a = q @ q.T / d + torch.eye(d, dtype=torch.float64)         # SPD Hessian of the inner problem
    b = torch.randn(d, n, dtype=torch.float64)
    c = torch.randn(d, dtype=torch.float64)
    theta = torch.randn(n, dtype=torch.float64, requires_grad=True)

    def inner_of(th):
        return lambda delta: 0.5 * delta @ a @ delta - delta @ (b @ th)

    def outer_of(th):
        return lambda delta: ((delta - c) ** 2).sum() + 0.1 * (th ** 2).sum() + (delta * th.sum()).sum()

    def solve(th):
        return torch.linalg.solve(a, b @ th)

    def total(th):
        return outer_of(th)(solve(th))

    alpha = 1.0 / float(torch.linalg.eigvalsh(a).max())
    hg, value = implicit_hypergrad(outer_of(theta), inner_of(theta), solve(theta.detach()), [theta], 400, alpha)
    eps = 1e-6
    fd = torch.zeros(n, dtype=torch.float64)
    for i in range(n):
        e = torch.zeros(n, dtype=torch.float64)
        e[i] = eps
        with torch.no_grad():
            fd[i] = (total(theta + e) - total(theta - e)) / (2 * eps)
    assert torch.allclose(hg[0], fd, rtol=1e-5, atol=1e-6), (hg[0], fd)
    assert abs(float(value) - float(total(theta.detach()))) < 1e-9
    # few Neumann steps: close, but only approximately
    hg5, _ = implicit_hypergrad(outer_of(theta), inner_of(theta), solve(theta.detach()), [theta], 5, alpha)
    assert not torch.allclose(hg5[0], fd, rtol=1e-6, atol=1e-9)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.b1 = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 8, 3, padding=1, groups=2)
        self.b2 = nn.BatchNorm2d(8)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(self.c3(x).mean((2, 3)))


def test_suspect_leaves_bn_and_classifier_untouched_and_shuffles_inputs():
    net = _Net().eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    x = torch.rand(5, 1, 8, 8)
    assert execution_order(net, x, (nn.Conv2d,)) == ["c1", "c2", "c3"]
    sus = build_suspect(net, x, n_layers=2, generator=torch.Generator().manual_seed(0))
    assert sus.layers == ["c2", "c3"]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    sd = sus.model.state_dict()
    for k, v in before.items():   # every weight, BN statistic and the classifier are identical
        assert torch.equal(sd[k], v), k
    assert any(not torch.equal(p, torch.arange(len(p))) for p in sus.perms)
    with torch.no_grad():
        assert not torch.allclose(sus.model(x), net(x))
        # teacher itself is unaffected (hooks live on the copy only)
        assert torch.allclose(net(x), net(x))
    # manual check: c2's input permuted == the suspect's c2 behaviour
    feats = {}

    def grab(_m, i, o):
        feats["c2"] = (i[0], o)

    sus.model.c2.register_forward_hook(grab)
    with torch.no_grad():
        sus.model(x)
        inp, outp = feats["c2"]
        ref_in = torch.relu(net.b1(net.c1(x)))
        assert torch.allclose(inp, ref_in[:, sus.perms[0]])       # c2 sees its input channels permuted
        assert torch.allclose(outp, net.c2(ref_in[:, sus.perms[0]]), atol=1e-6)


def test_abd_registered_and_options_checked():
    assert "abd" in DEFENSES
    with pytest.raises(UsageError):
        DEFENSES.get("abd")(None, None, nonsense=1)
    with pytest.raises(UsageError):
        DEFENSES.get("abd")(None, None, mode="weird")


def _tiny_engine():
    """A tiny BN teacher trained here and a dfq engine with small batches (one student step per iteration)."""
    from teacher_audit.synth import PRESETS, Engine
    from teacher_audit.synth.tiny import TinyCNN, tiny_teacher

    teacher = tiny_teacher(bn=True, n_train=600, epochs=1)
    cfg = PRESETS.get("dfq")()
    cfg.batch_size = 16
    cfg.kd_steps = 1
    engine = Engine(teacher, cfg, student=TinyCNN(width=8), device="cpu", seed=0)
    return teacher, engine


def test_abd_hooks_run_on_the_engine():
    teacher, engine = _tiny_engine()
    for mode, trigger in (("hyper", "additive"), ("plain", "additive"), ("hyper", "nc"), ("plain", "nc"),
                          ("plain", "mask"), ("plain", "both"), ("plain", "sweep")):
        hooks = DEFENSES.get("abd")(teacher, engine, mode=mode, check_batches=2, sr_start=0.0, delta_samples=8,
                                    warmup=0, search_every=2,
                                    trigger="nc" if trigger == "both" else trigger,
                                    search_model="both" if trigger == "both" else "teacher",
                                    anchor="teacher" if trigger in ("nc", "both") else "student")
        sv, sr = hooks
        assert isinstance(sv, ShufflingVaccine) and isinstance(sr, SelfRetrospection)
        search = 128 * 73 if trigger == "sweep" else 0  # the sweep's one-off search: 73 stamps x 128 pictures
        engine.run(budget_passes=engine.passes + 300 + search, hooks=hooks, progress=False)
        assert sv.decided and len(sv.tail_ratios) >= 1 and sv.note
        assert sr.steps >= 2 and sr.delta is not None and sr.delta.abs().sum() > 0
        assert trigger != "sweep" or "sends" in sr.note
    assert ABDConfig().coef == 0.1
    paper = DEFENSES.get("abd")(teacher, engine, variant="paper", delta_steps=2)[1].cfg
    assert (paper.mode, paper.trigger, paper.sr_start, paper.delta_steps) == ("hyper", "additive", 0.8, 2)
    with pytest.raises(UsageError):
        DEFENSES.get("abd")(teacher, engine, variant="nonsense")


class _Functional(nn.Module):
    """A graph-module-like net: convolutions called functionally (as our ONNX interpreter does)."""

    def __init__(self):
        super().__init__()
        self.w = nn.ParameterList([nn.Parameter(torch.randn(4, 1, 3, 3)), nn.Parameter(torch.randn(6, 4, 3, 3)),
                                   nn.Parameter(torch.randn(3, 6))])

    def forward(self, x):
        h = torch.relu(torch.nn.functional.conv2d(x, self.w[0], padding=1))
        return torch.nn.functional.conv2d(h, self.w[1], padding=1).mean((2, 3)) @ self.w[2].T


def test_suspect_on_functional_graph_module():
    from teacher_audit.probes.shuffle import shuffle_candidates

    net = _Functional()
    x = torch.rand(3, 1, 8, 8)
    assert shuffle_candidates(net, x) == (["w.0", "w.1"], "functional")
    sus = build_suspect(net, x, n_layers=1, generator=torch.Generator().manual_seed(0))
    h = torch.relu(torch.nn.functional.conv2d(x, net.w[0], padding=1))
    ref = torch.nn.functional.conv2d(h[:, sus.perms[0]], net.w[1], padding=1).mean((2, 3)) @ net.w[2].T
    with torch.no_grad():
        assert torch.allclose(sus.model(x), ref, atol=1e-5)
    assert torch.equal(sus.model.w[2], net.w[2]) and torch.equal(sus.model.w[0], net.w[0])


def test_class_triggers_find_the_backdoor_target_smaller_than_on_the_clean_twin():
    from teacher_audit.defenses.sr_triggers import ClassTriggers
    from teacher_audit.synth import PRESETS, Engine
    from teacher_audit.zoo.tiny import train_tiny

    target = 3
    bd, clean = train_tiny("backdoor", trigger={"name": "badnets_square", "size": 6}, target=target, steps=200,
                           poison_ratio=0.3, return_clean=True)
    norms = []
    for teacher in (bd, clean):
        x = Engine(teacher, PRESETS.get("dfq")(), device="cpu", seed=0).synthesize(80, steps=20)
        lo, hi = teacher.spec.value_range
        trig = ClassTriggers(tuple(x.shape[1:]), float(lo), float(hi), 0, num_classes=10, per_target=8)
        for _ in range(20):
            trig.search(teacher.model, x, 3, 0.1)
        norms.append(trig.norms())
        assert trig.assign is not None and trig.assign.shape[0] == x.shape[0]
        with torch.no_grad():
            labels = teacher.model(x).argmax(1)
        assert not bool((trig.assign == labels).any())  # a sample never gets its own class's trigger
    nb, nc = norms
    assert nb[target] < 0.75 * nc[target]
    assert nb[target] <= sorted(nb.tolist())[len(nb) // 2]


def test_sweep_trigger_finds_a_patch_backdoor_without_gradients():
    """The procedural patch sweep names the tiny BadNets teacher's target, and sends more pictures there than
    the clean twin's best patch does into any class; a second search costs nothing."""
    from teacher_audit.defenses.sr_triggers import SweepTrigger
    from teacher_audit.synth.procedural import spec_moments
    from teacher_audit.zoo.tiny import train_tiny

    target = 3
    bd, clean = train_tiny("backdoor", trigger={"name": "badnets_square", "size": 6}, target=target, steps=200,
                           poison_ratio=0.3, return_clean=True)
    found = []
    for teacher in (bd, clean):
        lo, hi = (float(v) for v in teacher.spec.value_range)
        trig = SweepTrigger(teacher.spec.shape, lo, hi, 0, moments=spec_moments(teacher.spec))
        x = torch.rand(4, *teacher.spec.shape)
        assert trig.search(teacher.model, x, 1, 0.1) == 128 * 73
        assert trig.search(teacher.model, x, 1, 0.1) == 0
        mask, _ = trig.parts(trig.theta)
        assert set(torch.unique(mask.round()).tolist()) == {0.0, 1.0}
        found.append((trig.found_class, trig.last_flip))
    assert found[0][0] == target and found[0][1] > found[1][1]


@pytest.mark.parametrize("name", ["additive", "mask", "nc", "sweep"])
def test_trigger_search_moves_only_the_trigger(name):
    from teacher_audit.defenses.sr_triggers import SR_TRIGGERS
    from teacher_audit.synth.tiny import TinyCNN

    torch.manual_seed(0)
    model = TinyCNN(width=8).eval()   # SR searches the student in eval mode (BN statistics untouched)
    x = torch.rand(16, 1, 28, 28)
    extra = {"num_classes": 10} if name == "nc" else {}
    trig = SR_TRIGGERS.get(name)((1, 28, 28), 0.0, 1.0, 0, **extra)
    before = trig.theta.clone()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    passes = trig.search(model, x, 3, 0.1)
    assert passes >= 16 and not torch.equal(before, trig.theta)
    assert all(p.grad is None for p in model.parameters())   # safe to search on the student mid-step
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    stamped = trig.apply(x, trig.theta)
    assert stamped.shape == x.shape and float(stamped.min()) >= 0.0 and float(stamped.max()) <= 1.0


def test_self_retrospection_starts_at_its_share_of_the_running_budget():
    teacher, engine = _tiny_engine()
    sv, sr = DEFENSES.get("abd")(teacher, engine, sv=False, sr_start=0.5, warmup=0, search_every=1, delta_samples=8)
    seen = []

    class Watch(SelfRetrospection):
        def student_loss(self, ctx):
            seen.append((ctx.engine.budget_share, sr._started(ctx)))
            return None

    engine.run(budget_passes=16 * 40, hooks=[sv, Watch(sr.cfg)], progress=False)  # no budget_passes option given
    assert seen and all(started == (share >= 0.5) for share, started in seen)
    assert any(started for _, started in seen) and not all(started for _, started in seen)
