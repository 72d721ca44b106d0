r"""Structured output prediction with stochastic binary networks; any estimator, nested.

Protocol (Jang et al. 2017 §4.2, after Raiko et al. 2015 and MuProp): predict
the lower half of a binarised digit from its upper half with two stochastic
layers, 392-200-200-392 Bernoulli or 392-(20×10)-(20×10)-392 categorical on
28×28 MNIST, affine maps between them, temperature τ = 1 for the relaxed
estimators, trained on the single-sample bound
:math:`\mathbb E[-\log p(x_b \mid h_2)]` and evaluated by the importance-sampled
:math:`-\log \frac1m \sum_i p(x_b \mid h^{(i)})` with m = 1000 samples (nats,
lower is better). Jang et al. report (MNIST test, Bernoulli / categorical):
SF 72.0 / 73.1, DARN 59.7 / 67.9, MuProp 58.9 / 63.0, ST 58.9 / 61.8,
annealed ST 58.7 / 61.1, Gumbel-Softmax 58.5 / 59.0, ST Gumbel-Softmax
59.3 / 59.7; the ARM paper reports 57.9 for ARM (Bernoulli). The
literature-faithful settings are ``dataset="mnist"``, ``units=()`` (the
defaults 200 / 20×10), ``hidden=()``, ``eval_samples=1000``,
``iw_examples=10000`` and a learning rate picked on the validation set; the
defaults here are sized for short CPU runs on the embedded Fashion-MNIST subset
(:data:`discograd.data.DEFAULT_DATASET`: 392 input and 392 output pixels, 3,000
training images), whose absolute numbers are not comparable with MNIST.

Validation uses the first ``iw_examples`` validation images. Each stochastic
layer gets its own instance of the estimator (see
:mod:`discograd.models.sbn` for the nesting and why it stays unbiased). Every
estimator trains from the same initial weights and sees the same batches.

Logged per estimator: the training bound (the estimators' Monte-Carlo
estimate, averaged over ``log_every`` steps), decoder evaluations and
second-layer evaluations per step, seconds per step; validation
``-log p(x_b | x_t)`` with ``valid_samples`` samples every ``eval_every``
steps. Results: test ``-log p(x_b | x_t)`` with ``eval_samples`` samples on the
first ``iw_examples`` test images, the single-sample bound on them, and the
costs per step.

Resuming, divergence, seeds: see :mod:`discograd.experiments.trainer`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from discograd.errors import ConfigError
from discograd.estimators.base import Estimator
from discograd.estimators.registry import canonical, make
from discograd.experiments.common import check_estimators, slug
from discograd.experiments.config import DataConfig, TrainConfig, option
from discograd.experiments.images import (
    ImageState,
    ImageTask,
    binarized_splits,
    check_batch,
    training_batch,
)
from discograd.experiments.runner import atomic_save
from discograd.experiments.toy import ESTIMATORS_HELP
from discograd.experiments.trainer import Context, StepResult, Unit
from discograd.models import StochasticBinaryNetwork
from discograd.models.nets import ACTIVATIONS

__all__ = ["SBN_ESTIMATORS", "SBNConfig", "SBNTask", "build_model"]

#: Default estimators per latent kind (``SBNConfig.estimators = ()`` picks these).
SBN_ESTIMATORS: dict[str, tuple[str, ...]] = {
    "bernoulli": (
        "gumbel_softmax:tau=1.0",
        "st_gumbel_softmax:tau=1.0",
        "reinforce_ema",
        "rloo:n_samples=4",
        "disarm",
    ),
    "categorical": (
        "gumbel_softmax:tau=1.0",
        "st_gumbel_softmax:tau=1.0",
        "reinforce_ema",
        "rloo:n_samples=4",
        # ARS, not ARSM: nested, ARSM evaluates the decoder on up to
        # (C(C-1)/2 + 1)^2 = 2,116 configurations per example and step at
        # C = 10 (about 1.4 s per step for digits on one CPU thread); ARS on
        # at most C^2 = 100. "arsm" works; name it explicitly to run it.
        "ars",
    ),
}


@dataclass
class SBNConfig(DataConfig, TrainConfig):
    """A structured-prediction run: data, network, estimators, optimisation, evaluation."""

    latent: str = option(
        "bernoulli",
        "bernoulli (binary units) or categorical (variables of n_categories) per layer",
        choices=("bernoulli", "categorical"),
    )
    units: tuple[int, ...] = option(
        (),
        "units per stochastic layer, two numbers (none: 200 200 binary, or 20 20 categorical)",
        minimum=1,
    )
    n_categories: int = option(10, "categories per variable (categorical)", minimum=2)
    hidden: tuple[int, ...] = option((), "deterministic hidden layers between them", minimum=1)
    activation: str = option("tanh", "hidden activation", choices=tuple(ACTIVATIONS))
    estimators: tuple[str, ...] = option(
        (),
        ESTIMATORS_HELP + " (none: gumbel_softmax, st_gumbel_softmax, reinforce_ema, "
        "rloo:n_samples=4, and disarm (bernoulli) or ars (categorical))",
        metavar="SPEC",
    )
    batch_size: int = option(100, "training batch size", minimum=1)
    valid_samples: int = option(100, "importance samples m of the validation NLL", minimum=1)
    eval_samples: int = option(1000, "importance samples m of the test NLL", minimum=1)
    iw_examples: int = option(1000, "validation and test images evaluated", minimum=1)

    def estimator_specs(self) -> tuple[str, ...]:
        """The estimators this run trains (the per-kind defaults when ``estimators`` is empty)."""
        return tuple(self.estimators) or SBN_ESTIMATORS.get(self.latent, ())

    def validate(self) -> None:
        super().validate()
        if self.units and len(self.units) != 2:
            raise ConfigError(f"units must be () or two positive ints, got units={self.units!r}")
        specs = self.estimator_specs()
        check_estimators(specs, self.latent)
        for spec in specs:
            if canonical(spec).split(":")[0] == "exact":
                units = self.units or ((200, 200) if self.latent == "bernoulli" else (20, 20))
                base = 2 if self.latent == "bernoulli" else self.n_categories
                if max(units) * math.log2(base) > 16:
                    raise ConfigError(
                        f"estimators: exact would enumerate {base}^{max(units)} configurations "
                        "per layer (at most 2^16); use a sampling estimator or smaller units"
                    )


def build_model(cfg: SBNConfig, image_shape: tuple[int, int]) -> StochasticBinaryNetwork:
    """The network of ``cfg`` for images of ``image_shape``."""
    return StochasticBinaryNetwork(
        image_shape,
        cfg.latent,  # type: ignore[arg-type]
        tuple(cfg.units) or None,
        cfg.n_categories,
        cfg.hidden,
        cfg.activation,
    )


@torch.no_grad()
def _nll(
    model: StochasticBinaryNetwork, x: Tensor, m: int, gen: torch.Generator, chunk: int = 100
) -> float:
    """Mean importance-sampled −log p(x_b | x_t) with ``m`` samples, over ``x`` in chunks."""
    total = 0.0
    for i in range(0, len(x), chunk):
        total += float(model.nll(x[i : i + chunk].to(gen.device), m, generator=gen).sum())
    return total / len(x)


@dataclass
class SBNState(ImageState):
    model: StochasticBinaryNetwork
    estimator: nn.ModuleDict  # "outer" and "inner"


class SBNTask(ImageTask[SBNConfig, SBNState]):
    """One network per estimator and seed; each stochastic layer gets its own estimator."""

    name = "sbn"
    Config = SBNConfig
    evaluations = ("eval_every",)
    headline = ("test_nll", "test_nll_1", "seconds_per_step", "evals_per_step")

    def units(self, config: SBNConfig) -> list[Unit]:
        return [Unit(canonical(spec), spec) for spec in config.estimator_specs()]

    def estimator(self, config: SBNConfig, unit: Unit) -> nn.Module:
        """Two instances of the spec: ``outer`` on p(h1 | x_t), ``inner`` on p(h2 | h1)."""
        return nn.ModuleDict({"outer": make(unit.spec), "inner": make(unit.spec)})  # type: ignore[arg-type]

    def setup(self, config: SBNConfig, data: Any, ctx: Context, estimator: Any) -> SBNState:
        check_batch(config.batch_size, len(data.train))
        if data.image_shape[0] < 2:
            raise ConfigError(f"images need at least 2 rows to split, got {data.image_shape}")
        model = build_model(config, data.image_shape).to(ctx.device)
        sets = binarized_splits(data, config.binarization, ctx)
        return SBNState(model, estimator, sets, data.image_shape)

    def step(self, state: SBNState, step: int, ctx: Context) -> StepResult:
        cfg, ests = ctx.config, state.estimator
        x, _ = training_batch(state.sets["train"], cfg.batch_size, step, cfg.binarization, ctx)
        outer, inner = (cast(Estimator, ests[k]) for k in ("outer", "inner"))
        obj = state.model.objective(x, outer, inner, generator=ctx.stream("train"))
        return StepResult(
            obj.loss,
            obj.cv_loss,
            obj.n_evals,
            {"train_nll_bound": obj.nll.mean()},
            {"layer_evals": obj.layer_evals},
        )

    def evaluate(self, state: SBNState, step: int, ctx: Context) -> dict[str, Any]:
        cfg = ctx.config
        if not ctx.due(step, cfg.eval_every):
            return {}
        valid = state.sets["valid"][: cfg.iw_examples]
        return {"valid_nll": _nll(state.model, valid, cfg.valid_samples, ctx.generator("valid"))}

    def finish(self, state: SBNState, ctx: Context) -> dict[str, Any]:
        cfg, model = ctx.config, state.model
        test = state.sets["test"][: cfg.iw_examples]
        _save_images(ctx, model, state.sets["test"], state.image_shape)
        return {
            "test_nll": _nll(model, test, cfg.eval_samples, ctx.generator("test")),
            "test_nll_1": _nll(model, test, 1, ctx.generator("test-1")),
            "iw_samples": cfg.eval_samples,
            "iw_examples": len(test),
            "valid_samples": cfg.valid_samples,
            "latent": cfg.latent,
            "units": list(model.units),
        }


def _save_images(ctx: Context, model: Any, test: Tensor, shape: tuple[int, int]) -> None:
    """Test digits, their completions (predictive mean) and one sampled completion each.

    Saved as ``images-<phase>.pt`` with the keys of the VAE experiment's image
    files: ``test`` (true images), ``recon`` (top half + the predictive mean
    of the bottom half over 100 samples) and ``samples`` (top half + the
    bottom pixel probabilities of one sample of the hidden layers).
    """
    gen = ctx.generator("images")
    with torch.no_grad():
        x = test[:16].to(ctx.device)
        top, _ = model.split(x)
        mean = model.predict_bottom(top, 100, generator=gen)
        _, h2 = model.sample_codes(top, 1, generator=gen)
        one = torch.sigmoid(model.bottom_logits(h2[0]))
    atomic_save(
        ctx.path / f"images-{slug(ctx.phase)}.pt",
        {
            "shape": tuple(shape),
            "test": x.cpu(),
            "recon": torch.cat([top, mean], -1).cpu(),
            "samples": torch.cat([top, one], -1).cpu(),
        },
    )
