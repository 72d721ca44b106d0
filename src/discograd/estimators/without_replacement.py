r"""Estimators from samples drawn without replacement: UnorderedSet, REINFORCEWOR, SumAndSample.

All three work on the *joint* configurations of a data point's categorical
variables (``Categorical``, ``OneHotCategorical`` or an ``Independent`` of
them): with :math:`D` variables of :math:`C` categories the domain has
:math:`C^D` elements, each with probability
:math:`p(x) = \prod_d q_d(x_d)`. Distinct configurations are found without
enumerating that domain by beam search over the variables, one variable per
level, vectorised over data points and beams:

* *stochastic* beam search (Kool, van Hoof & Welling 2019, "Stochastic Beams
  and Where to Find Them") gives the Gumbel-top-k of the joint: every partial
  configuration carries a perturbed log-probability, its children's Gumbels
  are conditioned on their maximum being the parent's (the same truncation
  :func:`discograd.gumbel_top_k` uses), and the ``k`` best are kept. The
  ``k`` configurations are an exact sample without replacement, in the order
  drawn, with their perturbed values;
* plain beam search over the joint log-probability gives the ``k`` most
  probable configurations (exact for independent variables: the best
  completion of a prefix adds the same amount to every prefix).

Configurations that do not exist (fewer than ``k`` possible configurations,
through masked categories) are reported with log-probability ``-inf``; they
get weight zero and ``f`` sees a possible configuration in their place.
"""

from __future__ import annotations

import functools
import itertools
import math

import torch
from torch import Tensor

from discograd.estimators._ops import compute_dtype, uniform
from discograd.estimators._surrogate import zero_valued
from discograd.estimators.base import CostFn, Estimate, Estimator, Latent
from discograd.estimators.registry import register
from discograd.estimators.score import REINFORCE, RLOO
from discograd.functional import _clamp_open_, _truncate_gumbel

__all__ = ["REINFORCEWOR", "SumAndSample", "UnorderedSet"]

NEG = -math.inf
#: Probability sets above 1 - this are summed exactly (see ``_log_ratios``).
_EXACT_GAP = 1e-10
#: Largest ``n_samples`` of UnorderedSet: its ratios cost about k^3 2^k terms.
_MAX_UNORDERED = 10


def _check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    if ok and maximum is not None:
        ok = value <= maximum  # type: ignore[operator]
    if not ok:
        top = "" if maximum is None else f" and <= {maximum}"
        raise ValueError(f"{name} must be an int >= {minimum}{top}, got {name}={value!r}")
    return value  # type: ignore[return-value]


def _gumbel(
    shape: torch.Size | tuple[int, ...], like: Tensor, gen: torch.Generator | None
) -> Tensor:
    """Standard Gumbel noise in ``like``'s dtype and device."""
    u = _clamp_open_(uniform(tuple(shape), like.dtype, like.device, gen))
    return u.log_().neg_().log_().neg_()


