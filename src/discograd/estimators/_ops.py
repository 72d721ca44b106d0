"""Numerics the estimator families share: compute dtype, noise, one-hot rows, softmax.

Private. The estimator modules take these from here rather than from
:mod:`discograd.functional`'s private helpers, so that what the estimators rely on
from the sample-level layer is listed in one place:

* :func:`compute_dtype` — the dtype noise, softmax and score terms are formed in
  (float32 for 16-bit logits);
* :func:`uniform` — plain ``U[0, 1)`` draws (chunk-parallel for large CPU tensors);
* :func:`open_uniform` — uniform draws clamped into ``[tiny, 1 - eps/2]``, so that
  their ``log`` and ``log1p(-u)`` are finite;
* :func:`logistic_from_uniform` — logistic noise ``log u - log(1 - u)``;
* :func:`gumbel_from_uniform_`, :func:`perturbed` — Gumbel noise and ``logits + G``;
* :func:`divide_by_tau` — ``scores / tau`` with a finite gradient at ``-inf`` scores;
* :func:`softmax_last`, :func:`one_hot` — fast CPU forms of the two ops;
* :func:`is_compiling` — whether ``torch.compile`` is tracing;
* :func:`as_dtype` — ``x.to(dtype)`` without a dispatch when it already has it;
* :func:`as_shape` — ``x.reshape(shape)`` without a dispatch (and an autograd node)
  when it already has it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from discograd.functional import _compute_dtype as compute_dtype
from discograd.functional import _divide_by_tau as divide_by_tau
from discograd.functional import _gumbel_from_uniform_ as gumbel_from_uniform_
from discograd.functional import _is_compiling as is_compiling
from discograd.functional import _open_uniform as open_uniform
from discograd.functional import _perturbed as perturbed
from discograd.functional import _softmax_last as softmax_last
from discograd.functional import _uniform as uniform

__all__ = [
    "as_dtype",
    "as_shape",
    "compute_dtype",
    "divide_by_tau",
    "gumbel_from_uniform_",
    "is_compiling",
    "logistic_from_uniform",
    "one_hot",
    "open_uniform",
    "perturbed",
    "softmax_last",
    "uniform",
]


def as_dtype(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x.to(dtype)``; ``x`` itself, with no operator call, when it has that dtype.

    A no-op ``to`` still goes through the dispatcher: microseconds that add up
    on the hot path of small models.
    """
    return x if x.dtype == dtype else x.to(dtype)


def as_shape(x: Tensor, shape: tuple[int, ...]) -> Tensor:
    """``x.reshape(shape)``; ``x`` itself when it has that shape.

    A no-op reshape still costs a dispatch and, on a tensor that requires grad,
    a view node that the backward pass walks.
    """
    return x if x.shape == shape else x.reshape(shape)


def logistic_from_uniform(u: Tensor) -> Tensor:
    """Standard logistic noise ``log u - log(1 - u)`` from uniform draws in ``(0, 1)``.

    Finite when ``u`` comes from :func:`open_uniform`.
    """
    return u.log() - torch.log1p(-u)


def one_hot(index: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """``F.one_hot(index, num_classes).to(dtype)`` as rows of the identity: one gather.

    F.one_hot fills an int64 tensor and converts it: several times slower on CPU.
    """
    eye = torch.eye(num_classes, dtype=dtype, device=index.device)
    return eye.index_select(0, index.reshape(-1)).view(index.shape + (num_classes,))
