r"""Bias, variance, SNR and cosine of every estimator against the exact gradient.

A set of small problems whose support can be enumerated, so that
:func:`discograd.diagnostics.exact_gradient` gives the truth:

* ``toy``: the ARSM toy reward with C = 10 categories, R = 30, skewed logits;
* ``categorical``: D = 3 variables with C = 4 categories sharing a nonlinear
  cost, a batch of 4 data points with different logits;
* ``bernoulli``: D = 8 binary variables, a nonlinear cost, a batch of 4;
* ``offset``: the categorical problem with 100 added to the cost (a large mean:
  the case baselines exist for);
* ``subset-C10-k3`` and ``subset-C6-k2-D3``, the *k-hot family*
  ``subset-C<C>-k<k>[-D<D>]``: D variables, each a k-subset of C items drawn
  from :class:`~discograd.distributions.KSubset` (:math:`p(S) \propto
  \prod_{i \in S} e^{\theta_i}`), a batch of 4 data points with different
  logits, and one nonlinear cost of all the k-hot vectors,
  :math:`f(z) = (S - \tfrac12)^2 + \sin 2S` with :math:`S = \sum_{d,i} w_{d,i} z_{d,i}`.
  Only the estimators with a subset size (SIMPLE, I-MLE: :func:`~discograd.
  experiments.common.is_k_hot`) run on them, with ``k`` set to the problem's;
  every other categorical estimator draws one item per variable and would
  estimate the gradient of another law. The exact gradient enumerates the
  :math:`\binom{C}{k}^D` joint subsets (:func:`k_hot_exact_gradient`).

Each estimator with state (EMA baselines, learned control variates) first
trains for ``warmup`` steps on the problem with θ fixed (the Trainer's loop,
with no model: only the control variates learn), then ``draws`` vectorised
draws are compared with the exact gradient. The problems are the same for
every seed; the seeds change the estimators' random draws, so the standard
errors over seeds say how much each number would move in another run. Relaxed
estimators without a temperature in their spec are run at each of
``temperatures`` (those a method refuses, such as ReinMax below 1, are
skipped). Alongside the per-call variance, ``variance × n_evals`` is the
variance at equal cost: averaging k independent draws divides the variance by
k and multiplies the cost by k. Seconds per draw (``draw_seconds``) come from
``timing_repeats`` further timed calls of :data:`TIMING_DRAWS` draws.

Problems too large to enumerate. ``sum-C<C>-D<D>-<uniform|skewed>`` (and the
grid ``--C ... --D ... --logits ...``) is the *sum family*: D categorical
variables with C categories and one cost of their weighted sum,

.. math:: S = \sum_{d=1}^D w_{d, z_d}, \qquad f(z) = (S - \tfrac12)^2 + \sin(2S),

:math:`w_{d,c} \sim \mathcal N(0, 1/D)` (fixed per C, D), logits zero
(``uniform``) or :math:`\mathcal N(0, 2^2)` (``skewed``). Every variable
interacts with every other (the square's cross terms, the sine), yet
:math:`\mathbb E_q[f]` has a closed form in the per-variable moments: with
:math:`m_d = \sum_c \pi_{dc} w_{dc}`, :math:`v_d = \sum_c \pi_{dc} w_{dc}^2 - m_d^2`
and the characteristic function :math:`\phi_d = \sum_c \pi_{dc} e^{2 i w_{dc}}
= \rho_d e^{i\alpha_d}` (independent variables: the expectation of
:math:`e^{2iS}` is the product of the :math:`\phi_d`),

.. math:: \mathbb E_q[f] = \sum_d v_d + \Big(\sum_d m_d - \tfrac12\Big)^2
          + \Big(\prod_d \rho_d\Big) \sin\Big(\sum_d \alpha_d\Big),

so the exact gradient is autograd of an :math:`O(DC)` expression
(:func:`sum_expected`) at any :math:`C^D` (the categorical problem above is
this cost at D = 3 with other weights). A problem of one's own:
``--problems package.module:function``, a function of the device returning a
:class:`Problem` (give it ``expected`` when its support is too large for
enumeration; without either, bias and cosine are not reported).

Equal evaluations (``--budgets 4 16 ...``): each estimator whose cost grows
with a sample-size hyper-parameter (``n_samples``; ``k`` for sum-and-sample)
gets, per budget B, the largest value whose measured cost is at most B
(:func:`match_budget`; RLOO, CARMS, the without-replacement estimators:
``n_samples = B`` where allowed); the others have a fixed or data-dependent
cost, measured (the mean ``n_evals``), and are compared at B by averaging
B / cost independent draws, that is by ``variance × n_evals``, as long as
their cost is at most B. One whose cost exceeds every budget is not run (its
cost is in the results' ``over_budget``).
"""

from __future__ import annotations

import importlib
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Bernoulli as TorchBernoulli
from torch.distributions import Distribution, Independent, OneHotCategorical

