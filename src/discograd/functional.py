r"""Sample-level operations: Gumbel noise, the Gumbel-max trick, Gumbel-Softmax.

These are the pathwise building blocks every relaxed estimator uses.

* Gumbel noise: :math:`G = -\log(-\log U)`, :math:`U \sim \mathcal U(0, 1)`.
* Gumbel-max trick: :math:`\arg\max_k (\theta_k + G_k) \sim \mathrm{Cat}(\mathrm{softmax}\,\theta)`.
* Gumbel-Softmax / Concrete sample (Jang et al. 2017; Maddison et al. 2017):
  :math:`y = \mathrm{softmax}((\theta + G) / \tau)`.
* Straight-through (Bengio et al. 2013): the value of a hard sample with the
  gradient of a soft one.

Numerics. Uniform draws are clamped into :math:`[\text{tiny}, 1 - \epsilon/2]`
before the double logarithm, so Gumbel noise is finite whatever the random
stream produces (``torch.rand`` returns an exact ``0`` with probability
:math:`2^{-24}` per float32 draw, which at millions of draws per step is a
certainty). Half-precision inputs are upcast to float32 for the noise, the
division by ``tau`` and the softmax, then cast back: ``logits / tau`` overflows
float16 at ``tau = 1e-3`` already for logits of 66.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["gumbel_max", "gumbel_softmax", "sample_gumbel", "straight_through"]

_HALF = (torch.float16, torch.bfloat16)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype noise and softmax are computed in: float32 for 16-bit inputs."""
    return torch.float32 if dtype in _HALF else dtype


def _check_logits(logits: Tensor) -> None:
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must have a floating dtype, got logits.dtype={logits.dtype}")


def _is_compiling() -> bool:
    # torch.compiler.is_compiling appeared in torch 2.3; we support 2.2.
    check = getattr(torch.compiler, "is_compiling", None)
    return bool(check is not None and check())


def _check_tau(tau: float | Tensor) -> None:
    if isinstance(tau, Tensor):
        if not tau.is_floating_point():
            raise TypeError(f"tau must be a float or floating tensor, got tau.dtype={tau.dtype}")
        if not _is_compiling() and not bool(((tau > 0) & torch.isfinite(tau)).all()):
            raise ValueError(f"tau must be positive and finite, got tau={tau}")
        return
    if isinstance(tau, bool) or not isinstance(tau, (int, float)):
        raise TypeError(f"tau must be a float or a tensor, got {type(tau).__name__}")
    if not (tau > 0 and math.isfinite(tau)):
        raise ValueError(f"tau must be positive and finite, got tau={tau}")


