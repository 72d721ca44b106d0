"""Discrete VAEs: exact ELBO gradients, KL terms, the importance-weighted bound."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import kl_divergence

from discograd.estimators import Exact
from discograd.models import BernoulliVAE, CategoricalVAE, mlp


def binary_batch(n=64, dim=20, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, dim, generator=gen) < 0.3).float()


def enumerated_neg_elbo(model: CategoricalVAE, x: torch.Tensor) -> torch.Tensor:
    """−ELBO of a one-latent categorical VAE, enumerated by hand (autograd-able)."""
    q = model.posterior(x)
    log_q = q.base_dist.logits[:, 0]  # [B, C]
    C = model.n_categories
    z = torch.eye(C).view(C, 1, 1, C)  # every category, broadcast over the batch
    log_lik = model.log_likelihood(x, z)  # [C, B]
    log_p = torch.log_softmax(model.prior_logits, -1)[0]  # [C]
    return (log_q.exp().T * (-log_lik + log_q.T - log_p[:, None])).sum(0)


def test_exact_objective_gradient_equals_autograd_through_the_enumerated_elbo():
    torch.manual_seed(0)
    model = CategoricalVAE(20, n_latent=1, n_categories=10, hidden=(16,), prior="learned")
    x = binary_batch()
    out = model.objective(x, Exact())
    params = [p for p in model.parameters()]
    g_est = torch.autograd.grad(out.loss, params)
    ref = enumerated_neg_elbo(model, x)
    g_ref = torch.autograd.grad(ref.mean(), params)
    torch.testing.assert_close(out.neg_elbo, ref.detach())
    for a, b in zip(g_est, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_analytic_kls_match_torch():
    torch.manual_seed(1)
    x = binary_batch()
    cat = CategoricalVAE(20, n_latent=3, n_categories=4, hidden=(8,), prior="learned")
    with torch.no_grad():
        cat.prior_logits.normal_()
    q = cat.posterior(x)
    torch.testing.assert_close(cat.analytic_kl(q), kl_divergence(q, cat.prior()))
    ber = BernoulliVAE(20, n_latent=5, hidden=(8,), prior="learned")
    with torch.no_grad():
        ber.prior_logits.normal_()
    qb = ber.posterior(x)
    # torch's Bernoulli KL does not broadcast: expand the prior to the batch.
    torch.testing.assert_close(ber.analytic_kl(qb), kl_divergence(qb, ber.prior().expand((64,))))


@pytest.mark.parametrize("cls", [CategoricalVAE, BernoulliVAE])
def test_relaxed_kl_is_zero_when_posterior_equals_prior_and_finite_when_cold(cls):
    torch.manual_seed(2)
    kwargs = {"n_latent": 3, "hidden": (8,)}
    model = cls(20, **kwargs)
    x = binary_batch()
    q = model.posterior(x)
    prior_q = type(q)(type(q.base_dist)(logits=model.prior_logits.expand_as(q.base_dist.logits)), 1)
    torch.testing.assert_close(model.relaxed_kl(prior_q, 0.5), torch.zeros(x.shape[0]))
    gen = torch.Generator().manual_seed(0)
    for tau in (0.01, 0.5, 5.0):
        out = model.objective(x, Exact(max_support=10**4), kl="relaxed", tau=tau, generator=gen)
        assert torch.isfinite(out.loss)
        grads = torch.autograd.grad(out.loss, list(model.parameters()), allow_unused=True)
        assert all(g is None or torch.isfinite(g).all() for g in grads)
    with pytest.raises(ValueError, match="tau"):
        model.objective(x, Exact(max_support=10**4), kl="relaxed")
    with pytest.raises(ValueError, match="kl must be"):
        model.objective(x, Exact(max_support=10**4), kl="bogus")  # type: ignore[arg-type]


def test_importance_weighted_bound_tightens_towards_log_likelihood():
    torch.manual_seed(3)
    model = CategoricalVAE(20, n_latent=1, n_categories=10, hidden=(16,))
    x = binary_batch(n=200)
    C = 10
    z = torch.eye(C).view(C, 1, 1, C)
    with torch.no_grad():
        log_joint = model.log_likelihood(x, z) + model.prior().log_prob(z)
        nll = -torch.logsumexp(log_joint, 0)  # exact −log p(x), [B]
        elbo = enumerated_neg_elbo(model, x)  # exact −ELBO, [B]
    gen = torch.Generator().manual_seed(0)
    reps = 20
    means = {}
    for m in (1, 10, 100):
        draws = torch.stack([model.iw_bound(x, m, generator=gen) for _ in range(reps)])
        means[m] = draws.mean(0)
        assert (draws >= nll - 1e-4).float().mean() > 0.0  # sanity: bounds are near the NLL
    # m = 1 is the single-sample ELBO: unbiased for the exact −ELBO (z-test on the mean).
    diff = (means[1] - elbo).mean()
    se = (means[1] - elbo).std() / math.sqrt(len(elbo))
    assert abs(float(diff)) < 4.5 * float(se)
    # In expectation −ELBO >= IW_10 >= IW_100 >= −log p(x), strictly here.
    assert (
        float(elbo.mean()) > float(means[10].mean()) > float(means[100].mean()) > float(nll.mean())
    )
    tight = model.iw_bound(x, 5000, chunk=1000, generator=gen)
    assert float((tight - nll).abs().mean()) < 0.05
    single = model.neg_elbo(x, generator=gen)
    assert single.shape == (200,) and torch.isfinite(single).all()
    with pytest.raises(ValueError, match="m must be"):
        model.iw_bound(x, 0)


def test_model_arguments():
    with pytest.raises(ValueError, match="activation"):
        mlp([3, 4], activation="gelu")
    with pytest.raises(ValueError, match="MLP"):
        mlp([3])
    with pytest.raises(ValueError, match="prior"):
        CategoricalVAE(10, prior="flat")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_categories"):
        CategoricalVAE(10, n_categories=1)
    with pytest.raises(ValueError, match="prior"):
        BernoulliVAE(10, prior="flat")  # type: ignore[arg-type]
    linear = BernoulliVAE(10, n_latent=4)
    assert len(linear.encoder) == 1  # hidden=() is the linear model