from discograd.diagnostics import exact_gradient, gradient_draws, gradient_stats
from discograd.errors import ConfigError
from discograd.estimators.base import Estimator, Latent
from discograd.estimators.registry import canonical, info, make, parse_spec
from discograd.experiments.common import (
    check_estimators,
    every_estimator,
    is_k_hot,
    is_unbiased,
    support_limit,
    supports,
    takes_temperature,
)
from discograd.experiments.config import RunConfig, option
from discograd.experiments.toy import ESTIMATORS_HELP, toy_rewards
from discograd.experiments.trainer import (
    Cadence,
    Context,
    StepResult,
    Task,
    TaskState,
    Unit,
    aggregate,
    stream_seed,
)

__all__ = [
    "LOGITS",
    "PROBLEMS",
    "VARIANCE_ESTIMATORS",
    "Problem",
    "VarianceConfig",
    "VarianceTask",
    "budget_plan",
    "expand_specs",
    "k_hot_enumeration",
    "k_hot_exact_gradient",
    "k_hot_problem",
    "k_hot_subsets",
    "k_hot_weights",
    "make_problem",
    "match_budget",
    "problem_names",
    "problem_spec",
    "sample_size_parameter",
    "sum_expected",
    "sum_problem",
    "sum_weights",
]

#: every registered estimator (one added to the registry joins the study), and I-MLE at
#: two more steps λ than its default 100: its gradient's scale and coarseness follow λ
VARIANCE_ESTIMATORS: tuple[str, ...] = (
    *every_estimator(
        None, {"rloo": "n_samples=4", "vargrad": "n_samples=4", "gumbel_rao": "n_samples=10"}
    ),
    "imle:lam=1",
    "imle:lam=10",
)

#: problem name -> kind of its variables
PROBLEMS: dict[str, str] = {
    "toy": "categorical",
    "categorical": "categorical",
    "bernoulli": "bernoulli",
    "offset": "categorical",
    "subset-C10-k3": "k_hot",
    "subset-C6-k2-D3": "k_hot",
}

#: logits of the sum family: all zero, or N(0, 2^2) per category
LOGITS: tuple[str, ...] = ("uniform", "skewed")
SKEWED_SD = 2.0
_SUM_NAME = re.compile(r"sum-C(\d+)-D(\d+)-(\w+)")
_SUBSET_NAME = re.compile(r"subset-C(\d+)-k(\d+)(?:-D(\d+))?")
#: joint configurations per data point up to which a k-hot problem's gradient is enumerated
K_HOT_MAX_SUPPORT = 65536


@dataclass
class VarianceConfig(RunConfig):
    """The study: problems, estimators (relaxed ones at several temperatures), draws."""

    problems: tuple[str, ...] = option(
        tuple(PROBLEMS),
        f"problems: {', '.join(PROBLEMS)}; sum-C<C>-D<D>-<uniform|skewed> (the sum family, "
        "exact gradient in closed form at any size); subset-C<C>-k<k>[-D<D>] (k-subsets of C "
        "items, for the k-hot estimators); package.module:function (your own, "
        "a function of the device returning a discograd.experiments.variance.Problem)",
        metavar="NAME",
    )
    C: tuple[int, ...] = option(
        (), "categories of a grid of sum-family problems (with --D and --logits)", minimum=2
    )
    D: tuple[int, ...] = option((), "variables of the grid of sum-family problems", minimum=1)
    logits: tuple[str, ...] = option(LOGITS, "logits of the grid's problems", choices=LOGITS)
    budgets: tuple[int, ...] = option(
        (),
        "f-evaluation budgets: compare at equal evaluations (sample sizes matched to each "
        "budget, fixed-cost estimators averaged up to it); none: every spec as given",
        minimum=1,
    )
    estimators: tuple[str, ...] = option(VARIANCE_ESTIMATORS, ESTIMATORS_HELP, metavar="SPEC")
    temperatures: tuple[float, ...] = option(
        (0.1, 0.5, 1.0, 2.0), "temperatures for relaxed estimators given without one", positive=True
    )
    draws: int = option(1000, "gradient draws per estimator", minimum=2)
    warmup: int = option(
        200, "training steps of estimators with state (baselines, control variates)", minimum=0
    )
    cv_lr: float = option(
        0.01, "learning rate of the control variates in the warm-up", positive=True
    )
    timing_repeats: int = option(
        5, "timed calls (of up to 50 draws) per estimator and seed for seconds per draw", minimum=1
    )

    def validate(self) -> None:
        super().validate()
        if bool(self.C) != bool(self.D):
            raise ConfigError(f"give both C and D for a grid, got C={self.C!r}, D={self.D!r}")
        if self.C and not self.logits:
            raise ConfigError("logits must name uniform and/or skewed for the grid")
        names = problem_names(self)
        if not names:
            raise ConfigError("problems must name at least one problem (or give a --C/--D grid)")
        if len(set(names)) != len(names):
            raise ConfigError(f"problems must not repeat a problem, got {tuple(names)}")
        for name in names:
            _check_problem_name(name)
        check_estimators(self.estimators)


