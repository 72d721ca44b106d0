r"""Coupled (antithetic) multi-sample estimators for Bernoulli variables: ARMS.

ARMS draws :math:`n \ge 2` samples of the whole vector of :math:`D` Bernoulli
variables whose uniforms are negatively correlated, variable by variable (a
Dirichlet copula), and applies the leave-one-out estimator with a correction
factor that removes the bias the correlation would otherwise cause. At
:math:`n = 2` the copula is the antithetic pair :math:`(u, 1 - u)` and ARMS is
DisARM.

The copula helpers here are shared with :class:`~discograd.estimators.multisample.LocalARMS`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from discograd.estimators._ops import compute_dtype, open_uniform
from discograd.estimators._surrogate import surrogate
from discograd.estimators.base import CostFn, Estimate, Estimator, Latent
from discograd.estimators.registry import register

__all__ = ["ARMS"]


def check_n_samples(n_samples: object, owner: str, minimum: int = 2) -> int:
    """``ValueError`` naming ``n_samples`` unless it is an int of at least ``minimum``."""
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < minimum:
        raise ValueError(
            f"{owner}: n_samples must be an int >= {minimum}, got n_samples={n_samples!r}"
        )
    return n_samples


def dirichlet_copula(
    n: int, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, generator
) -> Tensor:
    r"""``n`` uniforms per entry of ``shape`` (shape ``(n,) + shape``), pairwise
    negatively correlated: :math:`u_k = (1 - d_k)^{n-1}` with
    :math:`d \sim \mathrm{Dir}(1_n)` drawn as normalised exponentials.

    Each :math:`d_k` is Beta(1, n - 1), so :math:`1 - d_k` has CDF :math:`t^{n-1}`
    and :math:`u_k` is exactly uniform. At ``n = 2`` the pair is :math:`(1 - d_1, d_1)`,
    an antithetic pair.
    """
    e = -open_uniform((n, *shape), dtype, device, generator).log()
    d = e / e.sum(0, keepdim=True)
    return (1 - d).pow(n - 1)


def copula_bits(theta: Tensor, uc: Tensor) -> Tensor:
    r"""Bernoulli samples from copula uniforms ``uc`` (``(n,) + theta.shape``).

    :math:`b = 1[u < p]` for :math:`p = \sigma(\theta) < \frac12`; for
    :math:`p \ge \frac12` the uniforms are flipped, :math:`b = 1[1 - u < p]`, which
    is what makes the rarer value the one whose indicators are negatively
    correlated, as in the official code. Written with :math:`\sigma(-\theta)` and ``>=`` so that a
    logit of ``+inf`` gives 1 even where ``uc`` is exactly 0.
    """
    low = theta < 0
    return torch.where(low, uc < torch.sigmoid(theta), uc >= torch.sigmoid(-theta))


def copula_debias(theta: Tensor, n: int) -> Tensor:
    r"""The correction factor :math:`\frac{p(1-p)}{p - P(b_i = b_j = 1)}` of ARMS.

    With :math:`m = \min(p, 1-p) = \sigma(-|\theta|)` and
    :math:`J(m) = \max(2 m^{1/(n-1)} - 1, 0)^{n-1}` (the probability that two
    copula uniforms are both below :math:`m`), :math:`p - P(b_i = b_j = 1) = m - J(m)`
    on both sides of :math:`\frac12`, so the factor is
    :math:`\sigma(|\theta|)\, m / (m - J(m))`: :math:`\sigma(|\theta|)` exactly
    where :math:`J(m) = 0` (every :math:`m \le 2^{-(n-1)}`, including the
    deterministic variables), never 0/0.
    """
    m = torch.sigmoid(-theta.abs())
    joint = (2 * m.pow(1.0 / (n - 1)) - 1).clamp_min(0).pow(n - 1)
    positive = joint > 0
    ratio = torch.where(positive, m / torch.where(positive, m - joint, 1.0), 1.0)
    return torch.sigmoid(theta.abs()) * ratio


def arms_grad(theta: Tensor, b: Tensor, values: Tensor, n: int) -> Tensor:
    r""":math:`\frac{1}{n-1}\sum_k (f_k - \bar f)(b_k - p)\,c(\theta)`, the ARMS
    gradient w.r.t. the logits: ``theta`` ``[B, V]``, ``b`` ``[n, B, V]`` (bool),
    ``values`` ``[n, B]`` (detached, ``theta``'s dtype)."""
    centred = (values - values.mean(0, keepdim=True)).unsqueeze(-1)
    score = b.to(theta.dtype) - torch.sigmoid(theta)
    return (centred * score).sum(0) * copula_debias(theta, n) / (n - 1)


@register("arms")
class ARMS(Estimator):
    r"""ARMS: antithetic REINFORCE multi-sample estimator for Bernoulli variables.

    .. math:: g_d = \frac{1}{n-1} \sum_{k=1}^n \big(f(b_k) - \bar f\big)
              \big(b_{k,d} - \sigma(\theta_d)\big)\,
              \frac{p_d(1-p_d)}{p_d - P(b_{i,d} = b_{j,d} = 1)},

    the gradient with respect to the logits :math:`\theta`, :math:`p = \sigma(\theta)`,
    :math:`\bar f` the mean of the :math:`n` costs. The :math:`n` samples of each
    variable come from a Dirichlet copula, :math:`u_k = (1 - d_k)^{n-1}`,
    :math:`d \sim \mathrm{Dir}(1_n)`, with :math:`b_k = 1[u_k < p]` when
    :math:`p < \frac12` and :math:`1[1 - u_k < p]` otherwise; the copulas of
    different variables are independent. Each :math:`b_k` is an exact sample
    of :math:`q` but two of them are negatively correlated, which would bias
    the leave-one-out estimator by the factor :math:`(p - P(b_i = b_j = 1))/(p(1-p))`;
    the last factor undoes it, with
    :math:`P(b_i = b_j = 1) = \max(2 p^{1/(n-1)} - 1, 0)^{n-1}` for :math:`p < \frac12`
    (and :math:`2p - 1` plus the same expression at :math:`1 - p` otherwise).
    At :math:`n = 2` the pair is antithetic and ARMS is DisARM exactly.

    ``Estimate.value`` and the pathwise term are the mean of ``f`` over the
    :math:`n` samples. Cost: :math:`n` evaluations of ``f`` per data point, in one
    call. The Dirichlet copula is the official code's default (``grad_type=arms``;
    its Gaussian-copula variant is not implemented here).

    Dimitriev & Zhou 2021, "ARMS: Antithetic-REINFORCE-Multi-Sample Gradient for
    Binary Variables" (ICML).

    Args:
        n_samples: :math:`n \ge 2`, the number of coupled samples.
        generator: default ``torch.Generator``.
    """

    supports = frozenset({"bernoulli"})
    unbiased = True
    needs_grad_f = False
    has_temperature = False

    def __init__(self, n_samples: int = 4, *, generator: torch.Generator | None = None):
        super().__init__(generator=generator)
        self.n_samples = check_n_samples(n_samples, "ARMS")

    def extra_repr(self) -> str:
        return f"n_samples={self.n_samples}"

    def estimate(self, f: CostFn, latent: Latent, generator: torch.Generator | None) -> Estimate:
        n = self.n_samples
        B, V = math.prod(latent.batch_shape), latent.n_vars
        theta = latent.logits.reshape(B, V)
        th = theta.detach().to(compute_dtype(latent.dtype))
        uc = dirichlet_copula(n, (B, V), th.dtype, latent.device, generator)
        b = copula_bits(th, uc)
        x = latent.encode(b.reshape(latent.index_shape((n,))))
        values = latent.call_f(f, x, (n,)).reshape(n, B)
        grad = arms_grad(th, b, values.detach().to(th.dtype), n)
        mean_f = values.mean(0)
        loss = surrogate(mean_f, grad, theta, 1, finite=latent.finite)
        return Estimate(
            loss=loss.reshape(latent.batch_shape),
            value=mean_f.detach().reshape(latent.batch_shape),
            n_evals=float(n),
        )
