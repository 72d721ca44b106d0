"""exact_gradient, gradient_draws and gradient_stats against closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Independent, OneHotCategorical

import discograd as dg
from discograd.diagnostics import exact_gradient, gradient_draws, gradient_stats
from discograd.estimators import Estimate, Estimator, zero_valued

from conftest import Z_TOL, assert_mean_matches

D64 = torch.float64


class ScoreFunction(Estimator):
    """A one-sample score-function estimator: a test double with known moments."""

    def estimate(self, f, latent, generator):
        z = latent.sample((), generator)
        fz = latent.call_f(f, latent.encode(z), ())
        loss = fz + fz.detach() * zero_valued(latent.log_prob(z))
        return Estimate(loss=loss, value=fz.detach(), n_evals=1)


def bernoulli_moments(p: float, g0: torch.Tensor, g1: torch.Tensor):
    """Mean, trace of covariance and the standard error of the sample trace for
    draws equal to g1 with probability p and g0 otherwise.

    The sample trace is ||g1 − g0||^2 times the sample variance of a Bernoulli
    indicator, whose variance is (mu4 − sigma^4) / n to first order (which
    vanishes at p = 1/2: keep p away from it).
    """
    assert abs(p - 0.5) > 0.1
    d2 = float(((g1 - g0) ** 2).sum())
    var_b = p * (1 - p)
    mu4 = p * (1 - p) * ((1 - p) ** 3 + p**3)
    return p * g1 + (1 - p) * g0, d2 * var_b, d2 * math.sqrt(mu4 - var_b**2)


def test_exact_gradient_matches_exact_backward():
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(2, 3, 4, generator=gen).requires_grad_()
    q = Independent(Categorical(logits=theta), 1)
    w = torch.randn(3, 4, generator=gen)
    f = lambda z: ((z * w).sum((-1, -2))) ** 2  # noqa: E731
    (g,) = exact_gradient(f, q, theta)
    dg.Exact()(f, q).loss.sum().backward()
    torch.testing.assert_close(g, theta.grad)
    # Tuple in, tuple out; an unused tensor gets zeros.
    other = torch.ones(2, requires_grad=True)
    g2 = exact_gradient(f, Independent(Categorical(logits=theta), 1), [theta, other])
    assert len(g2) == 2 and torch.equal(g2[1], torch.zeros(2))


def test_exact_has_no_variance_and_no_bias():
    theta = torch.randn(
        3, 5, dtype=D64, generator=torch.Generator().manual_seed(1)
    ).requires_grad_()
    q = OneHotCategorical(logits=theta)
    s = gradient_stats(
        dg.Exact(), lambda z: (z * torch.arange(5.0, dtype=D64)).sum(-1) ** 2, q, theta, 50
    )
    assert s.variance < 1e-20 and s.bias < 1e-10 and s.mse < 1e-20
    assert s.cosine == pytest.approx(1.0) and s.n_evals == 5 and s.n_draws == 50
    assert s.seconds_per_draw > 0 and s.snr > 1e6


@pytest.mark.parametrize("vectorize", [True, False])
def test_score_function_variance_matches_closed_form(vectorize):
    # One Bernoulli, f(b) = (b − 0.3)^2 + 2: draws are f(b) (b − p).
    theta = torch.tensor([1.0], dtype=D64, requires_grad=True)
    q = Bernoulli(logits=theta)
    f = lambda b: (b - 0.3) ** 2 + 2  # noqa: E731
    p = float(torch.sigmoid(theta.detach()))
    g1 = torch.tensor([(0.7**2 + 2) * (1 - p)], dtype=D64)
    g0 = torch.tensor([(0.3**2 + 2) * (0 - p)], dtype=D64)
    mean, trace, trace_sd = bernoulli_moments(p, g0, g1)
    n = 4000 if vectorize else 400
    gen = torch.Generator().manual_seed(3)
    draws, out = gradient_draws(ScoreFunction(), f, q, theta, n, generator=gen, vectorize=vectorize)
    assert out.mean_evals == 1.0
    assert draws.shape == (n, 1)
    # Every draw is one of the two possible values.
    assert torch.isclose(draws, g1).logical_or(torch.isclose(draws, g0)).all()
    s = gradient_stats(ScoreFunction(), f, q, theta, n, generator=gen, vectorize=vectorize)
    assert abs(s.variance - trace) < Z_TOL * trace_sd / math.sqrt(n)
    (exact,) = exact_gradient(f, q, theta)
    torch.testing.assert_close(exact, mean)
    assert s.bias is not None and s.bias < Z_TOL * math.sqrt(trace / n)
    assert s.bias_noise == pytest.approx(math.sqrt(s.variance / n))
    assert s.n_evals == 1.0


def test_draws_through_an_encoder_are_separated():
    # logits = A x: the per-draw gradient w.r.t. A is g_theta x^T (batched VJP path).
    x = torch.tensor([1.0, -2.0, 0.5], dtype=D64)
    A = torch.tensor([[0.3, 0.1, 1.0]], dtype=D64, requires_grad=True)  # p = σ(0.6)
    q = Bernoulli(logits=(A @ x))
    f = lambda b: (b - 0.3) ** 2 + 2  # noqa: E731
    p = float(torch.sigmoid(A.detach() @ x))
    g1 = (0.7**2 + 2) * (1 - p) * x
    g0 = (0.3**2 + 2) * (0 - p) * x
    mean, trace, trace_sd = bernoulli_moments(p, g0, g1)
    n = 4000
    draws, _ = gradient_draws(
        ScoreFunction(), f, q, A, n, generator=torch.Generator().manual_seed(4)
    )
    is_g1 = torch.isclose(draws, g1.expand(n, 3)).all(1)
    is_g0 = torch.isclose(draws, g0.expand(n, 3)).all(1)
    assert (is_g1 | is_g0).all()
    frac = float(is_g1.double().mean())
    assert abs(frac - p) < Z_TOL * math.sqrt(p * (1 - p) / n)
    assert_mean_matches(draws, mean)
    sample_trace = float(draws.var(0).sum())
    assert abs(sample_trace - trace) < Z_TOL * trace_sd / math.sqrt(n)


def test_draws_when_f_depends_on_wrt_directly():
    # f(b) = (b − w)^2 with w in wrt: the chunked batched-backward path.
    theta = torch.tensor(-1.0, dtype=D64, requires_grad=True)
    w = torch.tensor(0.3, dtype=D64, requires_grad=True)
    q = Bernoulli(logits=theta)
    f = lambda b: (b - w) ** 2 + 1  # noqa: E731
    p = float(torch.sigmoid(theta.detach()))
    # Per draw: [f(b) (b − p), −2 (b − w)]
    g1 = torch.tensor([(0.7**2 + 1) * (1 - p), -2 * 0.7], dtype=D64)
    g0 = torch.tensor([(0.3**2 + 1) * (-p), -2 * -0.3], dtype=D64)
    mean, trace, trace_sd = bernoulli_moments(p, g0, g1)
    n = 3000
    draws, _ = gradient_draws(
        ScoreFunction(),
        f,
        q,
        [theta, w],
        n,
        generator=torch.Generator().manual_seed(5),
        chunk_size=50,
    )
    assert draws.shape == (n, 2)
    is_g1 = torch.isclose(draws, g1.expand(n, 2)).all(1)
    is_g0 = torch.isclose(draws, g0.expand(n, 2)).all(1)
    assert (is_g1 | is_g0).all()
    s = gradient_stats(
        ScoreFunction(), f, q, [theta, w], n, generator=torch.Generator().manual_seed(6)
    )
    assert abs(s.variance - trace) < Z_TOL * trace_sd / math.sqrt(n)
    exact = exact_gradient(f, q, [theta, w])
    torch.testing.assert_close(torch.stack(exact), mean)


def test_cosine_and_mse_definitions():
    theta = torch.tensor([1.0], dtype=D64, requires_grad=True)
    q = Bernoulli(logits=theta)
    f = lambda b: (b - 0.3) ** 2 + 2  # noqa: E731
    gen = torch.Generator().manual_seed(7)
    s = gradient_stats(ScoreFunction(), f, q, theta, 2000, generator=gen)
    # 1-D gradients: each draw's cosine with the exact gradient is ±1.
    assert -1.0 <= s.cosine <= 1.0
    assert s.mse == pytest.approx(s.variance * (1999 / 2000) + s.bias**2, rel=1e-9)


def test_gradient_stats_without_an_enumerable_support():
    theta = torch.zeros(40, requires_grad=True)
    q = Independent(Bernoulli(logits=theta), 1)
    s = gradient_stats(ScoreFunction(), lambda b: b.sum(-1), q, theta, 10)
    assert s.bias is None and s.cosine is None and s.mse is None and s.variance > 0


def test_bad_arguments():
    theta = torch.zeros(3, requires_grad=True)
    q = Categorical(logits=theta)
    f = lambda z: z.sum(-1)  # noqa: E731
    with pytest.raises(ValueError, match="n_draws"):
        gradient_stats(dg.Exact(), f, q, theta, 1)
    with pytest.raises(ValueError, match="require grad"):
        gradient_stats(dg.Exact(), f, q, torch.zeros(3), 10)
    with pytest.raises(ValueError, match="at least one"):
        exact_gradient(f, q, [])
    with pytest.raises(ValueError, match="exact has 2 entries"):
        gradient_stats(dg.Exact(), f, q, theta, 10, exact=torch.zeros(2))
    with pytest.raises(ValueError, match="chunk_size"):
        gradient_draws(dg.Exact(), f, q, theta, 10, chunk_size=0)