def problem_names(config: VarianceConfig) -> list[str]:
    """The config's problems: those named, then the grid's (C, D, logits), in that order."""
    grid = [f"sum-C{c}-D{d}-{lg}" for c in config.C for d in config.D for lg in config.logits]
    return [*config.problems, *grid]


def _check_problem_name(name: str) -> None:
    if name in PROBLEMS or ":" in name:
        return
    if (s := _SUBSET_NAME.fullmatch(name)) is not None:
        C, k, D = int(s[1]), int(s[2]), int(s[3] or 1)
        if not (1 <= k < C and D >= 1):
            raise ConfigError(
                f"problem {name!r}: the k-hot family needs 1 <= k < C and D >= 1, "
                f"got C={C}, k={k}, D={D}"
            )
        return
    m = _SUM_NAME.fullmatch(name)
    if m is None:
        raise ConfigError(
            f"unknown problem {name!r}; known: {', '.join(PROBLEMS)}, "
            "sum-C<C>-D<D>-<uniform|skewed>, subset-C<C>-k<k>[-D<D>], or package.module:function"
        )
    C, D, kind = int(m[1]), int(m[2]), m[3]
    if C < 2 or D < 1 or kind not in LOGITS:
        raise ConfigError(
            f"problem {name!r}: the sum family needs C >= 2, D >= 1 and logits "
            f"{' or '.join(LOGITS)}"
        )


@dataclass
class Problem:
    """A problem of the study: ``E_q[f]`` with ``q = build(logits)``.

    Attributes:
        name: its label in the results.
        kind: ``"categorical"``, ``"bernoulli"`` or ``"k_hot"`` (then ``k`` is set).
        logits: the parameters the gradient is taken with respect to (float64 advised).
        build: logits -> the distribution (``Independent`` over variables; data
            points along leading dimensions). For a k-hot problem a categorical one
            whose logits are the item weights: the estimators read the subset size
            from their own ``k`` (:mod:`discograd.estimators.subsets`), and the law is
            ``KSubset(logits, k)``.
        f: the cost, a function of a sample (it must not depend on the logits).
        description: one line for the report.
        expected: logits -> ``E_q[f]`` per data point, differentiable: the exact
            gradient without enumeration. ``None``: by enumeration when the support
            allows (:func:`~discograd.diagnostics.exact_gradient`, or
            :func:`k_hot_exact_gradient` for a k-hot problem), else not known.
        k: the subset size of a k-hot problem (``None``: one category per variable).
    """

    name: str
    kind: str  # "categorical", "bernoulli" or "k_hot"
    logits: Tensor
    build: Callable[[Tensor], Distribution]
    f: Callable[[Tensor], Tensor]
    description: str
    expected: Callable[[Tensor], Tensor] | None = None
    k: int | None = None

    def __post_init__(self) -> None:
        if (self.kind == "k_hot") != (self.k is not None):
            raise ConfigError(
                f"problem {self.name!r}: a k-hot problem needs k and only it, got "
                f"kind={self.kind!r}, k={self.k!r}"
            )

    @property
    def support(self) -> int:
        """Joint configurations per data point (what enumeration would visit)."""
        event = self.build(self.logits.detach()).event_shape
        if self.kind == "bernoulli":
            return 2 ** math.prod(event)
        if self.k is not None:
            return math.comb(int(event[-1]), self.k) ** math.prod(event[:-1])
        return int(event[-1]) ** math.prod(event[:-1])

    def exact(self, leaf: Tensor) -> tuple[Tensor, ...] | None:
        """The exact gradient of ``sum_b E_q[f]_b`` at ``leaf``, or ``None`` if not known."""
        if self.expected is not None:
            (g,) = torch.autograd.grad(self.expected(leaf).sum(), leaf)
            return (g,)
        if self.k is not None:
            if self.support > K_HOT_MAX_SUPPORT:
                return None
            return (k_hot_exact_gradient(self.f, self.build(leaf), self.k, leaf),)
        try:
            return exact_gradient(self.f, self.build(leaf), leaf)
        except ValueError:  # support too large to enumerate
            return None


def sum_expected(logits: Tensor, w: Tensor) -> Tensor:
    r""":math:`\mathbb E_q[(S - 1/2)^2 + \sin 2S]`, :math:`S = \sum_d w_{d, z_d}`, in closed form.

    ``logits`` ``[..., D, C]`` (independent categorical variables), ``w``
    ``[D, C]``; returns ``[...]``. See the module docstring for the formula.
    """
    pi = torch.softmax(logits, -1)
    m = (pi * w).sum(-1)
    v = (pi * w * w).sum(-1) - m * m
    a, b = (pi * torch.cos(2 * w)).sum(-1), (pi * torch.sin(2 * w)).sum(-1)
    log_rho = 0.5 * torch.log(a * a + b * b)
    alpha = torch.atan2(b, a)
    return (
        v.sum(-1) + (m.sum(-1) - 0.5) ** 2 + torch.exp(log_rho.sum(-1)) * torch.sin(alpha.sum(-1))
    )


