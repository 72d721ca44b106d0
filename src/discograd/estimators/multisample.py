r"""Estimators for multi-sample variational bounds: VIMCO, local DisARM, local ARMS.

Calling convention (``multi_sample = True``)::

    out = est(log_weight, q)          # log_weight(z) = log p(x, z) - log q(z)
    out.loss.mean().backward()        # gradient of the negative K-sample bound
    out.value                         # -log (1/K) sum_k exp(log_weight(z_k)), detached

``log_weight`` maps samples of shape ``S + q.batch_shape + event`` (as ``f`` does)
to log importance weights :math:`\ell(z)` of shape ``S + q.batch_shape``. The
objective is the K-sample bound

.. math:: \mathcal L_K(\theta) = \mathbb E_{z_1..z_K \sim q_\theta}
          \Big[\log \frac1K \sum_{k=1}^K e^{\ell(z_k)}\Big],

``Estimate.value`` is the Monte-Carlo estimate of :math:`-\mathcal L_K` (a cost,
like every other value) and the gradient of ``Estimate.loss`` estimates
:math:`-\nabla \mathcal L_K`: a score part for the logits and, by autograd
through :math:`\hat{\mathcal L} = \log \frac1K \sum_k e^{\ell(z_k)}`, the pathwise
part :math:`\sum_k \tilde w_k \nabla \ell(z_k)` (:math:`\tilde w` the normalised
weights) for parameters inside ``log_weight`` (a decoder, a prior) and for uses of
:math:`\theta` inside it (the :math:`-\log q` term). Every estimator here exposes
``bound_samples``, the :math:`K` of the bound it estimates (the matching ground
truth is :class:`~discograd.estimators.exact.ExactMultiSample` with
``n_samples=bound_samples``).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from discograd.estimators._common import NSamplesEstimator, flat_logits, leave_one_out_mean
from discograd.estimators._ops import as_dtype, as_shape, compute_dtype, open_uniform
from discograd.estimators._surrogate import surrogate, zero_valued
from discograd.estimators.base import CostFn, Estimate, Estimator, Latent
from discograd.estimators.coupled import (
    arms_grad,
    copula_bits,
    dirichlet_copula,
)
from discograd.estimators.registry import register

__all__ = ["VIMCO", "LocalARMS", "LocalDisARM", "log_mean_exp", "swap_one_out"]


def log_mean_exp(x: Tensor, dim: int = 0) -> Tensor:
    """:math:`\\log \\frac1K \\sum_k e^{x_k}` along ``dim`` (stable)."""
    return torch.logsumexp(x, dim) - math.log(x.shape[dim])


@functools.lru_cache(maxsize=32)
def _eye(K: int, device: torch.device) -> Tensor:
    """``[K, K]`` bool identity, made once per size and device (read only)."""
    return torch.eye(K, dtype=torch.bool, device=device)


def swap_one_out(ell: Tensor, replacement: Tensor) -> Tensor:
    r"""``[K, ...]``: the bound with sample ``k``'s log weight replaced by ``replacement[k]``,
    :math:`\log \frac1K \big(\sum_{j \ne k} e^{\ell_j} + e^{r_k}\big)` at entry ``k``.

    Formed as a log-sum-exp over a ``[K, K, ...]`` matrix (row ``k``: ``ell`` with
    its ``k``-th entry swapped): no cancellation as a difference of sums would have.
    """
    K = ell.shape[0]
    eye = _eye(K, ell.device).view((K, K) + (1,) * (ell.dim() - 1))
    rows = torch.where(eye, replacement.unsqueeze(1), ell.unsqueeze(0))
    return log_mean_exp(rows, 1)


class _MultiSampleBound(Estimator):
    """Family base: ``est(log_weight, q)``, unbiased for the K-sample bound."""

    unbiased = True
    needs_grad_f = False
    has_temperature = False
    multi_sample = True

    @property
    def bound_samples(self) -> int:  # pragma: no cover - every subclass sets it
        raise NotImplementedError


class _MultiSampleCount(NSamplesEstimator, _MultiSampleBound):
    """A multi-sample bound whose :math:`K` is ``n_samples``."""

    @property
    def bound_samples(self) -> int:
        return self.n_samples


def _finish(loss: Tensor, bound: Tensor, latent: Latent, ell: Tensor, evals: int) -> Estimate:
    """The Estimate of ``-bound`` with ``loss`` (compute dtype, ``[B]``) in ``ell``'s dtype."""
    shape = latent.batch_shape
    return Estimate(
        loss=as_shape(as_dtype(loss, ell.dtype), shape),
        value=as_shape(as_dtype((-bound).detach(), ell.dtype), shape),
        n_evals=float(evals),
    )


