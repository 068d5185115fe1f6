"""PGD, minimal-flip radius, fixed-radius KL and the batch-learned split (teacher_audit.attacks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from teacher_audit.attacks.pgd import kl_at_eps, min_flip_eps, pgd
from teacher_audit.attacks.split import fit_mixture2, robust_split
from teacher_audit.intake.spec import InputSpec
from teacher_audit.teacher import Teacher


@pytest.fixture(scope="module")
def digits_teacher() -> tuple[Teacher, torch.Tensor, torch.Tensor]:
    """A tiny CNN trained for a few seconds on scikit-learn digits, raw range [0, 16]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 64, 10))
    spec = InputSpec(channels=1, height=8, width=8, value_range=(0.0, 16.0), mean=(8.0,), std=(8.0,))
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(3):
        for i in range(0, 1500, 50):
            loss = F.cross_entropy(net((x[i:i + 50] - 8) / 8), y[i:i + 50])
            opt.zero_grad()
            loss.backward()
            opt.step()
    t = Teacher.from_net(net, spec)
    with torch.no_grad():
        assert (t.model(x[1500:]).argmax(1) == y[1500:]).float().mean() > 0.85
    return t, x[1500:1628], y[1500:1628]


def test_pgd_flips_and_respects_eps(digits_teacher):
    t, x, _ = digits_teacher
    g = torch.Generator().manual_seed(0)
    r = pgd(t.model, x, 32 / 255, steps=10, value_range=(0.0, 16.0), generator=g)
    span = 16.0
    assert (r.x_adv - x).abs().amax() <= 32 / 255 * span + 1e-5
    assert r.x_adv.min() >= 0.0 and r.x_adv.max() <= 16.0
    with torch.no_grad():
        clean = t.model(x).argmax(1)
        adv = t.model(r.x_adv).argmax(1)
    assert (adv != clean).float().mean() > 0.5  # a non-robust tiny net: PGD finds adversarial examples
    assert torch.equal(r.flipped | (adv != clean), r.flipped)
    # a radius of zero cannot change anything
    r0 = pgd(t.model, x, 0.0, steps=3, value_range=(0.0, 16.0), generator=g)
    assert torch.equal(r0.x_adv, x) and not r0.flipped.any()
    # random noise of the same radius flips far fewer labels than PGD
    with torch.no_grad():
        noisy = (x + (torch.rand(x.shape, generator=g) * 2 - 1) * 32 / 255 * span).clamp(0, 16)
        rnd = (t.model(noisy).argmax(1) != clean).float().mean()
    assert rnd < (adv != clean).float().mean() - 0.3


def test_pgd_per_sample_eps(digits_teacher):
    t, x, _ = digits_teacher
    eps = torch.linspace(0, 8 / 255, x.shape[0])
    r = pgd(t.model, x, eps, steps=4, value_range=(0.0, 16.0), generator=torch.Generator().manual_seed(1))
    dev = (r.x_adv - x).abs().flatten(1).amax(1)
    assert torch.all(dev <= eps * 16.0 + 1e-5)


def test_min_flip_eps_bisection(digits_teacher):
    t, x, _ = digits_teacher
    g = torch.Generator().manual_seed(2)
    eps, cens, passes = min_flip_eps(t.model, x, eps_max=32 / 255, bisection_steps=4, pgd_steps=5,
                                     value_range=(0.0, 16.0), generator=g)
    assert eps.shape == (x.shape[0],) and passes > x.shape[0]
    assert torch.all(eps <= 32 / 255 + 1e-7) and torch.all(eps >= 0.25 / 255 - 1e-9)
    # the reported radius flips the label again (PGD is stochastic: most, not all)
    ok = ~cens
    r = pgd(t.model, x[ok], eps[ok] * 1.01, steps=5, value_range=(0.0, 16.0), generator=g)
    assert r.flipped.float().mean() > 0.8
    # and a quarter of it mostly does not
    r2 = pgd(t.model, x[ok], eps[ok] / 4, steps=5, value_range=(0.0, 16.0), generator=g)
    assert r2.flipped.float().mean() < 0.3


class _MeanTeacher(nn.Module):
    """Logits (+k, -k) * (mean(x) - 0.5): the smallest L-inf flip radius of x is |mean(x) - 0.5|."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1, keepdim=True) - 0.5
        return torch.cat([50 * m, -50 * m], 1)


def _constructed_batch(n_fragile: int, n_robust: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    base = torch.rand(n_fragile + n_robust, 1, 6, 6, generator=g) * 0.1
    # fragile: |mean - 0.5| log-normal around 0.01 (2.5/255); robust: 0.35 (beyond eps_max 32/255)
    sign = torch.where(torch.rand(n_fragile, generator=g) < 0.5, -1.0, 1.0)
    gap = 10 ** (-2 + 0.2 * torch.randn(n_fragile, generator=g))
    off = torch.cat([0.5 + sign * gap, torch.full((n_robust,), 0.85)])
    return (base - base.flatten(1).mean(1).view(-1, 1, 1, 1) + off.view(-1, 1, 1, 1)).clamp(0, 1)


def test_split_isolates_robust_samples_on_constructed_teacher():
    spec = InputSpec(channels=1, height=6, width=6, mean=(0.0,), std=(1.0,), num_classes=2)
    t = Teacher.from_net(_MeanTeacher(), spec)
    x = _constructed_batch(90, 38)
    eps, cens, _ = min_flip_eps(t.model, x, eps_max=32 / 255, bisection_steps=4, pgd_steps=5)
    truth = torch.arange(128) >= 90
    assert torch.equal(cens, truth)  # robust ones never flip within 32/255
    s = robust_split(torch.log10(eps * 255))
    assert s.bimodal and torch.equal(s.robust, truth)
    # the same with the fixed-radius KL score (higher = more robust is -log KL)
    kl, _ = kl_at_eps(t.model, x, eps=8 / 255, steps=5, generator=torch.Generator().manual_seed(4))
    s2 = robust_split(-torch.log10(kl + 1e-12))
    assert torch.equal(s2.robust, truth)
    # a clean-like batch (one fragile mode only): nothing is called robust -- never a fixed fraction
    xf = _constructed_batch(128, 0)
    eps_f, _, _ = min_flip_eps(t.model, xf, eps_max=32 / 255, bisection_steps=4, pgd_steps=5)
    sf = robust_split(torch.log10(eps_f * 255))
    assert not sf.robust.any() and sf.threshold == float("inf")


def test_mixture_and_split_rules():
    rng = np.random.default_rng(0)
    uni = rng.normal(0, 1, 400)
    assert not robust_split(uni).bimodal
    bi = np.concatenate([rng.normal(0, 0.3, 300), rng.normal(3, 0.3, 100)])
    m = fit_mixture2(bi)
    assert abs(m.mu0) < 0.1 and abs(m.mu1 - 3) < 0.1 and abs(m.w1 - 0.25) < 0.03
    for method in ("gmm", "quantile", "otsu"):
        s = robust_split(bi, method=method)
        assert s.bimodal and abs(s.share - 0.25) < 0.02, method
