r"""IndeCateR: the CatLog-derivative trick, one variable at a time, summed exactly over its values.

For independent variables :math:`X_1, \dots, X_D` with distributions
:math:`p_d`, the gradient of :math:`\mathbb E[f(X)]` splits into one term per
variable, and each term sums exactly over that variable's :math:`C` values
with the other variables held at a sample:

.. math:: \nabla_\theta \mathbb E[f(X)] = \sum_{d=1}^D
          \mathbb E_{X_{-d}}\Big[\sum_{k=1}^C \nabla_\theta p_d(k)\,
          f(X_{-d}, X_d = k)\Big].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from discograd.estimators._common import NSamplesEstimator
from discograd.estimators._ops import as_dtype, compute_dtype
from discograd.estimators._surrogate import surrogate
from discograd.estimators.base import CostFn, Estimate, Latent
from discograd.estimators.registry import register

__all__ = ["IndeCateR"]


def _values_possible(latent: Latent) -> Tensor:
    """``[B, V, C]`` bool: which values each variable can take (C = 2 for Bernoulli,
    value 0 then 1)."""
    B, V = math.prod(latent.batch_shape), latent.n_vars
    logits = latent.logits.detach()
    if latent.kind == "categorical":
        return ~torch.isneginf(logits.reshape(B, V, -1))
    theta = logits.reshape(B, V)
    return torch.stack([~torch.isposinf(theta), ~torch.isneginf(theta)], -1)


@register("indecater")
class IndeCateR(NSamplesEstimator):
    r"""IndeCateR: REINFORCE Rao-Blackwellised over each variable's values (CatLog trick).

    With :math:`n` independent samples :math:`x^{(s)} \sim q`, and
    :math:`F_{d,k} = \frac1n \sum_s f(x^{(s)}_{-d}, X_d = k)` (the cost with
    variable :math:`d` set to value :math:`k` and the others held at sample
    :math:`s`), the gradient with respect to variable :math:`d`'s logits is

    .. math:: \hat g_{d} = \sum_{k=1}^{C} F_{d,k}\, \nabla_{\theta_d} p_d(k),
              \qquad \frac{\partial \hat g}{\partial \theta_{d,j}}
              = p_d(j)\Big(F_{d,j} - \sum_k p_d(k) F_{d,k}\Big)

    for categorical variables (softmax logits), and
    :math:`\sigma(\theta_d)\sigma(-\theta_d)(F_{d,1} - F_{d,0})` for Bernoulli
    ones (:math:`C = 2`). It is unbiased because the variables are independent:
    :math:`\nabla \mathbb E[f] = \sum_d \mathbb E_{X_{-d}}[\sum_k f(X_{-d}, k)\nabla p_d(k)]`
    (the CatLog-derivative trick). The exact inner sum removes all of the
    variance that variable :math:`d`'s own sampling causes; what remains comes
    from the other variables, so it is very low when :math:`f` is nearly
    additive, and with :math:`D = 1` the score part is exact in every draw.

    ``Estimate.value`` and the pathwise term (parameters inside ``f``, uses of θ
    inside ``f``) are the mean of ``f`` at the :math:`n` samples themselves, as in
    the official code. A value of probability zero (a masked category, the
    impossible value of a deterministic Bernoulli variable) never reaches ``f``:
    its configuration is replaced by the sample's own, and its weight
    :math:`\nabla p_d(k)` is zero.

    Cost: :math:`D \cdot C \cdot n` evaluations of ``f`` per data point, in one call
    (``n_evals``; :math:`n` of them are the samples themselves, repeated once per
    variable, so the distinct configurations are :math:`n(D(C-1)+1)`). It is the
    most expensive estimator here for wide variables: budget it at equal
    evaluations, not at equal samples.

    De Smet, Sansone & Zuidberg Dos Martires 2023, "Differentiable Sampling of
    Categorical Distributions Using the CatLog-Derivative Trick" (NeurIPS);
    official code ``ML-KULeuven/catlog``.

    Args:
        n_samples: :math:`n \ge 1`, the number of outer samples.
        generator: default ``torch.Generator``.
    """

    supports = frozenset({"bernoulli", "categorical"})
    unbiased = True
    needs_grad_f = False
    has_temperature = False

    def __init__(self, n_samples: int = 1, *, generator: torch.Generator | None = None) -> None:
        super().__init__(n_samples, owner="IndeCateR", minimum=1, generator=generator)

    def estimate(self, f: CostFn, latent: Latent, generator: torch.Generator | None) -> Estimate:
        n = self.n_samples
        B, V = math.prod(latent.batch_shape), latent.n_vars
        C = latent.num_categories if latent.kind == "categorical" else 2
        cdt = compute_dtype(latent.dtype)
        z = latent.sample((n,), generator).reshape(n, B, V).to(torch.int64)
        possible = _values_possible(latent)  # [B, V, C]
        # zz[s, d, k, b, v]: sample s with variable d set to k. An impossible value k
        # keeps the sample's own value (never shown to f; its weight is 0).
        ks = torch.arange(C, device=z.device).view(1, 1, C, 1)
        own = z.permute(0, 2, 1).unsqueeze(2)  # [n, V(d), 1, B]
        set_to = torch.where(possible.permute(1, 2, 0).unsqueeze(0), ks, own)  # [n, V, C, B]
        zz = z.view(n, 1, 1, B, V).expand(n, V, C, B, V).clone()
        eye = torch.eye(V, dtype=torch.bool, device=z.device).view(1, V, 1, 1, V)
        zz = torch.where(eye, set_to.unsqueeze(-1), zz)
        sample_shape = (n, V, C)
        zz = zz.reshape(latent.index_shape(sample_shape))
        if latent.kind == "bernoulli":
            zz = zz.to(latent.dtype)
        values = latent.call_f(f, latent.encode(zz), sample_shape).reshape(n, V, C, B)
        F = as_dtype(values.detach(), cdt).mean(0).permute(2, 0, 1)  # [B, V, C]
        theta = latent.logits.reshape((B, V, C) if latent.kind == "categorical" else (B, V))
        th = as_dtype(theta.detach(), cdt)
        if latent.kind == "categorical":
            probs = torch.softmax(th, -1)
            # probs is exactly 0 at masked categories: F there is the sample's own
            # (finite) cost, so the product stays 0.
            grad = probs * (F - (probs * F).sum(-1, keepdim=True))
        else:
            grad = torch.sigmoid(th) * torch.sigmoid(-th) * (F[..., 1] - F[..., 0])
        # The samples' own costs: variable 0 set to its sampled value.
        at_sample = values[:, 0].gather(1, z[:, :, 0].unsqueeze(1)).squeeze(1)  # [n, B]
        mean_f = at_sample.mean(0)
        n_event = 2 if latent.kind == "categorical" else 1
        loss = surrogate(mean_f, grad, theta, n_event, finite=latent.finite)
        return Estimate(
            loss=loss.reshape(latent.batch_shape),
            value=mean_f.detach().reshape(latent.batch_shape),
            n_evals=float(n * V * C),
        )
