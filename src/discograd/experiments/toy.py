r"""The ARSM toy problem (Yin, Yue & Zhou 2019, Section 5.1; seed 001).

Maximise :math:`L(\theta) = \mathbb E_{z \sim \mathrm{Cat}(\mathrm{softmax}\,\theta)}[f(z)]`
with :math:`f(z) = 0.5 + (z + 1)/(C R)` for :math:`z \in \{0, \dots, C-1\}`,
starting from :math:`\theta = 0` and taking gradient-ascent steps of size 1
with each estimator. The optimum puts all mass on the last category
(:math:`L^* = 0.5 + 1/R`). The rewards differ by only :math:`1/(CR)`, so the
signal is tiny next to the constant 0.5: a hard test of variance reduction.
The true gradient :math:`\pi \odot F - \pi(\pi^\top F)` is the ``exact`` entry.

Recorded per estimator: the expected reward :math:`\pi^\top F` and the
probabilities of the first and last category (every ``record_every`` steps),
the gradient variance (trace of the covariance of ``var_draws`` estimates,
every ``var_every`` steps), cumulative f-evaluations and wall time.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Categorical

from discograd.diagnostics import gradient_draws
from discograd.estimators.registry import canonical, make
from discograd.experiments.common import (
    Diverged,
    check_estimators,
    check_finite,
    check_floats,
    check_ints,
    cv_optimizer,
    estimator_step,
    log_divergence,
    resolve_device,
)
from discograd.experiments.runner import RunDir, progress

__all__ = ["TOY_ESTIMATORS", "ToyConfig", "run_toy", "toy_rewards"]

#: every estimator that applies to a categorical variable
TOY_ESTIMATORS: tuple[str, ...] = (
    "exact",
    "reinforce",
    "reinforce_ema",
    "rloo:n_samples=10",
    "vargrad:n_samples=10",
    "ar",
    "ars",
    "arsm",
    "ars_plus",
    "arsm_plus",
    "gumbel_softmax:tau=0.5",
    "st_gumbel_softmax:tau=0.5",
    "straight_through",
    "gumbel_rao:tau=0.5,n_samples=10",
    "reinmax:tau=1.0",
    "rebar",
    "relax",
)


@dataclass
class ToyConfig:
    """Settings of the toy run; the defaults are the published setup."""

    C: int = 30
    R: int = 30
    steps: int = 5000
    lr: float = 1.0
    estimators: tuple[str, ...] = TOY_ESTIMATORS
    record_every: int = 10
    var_every: int = 100
    var_draws: int = 100
    cv_lr: float = 0.01
    checkpoint_every: int = 250
    seed: int = 0
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        check_ints(self, ("R", "steps", "record_every", "var_every", "checkpoint_every"))
        check_ints(self, ("seed",), minimum=0)
        check_ints(self, ("C", "var_draws"), minimum=2)
        check_floats(self, ("lr", "cv_lr"))
        check_estimators(self.estimators, "categorical", support=self.C)


def toy_rewards(C: int, R: int, device: torch.device | str = "cpu") -> Tensor:
    """:math:`F_k = 0.5 + (k+1)/(CR)`, float64."""
    return 0.5 + (torch.arange(C, dtype=torch.float64, device=device) + 1) / (C * R)


def run_toy(cfg: ToyConfig, run: RunDir, *, quiet: bool = False) -> dict[str, Any]:
    """Run (or resume) every estimator on the toy; returns ``{spec: summary}``."""
    cfg.validate()
    device = resolve_device(cfg.device)
    F = toy_rewards(cfg.C, cfg.R, device)

    def f(z: Tensor) -> Tensor:
        return (z.double() * F).sum(-1)

    results: dict[str, Any] = {}
    for spec in cfg.estimators:
        label = canonical(spec)
        phase = f"toy/{label}"
        if run.is_done(phase):
            results[label] = run.result(phase)
            continue
        results[label] = _run_one(cfg, run, phase, spec, f, F, device, quiet)
    return results


def _run_one(cfg, run, phase, spec, f, F, device, quiet) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)  # initial weights of learned control variates (RELAX's network)
    est = make(spec).to(device)
    probe = torch.zeros(cfg.C, dtype=torch.float64, device=device)
    cv_opt = cv_optimizer(est, cfg.cv_lr, f, Categorical(logits=probe))
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    var_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    theta = torch.zeros(cfg.C, dtype=torch.float64, device=device)
    start, evals, seconds = 0, 0.0, 0.0
    # The checkpoint of step s is saved before anything of step s is logged.
    ckpt = run.resume(phase, device)
    if ckpt is not None:
        with run.restoring(phase):
            start, evals, seconds = ckpt["step"], ckpt["evals"], ckpt["seconds"]
            theta = ckpt["theta"].to(device)
            est.load_state_dict(ckpt["estimator"])
            if cv_opt is not None and ckpt["cv_opt"] is not None:
                cv_opt.load_state_dict(ckpt["cv_opt"])
            gen.set_state(ckpt["gen"])
            var_gen.set_state(ckpt["var_gen"])
    optimum = float(F.max())
    diverged: dict[str, Any] | None = None
    with progress(cfg.steps, f"toy {canonical(spec)}", quiet=quiet, initial=start) as bar:
        for step in range(start, cfg.steps + 1):
            # Checkpoint first: a resumed run replays this whole step, logging included.
            if step % cfg.checkpoint_every == 0 and step > start:
                state = _state(step, evals, seconds, theta, est, cv_opt, gen, var_gen)
                run.save_checkpoint(phase, state, device)
            pi = torch.softmax(theta, -1)
            if step % cfg.record_every == 0 or step == cfg.steps:
                run.log(
                    {
                        "phase": phase,
                        "step": step,
                        "expected_reward": float(pi @ F),
                        "p_last": float(pi[-1]),
                        "p_first": float(pi[0]),
                        "evals": evals,
                        "seconds": seconds,
                    }
                )
            if step % cfg.var_every == 0 or step == cfg.steps:
                variance = _variance(cfg, est, f, theta, var_gen)
                run.log({"phase": phase, "step": step, "grad_variance": variance})
            if step == cfg.steps:
                break
            t0 = time.perf_counter()
            leaf = theta.clone().requires_grad_()
            out = est(f, Categorical(logits=leaf), generator=gen)
            try:
                check_finite("loss", out.loss)
                check_finite("control-variate loss", out.cv_loss)
                (grad,), finite = estimator_step(out, [leaf], cv_opt)
                if not finite:
                    raise Diverged("gradient")
            except Diverged as err:
                diverged = log_divergence(run, phase, canonical(spec), step, err.quantity)
                break
            theta = theta + cfg.lr * grad  # gradient ascent on E[f]
            seconds += time.perf_counter() - t0
            evals += out.mean_evals
            bar.update()
    pi = torch.softmax(theta, -1)
    variances = [r["grad_variance"] for r in run.records(phase) if "grad_variance" in r]
    summary = {
        "expected_reward": float(pi @ F),
        "optimum": optimum,
        "p_last": float(pi[-1]),
        "steps_to_p_last_0.9": _first_step(run.records(phase), cfg.steps),
        "evals_per_step": evals / max(1, cfg.steps),
        "seconds_per_step": seconds / max(1, cfg.steps),
        "mean_grad_variance": _mean([v for v in variances if isinstance(v, float)]),
        "diverged": diverged,
        "unbiased": bool(getattr(est, "unbiased", True)),
    }
    run.finish(phase, summary)
    return summary


def _first_step(records: list[dict[str, Any]], steps: int) -> int | None:
    for r in records:
        if r.get("p_last", 0.0) > 0.9:
            return int(r["step"])
    return None


def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def _variance(cfg: ToyConfig, est, f, theta: Tensor, gen: torch.Generator) -> float:
    """Trace of the covariance of ``var_draws`` estimates at ``theta`` (estimator frozen)."""
    was_training = est.training
    est.eval()  # no schedule steps, no baseline updates from diagnostic draws
    try:
        leaf = theta.clone().requires_grad_()
        draws, _ = gradient_draws(
            est, f, Categorical(logits=leaf), leaf, cfg.var_draws, generator=gen
        )
        return float(draws.double().var(0).sum())
    finally:
        est.train(was_training)


def _state(step, evals, seconds, theta, est, cv_opt, gen, var_gen) -> dict[str, Any]:
    return {
        "step": step,
        "evals": evals,
        "seconds": seconds,
        "theta": theta.detach().cpu(),
        "estimator": est.state_dict(),
        "cv_opt": cv_opt.state_dict() if cv_opt is not None else None,
        "gen": gen.get_state(),
        "var_gen": var_gen.get_state(),
    }


def config_dict(cfg: ToyConfig) -> dict[str, Any]:
    return asdict(cfg)