def _sum_generator(C: int, D: int) -> torch.Generator:
    return torch.Generator().manual_seed(stream_seed(0, f"variance-problem/sum/C{C}/D{D}"))


def sum_weights(C: int, D: int, device: torch.device | str = "cpu") -> Tensor:
    """The sum family's weights :math:`w` ``[D, C]`` at (C, D) (float64)."""
    w = torch.randn(D, C, generator=_sum_generator(C, D), dtype=torch.float64)
    return (w / math.sqrt(D)).to(device)


def sum_problem(C: int, D: int, logits: str, device: torch.device | str = "cpu") -> Problem:
    """The sum family's problem (C, D, ``uniform`` / ``skewed`` logits); one data point.

    The weights depend on (C, D) only, so uniform and skewed logits share a cost.
    """
    dt = torch.float64
    gen = _sum_generator(C, D)
    w = (torch.randn(D, C, generator=gen, dtype=dt) / math.sqrt(D)).to(device)
    if logits == "uniform":
        theta = torch.zeros(1, D, C, dtype=dt)
    elif logits == "skewed":
        theta = torch.randn(1, D, C, generator=gen, dtype=dt) * SKEWED_SD
    else:
        raise ConfigError(f"logits must be one of {', '.join(LOGITS)}, got logits={logits!r}")

    def f(z: Tensor) -> Tensor:
        s = (z.to(dt) * w).sum((-1, -2))
        return (s - 0.5) ** 2 + torch.sin(2 * s)

    return Problem(
        f"sum-C{C}-D{D}-{logits}",
        "categorical",
        theta.to(device),
        lambda t: Independent(OneHotCategorical(logits=t), 1),
        f,
        f"sum family: D={D} variables, C={C}, {logits} logits, f=(S−0.5)²+sin(2S), "
        "S=Σ_d w_d[z_d]; exact gradient in closed form",
        lambda t: sum_expected(t, w),
    )


def k_hot_subsets(
    C: int, k: int, *, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
) -> Tensor:
    """Every k-hot vector of length ``C``: ``[comb(C, k), C]``, in lexicographic order."""
    idx = torch.combinations(torch.arange(C, device=device), r=k)
    return torch.zeros(idx.shape[0], C, dtype=dtype, device=device).scatter_(1, idx, 1.0)


