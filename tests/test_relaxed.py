"""The relaxed / straight-through family against closed forms and independent implementations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import integrate
from torch.distributions import (
    Bernoulli,
    Categorical,
    Independent,
    OneHotCategorical,
    RelaxedOneHotCategorical,
)

from discograd.diagnostics import exact_gradient, gradient_draws
from discograd.estimators import (
    Exact,
    GumbelRao,
    GumbelSoftmax,
    ReinMax,
    STGumbelSoftmax,
    StraightThrough,
)
from discograd.schedules import Constant, ExponentialDecay, Schedule

from conftest import Z_TOL, assert_mean_matches

D64 = torch.float64
B, D, C = 2, 3, 4
DB = 4


def _problem(kind: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    if kind == "categorical":
        theta = torch.randn(B, D, C, dtype=D64, generator=gen).requires_grad_()
        W = torch.randn(D, C, dtype=D64, generator=gen)
        return theta, Independent(Categorical(logits=theta), 1), W
    theta = torch.randn(B, DB, dtype=D64, generator=gen).requires_grad_()
    W = torch.randn(DB, dtype=D64, generator=gen)
    return theta, Independent(Bernoulli(logits=theta), 1), W


def _linear(z, W, kind):
    return (z * W).sum((-1, -2)) if kind == "categorical" else (z * W).sum(-1)


def _nonlinear(W, kind):
    return lambda z: torch.sin(2 * _linear(z, W, kind)) + _linear(z, W, kind) ** 2


def _quadratic(W, kind):
    # Quadratic in z with cross terms between variables (and within a variable).
    return lambda z: (_linear(z, W, kind) - 0.3) ** 2 + 0.5 * _linear(z, W.flip(-1), kind)


def assert_same_mean(a: torch.Tensor, b: torch.Tensor, z_tol: float = Z_TOL) -> None:
    """Two-sample z-test, coordinate by coordinate: draws a and b have the same mean."""
    a, b = a.double(), b.double()
    se = (a.var(0) / a.shape[0] + b.var(0) / b.shape[0]).sqrt()
    z = (a.mean(0) - b.mean(0)).abs() / se.clamp_min(1e-300)
    assert float(z.max()) < z_tol, f"max |z| = {float(z.max()):.2f}"


# ----------------------------------------------------------------- straight-through
@pytest.mark.parametrize("kind", ["categorical", "bernoulli"])
def test_straight_through_is_exact_for_linear_f_on_every_draw(kind):
    theta, q, W = _problem(kind)
    f = lambda z: 3.0 * _linear(z, W, kind) - 1.5  # noqa: E731
    (exact,) = exact_gradient(f, q, theta)
    draws, out = gradient_draws(
        StraightThrough(), f, q, theta, 200, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(draws, exact.reshape(1, -1).expand_as(draws))
    assert out.n_evals == 1 and not StraightThrough.unbiased


def test_straight_through_linear_exactness_with_masked_categories_and_a_decoder():
    # Masked categories, and a decoder V inside f: θ-gradient exact per draw,
    # V-gradient (the sample itself) unbiased.
    theta = torch.tensor([[0.3, -torch.inf, 1.0, -0.5], [2.0, 0.1, -torch.inf, 0.0]], dtype=D64)
    theta.requires_grad_()
    V = torch.randn(2, 4, dtype=D64, generator=torch.Generator().manual_seed(1)).requires_grad_()
    q = Independent(OneHotCategorical(logits=theta), 1)
    f = lambda z: (z * V).sum((-1, -2))  # noqa: E731
    exact = exact_gradient(f, q, [theta, V])
    draws, _ = gradient_draws(
        StraightThrough(), f, q, [theta, V], 3000, generator=torch.Generator().manual_seed(2)
    )
    n_theta = theta.numel()
    torch.testing.assert_close(draws[:, :n_theta], exact[0].reshape(1, -1).expand(3000, -1))
    assert_mean_matches(draws[:, n_theta:], exact[1])


def test_straight_through_is_biased_for_nonlinear_f():
    theta, q, W = _problem("categorical")
    f = _quadratic(W, "categorical")
    (exact,) = exact_gradient(f, q, theta)
    draws, _ = gradient_draws(
        StraightThrough(), f, q, theta, 3000, generator=torch.Generator().manual_seed(3)
    )
    with pytest.raises(AssertionError):
        assert_mean_matches(draws, exact)


# --------------------------------------------------------------------- Gumbel-Rao
@pytest.mark.parametrize("tau", [0.5, 1.0])
@pytest.mark.parametrize("kind", ["categorical", "bernoulli"])
def test_gumbel_rao_has_st_gs_mean_and_lower_variance(kind, tau):
    theta, q, W = _problem(kind)
    f = _nonlinear(W, kind)
    n = 6000
    st, _ = gradient_draws(
        STGumbelSoftmax(tau), f, q, theta, n, generator=torch.Generator().manual_seed(4)
    )
    gr, out = gradient_draws(
        GumbelRao(tau, 16), f, q, theta, n, generator=torch.Generator().manual_seed(5)
    )
    assert out.n_evals == 1
    assert_same_mean(gr, st)
    var_st, var_gr = float(st.var(0).sum()), float(gr.var(0).sum())
    # Seen ratios (seeds 0-2): 0.42-0.44 / 0.68-0.70 (categorical, tau 0.5 / 1),
    # 0.57-0.58 / 0.78-0.80 (Bernoulli); the gain shrinks as tau grows (0.9 at tau 2).
    assert var_gr < 0.9 * var_st, (var_gr, var_st)
    # Power of the two-sample test: at this n it separates ST-GS from plain ST.
    plain, _ = gradient_draws(
        StraightThrough(), f, q, theta, n, generator=torch.Generator().manual_seed(6)
    )
    with pytest.raises(AssertionError):
        assert_same_mean(plain, st)


def test_gumbel_rao_with_one_draw_is_distributed_as_st_gs():
    # K = 1: (D, G | D) has the joint law of (D, G): same mean and same variance.
    theta, q, W = _problem("categorical")
    f = _nonlinear(W, "categorical")
    n = 6000
    st, _ = gradient_draws(
        STGumbelSoftmax(1.0), f, q, theta, n, generator=torch.Generator().manual_seed(7)
    )
    gr, _ = gradient_draws(
        GumbelRao(1.0, 1), f, q, theta, n, generator=torch.Generator().manual_seed(8)
    )
    assert_same_mean(gr, st)
    ratio = float(gr.var(0).sum() / st.var(0).sum())
    assert 0.85 < ratio < 1.15


# ------------------------------------------------------------------------ ReinMax
def _reinmax_by_hand(f, theta, tau, kind):
    """E_D[(2 A(π1) − ½ A(π0)) ∇_D f(D)] by enumerating every joint configuration."""
    th = theta.detach()
    if kind == "bernoulli":
        # Two categories per variable with logits (0, α); f sees z = D[..., 1].
        th = torch.stack([torch.zeros_like(th), th], -1)
    pi0 = torch.softmax(th, -1)  # B, V, K
    soft_tau = torch.softmax(th / tau, -1)
    nb, nv, nk = th.shape
    total = torch.zeros_like(th)
    for config in itertools.product(range(nk), repeat=nv):
        onehot = torch.nn.functional.one_hot(torch.tensor(config), nk).to(D64)  # V, K
        x = onehot.expand(nb, nv, nk).clone().requires_grad_()
        fx = f(x if kind == "categorical" else x[..., 1])
        (grad_x,) = torch.autograd.grad(fx.sum(), x)  # ∇_D f, per data point
        prob = (pi0 * onehot).sum(-1).prod(-1)  # B
        pi1 = 0.5 * (onehot + soft_tau)

        def jac(p, g):
            return p * g - p * (p * g).sum(-1, keepdim=True)

        rule = 2 * jac(pi1, grad_x) - 0.5 * jac(pi0, grad_x)
        total += prob[:, None, None] * rule
    return total if kind == "categorical" else total[..., 1]


@pytest.mark.parametrize("tau", [1.0, 2.5])
@pytest.mark.parametrize("kind", ["categorical", "bernoulli"])
def test_reinmax_mean_matches_its_backward_rule_by_hand(kind, tau):
    theta, q, W = _problem(kind, seed=2)

    def f(z):  # far from quadratic, so the rule and the exact gradient differ
        return torch.sin(3 * _linear(z, W, kind)) + 0.3 * _linear(z, W, kind) ** 3

    expected = _reinmax_by_hand(f, theta, tau, kind)
    draws, out = gradient_draws(
        ReinMax(tau), f, q, theta, 6000, generator=torch.Generator().manual_seed(9)
    )
    assert out.n_evals == 1
    assert_mean_matches(draws, expected)
    # Power: the same z-test rejects the exact gradient (the rule is biased here).
    (exact,) = exact_gradient(f, q, theta)
    with pytest.raises(AssertionError):
        assert_mean_matches(draws, exact)


@pytest.mark.parametrize("kind", ["categorical", "bernoulli"])
def test_reinmax_at_tau_1_is_unbiased_for_quadratic_f(kind):
    # Heun's method is the trapezoidal rule: exact for f quadratic in each variable.
    theta, q, W = _problem(kind, seed=3)
    f = _quadratic(W, kind)
    (exact,) = exact_gradient(f, q, theta)
    draws, _ = gradient_draws(
        ReinMax(1.0), f, q, theta, 6000, generator=torch.Generator().manual_seed(10)
    )
    assert_mean_matches(draws, exact)
    # ...which first-order straight-through is not (categorical: the quadratic
    # cross terms within a variable vanish on one-hot vectors, so try it there).
    if kind == "categorical":
        st, _ = gradient_draws(
            StraightThrough(), f, q, theta, 6000, generator=torch.Generator().manual_seed(11)
        )
        with pytest.raises(AssertionError):
            assert_mean_matches(st, exact)


def test_reinmax_refuses_tau_below_one():
    for bad in (0.5, 0.999, ExponentialDecay(tau0=2.0, floor=0.5)):
        with pytest.raises(ValueError, match="tau"):
            ReinMax(bad)
    ReinMax(ExponentialDecay(tau0=3.0, rate=0.1, floor=1.0, every=1))  # fine

    class Dips(Schedule):  # a custom schedule that breaks its promise
        minimum = 1.0

        def __call__(self, step):
            return 2.0 if step == 0 else 0.9

    est = ReinMax(Dips())
    _theta, q, W = _problem("categorical")
    est(_nonlinear(W, "categorical"), q)
    with pytest.raises(ValueError, match=r"tau=0\.9"):
        est(_nonlinear(W, "categorical"), q)


# ----------------------------------------------------------------- Gumbel-Softmax
def test_gumbel_softmax_bernoulli_matches_the_relaxed_objective_by_quadrature():
    # y_d = σ((α_d + L_d)/τ): E[∂f/∂α] by 1-D quadrature for f = (w·y − c)^2.
    tau, c = 0.7, 0.4
    alpha = torch.tensor([[0.4, -1.0]], dtype=D64, requires_grad=True)
    w = torch.tensor([1.5, -0.8], dtype=D64)
    q = Independent(Bernoulli(logits=alpha), 1)
    f = lambda y: ((y * w).sum(-1) - c) ** 2  # noqa: E731

    def moments(a):
        def y(u):
            return 1 / (1 + math.exp(-(a + math.log(u) - math.log1p(-u)) / tau))

        def dy(u):
            v = y(u)
            return v * (1 - v) / tau

        m = [integrate.quad(g, 0, 1, limit=200)[0] for g in (y, dy, lambda u: y(u) * dy(u))]
        return m  # E y, E ∂y/∂α, E y ∂y/∂α

    a0, a1 = (float(a) for a in alpha.detach()[0])
    (ey0, edy0, eydy0), (ey1, edy1, eydy1) = moments(a0), moments(a1)
    w0, w1 = float(w[0]), float(w[1])
    # ∂f/∂α_0 = 2 (w0 y0 + w1 y1 − c) w0 ∂y0/∂α0 with y0, y1 independent.
    g0 = 2 * w0 * (w0 * eydy0 + (w1 * ey1 - c) * edy0)
    g1 = 2 * w1 * (w1 * eydy1 + (w0 * ey0 - c) * edy1)
    expected = torch.tensor([[g0, g1]], dtype=D64)
    draws, _ = gradient_draws(
        GumbelSoftmax(tau), f, q, alpha, 20000, generator=torch.Generator().manual_seed(12)
    )
    assert_mean_matches(draws, expected)


def test_gumbel_softmax_categorical_matches_torch_relaxed_one_hot():
    tau = 0.6
    theta, q, W = _problem("categorical")
    f = _nonlinear(W, "categorical")
    n = 6000
    ours, out = gradient_draws(
        GumbelSoftmax(tau), f, q, theta, n, generator=torch.Generator().manual_seed(13)
    )
    torch.manual_seed(14)  # torch's sampler draws from the global stream
    leaf = theta.detach().expand((n,) + theta.shape).clone().requires_grad_()
    y = RelaxedOneHotCategorical(torch.tensor(tau, dtype=D64), logits=leaf).rsample()
    f(y).sum().backward()
    assert_same_mean(ours, leaf.grad.reshape(n, -1))
    assert out.n_evals == 1 and not GumbelSoftmax.unbiased


def test_gumbel_softmax_value_is_the_relaxed_objective():
    _theta, q, W = _problem("categorical")
    seen = []

    def f(z):
        seen.append(z.detach())
        return _nonlinear(W, "categorical")(z)

    out = GumbelSoftmax(1.0)(f, q, generator=torch.Generator().manual_seed(0))
    y = seen[0]
    assert torch.allclose(y.sum(-1), torch.ones((), dtype=D64))
    assert (y < 1).all() and (y > 0).all()  # relaxed, not one-hot
    torch.testing.assert_close(out.value, _nonlinear(W, "categorical")(y))
    assert out.loss.detach().equal(out.value)


def test_st_gumbel_softmax_matches_torch_hard_gumbel_softmax():
    tau = 0.8
    theta, q, W = _problem("categorical", seed=4)
    f = _nonlinear(W, "categorical")
    n = 6000
    seen = []

    def rec(z):
        seen.append(z.detach())
        return f(z)

    ours, _ = gradient_draws(
        STGumbelSoftmax(tau), rec, q, theta, n, generator=torch.Generator().manual_seed(15)
    )
    z = seen[0]
    assert ((z == 0) | (z == 1)).all() and (z.sum(-1) == 1).all()  # exact one-hot forward
    torch.manual_seed(16)
    leaf = theta.detach().expand((n,) + theta.shape).clone().requires_grad_()
    y = torch.nn.functional.gumbel_softmax(leaf, tau=tau, hard=True)
    f(y).sum().backward()
    assert_same_mean(ours, leaf.grad.reshape(n, -1))


@pytest.mark.parametrize("kind", ["categorical", "bernoulli"])
def test_hard_estimators_report_an_unbiased_value(kind):
    # ST, ST-GS, Gumbel-Rao and ReinMax evaluate f on exact samples.
    _theta, q, W = _problem(kind)
    f = _nonlinear(W, kind)
    exact_value = float(Exact()(f, q).value.sum())  # Σ over data points of E[f]
    for est in (StraightThrough(), STGumbelSoftmax(0.5), GumbelRao(0.5, 4), ReinMax(1.5)):
        q_rep = q.expand(torch.Size([5000]) + q.batch_shape)
        out = est(f, q_rep, generator=torch.Generator().manual_seed(17))
        per_draw = out.value.sum(-1)
        se = float(per_draw.std()) / math.sqrt(5000)
        assert abs(float(per_draw.mean()) - exact_value) < Z_TOL * se


# ------------------------------------------------------------------ numerics, contract
ALL = {
    "gs": lambda tau: GumbelSoftmax(tau),
    "stgs": lambda tau: STGumbelSoftmax(tau),
    "st": lambda tau: StraightThrough(),
    "gr": lambda tau: GumbelRao(tau, 5),
    "reinmax": lambda tau: ReinMax(max(tau, 1.0)),  # ReinMax refuses tau < 1 (tested above)
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("tau", [0.05, 5.0])
@pytest.mark.parametrize("name", list(ALL))
def test_finite_at_extreme_temperatures_large_and_masked_logits(name, tau, dtype):
    gen = torch.Generator().manual_seed(0)
    logits = torch.tensor(
        [[30.0, -torch.inf, -30.0, 0.0], [-torch.inf, 5.0, -torch.inf, -5.0]], dtype=dtype
    )
    logits = logits.expand(8, 2, 4).clone().requires_grad_()
    w = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=dtype)
    f = lambda z: ((z * w).sum(-1) ** 2).sum(-1)  # noqa: E731
    out = ALL[name](tau)(f, Independent(Categorical(logits=logits), 1), generator=gen)
    (g,) = torch.autograd.grad(out.loss.sum(), logits)
    assert torch.isfinite(out.loss).all() and torch.isfinite(g).all()
    assert out.loss.dtype == dtype and g[..., 1, 0].abs().sum() == 0
    alpha = torch.tensor([30.0, -30.0, 0.0, 2.0], dtype=dtype).expand(8, 4).clone()
    alpha.requires_grad_()
    fb = lambda b: ((b - 0.3) ** 2).sum(-1)  # noqa: E731
    out = ALL[name](tau)(fb, Independent(Bernoulli(logits=alpha), 1), generator=gen)
    (g,) = torch.autograd.grad(out.loss.sum(), alpha)
    assert torch.isfinite(out.loss).all() and torch.isfinite(g).all()


@pytest.mark.parametrize("name", list(ALL))
def test_masked_categories_are_never_chosen_and_get_no_gradient(name):
    logits = torch.tensor([0.0, -torch.inf, 1.0, -torch.inf], dtype=D64)
    logits = logits.expand(500, 4).clone().requires_grad_()
    seen = []

    def f(z):
        seen.append(z.detach())
        return (z * torch.arange(4.0, dtype=D64)).sum(-1) ** 2

    out = ALL[name](0.5)(f, OneHotCategorical(logits=logits), generator=torch.Generator())
    (g,) = torch.autograd.grad(out.loss.sum(), logits)
    assert seen[0][:, [1, 3]].abs().sum() == 0 and g[:, [1, 3]].abs().sum() == 0


@pytest.mark.parametrize("name", list(ALL))
def test_contract(name):
    theta = torch.randn(3, 5, dtype=D64, generator=torch.Generator().manual_seed(0))
    theta.requires_grad_()
    f = lambda z: (z * torch.arange(5.0, dtype=D64)).sum(-1) ** 2  # noqa: E731
    fb = lambda b: (b - 0.2) ** 2  # noqa: E731
    for q, fun in (
        (Categorical(logits=theta), f),
        (OneHotCategorical(logits=theta), f),
        (Bernoulli(logits=theta[:, 0]), fb),
    ):
        out = ALL[name](1.5)(fun, q, generator=torch.Generator().manual_seed(1))
        assert out.loss.shape == q.batch_shape == out.value.shape and out.n_evals == 1
        assert out.loss.detach().equal(out.value) and out.cv_loss is None
        a = ALL[name](1.5)(fun, q, generator=torch.Generator().manual_seed(2)).loss
        est = ALL[name](1.5)
        est.generator = torch.Generator().manual_seed(2)
        b = est(fun, q).loss
        (ga,) = torch.autograd.grad(a.sum(), theta, retain_graph=True)
        (gb,) = torch.autograd.grad(b.sum(), theta, retain_graph=True)
        torch.testing.assert_close(ga, gb)


def test_devices():
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        theta = torch.zeros(2, 3, 4, device=dev, requires_grad=True)
        alpha = torch.zeros(2, 3, device=dev, requires_grad=True)
        for make in ALL.values():
            out = make(1.0)(
                lambda z: z.pow(2).sum((-1, -2)), Independent(Categorical(logits=theta), 1)
            )
            out.loss.sum().backward()
            out = make(1.0)(lambda b: b.pow(2).sum(-1), Independent(Bernoulli(logits=alpha), 1))
            out.loss.sum().backward()
            assert out.loss.device.type == dev and theta.grad.device.type == dev
            assert alpha.grad.device.type == dev


def test_bad_hyper_parameters():
    for cls in (GumbelSoftmax, STGumbelSoftmax, GumbelRao):
        for bad in (0.0, -1.0, math.inf, math.nan, True, "1"):
            with pytest.raises(ValueError, match="tau"):
                cls(bad)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="n_samples"):
            GumbelRao(1.0, bad)
    assert isinstance(GumbelSoftmax(0.3).schedule, Constant)
    assert np.isclose(GumbelSoftmax(0.3).tau, 0.3)
