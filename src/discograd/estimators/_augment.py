r"""Machinery of the augment-REINFORCE estimators (the AR family, ARM, DisARM).

* :func:`dirichlet_noise` — the Dirichlet / exponential-racing noise behind AR.
* :func:`swap_argmax` — every pseudo-action :math:`z^{j\rightleftharpoons m}` at once
  (:func:`swap_table`, :func:`swap_reference`: the same in the swap-first layout).
* :func:`evaluate_unique` — evaluate ``f`` once per *distinct* joint configuration
  of each data point, in one (optionally chunked) call with a leading sample
  dimension, and scatter the values back to the candidates.

Surrogates and noise helpers shared with other families live in
:mod:`discograd.estimators._surrogate` and :mod:`discograd.estimators._ops`.

Everything here works on flattened tensors: ``B`` data points, ``V`` variables,
``C`` categories.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from discograd.estimators._ops import open_uniform
from discograd.estimators.base import CostFn, Latent

__all__ = [
    "dirichlet_noise",
    "evaluate_unique",
    "swap_argmax",
    "swap_reference",
    "swap_table",
]


def dirichlet_noise(
    shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    r"""Gumbel noise ``G`` and ``log ϖ`` of one Dirichlet(1_C) draw per row.

    With :math:`E_i = -\log u_i \sim \mathrm{Exp}(1)`, :math:`\varpi = E / \sum E
    \sim \mathrm{Dir}(1_C)` and :math:`G_i = -\log E_i` is standard Gumbel, so
    :math:`\arg\min_i \varpi_i e^{-\theta_i} = \arg\max_i (\theta_i + G_i)`.
    """
    log_e = open_uniform(shape, dtype, device, generator).log_().neg_().log_()
    return -log_e, log_e - torch.logsumexp(log_e, -1, keepdim=True)


def _top3(scores: Tensor) -> tuple[Tensor, Tensor]:
    """The 3 largest entries along the last dim (padded with ``-inf`` / index -1 if C < 3)."""
    k = min(3, scores.shape[-1])
    vals, idx = scores.topk(k, dim=-1)
    if k < 3:
        vals = F.pad(vals, (0, 3 - k), value=-math.inf)
        idx = F.pad(idx, (0, 3 - k), value=-1)
    return vals, idx


def swap_argmax(theta: Tensor, gumbel: Tensor, ref: Tensor | None = None) -> Tensor:
    r"""Pseudo-actions :math:`z^{j\rightleftharpoons m} = \arg\max_i(\theta_i + G_{\sigma(i)})`,
    :math:`\sigma` the transposition of ``j`` and ``m`` (the Dirichlet entries swapped).

    Args:
        theta: logits ``[B, V, C]`` (``-inf`` masks a category).
        gumbel: the Gumbel noise ``[B, V, C]`` of :func:`dirichlet_noise`.
        ref: ``None`` for every pair (``[B, V, C, C]``, indexed ``[..., j, m]``),
            or a reference category per data point ``[B]`` (``[B, V, C]``, indexed
            ``[..., m]``).

    Only three entries change place or value under a swap, so the arg max is
    among the two swapped entries and the best of the others — the first of the
    top three scores not at ``j`` or ``m``: O(C^2) per variable, not O(C^3).

    The result is a (non-contiguous) view of a tensor laid out swap-first,
    ``[C, C, B*V]`` (or ``[C, B*V]``): every elementwise step then runs over a
    contiguous innermost dimension of ``B*V`` entries with the categories
    broadcast as scalars, instead of innermost runs of ``C`` (several times
    faster on CPU for small ``C``). :func:`swap_table` returns that layout.
    """
    B, V, C = theta.shape
    if ref is None:
        return swap_table(theta, gumbel).view(C, C, B, V).permute(2, 3, 0, 1)
    return swap_reference(theta, gumbel, ref).view(C, B, V).permute(1, 2, 0)


def swap_reference(theta: Tensor, gumbel: Tensor, ref: Tensor) -> Tensor:
    r"""The pseudo-actions :math:`z^{j\rightleftharpoons m}` of one reference ``j = ref``
    per data point ``[B]``, swap-first: ``[C(m), B*V]`` (see :func:`swap_argmax`).

    Row ``m = j`` swaps nothing: it is the sample :math:`z = \arg\max_i(\theta_i + G_i)`.

    With ``j`` fixed, the best entry outside ``{j, m}`` is the best outside ``j``
    unless that one is ``m``, then the second best outside ``j``: two ``amax``
    reductions over the categories (vectorised over the ``B*V`` variables)
    replace a top-k over rows of ``C`` entries.
    """
    B, V, C = theta.shape
    N = B * V
    i32 = torch.int32
    th = theta.reshape(N, C).t().contiguous()  # [C, N]
    gu = gumbel.reshape(N, C).t().contiguous()
    j = ref.view(B, 1).expand(B, V).reshape(1, N)
    m = torch.arange(C, device=theta.device, dtype=i32).view(C, 1)
    s_j = th.gather(0, j) + gu  # [C(m), N]: entry j holds G_m
    s_m = th + gu.gather(0, j)  # entry m holds G_j
    # Best (a0 at b0) and second best (a1 at b1) unswapped score outside j. Ties
    # (measure zero but for -inf, which never wins) pick the last index.
    ex = (th + gu).scatter_(0, j, -math.inf)
    a0 = ex.amax(0, keepdim=True)
    b0 = ((ex == a0).to(i32) * m).amax(0, keepdim=True)
    ex.scatter_(0, b0.long(), -math.inf)
    a1 = ex.amax(0, keepdim=True)
    b1 = ((ex == a1).to(i32) * m).amax(0, keepdim=True)
    at_b0 = m == b0  # [C(m), N]: the best other is excluded, the second best stands in
    o_i = b0 + at_b0.to(i32) * (b1 - b0)
    best = torch.maximum(s_j, s_m)
    # First maximum among (entry j, entry m, best other), in that order.
    take = (best >= a0) | (at_b0 & (best >= a1))
    jm = m + (j.to(i32) - m) * (s_j >= s_m).to(i32)
    return (o_i + take.to(i32) * (jm - o_i)).long()


def swap_table(theta: Tensor, gumbel: Tensor) -> Tensor:
    """Every pseudo-action, swap-first: ``[C(j), C(m), B*V]`` (see :func:`swap_argmax`)."""
    B, V, C = theta.shape
    N = B * V
    th = theta.reshape(N, C).t().contiguous()  # [C, N]
    gu = gumbel.reshape(N, C).t().contiguous()
    top_v, top_i = _top3_first(theta, gumbel)  # [3, N]
    ar = torch.arange(C, device=theta.device)
    s_j = th.unsqueeze(1) + gu.unsqueeze(0)  # [C(j), C(m), N]: entry j holds G_m
    s_m = s_j.transpose(0, 1)  # entry m holds G_j
    return _swap_winner(s_j, s_m, top_v, top_i, ar.view(C, 1, 1), ar.view(1, C, 1))


def _top3_first(theta: Tensor, gumbel: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`_top3` of ``theta + gumbel`` ``[B, V, C]``, ranks first: ``[3, B*V]`` each."""
    top_v, top_i = _top3(theta + gumbel)
    return top_v.reshape(-1, 3).t(), top_i.reshape(-1, 3).t()