@register("vimco")
class VIMCO(_MultiSampleCount):
    r"""VIMCO: leave-one-out learning signals for the K-sample bound (Bernoulli and categorical).

    With :math:`K` independent samples, log weights :math:`\ell_k = \ell(z_k)` and
    :math:`\hat L = \log \frac1K \sum_k e^{\ell_k}`, the estimate of
    :math:`\nabla \mathcal L_K` is

    .. math:: \sum_k \big(\hat L - \hat L_{-k}\big)\,\nabla_\theta \log q(z_k)
              + \sum_k \tilde w_k \nabla \ell_k, \qquad
              \hat L_{-k} = \log \frac1K \Big(\sum_{j\ne k} e^{\ell_j}
              + e^{\frac{1}{K-1}\sum_{j \ne k} \ell_j}\Big),

    :math:`\tilde w_k = e^{\ell_k} / \sum_j e^{\ell_j}`: the held-out sample is
    replaced by the geometric mean of the others, a baseline that does not
    depend on :math:`z_k`, so the estimate is unbiased. ``loss`` is the
    negative of :math:`\hat L + \sum_k \mathrm{sg}(\hat L - \hat L_{-k}) \log q(z_k)`
    (zero-valued score part). Cost: :math:`K` evaluations of ``log_weight`` per
    data point, in one call.

    Mnih & Rezende 2016, "Variational Inference for Monte Carlo Objectives" (ICML).

    Args:
        n_samples: :math:`K \ge 2`.
        generator: default ``torch.Generator``.
    """

    supports = frozenset({"bernoulli", "categorical"})

    def __init__(self, n_samples: int = 4, *, generator: torch.Generator | None = None):
        super().__init__(n_samples, owner="VIMCO", generator=generator)

    def estimate(self, f: CostFn, latent: Latent, generator: torch.Generator | None) -> Estimate:
        K = self.n_samples
        if latent.kind == "bernoulli":
            return self._bernoulli(f, latent, generator)
        z = latent.sample((K,), generator)
        ell = latent.call_f(f, latent.encode(z), (K,))
        cdt = compute_dtype(latent.dtype)
        lw = ell.to(cdt)
        bound = log_mean_exp(lw, 0)
        signal = self._signal(lw, bound)
        # log q(z_k) of sampled values is finite (impossible values are never
        # drawn), and its gradient at masked / deterministic logits is 0.
        log_q = latent.log_prob(z).to(cdt)
        score = zero_valued((signal * log_q).sum(0))
        return _finish(-(bound + score), bound, latent, ell, K)

    def _signal(self, lw: Tensor, bound: Tensor) -> Tensor:
        """``[K, B]``: the learning signals L̂ - L̂_{-k} (detached)."""
        ld = lw.detach()
        return bound.detach().unsqueeze(0) - swap_one_out(ld, leave_one_out_mean(ld))

    def _bernoulli(self, f: CostFn, latent: Latent, generator: torch.Generator | None) -> Estimate:
        """Bernoulli variables: the score part Σ_k signal_k ∇ log q(z_k) formed explicitly,
        Σ_k signal_k (z_k - σ(θ)), and handed to :func:`surrogate` (the same gradient as
        differentiating Σ_k signal_k log q(z_k), without the log-probabilities' forward and
        backward passes)."""
        K = self.n_samples
        B, V, theta, th = flat_logits(latent)
        p = torch.sigmoid(th)
        z = latent.sample((K,), generator, probs=p)  # this σ(θ), not a second one
        ell = latent.call_f(f, z, (K,))
        lw = as_dtype(as_shape(ell, (K, B)), th.dtype)
        bound = log_mean_exp(lw, 0)
        signal = self._signal(lw, bound)
        # The loss is -(bound + score): its gradient is Σ_k signal_k (σ(θ) - z_k).
        neg_grad = ((p - as_dtype(z.view(K, B, V), th.dtype)) * signal.unsqueeze(-1)).sum(0)
        loss = surrogate(-bound, neg_grad, theta, 1, finite=latent.finite)
        return _finish(loss, bound, latent, ell, K)


