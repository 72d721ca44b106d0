"""REINFORCE, RLOO and VarGrad: unbiased against Exact, exact formulas per draw, variance."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, Categorical, Independent, Normal, OneHotCategorical

from discograd.baselines import EMA, Learned
from discograd.diagnostics import exact_gradient, gradient_draws, gradient_stats
from discograd.estimators import REINFORCE, RLOO, Estimate, Estimator, VarGrad, zero_valued

from conftest import assert_mean_matches

D64 = torch.float64
B, D, C = 2, 3, 4  # categorical problem: batch 2, three variables with four categories
DB = 4  # Bernoulli problem: batch 2, four variables


def _problem(kind: str, seed: int = 0):
    """Logits θ (leaf), the distribution, and a fixed weight tensor W for the costs."""
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


def _log_q(z, theta, kind):
    """log q(z) computed inside f from θ itself (so f depends on θ directly)."""
    if kind == "categorical":
        return (z * torch.log_softmax(theta, -1)).sum((-1, -2))
    lp = z * nn.functional.logsigmoid(theta) + (1 - z) * nn.functional.logsigmoid(-theta)
    return lp.sum(-1)


def _costs(kind: str, which: str, theta, W):
    """(f, wrt): a nonlinear cost, one that uses log q, or one with its own parameters."""
    if which == "plain":
        return (lambda z: torch.sin(2 * _linear(z, W, kind)) + _linear(z, W, kind) ** 2), [theta]
    if which == "logq":
        return (lambda z: (_linear(z, W, kind) - 0.5) ** 2 + 0.7 * _log_q(z, theta, kind)), [theta]
    # A "decoder": f holds a parameter tensor of its own.
    V = W.clone().requires_grad_()
    return (lambda z: torch.cos(_linear(z, V, kind)) + _linear(z, V, kind) ** 2), [theta, V]


def _learned(kind: str) -> Learned:
    torch.manual_seed(0)  # the module's initialisation only
    width = D * C if kind == "categorical" else DB
    return Learned(nn.Sequential(nn.Linear(width, 8), nn.Tanh(), nn.Linear(8, 1)).double())


def _ema_warm(kind: str, q, f) -> REINFORCE:
    est = REINFORCE(baseline=EMA(0.8))
    gen = torch.Generator().manual_seed(99)
    for _ in range(10):
        est(f, q, generator=gen)
    assert est.baseline.value != 0.0
    return est


FACTORIES = {
    "reinforce": lambda kind, q, f: REINFORCE(),
    "reinforce-S3": lambda kind, q, f: REINFORCE(n_samples=3),
    "reinforce-ema": _ema_warm,
    "reinforce-learned": lambda kind, q, f: REINFORCE(baseline=_learned(kind), n_samples=2),
    "rloo": lambda kind, q, f: RLOO(3),
    "vargrad": lambda kind, q, f: VarGrad(3),
}


@pytest.mark.parametrize("which", ["plain", "logq", "decoder"])
@pytest.mark.parametrize("kind", ["categorical", "bernoulli"])
@pytest.mark.parametrize("name", list(FACTORIES))
def test_unbiased_against_exact(name, kind, which):
    theta, q, W = _problem(kind)
    f, wrt = _costs(kind, which, theta, W)
    est = FACTORIES[name](kind, q, f)
    assert est.unbiased
    exact = torch.cat([g.reshape(-1) for g in exact_gradient(f, q, wrt)])
    n = 6000 if which == "plain" else 3000
    draws, out = gradient_draws(est, f, q, wrt, n, generator=torch.Generator().manual_seed(7))
    assert torch.isfinite(draws).all()
    assert_mean_matches(draws, exact)
    assert out.n_evals == getattr(est, "n_samples", 1)


class _WrongLeaveOneOut(Estimator):
    """RLOO with a plausible slip: weights (f_s − f̄)/S instead of /(S − 1) (biased by (S−1)/S)."""

    def estimate(self, f, latent, generator):
        z = latent.sample((3,), generator)
        fz = latent.call_f(f, latent.encode(z), (3,))
        w = (fz.detach() - fz.detach().mean(0)) / 3
        return Estimate(fz.mean(0) + (w * zero_valued(latent.log_prob(z))).sum(0), fz.mean(0), 3)


@pytest.mark.parametrize("kind", ["categorical", "bernoulli"])
def test_the_z_test_catches_a_subtle_bias(kind):
    # Power check for the test above: the same z-test at the same n rejects an
    # estimator whose only flaw is a 2/3 factor on the score term.
    theta, q, W = _problem(kind)
    f, wrt = _costs(kind, "logq", theta, W)
    exact = exact_gradient(f, q, wrt)[0]
    draws, _ = gradient_draws(
        _WrongLeaveOneOut(), f, q, wrt, 3000, generator=torch.Generator().manual_seed(7)
    )
    with pytest.raises(AssertionError, match="max"):
        assert_mean_matches(draws, exact)


def _recording(f):
    seen = []

    def g(z):
        seen.append(z.detach().clone())
        return f(z)

    return g, seen


@pytest.mark.parametrize("kind", ["categorical", "bernoulli"])
def test_rloo_and_vargrad_follow_their_formulas_per_draw(kind):
    # With f = log q − log p: RLOO = 1/(S−1) Σ (f_s − f̄) ∇log q_s + 1/S Σ ∇log q_s (pathwise),
    # VarGrad = 1/(S−1) Σ (f_s − f̄) ∇log q_s exactly.
    theta, q, W = _problem(kind)
    S = 5

    def kl_cost(z):
        return _log_q(z, theta, kind) - (torch.sin(_linear(z, W, kind)) + _linear(z, W, kind))

    probs = torch.softmax(theta, -1) if kind == "categorical" else torch.sigmoid(theta)
    for cls in (RLOO, VarGrad):
        f, seen = _recording(kl_cost)
        out = cls(S)(f, q, generator=torch.Generator().manual_seed(3))
        (g,) = torch.autograd.grad(out.loss.sum(), theta, retain_graph=True)
        z = seen[0]  # S + batch + var (+ C)
        fz = kl_cost(z).detach()
        score = (z - probs).detach()  # ∇θ log q(z_s) for each sample
        w = (fz - fz.mean(0)) / (S - 1)
        w = w.reshape(w.shape + (1,) * (score.dim() - w.dim()))
        expected = (w * score).sum(0)
        if cls is RLOO:
            expected = expected + score.mean(0)
        torch.testing.assert_close(g, expected)
        torch.testing.assert_close(out.value, fz.mean(0))
        assert out.loss.detach().equal(out.value) and out.n_evals == S


@pytest.mark.parametrize("kind", ["categorical", "bernoulli"])
def test_vargrad_on_a_kl_objective(kind):
    # f(z) = log q_θ(z) − log p_φ(z), p_φ a prior with its own parameters and a
    # pairwise (non-factorised) energy: θ-gradient (∇KL) and φ-gradient against Exact.
    theta, q, _ = _problem(kind, seed=1)
    gen = torch.Generator().manual_seed(11)
    phi = torch.randn(theta.shape[1:], dtype=D64, generator=gen).requires_grad_()
    pair = torch.tensor(0.8, dtype=D64, requires_grad=True)

    def log_p(z):
        unary = (z * torch.log_softmax(phi, -1)).sum((-1, -2)) if kind == "categorical" else None
        if unary is None:
            unary = z * nn.functional.logsigmoid(phi) + (1 - z) * nn.functional.logsigmoid(-phi)
            unary = unary.sum(-1)
        flat = z.flatten(-2) if kind == "categorical" else z
        return unary + pair * (flat[..., :-1] * flat[..., 1:]).sum(-1)

    def kl(z):
        return _log_q(z, theta, kind) - log_p(z)

    wrt = [theta, phi, pair]
    exact = torch.cat([g.reshape(-1) for g in exact_gradient(kl, q, wrt)])
    draws, _ = gradient_draws(
        VarGrad(4), kl, q, wrt, 4000, generator=torch.Generator().manual_seed(5)
    )
    assert_mean_matches(draws, exact)


def test_rloo_variance_below_reinforce_with_a_large_mean():
    theta, q, W = _problem("categorical")
    f = lambda z: 100.0 + torch.sin(2 * _linear(z, W, "categorical"))  # noqa: E731
    gen = torch.Generator().manual_seed(2)
    var = {
        name: gradient_stats(est, f, q, theta, 3000, generator=gen).variance
        for name, est in [("rf1", REINFORCE()), ("rf4", REINFORCE(n_samples=4)), ("rloo", RLOO(4))]
    }
    # The score term's magnitude scales with the mean cost (100) for REINFORCE and
    # with the spread of f (< 2) for RLOO: orders of magnitude apart.
    assert var["rloo"] * 100 < var["rf4"] < var["rf1"]


@pytest.mark.parametrize(
    "make",
    [lambda: REINFORCE(), lambda: REINFORCE(EMA(0.5), 2), lambda: RLOO(2), lambda: VarGrad(2)],
)
def test_contract_shapes_values_and_generators(make):
    theta = torch.randn(3, 5, dtype=D64, generator=torch.Generator().manual_seed(0))
    theta.requires_grad_()
    f = lambda z: (z * torch.arange(5.0, dtype=D64)).sum(-1) ** 2  # noqa: E731
    for dist in (Categorical, OneHotCategorical):
        out = make()(f, dist(logits=theta), generator=torch.Generator().manual_seed(1))
        assert out.loss.shape == (3,) and out.value.shape == (3,)
        assert out.loss.detach().equal(out.value) and not out.value.requires_grad
        # Same seed, same estimate, whether the generator comes at call time or
        # from the constructor; a call-time generator takes precedence.
        a = make()(f, dist(logits=theta), generator=torch.Generator().manual_seed(4)).loss
        est = make()
        est.generator = torch.Generator().manual_seed(4)
        c = est(f, dist(logits=theta)).loss
        other = torch.Generator().manual_seed(4)
        est2 = make()
        est2.generator = torch.Generator().manual_seed(123)
        d = est2(f, dist(logits=theta), generator=other).loss
        (ga,) = torch.autograd.grad(a.sum(), theta)
        (gc,) = torch.autograd.grad(c.sum(), theta)
        (gd,) = torch.autograd.grad(d.sum(), theta)
        torch.testing.assert_close(ga, gc)
        torch.testing.assert_close(ga, gd)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("make", [lambda: REINFORCE(EMA(0.9)), lambda: RLOO(3), lambda: VarGrad(3)])
def test_masked_logits_and_half_precision(make, dtype):
    logits = torch.tensor([[0.0, -torch.inf, 30.0, -2.0]] * 2, dtype=dtype).requires_grad_()
    q = Independent(Categorical(logits=logits.unsqueeze(0).expand(3, 2, 4)), 1)
    seen = []

    def f(z):
        seen.append(z)
        return (z * torch.arange(4.0, dtype=dtype)).sum((-1, -2))

    out = make()(f, q, generator=torch.Generator().manual_seed(0))
    (g,) = torch.autograd.grad(out.loss.sum(), logits)
    assert torch.isfinite(out.loss).all() and torch.isfinite(g).all()
    assert out.loss.dtype == dtype and seen[0][..., 1].sum() == 0  # masked: never sampled
    assert g[..., 1].abs().sum() == 0


def test_devices():
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        theta = torch.zeros(2, 3, device=dev, requires_grad=True)
        q = Independent(Bernoulli(logits=theta), 1)
        for est in (REINFORCE(EMA(0.9)), RLOO(2), VarGrad(2)):
            out = est(lambda b: (b - 0.3).pow(2).sum(-1), q)
            out.loss.sum().backward()
            assert out.loss.device.type == dev and theta.grad.device.type == dev


def test_bad_hyper_parameters_and_distributions():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n_samples"):
            REINFORCE(n_samples=bad)
    for bad in (1, 0, 2.0):
        with pytest.raises(ValueError, match=r"n_samples=(1|0|2\.0)\b"):
            RLOO(bad)
        with pytest.raises(ValueError, match="n_samples"):
            VarGrad(bad)
    with pytest.raises(ValueError, match="baseline"):
        REINFORCE(baseline=0.5)
    with pytest.raises(TypeError, match=r"RLOO.*Normal"):
        RLOO(2)(lambda z: z, Normal(torch.zeros(2), 1.0))