def _log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, accurate at both ends (Mächler 2012)."""
    x = x.clamp_max(0.0)
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _beam(
    logp: Tensor, k: int, gen: torch.Generator | None, stochastic: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Beam search over the variables of ``logp`` ``[N, V, C]`` (normalised, float64).

    Returns configurations ``[N, k, V]`` (int64), their joint log-probabilities
    ``[N, k]`` (``-inf``: no such configuration) and the criterion they were
    ranked by ``[N, k]`` (perturbed log-probabilities when ``stochastic``:
    the Gumbel-top-k of the joint, in decreasing order).
    """
    N, V, C = logp.shape
    # k beams from the start; all but one are empty (-inf) until enough exist.
    phi = torch.full((N, k), NEG, dtype=logp.dtype, device=logp.device)
    phi[:, 0] = 0.0
    crit = phi.clone()
    if stochastic:
        # The root's perturbed value is a Gumbel at log 1 = 0: its descendants'
        # perturbed values are then unconditional Gumbels, which the threshold
        # of priority sampling (REINFORCEWOR) needs.
        crit[:, 0] = _gumbel((N,), logp, gen)
        noise = _gumbel((V, N, k, C), logp, gen)  # one draw for every level
    picks = []
    for d in range(V):  # beam search is sequential in the variables
        child = phi.unsqueeze(-1) + logp[:, d].unsqueeze(1)  # [N, k, C]
        score = _truncate_gumbel(child + noise[d], crit.unsqueeze(-1)) if stochastic else child
        crit, pick = score.view(N, -1).topk(k, -1)
        phi = child.view(N, -1).gather(1, pick)
        picks.append(pick)
    # Parent beam and category of every pick, for all levels in two ops, not 2 V.
    flat = torch.stack(picks)  # [V, N, k]
    parents, actions = flat.div(C, rounding_mode="floor"), flat.remainder(C)
    # Backtrack: the configuration of each final beam, last variable first.
    configs = torch.empty((N, k, V), dtype=torch.long, device=logp.device)
    beam = torch.arange(k, device=logp.device).expand(N, k)
    for d in range(V - 1, -1, -1):
        configs[:, :, d] = actions[d].gather(1, beam)
        beam = parents[d].gather(1, beam)
    return configs, phi, crit


def _flat_logp(latent: Latent) -> Tensor:
    """The latent's normalised log-probabilities as detached float64 ``[N, V, C]``."""
    lg = latent.logits.detach().to(torch.float64)
    lg = torch.log_softmax(lg, -1)  # renormalise in float64: 16-bit rounding
    return lg.reshape(-1, max(latent.n_vars, 1), latent.num_categories)


def _to_latent(latent: Latent, configs: Tensor, lp: Tensor) -> Tensor:
    """``[N, k, V]`` configurations to ``(k,) + batch + var``; impossible ones replaced."""
    valid = lp > NEG
    configs = torch.where(valid.unsqueeze(-1), configs, configs[:, :1])
    k = configs.shape[1]
    return configs.transpose(0, 1).reshape(latent.index_shape((k,)))


def _costs(f: CostFn, latent: Latent, z: Tensor) -> tuple[Tensor, Tensor]:
    """``f`` and ``log q`` at configurations ``(k,) + batch + var``: both ``(k,) + batch``."""
    k = z.shape[0]
    return latent.call_f(f, latent.encode(z), (k,)), latent.log_prob(z)


def _rows(x: Tensor, latent: Latent) -> Tensor:
    """``[N, k]`` to ``(k,) + batch``."""
    return x.transpose(0, 1).reshape((x.shape[1],) + latent.batch_shape)


def _cols(x: Tensor) -> Tensor:
    """``(k,) + batch`` to ``[N, k]``."""
    return x.reshape(x.shape[0], -1).transpose(0, 1)


def _safe(fz: Tensor, latent: Latent) -> torch.dtype:
    return torch.promote_types(fz.dtype, compute_dtype(latent.dtype))


def _surrogate(
    fz: Tensor, log_q: Tensor, w_value: Tensor, w_score: Tensor, latent: Latent
) -> tuple[Tensor, Tensor]:
    """``Σ sg(w_value) f + Σ sg(w_score) zero_valued(log q)`` and its value.

    The weights are ``[N, m]``, one column per evaluated configuration.

    Formed in the safe dtype (float32 for 16-bit costs, where a weight times a
    large cost overflows), the value by the same operations so that it equals
    the loss exactly.
    """
    wd = _safe(fz, latent)
    wv, ws = _rows(w_value, latent).to(wd), _rows(w_score, latent).to(wd)
    value = (wv * fz.detach().to(wd)).sum(0)
    loss = (wv * fz.to(wd)).sum(0) + (ws * zero_valued(log_q.to(wd))).sum(0)
    return loss.to(fz.dtype), value.to(fz.dtype)


