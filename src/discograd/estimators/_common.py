"""Set-up that several estimator families repeat.

Private.

* :func:`check_n_samples` — validate a sample-count hyper-parameter;
* :class:`NSamplesEstimator` — base of the estimators configured by ``n_samples``
  alone (the check and the repr);
* :func:`flat_logits` — the logits as ``[B, V]`` (``[B, V, C]``) and their detached
  copy in the compute dtype, the opening of every coupled estimator.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from discograd.estimators._ops import compute_dtype
from discograd.estimators.base import Estimator, Latent

__all__ = ["NSamplesEstimator", "check_n_samples", "flat_logits", "leave_one_out_mean"]


def check_n_samples(n_samples: object, owner: str, minimum: int = 2) -> int:
    """``ValueError`` naming ``n_samples`` unless it is an int of at least ``minimum``."""
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < minimum:
        raise ValueError(
            f"{owner}: n_samples must be an int >= {minimum}, got n_samples={n_samples!r}"
        )
    return n_samples


class NSamplesEstimator(Estimator):
    """An estimator whose one hyper-parameter is ``n_samples``.

    Subclasses keep their own ``__init__`` (the registry reads the default from its
    signature) and pass their name, which the ``ValueError`` carries.
    """

    def __init__(
        self,
        n_samples: int,
        *,
        owner: str,
        minimum: int = 2,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(generator=generator)
        self.n_samples = check_n_samples(n_samples, owner, minimum)

    def extra_repr(self) -> str:
        return f"n_samples={self.n_samples}"


def flat_logits(latent: Latent) -> tuple[int, int, Tensor, Tensor]:
    """``(B, V, theta, th)``: ``B`` data points, ``V`` variables, ``theta`` the logits
    reshaped to ``[B, V]`` (``[B, V, C]`` for categorical variables; still in the
    graph, for the surrogate) and ``th`` the same detached, in the compute dtype."""
    B, V = math.prod(latent.batch_shape), latent.n_vars
    if latent.kind == "categorical":
        theta = latent.logits.reshape(B, V, latent.num_categories)
    else:
        theta = latent.logits.reshape(B, V)
    return B, V, theta, theta.detach().to(compute_dtype(latent.dtype))


def leave_one_out_mean(x: Tensor) -> Tensor:
    """Leave-one-out means along dim 0: entry k is the mean of the others."""
    rest = x.sum(0, keepdim=True) - x
    # At K = 2 the division is by 1, exact: skip the pass.
    return rest if x.shape[0] == 2 else rest / (x.shape[0] - 1)