def k_hot_enumeration(q: Distribution, k: int) -> tuple[Tensor, Tensor]:
    r"""Every joint configuration of ``q``'s variables as k-subsets, and its log probability.

    ``q``: a categorical distribution (``Independent`` over variables) whose logits
    :math:`\theta` (``batch + var + (C,)``) are the item weights of independent
    :class:`~discograd.distributions.KSubset` variables. Returns ``z`` ``[N, *batch,
    *var, C]`` (an expanded view: the N configurations are shared by the data points)
    and ``log p`` ``[N, *batch]``, :math:`N = \binom{C}{k}^{V}` for V variables, in
    float64 and detached. The normaliser :math:`e_k(e^\theta)` is the sum over the
    enumerated subsets, independent of the dynamic program of
    :func:`~discograd.distributions.subset_log_normalizer`. A ``-inf`` logit masks its
    item: subsets holding it have probability 0.
    """
    latent = Latent.parse(q, owner="k_hot_enumeration")
    theta = latent.logits.detach().to(torch.float64)
    batch, var, C = latent.batch_shape, latent.var_shape, theta.shape[-1]
    Z = k_hot_subsets(C, k, device=theta.device)
    M, V = Z.shape[0], math.prod(var)
    theta = theta.reshape(*batch, V, C)
    finite = theta > -math.inf
    score = torch.where(finite, theta, 0.0) @ Z.T  # [*batch, V, M]
    holds_masked = ((~finite).to(Z.dtype) @ Z.T) > 0
    log_p_var = torch.log_softmax(score.masked_fill(holds_masked, -math.inf), -1)
    n = torch.arange(M**V, device=theta.device)
    place = M ** torch.arange(V, device=theta.device)
    digits = (n[:, None] // place) % M  # [N, V]: which subset each variable takes
    log_p = log_p_var[..., torch.arange(V, device=theta.device), digits].sum(-1)
    z = Z[digits].view(M**V, *(1,) * len(batch), *var, C)
    return z.expand(M**V, *batch, *var, C), log_p.movedim(-1, 0)


def k_hot_exact_gradient(
    f: Callable[[Tensor], Tensor], q: Distribution, k: int, wrt: Tensor
) -> Tensor:
    r"""The exact gradient of :math:`\sum_b \mathbb E_{z \sim \mathrm{KSubset}(\theta_b,
    k)}[f(z)]_b` with respect to ``wrt``, by enumeration (:func:`k_hot_enumeration`).

    The exponential family's score is :math:`\nabla_\theta \log p_\theta(z) = z - \mu`,
    :math:`\mu = \mathbb E[z]` (the marginals), so with :math:`p` and :math:`f`
    enumerated

    .. math:: \nabla_\theta \mathbb E[f] = \sum_z p(z) f(z) (z - \mu)
              = \mathbb E[f z] - \mathbb E[f]\,\mu,

    in float64, then carried from ``q``'s logits to ``wrt`` by autograd (a
    vector-Jacobian product). ``f`` gets k-hot vectors ``[N, *batch, *var, C]`` in
    the logits' dtype and returns ``[N, *batch]``.
    """
    latent = Latent.parse(q, owner="k_hot_exact_gradient")
    z, log_p = k_hot_enumeration(q, k)
    with torch.no_grad():
        fz = f(z.to(latent.dtype)).to(torch.float64)
        p = log_p.exp()
        pf = torch.where(p > 0, p * fz, 0.0).reshape(p.shape[0], -1)  # [N, B]
        n_batch = math.prod(latent.batch_shape)
        flat = z.reshape(z.shape[0], n_batch, -1)[:, 0]  # [N, V*C]: the same for every b
        mu = p.reshape(p.shape[0], -1).T @ flat  # [B, V*C]
        g = pf.T @ flat - pf.sum(0)[:, None] * mu
    g = g.reshape(latent.logits.shape).to(latent.dtype)
    if not latent.logits.requires_grad:
        return torch.zeros_like(wrt)
    (out,) = torch.autograd.grad(latent.logits, wrt, grad_outputs=g, allow_unused=True)
    return torch.zeros_like(wrt) if out is None else out


#: data points (different logits) of a k-hot problem
K_HOT_BATCH = 4


def _k_hot_draws(C: int, k: int, D: int) -> tuple[Tensor, Tensor]:
    """A k-hot problem's logits ``[K_HOT_BATCH, D, C]`` and weights ``[D, C]`` (float64)."""
    dt = torch.float64
    gen = torch.Generator().manual_seed(stream_seed(0, f"variance-problem/subset/C{C}/k{k}/D{D}"))
    theta = torch.randn(K_HOT_BATCH, D, C, generator=gen, dtype=dt) * 1.5
    return theta, torch.randn(D, C, generator=gen, dtype=dt) / math.sqrt(k * D)


def k_hot_weights(C: int, k: int, D: int = 1, device: torch.device | str = "cpu") -> Tensor:
    """The weights :math:`w` ``[D, C]`` of the k-hot problem (C, k, D) (float64)."""
    return _k_hot_draws(C, k, D)[1].to(device)


def k_hot_problem(C: int, k: int, D: int = 1, device: torch.device | str = "cpu") -> Problem:
    """The k-hot family's problem: ``K_HOT_BATCH`` data points, D variables, each a
    k-subset of C items, logits N(0, 1.5²), one cost of their weighted sum.

    ``f = (S − 1/2)² + sin 2S``, ``S = Σ_{d,i} w[d, i] z[d, i]``, ``w ~ N(0, 1/(kD))``
    (so S is of order 1 whatever k and D): a nonlinear cost in which every pair of
    chosen items interacts, so that no estimator is exact by linearity.
    """
    if not (1 <= k < C and D >= 1):
        raise ConfigError(f"a k-hot problem needs 1 <= k < C and D >= 1, got C={C}, k={k}, D={D}")
    dt = torch.float64
    theta, w = _k_hot_draws(C, k, D)
    w = w.to(device)

    def f(z: Tensor) -> Tensor:
        s = (z.to(dt) * w).sum((-1, -2))
        return (s - 0.5) ** 2 + torch.sin(2 * s)

    return Problem(
        f"subset-C{C}-k{k}" + (f"-D{D}" if D != 1 else ""),
        "k_hot",
        theta.to(device),
        lambda t: Independent(OneHotCategorical(logits=t), 1),
        f,
        f"k-hot: B={K_HOT_BATCH} data points, D={D} k-subsets (KSubset) of C={C} items, k={k}, "
        "f=(S−0.5)²+sin(2S), S=Σ w·z; exact gradient by enumeration",
        k=k,
    )


def make_problem(name: str, device: torch.device | str = "cpu") -> Problem:
    """Problem ``name``: the same logits and cost for every seed."""
    if (m := _SUM_NAME.fullmatch(name)) is not None:
        return sum_problem(int(m[1]), int(m[2]), m[3], device)
    if (m := _SUBSET_NAME.fullmatch(name)) is not None:
        problem = k_hot_problem(int(m[1]), int(m[2]), int(m[3] or 1), device)
        problem.name = name
        return problem
    if ":" in name:
        return _user_problem(name, device)
    gen = torch.Generator().manual_seed(stream_seed(0, f"variance-problem/{name}"))
    dt = torch.float64
    if name == "toy":
        C, R = 10, 30
        F = toy_rewards(C, R, device)
        logits = torch.linspace(1.0, -1.0, C, dtype=dt).to(device)
        return Problem(
            name,
            "categorical",
            logits,
            lambda t: OneHotCategorical(logits=t),
            lambda z: (z.to(dt) * F).sum(-1),
            "ARSM toy, 1 variable, C=10, R=30, logits linspace(1, -1)",
        )
    if name in ("categorical", "offset"):
        B, D, C = 4, 3, 4
        gen = torch.Generator().manual_seed(stream_seed(0, "variance-problem/categorical"))
        logits = (torch.randn(B, D, C, generator=gen, dtype=dt) * 1.5).to(device)
        w = torch.randn(D, C, generator=gen, dtype=dt).to(device)
        offset = 100.0 if name == "offset" else 0.0

        def f_cat(z: Tensor) -> Tensor:
            s = (z.to(dt) * w).sum((-1, -2))
            return (s - 0.5) ** 2 + torch.sin(2 * s) + offset

        return Problem(
            name,
            "categorical",
            logits,
            lambda t: Independent(OneHotCategorical(logits=t), 1),
            f_cat,
            "B=4 data points, D=3 variables, C=4, f=(w·z−0.5)²+sin(2w·z)"
            + (" + 100" if offset else ""),
        )
    if name == "bernoulli":
        B, D = 4, 8
        logits = torch.randn(B, D, generator=gen, dtype=dt).to(device)
        w = torch.randn(D, generator=gen, dtype=dt).to(device)

        def f_ber(b: Tensor) -> Tensor:
            s = (b.to(dt) * w).sum(-1)
            return (s - 0.45) ** 2 + torch.tanh(3 * s)

        return Problem(
            name,
            "bernoulli",
            logits,
            lambda t: Independent(TorchBernoulli(logits=t), 1),
            f_ber,
            "B=4 data points, D=8 binary variables, f=(w·b−0.45)²+tanh(3w·b)",
        )
    raise ConfigError(f"unknown problem {name!r}; known: {', '.join(PROBLEMS)}")


def _user_problem(name: str, device: torch.device | str) -> Problem:
    module, _, attr = name.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"problem {name!r}: cannot import {attr} from {module}: {err}") from err
    problem = fn(device)
    if not isinstance(problem, Problem):
        raise ConfigError(f"problem {name!r} returned {type(problem).__name__}, not a Problem")
    if problem.kind not in ("categorical", "bernoulli", "k_hot"):
        raise ConfigError(f"problem {name!r}: kind must be categorical, bernoulli or k_hot")
    problem.name = name
    return problem