class _WithoutReplacement(Estimator):
    supports = frozenset({"categorical"})
    unbiased = True
    needs_grad_f = False
    has_temperature = False


# ----------------------------------------------------------------- ratios
_TABLES: dict[int, tuple[list[int], list[tuple[Tensor, Tensor, Tensor]]]] = {}


def _subset_tables(k: int) -> tuple[list[int], list[tuple[Tensor, Tensor, Tensor]]]:
    """The DP's bookkeeping for a set of ``k``: start sets (the empty set, the
    singletons, the pairs, as bit masks) and, for every size, the subsets of that
    size with each member removed: ``(subsets [M], smaller [M, L], member [M, L])``."""
    if k not in _TABLES:
        starts = [0] + [1 << s for s in range(k)]
        starts += [(1 << s) | (1 << t) for s, t in itertools.combinations(range(k), 2)]
        levels = []
        for size in range(1, k + 1):
            subsets = [sum(1 << b for b in c) for c in itertools.combinations(range(k), size)]
            members = [[b for b in range(k) if m >> b & 1] for m in subsets]
            smaller = [[m ^ (1 << b) for b in bs] for m, bs in zip(subsets, members, strict=True)]
            levels.append((torch.tensor(subsets), torch.tensor(smaller), torch.tensor(members)))
        _TABLES[k] = (starts, levels)
    return _TABLES[k]


@functools.lru_cache(maxsize=64)
def _ratio_tables(
    k: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor, list[tuple[Tensor, Tensor, Tensor]], Tensor, Tensor]:
    """:func:`_log_ratios`'s constant index tensors for sets of ``k``, on ``device``.

    Built once per ``(k, device)``: a dozen small tensors and host-to-device
    copies a call otherwise. Returns ``bits [2^k, k]`` (bool: member ``b`` of
    subset ``B``), the start rows and subsets, the levels, the pairs
    ``[k(k-1)/2, 2]`` and the identity ``[k, k]`` (bool).
    """
    starts, levels = _subset_tables(k)
    bits = (torch.arange(1 << k).unsqueeze(-1) >> torch.arange(k)) & 1
    pairs = torch.tensor(list(itertools.combinations(range(k), 2))).reshape(-1, 2)
    return (
        bits.bool().to(device),
        torch.arange(len(starts), device=device),
        torch.tensor(starts, device=device),
        # Per level: subsets [M], smaller [L * M] and smaller * k + member [L * M]
        # (member-major: the DP's logsumexp then reduces over an outer dim, which
        # torch vectorises, not over a last dim of 1 to k), flat for gathers along
        # the last dim of q [N, starts, 2^k] and of step.
        [
            (
                sub.to(device),
                sm.t().reshape(-1).to(device),
                (sm * k + mem).t().reshape(-1).to(device),
            )
            for sub, sm, mem in levels
        ],
        pairs.to(device),
        torch.eye(k, dtype=torch.bool, device=device),
    )


