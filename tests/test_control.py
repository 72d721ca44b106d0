"""REBAR and RELAX: unbiasedness, the cv_loss contract, and variance reduction by training."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, Categorical, Independent, Normal

from discograd.diagnostics import exact_gradient, gradient_draws
from discograd.estimators import REBAR, RELAX, MLPControlVariate
from estimator_helpers import D64, assert_var_less, cost, dist, draws, exact, problem

from conftest import assert_mean_matches


class Quadratic(nn.Module):
    """A user control variate: a quadratic form of the flattened relaxed sample."""

    def __init__(self, n_event: int, size: int):
        super().__init__()
        self.n_event = n_event
        self.A = nn.Parameter(
            0.3 * torch.randn(size, size, dtype=D64, generator=torch.Generator().manual_seed(0))
        )

    def forward(self, x):
        x = x.flatten(x.dim() - self.n_event)
        return torch.einsum("...i,ij,...j->...", x, self.A, x)


def lazy_ready(est, kind, theta, w):
    """Run once so lazy layers get their shapes."""
    q = dist(kind, theta)
    est(cost(kind, q, w), q)
    return est


CASES = [
    ("categorical", lambda: REBAR().double()),
    ("categorical", lambda: REBAR(eta=0.4, tau=2.0, learn=False).double()),
    ("categorical", "relax"),
    ("categorical", lambda: RELAX(Quadratic(2, 8), relaxed_f=False).double()),
    ("bernoulli", lambda: REBAR().double()),
    ("bernoulli", "relax"),
]


@pytest.mark.parametrize("kind,make", CASES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CASES)])
def test_unbiased_with_decoder_and_log_q(kind, make):
    theta, w = problem(kind, B=3, D=2, C=4, seed=31)
    if make == "relax":
        est = RELAX().double()
        lazy_ready(est, kind, theta, w)
        gen = torch.Generator().manual_seed(2)
        for p in est.control_variate.parameters():
            with torch.no_grad():
                p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    else:
        est = make()
    if isinstance(est, RELAX):
        est.eval()  # the control variate is used as is; no second backward pass
    g, out = draws(est, kind, theta, w, 8000, seed=32)
    assert torch.isfinite(g).all()
    assert_mean_matches(g, exact(kind, theta, w))
    torch.testing.assert_close(out.loss.detach(), out.value)


def test_unbiased_with_masked_categories():
    theta, w = problem("categorical", B=2, D=2, C=4, seed=33)
    with torch.no_grad():
        theta[0, 1, 2] = -math.inf
        theta[1, 0, [0, 3]] = -math.inf
    for est in [REBAR().double(), RELAX().double()]:
        g, out = draws(est, "categorical", theta, w, 8000, seed=34)
        assert torch.isfinite(g).all() and torch.isfinite(out.cv_loss)
        masked = ~torch.isfinite(theta.detach()).reshape(-1)
        assert (g[:, : masked.numel()][:, masked] == 0).all()
        assert_mean_matches(g, exact("categorical", theta, w))


def test_relax_starts_as_rebar():
    theta, w = problem("categorical", seed=35)
    a, _ = draws(REBAR().double(), "categorical", theta, w, 50, seed=36)
    b, _ = draws(RELAX().double(), "categorical", theta, w, 50, seed=36)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kind", ["categorical", "bernoulli"])
@pytest.mark.parametrize("make", [REBAR, RELAX], ids=["REBAR", "RELAX"])
def test_loss_sends_no_gradient_to_the_control_variate(kind, make):
    theta, w = problem(kind, B=4, seed=37)
    est = make().double()
    q = dist(kind, theta)
    out = est(cost(kind, q, w), q)
    out.loss.sum().backward()
    assert theta.grad is not None and w.grad is not None
    assert all(p.grad is None for p in est.parameters())
    # ... and cv_loss sends gradient only to the control variate.
    theta.grad = w.grad = None
    out = est(cost(kind, q, w), q)
    out.cv_loss.backward()
    assert theta.grad is None and w.grad is None
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in est.parameters())
    assert est.eta.grad != 0 and est.log_tau.grad != 0


def assert_grads_match_finite_differences(est, sq, eta, log_tau, eps=1e-5):
    """``est.eta.grad`` and ``est.log_tau.grad`` against central differences of ``sq``
    (cv_loss's value as a function of η and log λ, the same noise)."""
    d_eta = (sq(eta + eps, log_tau) - sq(eta - eps, log_tau)) / (2 * eps)
    d_tau = (sq(eta, log_tau + eps) - sq(eta, log_tau - eps)) / (2 * eps)
    assert float(est.eta.grad) == pytest.approx(d_eta, rel=1e-5, abs=1e-8)
    assert float(est.log_tau.grad) == pytest.approx(d_tau, rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("kind", ["categorical", "bernoulli"])
def test_cv_loss_is_the_mean_squared_gradient_and_its_derivative(kind):
    # f without θ inside: the loss's gradient w.r.t. the raw logits is ĝ itself.
    theta, w = problem(kind, B=5, seed=38)
    w = w.detach()
    dims = (-1, -2) if kind == "categorical" else (-1,)

    def f(z):
        a = (z * w).sum(dims)
        return torch.sin(2 * a) + a**2

    est = REBAR().double()
    with torch.no_grad():
        est.eta.fill_(0.7)
        est.log_tau.fill_(math.log(0.8))
    q = dist(kind, theta)
    out = est(f, q, generator=torch.Generator().manual_seed(39))
    (g,) = torch.autograd.grad(out.loss.sum(), theta)
    torch.testing.assert_close(out.cv_loss.detach(), g.pow(2).flatten(1).sum(1).mean())
    out.cv_loss.backward()

    def sq(eta, log_tau):  # same noise, other η / log λ
        other = REBAR().double()
        with torch.no_grad():  # set in float64 (the constructor's float32 would round eps)
            other.eta.fill_(eta)
            other.log_tau.fill_(log_tau)
        o = other(f, dist(kind, theta), generator=torch.Generator().manual_seed(39))
        return float(o.cv_loss.detach())

    assert_grads_match_finite_differences(est, sq, 0.7, math.log(0.8))


# --------------------------------------------------------- learning the cv
def bernoulli_toy():
    theta = torch.tensor([[0.3, -1.0, 2.0, 0.0]], dtype=D64, requires_grad=True)
    t = torch.tensor([0.45, 0.2, 0.8, 0.5], dtype=D64)
    return (
        theta,
        (lambda b: ((b - t) ** 2).sum(-1)),
        (lambda th: Independent(Bernoulli(logits=th), 1)),
    )


def categorical_toy():
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(1, 3, 5, dtype=D64, generator=gen).requires_grad_()
    w = torch.randn(3, 5, dtype=D64, generator=gen)

    def f(z):
        a = (z * w).sum((-1, -2))
        return torch.sin(2 * a) + a**2

    return theta, f, (lambda th: Independent(Categorical(logits=th), 1))


@pytest.mark.parametrize(
    "toy,make",
    [
        (bernoulli_toy, lambda: REBAR()),
        (bernoulli_toy, lambda: RELAX()),
        (categorical_toy, lambda: REBAR(eta=0.0, tau=2.0)),
        (categorical_toy, lambda: RELAX()),
    ],
    ids=["bernoulli-REBAR", "bernoulli-RELAX", "categorical-REBAR", "categorical-RELAX"],
)
def test_variance_falls_with_control_variate_training(toy, make):
    theta, f, mk = toy()
    est = make().double()
    replicas = theta.detach().expand((32,) + theta.shape[1:])
    gen = torch.Generator().manual_seed(40)
    est(f, mk(replicas), generator=gen)  # sizes lazy layers before the optimiser sees them

    def draws_now():
        est.eval()
        g, _ = gradient_draws(
            est, f, mk(theta), theta, 4000, generator=torch.Generator().manual_seed(41)
        )
        est.train()
        return g

    (g_star,) = exact_gradient(f, mk(theta), theta)
    before = draws_now()
    opt = torch.optim.Adam(est.parameters(), lr=0.05)
    for _ in range(150):
        out = est(f, mk(replicas), generator=gen)
        opt.zero_grad()
        out.cv_loss.backward()
        opt.step()
    after = draws_now()
    assert_mean_matches(after, g_star)
    # Same noise before and after (same seed): a paired comparison.
    assert_var_less(after, before, paired=True)


def test_modes_and_no_grad():
    theta, w = problem("bernoulli", seed=42)
    w = w.detach()
    q = dist("bernoulli", theta)
    f = lambda b: (b * w).sum(-1) ** 2  # noqa: E731
    fixed = REBAR(learn=False)
    assert list(fixed.parameters()) == [] and fixed(f, q).cv_loss is None
    est = RELAX()
    assert est.eval()(f, q).cv_loss is None
    est.train()
    with torch.no_grad():
        out = est(f, q)
    assert not out.loss.requires_grad and out.cv_loss is None and out.n_evals == 3
    assert RELAX(relaxed_f=False)(f, q).n_evals == 1
    # Logits that need no gradient: the control variate still trains.
    out = RELAX()(f, dist("bernoulli", theta.detach()))
    assert out.cv_loss is not None and out.cv_loss.requires_grad and not out.loss.requires_grad
    assert "learn=True" in repr(REBAR()) and "relaxed_f=False" in repr(RELAX(relaxed_f=False))


def test_arguments():
    for kwargs, match in [
        ({"eta": math.nan}, "eta"),
        ({"tau": 0.0}, "tau=0.0"),
        ({"tau": -1}, "tau"),
        ({"learn": 1}, "learn=1"),
        ({"variance_of": "params"}, "variance_of='params'"),
    ]:
        with pytest.raises(ValueError, match=match):
            REBAR(**kwargs)
    for kwargs, match in [
        ({"control_variate": lambda x: x}, "control_variate"),
        ({"hidden": 0}, "hidden=0"),
        ({"relaxed_f": "yes"}, "relaxed_f"),
        ({"tau": math.inf}, "tau"),
        ({"variance_of": None}, "variance_of=None"),
    ]:
        with pytest.raises(ValueError, match=match):
            RELAX(**kwargs)
    theta = torch.zeros(2, 3, requires_grad=True)
    bad = RELAX(nn.Identity())
    with pytest.raises(ValueError, match="control_variate returned"):
        bad(lambda z: z.sum(-1), Categorical(logits=theta))
    with pytest.raises(TypeError, match="REBAR does not support Normal"):
        REBAR()(lambda z: z, Normal(theta, 1.0))
    assert isinstance(RELAX().control_variate, MLPControlVariate)
    assert REBAR.unbiased and RELAX.unbiased


# ------------------------------------------- variance of the upstream parameters
def encoded(kind: str, B: int = 4, seed: int = 50):
    """Logits from a linear encoder of inputs x: the leaves upstream are W and b."""
    gen = torch.Generator().manual_seed(seed)
    out = (3, 4) if kind == "categorical" else (3,)
    x = torch.randn(B, 5, dtype=D64, generator=gen)
    W = (0.7 * torch.randn(5, math.prod(out), dtype=D64, generator=gen)).requires_grad_()
    b = (0.3 * torch.randn(math.prod(out), dtype=D64, generator=gen)).requires_grad_()
    w = torch.randn(out, dtype=D64, generator=gen)
    dims = (-1, -2) if kind == "categorical" else (-1,)

    def logits():
        return (x @ W + b).reshape((B,) + out)

    def f(z):  # no θ inside: the loss's gradient w.r.t. (W, b) is J^T ĝ itself
        a = (z * w).sum(dims)
        return torch.sin(2 * a) + a**2

    return logits, f, (W, b)


@pytest.mark.parametrize("kind", ["categorical", "bernoulli"])
def test_upstream_cv_loss_is_the_squared_encoder_gradient_and_its_derivative(kind):
    logits, f, params = encoded(kind)

    def run(eta, log_tau):
        est = REBAR(variance_of="upstream").double()
        with torch.no_grad():
            est.eta.fill_(eta)
            est.log_tau.fill_(log_tau)
        out = est(f, dist(kind, logits()), generator=torch.Generator().manual_seed(51))
        return est, out

    est, out = run(0.7, math.log(0.8))
    # The value: the squared norm of the gradient the loss sends to W and b.
    gW, gb = torch.autograd.grad(out.loss.sum(), params, retain_graph=True)
    torch.testing.assert_close(out.cv_loss.detach(), gW.pow(2).sum() + gb.pow(2).sum())
    out.cv_loss.backward()
    assert all(p.grad is None for p in params)  # cv_loss reaches only η and λ

    def sq(eta, log_tau):
        return float(run(eta, log_tau)[1].cv_loss.detach())

    assert_grads_match_finite_differences(est, sq, 0.7, math.log(0.8))


def test_upstream_differs_from_logits_and_falls_back_without_upstream_leaves():
    logits, f, params = encoded("bernoulli")

    def cv(variance_of, theta):
        est = REBAR(variance_of=variance_of).double()
        out = est(f, dist("bernoulli", theta), generator=torch.Generator().manual_seed(52))
        return out, float(out.cv_loss.detach())

    out, up = cv("upstream", logits())
    _, per_point = cv("logits", logits())
    assert up != pytest.approx(per_point, rel=1e-3)
    # The encoder's graph is still whole for the training step's backward pass.
    out.loss.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    # Logits that are a leaf: J = I, so the batch's sum of ‖ĝ‖² (the mean × B).
    leaf = logits().detach().requires_grad_()
    _, up_leaf = cv("upstream", leaf)
    _, mean_leaf = cv("logits", leaf)
    assert up_leaf == pytest.approx(4 * mean_leaf, rel=1e-12)


def test_upstream_training_lowers_the_encoder_gradient_variance():
    _, f, (W, b) = encoded("bernoulli", seed=53)
    x = torch.randn(1, 5, dtype=D64, generator=torch.Generator().manual_seed(56))
    est = RELAX(variance_of="upstream").double()

    def replicas(n):  # n copies of the encoder: one backward pass separates the draws
        Wn = W.detach().expand((n,) + W.shape).clone().requires_grad_()
        bn = b.detach().expand((n, 1) + b.shape).clone().requires_grad_()
        return Wn, bn, dist("bernoulli", x @ Wn + bn)

    gen = torch.Generator().manual_seed(54)
    est(f, replicas(32)[2], generator=gen)  # sizes the lazy layer

    def encoder_draws():
        est.eval()
        Wn, bn, q = replicas(4000)
        out = est(f, q, generator=torch.Generator().manual_seed(55))
        gW, gb = torch.autograd.grad(out.loss.sum(), (Wn, bn))
        est.train()
        return torch.cat([gW.flatten(1), gb.flatten(1)], 1)

    before = encoder_draws()
    opt = torch.optim.Adam(est.parameters(), lr=0.05)
    for _ in range(150):
        out = est(f, replicas(32)[2], generator=gen)
        opt.zero_grad()
        out.cv_loss.backward()
        opt.step()
    after = encoder_draws()
    assert_var_less(after, before, paired=True)
