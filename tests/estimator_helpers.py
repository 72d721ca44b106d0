"""Helpers shared by the statistical tests of the augment-REINFORCE and control-variate estimators.

The standard problem: ``B`` data points with different logits, ``D`` variables
sharing one nonlinear cost that also uses decoder weights ``w`` (a parameter
inside ``f``) and ``log q(z)`` (θ used inside ``f``):

    f(z) = sin(2 a) + a^2 + log q(z),   a = Σ_d,c z_dc w_dc.

:func:`draws` returns ``n`` independent gradient estimates with respect to
``(θ, w)`` from ONE vectorised call: θ and ``w`` are replicated along a new
leading batch dimension, and ``f`` of replica ``i`` uses replica ``i`` of both,
so one backward pass separates the draws exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Categorical, Independent

from discograd.diagnostics import exact_gradient

D64 = torch.float64


def dist(kind: str, logits: torch.Tensor):
    base = Categorical if kind == "categorical" else Bernoulli
    return Independent(base(logits=logits), 1)


def log_q(kind: str, q, z: torch.Tensor) -> torch.Tensor:
    """log q(z), smooth in z (so relaxed estimators see a differentiable cost);
    exact at one-hot / 0-1 points; masked categories contribute 0, never NaN."""
    if kind == "categorical":
        lg = q.base_dist.logits
        return (z * torch.where(torch.isfinite(lg), lg, 0.0)).sum((-1, -2))
    lg = q.base_dist.logits
    return (z * F.logsigmoid(lg) + (1 - z) * F.logsigmoid(-lg)).sum(-1)


def cost(kind: str, q, w: torch.Tensor):
    sum_dims = (-1, -2) if kind == "categorical" else (-1,)

    def f(z):
        a = (z * w).sum(sum_dims)
        return torch.sin(2 * a) + a**2 + log_q(kind, q, z)

    return f


def draws(estimator, kind: str, theta: torch.Tensor, w: torch.Tensor, n: int, seed: int):
    """``[n, P]`` gradient draws w.r.t. ``(θ, w)`` flattened, and the Estimate."""
    leaf = theta.detach().expand((n,) + theta.shape).clone().requires_grad_()
    w_leaf = w.detach().expand((n, 1) + w.shape).clone().requires_grad_()
    q = dist(kind, leaf)
    out = estimator(cost(kind, q, w_leaf), q, generator=torch.Generator().manual_seed(seed))
    g_theta, g_w = torch.autograd.grad(out.loss.sum(), (leaf, w_leaf), allow_unused=True)
    g_theta = torch.zeros_like(leaf) if g_theta is None else g_theta
    return torch.cat([g_theta.reshape(n, -1), g_w.reshape(n, -1)], 1), out


def exact(kind: str, theta: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    theta = theta.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    q = dist(kind, theta)
    g_theta, g_w = exact_gradient(cost(kind, q, w), q, [theta, w])
    return torch.cat([g_theta.reshape(-1), g_w.reshape(-1)])


def problem(kind: str, B: int = 3, D: int = 2, C: int = 4, seed: int = 0):
    """Logits (different per data point) and decoder weights."""
    gen = torch.Generator().manual_seed(seed)
    shape = (B, D, C) if kind == "categorical" else (B, D)
    theta = (1.5 * torch.randn(shape, dtype=D64, generator=gen)).requires_grad_()
    w = torch.randn(shape[1:], dtype=D64, generator=gen).requires_grad_()
    return theta, w


def _batch_traces(draws: torch.Tensor, n_batches: int) -> torch.Tensor:
    return torch.stack([d.var(0).sum() for d in draws.chunk(n_batches)])


def trace_var(draws: torch.Tensor, n_batches: int = 20) -> tuple[float, float]:
    """Trace of the covariance of the draws and its standard error (from batch means)."""
    traces = _batch_traces(draws, n_batches)
    return float(traces.mean()), float(traces.std() / math.sqrt(n_batches))


def assert_var_less(
    a: torch.Tensor, b: torch.Tensor, *, paired: bool = False, z: float = 4.0, n_batches: int = 20
) -> None:
    """The draws ``a`` have a smaller total variance than ``b``, by more than ``z``
    standard errors of the difference (estimated from ``n_batches`` batches;
    ``paired``: the draws share their noise, so the batch differences are used)."""
    ta, tb = _batch_traces(a, n_batches), _batch_traces(b, n_batches)
    if paired:
        d = tb - ta
        diff, se = float(d.mean()), float(d.std() / math.sqrt(n_batches))
    else:
        diff = float(tb.mean() - ta.mean())
        se = math.hypot(float(ta.std()), float(tb.std())) / math.sqrt(n_batches)
    assert diff > z * se, (
        f"variance {float(ta.mean()):.4g} not below {float(tb.mean()):.4g} "
        f"by {z} standard errors ({diff:.3g} vs se {se:.2g})"
    )