def _log_ratios(lp: Tensor) -> tuple[Tensor, Tensor]:
    r"""Leave-one-out and leave-two-out log ratios of an unordered sample ``lp`` ``[N, k]``.

    With :math:`P^{A}(T)` the probability that sampling without replacement
    from the domain minus :math:`A` yields the set :math:`T` (in any order):

    * ``log_r1[n, s]`` :math:`= \log P^{D\setminus s}(S\setminus s) - \log P(S)`,
    * ``log_r2[n, s, t]`` :math:`= \log P^{D\setminus\{s,t\}}(S\setminus\{s,t\})
      - \log P^{D\setminus s}(S\setminus s)` for :math:`t \ne s`, 0 on the diagonal.

    Kool et al.'s official code sums the Plackett-Luce probabilities of every
    order of each set. The same sums are computed here by dynamic programming
    over the subsets of :math:`S` (in float64 log space): with
    :math:`Q_A(B)` the probability that, from the domain minus :math:`A`, the
    first :math:`|B \setminus A|` draws are :math:`B \setminus A`,

    .. math:: Q_A(A) = 1, \qquad Q_A(B) = \sum_{b \in B\setminus A}
              Q_A(B \setminus b)\,\frac{p_b}{1 - p(B\setminus b)},

    one pass over the subset sizes for every start :math:`A` (the empty set,
    the singletons and the pairs of :math:`S`) at once:
    :math:`k\,2^{k}` terms per start instead of the :math:`(k-2)!` orders per
    pair (for 200 data points on one CPU core: 0.3 s at k = 8, where the
    enumeration took 3 s and 1 GB; 2.4 s at k = 10, the cap). Where
    :math:`P(S) > 1 - 10^{-10}` (the set holds all the mass, e.g. every
    possible configuration) the ratios are set to 1: the estimators then sum
    exactly, and the renormalisations by :math:`1 - p(\cdot)` would divide
    rounding errors.
    """
    N, k = lp.shape
    dev = lp.device
    bits, start_rows, starts, levels, pairs, eye = _ratio_tables(k, dev)
    # log(1 - p(B)) for every subset B (bit b of B's index: member b).
    lmass = torch.where(bits, lp.unsqueeze(1), NEG).logsumexp(-1)  # [N, 2^k]
    step = lp.unsqueeze(1) - _log1mexp(lmass).unsqueeze(-1)  # [N, 2^k, k]: add b to B
    S = start_rows.shape[0]
    q = torch.full((N, S, 1 << k), NEG, dtype=lp.dtype, device=dev)
    q[:, start_rows, starts] = 0.0
    step = step.view(N, -1)
    # Selections by gather with expanded indices: advanced indexing of these small
    # last dims costs several times more on CPU (same values, exactly).
    for subsets, smaller, grown in levels:  # subsets by size: each needs the smaller ones
        M = subsets.shape[0]
        L = smaller.shape[0] // M
        add = step.gather(1, grown.expand(N, -1)).view(N, 1, L, M)
        grow = q.gather(2, smaller.expand(N, S, -1)).view(N, S, L, M) + add  # [N, starts, L, M]
        at = subsets.expand(N, S, -1)
        q.scatter_(2, at, torch.logaddexp(q.gather(2, at), grow.logsumexp(-2)))
    full = q[:, :, -1]
    log_ps, log_p1, log_p2 = full[:, :1], full[:, 1 : k + 1], full[:, k + 1 :]
    two = torch.full((N, k, k), NEG, dtype=lp.dtype, device=dev)
    two[:, pairs[:, 0], pairs[:, 1]] = log_p2
    two[:, pairs[:, 1], pairs[:, 0]] = log_p2
    log_r1 = log_p1 - log_ps
    log_r2 = (two - log_p1.unsqueeze(-1)).masked_fill(eye, 0.0)
    exact = lp.logsumexp(-1, keepdim=True) > math.log1p(-_EXACT_GAP)
    log_r1 = torch.where(exact, 0.0, log_r1)
    log_r2 = torch.where(exact.unsqueeze(-1), 0.0, log_r2)
    return log_r1, log_r2


