r"""Sample-level operations: Gumbel noise, the Gumbel-max trick, Gumbel-Softmax.

These are the pathwise building blocks every relaxed estimator uses.

* Gumbel noise: :math:`G = -\log(-\log U)`, :math:`U \sim \mathcal U(0, 1)`.
* Gumbel-max trick: :math:`\arg\max_k (\theta_k + G_k) \sim \mathrm{Cat}(\mathrm{softmax}\,\theta)`.
* Gumbel-top-k trick: the indices of the ``k`` largest :math:`\theta_i + G_i`
  are ``k`` draws without replacement (:func:`gumbel_top_k`).
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
from typing import NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from discograd import _rng

__all__ = [
    "conditional_gumbel",
    "conditional_logistic",
    "gumbel_max",
    "gumbel_softmax",
    "gumbel_top_k",
    "sample_gumbel",
    "straight_through",
]

_HALF = (torch.float16, torch.bfloat16)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype noise and softmax are computed in: float32 for 16-bit inputs."""
    return torch.float32 if dtype in _HALF else dtype


def _check_logits(logits: Tensor) -> None:
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must have a floating dtype, got logits.dtype={logits.dtype}")


_is_compiling = _rng.is_compiling


def _transformed() -> bool:
    """True under torch.compile or a torch.func transform (vmap, grad, ...)."""
    if _is_compiling():
        return True
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return active is None or bool(active())


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
    u = _uniform(tuple(shape), cdt, device, generator)
    return _gumbel_from_uniform_(u).to(dtype)


def _uniform(
    shape: Sequence[int] | torch.Size,
    dtype: torch.dtype,
    device: torch.device | str | None,
    generator: torch.Generator | None,
) -> Tensor:
    """``torch.rand``, drawn chunk-parallel for large CPU tensors (see ``discograd._rng``)."""
    out = torch.empty(tuple(shape), dtype=dtype, device=device)
    if torch.jit.is_tracing():
        # A trace would record the chunk generators as constants, cut off from the
        # caller's seed; one plain op replays from the default stream.
        return out.uniform_(generator=generator)
    return _rng.uniform_(out, generator)


def _open_uniform(
    shape: Sequence[int] | torch.Size,
    dtype: torch.dtype,
    device: torch.device | str | None,
    generator: torch.Generator | None,
) -> Tensor:
    """Uniform draws clamped into ``[tiny, 1 - eps/2]``: ``log u`` and ``log1p(-u)`` are finite."""
    return _clamp_open_(_uniform(shape, dtype, device, generator))


def _clamp_open_(u: Tensor) -> Tensor:
    finfo = torch.finfo(u.dtype)
    # Lower clamp: rand can return exactly 0 (log 0). Upper clamp: some backends
    # draw from (0, 1], and log(-log 1) is -log 0.
    return u.clamp_(finfo.tiny, 1.0 - finfo.eps / 2)


def _gumbel_from_uniform_(u: Tensor) -> Tensor:
    """In place: uniform [0, 1) draws to finite Gumbel noise."""
    return _clamp_open_(u).log_().neg_().log_().neg_()


def _perturbed(
    logits: Tensor, generator: torch.Generator | None, shape: torch.Size | None = None
) -> Tensor:
    """``logits + G`` in the compute dtype (float32 for 16-bit logits), in few passes.

    ``shape`` (default ``logits.shape``) may add leading sample dimensions. The
    noise buffer is reused for the result: one draw, four in-place elementwise
    passes and the addition, no temporaries of the full size.
    """
    cdt = _compute_dtype(logits.dtype)
    u = _uniform(logits.shape if shape is None else shape, cdt, logits.device, generator)
    neg_g = _clamp_open_(u).log_().neg_().log_()  # log(-log u) = -G
    x = logits.to(cdt)
    if _transformed() or torch.jit.is_tracing():
        # Under vmap the noise may be unbatched while x is batched: no in place.
        # A traced graph must also replay for logits that require grad, which
        # the out= below refuses.
        return x - neg_g
    if x.requires_grad and torch.is_grad_enabled():
        # out= refuses autograd; in place on the noise buffer keeps one allocation.
        return neg_g.neg_().add_(x)
    return torch.sub(x, neg_g, out=neg_g)


