"""discograd against peer libraries (storchastic, relaxit): speed and gradient variance.

Run by hand, from the repository root (about 2-3 minutes on 2 CPU cores; ``--quick``
for a ~30 s smoke run)::

    PYTHONPATH=src python benchmarks/bench_peers.py [--quick] [--draws N] [--threads T]

This script installs nothing. A peer that is not importable is reported as such,
with the command that installs it without pulling another torch::

    pip install --no-deps storchastic   # then: pip install --no-deps pyro-ppl pyro-api
                                        #       opt_einsum entmax
    pip install --no-deps relaxit       # needs pyro-ppl too

and discograd's own numbers are still printed.

What it measures, for every estimator that discograd and a peer both implement,
on identical problems (same logits, same cost ``f``, same temperature, same
number of samples / evaluations of ``f`` per data point):

* **time per gradient**: one forward pass (sampling, ``f``, surrogate) and one
  backward pass to the logits for a batch of data points; median over repeats
  after a warm-up, both sides in the same process with the same thread setting.
  ``peer/dg`` > 1 means discograd is faster.
* **gradient variance at equal f-evaluations**: ``--draws`` independent
  gradients of :math:`\\sum_b \\mathbb E[f_b]` with respect to all logits; the
  total variance (trace of the covariance, summed over parameters) of each
  side and ``peer/dg`` (> 1: discograd has lower variance). Draws are
  vectorised identically on both sides: the batch of data points is replicated
  R times into one larger batch (every estimator compared here treats data
  points independently, so R replicas give R independent draws).
* **agreement of the means**: ``scale`` = ⟨ḡ_peer, ḡ_dg⟩ / ‖ḡ_dg‖² (1 when the
  two estimate the same vector) and ``Δ/noise`` = ‖ḡ_peer − ḡ_dg‖ /
  sqrt((tr Σ_peer + tr Σ_dg) / N), about 1 when the two means agree up to
  Monte-Carlo noise and much larger when one side estimates something else
  (a bug, or a different definition, named in the footnotes).

Problems: (a) categorical, 64 data points × 20 variables × 10 categories, cost
the mean squared error of a fixed random linear decoder (200 → 32) against a
fixed random target per data point; (b) Bernoulli, 64 × 200 binary variables,
the same kind of cost (200 → 32); (c) a small Bernoulli problem (16 × 6
variables, not timed) whose exact gradient is known by enumeration:
``bias/noise`` = ‖ḡ − g*‖ / sqrt(tr Σ / N) of each side, about 1 for an unbiased
implementation (the relaxed estimators are biased by design, on both sides).

Caveats:

* Importing storchastic monkey-patches torch globally (``torch.is_tensor``,
  ``Tensor.to``, ``Tensor.le``, ``Tensor.gt``). Those patches are switched on
  only while storchastic code runs and switched off for discograd and relaxit,
  so neither is slowed down by them. All distributions are built with
  ``validate_args=False`` on every side.
* storchastic averages costs over its data plate; its gradients are multiplied
  by the number of data points to match the sum convention used here.
* Timings on a shared machine are noisy; compare ratios from one run only.
  Times are for small problems, where per-call Python overhead matters.
* discograd's ARM / DisARM evaluate ``f`` once when the two antithetic samples
  coincide (``n_evals`` ≤ 2); the peers always evaluate twice.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType

import torch
from _machine import cpu_name
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent, OneHotCategorical

import discograd
from discograd.diagnostics import exact_gradient
from discograd.distributions import Concrete
from discograd.estimators import (
    ARM,
    REBAR,
    REINFORCE,
    RELAX,
    RLOO,
    DisARM,
    Estimator,
    GumbelSoftmax,
    STGumbelSoftmax,
    StraightThrough,
)

CostFn = Callable[[Tensor], Tensor]
# theta (a leaf), f -> gradient of sum_b E[f_b] w.r.t. theta (same shape as theta)
GradFn = Callable[[Tensor, CostFn], Tensor]

TAU = 0.5  # temperature of the relaxed estimators (both sides)
TAU_CV = 1.0  # REBAR / RELAX temperature: storchastic's fixed initial value


# ----------------------------------------------------------------------- problems
@dataclass
class Problem:
    """A batch of data points with logits ``theta0`` and a cost built for ``reps`` replicas."""

    key: str
    kind: str  # "categorical" | "bernoulli"
    theta0: Tensor
    weight: Tensor
    target: Tensor
    description: str
    exact: bool = False  # small enough for an exact gradient by enumeration; not timed
    draws_factor: int = 1  # draws = --draws × this

    def cost(self, reps: int = 1) -> CostFn:
        """``f`` for a batch of ``reps`` stacked copies of the data points."""
        w, y = self.weight, self.target.repeat(reps, 1)
        n_event = 2 if self.kind == "categorical" else 1

        def f(z: Tensor) -> Tensor:
            x = z.flatten(-2) if n_event == 2 else z
            if x.dtype != w.dtype:  # storchastic's DisARM passes bool samples
                x = x.to(w.dtype)
            return ((x @ w - y) ** 2).mean(-1)

        return f

    def replicate(self, reps: int) -> Tensor:
        """A fresh leaf: ``theta0`` stacked ``reps`` times along the batch dimension."""
        t = self.theta0.repeat((reps,) + (1,) * (self.theta0.dim() - 1))
        return t.requires_grad_()


def make_problems() -> list[Problem]:
    gen = torch.Generator().manual_seed(0)
    B, D, C, H, V = 64, 20, 10, 32, 200
    cat = Problem(
        "cat",
        "categorical",
        torch.randn(B, D, C, generator=gen),
        torch.randn(D * C, H, generator=gen) / math.sqrt(D),
        torch.randn(B, H, generator=gen),
        f"(a) categorical: {B} data points × {D} variables × {C} categories, "
        f"f = mean squared error of a fixed linear decoder ({D * C} → {H})",
    )
    ber = Problem(
        "ber",
        "bernoulli",
        torch.randn(B, V, generator=gen),
        torch.randn(V, H, generator=gen) / math.sqrt(V),
        torch.randn(B, H, generator=gen),
        f"(b) Bernoulli: {B} data points × {V} binary variables, "
        f"f = mean squared error of a fixed linear decoder ({V} → {H})",
    )
    gen = torch.Generator().manual_seed(2)
    Bs, Vs, Hs = 16, 6, 4
    small = Problem(
        "ber-small",
        "bernoulli",
        torch.randn(Bs, Vs, generator=gen),
        torch.randn(Vs, Hs, generator=gen) / math.sqrt(Vs),
        torch.randn(Bs, Hs, generator=gen),
        f"(c) Bernoulli, small enough for the exact gradient (enumeration): {Bs} data points "
        f"× {Vs} binary variables, the same kind of cost ({Vs} → {Hs}); variance only, "
        "with 20 × --draws draws, and each side's bias against the exact gradient",
        exact=True,
        draws_factor=20,
    )
    return [cat, ber, small]


def distribution(kind: str, logits: Tensor) -> Distribution:
    """The joint distribution of one data point's variables (batch dim first)."""
    if kind == "categorical":
        return Independent(OneHotCategorical(logits=logits, validate_args=False), 1)
    return Independent(Bernoulli(logits=logits, validate_args=False), 1)


