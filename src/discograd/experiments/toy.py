r"""The ARSM toy problem (Yin, Yue & Zhou 2019, Section 5.1; seed 001).

Maximise :math:`L(\theta) = \mathbb E_{z \sim \mathrm{Cat}(\mathrm{softmax}\,\theta)}[f(z)]`
with :math:`f(z) = 0.5 + (z + 1)/(C R)` for :math:`z \in \{0, \dots, C-1\}`,
starting from :math:`\theta = 0` and taking gradient-ascent steps of size 1
with each estimator. The optimum puts all mass on the last category
(:math:`L^* = 0.5 + 1/R`). The rewards differ by only :math:`1/(CR)`, so the
signal is tiny next to the constant 0.5: a hard test of variance reduction.
The true gradient :math:`\pi \odot F - \pi(\pi^\top F)` is the ``exact`` entry.

Recorded per estimator: the expected reward :math:`\pi^\top F` and the
probabilities of the first and last category (every ``eval_every`` steps),
the gradient variance (trace of the covariance of ``var_draws`` estimates,
every ``var_every`` steps), cumulative f-evaluations and wall time.

The binary toys (``--problem rebar`` / ``relax``): minimise
:math:`L(\theta) = \mathbb E_{b \sim \mathrm{Bernoulli}(\sigma(\theta))}[\sum_i (b_i - t)^2]`
from :math:`\theta = 0` by gradient descent (step ``lr``), with ``t = 0.45`` (REBAR,
Tucker et al. 2017) or ``t = 0.499`` (RELAX, Grathwohl et al. 2018: the two
outcomes' costs differ by only :math:`1 - 2t = 0.002`), one variable unless
``n_vars`` says more (each its own :math:`\theta_i`). The exact gradient is
:math:`\partial L / \partial \theta_i = \sigma(\theta_i)(1-\sigma(\theta_i))(1 - 2t)`
(:func:`binary_toy_gradient`); the optimum puts :math:`b = 0` (for
:math:`t < 1/2`). Recorded: the expected loss, the mean probability
:math:`p = \sigma(\theta)` and the gradient variance, as above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Categorical, Distribution, Independent

from discograd.diagnostics import gradient_draws
from discograd.estimators.base import Estimator
from discograd.experiments.common import check_estimators, every_estimator, is_unbiased
from discograd.experiments.config import TrainConfig, option
from discograd.experiments.trainer import Context, StepResult, Task, TaskState

__all__ = [
    "BINARY_TOYS",
    "BINARY_TOY_ESTIMATORS",
    "TOY_ESTIMATORS",
    "ToyConfig",
    "ToyTask",
    "binary_toy_gradient",
    "binary_toy_loss",
    "toy_rewards",
]

#: every registered estimator for categorical variables (an estimator added to
#: the registry joins the toy), with the toy's hyper-parameters where they differ
TOY_ESTIMATORS: tuple[str, ...] = every_estimator(
    "categorical",
    {
        "rloo": "n_samples=10",
        "vargrad": "n_samples=10",
        "gumbel_softmax": "tau=0.5",
        "st_gumbel_softmax": "tau=0.5",
        "gumbel_rao": "tau=0.5,n_samples=10",
        "reinmax": "tau=1.0",
    },
)

#: every registered estimator for binary variables, for the binary toys (RLOO with two
#: samples: the cost of ARM / DisARM)
BINARY_TOY_ESTIMATORS: tuple[str, ...] = every_estimator(
    "bernoulli",
    {
        "rloo": "n_samples=2",
        "vargrad": "n_samples=2",
        "gumbel_softmax": "tau=0.5",
        "st_gumbel_softmax": "tau=0.5",
        "gumbel_rao": "tau=0.5,n_samples=10",
        "reinmax": "tau=1.0",
    },
)

#: the binary toys' targets t in E[sum_i (b_i - t)^2]
BINARY_TOYS: dict[str, float] = {"rebar": 0.45, "relax": 0.499}
TOY_PROBLEMS: tuple[str, ...] = ("arsm", *BINARY_TOYS)

ESTIMATORS_HELP = "estimator specs name[:key=value,...], e.g. rloo:n_samples=4 arsm"


@dataclass
class ToyConfig(TrainConfig):
    """Settings of the toy run; the defaults are the published setup."""

    problem: str = option(
        "arsm",
        "arsm: the ARSM categorical toy; rebar / relax: minimise E[sum_i (b_i - t)^2] over "
        "binary b, t = 0.45 / 0.499 (their estimators default to every binary one)",
        choices=TOY_PROBLEMS,
    )
    target: float | None = option(
        None, "t of the binary toys; none: the problem's (rebar 0.45, relax 0.499)"
    )
    n_vars: int = option(1, "binary variables of the binary toys", minimum=1)
    C: int = option(30, "categories", minimum=2)
    R: int = option(30, "reward scale: f(z) = 0.5 + (z+1)/(C R)", minimum=1)
    estimators: tuple[str, ...] = option(TOY_ESTIMATORS, ESTIMATORS_HELP, metavar="SPEC")
    steps: int = option(5000)
    lr: float = option(1.0, "step size of gradient ascent on E[f]")
    cv_lr: float = option(0.01)
    log_every: int = option(100)
    eval_every: int = option(10, "record E[f] and the probabilities every N steps")
    var_every: int = option(100, "gradient variance every N steps", minimum=1)
    var_draws: int = option(100, "draws per gradient-variance estimate", minimum=2)
    checkpoint_every: int = option(250)

    @classmethod
    def presets(cls, overrides: dict[str, Any]) -> list[dict[str, Any]]:
        """A binary toy's estimators (the categorical list does not apply to it)."""
        if overrides.get("problem", "arsm") in BINARY_TOYS:
            return [{"estimators": list(BINARY_TOY_ESTIMATORS)}]
        return []

    @property
    def binary(self) -> bool:
        return self.problem in BINARY_TOYS

    @property
    def t(self) -> float:
        """The binary toys' target."""
        return BINARY_TOYS[self.problem] if self.target is None else self.target

    def validate(self) -> None:
        super().validate()
        if self.binary:
            check_estimators(self.estimators, "bernoulli", support=2**self.n_vars)
        else:
            check_estimators(self.estimators, "categorical", support=self.C)