def expand_specs(specs: tuple[str, ...], temperatures: tuple[float, ...]) -> list[str]:
    """Specs with a temperature each: relaxed specs without ``tau`` get one per temperature."""
    out: list[str] = []
    for spec in specs:
        name, kwargs = parse_spec(spec)
        if takes_temperature(name) and "tau" not in kwargs and temperatures:
            for t in temperatures:
                extra = ",".join(f"{k}={v}" for k, v in kwargs.items())
                out.append(f"{name}:{extra + ',' if extra else ''}tau={t}")
        else:
            out.append(spec)
    return out


#: hyper-parameters that set an estimator's sample size, in order of preference
SAMPLE_SIZE_PARAMETERS: tuple[str, ...] = ("n_samples", "k")
#: replicas of a problem in the one call that measures an estimator's cost
PROBE_DRAWS = 8
#: the largest sample size :func:`match_budget` considers
MAX_SAMPLE_SIZE = 4096


def sample_size_parameter(spec: str) -> str | None:
    """The hyper-parameter setting ``spec``'s sample size (``None``: it has none, or
    the spec fixes it: then its cost is taken as it is)."""
    name, kwargs = parse_spec(spec)
    entry = info(name)
    for key in SAMPLE_SIZE_PARAMETERS:
        # A k-hot estimator's k is the subset's size, part of the problem, not a sample size.
        if key == "k" and getattr(entry.cls, "k_hot", False):
            continue
        if key in entry.defaults:
            return None if key in kwargs else key
    return None


def with_value(spec: str, key: str, value: int) -> str:
    """``spec`` with ``key=value`` added, canonical."""
    return canonical(f"{spec}{',' if ':' in spec else ':'}{key}={value}")


def match_budget(
    evals: Callable[[int], float | None], budget: float, *, limit: int = MAX_SAMPLE_SIZE
) -> int | None:
    """The largest sample size ``n`` whose cost ``evals(n)`` is at most ``budget``.

    ``evals(n)``: f-evaluations of one call at sample size ``n``, ``None`` where
    ``n`` is not allowed. Costs grow linearly with ``n`` (``a + b n``): the two
    smallest allowed sizes give the line, its solution is tried first and then
    smaller sizes, until one is allowed and within the budget (a cap on ``n``,
    as for sampling without replacement, is met this way). Returns the smallest
    allowed size when even that exceeds the budget, and ``None`` when the cost
    does not grow with ``n`` (the size of something other than f-evaluations,
    e.g. Gumbel-Rao's relaxed samples) or no size is allowed.
    """
    allowed: list[tuple[int, float]] = []
    for n in range(1, min(limit, 8) + 1):
        e = evals(n)
        if e is not None:
            allowed.append((n, e))
            if len(allowed) == 2:
                break
    if not allowed:
        return None
    n0, e0 = allowed[0]
    if len(allowed) == 1:
        return n0
    n1, e1 = allowed[1]
    slope = (e1 - e0) / (n1 - n0)
    if slope <= 0:
        return None
    n = min(limit, n0 + math.floor((budget - e0) / slope + 1e-9))
    while n > n0:
        e = evals(n)
        if e is not None and e <= budget:
            return n
        n -= 1
    return n0