def _divide_by_tau(scores: Tensor, tau: float | Tensor) -> Tensor:
    """``scores / tau`` whose gradient stays finite where ``scores`` is ``-inf``."""
    if isinstance(tau, Tensor):
        tau = tau.to(scores.dtype)
        if tau.requires_grad:
            # A learned temperature: d(x/tau)/dtau = -x/tau^2 is NaN at x = -inf,
            # so divide finite stand-ins and re-mask after the division.
            masked = torch.isneginf(scores)
            return (scores.masked_fill(masked, 0.0) / tau).masked_fill(masked, -math.inf)
    elif tau == 1:
        return scores  # skip a full pass at the default temperature
    return scores / tau


def _softmax_last(x: Tensor) -> Tensor:
    """``torch.softmax(x, -1)``, faster on CPU for a few categories; differentiable to any order.

    torch's CPU softmax kernel vectorises along the softmax dimension and runs
    several times slower (forward and backward) when it has fewer than 16
    entries; there ``exp(x - max) / sum`` is used instead (the subtracted max is
    a constant, so the value and every derivative are the softmax's; ``-inf``
    entries give 0 with zero gradient). Other devices, dtypes and sizes, and
    ``torch.jit.trace``, call ``torch.softmax``.
    """
    if (
        x.device.type != "cpu"
        or x.dtype not in _WIDE
        or torch.jit.is_tracing()  # one op, and no branch on a traced size
        or x.shape[-1] >= 16
    ):
        return torch.softmax(x, -1)
    e = (x - x.detach().amax(-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True)


_WIDE = (torch.float32, torch.float64)


def _one_hot_like(scores: Tensor, dim: int, dtype: torch.dtype | None = None) -> Tensor:
    index = scores.argmax(dim, keepdim=True)
    out = torch.zeros_like(scores, dtype=dtype)
    if _transformed():
        return out.scatter(dim, index, 1.0)  # in-place scatter_ has no vmap batching rule
    return out.scatter_(dim, index, 1.0)


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
        return _one_hot_like(_perturbed(logits.detach(), generator), dim, logits.dtype)


def _copy_as(hard: Tensor, soft: Tensor) -> Tensor:
    """A fresh tensor holding ``hard`` broadcast to ``soft`` in ``soft.dtype``."""
    if hard.shape == soft.shape:  # the common case; broadcast_shapes costs ~20 µs
        return hard.clone() if hard.dtype == soft.dtype else hard.to(soft.dtype)
    shape = torch.broadcast_shapes(hard.shape, soft.shape)
    return hard.to(soft.dtype).expand(shape).clone()


# Each straight-through op comes twice. The ``setup_context`` form is what
# vmap / torch.func / torch.compile need, but its ``apply`` binds the arguments
# with ``inspect.signature`` on every call (~40 µs, more than the op itself on
# small tensors); the classic form skips that. ``_pick`` chooses per call.


class _StraightThrough(torch.autograd.Function):
    """Forward: ``hard``. Backward: the incoming gradient goes to ``soft`` unchanged."""

    generate_vmap_rule = True

    @staticmethod
    def forward(hard: Tensor, soft: Tensor) -> Tensor:
        return _copy_as(hard, soft)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.soft_shape = inputs[1].shape

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor]:
        return None, grad.sum_to_size(ctx.soft_shape)


class _StraightThroughEager(torch.autograd.Function):
    """:class:`_StraightThrough` in the classic form, for plain eager calls."""

    @staticmethod
    def forward(ctx, hard: Tensor, soft: Tensor) -> Tensor:
        ctx.soft_shape = soft.shape
        return _copy_as(hard, soft)

    backward = _StraightThrough.backward


