"""Problems for the ARMS and multi-sample-bound tests: ±inf logits allowed.

``B`` data points with different logits, ``D`` variables, decoder weights ``w``:

* the cost (for ``est(f, q)``) ``f(z) = sin(2a) + a² + log q(z)``;
* the log weight (for ``est(log_weight, q)``) ``ℓ(z) = sin(2a) − a²/2 + 0.3 − log q(z)``,
  an ELBO-like term that uses both a decoder parameter and θ,

with ``a = Σ z w``. ``log q`` is written so that a deterministic variable (logit
±inf) contributes 0 and a finite gradient, never NaN. :func:`draws` returns
``n`` independent gradient draws w.r.t. ``(θ, w)`` from one vectorised call (θ
and ``w`` replicated along a new leading batch dimension).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Categorical, Independent

from discograd.estimators import Exact, ExactMultiSample

from conftest import assert_mean_matches

D64 = torch.float64


def dist(kind: str, logits: torch.Tensor):
    base = Categorical if kind == "categorical" else Bernoulli
    return Independent(base(logits=logits, validate_args=False), 1)


def log_q(kind: str, theta: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    if kind == "categorical":
        lp = torch.log_softmax(theta, -1)
        return torch.where(z > 0.5, lp, 0.0).sum((-1, -2))
    return torch.where(z > 0.5, F.logsigmoid(theta), F.logsigmoid(-theta)).sum(-1)


def _a(kind: str, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (z * w).sum((-1, -2) if kind == "categorical" else -1)


def cost(kind: str, theta: torch.Tensor, w: torch.Tensor):
    def f(z):
        a = _a(kind, z, w)
        return torch.sin(2 * a) + a**2 + log_q(kind, theta, z)

    return f


def log_weight(kind: str, theta: torch.Tensor, w: torch.Tensor):
    def lw(z):
        a = _a(kind, z, w)
        return torch.sin(2 * a) - 0.5 * a**2 + 0.3 - log_q(kind, theta, z)

    return lw


def problem(kind: str, B: int = 3, D: int = 3, C: int = 3, seed: int = 0, masked: bool = True):
    """Logits (different per data point, some ±inf / masked) and decoder weights."""
    gen = torch.Generator().manual_seed(seed)
    shape = (B, D, C) if kind == "categorical" else (B, D)
    theta = 1.2 * torch.randn(shape, dtype=D64, generator=gen)
    if masked and kind == "categorical":
        theta[1 % B, 0, 1] = -math.inf
        theta[-1, -1, 0] = -math.inf
        theta[-1, -1, 2] = -math.inf  # one possible category: a deterministic variable
    elif masked:
        theta[1 % B, 0] = math.inf
        theta[-1, -1] = -math.inf
    w = torch.randn(shape[1:], dtype=D64, generator=gen)
    return theta, w


def impossible(theta: torch.Tensor, kind: str) -> torch.Tensor:
    """Entries of θ that must get exactly zero gradient."""
    if kind == "categorical":
        return torch.isneginf(theta)
    return torch.isinf(theta)


def _recording(fn, seen: list):
    def recording(z):
        seen.append(z.detach())
        return fn(z)

    return recording


def draws(
    estimator, kind: str, theta, w, n: int, seed: int, multi: bool = True, seen: list | None = None
):
    """``[n, P]`` gradient draws w.r.t. ``(θ, w)`` flattened, and the Estimate.

    ``seen``: a list that receives the samples each call of the function was given
    (detached), for the draw-by-draw comparisons with a reference."""
    leaf = theta.detach().expand((n,) + theta.shape).clone().requires_grad_()
    w_leaf = w.detach().expand((n, 1) + w.shape).clone().requires_grad_()
    fn = (log_weight if multi else cost)(kind, leaf, w_leaf)
    if seen is not None:
        fn = _recording(fn, seen)
    out = estimator(fn, dist(kind, leaf), generator=torch.Generator().manual_seed(seed))
    g_theta, g_w = torch.autograd.grad(out.loss.sum(), (leaf, w_leaf))
    return torch.cat([g_theta.reshape(n, -1), g_w.reshape(n, -1)], 1), out


def exact(kind: str, theta, w, n_samples: int | None = None):
    """The exact gradient (flattened) and value: of E[f] (``n_samples=None``) or of
    the negative ``n_samples``-sample bound."""
    leaf = theta.detach().clone().requires_grad_()
    w_leaf = w.detach().clone().requires_grad_()
    if n_samples is None:
        out = Exact()(cost(kind, leaf, w_leaf), dist(kind, leaf))
    else:
        out = ExactMultiSample(n_samples)(log_weight(kind, leaf, w_leaf), dist(kind, leaf))
    g_theta, g_w = torch.autograd.grad(out.loss.sum(), (leaf, w_leaf))
    return torch.cat([g_theta.reshape(-1), g_w.reshape(-1)]), out.value


def assert_unbiased(estimator, kind: str, theta, w, n: int, seed: int, n_evals: float) -> None:
    """``n`` draws of ``estimator`` on the cost: finite, their gradient and value means
    z-tested against ``Exact``, ``n_evals`` as stated, ``loss`` valued as ``value``,
    and exactly zero gradient at the impossible logits."""
    g, out = draws(estimator, kind, theta, w, n, seed=seed, multi=False)
    assert torch.isfinite(g).all()
    g_star, v_star = exact(kind, theta, w)
    assert_mean_matches(g, g_star)
    assert_mean_matches(out.value, v_star)
    assert out.n_evals == n_evals
    torch.testing.assert_close(out.loss.detach(), out.value)
    g_theta = g[:, : theta.numel()].reshape(-1, *theta.shape)
    assert (g_theta[:, impossible(theta, kind)] == 0).all()


def n_theta(theta: torch.Tensor) -> int:
    return theta.numel()


def same_mean_and_variance(
    a: torch.Tensor, b: torch.Tensor, z_tol: float, split: int
) -> tuple[float, float, float]:
    """Independent draws ``[n, P]`` of two implementations: the means agree (z-test of
    the difference, coordinate by coordinate) and so do the total variances (trace
    of the covariance, standard errors from 20 batches), separately for the logit
    columns ``[:split]`` (the score part, small next to the decoder's pathwise
    part) and the others. Returns (max |z|, variance ratio of the logits, of the rest)."""
    diff = a.mean(0) - b.mean(0)
    se = torch.sqrt(a.var(0) / a.shape[0] + b.var(0) / b.shape[0])
    spread = se > 1e-12
    z = float((diff[spread].abs() / se[spread]).max())
    assert z < z_tol, f"means differ: max |z| = {z:.2f}"
    assert torch.allclose(diff[~spread], torch.zeros_like(diff[~spread]), atol=1e-9)
    ratios = []
    for cols in (slice(0, split), slice(split, None)):
        ta = torch.stack([c[:, cols].var(0).sum() for c in a.chunk(20)])
        tb = torch.stack([c[:, cols].var(0).sum() for c in b.chunk(20)])
        va, vb = float(ta.mean()), float(tb.mean())
        se_v = math.hypot(float(ta.std()), float(tb.std())) / math.sqrt(20)
        assert abs(va - vb) < z_tol * se_v, f"variances differ: {va:.5g} vs {vb:.5g} ({se_v:.3g})"
        ratios.append(va / vb)
    return z, ratios[0], ratios[1]
