"""EMA and Learned baselines; temperature schedules and the estimators' step counter."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, Categorical, Independent

from discograd.baselines import EMA, Learned
from discograd.diagnostics import exact_gradient, gradient_draws
from discograd.estimators import (
    REINFORCE,
    Exact,
    GumbelRao,
    GumbelSoftmax,
    Latent,
    STGumbelSoftmax,
)
from discograd.schedules import Constant, ExponentialDecay, as_schedule

from conftest import assert_mean_matches

D64 = torch.float64


def _categorical(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(2, 3, 4, dtype=D64, generator=gen).requires_grad_()
    W = torch.randn(3, 4, dtype=D64, generator=gen)
    return theta, Independent(Categorical(logits=theta), 1), W


def _cost(W, offset: float):
    return lambda z: offset + torch.sin(2 * (z * W).sum((-1, -2))) + (z * W).sum((-1, -2)) ** 2


# ------------------------------------------------------------------------- EMA
def test_ema_first_call_is_plain_reinforce():
    theta, q, W = _categorical()
    f = _cost(W, 20.0)
    a = REINFORCE(EMA(0.9), 2)(f, q, generator=torch.Generator().manual_seed(1))
    b = REINFORCE(None, 2)(f, q, generator=torch.Generator().manual_seed(1))
    (ga,) = torch.autograd.grad(a.loss.sum(), theta, retain_graph=True)
    (gb,) = torch.autograd.grad(b.loss.sum(), theta, retain_graph=True)
    torch.testing.assert_close(ga, gb)
    assert a.cv_loss is None


def test_ema_uses_past_costs_only_and_is_bias_corrected():
    # One Bernoulli variable, constant costs: the score weight is visible exactly.
    alpha = torch.tensor([0.3], dtype=D64, requires_grad=True)
    q = Bernoulli(logits=alpha)
    p = torch.sigmoid(alpha.detach())
    ema = EMA(0.9)
    est = REINFORCE(ema)
    assert ema.value == 0.0
    est(lambda b: 5.0 + 0 * b, q)
    assert ema.value == pytest.approx(5.0)  # bias-corrected: the first mean exactly
    seen = []

    def seven(b):
        seen.append(b.detach())
        return 7.0 + 0 * b

    out = est(seven, q)
    (g,) = torch.autograd.grad(out.loss.sum(), alpha)
    # The baseline of this call is 5 (past costs only), not a mix with the current 7.
    torch.testing.assert_close(g, (7.0 - 5.0) * (seen[0][0] - p))  # seen: S=1 + batch
    m = 0.9 * 0.5 + 0.1 * 7.0  # raw average after two calls
    assert ema.value == pytest.approx(m / (1 - 0.9**2))


def test_ema_lowers_variance_after_warm_up_and_stays_unbiased():
    theta, q, W = _categorical()
    f = _cost(W, 20.0)  # a large mean cost
    est = REINFORCE(EMA(0.9))
    gen = torch.Generator().manual_seed(2)
    for _ in range(30):  # warm-up
        est(f, q, generator=gen)
    (exact,) = exact_gradient(f, q, theta)
    with_b, _ = gradient_draws(est, f, q, theta, 6000, generator=torch.Generator().manual_seed(3))
    without, _ = gradient_draws(
        REINFORCE(), f, q, theta, 6000, generator=torch.Generator().manual_seed(4)
    )
    assert_mean_matches(with_b, exact)
    assert float(with_b.var(0).sum()) < 0.1 * float(without.var(0).sum())


def test_ema_state_dict_eval_mode_and_arguments():
    _, q, W = _categorical()
    f = _cost(W, 3.0)
    est = REINFORCE(EMA(0.5))
    for _ in range(3):
        est(f, q)
    clone = REINFORCE(EMA(0.5))
    clone.load_state_dict(est.state_dict())
    assert clone.baseline.value == est.baseline.value != 0.0
    assert int(clone.baseline.count) == 3
    est.eval()
    before = est.baseline.value
    est(f, q)
    assert est.baseline.value == before  # frozen in eval mode
    est.train()
    est(_cost(W, 100.0), q)
    assert est.baseline.value > before
    for bad in (1.0, -0.1, 2, True, "0.9"):
        with pytest.raises(ValueError, match="decay"):
            EMA(bad)


# --------------------------------------------------------------------- Learned
def _module(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(width, 16), nn.Tanh(), nn.Linear(16, 1)).double()


def test_learned_gets_gradient_only_from_cv_loss():
    theta, q, W = _categorical()
    est = REINFORCE(Learned(_module(12)), 2)
    out = est(_cost(W, 5.0), q)
    out.loss.sum().backward(retain_graph=True)
    assert all(p.grad is None for p in est.parameters())
    assert theta.grad is not None
    theta.grad = None
    out.cv_loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in est.parameters())
    assert theta.grad is None  # the baseline's input is detached
    assert out.cv_loss.dim() == 0


def test_learned_baseline_learns_the_mean_cost_and_cuts_variance():
    # Two data points whose mean costs differ by ~10: an input-dependent baseline
    # learns each one's mean (a scalar EMA cannot), and removes most of the variance.
    theta, q, W = _categorical(seed=1)
    offset = torch.tensor([5.0, 15.0], dtype=D64)  # per data point

    def f(z):
        return offset + torch.sin(2 * (z * W).sum((-1, -2))) + (z * W).sum((-1, -2)) ** 2

    est = REINFORCE(Learned(_module(12)), 4)
    opt = torch.optim.Adam(est.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(5)
    for _ in range(300):
        opt.zero_grad()
        est(f, q, generator=gen).cv_loss.backward()
        opt.step()
    mean_cost = Exact()(f, q).value  # about [5.8, 15.5]
    b = est.baseline.predict(Latent.parse(q)).detach()
    assert (b - mean_cost).abs().max() < 0.5
    (exact,) = exact_gradient(f, q, theta)
    learned, _ = gradient_draws(est, f, q, theta, 4000, generator=torch.Generator().manual_seed(6))
    plain, _ = gradient_draws(
        REINFORCE(n_samples=4), f, q, theta, 4000, generator=torch.Generator().manual_seed(7)
    )
    ema = REINFORCE(EMA(0.9), 4)
    for _ in range(30):
        ema(f, q, generator=gen)
    scalar, _ = gradient_draws(ema, f, q, theta, 4000, generator=torch.Generator().manual_seed(8))
    assert_mean_matches(learned, exact)
    var = float(learned.var(0).sum())
    # Seen: learned / plain ~ 0.017, EMA / plain ~ 0.22.
    assert var < 0.1 * float(plain.var(0).sum()) and var < 0.5 * float(scalar.var(0).sum())


def test_learned_features_and_validation():
    theta = torch.tensor([[0.0, -torch.inf, 1.0]], dtype=D64)
    lat = Latent.parse(Independent(Categorical(logits=theta.expand(2, 3)), 1))
    base = Learned(nn.Linear(6, 1).double())
    x = base.features(lat)
    assert x.shape == (6,) and torch.isfinite(x).all() and x[1] == Learned.MASKED_INPUT
    lat_b = Latent.parse(Independent(Bernoulli(logits=torch.zeros(5, 4)), 1))
    assert Learned(nn.Linear(4, 1)).features(lat_b).shape == (5, 4)
    assert Learned(nn.Linear(4, 1)).predict(lat_b).shape == (5,)
    with pytest.raises(ValueError, match="shape"):
        Learned(nn.Linear(4, 3)).predict(lat_b)
    with pytest.raises(ValueError, match="module"):
        Learned(lambda x: x)


# ------------------------------------------------------------------- schedules
def test_constant_and_exponential_decay_values():
    assert Constant(0.7)(0) == Constant(0.7)(10**9) == 0.7 and Constant(0.7).minimum == 0.7
    s = ExponentialDecay(tau0=1.0, rate=1e-4, floor=0.5, every=1000)
    assert s(0) == s(999) == 1.0
    assert s(1000) == pytest.approx(math.exp(-0.1)) and s(1999) == s(1000)
    assert s(5000) == pytest.approx(math.exp(-0.5))
    assert (
        s(6000) == pytest.approx(math.exp(-0.6)) and s(7000) == 0.5 == s(10**7) and s.minimum == 0.5
    )
    assert ExponentialDecay(tau0=0.3, rate=0.0, floor=0.5).minimum == 0.5
    assert ExponentialDecay(tau0=2.0, rate=0.0, floor=0.5)(10**6) == 2.0
    assert as_schedule(0.4)(3) == 0.4 and as_schedule(s) is s


def test_schedule_validation():
    for kwargs, name in [
        ({"tau0": 0.0}, "tau0"),
        ({"rate": -1.0}, "rate"),
        ({"floor": math.nan}, "floor"),
        ({"every": 0}, "every"),
        ({"every": 2.5}, "every"),
    ]:
        with pytest.raises(ValueError, match=name):
            ExponentialDecay(**kwargs)
    for bad in (0.0, -1.0, math.inf, "1", None):
        with pytest.raises(ValueError, match="tau"):
            Constant(bad)


def _relaxed_input(est, q, seed):
    seen = []

    def f(z):
        seen.append(z.detach())
        return z.sum((-1, -2))

    est(f, q, generator=torch.Generator().manual_seed(seed))
    return seen[0]


def test_estimator_steps_its_schedule_in_training_mode_only():
    _, q, _ = _categorical()
    sched = ExponentialDecay(tau0=2.0, rate=0.5, floor=0.4, every=2)
    est = GumbelSoftmax(sched)
    taus = []
    for step in range(7):
        assert est.step_count == step and est.tau == sched(step)
        got = _relaxed_input(est, q, seed=step)
        want = _relaxed_input(GumbelSoftmax(sched(step)), q, seed=step)
        torch.testing.assert_close(got, want)
        taus.append(sched(step))
    assert taus[0] == taus[1] == 2.0 and taus[2] < taus[1] and taus[-1] == 0.4
    est.eval()
    for _ in range(3):
        _relaxed_input(est, q, seed=0)
    assert est.step_count == 7  # frozen in eval mode
    est.train()
    _relaxed_input(est, q, seed=0)
    assert est.step_count == 8


def test_step_counter_is_checkpointed():
    _, q, _ = _categorical()
    sched = ExponentialDecay(tau0=1.0, rate=0.3, floor=0.2, every=1)
    est = GumbelRao(sched, 3)
    for _ in range(5):
        _relaxed_input(est, q, seed=0)
    state = est.state_dict()
    resumed = GumbelRao(sched, 3)
    resumed.load_state_dict(state)
    assert resumed.step_count == 5 and resumed.tau == est.tau == sched(5)
    torch.testing.assert_close(_relaxed_input(resumed, q, 9), _relaxed_input(est, q, 9))
    resumed.step_count = 0
    assert resumed.tau == 1.0
    with pytest.raises(ValueError, match="step_count"):
        resumed.step_count = -1


def test_schedule_is_used_by_straight_through_gumbel_softmax_backward():
    # ST-GS: the forward is the same at any tau, the backward scales with the schedule.
    theta, q, W = _categorical()
    f = _cost(W, 0.0)
    sched = ExponentialDecay(tau0=1.0, rate=1.0, floor=0.1, every=1)
    est = STGumbelSoftmax(sched)
    est(f, q)  # step 0 -> 1
    out = est(f, q, generator=torch.Generator().manual_seed(3))
    ref = STGumbelSoftmax(sched(1))(f, q, generator=torch.Generator().manual_seed(3))
    (g1,) = torch.autograd.grad(out.loss.sum(), theta, retain_graph=True)
    (g2,) = torch.autograd.grad(ref.loss.sum(), theta, retain_graph=True)
    torch.testing.assert_close(g1, g2)
