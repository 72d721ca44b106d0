"""Concrete, ExpConcrete and BinaryConcrete against their math."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.special import expit, gammaln, logsumexp
from torch.distributions import RelaxedBernoulli, RelaxedOneHotCategorical
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical

from discograd.distributions import BinaryConcrete, Concrete, ExpConcrete

from conftest import chi_square_pvalue

# -------------------------------------------------- closed forms, written out
# Independent NumPy float64 implementations of the densities in LITERATURE.md.


def concrete_logpdf(y: np.ndarray, pi: np.ndarray, tau: float) -> float:
    """log[ Γ(C) τ^(C−1) (Σ_i π_i / y_i^τ)^(−C) Π_i (π_i / y_i^(τ+1)) ]."""
    C = len(pi)
    return (
        gammaln(C)
        + (C - 1) * math.log(tau)
        - C * math.log(np.sum(pi / y**tau))
        + np.sum(np.log(pi) - (tau + 1) * np.log(y))
    )


def exp_concrete_logpdf(x: np.ndarray, pi: np.ndarray, tau: float) -> float:
    C = len(pi)
    s = np.log(pi) - tau * x
    return gammaln(C) + (C - 1) * math.log(tau) + s.sum() - C * logsumexp(s)


def binary_concrete_logpdf(x: float, alpha: float, tau: float) -> float:
    num = math.log(tau) + alpha - (tau + 1) * (math.log(x) + math.log1p(-x))
    den = 2 * math.log(math.exp(alpha) * x ** (-tau) + (1 - x) ** (-tau))
    return num - den


def dirichlet_points(n: int, C: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.dirichlet(np.ones(C), size=n))


# ------------------------------------------------------------ closed forms


@pytest.mark.parametrize("C", [2, 3, 6])
@pytest.mark.parametrize("tau", [0.2, 1.0, 3.0])
def test_concrete_log_prob_matches_closed_form(C, tau):
    logits = torch.randn(C, dtype=torch.float64, generator=torch.Generator().manual_seed(C))
    pi = torch.softmax(logits, -1).numpy()
    d = Concrete(tau, logits=logits)
    y = dirichlet_points(20, C, seed=1)
    ours = d.log_prob(y)
    ref = torch.tensor([concrete_logpdf(row, pi, tau) for row in y.numpy()])
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("C", [2, 4])
@pytest.mark.parametrize("tau", [0.2, 1.0, 3.0])
def test_exp_concrete_log_prob_matches_closed_form(C, tau):
    logits = torch.randn(C, dtype=torch.float64, generator=torch.Generator().manual_seed(C))
    pi = torch.softmax(logits, -1).numpy()
    d = ExpConcrete(tau, logits=logits)
    x = dirichlet_points(20, C, seed=2).log()
    ours = d.log_prob(x)
    ref = torch.tensor([exp_concrete_logpdf(row, pi, tau) for row in x.numpy()])
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("tau", [0.2, 1.0, 3.0])
@pytest.mark.parametrize("alpha", [-2.0, 0.0, 1.5])
def test_binary_concrete_log_prob_matches_closed_form(tau, alpha):
    d = BinaryConcrete(tau, logits=torch.tensor(alpha, dtype=torch.float64))
    x = torch.linspace(0.01, 0.99, 25, dtype=torch.float64)
    ref = torch.tensor(
        [binary_concrete_logpdf(float(v), alpha, tau) for v in x], dtype=torch.float64
    )
    torch.testing.assert_close(d.log_prob(x), ref, rtol=1e-10, atol=1e-10)


def test_binary_concrete_is_the_two_category_concrete():
    alpha, tau = 0.7, 0.6
    y = torch.linspace(0.05, 0.95, 11, dtype=torch.float64)
    two = Concrete(tau, logits=torch.tensor([alpha, 0.0], dtype=torch.float64))
    one = BinaryConcrete(tau, logits=torch.tensor(alpha, dtype=torch.float64))
    torch.testing.assert_close(two.log_prob(torch.stack([y, 1 - y], -1)), one.log_prob(y))


# ------------------------------------------------------ agreement with torch


@pytest.mark.parametrize("tau", [0.3, 1.0, 2.5])
def test_agrees_with_torch_relaxed_distributions(tau):
    logits = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = dirichlet_points(5, 4, seed=3)
    t = torch.tensor(tau, dtype=torch.float64)
    torch.testing.assert_close(
        Concrete(tau, logits=logits).log_prob(y),
        RelaxedOneHotCategorical(t, logits=logits).log_prob(y),
    )
    torch.testing.assert_close(
        ExpConcrete(tau, logits=logits).log_prob(y.log()),
        ExpRelaxedCategorical(t, logits=logits).log_prob(y.log()),
    )
    x = torch.rand(5, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.98 + 0.01
    torch.testing.assert_close(
        BinaryConcrete(tau, logits=logits[:, 0]).log_prob(x),
        RelaxedBernoulli(t, logits=logits[:, 0]).log_prob(x),
    )


# ------------------------------------------------------------ normalisation


def _quad_over_logit(logpdf) -> float:
    """∫_0^1 p(x) dx computed in logit coordinates s (smooth, no endpoint singularity).

    ``logpdf(x, 1 - x)`` gets both coordinates computed from s, so neither
    rounds to 0 or 1.
    """

    def integrand(s: float) -> float:
        x, xbar = float(expit(s)), float(expit(-s))
        log_jac = -abs(s) - 2 * math.log1p(math.exp(-abs(s)))  # log σ(s)(1−σ(s))
        return math.exp(logpdf(x, xbar) + log_jac)

    # s = (alpha + L) / tau has logistic tails exp(-tau |s|): +-400 leaves < e^-100.
    value, _ = integrate.quad(
        integrand, -400, 400, points=[-10, 0, 10], limit=400, epsabs=1e-11, epsrel=1e-9
    )
    return value


@pytest.mark.parametrize("tau", [0.3, 1.0, 2.0])
@pytest.mark.parametrize("alpha", [-1.3, 0.4])
def test_densities_integrate_to_one_k2(tau, alpha):
    logits = torch.tensor([alpha, 0.0], dtype=torch.float64)
    conc = Concrete(tau, logits=logits)
    expc = ExpConcrete(tau, logits=logits)
    binc = BinaryConcrete(tau, logits=logits[:1].squeeze())

    def t(v: float) -> torch.Tensor:
        return torch.tensor(v, dtype=torch.float64)

    def concrete_pdf(x: float, xbar: float) -> float:
        return float(conc.log_prob(torch.stack([t(x), t(xbar)])))

    binc_flipped = BinaryConcrete(tau, logits=-logits[0])

    def binary_pdf(x: float, xbar: float) -> float:
        # p_alpha(x) = p_-alpha(1 - x): evaluate on the side where x is not
        # rounded to 1 (at tau = 0.3 about 2e-5 of the mass lies within 1e-16 of 1).
        return float(binc.log_prob(t(x)) if x <= 0.5 else binc_flipped.log_prob(t(xbar)))

    def exp_concrete_pdf(x: float, xbar: float) -> float:
        # ExpConcrete's base measure is dx1 / y2 on the log-simplex; with
        # x1 = log y1: dx1 = dy1 / y1, so the density in y1 is p / (y1 * y2).
        lx = torch.stack([t(x).log(), t(xbar).log()])
        return float(expc.log_prob(lx)) - math.log(x) - math.log(xbar)

    for pdf in (concrete_pdf, binary_pdf, exp_concrete_pdf):
        assert abs(_quad_over_logit(pdf) - 1.0) < 1e-6


def test_exp_concrete_is_not_normalised_in_plain_log_coordinates():
    # Documents the base measure: against dx1 alone the integral is E[y2] < 1.
    tau, alpha = 0.7, math.log(2.3)
    expc = ExpConcrete(tau, logits=torch.tensor([alpha, 0.0], dtype=torch.float64))

    def integrand(x1: float) -> float:
        lx = torch.tensor([x1, math.log(-math.expm1(x1))], dtype=torch.float64)
        return math.exp(float(expc.log_prob(lx)))

    value, _ = integrate.quad(integrand, -np.inf, 0.0, limit=400)
    assert value < 0.9


# ---------------------------------------------------------------- rounding


@pytest.mark.parametrize("tau", [0.1, 1.0, 5.0])
def test_rounding_property(tau):
    gen = torch.Generator().manual_seed(21)
    logits = torch.tensor([1.0, -0.5, 0.0, 0.7, float("-inf")])
    pi = torch.softmax(logits, -1).numpy()
    y = Concrete(tau, logits=logits).sample((40_000,), generator=gen)
    counts = np.bincount(y.argmax(-1).numpy(), minlength=5)
    assert chi_square_pvalue(counts, pi) > 1e-3
    x = BinaryConcrete(tau, logits=torch.tensor(0.8)).sample((40_000,), generator=gen)
    k = int((x > 0.5).sum())
    p = 1 / (1 + math.exp(-0.8))
    assert abs(k - 40_000 * p) < 4.5 * math.sqrt(40_000 * p * (1 - p))


def test_zero_temperature_limit_is_one_hot():
    gen = torch.Generator().manual_seed(4)
    y = Concrete(1e-3, logits=torch.randn(2000, 5, generator=gen)).sample(generator=gen)
    assert float((y.max(-1).values > 0.99).float().mean()) > 0.97
    x = BinaryConcrete(1e-3, logits=torch.randn(2000, generator=gen)).sample(generator=gen)
    assert float(((x < 0.01) | (x > 0.99)).float().mean()) > 0.97


# ------------------------------------------------------ batched temperatures


def test_batched_temperature_broadcasts_correctly():
    # torch issue #37162: torch's log_prob returns [n, n] here.
    gen = torch.Generator().manual_seed(0)
    n, C = 4, 3
    logits = torch.randn(n, C, dtype=torch.float64, generator=gen)
    temps = torch.tensor([[0.2], [0.5], [1.0], [3.0]], dtype=torch.float64)
    for cls in (Concrete, ExpConcrete):
        d = cls(temps, logits=logits)
        assert d.batch_shape == (n,) and d.event_shape == (C,)
        v = d.sample((7,), generator=gen)
        assert v.shape == (7, n, C)
        lp = d.log_prob(v)
        assert lp.shape == (7, n)
        for i in range(n):
            row = cls(float(temps[i, 0]), logits=logits[i])
            torch.testing.assert_close(lp[:, i], row.log_prob(v[:, i].clone()))
    # A temperature per row and shared logits: the batch shape comes from the temperature.
    d = Concrete(temps, logits=logits[0])
    assert d.batch_shape == (n,) and d.sample().shape == (n, C)
    assert d.log_prob(d.sample()).shape == (n,)
    b = BinaryConcrete(temps.squeeze(-1), logits=logits[:, 0])
    assert b.batch_shape == (n,) and b.log_prob(b.sample((5,))).shape == (5, n)


def test_temperature_without_trailing_singleton_is_refused():
    with pytest.raises(ValueError, match=r"trailing dimension of size 1"):
        Concrete(torch.tensor([0.5, 1.0, 2.0]), logits=torch.zeros(3, 3))


# ----------------------------------------------------- low-temperature numerics


@pytest.mark.parametrize("tau", [1e-2, 1e-3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_prob_finite_for_own_samples_at_low_temperature(tau, dtype):
    # Finite values and gradients; for Concrete and BinaryConcrete a stand-in
    # where samples saturated (exact densities: test_torch_compat).
    gen = torch.Generator().manual_seed(9)
    logits = (torch.randn(200, 6, generator=gen) * 3).to(dtype).requires_grad_()
    for d in (Concrete(tau, logits=logits), ExpConcrete(tau, logits=logits)):
        v = d.rsample(generator=gen)
        lp = d.log_prob(v)
        assert torch.isfinite(lp).all(), type(d).__name__
        (g,) = torch.autograd.grad(lp.sum(), logits)
        assert torch.isfinite(g).all()
    b = BinaryConcrete(tau, logits=logits[:, 0])
    x = b.rsample(generator=gen)
    assert ((x == 0) | (x == 1)).any()  # saturated in floating point, still...
    lp = b.log_prob(x)
    assert torch.isfinite(lp).all()
    (g,) = torch.autograd.grad(lp.sum(), logits)
    assert torch.isfinite(g).all()


def test_concrete_log_prob_is_the_exp_concrete_density_changed_to_the_simplex():
    # log p(y) = log p_Exp(log y) - sum log y where no coordinate underflows;
    # below that, only the log-space class keeps exact densities (docs).
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(50, 4, dtype=torch.float64, generator=gen)
    for tau in (0.1, 0.7, 3.0):
        x = ExpConcrete(tau, logits=logits).sample(generator=gen)
        lp = Concrete(tau, logits=logits).log_prob(x.exp())
        ref = ExpConcrete(tau, logits=logits).log_prob(x) - x.sum(-1)
        torch.testing.assert_close(lp, ref)
    b = BinaryConcrete(0.7, logits=logits[:, 0])
    s = b.rsample_logit(generator=gen)
    torch.testing.assert_close(b.log_prob(torch.sigmoid(s)), b.log_prob_logit(s))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(64, 5, generator=gen).to(dtype)
    for tau in (0.01, 1.0):
        d = Concrete(tau, logits=logits)
        y = d.rsample(generator=gen)
        assert y.dtype == dtype and torch.isfinite(y).all()
        assert torch.isfinite(d.log_prob(y)).all()
        e = ExpConcrete(tau, logits=logits)
        assert torch.isfinite(e.log_prob(e.rsample(generator=gen))).all()
        b = BinaryConcrete(tau, logits=logits[:, 0])
        x = b.rsample(generator=gen)
        assert x.dtype == dtype and torch.isfinite(b.log_prob(x)).all()


# --------------------------------------------------------------- masking


def test_masked_category_is_never_sampled_and_density_is_the_reduced_one():
    gen = torch.Generator().manual_seed(8)
    logits = torch.tensor([0.3, float("-inf"), -0.2, 1.0], dtype=torch.float64)
    d = Concrete(0.5, logits=logits)
    y = d.sample((100,), generator=gen)
    assert (y[:, 1] == 0).all()
    reduced = Concrete(0.5, logits=logits[[0, 2, 3]])
    y_red = y[:, [0, 2, 3]].contiguous()
    torch.testing.assert_close(d.log_prob(y.clone()), reduced.log_prob(y_red))
    e = ExpConcrete(0.5, logits=logits)
    x = e.sample((100,), generator=gen)
    assert torch.isneginf(x[:, 1]).all() and torch.isfinite(e.log_prob(x)).all()
    # Putting mass on the masked category is outside the support.
    bad = torch.tensor([0.25, 0.25, 0.25, 0.25], dtype=torch.float64)
    assert torch.isneginf(d.log_prob(bad))
    # Zero probabilities mask as well.
    dp = Concrete(0.5, probs=torch.tensor([0.5, 0.0, 0.5], dtype=torch.float64))
    yp = dp.sample((10,), generator=gen)
    assert (yp[:, 1] == 0).all() and torch.isfinite(dp.log_prob(yp)).all()


# ------------------------------------------------------- gradients & misc


def test_rsample_is_reparameterised():
    logits = torch.randn(3, 4, requires_grad=True)
    temp = torch.tensor([[0.5]], requires_grad=True)
    y = Concrete(temp, logits=logits).rsample(generator=torch.Generator().manual_seed(0))
    g_logits, g_temp = torch.autograd.grad((y * torch.arange(4.0)).sum(), (logits, temp))
    assert g_logits.abs().sum() > 0 and g_temp.abs().sum() > 0
    a = torch.tensor([0.3, -0.2], requires_grad=True)
    x = BinaryConcrete(0.5, logits=a).rsample(generator=torch.Generator().manual_seed(0))
    (g,) = torch.autograd.grad(x.sum(), a)
    assert (g > 0).all()


def test_generator_and_expand():
    logits = torch.randn(4)
    d = Concrete(0.5, logits=logits)
    a = d.sample((3,), generator=torch.Generator().manual_seed(1))
    b = d.sample((3,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    e = d.expand((2, 5))
    assert e.batch_shape == (2, 5) and e.sample().shape == (2, 5, 4)
    assert e.log_prob(e.sample()).shape == (2, 5)
    be = BinaryConcrete(0.5, probs=torch.tensor(0.3)).expand((6,))
    assert be.sample().shape == (6,) and be.log_prob(be.sample()).shape == (6,)
    pe = ExpConcrete(0.5, probs=torch.tensor([0.2, 0.8])).expand((3,))
    assert pe.log_prob(pe.sample()).shape == (3,)


def test_samples_live_on_the_simplex():
    d = Concrete(0.4, logits=torch.randn(100, 7))
    y = d.sample(generator=torch.Generator().manual_seed(0))
    assert (y >= 0).all() and torch.allclose(y.sum(-1), torch.ones(100))
    assert bool(d.support.check(y).all())


@pytest.mark.parametrize("cls", [Concrete, ExpConcrete, BinaryConcrete])
def test_bad_arguments(cls):
    shape = (3,) if cls is not BinaryConcrete else ()
    ok = torch.zeros(shape)
    with pytest.raises(ValueError, match="temperature"):
        cls(0.0, logits=ok)
    with pytest.raises(ValueError, match="temperature"):
        cls(-1.0, logits=ok)
    with pytest.raises(ValueError, match="temperature"):
        cls(float("nan"), logits=ok)
    with pytest.raises(ValueError, match="temperature"):
        cls(torch.tensor(-0.5), logits=ok)
    with pytest.raises(TypeError, match="temperature"):
        cls("hot", logits=ok)
    with pytest.raises(ValueError, match="exactly one of probs or logits"):
        cls(1.0)
    with pytest.raises(ValueError, match="exactly one of probs or logits"):
        cls(1.0, probs=ok, logits=ok)
    with pytest.raises(TypeError, match="floating"):
        cls(1.0, logits=torch.zeros(shape, dtype=torch.int64))
    with pytest.raises(ValueError, match="logits"):
        cls(1.0, logits=torch.full(shape, float("nan")), validate_args=True)


def test_validation_of_samples():
    d = Concrete(0.5, logits=torch.zeros(3), validate_args=True)
    with pytest.raises(ValueError):
        d.log_prob(torch.tensor([0.5, 0.6, 0.1]))
    b = BinaryConcrete(0.5, logits=torch.zeros(()), validate_args=True)
    with pytest.raises(ValueError):
        b.log_prob(torch.tensor(1.5))
    with pytest.raises(ValueError):
        Concrete(0.5, probs=torch.tensor([0.5, -0.5, 1.0]), validate_args=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_binary_concrete_with_an_infinite_logit_is_a_point_mass_without_density(dtype):
    # +inf: the formula's alpha - 2 softplus(alpha - tau s) was inf - inf = NaN;
    # the limit of the finite case is -inf at every point.
    logits = torch.tensor([math.inf, -math.inf, 0.4], dtype=dtype)
    d = BinaryConcrete(0.5, logits=logits)
    x = d.rsample((5,), generator=torch.Generator().manual_seed(0))
    assert (x[:, 0] == 1).all() and (x[:, 1] == 0).all()
    lp = d.log_prob(x)
    assert (lp[:, :2] == -math.inf).all() and torch.isfinite(lp[:, 2]).all()
    s = d.rsample_logit((5,), generator=torch.Generator().manual_seed(0))
    lps = d.log_prob_logit(s)
    assert (lps[:, :2] == -math.inf).all() and torch.isfinite(lps[:, 2]).all()
    for alpha in (30.0, 60.0):  # the finite case tends to -inf at the same stand-in points
        near = BinaryConcrete(0.5, logits=torch.tensor([alpha], dtype=dtype)).log_prob(
            torch.tensor([0.5], dtype=dtype)
        )
        assert near < -alpha / 2