@register("local_disarm")
class LocalDisARM(_MultiSampleBound):
    r"""Local DisARM: DisARM applied to each sample of the K-sample bound (Bernoulli).

    :math:`K` antithetic pairs :math:`b_k = 1[u_k < \sigma(\theta)]`,
    :math:`\tilde b_k = 1[1 - u_k < \sigma(\theta)]` (independent across
    :math:`k`); the bound is formed from :math:`b_1..b_K`, and the partner
    :math:`\tilde b_k` of sample :math:`k` gives the bound with :math:`b_k`
    swapped for it, :math:`\hat L_{k \leftarrow \tilde b_k}`. The estimate of
    :math:`\nabla_\theta \mathcal L_K` is

    .. math:: \sum_k \tfrac12 \big(\hat L - \hat L_{k \leftarrow \tilde b_k}\big)
              (-1)^{\tilde b_{k}}\, 1[b_k \ne \tilde b_k]\, \sigma(|\theta|)
              + \sum_k \tilde w_k \nabla \ell(b_k),

    (per variable; DisARM's gradient of :math:`\mathbb E_{b_k}[\hat L]` with the
    other samples fixed, summed over :math:`k`), plus the pathwise part through
    :math:`\hat L` (the official code leaves out the pathwise part w.r.t. the
    encoder's :math:`-\log q` term, whose mean is not zero for :math:`K > 1`;
    here it is kept, so the estimate is unbiased). ``value`` is
    :math:`-\hat L` from the :math:`K` samples :math:`b_k`. Cost: :math:`2K`
    evaluations of ``log_weight`` per data point, in one call.

    Dong, Mnih & Tucker 2020, "DisARM: An Antithetic Gradient Estimator for
    Binary Latent Variables" (NeurIPS), §4.

    Args:
        n_pairs: :math:`K \ge 1`, the number of antithetic pairs and the bound's
            number of samples.
        generator: default ``torch.Generator``.
    """

    supports = frozenset({"bernoulli"})

    def __init__(self, n_pairs: int = 2, *, generator: torch.Generator | None = None):
        super().__init__(generator=generator)
        if isinstance(n_pairs, bool) or not isinstance(n_pairs, int) or n_pairs < 1:
            raise ValueError(f"LocalDisARM: n_pairs must be an int >= 1, got n_pairs={n_pairs!r}")
        self.n_pairs = n_pairs

    @property
    def bound_samples(self) -> int:
        return self.n_pairs

    def extra_repr(self) -> str:
        return f"n_pairs={self.n_pairs}"

    def estimate(self, f: CostFn, latent: Latent, generator: torch.Generator | None) -> Estimate:
        K = self.n_pairs
        B, V, theta, th = flat_logits(latent)
        u = open_uniform((K, B, V), th.dtype, latent.device, generator)
        p = torch.sigmoid(th)
        b, b_tilde = u < p, u > 1 - p  # not 1 - u < p: see DisARM._pair
        x = latent.encode(torch.stack([b, b_tilde]).view(latent.index_shape((2 * K,))))
        ell = latent.call_f(f, x, (2 * K,)).reshape(2, K, B)
        lw = as_dtype(ell, th.dtype)
        bound = log_mean_exp(lw[0], 0)
        ld = lw.detach()
        signal = (bound.detach().unsqueeze(0) - swap_one_out(ld[0], ld[1])).unsqueeze(-1)
        # (-1)^b̃ 1[b != b̃] is b - b̃, one subtraction of the encoded pair; the factor
        # -0.5 gives the negated gradient (the loss descends) by exact sign flips.
        xs = x.view(2, K, B, V)
        diff = as_dtype(xs[0] - xs[1], th.dtype)
        neg_grad = (-0.5 * signal * diff * torch.sigmoid(th.abs())).sum(0)
        loss = surrogate(-bound, neg_grad, theta, 1, finite=latent.finite)
        return _finish(loss, bound, latent, ell, 2 * K)


