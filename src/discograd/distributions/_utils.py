"""Shared parameter handling for the relaxed distributions."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.distributions import biject_to, constraints, transform_to, transforms

from discograd.functional import _compute_dtype, _pick, _uniform


def as_temperature(temperature: float | Tensor, like: Tensor) -> Tensor:
    """The temperature as a tensor of ``like``'s dtype and device, type-checked."""
    if isinstance(temperature, Tensor):
        if not temperature.is_floating_point():
            raise TypeError(
                f"temperature must be a float or floating tensor, got dtype {temperature.dtype}"
            )
        return temperature.to(device=like.device)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(
            f"temperature must be a float or a tensor, got {type(temperature).__name__}"
        )
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be positive and finite, got temperature={temperature}")
    # torch.full, not torch.tensor: the same value, and no warning under torch.jit.trace.
    return torch.full((), float(temperature), dtype=like.dtype, device=like.device)


def number_as_tensor(param: Any, temperature: float | Tensor) -> Any:
    """A Python number as a 0-dim tensor, as ``torch.distributions`` accepts; else ``param``.

    The dtype and device are a floating tensor temperature's, else the default
    dtype's (``broadcast_all``'s convention).
    """
    if isinstance(param, bool) or not isinstance(param, (int, float)):
        return param
    like = temperature if isinstance(temperature, Tensor) else None
    if like is not None and like.is_floating_point():
        return torch.full((), float(param), dtype=like.dtype, device=like.device)
    return torch.full((), float(param), dtype=torch.get_default_dtype())


def check_params(probs: Tensor | None, logits: Tensor | None, what: str = "a tensor") -> Tensor:
    if (probs is None) == (logits is None):
        raise ValueError("exactly one of probs or logits must be given")
    param = probs if probs is not None else logits
    if not isinstance(param, Tensor):
        raise TypeError(f"probs/logits must be {what}, got {type(param).__name__}")
    if not param.is_floating_point():
        raise TypeError(f"probs/logits must have a floating dtype, got {param.dtype}")
    return param


def _clamped_log(value: Tensor, floor: float, top: float, cdt: torch.dtype, logit: bool) -> Tensor:
    x = value.to(cdt).clamp(floor, top)
    return x.log() - torch.log1p(-x) if logit else x.log()


def _clamped_log_backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None, None]:
    (value,) = ctx.saved_tensors
    x = value.to(ctx.cdt).clamp(ctx.floor, ctx.top)
    g = grad / x
    if ctx.logit:
        g = g + grad / (1 - x)  # same sign as grad / x: no inf - inf
    big = torch.finfo(value.dtype).max
    inside = (value >= ctx.floor) & (value <= ctx.top)
    return torch.where(inside, g.clamp(-big, big), 0.0).to(value.dtype), None, None, None, None


class _ClampedLog(torch.autograd.Function):
    """``log x`` or ``logit x`` of the value clamped into ``[floor, top]``, whose gradient
    saturates instead of overflowing.

    The gradient is 0 outside ``[floor, top]``. Just inside, the true gradient
    ``grad / x`` can exceed the range of the value's dtype (``floor`` is its
    smallest normal number: ``1 / floor`` is within a factor 4 of its largest
    finite number in float32 and float64, and far beyond it for a float16 value
    evaluated in float32). An inf there turns into NaN in the next product with
    ``x`` (a softmax's or sigmoid's backward when the value is a sample), so the
    gradient is clamped to the largest finite number of the value's dtype.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(value: Tensor, floor: float, top: float, cdt: torch.dtype, logit: bool) -> Tensor:
        return _clamped_log(value, floor, top, cdt, logit)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        value, ctx.floor, ctx.top, ctx.cdt, ctx.logit = inputs
        ctx.save_for_backward(value)

    backward = staticmethod(_clamped_log_backward)


class _ClampedLogEager(torch.autograd.Function):
    """:class:`_ClampedLog` in the classic form, for eager calls (see ``functional._pick``)."""

    @staticmethod
    def forward(
        ctx, value: Tensor, floor: float, top: float, cdt: torch.dtype, logit: bool
    ) -> Tensor:
        ctx.floor, ctx.top, ctx.cdt, ctx.logit = floor, top, cdt, logit
        ctx.save_for_backward(value)
        return _clamped_log(value, floor, top, cdt, logit)

    backward = staticmethod(_clamped_log_backward)


def clamped_log(
    value: Tensor, floor: float, top: float = math.inf, *, cdt: torch.dtype, logit: bool = False
) -> Tensor:
    """``log`` (or ``logit``) of ``value`` clamped into ``[floor, top]``, computed in ``cdt``.

    The gradient is 0 outside ``[floor, top]`` and never infinite inside (see
    :class:`_ClampedLog`).
    """
    if torch.jit.is_tracing():
        # Aten ops only, so that the trace can be saved (no saturation there).
        return _clamped_log(value, floor, top, cdt, logit)
    return _pick(_ClampedLog, _ClampedLogEager).apply(value, floor, top, cdt, logit)


def uniform(shape: torch.Size, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Uniform draws in ``like``'s compute dtype (float32 for 16-bit)."""
    return _uniform(shape, _compute_dtype(like.dtype), like.device, generator)


class _Simplex(constraints.Constraint):
    """Probability vectors, with a sum tolerance that scales with the dtype.

    torch's ``constraints.simplex`` uses a fixed 1e-6, which rejects correct
    float16 samples.
    """

    event_dim = 1

    def check(self, value: Tensor) -> Tensor:
        eps = torch.finfo(value.dtype).eps if value.is_floating_point() else 0.0
        tol = max(1e-6, 4.0 * value.shape[-1] * eps)
        return (value >= 0).all(-1) & ((value.sum(-1) - 1).abs() <= tol)

    def __repr__(self) -> str:
        return "Simplex()"


simplex = _Simplex()


# The transforms torch registers for constraints.simplex, so that
# biject_to(Concrete.support) / transform_to(...) work (parameterising a
# simplex-valued quantity, as Pyro and friends do).
@biject_to.register(_Simplex)
def _biject_to_simplex(constraint: _Simplex) -> transforms.Transform:
    return transforms.StickBreakingTransform()


@transform_to.register(_Simplex)
def _transform_to_simplex(constraint: _Simplex) -> transforms.Transform:
    return transforms.SoftmaxTransform()