def toy_rewards(C: int, R: int, device: torch.device | str = "cpu") -> Tensor:
    """:math:`F_k = 0.5 + (k+1)/(CR)`, float64."""
    return 0.5 + (torch.arange(C, dtype=torch.float64, device=device) + 1) / (C * R)


def binary_toy_loss(theta: Tensor, t: float) -> Tensor:
    r""":math:`\sum_i \mathbb E[(b_i - t)^2]`, :math:`b_i \sim B(\sigma(\theta_i))`."""
    p = torch.sigmoid(theta)
    return (p * (1 - t) ** 2 + (1 - p) * t**2).sum(-1)


def binary_toy_gradient(theta: Tensor, t: float) -> Tensor:
    r"""The exact gradient of :func:`binary_toy_loss`: :math:`\sigma(1-\sigma)(1 - 2t)`."""
    p = torch.sigmoid(theta)
    return p * (1 - p) * (1 - 2 * t)


class Logits(nn.Module):
    """θ, the logits being trained (float64, zeros at the start)."""

    def __init__(self, C: int) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(C, dtype=torch.float64))


@dataclass
class ToyState(TaskState):
    model: Logits
    estimator: Estimator
    F: Tensor
    t: float | None = None  # the binary toys' target; None: the ARSM toy

    def f(self, z: Tensor) -> Tensor:
        if self.t is not None:
            return ((z.double() - self.t) ** 2).sum(-1)
        return (z.double() * self.F).sum(-1)

    def q(self, theta: Tensor) -> Distribution:
        if self.t is not None:
            return Independent(Bernoulli(logits=theta), 1)
        return Categorical(logits=theta)


class ToyTask(Task[ToyConfig, ToyState]):
    """Gradient ascent on θ with each estimator."""

    name = "toy"
    Config = ToyConfig
    evaluations = ("eval_every", "var_every")
    headline = ("expected_reward", "p_last", "steps_to_p_last_0.9", "evals_per_step")

    def headlines(self, config: ToyConfig) -> tuple[str, ...]:
        if config.binary:
            return ("expected_loss", "p", "mean_grad_variance", "evals_per_step")
        return self.headline

    def setup(self, config: ToyConfig, data: Any, ctx: Context, estimator: Any) -> ToyState:
        if config.binary:
            empty = torch.zeros(0, dtype=torch.float64, device=ctx.device)
            return ToyState(Logits(config.n_vars).to(ctx.device), estimator, empty, config.t)
        return ToyState(
            Logits(config.C).to(ctx.device), estimator, toy_rewards(config.C, config.R, ctx.device)
        )

    def optimizer(self, config: ToyConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=config.lr)

    def step(self, state: ToyState, step: int, ctx: Context) -> StepResult:
        out = state.estimator(state.f, state.q(state.model.theta), generator=ctx.stream("train"))
        # ARSM: gradient ascent on E[f] (the Trainer minimises); binary toys: descent.
        loss = out.loss.sum() if state.t is not None else -out.loss.sum()
        return StepResult(loss, out.cv_loss, out.mean_evals, {"f": out.value.detach()})

    def evaluate(self, state: ToyState, step: int, ctx: Context) -> dict[str, Any]:
        cfg, record = ctx.config, dict[str, Any]()
        theta = state.model.theta.detach()
        if ctx.due(step, cfg.eval_every) and state.t is not None:
            record.update(
                expected_loss=float(binary_toy_loss(theta, state.t)),
                p=float(torch.sigmoid(theta).mean()),
            )
        elif ctx.due(step, cfg.eval_every):
            pi = torch.softmax(theta, -1)
            record.update(
                expected_reward=float(pi @ state.F), p_last=float(pi[-1]), p_first=float(pi[0])
            )
        if ctx.due(step, cfg.var_every):
            # Trace of the covariance of var_draws estimates at θ (the estimator is in
            # eval mode here: no schedule steps, no baseline updates from these draws).
            leaf = theta.clone().requires_grad_()
            draws, _ = gradient_draws(
                state.estimator,
                state.f,
                state.q(leaf),
                leaf,
                cfg.var_draws,
                generator=ctx.stream("variance"),
            )
            record["grad_variance"] = float(draws.double().var(0).sum())
        return record

    def finish(self, state: ToyState, ctx: Context) -> dict[str, Any]:
        records = ctx.records()
        if state.t is not None:
            t, n = state.t, state.model.theta.numel()
            variances = [
                v
                for r in records
                if isinstance(v := r.get("grad_variance"), float) and math.isfinite(v)
            ]
            return {
                "optimum": n * min(t**2, (1 - t) ** 2),
                "mean_grad_variance": sum(variances) / len(variances) if variances else None,
                "unbiased": is_unbiased(state.estimator),
            }
        reached = [r["step"] for r in records if r.get("p_last", 0.0) > 0.9]
        variances = [
            v
            for r in records
            if isinstance(v := r.get("grad_variance"), float) and math.isfinite(v)
        ]
        return {
            "optimum": float(state.F.max()),
            "steps_to_p_last_0.9": reached[0] if reached else None,
            "mean_grad_variance": sum(variances) / len(variances) if variances else None,
            "unbiased": is_unbiased(state.estimator),
        }