class ControlNet(nn.Module):
    """RELAX's learned part r(σ(z)), shared by both sides: an MLP on the flattened relaxed sample.

    Works on plain tensors and on storchastic tensors (leading sample / plate dims).
    """

    def __init__(self, n_in: int, n_event: int, hidden: int = 32) -> None:
        super().__init__()
        self.n_event = n_event
        gen = torch.Generator().manual_seed(1)
        self.l1 = nn.Linear(n_in, hidden)
        self.l2 = nn.Linear(hidden, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(-self.n_event) if self.n_event > 1 else x
        return self.l2(torch.tanh(self.l1(x))).squeeze(-1)


# ------------------------------------------------------------------------ sides
def discograd_side(est: Estimator, kind: str, with_cv: bool = False) -> GradFn:
    """``est(f, q).loss.sum().backward()`` (plus ``cv_loss`` when timing a training step)."""

    def grad(theta: Tensor, f: CostFn) -> Tensor:
        out = est(f, distribution(kind, theta))
        loss = out.loss.sum()
        if with_cv and out.cv_loss is not None:
            loss = loss + out.cv_loss
        theta.grad = None
        loss.backward()
        return theta.grad

    return grad


_STORCH_PATCHED: tuple[tuple[object, str], ...] = (
    (torch, "is_tensor"),
    (torch.Tensor, "to"),
    (torch.Tensor, "le"),
    (torch.Tensor, "gt"),
)


@dataclass
class Peers:
    """Importable peers, and the torch attributes storchastic patches (both versions)."""

    storch: ModuleType | None = None
    relaxit: ModuleType | None = None
    original: dict[str, object] = field(default_factory=dict)
    patched: dict[str, object] = field(default_factory=dict)

    def _swap(self, table: dict[str, object]) -> None:
        for owner, name in _STORCH_PATCHED:
            setattr(owner, name, table[f"{id(owner)}.{name}"])

    @contextlib.contextmanager
    def storch_patches(self) -> Iterator[None]:
        """storchastic's monkey patches switched on (only inside this block)."""
        self._swap(self.patched)
        try:
            yield
        finally:
            self._swap(self.original)


def import_peers() -> Peers:
    peers = Peers()
    for owner, name in _STORCH_PATCHED:
        peers.original[f"{id(owner)}.{name}"] = getattr(owner, name)
    try:
        import storch

        peers.storch = storch
    except ImportError as exc:
        print(
            f"storchastic is not installed ({exc}); to compare with it: "
            "`pip install --no-deps storchastic pyro-ppl pyro-api opt_einsum entmax`"
        )
    for owner, name in _STORCH_PATCHED:
        peers.patched[f"{id(owner)}.{name}"] = getattr(owner, name)
    peers._swap(peers.original)
    try:
        import relaxit.distributions

        peers.relaxit = relaxit
    except ImportError as exc:
        print(
            f"relaxit is not installed ({exc}); to compare with it: "
            "`pip install --no-deps relaxit pyro-ppl pyro-api opt_einsum`"
        )
    return peers


def storch_side(
    peers: Peers, method: Callable[[], nn.Module], kind: str, probs: bool = False
) -> GradFn:
    """A storchastic estimator: sample through ``method``, ``add_cost``, ``storch.backward``.

    ``probs=True`` parameterises a categorical by ``softmax(logits)`` (storchastic's
    REBAR / RELAX read the gradient with respect to ``probs`` to train their
    control variate, and fail on a logits-parameterised ``OneHotCategorical``).
    """
    storch = peers.storch
    assert storch is not None
    holder: list[nn.Module] = []

    def grad(theta: Tensor, f: CostFn) -> Tensor:
        if not holder:  # built lazily, inside the patches, and reused (it holds state)
            with peers.storch_patches():
                holder.append(method())
        theta.grad = None
        with peers.storch_patches():
            t = storch.denote_independent(theta, 0, "data")
            if kind == "bernoulli":
                q: Distribution = Bernoulli(logits=t, validate_args=False)
            elif probs:
                q = OneHotCategorical(probs=t.softmax(-1), validate_args=False)
            else:
                q = OneHotCategorical(logits=t, validate_args=False)
            z = holder[0](q)
            storch.add_cost(f(z), "cost")
            storch.backward()
        # storchastic averages over the data plate; the sum convention needs x B.
        return theta.grad * theta.shape[0]

    return grad


def relaxit_side(sample: Callable[[Tensor], Tensor]) -> GradFn:
    """A relaxit distribution: ``f(dist.rsample()).sum().backward()``."""

    def grad(theta: Tensor, f: CostFn) -> Tensor:
        theta.grad = None
        f(sample(theta)).sum().backward()
        return theta.grad

    return grad


# ------------------------------------------------------------------ comparisons
@dataclass
class Pair:
    problem: Problem
    estimator: str
    evals: str
    ours: GradFn
    peer: GradFn
    ours_timed: GradFn | None = None  # the training step, where it differs from ``ours``
    peer_timed: GradFn | None = None
    notes: tuple[str, ...] = ()


@dataclass
class Result:
    pair: Pair
    ms: tuple[float, float]
    var: tuple[float, float]
    norm: tuple[float, float]
    scale: float
    z: float
    bias: tuple[float, float]  # ‖ḡ − g*‖ / sqrt(tr Σ / N) of each side; nan without g*


def storch_pairs(peers: Peers, problems: list[Problem]) -> list[Pair]:
    sm = peers.storch.method  # type: ignore[union-attr]
    pairs: list[Pair] = []
    for p in problems:
        k = p.kind

        def side(m: Callable[[], nn.Module], k: str = k, probs: bool = False) -> GradFn:
            return storch_side(peers, m, k, probs)

        pairs += [
            Pair(
                p,
                f"GumbelSoftmax (τ={TAU})",
                "1 / 1",
                discograd_side(GumbelSoftmax(TAU), k),
                side(lambda: sm.GumbelSoftmax("z", initial_temperature=TAU, annealing_rate=0.0)),
                notes=("gs",),
            ),
            Pair(
                p,
                f"ST Gumbel-Softmax (τ={TAU})",
                "1 / 1",
                discograd_side(STGumbelSoftmax(TAU), k),
                side(
                    lambda: sm.GumbelSoftmax(
                        "z", straight_through=True, initial_temperature=TAU, annealing_rate=0.0
                    )
                ),
                notes=("gs",),
            ),
            Pair(
                p,
                "REINFORCE, no baseline (S=1)",
                "1 / 1",
                discograd_side(REINFORCE(), k),
                side(lambda: sm.ScoreFunction("z", n_samples=1, baseline_factory=None)),
            ),
            Pair(
                p,
                "RLOO (S=4)",
                "4 / 4",
                discograd_side(RLOO(4), k),
                side(lambda: sm.ScoreFunction("z", n_samples=4, baseline_factory="batch_average")),
                notes=("rloo",),
            ),
        ]
        if k == "bernoulli":
            pairs += [
                Pair(p, "ARM", "≤2 / 2", discograd_side(ARM(), k), side(lambda: sm.ARM("z"))),
                Pair(
                    p,
                    "DisARM",
                    "≤2 / 2",
                    discograd_side(DisARM(), k),
                    side(lambda: sm.DisARM("z")),
                    notes=("disarm",),
                ),
            ]
        # REBAR / RELAX: untrained control variates, η = 1, λ = 1 on both sides.
        rebar = REBAR(eta=1.0, tau=TAU_CV)
        n_in = math.prod(p.theta0.shape[1:])
        n_event = 2 if k == "categorical" else 1
        net = ControlNet(n_in, n_event)
        relax = RELAX(net, tau=TAU_CV, relaxed_f=False)
        pairs += [
            Pair(
                p,
                f"REBAR (η=1, λ={TAU_CV:g})",
                "3 / 3",
                discograd_side(rebar, k),
                side(lambda: sm.REBAR("z"), probs=True),
                ours_timed=discograd_side(rebar, k, with_cv=True),
                notes=("cv", "rebar_ber") if k == "bernoulli" else ("cv",),
            ),
            Pair(
                p,
                f"RELAX (MLP c, λ={TAU_CV:g})",
                "1 / 1",
                discograd_side(relax, k),
                side(lambda net=net: sm.RELAX("z", c_phi=net), probs=True),
                ours_timed=discograd_side(relax, k, with_cv=True),
                notes=("cv", "relax", "rebar_ber") if k == "bernoulli" else ("cv", "relax"),
            ),
        ]
    return pairs


def _st_bernoulli(logits: Tensor) -> Tensor:
    """A Bernoulli sample with the gradient of its probabilities (discograd's functional API)."""
    probs = torch.sigmoid(logits)
    return discograd.straight_through(torch.rand_like(probs) < probs, probs)


def relaxit_pairs(peers: Peers, problems: list[Problem]) -> list[Pair]:
    rd = peers.relaxit.distributions  # type: ignore[union-attr]
    tau = torch.tensor(TAU)
    pairs: list[Pair] = []
    for p in problems:
        k = p.kind
        if k == "categorical":
            values = torch.arange(p.theta0.shape[-1], dtype=torch.float32)
            rx_gs = relaxit_side(
                lambda t, values=values: rd.GeneralizedGumbelSoftmax(
                    values, logits=t, tau=tau, hard=False
                ).rsample()
            )
            rx_st = relaxit_side(
                lambda t: rd.DecoupledStraightThroughGumbelSoftmax(tau, tau, logits=t).rsample()
            )
            gs, st = f"GumbelSoftmax (τ={TAU})", f"ST Gumbel-Softmax (τ={TAU})"
            pairs += [
                Pair(
                    p, gs, "1 / 1", discograd_side(GumbelSoftmax(TAU), k), rx_gs, notes=("rx_gs",)
                ),
                Pair(
                    p, st, "1 / 1", discograd_side(STGumbelSoftmax(TAU), k), rx_st, notes=("rx_st",)
                ),
                Pair(
                    p,
                    f"{gs}, distribution level",
                    "1 / 1",
                    relaxit_side(lambda t: Concrete(TAU, logits=t).rsample()),
                    rx_gs,
                    notes=("rx_level",),
                ),
                Pair(
                    p,
                    f"{st}, function level",
                    "1 / 1",
                    relaxit_side(lambda t: discograd.gumbel_softmax(t, TAU, hard=True)),
                    rx_st,
                    notes=("rx_level",),
                ),
            ]
        else:
            rx_ber = relaxit_side(
                lambda t: rd.StraightThroughBernoulli(logits=t, validate_args=False).rsample()
            )
            ber = "StraightThrough (Bernoulli)"
            pairs += [
                Pair(p, ber, "1 / 1", discograd_side(StraightThrough(), k), rx_ber),
                Pair(
                    p,
                    f"{ber}, function level",
                    "1 / 1",
                    relaxit_side(_st_bernoulli),
                    rx_ber,
                    notes=("rx_level",),
                ),
            ]
    return pairs


NOTES = {
    "gs": "storchastic samples through torch's RelaxedOneHotCategorical / RelaxedBernoulli "
    "(ST: pyro's *StraightThrough variants); same estimator. Its default temperature "
    "annealing is switched off (annealing_rate=0).",
    "rloo": "storchastic: ScoreFunction(baseline_factory='batch_average'), the leave-one-out "
    "baseline: the same estimator as discograd's RLOO.",
    "disarm": "storchastic's DisARM returns the antithetic cost f(b̃) as a bare control "
    "variate, without the (1 − magic_box(log p)) factor its ARM uses, so f(b̃) is added to "
    "f(b) instead of subtracted: the score weight f(b) + f(b̃) is symmetric in the pair, "
    "and the estimator's mean is 0 (`scale` ≈ 0; bias/noise ≫ 1 on ber-small).",
    "cv": "Control variates untrained on both sides, η = 1 and λ = 1 (storchastic's fixed "
    "initial values). Timings are a training step: discograd's `(loss.sum() + cv_loss)"
    ".backward()`, storchastic's `storch.backward()` (which also backpropagates the "
    "variance loss to η, λ and c, with create_graph=True). Variance draws use the same "
    "estimators.",
    "relax": "Same control network instance (ControlNet, an MLP with random weights) on both "
    "sides, without the relaxed-f term: discograd RELAX(net, relaxed_f=False); storchastic "
    "RELAX(c_phi=net) (c = η·net with η = 1). One evaluation of f.",
    "rebar_ber": "storchastic's conditional relaxation for Bernoulli variables "
    "(storch.conditional_gumbel_rsample) computes log p + log(1 + p) + log v' + log(1 + v') "
    "where the logits log p − log(1 − p) and log v' − log(1 − v') are meant, so z̃ does "
    "not follow p(z | b) and its REBAR / RELAX are biased on Bernoulli variables "
    "(bias/noise ≫ 1 on ber-small for REBAR; RELAX's random control network is too "
    "noisy here for the bias to show).",
    "rx_gs": "relaxit: GeneralizedGumbelSoftmax(values, logits, tau, hard=False).rsample(), "
    "which calls torch.nn.functional.gumbel_softmax; same estimator. relaxit works on the raw "
    "logits; discograd is handed a torch.distributions object whose constructor normalises "
    "them (logsumexp, forward and backward), which is part of discograd's time here.",
    "rx_level": "discograd's distribution / functional API on the raw logits "
    "(discograd.distributions.Concrete(τ, logits).rsample(), dg.gumbel_softmax(logits, τ, "
    "hard=True), dg.straight_through(bernoulli sample, sigmoid(logits))), the same level as "
    "relaxit's distributions: no torch.distributions object to build, no estimator call.",
    "rx_st": "relaxit: DecoupledStraightThroughGumbelSoftmax with equal forward and backward "
    "temperatures, i.e. straight-through Gumbel-Softmax; same estimator (and the same "
    "logits-normalisation remark as for GumbelSoftmax).",
}

NOT_COMPARED = {
    "storchastic": "not compared: its MovingAverageBaseline (REINFORCE + EMA) folds the current "
    "cost into the baseline before using it (so the baseline depends on the sample; discograd's "
    "EMA uses past calls only); UnorderedSet, SWOR, Rao-Blackwellised SF, LAX and GumbelEntmax "
    "have no discograd counterpart; discograd's AR/ARS/ARSM(+), GumbelRao, ReinMax, VarGrad and "
    "StraightThrough have no storchastic counterpart.",
    "relaxit": "not compared: relaxit has relaxed distributions, not gradient estimators of "
    "E_q[f]. RebarRelaxation is only a relaxed Bernoulli (no REBAR estimator); its RELAX lives "
    "in rl_benchmarks (an RL training loop needing gymnasium); GumbelSoftmaxTopK passes `probs` "
    "to F.gumbel_softmax as logits (a different distribution); HardConcrete, Gaussian-/"
    "Correlated-RelaxedBernoulli, InvertibleGaussian, LogisticNormalSoftmax and "
    "StochasticTimesSmooth have no discograd counterpart.",
}


# ------------------------------------------------------------------ measurement
def time_ms(fns: tuple[GradFn, ...], problem: Problem, warmup: int, repeats: int) -> list[float]:
    """Median ms per gradient of each function; the two are interleaved call by call so
    that load drifting on a shared machine affects both alike."""
    f = problem.cost(1)
    thetas = [problem.replicate(1) for _ in fns]
    for _ in range(warmup):
        for fn, theta in zip(fns, thetas, strict=True):
            fn(theta, f)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, theta, ts in zip(fns, thetas, times, strict=True):
            start = time.perf_counter()
            fn(theta, f)
            ts.append(time.perf_counter() - start)
    return [1e3 * statistics.median(ts) for ts in times]


def draw_stats(fn: GradFn, problem: Problem, n_draws: int, chunk: int) -> tuple[Tensor, float]:
    """Mean gradient (flattened, float64) and total variance over ``n_draws`` draws."""
    total = torch.zeros(problem.theta0.numel(), dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    done = 0
    while done < n_draws:
        reps = min(chunk, n_draws - done)
        g = fn(problem.replicate(reps), problem.cost(reps)).detach()
        g = g.reshape(reps, -1).double()
        total += g.sum(0)
        total_sq += (g * g).sum(0)
        done += reps
    mean = total / n_draws
    var = (total_sq - n_draws * mean * mean).clamp_min(0.0) / (n_draws - 1)
    return mean, float(var.sum())


def exact_flat(problem: Problem) -> Tensor:
    """The exact gradient of sum_b E[f_b] w.r.t. the logits, flattened (float64)."""
    theta = problem.replicate(1)
    (g,) = exact_gradient(problem.cost(1), distribution(problem.kind, theta), theta)
    return g.reshape(-1).double()


def measure(pair: Pair, args: argparse.Namespace, seed: int) -> Result:
    problem = pair.problem
    ms = [math.nan, math.nan]
    if not problem.exact:
        torch.manual_seed(seed)
        timed = (pair.ours_timed or pair.ours, pair.peer_timed or pair.peer)
        ms = time_ms(timed, problem, args.warmup, args.repeats)
    n = args.draws * problem.draws_factor
    chunk = max(args.chunk, args.chunk * problem.draws_factor)
    stats = []
    # Different seeds: several pairs consume torch's global generator identically, and
    # the same seed would give identical draws (Δ = 0) instead of independent ones.
    for i, fn in enumerate((pair.ours, pair.peer)):
        torch.manual_seed(seed + 1 + i)
        stats.append(draw_stats(fn, problem, n, chunk))
    (m_d, v_d), (m_p, v_p) = stats
    nd = float(m_d @ m_d)
    scale = float(m_p @ m_d) / nd if nd > 0 else math.nan
    noise = math.sqrt((v_d + v_p) / n)
    z = float((m_p - m_d).norm()) / noise if noise > 0 else math.nan
    bias = (math.nan, math.nan)
    if problem.exact:
        g = exact_flat(problem)
        bias = (
            float((m_d - g).norm()) / math.sqrt(v_d / n),
            float((m_p - g).norm()) / math.sqrt(v_p / n),
        )
    return Result(
        pair,
        (ms[0], ms[1]),
        (v_d, v_p),
        (float(m_d.norm()), float(m_p.norm())),
        scale,
        z,
        bias,
    )


# ----------------------------------------------------------------------- output
def _g(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else "–"


def print_tables(lib: str, results: list[Result], note_ids: dict[str, int]) -> None:
    print(f"\n### discograd vs {lib}: time per gradient (forward + backward)\n")
    print("| problem | estimator | f-evals (dg / peer) | discograd ms | peer ms | peer/dg |")
    print("| --- | --- | :---: | ---: | ---: | ---: |")
    for r in results:
        p = r.pair
        if p.problem.exact:
            continue
        marks = "".join(f"[^{note_ids[n]}]" for n in p.notes)
        print(
            f"| {p.problem.key} | {p.estimator}{marks} | {p.evals} | {r.ms[0]:.3f} "
            f"| {r.ms[1]:.3f} | {r.ms[1] / r.ms[0]:.2f} |"
        )
    print(f"\n### discograd vs {lib}: gradient variance at equal f-evaluations\n")
    print(
        "| problem | estimator | tr Var dg | tr Var peer | peer/dg | ‖mean‖ dg | ‖mean‖ peer "
        "| scale | Δ/noise | bias/noise dg | bias/noise peer |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        p = r.pair
        marks = "".join(f"[^{note_ids[n]}]" for n in p.notes)
        print(
            f"| {p.problem.key} | {p.estimator}{marks} | {_g(r.var[0])} | {_g(r.var[1])} "
            f"| {_g(r.var[1] / r.var[0])} | {_g(r.norm[0])} | {_g(r.norm[1])} "
            f"| {_g(r.scale)} | {_g(r.z)} | {_g(r.bias[0])} | {_g(r.bias[1])} |"
        )


def version_of(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few draws and repeats (smoke run)")
    parser.add_argument("--draws", type=int, default=None, help="gradient draws per side")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per side")
    args = parser.parse_args(argv)
    if args.draws is None:
        args.draws = 100 if args.quick else 1000
    if args.draws < 2:
        parser.error("--draws must be >= 2")
    if args.repeats is None:
        args.repeats = 5 if args.quick else 25
    args.warmup = 2 if args.quick else 5
    args.chunk = 250
    torch.set_num_threads(args.threads)

    peers = import_peers()
    print(
        f"\ntorch {torch.__version__}, discograd {discograd.__version__}, "
        f"storchastic {version_of('storchastic') if peers.storch else 'not importable'}, "
        f"relaxit {version_of('relaxit') if peers.relaxit else 'not importable'}, "
        f"Python {platform.python_version()}; CPU: {cpu_name()}; "
        f"torch threads: {torch.get_num_threads()}; draws: {args.draws}, "
        f"timing: median of {args.repeats} after {args.warmup} warm-up calls; float32"
    )
    problems = make_problems()
    for p in problems:
        print(f"\n{p.description}")

    libs: list[tuple[str, Callable[[Peers, list[Problem]], list[Pair]]]] = []
    if peers.storch is not None:
        libs.append(("storchastic", storch_pairs))
    if peers.relaxit is not None:
        libs.append(("relaxit", relaxit_pairs))
    note_ids: dict[str, int] = {}
    for lib, build in libs:
        pairs = build(peers, problems)
        for pr in pairs:
            for n in pr.notes:
                note_ids.setdefault(n, len(note_ids) + 1)
        results = [measure(pr, args, seed=10 + i) for i, pr in enumerate(pairs)]
        print_tables(lib, results, note_ids)
        print(f"\n{lib} — {NOT_COMPARED[lib]}")
    if not libs:
        own_numbers(problems, args)
    print()
    for n, i in note_ids.items():
        print(f"[^{i}]: {NOTES[n]}")


def own_numbers(problems: list[Problem], args: argparse.Namespace) -> None:
    """No peer installed: discograd's own timings and variances on the same problems."""
    print("\n### discograd alone (no peer installed)\n")
    print("| problem | estimator | ms per gradient | tr Var |")
    print("| --- | --- | ---: | ---: |")
    for p in problems:
        ests: dict[str, Estimator] = {
            f"GumbelSoftmax (τ={TAU})": GumbelSoftmax(TAU),
            f"ST Gumbel-Softmax (τ={TAU})": STGumbelSoftmax(TAU),
            "REINFORCE (S=1)": REINFORCE(),
            "RLOO (S=4)": RLOO(4),
            f"REBAR (η=1, λ={TAU_CV:g})": REBAR(eta=1.0, tau=TAU_CV),
        }
        if p.kind == "bernoulli":
            ests |= {"ARM": ARM(), "DisARM": DisARM(), "StraightThrough": StraightThrough()}
        for name, est in ests.items():
            fn = discograd_side(est, p.kind)
            torch.manual_seed(0)
            (ms,) = time_ms((fn,), p, args.warmup, args.repeats)
            _, var = draw_stats(fn, p, args.draws * p.draws_factor, args.chunk)
            print(f"| {p.key} | {name} | {ms:.3f} | {_g(var)} |")


if __name__ == "__main__":
    main()