def _swap_winner(
    s_j: Tensor, s_m: Tensor, top_v: Tensor, top_i: Tensor, j: Tensor, m: Tensor
) -> Tensor:
    """The arg max after a swap: ``j`` (score ``s_j``), ``m`` (``s_m``) or the best other.

    ``top_v`` / ``top_i``: the three best scores and their indices, ranks on the
    first dimension (``[3, N]``); ``j`` / ``m`` (int64) broadcast against ``s_j``.
    First maximum among (entry j, entry m, best other), in that order.

    Written with comparisons, boolean logic and int32 arithmetic of one dtype:
    on CPU these vectorise, while ``torch.where`` and mixed-dtype arithmetic
    over broadcast operands run several times slower.
    """
    i32 = torch.int32
    v0, v1, v2 = top_v.unbind(0)  # contiguous rows of N
    i0, i1, i2 = top_i.to(i32).unbind(0)
    j, m = j.to(i32), m.to(i32)
    # The best other is the first of the top three not at j or m (at most two
    # are excluded): rank 0 unless hit0, then rank 1 unless hit1, then rank 2.
    hit0 = (i0 == j) | (i0 == m)
    hit1 = (i1 == j) | (i1 == m)
    h0, h1 = hit0.to(i32), hit1.to(i32)
    o_i = i0 + h0 * ((i1 - i0) + h1 * (i2 - i1))
    best = torch.maximum(s_j, s_m)
    # best >= (score of the best other), without materialising that score.
    take = ((best >= v0) & ~hit0) | (((best >= v1) & ~hit1 | (best >= v2) & hit1) & hit0)
    jm = m + (j - m) * (s_j >= s_m).to(i32)
    return (o_i + take.to(i32) * (jm - o_i)).long()


