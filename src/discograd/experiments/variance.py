r"""Bias, variance, SNR and cosine of every estimator against the exact gradient.

A set of small problems whose support can be enumerated, so that
:func:`discograd.diagnostics.exact_gradient` gives the truth:

* ``toy``: the ARSM toy reward with C = 10 categories, R = 30, skewed logits;
* ``categorical``: D = 3 variables with C = 4 categories sharing a nonlinear
  cost, a batch of 4 data points with different logits;
* ``bernoulli``: D = 8 binary variables, a nonlinear cost, a batch of 4;
* ``offset``: the categorical problem with 100 added to the cost (a large mean:
  the case baselines exist for).

Each estimator gets ``warmup`` training-mode calls first (EMA baselines settle,
learned control variates train on the problem with θ fixed), then
``n_draws`` vectorised draws are compared with the exact gradient. Relaxed
estimators without a temperature in their spec are run at each of
``temperatures`` (those a method refuses, such as ReinMax below 1, are
skipped). Alongside the per-call variance, ``variance × n_evals`` is the
variance at equal cost: averaging k independent draws divides the variance by
k and multiplies the cost by k.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Bernoulli as TorchBernoulli
from torch.distributions import Distribution, Independent, OneHotCategorical

from discograd.diagnostics import exact_gradient, gradient_stats
from discograd.errors import ConfigError
from discograd.estimators import registry
from discograd.estimators.registry import canonical, make, parse_spec
from discograd.experiments.common import (
    check_estimators,
    check_floats,
    check_ints,
    cv_optimizer,
    cv_step,
    resolve_device,
)
from discograd.experiments.runner import RunDir, progress
from discograd.experiments.toy import toy_rewards

__all__ = ["PROBLEMS", "VARIANCE_ESTIMATORS", "VarianceConfig", "expand_specs", "run_variance"]

VARIANCE_ESTIMATORS: tuple[str, ...] = (
    "exact",
    "reinforce",
    "reinforce_ema",
    "rloo:n_samples=4",
    "vargrad:n_samples=4",
    "ar",
    "ars",
    "arsm",
    "ars_plus",
    "arsm_plus",
    "arm",
    "disarm",
    "gumbel_softmax",
    "st_gumbel_softmax",
    "straight_through",
    "gumbel_rao:n_samples=10",
    "reinmax",
    "rebar",
    "relax",
)

PROBLEMS: tuple[str, ...] = ("toy", "categorical", "bernoulli", "offset")


@dataclass
class VarianceConfig:
    problems: tuple[str, ...] = PROBLEMS
    estimators: tuple[str, ...] = VARIANCE_ESTIMATORS
    temperatures: tuple[float, ...] = (0.1, 0.5, 1.0, 2.0)
    n_draws: int = 1000
    warmup: int = 200
    cv_lr: float = 0.01
    seed: int = 0
    device: str = "cpu"

    def validate(self) -> None:
        unknown = [p for p in self.problems if p not in PROBLEMS]
        if unknown:
            raise ConfigError(f"unknown problem {unknown[0]!r}; known: {', '.join(PROBLEMS)}")
        if not self.problems:
            raise ConfigError("problems must name at least one problem")
        check_ints(self, ("n_draws",), minimum=2)
        check_ints(self, ("warmup", "seed"), minimum=0)
        check_floats(self, ("cv_lr",))
        for t in self.temperatures:
            if isinstance(t, bool) or not (
                isinstance(t, (int, float)) and t > 0 and math.isfinite(t)
            ):
                raise ConfigError(f"temperatures must be positive, got {t!r}")
        check_estimators(self.estimators)


@dataclass
class Problem:
    name: str
    kind: str  # "categorical" or "bernoulli"
    logits: Tensor
    build: Callable[[Tensor], Distribution]
    f: Callable[[Tensor], Tensor]
    description: str


def make_problem(name: str, device: torch.device, seed: int) -> Problem:
    gen = torch.Generator().manual_seed(seed)
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


def _takes_tau(name: str) -> bool:
    cls = getattr(registry._est, registry.ESTIMATORS[name], None)
    return cls is not None and "tau" in inspect.signature(cls.__init__).parameters


def expand_specs(specs: tuple[str, ...], temperatures: tuple[float, ...]) -> list[str]:
    """Specs with a temperature each: relaxed specs without ``tau`` get one per temperature."""
    out: list[str] = []
    for spec in specs:
        name, kwargs = parse_spec(spec)
        if _takes_tau(name) and "tau" not in kwargs and temperatures:
            for t in temperatures:
                extra = ",".join(f"{k}={v}" for k, v in kwargs.items())
                out.append(f"{name}:{extra + ',' if extra else ''}tau={t}")
        else:
            out.append(spec)
    return out


def run_variance(cfg: VarianceConfig, run: RunDir, *, quiet: bool = False) -> dict[str, Any]:
    """Run (or resume) the study; returns ``{problem: {spec: stats}}``."""
    cfg.validate()
    device = resolve_device(cfg.device)
    specs = expand_specs(tuple(cfg.estimators), tuple(cfg.temperatures))
    results: dict[str, Any] = {}
    total = len(cfg.problems) * len(specs)
    with progress(total, "variance", quiet=quiet) as bar:
        for pname in cfg.problems:
            problem = make_problem(pname, device, cfg.seed)
            leaf = problem.logits.clone().requires_grad_()
            exact = exact_gradient(problem.f, problem.build(leaf), leaf)
            results[pname] = {
                "description": problem.description,
                "exact_norm": float(torch.cat([g.reshape(-1) for g in exact]).norm()),
                "estimators": {},
            }
            for spec in specs:
                label = canonical(spec)
                phase = f"variance/{pname}/{label}"
                if not run.is_done(phase):
                    run.resume(phase)  # drops a record an interrupted run logged but did not finish
                    stats = _measure(cfg, problem, spec, exact, device)
                    if stats is not None:
                        run.log({"phase": phase, **stats})
                    run.finish(phase, stats)
                res = run.result(phase)
                if res is not None:
                    results[pname]["estimators"][label] = res
                bar.update()
    return results


def _measure(cfg, problem: Problem, spec: str, exact, device) -> dict[str, Any] | None:
    torch.manual_seed(cfg.seed)  # initial weights of learned control variates (RELAX's network)
    try:
        est = make(spec).to(device)
    except ConfigError:
        return None  # e.g. a temperature this method refuses
    if problem.kind not in est.supports:
        return None
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 7)
    leaf = problem.logits.clone().requires_grad_()
    cv_opt = cv_optimizer(est, cfg.cv_lr, problem.f, problem.build(leaf))
    est.train()
    for _ in range(cfg.warmup if (cv_opt is not None or _has_state(est)) else 0):
        out = est(problem.f, problem.build(leaf), generator=gen)
        if cv_opt is not None and out.cv_loss is not None and out.cv_loss.requires_grad:
            cv_step(out.cv_loss, cv_opt)
    est.eval()
    stats = gradient_stats(
        est, problem.f, problem.build(leaf), leaf, cfg.n_draws, exact=exact, generator=gen
    )
    d = stats.as_dict()
    d["variance_x_evals"] = d["variance"] * d["n_evals"]
    d["unbiased"] = bool(getattr(est, "unbiased", True))
    return d


def _has_state(est) -> bool:
    return any(True for _ in est.buffers())