@register("unordered_set")
class UnorderedSet(_WithoutReplacement):
    r"""The unordered set estimator with its built-in baseline (Kool, van Hoof & Welling 2020).

    Draw :math:`k` distinct configurations :math:`S` without replacement
    (Gumbel-top-k; stochastic beam search over the variables of an
    ``Independent``). With the leave-one-out ratio
    :math:`R(S,s) = P^{D\setminus s}(S\setminus s)/P(S)` and the second-order
    ratio :math:`R^{D\setminus s}(S,s') = P^{D\setminus\{s,s'\}}(S\setminus\{s,s'\})
    / P^{D\setminus s}(S\setminus s)` (:math:`R^{D\setminus s}(S,s) = 1`):

    .. math:: \hat g = \sum_{s\in S} \nabla_\theta p(s)\, R(S,s)
              \Big(f(s) - \sum_{s'\in S} p(s') R^{D\setminus s}(S,s') f(s')\Big)
              + \sum_{s \in S} p(s) R(S,s) \nabla_\theta f(s),

    and the value :math:`\sum_{s\in S} p(s) R(S,s) f(s)`, an unbiased
    estimate of :math:`\mathbb E[f]`. Kool, van Hoof & Welling 2020,
    "Estimating Gradients for Discrete Random Variables by Sampling without
    Replacement" (ICLR), the estimator with its built-in baseline. The ratios are computed as the
    official code does, the sums over orders organised by subsets (see
    :func:`_log_ratios`): about :math:`k^3 2^k / 2` terms per data point,
    hence ``n_samples <= 10``.

    Args:
        n_samples: :math:`k \ge 2` distinct configurations (= ``n_evals``).
            When a data point has fewer than :math:`k` possible
            configurations, all of them are used and the gradient is exact.
        generator: default random generator.
    """

    def __init__(self, n_samples: int = 4, *, generator: torch.Generator | None = None) -> None:
        super().__init__(generator=generator)
        self.n_samples = _check_int("n_samples", n_samples, 2, _MAX_UNORDERED)

    def extra_repr(self) -> str:
        return f"n_samples={self.n_samples}"

    def estimate(self, f: CostFn, latent: Latent, generator: torch.Generator | None) -> Estimate:
        k = self.n_samples
        with torch.no_grad():
            configs, lp, _ = _beam(_flat_logp(latent), k, generator, stochastic=True)
            log_r1, log_r2 = _log_ratios(lp)
        fz, log_q = _costs(f, latent, _to_latent(latent, configs, lp))
        fd = fz.detach()
        wd = _safe(fd, latent)
        fc = _cols(fd.to(wd)).to(torch.float64)  # [N, k]
        w1 = (lp + log_r1).exp()  # p(s) R(S, s); 0 for a missing configuration
        base = ((lp.unsqueeze(1) + log_r2).exp() * fc.unsqueeze(1)).sum(-1)  # [N, k]
        loss, value = _surrogate(fz, log_q, w1, w1 * (fc - base), latent)
        return Estimate(loss=loss, value=value, n_evals=k)


