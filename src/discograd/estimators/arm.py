r"""Augment-REINFORCE-Merge estimators for Bernoulli variables: ARM and DisARM.

Logits :math:`\theta_d` of :math:`D` Bernoulli variables sharing one cost; one
uniform :math:`u_d` per variable gives two antithetic samples of the whole
vector, evaluated in one call of ``f``. Both return, as ``Estimate.value`` and
the pathwise term of the loss, the mean of ``f`` over the two samples (each is
an exact sample of ``q``), so parameters inside ``f`` and uses of θ inside ``f``
get the averaged pathwise gradient. When the two samples coincide the score
term is zero and ``f`` is evaluated once: ``n_evals`` (a tensor of shape
``q.batch_shape``) is 1 or 2 per data point.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from discograd.estimators._ops import as_dtype, as_shape, compute_dtype, open_uniform
from discograd.estimators._surrogate import surrogate
from discograd.estimators.base import CostFn, Estimate, Estimator, Latent
from discograd.estimators.registry import register

__all__ = ["ARM", "DisARM"]


class _Antithetic(Estimator):
    """Two antithetic samples from one uniform per variable: Bernoulli only, unbiased."""

    supports = frozenset({"bernoulli"})
    unbiased = True
    needs_grad_f = False
    has_temperature = False

    def _pair(self, theta: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover
        raise NotImplementedError

    def _grad(self, theta: Tensor, u: Tensor, z: Tensor, df: Tensor) -> Tensor:  # pragma: no cover
        """The per-logit estimate; ``z`` [2, B, V]: the pair as 0./1. in ``theta``'s dtype."""
        raise NotImplementedError

    def estimate(self, f: CostFn, latent: Latent, generator: torch.Generator | None) -> Estimate:
        B = math.prod(latent.batch_shape)
        V = latent.n_vars
        theta = as_shape(latent.logits, (B, V))
        th = as_dtype(theta.detach(), compute_dtype(latent.dtype))
        u = open_uniform((B, V), th.dtype, latent.device, generator)
        b1, b2 = self._pair(th, u)
        if torch.equal(b1, b2):  # one configuration per data point: one call, no score term
            z1 = latent.encode(b1)  # [B, V]
            f1 = latent.call_f(f, as_shape(z1, latent.index_shape()), ())
            values = f1.reshape(1, B).expand(2, B)
            z = z1.unsqueeze(0).expand(2, B, V)
            count: float | Tensor = 1.0
        else:
            # Both samples in one call of f. No per-data-point deduplication: f takes one
            # sample dimension for the whole batch, so a data point whose pair coincides
            # saves nothing unless every one does, and sorting configurations of
            # hundreds of variables cost more than the decoder of a linear VAE.
            pair = latent.encode(as_shape(torch.stack([b1, b2]), latent.index_shape((2,))))
            values = as_shape(latent.call_f(f, pair, (2,)), (2, B))
            z = as_shape(pair, (2, B, V))
            # A number when every data point costs the same (the usual case): no tensor
            # for the caller to reduce and read back. Counting the differing variables
            # (a sum) is cheaper on CPU than any() over them.
            n_differ = (b1 != b2).sum(-1)  # [B]
            count = 2.0
            if int(n_differ.amin()) == 0:  # the one device synchronisation
                count = (1 + (n_differ > 0).to(torch.int64)).reshape(latent.batch_shape)
        df = as_dtype((values[0] - values[1]).detach(), th.dtype).unsqueeze(-1)
        grad = self._grad(th, u, as_dtype(z, th.dtype), df)  # surrogate() zeroes it at ±inf
        mean_f = 0.5 * (values[0] + values[1])
        loss = surrogate(mean_f, grad, theta, 1, finite=latent.finite)
        return Estimate(
            loss=as_shape(loss, latent.batch_shape),
            value=as_shape(mean_f.detach(), latent.batch_shape),
            n_evals=count,
        )


@register("arm")
class ARM(_Antithetic):
    r"""Augment-REINFORCE-Merge (ARM) for Bernoulli variables.

    .. math:: g_d = \big[f(b^{(1)}) - f(b^{(2)})\big]\,(u_d - \tfrac12), \qquad
              b^{(1)} = 1[u > \sigma(-\theta)],\quad b^{(2)} = 1[u < \sigma(\theta)],

    :math:`u \sim \mathcal U(0, 1)^D`, the gradient with respect to the logits
    :math:`\theta`. Both samples are exact draws of :math:`q` (antithetic), so
    :math:`\mathbb E[g] = \nabla_\theta \mathbb E[f]`; for one variable
    :math:`\mathbb E[g] = \sigma(\theta)\sigma(-\theta)(f(1) - f(0))`.
    Two evaluations of ``f`` per data point (one when the samples coincide).

    Yin & Zhou 2019, "ARM: Augment-REINFORCE-Merge Gradient for Stochastic
    Binary Networks" (ICLR).
    """

    def _pair(self, theta, u):
        return u > torch.sigmoid(-theta), u < torch.sigmoid(theta)

    def _grad(self, theta, u, z, df):
        return df * (u - 0.5)


@register("disarm")
class DisARM(_Antithetic):
    r"""DisARM: ARM Rao-Blackwellised over the noise that does not change the samples.

    .. math:: g_d = \tfrac12\big[f(b) - f(\tilde b)\big]\,(-1)^{\tilde b_d}\,
              1[b_d \ne \tilde b_d]\,\sigma(|\theta_d|), \qquad
              b = 1[u < \sigma(\theta)],\quad \tilde b = 1[1 - u < \sigma(\theta)].

    It is the conditional expectation of ARM given the pair :math:`(b, \tilde b)`,
    so unbiased with variance no larger than ARM's; for one variable
    :math:`\mathbb E[g] = \min(p, 1-p)\max(p, 1-p)(f(1) - f(0))` with
    :math:`p = \sigma(\theta)`. Two evaluations of ``f`` per data point (one when
    :math:`b = \tilde b`, which also makes the gradient zero).

    Dong, Mnih & Tucker 2020, "DisARM: An Antithetic Gradient Estimator for
    Binary Latent Variables" (NeurIPS); the same estimator appears in Yin et al. 2020.
    """

    def _pair(self, theta, u):
        p = torch.sigmoid(theta)
        # 1 - u < p written as u > 1 - p: 1 - u rounds to 1 for the smallest u,
        # which would draw b~ = 0 where p = 1 (a +inf logit); 1 - p is exactly 0 there.
        return u < p, u > 1 - p

    def _grad(self, theta, u, z, df):
        # (-1)^{b~_d} 1[b_d != b~_d] = b_d - b~_d: one subtraction of the evaluated pair.
        return 0.5 * df * (z[0] - z[1]) * torch.sigmoid(theta.abs())