def sample_gumbel(
    shape: Sequence[int] | torch.Size,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Standard Gumbel noise :math:`G = -\log(-\log U)`, always finite.

    Args:
        shape: shape of the returned tensor.
        dtype: floating dtype (default: ``torch.get_default_dtype()``). 16-bit
            dtypes are drawn in float32 and rounded, so their tails are those of
            float32 noise.
        device: device of the returned tensor.
        generator: a ``torch.Generator`` on ``device`` for reproducible draws.

    Returns:
        A tensor of i.i.d. Gumbel(0, 1) draws. In float32 every value lies in
        about ``[-4.5, 16.7]``: the clamp replaces probability-:math:`2^{-24}`
        events, never the bulk of the distribution.
    """
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating dtype, got dtype={dtype}")
    cdt = _compute_dtype(dtype)
    u = torch.rand(tuple(shape), dtype=cdt, device=device, generator=generator)
    return _gumbel_from_uniform_(u).to(dtype)


def _gumbel_from_uniform_(u: Tensor) -> Tensor:
    """In place: uniform [0, 1) draws to finite Gumbel noise."""
    finfo = torch.finfo(u.dtype)
    # Lower clamp: rand can return exactly 0 (log 0). Upper clamp: some backends
    # draw from (0, 1], and log(-log 1) is -log 0.
    return u.clamp_(finfo.tiny, 1.0 - finfo.eps / 2).log_().neg_().log_().neg_()


def _perturbed(logits: Tensor, generator: torch.Generator | None) -> Tensor:
    """``logits + G`` in the compute dtype (float32 for 16-bit logits)."""
    cdt = _compute_dtype(logits.dtype)
    u = torch.rand(logits.shape, dtype=cdt, device=logits.device, generator=generator)
    return logits.to(cdt) + _gumbel_from_uniform_(u)


def _divide_by_tau(scores: Tensor, tau: float | Tensor) -> Tensor:
    """``scores / tau`` whose gradient stays finite where ``scores`` is ``-inf``."""
    if isinstance(tau, Tensor):
        tau = tau.to(scores.dtype)
        if tau.requires_grad:
            # A learned temperature: d(x/tau)/dtau = -x/tau^2 is NaN at x = -inf,
            # so divide finite stand-ins and re-mask after the division.
            masked = torch.isneginf(scores)
            return (scores.masked_fill(masked, 0.0) / tau).masked_fill(masked, -math.inf)
    return scores / tau


def _one_hot_like(scores: Tensor, dim: int) -> Tensor:
    index = scores.argmax(dim, keepdim=True)
    return torch.zeros_like(scores).scatter_(dim, index, 1.0)


def gumbel_max(logits: Tensor, dim: int = -1, generator: torch.Generator | None = None) -> Tensor:
    r"""An exact one-hot sample of :math:`\mathrm{Categorical}(\mathrm{softmax}(\text{logits}))`.

    Uses the Gumbel-max trick :math:`\text{onehot}(\arg\max_k(\theta_k + G_k))`.
    Logits may be unnormalised; ``-inf`` entries mask categories, which are then
    never chosen (at least one entry along ``dim`` must be finite).

    Returns:
        A detached one-hot tensor with the shape and dtype of ``logits``.
    """
    _check_logits(logits)
    with torch.no_grad():
        return _one_hot_like(_perturbed(logits.detach(), generator), dim).to(logits.dtype)


class _StraightThrough(torch.autograd.Function):
    """Forward: ``hard``. Backward: the incoming gradient goes to ``soft`` unchanged."""

    generate_vmap_rule = True

    @staticmethod
    def forward(hard: Tensor, soft: Tensor) -> Tensor:  # type: ignore[override]
        shape = torch.broadcast_shapes(hard.shape, soft.shape)
        return hard.to(soft.dtype).expand(shape).clone()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        ctx.soft_shape = inputs[1].shape

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor]:  # type: ignore[override]
        return None, grad.sum_to_size(ctx.soft_shape)


def straight_through(hard: Tensor, soft: Tensor) -> Tensor:
    r"""The value of ``hard`` with the gradient of ``soft``.

    Forward returns ``hard`` exactly (cast to ``soft.dtype``); backward treats the
    op as the identity on ``soft``: :math:`\partial\,\text{out} / \partial\,\text{soft} = I`.
    ``hard`` receives no gradient. Unlike the common idiom
    ``hard - soft.detach() + soft``, the forward value is exact (that idiom can
    round ``1`` to ``1 - ulp``) and stays finite when ``soft`` holds infinities.
    """
    if not isinstance(hard, Tensor) or not isinstance(soft, Tensor):
        raise TypeError(
            "straight_through expects tensors, got "
            f"hard={type(hard).__name__}, soft={type(soft).__name__}"
        )
    if not soft.is_floating_point():
        raise TypeError(f"soft must have a floating dtype, got soft.dtype={soft.dtype}")
    return _StraightThrough.apply(hard.detach(), soft)


def gumbel_softmax(
    logits: Tensor,
    tau: float | Tensor = 1.0,
    hard: bool = False,
    dim: int = -1,
    generator: torch.Generator | None = None,
    *,
    eps: float | None = None,
) -> Tensor:
    r"""Gumbel-Softmax (Concrete) sample :math:`y = \mathrm{softmax}((\text{logits} + G)/\tau)`.

    A drop-in for :func:`torch.nn.functional.gumbel_softmax` (Jang et al. 2017,
    "Categorical Reparameterization with Gumbel-Softmax"; Maddison et al. 2017,
    "The Concrete Distribution"), with ``generator=`` for reproducibility.

    Args:
        logits: unnormalised log-probabilities; ``-inf`` masks a category, which
            then gets exactly 0 (soft) and is never chosen (hard).
        tau: temperature > 0, a float or a tensor broadcastable to ``logits``.
        hard: if True, return the one-hot :math:`\arg\max_k(\text{logits}_k + G_k)`
            (an exact categorical sample) with the gradient of the soft sample:
            the straight-through Gumbel-Softmax estimator.
        dim: the category dimension.
        generator: a ``torch.Generator`` for reproducible noise.
        eps: accepted for signature compatibility with torch and ignored: the
            noise here never takes ``log(0)``, so no epsilon is needed.

    Returns:
        A tensor with the shape and dtype of ``logits``, finite (values and
        gradients) for finite or ``-inf``-masked logits and any ``tau > 0``.
    """
    del eps  # see docstring
    _check_logits(logits)
    _check_tau(tau)
    scores = _perturbed(logits, generator)
    soft = torch.softmax(_divide_by_tau(scores, tau), dim)
    if hard:
        out = straight_through(_one_hot_like(scores.detach(), dim), soft)
    else:
        out = soft
    return out.to(logits.dtype)