class _ArgmaxStraightThrough(torch.autograd.Function):
    """Forward: one-hot of ``scores.argmax(dim)`` as ``soft``. Backward: identity to ``soft``.

    :func:`straight_through` on a one-hot made inside ``forward``, which saves
    that function's defensive copy of ``hard`` (a full pass over the output).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(scores: Tensor, soft: Tensor, dim: int) -> Tensor:
        return _one_hot_like(scores, dim, soft.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.soft_shape = inputs[1].shape

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor, None]:
        return None, grad.sum_to_size(ctx.soft_shape), None


class _ArgmaxStraightThroughEager(torch.autograd.Function):
    """:class:`_ArgmaxStraightThrough` in the classic form, for plain eager calls."""

    @staticmethod
    def forward(ctx, scores: Tensor, soft: Tensor, dim: int) -> Tensor:
        ctx.soft_shape = soft.shape
        return _one_hot_like(scores, dim, soft.dtype)

    backward = _ArgmaxStraightThrough.backward


def _pick(
    transformable: type[torch.autograd.Function], eager: type[torch.autograd.Function]
) -> type[torch.autograd.Function]:
    """The ``setup_context`` form under a transform or ``torch.compile``, else the classic one."""
    return transformable if _transformed() else eager


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
    return _pick(_StraightThrough, _StraightThroughEager).apply(hard.detach(), soft)


def gumbel_softmax(
    logits: Tensor,
    tau: float | Tensor = 1.0,
    hard: bool = False,
    eps: float = 1e-10,
    dim: int = -1,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Gumbel-Softmax (Concrete) sample :math:`y = \mathrm{softmax}((\text{logits} + G)/\tau)`.

    A drop-in for :func:`torch.nn.functional.gumbel_softmax` (Jang et al. 2017,
    "Categorical Reparameterization with Gumbel-Softmax"; Maddison et al. 2017,
    "The Concrete Distribution"): same positional signature
    ``(logits, tau, hard, eps, dim)``, plus a keyword-only ``generator=``.

    Args:
        logits: unnormalised log-probabilities; ``-inf`` masks a category, which
            then gets exactly 0 (soft) and is never chosen (hard).
        tau: temperature > 0, a float or a tensor broadcastable to ``logits``.
        hard: if True, return the one-hot :math:`\arg\max_k(\text{logits}_k + G_k)`
            (an exact categorical sample) with the gradient of the soft sample:
            the straight-through Gumbel-Softmax estimator.
        eps: accepted for signature compatibility with torch and ignored (torch
            ignores it too): the noise here never takes ``log(0)``.
        dim: the category dimension.
        generator: a ``torch.Generator`` for reproducible noise (keyword only).

    Returns:
        A tensor with the shape and dtype of ``logits``, finite (values and
        gradients) for finite or ``-inf``-masked logits and any ``tau > 0``.

    TorchScript: ``torch.jit.trace`` records plain aten ops (no ``out=``, no
    Python autograd function), so a graph traced on logits without grad runs,
    and differentiates, on logits with grad, and can be saved.
    ``torch.jit.script(gumbel_softmax)`` compiles :func:`_gumbel_softmax_script`,
    the same computation written for TorchScript (there ``generator`` may also
    be passed by position: TorchScript has no keyword-only arguments).
    """
    del eps  # see docstring
    _check_logits(logits)
    _check_tau(tau)
    # A trace must not depend on whether its example input required grad.
    tracing = torch.jit.is_tracing()
    needs_grad = tracing or (
        torch.is_grad_enabled()
        and (logits.requires_grad or (isinstance(tau, Tensor) and tau.requires_grad))
    )
    scores = _perturbed(logits, generator)
    if hard and not needs_grad:
        # The soft sample would only carry a gradient nobody asked for.
        return _one_hot_like(scores, dim, logits.dtype)
    tempered = _divide_by_tau(scores, tau)
    last = dim in (-1, tempered.dim() - 1)
    soft = _softmax_last(tempered) if last else torch.softmax(tempered, dim)
    if hard:
        # argmax of the undivided scores: tau-invariant, and exact even where
        # a low temperature saturates the softmax.
        if tracing:
            # Aten ops only, so the graph can be saved; exact because soft is
            # finite, so soft - soft.detach() is exactly 0.
            onehot = _one_hot_like(scores.detach(), dim, soft.dtype)
            return (onehot + (soft - soft.detach())).to(logits.dtype)
        st = _pick(_ArgmaxStraightThrough, _ArgmaxStraightThroughEager)
        return st.apply(scores.detach(), soft, dim).to(logits.dtype)
    return soft.to(logits.dtype)