@register("reinforce_wor")
class REINFORCEWOR(_WithoutReplacement):
    r"""Importance-weighted REINFORCE without replacement, with its built-in baseline.

    Draw the Gumbel-top-:math:`(k+1)` of the joint (stochastic beam search);
    :math:`S` is the first :math:`k` configurations and the threshold
    :math:`\kappa` the :math:`(k+1)`-th perturbed log-probability. Priority
    sampling (Duffield, Lund & Thorup 2007) gives each :math:`s \in S` the
    inclusion probability :math:`q_\kappa(s) = P(\phi_s + G > \kappa) =
    1 - \exp(-e^{\phi_s - \kappa})` and the weight
    :math:`\hat w_s = p(s)/q_\kappa(s)`:
    :math:`\sum_{s\in S} \hat w_s h(s)` is unbiased for
    :math:`\sum_x p(x) h(x)`, and products of two weights are unbiased for
    products of probabilities. Hence

    .. math:: \hat g = \sum_{s\in S} \hat w_s \nabla_\theta \log p(s)
              \Big(f(s) - p(s) f(s) - \sum_{s' \in S,\, s' \ne s} \hat w_{s'} f(s')\Big)
              + \sum_{s\in S} \hat w_s \nabla_\theta f(s)

    is unbiased: the baseline of sample :math:`s` is an estimate of
    :math:`\mathbb E[f]` built from the other samples, plus the exact term
    :math:`p(s) f(s)` in place of its own, so that its expectation against
    :math:`\hat w_s \nabla\log p(s)` is :math:`\mathbb E[f]\,\nabla p(s)`,
    which sums to zero. The value is :math:`\sum_{s\in S}\hat w_s f(s)`.
    After Kool, van Hoof & Welling 2019, "Buy 4 REINFORCE Samples, Get a
    Baseline for Free!" (ICLR workshop: priority-sampling weights from
    stochastic beam search, a baseline from the other samples) and the 2020
    paper's discussion of REINFORCE without replacement. The official code of
    the 2020 paper has no implementation of it; the leave-one-out baseline
    above is derived here from the priority-sampling identities so that the
    default is unbiased (checked against Exact and by enumeration in the
    tests). ``normalize=True`` is the self-normalised form, biased
    (consistent as :math:`k` grows): with
    :math:`W = \sum_{s\in S}\hat w_s` and :math:`B = \sum_{s\in S}\hat w_s f(s)/W`,

    .. math:: \hat g = \sum_{s\in S}\frac{\hat w_s}{W}\Big(\nabla_\theta\log p(s)
              \big(f(s) - B\big) + \nabla_\theta f(s)\Big),

    value :math:`B`.

    Args:
        n_samples: :math:`k \ge 2` configurations evaluated (= ``n_evals``);
            one more is drawn for the threshold, never evaluated. With at
            most :math:`k` possible configurations the gradient is exact.
        normalize: the self-normalised (biased) form instead of the unbiased one.
        generator: default random generator.
    """

    def __init__(
        self,
        n_samples: int = 4,
        normalize: bool = False,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(generator=generator)
        self.n_samples = _check_int("n_samples", n_samples, 2)
        if not isinstance(normalize, bool):
            raise ValueError(f"normalize must be a bool, got normalize={normalize!r}")
        self.normalize = normalize

    def extra_repr(self) -> str:
        return f"n_samples={self.n_samples}, normalize={self.normalize}"

    def estimate(self, f: CostFn, latent: Latent, generator: torch.Generator | None) -> Estimate:
        k = self.n_samples
        with torch.no_grad():
            configs, lp, crit = _beam(_flat_logp(latent), k + 1, generator, stochastic=True)
            configs, lp, kappa = configs[:, :k], lp[:, :k], crit[:, k:]
            # log q = log(1 - exp(-exp(phi - kappa))); kappa = -inf (no (k+1)-th
            # configuration): q = 1, the weights are the probabilities.
            log_incl = torch.log(-torch.expm1(-torch.exp(lp - kappa)))
            log_w = torch.where(lp > NEG, lp - log_incl, NEG)
        fz, log_q = _costs(f, latent, _to_latent(latent, configs, lp))
        fd = fz.detach()
        wd = _safe(fd, latent)
        fc = _cols(fd.to(wd)).to(torch.float64)  # [N, k]
        w = log_w.exp()
        wf = w * fc
        if self.normalize:
            w = w / w.sum(-1, keepdim=True)
            base = (w * fc).sum(-1, keepdim=True)
        else:
            base = lp.exp() * fc + (wf.sum(-1, keepdim=True) - wf)
        loss, value = _surrogate(fz, log_q, w, w * (fc - base), latent)
        return Estimate(loss=loss, value=value, n_evals=k)


def _sample_outside(
    logp: Tensor, top: Tensor, lp_top: Tensor, n: int, gen: torch.Generator | None
) -> Tensor:
    r"""``n`` configurations ``[N, n, V]`` from :math:`p` conditioned on not being in ``top``.

    Exact and sequential in the variables: given the prefix :math:`z_{<d}`,
    :math:`P(z_d = v \mid z_{<d}, z \notin T) \propto q_d(v)\,(1 - m_d(v))`,
    where :math:`m_d(v)` is the probability, under the variables after
    :math:`d`, of completing :math:`(z_{<d}, v)` into a member of ``top``.
    A Gumbel-max draw per variable, vectorised over data points and samples.
    """
    N, V, C = logp.shape
    k = top.shape[1]
    lpv = logp.gather(-1, top.transpose(1, 2)).transpose(1, 2)  # [N, k, V]
    lpv = torch.where((lp_top > NEG).unsqueeze(-1), lpv, NEG)
    # tail[:, :, d]: log-probability of the variables after d of each member.
    tail = lpv.flip(-1).cumsum(-1).flip(-1) - lpv
    match = (lp_top > NEG).to(logp.dtype).unsqueeze(1).expand(N, n, k)
    z = torch.zeros((N, n, V), dtype=torch.long, device=logp.device)
    onehot = torch.nn.functional.one_hot(top, C).to(logp.dtype)  # [N, k, V, C]
    for d in range(V):  # the conditional law of variable d depends on the earlier draws
        weight = match * tail[:, :, d].exp().unsqueeze(1)  # [N, n, k]
        excluded = torch.einsum("nsk,nkc->nsc", weight, onehot[:, :, d])
        # Rounding may leave a fully excluded subtree a mass of ~1e-16: snap it to 0.
        excluded = torch.where(excluded > 1 - 1e-12, 1.0, excluded)
        score = logp[:, d].unsqueeze(1) + torch.log1p(-excluded) + _gumbel((N, n, C), logp, gen)
        v = score.argmax(-1)
        z[:, :, d] = v
        match = match * (top[:, :, d].unsqueeze(1) == v.unsqueeze(-1))
    return z


@register("sum_and_sample")
class SumAndSample(_WithoutReplacement):
    r"""Sum over the :math:`k` most probable configurations, sample the rest (Liu et al. 2019).

    With :math:`T` the :math:`k` most probable joint configurations (beam
    search, exact for independent variables), :math:`p(T) = \sum_{c\in T}
    p(c)` and ``base`` a score-function estimator :math:`g_b` (REINFORCE
    with an optional baseline :math:`b`, or RLOO), the Rao-Blackwellised
    estimator is

    .. math:: \hat g = \sum_{c \in T} p(c)\, g_b(c) + \big(1 - p(T)\big)\,
              \frac1n \sum_{i=1}^n g_b(z_i), \qquad z_i \sim p(\cdot \mid z \notin T),

    with :math:`g_b(z) = (f(z) - b)\nabla_\theta \log p(z) + \nabla_\theta f(z)`.
    For REINFORCE :math:`b` is the baseline's prediction when it has one, else
    (``center=True``) the mean cost of the summed configurations,
    :math:`\bar f_T = \sum_{c\in T} p(c) f(c) / p(T)`: :math:`T` depends on
    :math:`\theta` only, so it is a constant for the sampled term, free, and
    keeps the score terms of a large cost representable (a float16 gradient
    :math:`f/\pi` overflows at costs of 1e4); ``center=False`` is the paper's
    plain REINFORCE, :math:`b = 0`. The same :math:`b` in both terms;
    for RLOO sample :math:`i` uses the mean of the other samples' costs and the
    summed terms the mean of all of them (its expectation, so that the summed
    and sampled baselines still cancel in expectation: unbiased). The value is
    :math:`\sum_{c\in T} p(c) f(c) + (1 - p(T))\frac1n\sum_i f(z_i)`. Liu,
    Regier, Tripuraneni, Jordan & McAuliffe 2019, "Rao-Blackwellized
    Stochastic Gradients for Discrete Distributions" (ICML); their official
    code sums the top-k categories of one categorical variable, here the
    top-k configurations of the joint (the same for one variable). Because it
    is a conditional expectation of ``base``'s single-sample estimator given
    whether the sample falls in :math:`T`, its variance is never above that
    estimator's.

    Cost: ``n_evals`` :math:`= k + n`, with :math:`n` ``base``'s samples, in
    one call of ``f``: the :math:`k` summed configurations are all evaluated.

    Args:
        k: configurations summed exactly, :math:`\ge 1`. With at most
            :math:`k` possible configurations the gradient is exact.
        base: ``"reinforce"``, ``"rloo"``, or a :class:`~discograd.estimators.REINFORCE`
            / :class:`~discograd.estimators.RLOO` instance (its ``n_samples``
            and, for REINFORCE, its baseline are used; a baseline is trained
            on the estimate of :math:`\mathbb E[f]` through ``cv_loss``).
        center: for a REINFORCE ``base`` without baseline, use
            :math:`\bar f_T` as its baseline (default) instead of 0.
        generator: default random generator.
    """

    def __init__(
        self,
        k: int = 4,
        base: str | REINFORCE | RLOO = "reinforce",
        center: bool = True,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(generator=generator)
        self.k = _check_int("k", k, 1)
        if isinstance(base, str):
            if base not in ("reinforce", "rloo"):
                raise ValueError(
                    f"base must be 'reinforce', 'rloo' or a REINFORCE / RLOO instance, "
                    f"got base={base!r}"
                )
            base = REINFORCE() if base == "reinforce" else RLOO()
        if type(base) not in (REINFORCE, RLOO):
            raise ValueError(
                "base must be 'reinforce', 'rloo' or a REINFORCE / RLOO instance, "
                f"got base={base!r}"
            )
        self.base = base
        if not isinstance(center, bool):
            raise ValueError(f"center must be a bool, got center={center!r}")
        self.center = center

    def extra_repr(self) -> str:
        return f"k={self.k}, center={self.center}"

    def estimate(self, f: CostFn, latent: Latent, generator: torch.Generator | None) -> Estimate:
        k, base = self.k, self.base
        n = base.n_samples
        loo = isinstance(base, RLOO)
        baseline = base.baseline if isinstance(base, REINFORCE) else None
        b = None if baseline is None else baseline.predict(latent)
        with torch.no_grad():
            logp = _flat_logp(latent)
            top, lp_top, _ = _beam(logp, k, generator, stochastic=False)
            log_mass = lp_top.logsumexp(-1, keepdim=True)
            exact = log_mass > math.log1p(-_EXACT_GAP)
            rest = torch.where(exact, 0.0, -torch.expm1(log_mass))  # [N, 1]
            drawn = _sample_outside(logp, top, lp_top, n, generator)
            # Where nothing is left to sample, f sees a possible configuration
            # with weight 0.
            drawn = torch.where(exact.unsqueeze(-1), top[:, :1], drawn)
        every = torch.zeros(drawn.shape[:2], dtype=lp_top.dtype, device=lp_top.device)
        z = torch.cat([_to_latent(latent, top, lp_top), _to_latent(latent, drawn, every)])
        fz, log_q = _costs(f, latent, z)
        fd = fz.detach()
        wd = _safe(fd, latent)
        fc = _cols(fd.to(wd)).to(torch.float64)  # [N, k + n]
        f_top, f_drawn = fc[:, :k], fc[:, k:]
        p_top = lp_top.exp()
        if loo:
            total = f_drawn.sum(-1, keepdim=True)
            b_drawn = (total - f_drawn) / (n - 1)
            b_top = total / n
        elif b is not None:
            b_drawn = b_top = _cols(b.detach().to(torch.float64).expand(latent.batch_shape)[None])
        elif self.center:
            # The summed configurations' mean cost: T depends on theta only, so
            # this baseline is a constant for the sample and costs nothing.
            b_drawn = b_top = (p_top * f_top).sum(-1, keepdim=True) / p_top.sum(-1, keepdim=True)
        else:
            b_drawn = b_top = torch.zeros_like(rest)
        w_value = torch.cat([p_top, (rest / n).expand(-1, n)], -1)
        w_score = torch.cat([p_top * (f_top - b_top), rest / n * (f_drawn - b_drawn)], -1)
        loss, value = _surrogate(fz, log_q, w_value, w_score, latent)
        cv_loss = None
        if baseline is not None and b is not None:
            cv_loss = baseline.observe(value.unsqueeze(0), b)
        return Estimate(loss=loss, value=value, n_evals=k + n, cv_loss=cv_loss)
