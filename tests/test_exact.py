"""Exact against hand-computed gradients, and the estimator contract's input checks."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.distributions import (
    Bernoulli,
    Categorical,
    Independent,
    Normal,
    OneHotCategorical,
    Poisson,
    RelaxedOneHotCategorical,
)

import discograd as dg
from discograd.estimators import Estimate, Estimator, Latent

D64 = torch.float64


def test_categorical_gradient_by_hand():
    theta = torch.tensor(
        [[0.2, -0.4, 1.1, 0.0], [1.0, 0.5, -2.0, 0.3]], dtype=D64, requires_grad=True
    )
    w = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=D64)

    def f(z):  # nonlinear in the one-hot sample
        return torch.sin(3 * (z * w).sum(-1)) + (z * w).sum(-1) ** 2

    out = dg.Exact()(f, Categorical(logits=theta))
    (g,) = torch.autograd.grad(out.loss.sum(), theta)
    pi = torch.softmax(theta.detach(), -1)
    fk = torch.sin(3 * w) + w**2  # f at each category, written out
    expected_value = (pi * fk).sum(-1)
    expected_grad = pi * (fk - expected_value.unsqueeze(-1))  # dL/dθ_j = π_j (f_j − E f)
    torch.testing.assert_close(out.value, expected_value)
    torch.testing.assert_close(out.loss.detach(), expected_value)
    torch.testing.assert_close(g, expected_grad)
    assert out.loss.shape == (2,) and out.n_evals == 4 and out.cv_loss is None


def test_independent_bernoulli_gradient_by_hand():
    theta = torch.tensor([0.3, -1.2, 0.8], dtype=D64, requires_grad=True)
    w = torch.tensor([1.0, 2.0, -0.5], dtype=D64)

    def cost(b):
        return ((b * w).sum(-1) - 0.7) ** 2

    out = dg.Exact()(cost, Independent(Bernoulli(logits=theta), 1))
    (g,) = torch.autograd.grad(out.loss, theta)
    p = torch.sigmoid(theta.detach())
    value = torch.zeros((), dtype=D64)
    grad = torch.zeros(3, dtype=D64)
    for bits in itertools.product([0.0, 1.0], repeat=3):
        b = torch.tensor(bits, dtype=D64)
        prob = torch.prod(torch.where(b == 1, p, 1 - p))
        fb = cost(b)
        value += prob * fb
        grad += prob * fb * (b - p)  # ∇θ log q(b) = b − σ(θ)
    torch.testing.assert_close(out.value, value)
    torch.testing.assert_close(g, grad)
    assert out.n_evals == 8


def test_independent_one_hot_categorical_with_coupled_cost():
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(2, 3, dtype=D64, generator=gen).requires_grad_()
    M = torch.randn(3, 3, dtype=D64, generator=gen)

    def f(z):  # couples the two variables: z_0^T M z_1
        return torch.einsum("...i,ij,...j->...", z[..., 0, :], M, z[..., 1, :])

    out = dg.Exact()(f, Independent(OneHotCategorical(logits=theta), 1))
    (g,) = torch.autograd.grad(out.loss, theta)
    pi = torch.softmax(theta.detach(), -1)
    grad = torch.zeros(2, 3, dtype=D64)
    value = 0.0
    for i, j in itertools.product(range(3), repeat=2):
        prob = pi[0, i] * pi[1, j]
        value += prob * M[i, j]
        score = torch.zeros(2, 3, dtype=D64)
        score[0] = -pi[0]
        score[0, i] += 1
        score[1] = -pi[1]
        score[1, j] += 1
        grad += prob * M[i, j] * score
    torch.testing.assert_close(out.value, torch.as_tensor(value, dtype=D64))
    torch.testing.assert_close(g, grad)


def test_f_that_uses_log_q_gets_the_entropy_gradient():
    theta = torch.tensor([0.5, -1.0, 2.0, 0.1], dtype=D64, requires_grad=True)
    q = OneHotCategorical(logits=theta)
    out = dg.Exact()(lambda z: q.log_prob(z), q)  # E[log q] = −H(q)
    (g,) = torch.autograd.grad(out.loss, theta)
    pi = torch.softmax(theta.detach(), -1)
    neg_entropy = (pi * pi.log()).sum()
    torch.testing.assert_close(out.value, neg_entropy)
    torch.testing.assert_close(g, pi * (pi.log() - neg_entropy))  # π_j (log π_j − Σ π log π)


def test_parameters_inside_f_get_their_exact_gradient():
    gen = torch.Generator().manual_seed(1)
    theta = torch.randn(4, dtype=D64, generator=gen).requires_grad_()
    W = torch.randn(4, 2, dtype=D64, generator=gen).requires_grad_()
    out = dg.Exact()(lambda z: (z @ W).pow(2).sum(-1), OneHotCategorical(logits=theta))
    (gW,) = torch.autograd.grad(out.loss, W)
    pi = torch.softmax(theta.detach(), -1)
    # E_k[ d/dW (e_k W)^2 ] = Σ_k π_k 2 e_k (e_k W)  →  row k: 2 π_k W_k
    torch.testing.assert_close(gW, 2 * pi.unsqueeze(-1) * W.detach())


def test_masked_category_with_log_q_cost_stays_finite():
    theta = torch.tensor([0.3, float("-inf"), -0.5], dtype=D64, requires_grad=True)
    q = OneHotCategorical(logits=theta)
    out = dg.Exact()(lambda z: q.log_prob(z) + z[..., 2] * 3.0, q)
    (g,) = torch.autograd.grad(out.loss, theta)
    assert torch.isfinite(out.value) and torch.isfinite(g).all()
    reduced = torch.tensor([0.3, -0.5], dtype=D64, requires_grad=True)
    qr = OneHotCategorical(logits=reduced)
    ref = dg.Exact()(lambda z: qr.log_prob(z) + z[..., 1] * 3.0, qr)
    (gr,) = torch.autograd.grad(ref.loss, reduced)
    torch.testing.assert_close(out.value, ref.value)
    torch.testing.assert_close(g[[0, 2]], gr)
    assert g[1] == 0


def test_batch_of_data_points_and_probs_parameterisation():
    probs = torch.tensor([[0.2, 0.7], [0.9, 0.4], [0.5, 0.5]], dtype=D64, requires_grad=True)
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=D64)
    q = Independent(Bernoulli(probs=probs), 1)
    out = dg.Exact()(lambda b: ((b - targets) ** 2).sum(-1), q)
    assert out.loss.shape == (3,)
    # E (b − t)^2 = p(1 − t)^2 + (1 − p) t^2 per variable; d/dp = (1 − t)^2 − t^2 = 1 − 2t
    p = probs.detach()
    torch.testing.assert_close(out.value, (p * (1 - targets) ** 2 + (1 - p) * targets**2).sum(-1))
    (g,) = torch.autograd.grad(out.loss.sum(), probs)
    torch.testing.assert_close(g, 1 - 2 * targets)


def test_loss_backward_is_the_exact_gradient_done_when_example():
    # The "done when": Exact()(f, q).loss.sum().backward() gives the exact gradient.
    theta = torch.zeros(3, requires_grad=True)
    f = lambda z: (z * torch.tensor([1.0, 2.0, 3.0])).sum(-1)  # noqa: E731
    dg.Exact()(f, Categorical(logits=theta)).loss.sum().backward()
    torch.testing.assert_close(theta.grad, torch.tensor([-1.0, 0.0, 1.0]) / 3)


def test_support_budget():
    q = Independent(Bernoulli(logits=torch.zeros(20)), 1)
    with pytest.raises(ValueError, match=r"2\^20 = 1048576 configurations.*max_support=65536"):
        dg.Exact()(lambda b: b.sum(-1), q)
    out = dg.Exact(max_support=2**20)(lambda b: b.sum(-1), q)
    torch.testing.assert_close(out.value, torch.tensor(10.0))
    with pytest.raises(ValueError, match="max_support"):
        dg.Exact(max_support=0)
    with pytest.raises(ValueError, match="max_support"):
        dg.Exact(max_support=2.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "q, name",
    [
        (Normal(torch.zeros(2), torch.ones(2)), "Normal"),
        (Poisson(torch.ones(2)), "Poisson"),
        (
            RelaxedOneHotCategorical(torch.tensor(0.5), logits=torch.zeros(3)),
            "RelaxedOneHotCategorical",
        ),
        (Independent(Normal(torch.zeros(2), torch.ones(2)), 1), "Independent of Normal"),
    ],
)
def test_unsupported_distribution_raises_type_error_naming_both(q, name):
    with pytest.raises(TypeError, match=rf"Exact does not support {name}"):
        dg.Exact()(lambda z: z.sum(-1), q)


def test_unsupported_kind_names_the_estimator_and_the_distribution():
    class BinaryOnly(Estimator):
        supports = frozenset({"bernoulli"})

    with pytest.raises(TypeError, match=r"BinaryOnly does not support Categorical"):
        BinaryOnly()(lambda z: z.sum(-1), Categorical(logits=torch.zeros(3)))


def test_bad_f():
    q = Categorical(logits=torch.zeros(2, 3))
    with pytest.raises(TypeError, match="f must be callable"):
        dg.Exact()(3.0, q)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"expected sample_shape \+ q.batch_shape = \(3, 2\)"):
        dg.Exact()(lambda z: z, q)
    with pytest.raises(TypeError, match="f must return a tensor"):
        dg.Exact()(lambda z: 1.0, q)
    with pytest.raises(TypeError, match="generator"):
        dg.Exact(generator=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"torch\.distributions"):
        dg.Exact()(lambda z: z.sum(-1), torch.zeros(3))  # type: ignore[arg-type]


def test_latent_shapes_and_sampling(gen):
    q = Independent(Categorical(logits=torch.randn(5, 2, 3, 4)), 2)
    lat = Latent.parse(q)
    assert lat.kind == "categorical" and lat.batch_shape == (5,) and lat.var_shape == (2, 3)
    assert lat.support_size() == 4**6
    z = lat.sample((7,), generator=gen)
    assert z.shape == (7, 5, 2, 3) and z.dtype == torch.int64
    assert lat.encode(z).shape == (7, 5, 2, 3, 4)
    assert lat.log_prob(z).shape == (7, 5)
    torch.testing.assert_close(lat.log_prob(z), q.log_prob(z))
    b = Latent.parse(Independent(Bernoulli(logits=torch.randn(5, 3)), 1))
    zb = b.sample((2,), generator=gen)
    assert zb.shape == (2, 5, 3) and set(zb.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(b.log_prob(zb), b.q.log_prob(zb))


def test_estimate_mean_evals():
    e = Estimate(loss=torch.zeros(2), value=torch.zeros(2), n_evals=torch.tensor([3, 5]))
    assert e.mean_evals == 4.0
    assert Estimate(torch.zeros(()), torch.zeros(()), 7).mean_evals == 7.0


def test_exact_value_matches_monte_carlo(gen):
    # A sanity check of the enumeration order: the exact mean equals a large
    # Monte-Carlo average of f under q's own sampler (z-test).
    theta = torch.randn(3, 4, generator=gen, dtype=D64)
    q = Independent(OneHotCategorical(logits=theta), 1)
    w = torch.randn(3, 4, generator=gen, dtype=D64)

    def f(z):
        return torch.tanh((z * w).sum((-1, -2))) * 3

    exact = float(dg.Exact()(f, q).value)
    fz = f(q.sample((100_000,)))
    se = float(fz.std()) / math.sqrt(fz.numel())
    assert abs(float(fz.mean()) - exact) < 4.5 * se
