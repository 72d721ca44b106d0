r"""How good is a gradient estimator? Exact gradients and bias / variance / SNR / cosine.

* :func:`exact_gradient` — :math:`\nabla_w \sum_b \mathbb E_{q}[f_b]` by enumeration.
* :func:`gradient_draws` — ``n_draws`` independent estimates of that gradient, all
  drawn in one vectorised forward pass (``q`` replicated along a new leading
  batch dimension) and one batched backward pass.
* :func:`gradient_stats` — summary statistics of those draws against the exact
  gradient.

With draws :math:`g_1..g_n` (flattened over all tensors in ``wrt``), their mean
:math:`\bar g` and the exact gradient :math:`g^*`:

* bias :math:`= \lVert \bar g - g^* \rVert`; its Monte-Carlo noise floor is about
  ``bias_noise`` :math:`= \sqrt{\mathrm{tr}\,\hat\Sigma / n}`;
* variance :math:`= \mathrm{tr}\,\hat\Sigma` (unbiased sample covariance);
* snr :math:`= \lVert \bar g \rVert / \sqrt{\mathrm{tr}\,\hat\Sigma}`;
* cosine = the mean over draws of :math:`\cos(g_i, g^*)`: how well a single
  estimate points the right way (0 for an all-zero draw);
* mse :math:`= \frac1n \sum_i \lVert g_i - g^* \rVert^2`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor
from torch.distributions import Distribution

from discograd.estimators.base import CostFn, Estimate, Estimator, Latent
from discograd.estimators.exact import Exact, ExactMultiSample

__all__ = ["GradientStats", "exact_gradient", "gradient_draws", "gradient_stats"]

Wrt = Tensor | Sequence[Tensor]


def _as_tuple(wrt: Wrt) -> tuple[Tensor, ...]:
    tensors = (wrt,) if isinstance(wrt, Tensor) else tuple(wrt)
    if not tensors:
        raise ValueError("wrt must name at least one tensor")
    for t in tensors:
        if not isinstance(t, Tensor):
            raise TypeError(f"wrt must hold tensors, got {type(t).__name__}")
        if not t.requires_grad:
            raise ValueError(
                "every tensor in wrt must require grad; "
                f"got one of shape {tuple(t.shape)} that does not"
            )
    return tensors


def _grads(output: Tensor, wrt: tuple[Tensor, ...], **kwargs) -> tuple[Tensor, ...]:
    # retain_graph: q itself holds graph (e.g. the normalisation of its logits)
    # that a later call on the same q must be able to traverse again.
    grads = torch.autograd.grad(output, wrt, allow_unused=True, retain_graph=True, **kwargs)
    batched = kwargs.get("is_grads_batched", False)
    lead = (kwargs["grad_outputs"].shape[0],) if batched else ()
    return tuple(
        torch.zeros(lead + w.shape, dtype=w.dtype, device=w.device) if g is None else g
        for g, w in zip(grads, wrt, strict=True)
    )


def exact_gradient(
    f: CostFn,
    q: Distribution,
    wrt: Wrt,
    *,
    max_support: int = 2**16,
    n_samples: int | None = None,
) -> tuple[Tensor, ...]:
    r"""The gradient of :math:`\sum_b \mathbb E_{q}[f]_b` w.r.t. ``wrt``, by enumeration.

    Like ``torch.autograd.grad``: returns a tuple with one tensor per entry of
    ``wrt`` (zeros for tensors the objective does not depend on). Raises
    ``ValueError`` when the support exceeds ``max_support``.

    ``n_samples=K``: ``f`` is a log weight and the objective the negative
    K-sample bound (:class:`~discograd.estimators.ExactMultiSample`, whose
    ``max_support`` counts K-tuples), what the multi-sample-bound estimators estimate.
    """
    wrt_t = _as_tuple(wrt)
    if n_samples is None:
        out = Exact(max_support=max_support)(f, q)
    else:
        out = ExactMultiSample(n_samples, max_support=max_support)(f, q)
    return _grads(out.loss.sum(), wrt_t)


def gradient_draws(
    estimator: Estimator,
    f: CostFn,
    q: Distribution,
    wrt: Wrt,
    n_draws: int,
    *,
    generator: torch.Generator | None = None,
    vectorize: bool = True,
    chunk_size: int = 32,
) -> tuple[Tensor, Estimate]:
    """``n_draws`` independent gradient estimates, flattened: a ``[n_draws, P]`` tensor.

    Vectorised: ``q`` is replicated to batch shape ``(n_draws,) + q.batch_shape``
    and the estimator runs once (``f`` sees the extra dimension as part of its
    leading sample shape). The replicated logits are a fresh leaf, so one
    ordinary backward pass gives every draw's gradient with respect to them;
    a batched vector-Jacobian product then carries those through whatever
    maps ``wrt`` to ``q``'s logits (an encoder, a normalisation).

    When ``f`` itself depends on ``wrt`` (a decoder's weights, a ``log q`` term)
    the draws share that part of the graph; they are then separated by a
    batched backward pass over chunks of ``chunk_size`` replicas (cost grows as
    ``n_draws * chunk_size``). ``vectorize=False`` loops over draws instead.

    Returns the draws and the Estimate of the (last) vectorised call.
    """
    wrt_t = _as_tuple(wrt)
    if isinstance(n_draws, bool) or not isinstance(n_draws, int) or n_draws < 2:
        raise ValueError(f"n_draws must be an int >= 2, got n_draws={n_draws!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got chunk_size={chunk_size!r}")
    if not vectorize:
        rows = []
        for _ in range(n_draws):
            out = estimator(f, q, generator=generator)
            rows.append(_flat(_grads(out.loss.sum(), wrt_t)))
        return torch.stack(rows), out

    latent = Latent.parse(q, owner="gradient_draws")
    params = latent.logits
    leaf = params.detach().expand((n_draws,) + params.shape).clone().requires_grad_()
    out = estimator(f, latent.rebuild(leaf), generator=generator)
    g_leaf, *g_direct = torch.autograd.grad(
        out.loss.sum(), (leaf, *wrt_t), allow_unused=True, retain_graph=True
    )
    if all(g is None for g in g_direct):
        if g_leaf is None:
            g_leaf = torch.zeros_like(leaf)
        if params.requires_grad:
            grads = _grads(params, wrt_t, grad_outputs=g_leaf, is_grads_batched=True)
        else:
            grads = tuple(
                torch.zeros((n_draws, *w.shape), dtype=w.dtype, device=w.device) for w in wrt_t
            )
        return torch.cat([g.reshape(n_draws, -1) for g in grads], 1), out

    # f reaches wrt directly: separate the draws with batched grad_outputs.
    chunks = []
    for start in range(0, n_draws, chunk_size):
        k = min(chunk_size, n_draws - start)
        out = estimator(f, q.expand(torch.Size([k]) + q.batch_shape), generator=generator)
        per_draw = out.loss.reshape(k, -1).sum(1)
        eye = torch.eye(k, dtype=per_draw.dtype, device=per_draw.device)
        grads = _grads(per_draw, wrt_t, grad_outputs=eye, is_grads_batched=True)
        chunks.append(torch.cat([g.reshape(k, -1) for g in grads], 1))
    return torch.cat(chunks), out


def _flat(grads: tuple[Tensor, ...]) -> Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


@dataclass
class GradientStats:
    """Summary of ``n_draws`` gradient estimates; see the module docstring."""

    bias: float | None
    bias_noise: float
    variance: float
    snr: float
    cosine: float | None
    mse: float | None
    n_evals: float
    seconds_per_draw: float
    n_draws: int

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def gradient_stats(
    estimator: Estimator,
    f: CostFn,
    q: Distribution,
    wrt: Wrt,
    n_draws: int,
    exact: Sequence[Tensor] | Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    vectorize: bool = True,
) -> GradientStats:
    """Bias, variance, SNR, cosine and cost of ``estimator`` on one problem.

    Args:
        estimator: any :class:`~discograd.estimators.Estimator`.
        f, q: the problem, as for the estimator.
        wrt: tensor(s) to differentiate with respect to (``q``'s logits, a
            decoder's weights, ...).
        n_draws: number of independent estimates (>= 2).
        exact: the exact gradient (as from :func:`exact_gradient`); computed when
            ``None`` if the support is small enough for :class:`Exact`, else the
            bias, cosine and mse are reported as ``None``. For a multi-sample-bound
            estimator (``multi_sample``; ``f`` is then its log weight) the exact
            gradient is that of the negative bound of its ``bound_samples``.
        generator: randomness for the estimator.
        vectorize: see :func:`gradient_draws`.
    """
    wrt_t = _as_tuple(wrt)
    if exact is None:
        k = getattr(estimator, "bound_samples", None) if type(estimator).multi_sample else None
        try:
            exact = exact_gradient(f, q, wrt_t, n_samples=k)
        except ValueError:
            exact = None
    start = time.perf_counter()
    draws, out = gradient_draws(
        estimator, f, q, wrt_t, n_draws, generator=generator, vectorize=vectorize
    )
    seconds = (time.perf_counter() - start) / n_draws
    G = draws.detach().double()
    mean = G.mean(0)
    variance = float(G.var(0, unbiased=True).sum())
    sd = math.sqrt(variance)
    mean_norm = float(mean.norm())
    snr = mean_norm / sd if sd > 0 else (math.inf if mean_norm > 0 else 0.0)
    bias = cosine = mse = None
    if exact is not None:
        exact_t = (exact,) if isinstance(exact, Tensor) else tuple(exact)
        g_star = torch.cat([e.detach().reshape(-1) for e in exact_t]).to(G)
        if g_star.numel() != G.shape[1]:
            raise ValueError(
                f"exact has {g_star.numel()} entries but the gradient w.r.t. wrt has {G.shape[1]}"
            )
        bias = float((mean - g_star).norm())
        mse = float(((G - g_star) ** 2).sum(1).mean())
        denom = G.norm(dim=1) * g_star.norm()
        cos = torch.where(denom > 0, (G @ g_star) / denom.clamp_min(1e-300), 0.0)
        cosine = float(cos.mean())
    return GradientStats(
        bias=bias,
        bias_noise=math.sqrt(variance / n_draws),
        variance=variance,
        snr=snr,
        cosine=cosine,
        mse=mse,
        n_evals=out.mean_evals,
        seconds_per_draw=seconds,
        n_draws=n_draws,
    )