@register("local_arms")
class LocalARMS(_MultiSampleCount):
    r"""Local ARMS: ARMS applied to each sample of the K-sample bound (Bernoulli).

    :math:`K = n` independent samples :math:`b_1..b_n` form the bound
    :math:`\hat L`; a second set of :math:`n` samples :math:`\tilde b_1..\tilde b_n`,
    coupled by a Dirichlet copula as in :class:`~discograd.estimators.ARMS`,
    serves every :math:`k`: :math:`F_{k,m} = \hat L_{k \leftarrow \tilde b_m}` is
    the bound with :math:`b_k` swapped for :math:`\tilde b_m`. ARMS's estimate of
    the gradient of :math:`\mathbb E_{b_k}[\hat L]` (the other samples fixed) is
    summed over :math:`k`, which amounts to ARMS on the costs
    :math:`F_m = \sum_k F_{k,m}`:

    .. math:: \frac{1}{n-1} \sum_{m=1}^n \big(F_m - \bar F\big)
              \big(\tilde b_{m} - \sigma(\theta)\big)\,
              \frac{p(1-p)}{p - P(\tilde b_{i} = \tilde b_{j} = 1)}
              + \sum_k \tilde w_k \nabla \ell(b_k)

    (per variable), plus the pathwise part through :math:`\hat L`. The official
    code averages the :math:`n` per-sample terms instead of summing them (a
    gradient :math:`n` times too small, harmless under Adam) and leaves out the
    encoder's pathwise part; here both are as the gradient of the bound needs,
    so the estimate is unbiased. ``value`` is :math:`-\hat L`. Cost: :math:`2n`
    evaluations of ``log_weight`` per data point, in one call.

    Dimitriev & Zhou 2021, "ARMS: Antithetic-REINFORCE-Multi-Sample Gradient for
    Binary Variables" (ICML); official code: ``get_losses_arms`` in ``alekdimi/arms``.

    Args:
        n_samples: :math:`n \ge 2`, the bound's number of samples and the size of
            the coupled set.
        generator: default ``torch.Generator``.
    """

    supports = frozenset({"bernoulli"})

    def __init__(self, n_samples: int = 2, *, generator: torch.Generator | None = None):
        super().__init__(n_samples, owner="LocalARMS", generator=generator)

    def estimate(self, f: CostFn, latent: Latent, generator: torch.Generator | None) -> Estimate:
        n = self.n_samples
        B, V, theta, th = flat_logits(latent)
        p = torch.sigmoid(th)
        b = open_uniform((n, B, V), th.dtype, latent.device, generator) < p
        b_tilde = copula_bits(
            th, dirichlet_copula(n, (B, V), th.dtype, latent.device, generator), p
        )
        x = latent.encode(torch.stack([b, b_tilde]).view(latent.index_shape((2 * n,))))
        ell = latent.call_f(f, x, (2 * n,)).reshape(2, n, B)
        lw = as_dtype(ell, th.dtype)
        bound = log_mean_exp(lw[0], 0)
        ld = lw.detach()
        # log sum_{j != k} e^{l_j} for every k: the bound's other samples.
        K = n
        eye = _eye(K, th.device).unsqueeze(-1)
        rest = torch.logsumexp(torch.where(eye, -math.inf, ld[0].unsqueeze(0)), 1)  # [K, B]
        # F[k, m]: sample k swapped for the coupled sample m.
        swapped = torch.logaddexp(rest.unsqueeze(1), ld[1].unsqueeze(0)) - math.log(K)
        # The coupled samples as encoded (0./1. floats) and σ(θ) of the draw: no recomputing.
        b_coupled = x.view(2, n, B, V)[1]
        grad = arms_grad(th, b_coupled, swapped.sum(0), n, p)  # gradient of the bound
        loss = surrogate(-bound, -grad, theta, 1, finite=latent.finite)
        return _finish(loss, bound, latent, ell, 2 * n)