def _gumbel_softmax_script(
    logits: Tensor,
    tau: Union[float, Tensor] = 1.0,  # noqa: UP007 (typing forms: TorchScript before 2.x)
    hard: bool = False,
    eps: float = 1e-10,
    dim: int = -1,
    generator: Optional[torch.Generator] = None,  # noqa: UP045
) -> Tensor:
    """:func:`gumbel_softmax` for TorchScript: what ``torch.jit.script(gumbel_softmax)`` compiles.

    The same arithmetic and dtype handling, and below 2^20 elements the same
    noise stream (one ``uniform_`` draw of the compute dtype, clamped into
    ``[tiny, 1 - eps/2]``), without the eager fast paths TorchScript cannot
    compile: in place and ``out=`` noise, the Python straight-through function
    (replaced by the exact ``onehot + (soft - soft.detach())``), chunk-parallel
    draws (see ``discograd._rng``).
    """
    if not logits.is_floating_point():
        raise TypeError("logits must have a floating dtype")
    if isinstance(tau, Tensor):
        if not tau.is_floating_point():
            raise TypeError("tau must be a float or floating tensor")
        if not bool(((tau > 0) & torch.isfinite(tau)).all()):
            raise ValueError("tau must be positive and finite")
    elif not (tau > 0.0 and math.isfinite(tau)):
        raise ValueError("tau must be positive and finite")
    cdt = torch.float64 if logits.dtype == torch.float64 else torch.float32
    # finfo(cdt).tiny and 1 - finfo(cdt).eps / 2 (TorchScript has no finfo and
    # cannot read module-level floats); tested against finfo.
    if cdt == torch.float64:
        tiny, top = 2.2250738585072014e-308, 0.9999999999999999
    else:
        tiny, top = 1.1754943508222875e-38, 0.9999999403953552
    u = torch.empty(logits.shape, dtype=cdt, device=logits.device).uniform_(generator=generator)
    scores = logits.to(cdt) - u.clamp(tiny, top).log().neg().log()
    if isinstance(tau, Tensor):
        tau_c = tau.to(cdt)
        # d(x/tau)/dtau is NaN at x = -inf: divide finite stand-ins, re-mask.
        masked = torch.isneginf(scores)
        tempered = (scores.masked_fill(masked, 0.0) / tau_c).masked_fill(masked, -math.inf)
    else:
        tempered = scores / tau
    soft = torch.softmax(tempered, dim)
    if hard:
        index = scores.detach().argmax(dim, keepdim=True)
        onehot = torch.zeros_like(soft).scatter_(dim, index, 1.0)
        soft = onehot + (soft - soft.detach())
    return soft.to(logits.dtype)


# torch.jit.script and TorchScript's recursive compilation call a function's
# __prepare_scriptable__ and compile what it returns: gumbel_softmax's
# keyword-only generator= is not TorchScript.
gumbel_softmax.__prepare_scriptable__ = lambda: _gumbel_softmax_script  # type: ignore[attr-defined]


