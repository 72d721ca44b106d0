r"""Exact: the gradient by enumeration, the ground truth for every other estimator.

.. math:: L(\theta) = \sum_{z} q_\theta(z)\, f(z), \qquad
          \nabla L = \sum_z \big[f(z)\,\nabla q_\theta(z) + q_\theta(z)\,\nabla f(z)\big],

where the sum runs over all :math:`C^D` joint configurations of the :math:`D`
variables of a data point (:math:`2^D` for Bernoulli). Autograd through the
weighted sum gives both terms, so parameters inside ``f`` and uses of
:math:`\theta` inside ``f`` get their exact gradients too.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from discograd.estimators._ops import compute_dtype
from discograd.estimators.base import CostFn, Estimate, Estimator, Latent
from discograd.estimators.registry import register

__all__ = ["Exact", "ExactMultiSample"]


@register("exact")
class Exact(Estimator):
    """Exact expectation and gradient by enumerating the support (one call of ``f``).

    Args:
        max_support: the largest number of joint configurations per data point
            it will enumerate; above it, ``ValueError`` (the cost grows as
            :math:`C^D`, and ``f`` sees ``support × batch`` inputs at once).
        generator: unused (Exact draws nothing); accepted for the common contract.

    ``n_evals`` is the support size. Impossible values (masked categories,
    zero probabilities, the other value of a Bernoulli variable whose logit is
    ``±inf``) never reach ``f``: ``f`` sees a possible value in their place and
    the configuration gets weight 0. A ``±inf`` Bernoulli logit is a
    deterministic variable, summed over as such. The sum runs in the compute
    dtype (float32 for 16-bit logits) and is returned in ``f``'s dtype.
    """

    supports = frozenset({"bernoulli", "categorical"})
    unbiased = True
    needs_grad_f = False
    has_temperature = False
    exact = True

    def __init__(self, max_support: int = 2**16, *, generator: torch.Generator | None = None):
        super().__init__(generator=generator)
        if isinstance(max_support, bool) or not isinstance(max_support, int) or max_support < 1:
            raise ValueError(f"max_support must be a positive int, got max_support={max_support!r}")
        self.max_support = max_support

    def extra_repr(self) -> str:
        return f"max_support={self.max_support}"

    def estimate(self, f: CostFn, latent: Latent, generator: torch.Generator | None) -> Estimate:
        n = latent.support_size()
        if n > self.max_support:
            raise ValueError(
                f"Exact: the support has {latent.num_categories}^{latent.n_vars} = {n} "
                f"configurations per data point, above max_support={self.max_support}; "
                "raise max_support or use a sampling estimator"
            )
        z = latent.enumerate_support()
        lp = latent.log_prob_vars(z)
        possible_var = lp > -torch.inf
        # Impossible values never reach f: each is replaced by a possible one
        # (f may be undefined there, e.g. log q). Its configuration has weight 0.
        z_eval = torch.where(possible_var, z, latent.likely())
        fz = latent.call_f(f, latent.encode(z_eval), (n,))
        log_q = lp.flatten(-len(latent.var_shape)).sum(-1) if latent.var_shape else lp
        log_q = log_q.to(compute_dtype(latent.dtype))
        possible = log_q > -torch.inf
        # where() before the product: 0 * inf in value or gradient would be NaN.
        weights = torch.where(possible, log_q, 0.0).exp()
        terms = torch.where(possible, weights * torch.where(possible, fz, 0.0), 0.0)
        loss: Tensor = terms.sum(0).to(fz.dtype)
        return Estimate(loss=loss, value=loss.detach(), n_evals=n)


@register("exact_multi_sample")
class ExactMultiSample(Estimator):
    r"""The exact negative K-sample bound and its gradient, by enumerating K-tuples.

    Called as ``est(log_weight, q)`` (``multi_sample``): with :math:`N` joint
    configurations per data point it sums over all :math:`N^K` tuples,

    .. math:: -\mathcal L_K(\theta) = -\sum_{z_1..z_K} \prod_k q_\theta(z_k)\,
              \log \frac1K \sum_k e^{\ell(z_k)},

    evaluating ``log_weight`` once on the :math:`N` configurations; autograd
    through the sum gives the exact gradient, for the logits and for parameters
    (and uses of :math:`\theta`) inside ``log_weight``. The ground truth of
    :class:`~discograd.estimators.VIMCO`, ``LocalDisARM`` and ``LocalARMS``.

    Args:
        n_samples: :math:`K \ge 1` (``K = 1`` is the ELBO).
        max_support: the largest number of K-tuples per data point,
            :math:`N^K`, it will sum over; above it, ``ValueError``.
        generator: unused (nothing is drawn); accepted for the common contract.

    ``n_evals`` is :math:`N`. Impossible values never reach ``log_weight`` and
    their tuples get weight 0, as in :class:`Exact`.
    """

    supports = frozenset({"bernoulli", "categorical"})
    unbiased = True
    needs_grad_f = False
    has_temperature = False
    exact = True
    multi_sample = True

    def __init__(
        self,
        n_samples: int = 2,
        max_support: int = 2**16,
        *,
        generator: torch.Generator | None = None,
    ):
        super().__init__(generator=generator)
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive int, got n_samples={n_samples!r}")
        if isinstance(max_support, bool) or not isinstance(max_support, int) or max_support < 1:
            raise ValueError(f"max_support must be a positive int, got max_support={max_support!r}")
        self.n_samples = n_samples
        self.max_support = max_support

    @property
    def bound_samples(self) -> int:
        return self.n_samples

    def extra_repr(self) -> str:
        return f"n_samples={self.n_samples}, max_support={self.max_support}"

    def estimate(self, f: CostFn, latent: Latent, generator: torch.Generator | None) -> Estimate:
        K = self.n_samples
        n = latent.support_size()
        tuples = n**K
        if tuples > self.max_support:
            raise ValueError(
                f"ExactMultiSample: {n} configurations per data point give {n}^{K} = {tuples} "
                f"tuples of n_samples={K}, above max_support={self.max_support}; raise "
                "max_support or use a sampling estimator"
            )
        z = latent.enumerate_support()
        lp = latent.log_prob_vars(z)
        z_eval = torch.where(lp > -torch.inf, z, latent.likely())
        ell = latent.call_f(f, latent.encode(z_eval), (n,))
        cdt = compute_dtype(latent.dtype)
        log_q = (lp.flatten(-len(latent.var_shape)).sum(-1) if latent.var_shape else lp).to(cdt)
        possible = log_q > -torch.inf
        safe_log_q = torch.where(possible, log_q, 0.0)
        # Tuple t holds configurations index[t, 0..K-1] (digits of t in base n).
        codes = torch.arange(tuples, device=latent.device)
        powers = n ** torch.arange(K - 1, -1, -1, device=latent.device)
        index = (codes.unsqueeze(-1) // powers) % n  # [n^K, K]
        lw = ell.to(cdt)[index]  # [n^K, K, batch]
        bound = torch.logsumexp(lw, 1) - math.log(K)
        weight = safe_log_q[index].sum(1).exp()
        ok = possible[index].all(1)
        # where() before the product: 0 * inf in value or gradient would be NaN.
        terms = torch.where(ok, weight * torch.where(ok, bound, 0.0), 0.0)
        loss = -terms.sum(0).to(ell.dtype)
        return Estimate(loss=loss, value=loss.detach(), n_evals=n)
