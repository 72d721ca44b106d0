"""ARM and DisARM for Bernoulli variables."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Independent

from discograd.diagnostics import exact_gradient, gradient_draws
from discograd.estimators import ARM, DisARM
from estimator_helpers import D64, assert_var_less, draws, exact, problem

from conftest import Z_TOL, assert_mean_matches


@pytest.mark.parametrize("est", [ARM(), DisARM()], ids=lambda e: type(e).__name__)
def test_unbiased_with_decoder_and_log_q(est):
    theta, w = problem("bernoulli", B=3, D=4, seed=21)
    g, out = draws(est, "bernoulli", theta, w, 12000, seed=22)
    assert torch.isfinite(g).all()
    assert_mean_matches(g, exact("bernoulli", theta, w))
    assert out.n_evals.shape == (12000, 3) and set(out.n_evals.unique().tolist()) == {1, 2}
    torch.testing.assert_close(out.loss.detach(), out.value)


def test_one_variable_closed_forms():
    # f(0) = 1, f(1) = 3, p = σ(0.8): every draw is one of a few known values.
    theta = torch.tensor([0.8], dtype=D64, requires_grad=True)
    q = Bernoulli(logits=theta)
    f = lambda b: 1 + 2 * b  # noqa: E731
    p = torch.sigmoid(theta.detach())
    n = 20000
    g_arm, _ = gradient_draws(ARM(), f, q, theta, n, generator=torch.Generator().manual_seed(23))
    g_dis, _ = gradient_draws(DisARM(), f, q, theta, n, generator=torch.Generator().manual_seed(24))
    truth = 2 * p * (1 - p)
    assert_mean_matches(g_arm, truth)
    assert_mean_matches(g_dis, truth)
    # DisARM: 0 when b = b̃, else ½ (f(b) - f(b̃)) (-1)^b̃ σ(|θ|) = σ(|θ|) either way.
    values = g_dis.unique()
    torch.testing.assert_close(
        values, torch.tensor([0.0, float(torch.sigmoid(theta.detach().abs()))], dtype=D64)
    )
    # P(b ≠ b̃) = 2 min(p, 1 - p).
    frac = float((g_dis != 0).double().mean())
    q_min = float(torch.minimum(p, 1 - p))
    assert abs(frac - 2 * q_min) < Z_TOL * math.sqrt(2 * q_min * (1 - 2 * q_min) / n)
    # ARM: (f(b1) - f(b2)) (u - 1/2) is nonzero only outside [1-p, p].
    nz = g_arm[g_arm != 0]
    assert (nz > 0).all() and float(nz.max()) <= 2 * 0.5 + 1e-12


def test_disarm_below_arm():
    theta, w = problem("bernoulli", B=1, D=6, seed=25)
    theta = theta.detach().clone().requires_grad_()
    f = lambda b: torch.sin(2 * (b * w.detach()).sum(-1)) + (b * w.detach()).sum(-1) ** 2  # noqa: E731
    q = Independent(Bernoulli(logits=theta), 1)
    (g_star,) = exact_gradient(f, q, theta)
    g = {}
    for est in [ARM(), DisARM()]:
        g[type(est).__name__] = gradient_draws(
            est, f, q, theta, 20000, generator=torch.Generator().manual_seed(26)
        )[0]
        assert_mean_matches(g[type(est).__name__], g_star)
    # Same uniforms: DisARM is ARM conditioned on the pair of samples.
    assert_var_less(g["DisARM"], g["ARM"], paired=True)


def test_coincident_samples_cost_one_evaluation_and_zero_gradient():
    # Logits ±30: both antithetic samples agree (b = 1[θ > 0]) almost surely.
    theta = torch.tensor([[30.0, -30.0, 30.0], [0.0, 0.0, 0.0]], dtype=D64, requires_grad=True)
    calls = []

    def f(b):
        calls.append(b.shape[0])
        return (b * torch.tensor([1.0, 2.0, 3.0], dtype=D64)).sum(-1) ** 2

    for est in [ARM(), DisARM()]:
        theta.grad = None
        calls.clear()
        out = est(
            f, Independent(Bernoulli(logits=theta), 1), generator=torch.Generator().manual_seed(27)
        )
        out.loss.sum().backward()
        assert out.n_evals.tolist() == [1, 2] and calls == [2]
        assert (theta.grad[0] == 0).all() and out.value[0] == 16.0
        calls.clear()
        out = est(f, Independent(Bernoulli(logits=theta[:1]), 1))
        # Every data point coincides: one evaluation, n_evals a number (the contract).
        assert calls == [1] and out.n_evals == 1 and out.mean_evals == 1.0


def test_infinite_logits_give_no_nan():
    theta = torch.tensor([[-math.inf, 0.3, math.inf]], dtype=D64, requires_grad=True)
    for est in [ARM(), DisARM()]:
        theta.grad = None
        out = est(
            lambda b: (b * torch.arange(3.0, dtype=D64)).sum(-1) ** 2,
            Independent(Bernoulli(logits=theta), 1),
        )
        out.loss.sum().backward()
        assert torch.isfinite(out.loss).all() and torch.isfinite(theta.grad).all()
        assert theta.grad[0, 0] == 0 and theta.grad[0, 2] == 0


def test_supported_distributions():
    theta = torch.zeros(2, 3, requires_grad=True)
    for est in [ARM(), DisARM()]:
        with pytest.raises(TypeError, match=rf"{type(est).__name__} does not support Categorical"):
            est(lambda z: z.sum(-1), Categorical(logits=theta))
        assert est.unbiased and est.supports == frozenset({"bernoulli"})
        out = est(lambda b: b, Bernoulli(logits=theta[0]))  # plain Bernoulli: batch (3,)
        assert out.loss.shape == (3,)
        n = out.n_evals  # a number when every data point costs the same, else per data point
        assert n in (1.0, 2.0) if not isinstance(n, torch.Tensor) else n.shape == (3,)
