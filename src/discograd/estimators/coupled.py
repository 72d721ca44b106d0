r"""Coupled (antithetic) estimators: ARMS (Bernoulli), categorical DisARM and CARMS.

ARMS draws :math:`n \ge 2` samples of the whole vector of :math:`D` Bernoulli
variables whose uniforms are negatively correlated, variable by variable (a
Dirichlet copula), and applies the leave-one-out estimator with a correction
factor that removes the bias the correlation would otherwise cause. At
:math:`n = 2` the copula is the antithetic pair :math:`(u, 1 - u)` and ARMS is
DisARM.

:class:`CategoricalDisARM` writes a categorical variable as binary decisions
(stick-breaking or a tree) and couples two samples through antithetic
decisions. :class:`CARMS` draws :math:`n` inverse-CDF samples of a categorical
variable from one Dirichlet copula and importance-weights the leave-one-out
estimator back to independent pairs.

The copula helpers here are shared with :class:`~discograd.estimators.multisample.LocalARMS`.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from discograd.estimators._common import NSamplesEstimator, flat_logits
from discograd.estimators._ops import as_dtype, open_uniform
from discograd.estimators._surrogate import surrogate
from discograd.estimators.base import CostFn, Estimate, Estimator, Latent
from discograd.estimators.registry import register

__all__ = ["ARMS", "CARMS", "CategoricalDisARM"]


def dirichlet_copula(
    n: int, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, generator
) -> Tensor:
    r"""``n`` uniforms per entry of ``shape`` (shape ``(n,) + shape``), pairwise
    negatively correlated: :math:`u_k = (1 - d_k)^{n-1}` with
    :math:`d \sim \mathrm{Dir}(1_n)` drawn as normalised exponentials.

    Each :math:`d_k` is Beta(1, n - 1), so :math:`1 - d_k` has CDF :math:`t^{n-1}`
    and :math:`u_k` is exactly uniform. At ``n = 2`` the pair is :math:`(1 - d_1, d_1)`,
    an antithetic pair, drawn as :math:`(u, 1 - u)` from one uniform (the same law,
    without the exponentials).
    """
    if n == 2:
        u = open_uniform(shape, dtype, device, generator)
        return torch.stack([u, 1 - u])
    # In place: the uniforms are this function's own scratch.
    e = open_uniform((n, *shape), dtype, device, generator).log_().neg_()
    d = e.div_(e.sum(0, keepdim=True))
    return d.neg_().add_(1).pow_(n - 1)  # (1 - d)^(n-1); -d + 1 is 1 - d exactly


def copula_bits(theta: Tensor, uc: Tensor, p: Tensor | None = None) -> Tensor:
    r"""Bernoulli samples from copula uniforms ``uc`` (``(n,) + theta.shape``).

    :math:`b = 1[u < p]` for :math:`p = \sigma(\theta) < \frac12`; for
    :math:`p \ge \frac12` the uniforms are flipped, :math:`b = 1[1 - u < p]`, which
    is what makes the rarer value the one whose indicators are negatively
    correlated, as in the official code. Written with :math:`\sigma(-\theta)` and ``>=`` so that a
    logit of ``+inf`` gives 1 even where ``uc`` is exactly 0.
    """
    # 1[u >= σ(-θ)] = not 1[u < σ(-θ)]: one comparison against a per-variable threshold,
    # flipped where θ >= 0, instead of two comparisons and a select over the n samples.
    high = theta >= 0
    p = torch.sigmoid(theta) if p is None else p
    return (uc < torch.where(high, torch.sigmoid(-theta), p)) ^ high


def copula_debias(theta: Tensor, n: int) -> Tensor:
    r"""The correction factor :math:`\frac{p(1-p)}{p - P(b_i = b_j = 1)}` of ARMS.

    With :math:`m = \min(p, 1-p) = \sigma(-|\theta|)` and
    :math:`J(m) = \max(2 m^{1/(n-1)} - 1, 0)^{n-1}` (the probability that two
    copula uniforms are both below :math:`m`), :math:`p - P(b_i = b_j = 1) = m - J(m)`
    on both sides of :math:`\frac12`, so the factor is
    :math:`\sigma(|\theta|)\, m / (m - J(m))`: :math:`\sigma(|\theta|)` exactly
    where :math:`J(m) = 0` (every :math:`m \le 2^{-(n-1)}`, including the
    deterministic variables), never 0/0. At :math:`n = 2`, :math:`J = 0` for every
    :math:`m \le \frac12`: the factor is :math:`\sigma(|\theta|)`, DisARM's.
    """
    a = theta.abs()
    if n == 2:
        return torch.sigmoid(a)
    m = torch.sigmoid(-a)
    joint = (2 * m.pow(1.0 / (n - 1)) - 1).clamp_min(0).pow(n - 1)
    positive = joint > 0
    ratio = torch.where(positive, m / torch.where(positive, m - joint, 1.0), 1.0)
    return torch.sigmoid(a) * ratio


def arms_grad(theta: Tensor, b: Tensor, values: Tensor, n: int, p: Tensor | None = None) -> Tensor:
    r""":math:`\frac{1}{n-1}\sum_k (f_k - \bar f)(b_k - p)\,c(\theta)`, the ARMS
    gradient w.r.t. the logits: ``theta`` ``[B, V]``, ``b`` ``[n, B, V]`` (bool, or
    0./1. floats), ``values`` ``[n, B]`` (detached, ``theta``'s dtype); ``p``, if
    given, is :math:`\sigma(\theta)` (not recomputed)."""
    centred = (values - values.mean(0, keepdim=True)).unsqueeze(-1)
    score = as_dtype(b, theta.dtype) - (torch.sigmoid(theta) if p is None else p)
    grad = (centred * score).sum(0) * copula_debias(theta, n)
    return grad if n == 2 else grad / (n - 1)  # / 1 is exact: skipped


@register("arms")
class ARMS(NSamplesEstimator):
    r"""ARMS: antithetic REINFORCE multi-sample estimator for Bernoulli variables.

    .. math:: g_d = \frac{1}{n-1} \sum_{k=1}^n \big(f(b_k) - \bar f\big)
              \big(b_{k,d} - \sigma(\theta_d)\big)\,
              \frac{p_d(1-p_d)}{p_d - P(b_{i,d} = b_{j,d} = 1)},

    the gradient with respect to the logits :math:`\theta`, :math:`p = \sigma(\theta)`,
    :math:`\bar f` the mean of the :math:`n` costs. The :math:`n` samples of each
    variable come from a Dirichlet copula, :math:`u_k = (1 - d_k)^{n-1}`,
    :math:`d \sim \mathrm{Dir}(1_n)`, with :math:`b_k = 1[u_k < p]` when
    :math:`p < \frac12` and :math:`1[1 - u_k < p]` otherwise; the copulas of
    different variables are independent. Each :math:`b_k` is an exact sample
    of :math:`q` but two of them are negatively correlated, which would bias
    the leave-one-out estimator by the factor :math:`(p - P(b_i = b_j = 1))/(p(1-p))`;
    the last factor undoes it, with
    :math:`P(b_i = b_j = 1) = \max(2 p^{1/(n-1)} - 1, 0)^{n-1}` for :math:`p < \frac12`
    (and :math:`2p - 1` plus the same expression at :math:`1 - p` otherwise).
    At :math:`n = 2` the pair is antithetic and ARMS is DisARM exactly.

    ``Estimate.value`` and the pathwise term are the mean of ``f`` over the
    :math:`n` samples. Cost: :math:`n` evaluations of ``f`` per data point, in one
    call. The Dirichlet copula is the official code's default (``grad_type=arms``;
    its Gaussian-copula variant is not implemented here).

    Dimitriev & Zhou 2021, "ARMS: Antithetic-REINFORCE-Multi-Sample Gradient for
    Binary Variables" (ICML).

    Args:
        n_samples: :math:`n \ge 2`, the number of coupled samples.
        generator: default ``torch.Generator``.
    """

    supports = frozenset({"bernoulli"})
    unbiased = True
    needs_grad_f = False
    has_temperature = False

    def __init__(self, n_samples: int = 4, *, generator: torch.Generator | None = None):
        super().__init__(n_samples, owner="ARMS", generator=generator)

    def estimate(self, f: CostFn, latent: Latent, generator: torch.Generator | None) -> Estimate:
        n = self.n_samples
        B, V, theta, th = flat_logits(latent)
        uc = dirichlet_copula(n, (B, V), th.dtype, latent.device, generator)
        p = torch.sigmoid(th)
        b = copula_bits(th, uc, p)
        x = latent.encode(b.view(latent.index_shape((n,))))
        values = latent.call_f(f, x, (n,)).reshape(n, B)
        # The encoded samples are b as 0./1. floats: no second conversion.
        grad = arms_grad(th, x.view(n, B, V), as_dtype(values.detach(), th.dtype), n, p)
        mean_f = values.mean(0)
        loss = surrogate(mean_f, grad, theta, 1, finite=latent.finite)
        return Estimate(
            loss=loss.reshape(latent.batch_shape),
            value=mean_f.detach().reshape(latent.batch_shape),
            n_evals=float(n),
        )


# --------------------------------------------------------------------------------------
# Categorical DisARM (Dong, Mnih & Tucker 2021)

_ENCODINGS = ("stick_breaking", "tree")
_ORDERS = ("ascending", "descending", "none")


@functools.lru_cache(maxsize=64)
def _binary_encoding(encoding: str, C: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    r"""A categorical variable of ``C`` values as ``K = C - 1`` binary decisions.

    Node ``j`` sends a category to its "1" side or its "0" side. Returns
    ``ones [K, C]`` and ``zeros [K, C]`` (bool: the categories on each side of
    node ``j``; a node's categories are the union), and for each category ``c`` its
    path from the root: ``nodes [C, L]`` (node indices), ``bits [C, L]`` (the side
    taken) and ``valid [C, L]`` (``L`` = the longest path; shorter ones are padded).

    Stick-breaking: node ``i`` has ``{i}`` on its 1 side and ``{i+1, ..., C-1}`` on its
    0 side, so the category is the first decision that comes out 1. Tree: a
    balanced binary tree, nodes numbered level by level, each splitting its range
    ``[lo, hi)`` at ``lo + (hi - lo) // 2`` with the upper half on the 1 side (for
    ``C`` a power of two, the official code's tree).
    """
    K = C - 1
    ones = torch.zeros(K, C, dtype=torch.bool)
    zeros = torch.zeros(K, C, dtype=torch.bool)
    paths: list[list[tuple[int, bool]]] = [[] for _ in range(C)]
    if encoding == "stick_breaking":
        for i in range(K):
            ones[i, i] = True
            zeros[i, i + 1 :] = True
            for c in range(i, C):
                paths[c].append((i, c == i))
    else:
        queue = [(0, C)]
        j = 0
        while j < len(queue):  # breadth first: node j is queue[j]
            lo, hi = queue[j]
            mid = lo + (hi - lo) // 2
            zeros[j, lo:mid] = True
            ones[j, mid:hi] = True
            for c in range(lo, hi):
                paths[c].append((j, c >= mid))
            queue += [(a, b) for a, b in ((lo, mid), (mid, hi)) if b - a >= 2]
            j += 1
    L = max(len(p) for p in paths)
    nodes = torch.zeros(C, L, dtype=torch.int64)
    bits = torch.zeros(C, L, dtype=torch.bool)
    valid = torch.zeros(C, L, dtype=torch.bool)
    for c, path in enumerate(paths):
        for depth, (node, bit) in enumerate(path):
            nodes[c, depth], bits[c, depth], valid[c, depth] = node, bit, True
    return ones, zeros, nodes, bits, valid


@functools.lru_cache(maxsize=64)
def _binary_encoding_on(
    encoding: str, C: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """:func:`_binary_encoding` on ``device``: one copy per device, not one per call."""
    return tuple(t.to(device) for t in _binary_encoding(encoding, C))  # type: ignore[return-value]


def _side_lse(ls: Tensor, side: Tensor) -> Tensor:
    """``[R, K]``: log-sum-exp of the log-probabilities ``ls [R, C]`` over each node's side."""
    masked = ls.unsqueeze(-2).masked_fill(~side.to(ls.device), -math.inf)
    return torch.logsumexp(masked, -1)


@register("categorical_disarm")
class CategoricalDisARM(Estimator):
    r"""Categorical DisARM: a categorical variable as binary decisions, DisARM on each.

    The :math:`C` categories (optionally sorted by their logits first) are
    encoded by :math:`K = C - 1` binary decisions :math:`b_j \sim
    \mathrm{Bernoulli}(p_j)`: by **stick-breaking** (decision :math:`i` stops at
    category :math:`i` with :math:`p_i = \pi_i / \sum_{k \ge i} \pi_k`) or by a
    balanced binary **tree** (decision :math:`j` chooses the upper half of its
    range with :math:`p_j = \pi(\text{upper}) / \pi(\text{range})`). One uniform
    :math:`u_j` per decision gives an antithetic pair of decision vectors,
    :math:`b = 1[u < p]` and :math:`\tilde b = 1[1 - u < p]`, hence two exact,
    coupled samples :math:`z, \tilde z` of the variable. Each decision gets
    DisARM where both samples take it, and REINFORCE with the other sample's
    cost as baseline where only one does (the official code's estimator).
    Summed over decisions by the chain rule, the gradient with respect to the
    softmax logits is

    .. math:: g = \tfrac12\big(f(z) - f(\tilde z)\big)\Big[e_{z} - e_{\tilde z}
              - \sigma(-|\phi_{j^*}|)\big(\pi(\cdot \mid T) - \pi(\cdot \mid \tilde T)\big)\Big],

    zero when :math:`z = \tilde z`; :math:`j^*` is the decision where the two
    paths part, :math:`\phi_{j^*}` its logit, :math:`T` and :math:`\tilde T` the
    sets of categories on the sides that :math:`z` and :math:`\tilde z` took there
    and :math:`\pi(\cdot \mid T)` the categorical restricted to :math:`T`
    (stick-breaking: :math:`T = \{j^*\}` for the sample that stopped there and
    :math:`\{j^* + 1, \dots\}` for the other). The copulas of different variables are
    independent and the pair's :math:`f(z) - f(\tilde z)` is shared by all variables.

    ``importance_weighted=True`` is the paper's importance-weighted estimator,

    .. math:: g = \tfrac12\, w\,\big(f(z) - f(\tilde z)\big)\big(\nabla \log q(z) -
              \nabla \log q(\tilde z)\big) = \tfrac12\, w\,\big(f(z) - f(\tilde z)\big)
              (e_z - e_{\tilde z}),\qquad w = \frac{q(z)\,q(\tilde z)}{P(z, \tilde z)}
              = \sigma(|\phi_m|)\prod_{i < m} \frac{(1 - p_i)^2}{1 - 2 p_i},

    :math:`m = \min(z, \tilde z)`: the two-sample leave-one-out estimator
    reweighted from independent to coupled pairs. It is unbiased only when every
    pair of distinct possible categories can occur together, which with
    stick-breaking holds when all :math:`p_i < \frac12` before the last
    decision: exactly what ascending order guarantees (the smallest remaining
    probability is at most a third of the rest). So it requires
    ``encoding="stick_breaking"`` and ``order="ascending"`` (the official README's
    configuration; its launcher drops the ordering in this branch, which biases
    the estimate whenever a stick-breaking probability exceeds one half).

    ``order``: the categories are sorted by logit before encoding, ascending (the
    paper's recommendation: small probabilities are decided first), descending,
    or not at all. Any fixed order is unbiased; it changes the variance.

    ``Estimate.value`` and the pathwise term are the mean of ``f`` over the two
    samples. Cost: 2 evaluations of ``f`` per data point, in one call.

    Dong, Mnih & Tucker 2021, "Coupled Gradient Estimators for Discrete Latent
    Variables" (NeurIPS); official code google-research ``disarm/categorical``.

    Args:
        encoding: ``"stick_breaking"`` or ``"tree"``.
        importance_weighted: the importance-weighted variant (stick-breaking,
            ascending order only).
        order: ``"ascending"``, ``"descending"`` or ``"none"``.
        generator: default ``torch.Generator``.
    """

    supports = frozenset({"categorical"})
    unbiased = True
    needs_grad_f = False
    has_temperature = False

    def __init__(
        self,
        encoding: str = "stick_breaking",
        importance_weighted: bool = False,
        order: str = "ascending",
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(generator=generator)
        if encoding not in _ENCODINGS:
            raise ValueError(
                f"CategoricalDisARM: encoding must be one of {_ENCODINGS}, "
                f"got encoding={encoding!r}"
            )
        if order not in _ORDERS:
            raise ValueError(
                f"CategoricalDisARM: order must be one of {_ORDERS}, got order={order!r}"
            )
        if not isinstance(importance_weighted, bool):
            raise ValueError(
                "CategoricalDisARM: importance_weighted must be a bool, got "
                f"importance_weighted={importance_weighted!r}"
            )
        if importance_weighted and (encoding != "stick_breaking" or order != "ascending"):
            raise ValueError(
                "CategoricalDisARM: importance_weighted=True is unbiased only with "
                "encoding='stick_breaking' and order='ascending' (other encodings and "
                "orders make some pairs of categories impossible together); got "
                f"encoding={encoding!r}, order={order!r}"
            )
        self.encoding = encoding
        self.importance_weighted = importance_weighted
        self.order = order

    def extra_repr(self) -> str:
        return (
            f"encoding={self.encoding!r}, importance_weighted={self.importance_weighted}, "
            f"order={self.order!r}"
        )

    def estimate(self, f: CostFn, latent: Latent, generator: torch.Generator | None) -> Estimate:
        B, V, theta, th = flat_logits(latent)
        C = latent.num_categories
        R = B * V
        th = th.reshape(R, C)
        device = th.device
        # Ascending stick-breaking (the default, and the importance-weighted variant's
        # only configuration) works in probability space: sorted ascending, every tail
        # Σ_{k>=i} π_k holds the largest probability, so scaled by it the tails are
        # >= 1 and neither underflow nor lose relative precision, and the decision
        # probabilities are ratios of them. The normalisation cancels in those ratios:
        # no log-softmax, and a cumsum for the logcumsumexp (most of this estimator's
        # time on CPU). Other orders can leave only tiny tails: log space there.
        fast = self.encoding == "stick_breaking" and self.order == "ascending"
        if fast:
            ls, perm = torch.sort(th, dim=-1, stable=True)
            ls = ls - ls[:, -1:]  # log-probabilities up to a per-row constant, max 0
        else:
            lp = torch.log_softmax(th, -1)
            if self.order == "none":
                perm = torch.arange(C, device=device).expand(R, C)
            else:
                perm = torch.sort(lp, dim=-1, descending=self.order == "descending", stable=True)[1]
            ls = lp.gather(-1, perm)  # log-probabilities in encoding order
        if C == 1:
            z = torch.zeros(2, R, dtype=torch.int64, device=device)
            x = latent.encode(z.reshape(latent.index_shape((2,))))
            values = latent.call_f(f, x, (2,)).reshape(2, B)
            mean_f = values.mean(0)
            loss = surrogate(mean_f, torch.zeros_like(th).reshape(B, V, C), theta, 2)
            return Estimate(
                loss=loss.reshape(latent.batch_shape),
                value=mean_f.detach().reshape(latent.batch_shape),
                n_evals=2.0,
            )
        ones, zeros, nodes, bits, valid = _binary_encoding_on(self.encoding, C, device)
        K = C - 1
        if fast:
            mass = ls.exp()
            tail = mass.flip(-1).cumsum(-1).flip(-1)  # >= 1: every node is reached
            p, pc = mass[:, :K] / tail[:, :K], tail[:, 1:] / tail[:, :K]
            if not self.importance_weighted:  # the bracket's conditionals, in log space
                lse_one, lse_zero = ls[:, :K], tail[:, 1:].log()
        else:
            if self.encoding == "stick_breaking":
                # Tails L_i = log Σ_{k>=i} π_k: the node's mass and its 0 side, in O(C).
                tail = torch.logcumsumexp(ls.flip(-1), -1).flip(-1)
                lse_node, lse_one, lse_zero = tail[:, :K], ls[:, :K], tail[:, 1:]
            else:
                lse_one, lse_zero = _side_lse(ls, ones), _side_lse(ls, zeros)
                lse_node = torch.logaddexp(lse_one, lse_zero)
            # A node no possible category reaches has lse_node = -inf: 0 instead of NaN.
            reached = lse_node > -math.inf
            safe_node = torch.where(reached, lse_node, 0.0)
            p = torch.where(reached, (lse_one - safe_node).exp(), 0.0)  # P(decision = 1)
            pc = torch.where(reached, (lse_zero - safe_node).exp(), 0.0)  # P(decision = 0)
        u = open_uniform((R, K), th.dtype, device, generator)
        # u > 1 - p, not 1 - u < p: 1 - u rounds to 1 for the smallest u, which would
        # take the impossible side of a node with p = 1 (masked categories after it).
        b = torch.stack([u < p, u > 1 - p])  # [2, R, K]
        if self.encoding == "stick_breaking":
            z = (~b).cumprod(-1).sum(-1)  # leading 0 decisions: the first that is 1 (K if none)
        else:
            on_path = b[:, :, nodes]  # [2, R, C, L]: the decisions along each category's path
            match = ((on_path == bits) | ~valid).all(-1)
            z = match.to(torch.uint8).argmax(-1)
        z_orig = perm.gather(-1, z.transpose(0, 1)).transpose(0, 1)  # [2, R]
        x = latent.encode(z_orig.reshape(latent.index_shape((2,))))
        values = latent.call_f(f, x, (2,)).reshape(2, B)
        mean_f = values.mean(0)
        df = (values[0] - values[1]).detach().to(th.dtype)
        half_df = (0.5 * df).repeat_interleave(V)  # [R]: shared by the variables of a point
        differ = z[0] != z[1]
        # The node where the two paths part: the last node they share.
        if self.encoding == "stick_breaking":
            split = torch.minimum(z[0], z[1]).clamp_max(K - 1)
        else:
            same = (nodes[z[0]] == nodes[z[1]]) & valid[z[0]] & valid[z[1]]
            depth = same.to(torch.int64).cumprod(-1).sum(-1) - 1
            split = nodes[z[0]].gather(-1, depth.unsqueeze(-1)).squeeze(-1)
        p_split, pc_split = p.gather(-1, split[:, None]), pc.gather(-1, split[:, None])
        if self.importance_weighted:
            # w = σ(|φ_m|) Π_{i<m} (1 - p_i)² / (1 - 2 p_i); ascending order keeps p_i <= 1/3
            # for every i < m, and only possible pairs (those with z != z̃) are weighted.
            low = torch.minimum(p, pc)
            log_term = 2 * torch.log(pc.clamp_min(torch.finfo(th.dtype).tiny)) - torch.log1p(
                -2 * low.clamp_max(0.5 - torch.finfo(th.dtype).eps)
            )
            cum = torch.cumsum(log_term, -1) - log_term  # Σ_{i<m}
            log_w = cum.gather(-1, split[:, None]) + torch.maximum(p_split, pc_split).log()
            # ±coef at z and z̃, placed straight in the original order: no e_z - e_z̃
            # tensor and no un-permutation (a pair that coincides adds +0 and -0).
            coef = torch.where(differ, half_df * log_w.squeeze(-1).exp(), 0.0)
            grad_orig = torch.zeros_like(th).scatter_add_(
                -1, z_orig.transpose(0, 1), torch.stack([coef, -coef], -1)
            )
        else:
            cats = torch.arange(C, device=device)
            e_diff = (cats == z[0].unsqueeze(-1)).to(th.dtype) - (cats == z[1].unsqueeze(-1)).to(
                th.dtype
            )
            side = torch.stack([ones, zeros])  # the sides a sample can take at the split node
            lse_side = torch.stack([lse_one, lse_zero])
            took_one = b.gather(-1, split.expand(2, R).unsqueeze(-1)).squeeze(-1)  # [2, R]
            which = (~took_one).to(torch.int64)  # 0: the 1 side, 1: the 0 side
            members = side[which, split.expand(2, R)]  # [2, R, C]
            lse_t = lse_side.gather(0, which.unsqueeze(-1).expand(2, R, K)).gather(
                -1, split.expand(2, R).unsqueeze(-1)
            )  # [2, R, 1]
            lse_t = torch.where(lse_t > -math.inf, lse_t, 0.0)
            cond = torch.where(members, (ls.unsqueeze(0) - lse_t).exp(), 0.0)  # π(· | T)
            low = torch.minimum(p_split, pc_split)
            bracket = e_diff - low * (cond[0] - cond[1])
            grad = torch.where(differ[:, None], half_df[:, None] * bracket, 0.0)
            grad_orig = torch.zeros_like(grad).scatter_(-1, perm, grad)
        loss = surrogate(mean_f, grad_orig.reshape(B, V, C), theta, 2, finite=latent.finite)
        return Estimate(
            loss=loss.reshape(latent.batch_shape),
            value=mean_f.detach().reshape(latent.batch_shape),
            n_evals=2.0,
        )


# --------------------------------------------------------------------------------------
# CARMS (Dimitriev & Zhou 2021)


@functools.lru_cache(maxsize=64)
def _carms_orders(C: int) -> Tensor:
    """``[C(C-1)/2, C]``: the orders in which CARMS lays the categories on [0, 1].

    One order per pair ``a < b`` of categories: ``a`` first, ``b`` last, and the
    others in cyclic order after ``b`` (``b+1, b+2, ...`` skipping ``a``) — the
    official code's set (rotations of the identity whose first entry is smaller
    than their last). ``C = 1``: the one trivial order.
    """
    if C == 1:
        return torch.zeros(1, 1, dtype=torch.int64)
    orders = []
    for a in range(C):
        for b in range(a + 1, C):
            middle = [c % C for c in range(b + 1, b + C) if c % C != a]
            orders.append([a, *middle, b])
    return torch.tensor(orders, dtype=torch.int64)


@functools.lru_cache(maxsize=64)
def _carms_intervals(C: int) -> tuple[Tensor, Tensor, Tensor]:
    """Where category ``a`` sits in each CARMS order, as indices into prefix sums.

    With ``prefix`` the prefix sums of ``[π, π]`` (``prefix[0] = 0``) and order
    ``p = (s, t)``, the mass laid before ``a`` is
    ``prefix[hi[a, p]] - prefix[begin[p]] + keep[a, p] * π_s``: ``begin = t + 1``
    (mod C), ``hi = begin`` plus the number of categories cyclically from ``t+1``
    up to ``a - 1`` (``hi = begin`` for ``a = s``, whose interval starts at 0), and
    ``keep`` is 1 unless ``a = s`` or ``s`` falls inside that cyclic range (it is
    then counted once in the sum already). Returns ``begin [P]``, ``hi [C, P]``
    (int64) and ``keep [C, P]`` (float64).
    """
    orders = _carms_orders(C)
    first, last = orders[:, 0], orders[:, -1]
    begin = (last + 1) % C
    a = torch.arange(C).unsqueeze(-1)
    length = (a - begin) % C  # [C, P]: categories from t+1 up to a-1
    is_first = a == first
    skips_first = (first - begin) % C < length
    hi = torch.where(is_first, begin, begin + length)
    keep = (~(is_first | skips_first)).to(torch.float64)
    return begin, hi, keep


@functools.lru_cache(maxsize=64)
def _carms_tables_on(C: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`_carms_orders` and :func:`_carms_intervals` on ``device``, once per device."""
    begin, hi, keep = _carms_intervals(C)
    return tuple(t.to(device) for t in (_carms_orders(C), begin, hi, keep))  # type: ignore[return-value]


#: Elements of one ``[pairs, rows, P]`` float64 block of :func:`_carms_pair_joint`
#: (256 KiB): its dozen passes then run in cache, and the blocks' buffers are
#: recycled by the allocator instead of tens of MiB being mapped and faulted in
#: afresh every call. At 4000 variables, n = 4, C = 10 (one thread, one
#: process, main's code interleaved): 70 -> 32 ms a call; 2^14 to 2^17 are
#: within the noise of each other, 2^20 gave most of the gain back.
_CARMS_BLOCK = 1 << 15


def _carms_pair_joint(
    prefix: Tensor,
    p_begin: Tensor,
    p_first: Tensor,
    pz: Tensor,
    z: Tensor,
    hi_tab: Tensor,
    keep_tab: Tensor,
    I: Tensor,
    J: Tensor,
) -> Tensor:
    """``[pairs, rows]``: the copula's probability of the sampled pairs ``(z_I, z_J)``.

    Averaged over the orders; the inputs are those of :meth:`CARMS.estimate` for a block of rows.

    Rows (variables) are independent: any split of the rows gives the same bits.
    """
    n, R = z.shape
    P = p_begin.shape[-1]
    C = (prefix.shape[-1] - 1) // 2
    # The copula CDF is max(x^e + y^e - 1, 0)^(n-1), e = 1/(n-1): the powers x^e
    # once per end. These [n or pairs, rows, P] tensors are most of CARMS's work
    # (45 orders at C = 10): formed in place, each pass allocating nothing new
    # where it can.
    ends = torch.empty(2, n, R, P, dtype=torch.float64, device=prefix.device)
    # index_select of whole table rows: a copy per row, where z-indexing (aten::index)
    # pays per element.
    flat_z = z.reshape(-1)
    hi = hi_tab.index_select(0, flat_z).view(n, R, P)
    cyc = torch.gather(prefix.expand(n, R, 2 * C + 1), -1, hi, out=ends[0])
    keep = keep_tab.index_select(0, flat_z).view(n, R, P)
    left = cyc.sub_(p_begin).addcmul_(keep, p_first)
    torch.add(left, pz.unsqueeze(-1), out=ends[1])
    ends.clamp_(0, 1)  # [2, n, rows, P]: left and right ends
    if n > 2:  # x^e as exp(e log x): vectorised, faster than a float64 pow on CPU
        ends.log_().mul_(1.0 / (n - 1)).exp_()
    a, b1 = ends.index_select(1, I), ends.index_select(1, J).sub_(1)  # b1 = y^e - 1

    def cdf(x: Tensor, y1: Tensor, out: Tensor | None = None) -> Tensor:
        t = torch.add(x, y1, out=out).clamp_min_(0)
        return t.pow_(n - 1) if n > 2 else t

    rect = cdf(a[1], b1[1])
    scratch = torch.empty_like(rect)
    rect.sub_(cdf(a[0], b1[1], scratch)).sub_(cdf(a[1], b1[0], scratch))
    return rect.add_(cdf(a[0], b1[0], scratch)).clamp_min_(0).mean(-1)


@register("carms")
class CARMS(NSamplesEstimator):
    r"""CARMS: categorical antithetic REINFORCE multi-sample estimator.

    Each categorical variable gets :math:`n \ge 2` samples by the inverse CDF
    from the uniforms of a Dirichlet copula (:func:`dirichlet_copula`: each
    exactly uniform, pairwise negatively correlated), with the categories laid
    on :math:`[0, 1]` in an order drawn uniformly from :math:`C(C-1)/2` orders
    (one per pair :math:`a < b`: :math:`a` first, :math:`b` last, the rest in cyclic
    order), shared by the :math:`n` samples. Each sample is exact, two of them
    are negatively correlated, and the leave-one-out estimator is importance
    weighted from the coupled pair law back to independent pairs:

    .. math:: g_d = \frac{1}{n(n-1)} \sum_{i \ne j}
              \frac{\pi_d(z_{i,d})\,\pi_d(z_{j,d})}{P(z_{i,d}, z_{j,d})}
              \big(f(z_i) - f(z_j)\big)\big(e_{z_{i,d}} - \pi_d\big),

    the gradient with respect to variable :math:`d`'s softmax logits, with
    :math:`P(a, b)` the probability that two of the :math:`n` samples are
    :math:`(a, b)`, averaged over the orders: for each order the copula's
    bivariate CDF :math:`\max(x^{1/(n-1)} + y^{1/(n-1)} - 1, 0)^{n-1}` over the
    rectangle of the two categories' intervals. It is unbiased when every pair
    of distinct possible categories has :math:`P(a, b) > 0` (the random order
    sees to that); pairs with :math:`a = b` have mean zero whatever their weight,
    because the other variables' samples are exchangeable. With independent
    samples the weights are 1 and CARMS is RLOO.

    The weights are exact here, computed in float64 for the sampled pairs only;
    the official code smooths them (:math:`+10^{-3}` in numerator and
    denominator) and clips them to :math:`[0.01, 10]`, which trades a bias for
    variance. Its default (``grad_type=carms``, the inverse-CDF copula with
    uniform orders, non-inverted Dirichlet copula) is the estimator here; the
    Gumbel (``ecarms``) and stick-breaking (``sbcarms``) variants are not
    implemented.

    ``Estimate.value`` and the pathwise term are the mean of ``f`` over the
    :math:`n` samples. Cost: :math:`n` evaluations of ``f`` per data point, in one
    call; the weights take :math:`O(n^2 C^2)` work per variable (all orders), so
    the overhead grows quickly beyond a few dozen categories.

    Dimitriev & Zhou 2021, "CARMS: Categorical-Antithetic-REINFORCE Multi-Sample
    Gradient Estimator" (NeurIPS); official code ``alekdimi/carms``.

    Args:
        n_samples: :math:`n \ge 2`, the number of coupled samples.
        generator: default ``torch.Generator``.
    """

    supports = frozenset({"categorical"})
    unbiased = True
    needs_grad_f = False
    has_temperature = False

    def __init__(self, n_samples: int = 4, *, generator: torch.Generator | None = None):
        super().__init__(n_samples, owner="CARMS", generator=generator)

    def estimate(self, f: CostFn, latent: Latent, generator: torch.Generator | None) -> Estimate:
        n = self.n_samples
        B, V, theta, th = flat_logits(latent)
        C = latent.num_categories
        R = B * V
        th = th.reshape(R, C)
        device = th.device
        probs = torch.softmax(th.double(), -1)  # exactly 0 at masked categories
        orders, begin, hi_tab, keep_tab = _carms_tables_on(C, device)  # orders: [P, C]
        P = orders.shape[0]
        pick = torch.randint(P, (R,), device=device, generator=generator)
        u = dirichlet_copula(n, (R,), torch.float64, device, generator)  # [n, R]
        order = orders.index_select(0, pick)  # [R, C]: each variable's order
        laid = probs.gather(-1, order)
        right_pos = laid.cumsum(-1)
        right_pos = right_pos / right_pos[:, -1:]  # the last possible category ends at exactly 1
        # The n uniforms of a variable as one row of queries: no n copies of its CDF.
        pos = torch.searchsorted(right_pos, u.t().contiguous())  # [R, n]
        z = order.gather(-1, pos.clamp_max(C - 1)).t().contiguous()  # [n, R]
        x = latent.encode(z.reshape(latent.index_shape((n,))))
        values = latent.call_f(f, x, (n,)).reshape(n, B)
        mean_f = values.mean(0)
        # The interval [left, right) of each sampled category in every order, O(1) each:
        # order (s, t) is s, then t+1, t+2, ... cyclically (skipping s), then t, so the
        # mass before a != s is π_s plus the cyclic sum from t+1 to a-1 less π_s if s
        # falls in that range. Cyclic sums come from the prefix sums of [π, π]; which
        # prefix sum and whether π_s counts depend on (a, order) only (_carms_intervals).
        prefix = F.pad(torch.cat([probs, probs], -1).cumsum(-1), (1, 0))  # [R, 2C + 1]
        # Columns picked by gather with an expanded index: index/index_select along the
        # last dim of a [R, small] tensor cost several times more on CPU.
        p_begin = prefix.gather(-1, begin.expand(R, P))  # [R, P]: the cyclic sums' start
        p_first = probs.gather(-1, orders[:, 0].expand(R, P))  # [R, P]
        pz = probs.gather(-1, z.transpose(0, 1)).transpose(0, 1)  # [n, R]
        # P(a, b) for the sampled pairs i < j (the copula is exchangeable, so the
        # matrix is symmetric), averaged over the orders, in blocks of rows (below).
        I, J = torch.triu_indices(n, n, 1, device=device)
        pair_joint = torch.empty(I.shape[0], R, dtype=torch.float64, device=device)
        # CPU: cache-sized blocks. An accelerator gains nothing from them and would pay a
        # kernel launch per pass per block: one block.
        rows = max(1, _CARMS_BLOCK // (I.shape[0] * P)) if device.type == "cpu" else R
        for r0 in range(0, R, rows):  # cache-sized blocks of variables, not a loop per variable
            r1 = min(r0 + rows, R)
            pair_joint[:, r0:r1] = _carms_pair_joint(
                prefix[r0:r1],
                p_begin[r0:r1],
                p_first[r0:r1],
                pz[:, r0:r1],
                z[:, r0:r1],
                hi_tab,
                keep_tab,
                I,
                J,
            )
        possible = pair_joint > 0
        ratio = torch.where(
            possible, pz[I] * pz[J] / torch.where(possible, pair_joint, 1.0), 0.0
        )  # [pairs, R]
        fd = values.detach().double().repeat_interleave(V, dim=1)  # [n, R]
        # h_i = Σ_j r_ij (f_i - f_j) from the pairs i < j alone (r is symmetric, the
        # difference antisymmetric): no [n, n, R] tensors.
        c = ratio.mul_(fd[I] - fd[J])
        h = torch.zeros(n, R, dtype=torch.float64, device=device)
        h.index_add_(0, I, c).index_add_(0, J, c, alpha=-1)
        # e_z - π as -π with 1 added at z: (-π) + 1 is 1 - π exactly, and no one-hot pass.
        score = probs.neg().expand(n, R, C).contiguous()
        score.scatter_add_(-1, z.unsqueeze(-1), score.new_ones(n, R, 1))
        grad = (h.unsqueeze(-1) * score).sum(0) / (n * (n - 1))
        loss = surrogate(mean_f, grad.to(th.dtype).reshape(B, V, C), theta, 2, finite=latent.finite)
        return Estimate(
            loss=loss.reshape(latent.batch_shape),
            value=mean_f.detach().reshape(latent.batch_shape),
            n_evals=float(n),
        )
