"""IndeCateR (De Smet, Sansone & Zuidberg Dos Martires 2023): unbiasedness, the reference
algorithm in mean and variance, draw-by-draw agreement, cost, exactness at D = 1."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical, Independent, OneHotCategorical

from discograd.estimators import Exact, IndeCateR
from multisample_helpers import (
    D64,
    assert_unbiased,
    cost,
    dist,
    draws,
    exact,
    problem,
    same_mean_and_variance,
)

from conftest import Z_TOL, assert_mean_matches


@pytest.mark.parametrize("kind", ["categorical", "bernoulli"])
@pytest.mark.parametrize("n", [1, 3])
def test_unbiased_against_exact(kind, n):
    # nonlinear f using log q and a decoder parameter, D = 3, C = 4, three data
    # points with different logits, masked categories / deterministic variables
    theta, w = problem(kind, B=3, D=3, C=4, seed=11 + n)
    C = 4 if kind == "categorical" else 2
    assert_unbiased(IndeCateR(n), kind, theta, w, 6000, seed=12 + n, n_evals=3 * C * n)


def _reference(kind, theta, w, n_draws, n, gen=None, given=None):
    """The CatLog-derivative estimator written plainly: loops over samples, variables and
    values; each term's weight ∇p_d(k) comes from autograd of p_d(k), not from a formula.

    Returns ``[n_draws, P]`` gradient draws of E[f] w.r.t. (θ, w).
    """
    B, D = theta.shape[:2]
    C = theta.shape[2] if kind == "categorical" else 2
    th = theta.detach().expand((n_draws,) + theta.shape).clone().requires_grad_()
    ww = w.detach().expand((n_draws, 1) + w.shape).clone().requires_grad_()
    f = cost(kind, th, ww)
    if kind == "categorical":
        probs = torch.softmax(th, -1)  # [N, B, D, C]
    else:
        p1 = torch.sigmoid(th)
        probs = torch.stack([1 - p1, p1], -1)
    if given is None:
        flat = probs.detach().reshape(-1, C)
        z = [torch.multinomial(flat, 1, generator=gen).reshape(n_draws, B, D) for _ in range(n)]
    else:
        z = given
    surrogate = 0.0
    pathwise = 0.0
    for s in range(n):
        onehot = torch.nn.functional.one_hot(z[s], C).to(D64)
        x = onehot if kind == "categorical" else z[s].to(D64)
        pathwise = pathwise + f(x) / n
        for d in range(D):
            for k in range(C):
                config = z[s].clone()
                config[..., d] = k
                xk = torch.nn.functional.one_hot(config, C).to(D64)
                xk = xk if kind == "categorical" else config.to(D64)
                weight = probs[..., d, k]  # [N, B]
                # a value of probability 0 contributes nothing (its f may be inf)
                fk = torch.where(weight.detach() > 0, f(xk).detach(), 0.0)
                surrogate = surrogate + fk * weight / n
    g_theta, g_w = torch.autograd.grad((surrogate + pathwise).sum(), (th, ww))
    g_theta = torch.where(torch.isfinite(th), g_theta, 0.0)  # ∞ logits: no gradient
    return torch.cat([g_theta.reshape(n_draws, -1), g_w.reshape(n_draws, -1)], 1)


@pytest.mark.parametrize("kind", ["categorical", "bernoulli"])
def test_matches_the_reference_implementation(kind):
    theta, w = problem(kind, B=3, D=3, C=4, seed=21)
    N, n = 20000, 2
    ref = _reference(kind, theta, w, N, n, gen=torch.Generator().manual_seed(22))
    lib, _ = draws(IndeCateR(n), kind, theta, w, N, seed=23, multi=False)
    z, r_theta, r_w = same_mean_and_variance(lib, ref, Z_TOL, theta.numel())
    print(
        f"\nIndeCateR({n}) {kind} vs reference: max |z| {z:.2f}, "
        f"variance ratios {r_theta:.4f}, {r_w:.4f}"
    )
    assert_mean_matches(ref, exact(kind, theta, w)[0])


@pytest.mark.parametrize("kind", ["categorical", "bernoulli"])
def test_reference_reproduces_the_library_draw_by_draw(kind):
    """Given the samples the library drew (read back from what f saw), the reference's
    gradient is the library's, draw for draw; and no impossible value reached f."""
    theta, w = problem(kind, B=3, D=3, C=4, seed=31)
    N, n = 500, 2
    leaf = theta.expand((N,) + theta.shape).clone().requires_grad_()
    w_leaf = w.expand((N, 1) + w.shape).clone().requires_grad_()
    f = cost(kind, leaf, w_leaf)
    seen = []

    def recording(x):
        seen.append(x.detach())
        return f(x)

    out = IndeCateR(n)(recording, dist(kind, leaf), generator=torch.Generator().manual_seed(32))
    g_theta, g_w = torch.autograd.grad(out.loss.sum(), (leaf, w_leaf))
    g_lib = torch.cat([g_theta.reshape(N, -1), g_w.reshape(N, -1)], 1)
    assert len(seen) == 1
    x = seen[0]  # [n, D, C, N, B, D(, C)]
    assert x.shape[:3] == (n, 3, 4 if kind == "categorical" else 2)
    idx = x.argmax(-1) if kind == "categorical" else x.long()
    if kind == "categorical":
        assert not (x.bool() & torch.isneginf(leaf.detach())).any()
    else:
        th = leaf.detach()
        assert not ((idx == 1) & torch.isneginf(th)).any()
        assert not ((idx == 0) & torch.isposinf(th)).any()
    # sample s: variable 0 as seen where variable 1 was varied, the others where 0 was
    z = [torch.cat([idx[s, 1, 0][..., :1], idx[s, 0, 0][..., 1:]], -1) for s in range(n)]
    g_ref = _reference(kind, theta, w, N, n, given=z)
    torch.testing.assert_close(g_lib, g_ref, rtol=1e-9, atol=1e-10)


