r"""Bias, variance, SNR and cosine of every estimator against the exact gradient.

A set of small problems whose support can be enumerated, so that
:func:`discograd.diagnostics.exact_gradient` gives the truth:

* ``toy``: the ARSM toy reward with C = 10 categories, R = 30, skewed logits;
* ``categorical``: D = 3 variables with C = 4 categories sharing a nonlinear
  cost, a batch of 4 data points with different logits;
* ``bernoulli``: D = 8 binary variables, a nonlinear cost, a batch of 4;
* ``offset``: the categorical problem with 100 added to the cost (a large mean:
  the case baselines exist for).

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
:data:`TIMING_REPEATS` further timed calls of :data:`TIMING_DRAWS` draws.
"""

from __future__ import annotations

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
from discograd.estimators.base import Estimator
from discograd.estimators.registry import canonical, make, parse_spec
from discograd.experiments.common import (
    check_estimators,
    every_estimator,
    is_unbiased,
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
    "PROBLEMS",
    "VARIANCE_ESTIMATORS",
    "VarianceConfig",
    "VarianceTask",
    "expand_specs",
    "make_problem",
]

#: every registered estimator (one added to the registry joins the study)
VARIANCE_ESTIMATORS: tuple[str, ...] = every_estimator(
    None, {"rloo": "n_samples=4", "vargrad": "n_samples=4", "gumbel_rao": "n_samples=10"}
)

#: problem name -> kind of its variables
PROBLEMS: dict[str, str] = {
    "toy": "categorical",
    "categorical": "categorical",
    "bernoulli": "bernoulli",
    "offset": "categorical",
}


@dataclass
class VarianceConfig(RunConfig):
    """The study: problems, estimators (relaxed ones at several temperatures), draws."""

    problems: tuple[str, ...] = option(tuple(PROBLEMS), "problems", choices=tuple(PROBLEMS))
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

    def validate(self) -> None:
        super().validate()
        if not self.problems:
            raise ConfigError("problems must name at least one problem")
        check_estimators(self.estimators)


@dataclass
class Problem:
    name: str
    kind: str  # "categorical" or "bernoulli"
    logits: Tensor
    build: Callable[[Tensor], Distribution]
    f: Callable[[Tensor], Tensor]
    description: str


def make_problem(name: str, device: torch.device | str = "cpu") -> Problem:
    """Problem ``name``: the same logits and cost for every seed."""
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
    for _ in range(TIMING_REPEATS):
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
        for pname in config.problems:
            for spec in expand_specs(tuple(config.estimators), tuple(config.temperatures)):
                try:
                    est = make(spec)
                except ConfigError:
                    continue  # a temperature this method refuses (ReinMax below 1)
                if supports(est, PROBLEMS[pname]):
                    out.append(Unit(f"{pname}/{canonical(spec)}", spec, pname))
        return out

    def setup(
        self, config: VarianceConfig, data: Any, ctx: Context, estimator: Any
    ) -> VarianceState:
        problem = make_problem(ctx.unit.extra, ctx.device)
        leaf = problem.logits.clone().requires_grad_()
        exact = exact_gradient(problem.f, problem.build(leaf), leaf)
        return VarianceState(None, estimator, problem, leaf, exact)

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
        """``{problem: {description, exact_norm, estimators: {spec: mean ± s.e.}}}``."""
        out: dict[str, Any] = {}
        for pname in config.problems:
            problem = make_problem(pname)
            leaf = problem.logits.clone().requires_grad_()
            exact = exact_gradient(problem.f, problem.build(leaf), leaf)
            out[pname] = {
                "description": problem.description,
                "exact_norm": float(torch.cat([g.reshape(-1) for g in exact]).norm()),
                "estimators": {
                    key.split("/", 1)[1]: aggregate(seeds)
                    for key, seeds in per_seed.items()
                    if key.split("/", 1)[0] == pname
                },
            }
        return out