def conditional_gumbel(
    logits: Tensor, index: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    r"""Perturbed scores :math:`\theta + G` conditioned on :math:`\arg\max_k(\theta_k + G_k) = `
    ``index``, reparameterised in ``logits``.

    The Gumbel-max trick's conditional (Maddison et al. 2014 "A* Sampling";
    Tucker et al. 2017 "REBAR", Appendix): with :math:`E_i \sim \mathrm{Exp}(1)`
    and :math:`\ell = \log\sum_i e^{\theta_i}`, the maximum is
    :math:`M = \ell - \log E_k` (independent of the argmax) and every other
    score is a Gumbel truncated below :math:`M`:

    .. math:: z_k = \ell - \log E_k, \qquad
              z_i = -\log\big(E_k e^{-\ell} + E_i e^{-\theta_i}\big)\quad (i \ne k).

    Drawing ``index`` from ``Categorical(logits)`` and then the scores gives
    exactly the distribution of :math:`\theta + G`. Used by REBAR / RELAX
    (relaxed control variates at the sampled category) and Gumbel-Rao.

    Args:
        logits: unnormalised log-probabilities, categories on the last
            dimension; ``-inf`` masks a category (its score is ``-inf``).
        index: int64 categories; its shape broadcasts against
            ``logits.shape[:-1]`` (extra leading sample dimensions allowed).
        generator: a ``torch.Generator`` for the noise.

    Returns:
        Scores of shape ``broadcast(index.shape, logits.shape[:-1]) + (C,)`` in
        the dtype of ``logits`` (computed in float32 for 16-bit inputs), with
        gradients flowing to ``logits``.
    """
    _check_logits(logits)
    if not isinstance(index, Tensor) or index.dtype != torch.int64:
        raise TypeError(f"index must be an int64 tensor of categories, got {index!r:.60}")
    cdt = _compute_dtype(logits.dtype)
    C = logits.shape[-1]
    shape = torch.broadcast_shapes(index.shape, logits.shape[:-1]) + (C,)
    # Everything that depends on logits alone is computed at their (smaller)
    # shape and broadcast: GumbelRao asks for K samples per data point.
    theta = logits.to(cdt)
    finite = theta > -math.inf
    theta_c = torch.nan_to_num(theta, nan=0.0, neginf=0.0)  # finite stand-ins: clean gradients
    lse = torch.logsumexp(theta, -1, keepdim=True)
    u = _clamp_open_(_uniform(shape, cdt, logits.device, generator))
    neg_g = u.log_().neg_().log_()  # log E = -G for a standard Gumbel G
    idx = index.expand(shape[:-1]).unsqueeze(-1)
    top = lse - neg_g.gather(-1, idx)  # the maximum, M = lse + G_k
    # z_i = -logaddexp(-M, -(theta_i + G_i)) = M - softplus(M - theta_i - G_i):
    # three full-size passes. threshold=50 keeps softplus exact in float64 too.
    d = top - theta_c
    d = d + neg_g if _transformed() else d.add_(neg_g)
    others = top - F.softplus(d, threshold=50.0)
    out = torch.where(finite, others, -math.inf).scatter(-1, idx, top)
    return out.to(logits.dtype)


def conditional_logistic(
    logits: Tensor, value: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    r"""Logistic-perturbed logits :math:`z = \alpha + L` given :math:`1[z > 0] = ` ``value``.

    The binary case of :func:`conditional_gumbel` (Tucker et al. 2017, "REBAR"):
    with :math:`p = \sigma(\alpha)` and :math:`v \sim \mathcal U(0, 1)`, the
    uniform behind :math:`z = \alpha + \mathrm{logit}(u)` is
    :math:`u = 1 - p + v p` given 1 and :math:`u = v(1 - p)` given 0. Computed in
    log space, reparameterised in ``logits``.

    Args:
        logits: the Bernoulli logits :math:`\alpha`.
        value: the observed samples (0./1. floats or bools), broadcasting with ``logits``.
        generator: a ``torch.Generator`` for the noise.

    Returns:
        ``z`` of the broadcast shape, dtype of ``logits``: ``z > 0`` exactly where
        ``value`` is 1 (up to ties at 0).
    """
    _check_logits(logits)
    if not isinstance(value, Tensor):
        raise TypeError(f"value must be a tensor of 0/1 samples, got {type(value).__name__}")
    cdt = _compute_dtype(logits.dtype)
    shape = torch.broadcast_shapes(logits.shape, value.shape)
    alpha = logits.to(cdt).expand(shape)
    one = value.expand(shape) > 0.5
    v = _open_uniform(shape, cdt, logits.device, generator)
    log_p = -torch.nn.functional.softplus(-alpha)  # log σ(α)
    log_q = -torch.nn.functional.softplus(alpha)  # log σ(-α)
    log_v, log_1mv = v.log(), torch.log1p(-v)
    # z = α + log u − log(1 − u). Given 1: u = q + p v, 1 − u = p (1 − v).
    # Given 0: u = q v, 1 − u = p + q (1 − v). Sums of positives, in log space.
    z1 = alpha + torch.logaddexp(log_q, log_p + log_v) - (log_p + log_1mv)
    z0 = alpha + (log_q + log_v) - torch.logaddexp(log_p, log_q + log_1mv)
    return torch.where(one, z1, z0).to(logits.dtype)


class TopK(NamedTuple):
    """What :func:`gumbel_top_k` returns, ordered like :func:`torch.topk`'s result."""

    #: The perturbed log-weights :math:`\theta_i + G_i` of the drawn categories,
    #: in decreasing order (float32 for 16-bit logits).
    values: Tensor
    #: The drawn categories (int64), in the order they were sampled.
    indices: Tensor


# Below this many categories the flat path (perturb everything, then topk) wins.
_BLOCK_MIN_C = 128


def _check_k(k: int, n_categories: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 1 or k > n_categories:
        raise ValueError(f"k must be in [1, {n_categories}] (the number of categories), got k={k}")


def _truncate_gumbel(g: Tensor, top: Tensor, dim: int = -1) -> Tensor:
    r"""Gumbels ``g`` (locations ``theta``) conditioned on their maximum being ``top``.

    Kool, van Hoof & Welling 2019, "Stochastic Beams and Where to Find Them",
    in the numerically stable form of its appendix: with :math:`Z = \max_i g_i`,
    :math:`\tilde g_i = -\log(e^{-T} - e^{-Z} + e^{-g_i})`. The argmax keeps
    its place and gets exactly :math:`T`; ``-inf`` entries stay ``-inf``; a
    ``-inf`` ``top`` (an empty block) makes every entry ``-inf``.
    """
    z = g.amax(dim, keepdim=True)
    # v = T - g + log(1 - exp(g - Z)) and g~ = T - softplus(v). log(-expm1(.)) is
    # exact near 0 (the argmax, where it is -inf) and loses only an absolute
    # ~eps far below it, next to terms of order 1.
    v = (g - z).expm1_().neg_().log_().add_(top).sub_(g)
    out = top - F.softplus(v, threshold=50.0)
    # NaN only in a block with no finite entry (T = Z = -inf): all masked.
    return out.nan_to_num_(nan=-math.inf)


def gumbel_top_k(
    logits: Tensor, k: int, dim: int = -1, generator: torch.Generator | None = None
) -> TopK:
    r"""``k`` categories drawn without replacement from :math:`\mathrm{softmax}(\text{logits})`.

    The Gumbel-top-k trick (Vieira 2014; Kool, van Hoof & Welling 2019): the
    indices of the ``k`` largest :math:`\theta_i + G_i`, in decreasing order,
    are distributed as ``k`` sequential draws without replacement, each with
    probability :math:`p_i / (1 - \sum_{\text{drawn}} p_j)`.

    Args:
        logits: unnormalised log-probabilities; ``-inf`` masks a category.
        k: how many categories to draw, ``1 <= k <=`` the number of unmasked
            categories along ``dim`` (a ``ValueError`` otherwise).
        dim: the category dimension.
        generator: a ``torch.Generator`` for reproducible draws.

    Returns:
        ``TopK(values, indices)``, each with ``logits``' shape except ``k``
        along ``dim`` (like :func:`torch.topk`). ``indices`` (int64) are in the
        order drawn. ``values`` are the perturbed log-weights
        :math:`\theta_i + G_i` of those categories (decreasing; computed and
        returned in float32 for 16-bit logits, where rounding would create
        ties): what priority sampling and the estimators without replacement
        need (ask for ``k + 1`` to get the threshold :math:`\kappa`). Detached.

    Masked categories are never drawn while unmasked ones remain. A relaxation
    that needs *all* perturbed logits should use :func:`sample_gumbel`: above
    128 categories this function never materialises them.

    Speed. For many categories the noise, not the selection, dominates. Above
    128 categories the categories are cut into blocks of about
    :math:`\sqrt{C/k}`; each block's maximum is one Gumbel with location the
    block's logsumexp, the ``k`` best blocks hold the top ``k``, and only their
    entries are drawn, conditioned on their block's maximum (the two-level
    stochastic beam search of Kool et al. 2019). That draws about
    :math:`2\sqrt{Ck}` Gumbels per row instead of :math:`C`, an exact
    rewriting of the same law; what is left is one logsumexp pass over the
    logits.
    """
    _check_logits(logits)
    d = dim % logits.dim() if logits.dim() else 0
    if logits.dim() == 0:
        raise ValueError("logits must have at least one dimension (the categories)")
    C = logits.shape[d]
    _check_k(k, C)
    with torch.no_grad():
        x = logits.detach().movedim(d, -1)
        lead = x.shape[:-1]
        x = x.reshape(-1, C).to(_compute_dtype(logits.dtype))
        values, indices = _top_k_rows(x, k, generator, _block_size(C, k))
        if not _is_compiling() and not bool((values[:, -1] > -math.inf).all()):
            raise ValueError(
                f"k must not exceed the number of unmasked (finite) categories along dim, got k={k}"
            )
        values = values.reshape(*lead, k).movedim(-1, d)
        indices = indices.reshape(*lead, k).movedim(-1, d)
    return TopK(values, indices)


def _block_size(C: int, k: int) -> int:
    """Block width for the two-level draw, or 0 for the flat one."""
    if C < _BLOCK_MIN_C:
        return 0
    b = max(2, round(math.sqrt(C / k)))
    return b if -(-C // b) >= 2 * k else 0


def _block_logsumexp(grid: Tensor) -> Tensor:
    """``logsumexp`` over dimension -2 of ``grid``; exact for any logits.

    Finite or ``-inf`` entries, however far apart.
    """
    finfo = torch.finfo(grid.dtype)
    if not _is_compiling():
        # Fast path, two passes fewer: no shift, and no pass over ``whole`` for its
        # maximum first. An overflow shows as an infinite block sum (the logits are
        # checked: no NaN, no +inf), a block near the underflow range (or all
        # -inf) as a tiny one; either way the shifted computation below decides.
        s = grid.exp().sum(-2)
        if bool(((s > finfo.tiny * 2**30) & (s < math.inf)).all()):
            return s.log_()
    high = grid.amax(-2, keepdim=True)
    # Per-block maxima keep every block's logsumexp finite, however far below
    # the row's maximum it lies (a row-wide shift would underflow to -inf).
    safe = torch.where(high > -math.inf, high, 0.0)
    return (grid - safe).exp_().sum(-2).log_().add_(safe.squeeze(-2))


def _top_k_rows(
    x: Tensor, k: int, generator: torch.Generator | None, block: int
) -> tuple[Tensor, Tensor]:
    """Gumbel-top-k along the last dimension of the 2-d ``x``, flat or by blocks of ``block``."""
    R, C = x.shape
    if block <= 0:
        return torch.topk(_perturbed(x, generator), k, -1)
    # Block j holds columns j, j + n, j + 2n, ... (n = C // block blocks), plus a
    # tail block for the last C % block columns: a reduction over the strided
    # dimension is vectorised along the contiguous one, several times faster on
    # CPU than reducing many short contiguous runs.
    n = C // block
    tail = C - n * block
    grid = x[:, : n * block].view(R, block, n)
    lse = _block_logsumexp(grid)
    if tail:
        lse = torch.cat([lse, torch.logsumexp(x[:, n * block :], -1, keepdim=True)], -1)
    # Each block's maximum perturbed value is a Gumbel located at its logsumexp.
    top, best = torch.topk(_perturbed(lse, generator), k, -1)  # [R, k]
    i = torch.arange(block, device=x.device)
    j = best.unsqueeze(-1)
    strided = j < n
    cols = torch.where(strided, j + n * i, n * block + i)  # [R, k, block]
    inside = strided | (i < tail)
    cols = cols.clamp_max(C - 1)
    theta = torch.where(inside, x.gather(1, cols.view(R, -1)).view(R, k, block), -math.inf)
    g = _truncate_gumbel(_perturbed(theta, generator), top.unsqueeze(-1))
    values, pos = torch.topk(g.view(R, -1), k, -1)
    return values, cols.view(R, -1).gather(1, pos)