def test_one_variable_gives_the_exact_gradient():
    """With D = 1 the inner sum is the whole expectation: every draw is exact (for an f
    that does not use θ itself, whose pathwise term would be a sample)."""
    gen = torch.Generator().manual_seed(41)
    theta = torch.randn(4, 1, 6, dtype=D64, generator=gen)
    theta[0, 0, 2] = -math.inf
    w = torch.randn(6, dtype=D64, generator=gen)

    def f(x):
        return torch.sin(3 * (x * w).sum((-1, -2)))

    leaf = theta.expand(50, *theta.shape).clone().requires_grad_()
    out = IndeCateR(1)(f, dist("categorical", leaf), generator=torch.Generator().manual_seed(42))
    (g,) = torch.autograd.grad(out.loss.sum(), leaf)
    one = theta.clone().requires_grad_()
    (g_star,) = torch.autograd.grad(Exact()(f, dist("categorical", one)).loss.sum(), one)
    torch.testing.assert_close(g, g_star.expand_as(g), rtol=1e-10, atol=1e-12)


def test_onehot_and_plain_categorical_agree():
    theta = torch.randn(2, 3, 5, dtype=D64, generator=torch.Generator().manual_seed(51))
    outs = []
    for q_cls in (Categorical, OneHotCategorical):
        leaf = theta.clone().requires_grad_()
        q = Independent(q_cls(logits=leaf), 1)
        out = IndeCateR(2)(
            lambda x: (x * torch.arange(5.0, dtype=D64)).sum((-1, -2)) ** 2,
            q,
            generator=torch.Generator().manual_seed(52),
        )
        out.loss.sum().backward()
        outs.append(leaf.grad)
        assert out.n_evals == 2 * 3 * 5
    torch.testing.assert_close(outs[0], outs[1])


def test_hyper_parameters():
    for bad in (0, -1, 2.5, True, "2"):
        with pytest.raises(ValueError, match=r"n_samples"):
            IndeCateR(bad)
    assert "n_samples=3" in repr(IndeCateR(3))