# --------------------------------------------------------------------- dedupe
def _pack(configs: Tensor, num_categories: int) -> Tensor:
    """Configurations ``[B, P, V]`` (ints in ``[0, C)``) to exact int64 keys ``[B, P, K]``.

    Word ``k`` holds variables ``k * per .. (k + 1) * per - 1``, variable ``v`` at
    bit ``bits * (v % per)``: one multiply by the per-variable powers of two,
    then a sum per word (no padding to a multiple of ``per``).
    """
    bits = max(1, (num_categories - 1).bit_length())
    V = configs.shape[-1]
    per = min(63 // bits, V)
    K = -(-V // per)
    y = configs * (1 << (bits * (torch.arange(V, device=configs.device) % per)))
    return torch.stack([y[..., k * per : (k + 1) * per].sum(-1) for k in range(K)], -1)


def _dedupe(configs: Tensor, num_categories: int) -> tuple[Tensor, Tensor, Tensor]:
    """Distinct configurations per data point, with candidate 0 always in slot 0.

    Args:
        configs: ``[B, P, V]`` int64 candidate configurations; candidate 0 is the
            one whose evaluation stays attached to the graph (the true sample).

    Returns:
        slot: ``[B, P]`` the slot holding each candidate's configuration.
        count: ``[B]`` number of distinct configurations of each data point.
        rep: ``[B, M]`` for each slot, a candidate holding its configuration
            (``M = count.max()``); slots past ``count`` repeat candidate 0.
    """
    B, P, _ = configs.shape
    keys = _pack(configs, num_categories)  # [B, P, K]
    perm = torch.arange(P, device=configs.device).expand(B, P)
    # Lexicographic order by stable sorts, last key word first (K = ceil(V / per) words).
    for k in reversed(range(keys.shape[-1])):
        order = keys[..., k].gather(1, perm).sort(dim=1, stable=True).indices
        perm = perm.gather(1, order)
    sorted_keys = keys.gather(1, perm.unsqueeze(-1).expand_as(keys))
    new = torch.ones(B, P, dtype=torch.bool, device=configs.device)
    new[:, 1:] = (sorted_keys[:, 1:] != sorted_keys[:, :-1]).any(-1)
    rank_sorted = new.cumsum(1) - 1
    rank = torch.empty_like(perm).scatter_(1, perm, rank_sorted)
    count = new.sum(1)
    r0 = rank[:, :1]
    slot = torch.where(rank == r0, 0, rank + (rank < r0).long())
    rep = torch.zeros(B, P + 1, dtype=torch.long, device=configs.device)
    dump = torch.where(new, slot.gather(1, perm), P)
    rep.scatter_(1, dump, perm)
    return slot, count, rep[:, : int(count.max())]


def evaluate_unique(
    latent: Latent,
    f: CostFn,
    configs: Tensor,
    *,
    max_per_call: int | None = None,
    attach: str = "first",
) -> tuple[Tensor, Tensor, Tensor]:
    """Evaluate ``f`` on the distinct configurations among candidates, per data point.

    Args:
        latent: the parsed distribution (``B`` flattened data points, ``V`` variables).
        f: the cost.
        configs: ``[B, P, V]`` int64 candidate configurations (category indices,
            or 0/1 for Bernoulli); candidate 0 is the true sample.
        max_per_call: split the slots into calls of at most this many slots
            (the leading sample dimension of each call); ``None``: no split.
        attach: ``"first"``: slot 0 (candidate 0) is evaluated alone and keeps
            its graph, the other slots run under ``torch.no_grad`` (two calls
            when not split); ``"all"``: every slot keeps its graph (one call).

    Returns:
        values: ``[B, P]`` f of every candidate (detached for ``attach="first"``).
        f_first: ``[B]`` f of candidate 0, attached to the graph.
        count: ``[B]`` int64, the distinct configurations evaluated per data point.
    """
    B, _, V = configs.shape
    slot, count, rep = _dedupe(configs, latent.num_categories)
    M = rep.shape[1]
    # [M, B, V]; padding slots repeat candidate 0.
    X = configs.gather(1, rep.unsqueeze(-1).expand(B, M, V)).transpose(0, 1)
    size = M if max_per_call is None else max_per_call
    # With attach="first" slot 0 gets a call of its own and the rest run under
    # no_grad: one attached call over all M slots would make f's backward pass
    # (a decoder's, say) M times as expensive for slots whose gradient is zero.
    first = 1 if attach == "first" else 0
    bounds = [0, *range(first, M, size)] if first else list(range(0, M, size))
    bounds.append(M)
    outs = []
    for start, stop in itertools.pairwise(bounds):
        k = stop - start
        x = latent.encode(X[start:stop].reshape(latent.index_shape((k,))))
        if start == 0 or attach == "all":
            out = latent.call_f(f, x, (k,))
        else:
            with torch.no_grad():
                out = latent.call_f(f, x, (k,))
        outs.append(out.reshape(k, B))
    slots = outs[0] if len(outs) == 1 else torch.cat(outs)
    f_first = slots[0]
    if attach == "first":
        slots = slots.detach()
    return slots.t().gather(1, slot), f_first, count
