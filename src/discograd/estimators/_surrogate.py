"""Surrogate losses: values whose gradient is a given estimate (private).

Every estimator returns ``Estimate.loss``, a surrogate whose value is the
Monte-Carlo estimate of E[f] and whose gradient with respect to the logits is
the gradient estimate. The pieces:

* :func:`zero_valued` — ``x - x.detach()``: zero in value, ``x``'s gradient
  (re-exported as :func:`discograd.estimators.zero_valued`);
* :func:`sum_event` — the sum over a data point's variable (and category) dims;
* :func:`surrogate` — ``f_value + zero_valued(Σ grad · logits)`` for an estimator
  that computes its per-logit gradient estimate explicitly (the augment-REINFORCE
  family, REBAR, RELAX), safe for masked and deterministic logits and in 16 bits.
"""

from __future__ import annotations

import torch
from torch import Tensor

from discograd.estimators._ops import as_dtype, compute_dtype

__all__ = ["sum_event", "surrogate", "zero_valued"]


def zero_valued(x: Tensor) -> Tensor:
    """``x - x.detach()``: zero in value, the gradient of ``x`` in backward."""
    return x - x.detach()


def sum_event(x: Tensor, n_event: int) -> Tensor:
    """Sum over the last ``n_event`` dimensions (none: ``x`` itself)."""
    if n_event <= 1:
        return x.sum(-1) if n_event else x
    return x.flatten(x.dim() - n_event).sum(-1)


def surrogate(
    f_value: Tensor, grad: Tensor, logits: Tensor, n_event: int, *, finite: bool = False
) -> Tensor:
    """``f_value + zero_valued(Σ grad · logits)``: the value of ``f_value``, whose
    gradient w.r.t. ``logits`` is ``grad`` (summed over the last ``n_event`` dims).

    The zero-valued term is formed in the compute dtype (float32 for 16-bit
    logits): a gradient estimate beyond float16's range (costs of 1e4 and
    more) would otherwise become ``inf`` and ``inf · 0`` a NaN loss. Masked
    (``-inf``) and deterministic (``±inf`` Bernoulli) logits get no gradient
    and never produce NaN. ``finite=True`` (``Latent.finite``: no such logit)
    skips that masking: three fewer passes.
    """
    cdt = compute_dtype(logits.dtype)
    if finite:
        g, safe = as_dtype(grad.detach(), cdt), as_dtype(logits, cdt)
    else:
        mask = torch.isfinite(logits)
        safe = as_dtype(torch.where(mask, logits, 0.0), cdt)
        g = torch.where(mask, as_dtype(grad.detach(), cdt), 0.0)
    return f_value + as_dtype(sum_event(g * zero_valued(safe), n_event), f_value.dtype)