def _probe(spec: str, problem: Problem) -> float | None:
    """Mean f-evaluations of one call of a fresh ``spec`` on ``problem`` (``PROBE_DRAWS``
    replicas, a generator of its own), or ``None`` if the spec or the call is refused."""
    try:
        est = make(spec).to(problem.logits.device)
        logits = problem.logits.detach()
        q = problem.build(logits.expand(PROBE_DRAWS, *logits.shape))
        gen = torch.Generator(device=logits.device).manual_seed(0)
        return est(problem.f, q, generator=gen).mean_evals
    except ValueError:
        return None


def budget_plan(
    specs: list[str],
    budgets: tuple[int, ...],
    problem: Problem,
    probe: Callable[[str, Problem], float | None] = _probe,
) -> tuple[dict[str, list[int]], dict[str, float]]:
    """``({spec: the budgets it is compared at}, {spec: cost} of those over every budget)``.

    A spec with a sample size (:func:`sample_size_parameter`) becomes one spec per
    budget (:func:`match_budget`; the same one for budgets that give the same
    size); any other stands for every budget at least its measured cost.
    """
    plan: dict[str, list[int]] = {}
    over: dict[str, float] = {}
    costs: dict[str, float | None] = {}

    def cost(spec: str) -> float | None:
        if spec not in costs:
            costs[spec] = probe(spec, problem)
        return costs[spec]

    def sized_cost(spec: str, key: str) -> Callable[[int], float | None]:
        return lambda n: cost(with_value(spec, key, n))

    for spec in specs:
        key = sample_size_parameter(spec)
        n_of: dict[int, int | None] = {}
        if key is not None:
            n_of = {b: match_budget(sized_cost(spec, key), b) for b in budgets}
        if key is None or any(n is None for n in n_of.values()):
            c = cost(spec)
            if c is None:
                continue
            within = [b for b in budgets if c <= b]
            if within:
                plan[canonical(spec)] = within
            else:
                over[canonical(spec)] = c
            continue
        assert key is not None
        for b, n in n_of.items():
            sized = with_value(spec, key, n)  # type: ignore[arg-type]
            c = cost(sized)
            if c is not None and c <= b:
                plan.setdefault(sized, []).append(b)
            elif c is not None and sized not in plan:
                over[sized] = c
        for sized in plan:
            over.pop(sized, None)
    return plan, over


@dataclass
class VarianceState(TaskState):
    model: None  # θ stays fixed
    estimator: Estimator
    problem: Problem
    leaf: Tensor
    exact: Any


#: Seconds per draw are measured by this many calls of ``TIMING_DRAWS`` vectorised draws
#: (at most ``draws``) after the statistics: repeats for a median and its spread.
TIMING_REPEATS = 5
TIMING_DRAWS = 50


def _time_draws(state: VarianceState, ctx: Context) -> tuple[int, list[float]]:
    """``(draws per call, [seconds per draw of each timed call])``, on a stream of their own."""
    p, leaf = state.problem, state.leaf
    n = min(ctx.config.draws, TIMING_DRAWS)
    times = []
    for _ in range(ctx.config.timing_repeats):
        start = time.perf_counter()
        gradient_draws(state.estimator, p.f, p.build(leaf), leaf, n, generator=ctx.stream("timing"))
        times.append((time.perf_counter() - start) / n)
    return n, times


