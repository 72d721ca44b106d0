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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Categorical

from discograd.diagnostics import gradient_draws
from discograd.estimators.base import Estimator
from discograd.experiments.common import check_estimators, every_estimator, is_unbiased
from discograd.experiments.config import TrainConfig, option
from discograd.experiments.trainer import Context, StepResult, Task, TaskState

__all__ = ["TOY_ESTIMATORS", "ToyConfig", "ToyTask", "toy_rewards"]

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

ESTIMATORS_HELP = "estimator specs name[:key=value,...], e.g. rloo:n_samples=4 arsm"


@dataclass
class ToyConfig(TrainConfig):
    """Settings of the toy run; the defaults are the published setup."""

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

    def validate(self) -> None:
        super().validate()
        check_estimators(self.estimators, "categorical", support=self.C)


def toy_rewards(C: int, R: int, device: torch.device | str = "cpu") -> Tensor:
    """:math:`F_k = 0.5 + (k+1)/(CR)`, float64."""
    return 0.5 + (torch.arange(C, dtype=torch.float64, device=device) + 1) / (C * R)


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

    def f(self, z: Tensor) -> Tensor:
        return (z.double() * self.F).sum(-1)


class ToyTask(Task[ToyConfig, ToyState]):
    """Gradient ascent on θ with each estimator."""

    name = "toy"
    Config = ToyConfig
    evaluations = ("eval_every", "var_every")
    headline = ("expected_reward", "p_last", "steps_to_p_last_0.9", "evals_per_step")

    def setup(self, config: ToyConfig, data: Any, ctx: Context, estimator: Any) -> ToyState:
        return ToyState(
            Logits(config.C).to(ctx.device), estimator, toy_rewards(config.C, config.R, ctx.device)
        )

    def optimizer(self, config: ToyConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=config.lr)

    def step(self, state: ToyState, step: int, ctx: Context) -> StepResult:
        out = state.estimator(
            state.f, Categorical(logits=state.model.theta), generator=ctx.stream("train")
        )
        # Gradient ascent on E[f]: the Trainer minimises.
        return StepResult(-out.loss.sum(), out.cv_loss, out.mean_evals, {"f": out.value.detach()})

    def evaluate(self, state: ToyState, step: int, ctx: Context) -> dict[str, Any]:
        cfg, record = ctx.config, dict[str, Any]()
        theta = state.model.theta.detach()
        if ctx.due(step, cfg.eval_every):
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
                Categorical(logits=leaf),
                leaf,
                cfg.var_draws,
                generator=ctx.stream("variance"),
            )
            record["grad_variance"] = float(draws.double().var(0).sum())
        return record

    def finish(self, state: ToyState, ctx: Context) -> dict[str, Any]:
        records = ctx.records()
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