class VarianceTask(Task[VarianceConfig, VarianceState]):
    """Each (problem, estimator): warm-up of its state, then draws against the exact gradient."""

    name = "variance"
    Config = VarianceConfig

    def units(self, config: VarianceConfig) -> list[Unit]:
        out = []
        for pname in problem_names(config):
            problem = make_problem(pname)
            for spec in self.specs(config, problem):
                out.append(Unit(f"{pname}/{canonical(spec)}", spec, pname))
        return out

    def specs(self, config: VarianceConfig, problem: Problem) -> list[str]:
        """The specs run on ``problem``: those that apply (:func:`problem_spec`), matched
        to the budgets if any."""
        specs = _problem_specs(config, problem)
        if config.budgets:
            return list(_cached_plan(specs, tuple(config.budgets), problem)[0])
        return specs

    def setup(
        self, config: VarianceConfig, data: Any, ctx: Context, estimator: Any
    ) -> VarianceState:
        problem = make_problem(ctx.unit.extra, ctx.device)
        leaf = problem.logits.clone().requires_grad_()
        return VarianceState(None, estimator, problem, leaf, problem.exact(leaf))

    def cadence(self, config: VarianceConfig, state: VarianceState) -> Cadence:
        est = state.estimator
        stateful = any(p.requires_grad for p in est.parameters()) or any(est.buffers())
        return Cadence(config.warmup if stateful else 0)

    def step(self, state: VarianceState, step: int, ctx: Context) -> StepResult:
        q = state.problem.build(state.leaf)
        out = state.estimator(state.problem.f, q, generator=ctx.stream("train"))
        # θ stays fixed: no model loss to apply, only the control variates learn.
        return StepResult(None, out.cv_loss, out.mean_evals)

    def finish(self, state: VarianceState, ctx: Context) -> dict[str, Any]:
        p, leaf = state.problem, state.leaf
        stats = gradient_stats(
            state.estimator,
            p.f,
            p.build(leaf),
            leaf,
            ctx.config.draws,
            exact=state.exact,
            generator=ctx.stream("draws"),
        )
        d: dict[str, Any] = stats.as_dict()
        d["variance_x_evals"] = stats.variance * stats.n_evals
        d["unbiased"] = is_unbiased(state.estimator)
        d["timing_draws"], d["draw_seconds"] = _time_draws(state, ctx)
        return d

    def collect(
        self, config: VarianceConfig, per_seed: dict[str, dict[int, dict[str, Any]]]
    ) -> dict[str, Any]:
        """``{problem: {description, exact_norm, support, estimators: {spec: mean ± s.e.}}}``,
        with budgets: ``budgets`` (``{budget: [specs compared at it]}``) and
        ``over_budget`` (``{spec: cost}`` of those not run)."""
        out: dict[str, Any] = {}
        for pname in problem_names(config):
            problem = make_problem(pname)
            leaf = problem.logits.clone().requires_grad_()
            exact = problem.exact(leaf)
            res: dict[str, Any] = {
                "description": problem.description,
                "exact_norm": None
                if exact is None
                else float(torch.cat([g.reshape(-1) for g in exact]).norm()),
                "support": problem.support,
                "estimators": {
                    key.split("/", 1)[1]: aggregate(seeds)
                    for key, seeds in per_seed.items()
                    if key.split("/", 1)[0] == pname
                },
            }
            if (m := _SUM_NAME.fullmatch(pname)) is not None:
                res.update(C=int(m[1]), D=int(m[2]), logits=m[3])
            if problem.k is not None:
                res["k"] = problem.k
            if config.budgets:
                specs = _problem_specs(config, problem)
                plan, over = _cached_plan(specs, tuple(config.budgets), problem)
                res["budgets"] = {
                    str(b): [s for s, bs in plan.items() if b in bs] for b in config.budgets
                }
                res["over_budget"] = over
            out[pname] = res
        return out


#: plans already made in this process: units() and collect() ask for the same ones, and
#: the probes (one call per sample size tried) are not free on large problems
_PLANS: dict[tuple[str, tuple[str, ...], tuple[int, ...]], Any] = {}


def _cached_plan(
    specs: list[str], budgets: tuple[int, ...], problem: Problem
) -> tuple[dict[str, list[int]], dict[str, float]]:
    key = (problem.name, tuple(specs), budgets)
    if ":" in problem.name:  # a user's problem may change between calls: no cache
        return budget_plan(specs, budgets, problem)
    if key not in _PLANS:
        _PLANS[key] = budget_plan(specs, budgets, problem)
    return _PLANS[key]


def problem_spec(spec: str, problem: Problem) -> str | None:
    """``spec`` as it runs on ``problem``, or ``None`` where it does not apply.

    On a k-hot problem only the k-hot estimators (:func:`~discograd.experiments.common.
    is_k_hot`) apply, with the problem's ``k`` (added to a spec without one; a spec with
    another ``k`` does not apply). On the other problems a k-hot estimator applies at
    ``k = 1`` only, where its subset law is the categorical one. Then the estimator must
    support the problem's kind and, if it enumerates (``Exact``), its support; a spec
    the registry refuses (a temperature below ReinMax's 1) does not apply.
    """
    try:
        est = make(spec)
        if is_k_hot(est):
            if problem.k is not None and "k" not in parse_spec(spec)[1]:
                spec = with_value(spec, "k", problem.k)
                est = make(spec)
            if est.k != (problem.k or 1):
                return None
    except ConfigError:
        return None
    limit = support_limit(est)
    if not supports(est, problem.kind) or (limit is not None and problem.support > limit):
        return None
    return spec


def _problem_specs(config: VarianceConfig, problem: Problem) -> list[str]:
    out = []
    for spec in expand_specs(tuple(config.estimators), tuple(config.temperatures)):
        applied = problem_spec(spec, problem)
        if applied is not None:
            out.append(applied)
    return out
