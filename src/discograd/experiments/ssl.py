r"""Semi-supervised classification with M2: exact marginalisation over labels vs estimators.

Protocol (Jang et al. 2017 §4.3, after Kingma et al. 2014): the M2 model
(:class:`discograd.models.M2`) trained on ``n_labels`` labelled examples
(balanced over the classes, chosen by ``seed`` from the training split) and
the rest of the training split unlabelled. The unlabelled term
:math:`\mathcal U(x)` handles the unknown label either by exact
marginalisation (``"marginal"``: all classes in one batched call, :math:`C`
decoder passes per example) or by an estimator of the expectation over
:math:`y \sim q(y|x)` (default Gumbel-Softmax and straight-through
Gumbel-Softmax at τ = 1, one decoder pass). The objective is Kingma et al.'s
:math:`\mathcal J^\alpha / N` with ``alpha`` :math:`= \alpha/N = 0.1`.

Jang et al. report on MNIST with 100 labels (test −ELBO / accuracy):
marginalisation 106.8 / 92.6 %, Gumbel-Softmax 109.6 / 92.4 %, ST
Gumbel-Softmax 110.7 / 93.6 %, and Gumbel-Softmax training 2× faster than
marginalisation with 10 classes and 9.9× faster with 100 classes (random
labels: only the speed is measured). Kingma et al.'s M2 on MNIST: one hidden
layer of 500 softplus units in each network, z of 50 dimensions, α = 0.1·N.
Literature-faithful settings: ``dataset="mnist"``, ``hidden=(500,)``,
``z_dim=50``, ``n_labels=100``, many more steps (Kingma et al. train for
thousands of epochs); the defaults are sized for short CPU runs on the embedded
Fashion-MNIST subset (:data:`discograd.data.DEFAULT_DATASET`, 3,000 training
images: 100 labelled, 2,900 unlabelled).

``n_classes`` other than the dataset's number of classes replaces every label
(train, valid, test) by a uniformly random one in ``0..n_classes-1`` drawn from
``seed`` (Jang et al.'s 100-class timing): accuracy is then meaningless (chance
level) and only the costs per step matter. The labelled set needs
``n_labels`` divisible by ``n_classes`` (100 labels, 100 classes: one each).

Logged per method: the training objective and its parts (labelled −ELBO,
unlabelled bound, classification loss) averaged over ``log_every`` steps,
seconds and −ELBO evaluations per step; validation accuracy and −ELBO every
``eval_every`` steps. Results per method: test accuracy, test −ELBO (the
unlabelled bound :math:`\mathcal U(x)` with the labels marginalised exactly,
one z sample per class), seconds per step, evaluations per step, and the
speed-up over ``"marginal"`` (its seconds per step divided by the method's)
when marginalisation is among the methods.

The timing run (``timing_classes``) is the same task with random labels over
that many classes, in a run folder of its own (:func:`timing_config`).
Resuming, divergence, seeds: see :mod:`discograd.experiments.trainer`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from discograd.errors import ConfigError
from discograd.estimators.base import Estimator
from discograd.estimators.registry import canonical
from discograd.experiments.common import check_estimators, temperature
from discograd.experiments.config import AnnealConfig, DataConfig, TrainConfig, option
from discograd.experiments.images import (
    ImageTask,
    binarized_splits,
    check_batch,
    training_batch,
)
from discograd.experiments.trainer import Context, StepResult, TaskState, Unit, aggregate
from discograd.models import M2
from discograd.models.nets import ACTIVATIONS

__all__ = ["SSL_METHODS", "SSLConfig", "SSLTask", "build_model", "select_labelled", "timing_config"]

SSL_METHODS: tuple[str, ...] = (
    "marginal",
    "gumbel_softmax:tau=1.0",
    "st_gumbel_softmax:tau=1.0",
)


@dataclass
class SSLConfig(DataConfig, AnnealConfig, TrainConfig):
    """A semi-supervised M2 run: data, labels, model, methods, optimisation, evaluation."""

    n_classes: int = option(
        10, "classes (other than the data's: random labels, for timing only)", minimum=2
    )
    n_labels: int = option(100, "labelled training examples, balanced over classes", minimum=1)
    z_dim: int = option(16, "dimensions of the Gaussian latent z", minimum=1)
    hidden: tuple[int, ...] = option((256,), "hidden layer sizes of each network", minimum=1)
    activation: str = option("softplus", "hidden activation", choices=tuple(ACTIVATIONS))
    methods: tuple[str, ...] = option(
        SSL_METHODS,
        "'marginal' (exact sum over classes) and/or estimator specs",
        metavar="METHOD",
    )
    entropy: str = option(
        "analytic", "entropy of q(y|x): analytic or sampled", choices=("analytic", "sampled")
    )
    alpha: float = option(0.1, "weight of the classification loss (alpha / N)", minimum=0)
    batch_size: int = option(100, "unlabelled batch size", minimum=1)
    labelled_batch: int = option(100, "labelled batch size", minimum=1)
    timing_classes: int = option(
        100,
        "also time every method with this many (random) classes, in a run of its own; 0 skips",
        minimum=0,
    )
    timing_steps: int = option(200, "steps of the timing run", minimum=1)

    def validate(self) -> None:
        super().validate()
        if self.n_labels % self.n_classes:
            raise ConfigError(
                f"n_labels={self.n_labels} must be a multiple of n_classes={self.n_classes} "
                "(the labelled set is balanced over the classes)"
            )
        if not self.methods:
            raise ConfigError("methods must name at least one method")
        if len({canonical(m) for m in self.methods}) != len(self.methods):
            raise ConfigError(f"methods must not repeat a method, got {self.methods}")
        specs = [m for m in self.methods if canonical(m) != "marginal"]
        if specs:
            check_estimators(specs, "categorical", field="methods", support=self.n_classes)
        timing = timing_config(self)
        if timing is not None:
            timing.validate()


def timing_config(cfg: SSLConfig) -> SSLConfig | None:
    """The timing run of ``cfg``: ``timing_classes`` random classes, one label each."""
    if not cfg.timing_classes:
        return None
    return dataclasses.replace(
        cfg,
        n_classes=cfg.timing_classes,
        n_labels=cfg.timing_classes,
        steps=cfg.timing_steps,
        log_every=min(cfg.log_every, cfg.timing_steps),
        eval_every=cfg.timing_steps,
        checkpoint_every=cfg.timing_steps,
        timing_classes=0,
    )


def build_model(cfg: SSLConfig, x_dim: int) -> M2:
    return M2(x_dim, cfg.n_classes, cfg.z_dim, cfg.hidden, cfg.activation)


def select_labelled(labels: Tensor, n_labels: int, n_classes: int, gen: torch.Generator) -> Tensor:
    """Indices of ``n_labels`` examples, ``n_labels / n_classes`` of each class, chosen by ``gen``.

    A permutation of all indices, stably sorted by label; the first
    ``n_labels / n_classes`` of each class are taken (sorted index order).
    ``ConfigError`` if a class has too few examples.
    """
    per = n_labels // n_classes
    perm = torch.randperm(len(labels), generator=gen)
    lab = labels[perm]
    order = torch.argsort(lab, stable=True)
    sorted_lab = lab[order]
    counts = torch.bincount(labels, minlength=n_classes)
    if len(counts) > n_classes or bool((counts < per).any()):
        short = int(torch.argmin(counts[:n_classes]))
        raise ConfigError(
            f"n_labels={n_labels} needs {per} examples of each of {n_classes} classes; "
            f"class {short} has {int(counts[short])} in the training split"
        )
    first = torch.cumsum(counts, 0) - counts  # position of each class's first example
    rank = torch.arange(len(lab)) - first[sorted_lab]
    return perm[order[rank < per]].sort().values


def _labels(data: Any, cfg: SSLConfig, ctx: Context) -> tuple[dict[str, Tensor], str]:
    """The labels to use: the dataset's, or random ones when ``n_classes`` differs from it."""
    real = {s: getattr(data, f"{s}_labels").long() for s in ("train", "valid", "test")}
    n_real = int(max(int(v.max()) for v in real.values() if len(v)) + 1)
    if n_real == cfg.n_classes:
        return real, "real"
    gen = ctx.generator("random-labels", "cpu")
    return (
        {s: torch.randint(cfg.n_classes, (len(v),), generator=gen) for s, v in real.items()},
        "random",
    )


@torch.no_grad()
def _evaluate(
    model: M2, x: Tensor, y: Tensor, gen: torch.Generator, chunk: int = 500
) -> tuple[float, float]:
    """(accuracy, mean marginal −ELBO) over ``x`` in chunks; the −ELBO uses ``gen``."""
    correct, bound = 0, 0.0
    for i in range(0, len(x), chunk):
        xb = x[i : i + chunk].to(gen.device)
        correct += int((model.predict(xb).cpu() == y[i : i + chunk]).sum())
        bound += float(model.marginal_bound(xb, generator=gen).sum())
    return correct / len(x), bound / len(x)


@dataclass
class SSLState(TaskState):
    model: M2
    estimator: Estimator | None  # None: exact marginalisation
    split: dict[str, Any]
    labels: str


class SSLTask(ImageTask[SSLConfig, SSLState]):
    """One M2 per method and seed, from the same initial weights and batches."""

    name = "ssl"
    Config = SSLConfig
    evaluations = ("eval_every",)
    headline = ("test_accuracy", "test_neg_elbo", "seconds_per_step", "speedup_vs_marginal")

    def units(self, config: SSLConfig) -> list[Unit]:
        return [
            Unit("marginal", None) if canonical(m) == "marginal" else Unit(canonical(m), m)
            for m in config.methods
        ]

    def setup(self, config: SSLConfig, data: Any, ctx: Context, estimator: Any) -> SSLState:
        labels, kind = _labels(data, config, ctx)
        gen = ctx.generator("labelled-set", "cpu")
        lab_idx = select_labelled(labels["train"], config.n_labels, config.n_classes, gen)
        mask = torch.ones(len(data.train), dtype=torch.bool)
        mask[lab_idx] = False
        unl_idx = mask.nonzero().squeeze(-1)
        check_batch(config.batch_size, len(unl_idx), "unlabelled training images")
        sets = binarized_splits(data, config.binarization, ctx)
        split = {
            "x_l": sets["train"][lab_idx],
            "y_l": labels["train"][lab_idx].to(ctx.device),
            "x_u": sets["train"][unl_idx],
            "valid": (sets["valid"], labels["valid"]),
            "test": (sets["test"], labels["test"]),
        }
        model = build_model(config, data.dim).to(ctx.device)
        return SSLState(model, estimator, split, kind)

    def step(self, state: SSLState, step: int, ctx: Context) -> StepResult:
        cfg, split, est = ctx.config, state.split, state.estimator
        xl, il = training_batch(
            split["x_l"], cfg.labelled_batch, step, cfg.binarization, ctx, "labelled"
        )
        xu, _ = training_batch(split["x_u"], cfg.batch_size, step, cfg.binarization, ctx)
        obj = state.model.objective(
            xl,
            split["y_l"][il.to(ctx.device)],
            xu,
            "marginal" if est is None else est,
            alpha=cfg.alpha,
            dataset_sizes=(len(split["x_l"]), len(split["x_u"])),
            entropy=cfg.entropy,
            generator=ctx.stream("train"),
        )
        metrics = {
            "train_objective": obj.loss.detach(),
            "train_labelled_neg_elbo": obj.labelled_neg_elbo.mean(),
            "train_unlabelled_bound": obj.unlabelled_bound.mean(),
            "train_class_nll": obj.class_nll.mean(),
            "tau": temperature(est),
        }
        return StepResult(obj.loss, obj.cv_loss, obj.n_evals, metrics)

    def evaluate(self, state: SSLState, step: int, ctx: Context) -> dict[str, Any]:
        if not ctx.due(step, ctx.config.eval_every):
            return {}
        x, y = state.split["valid"]
        acc, bound = _evaluate(state.model, x, y, ctx.generator("valid"))
        return {"valid_accuracy": acc, "valid_neg_elbo": bound}

    def finish(self, state: SSLState, ctx: Context) -> dict[str, Any]:
        x, y = state.split["test"]
        acc, bound = _evaluate(state.model, x, y, ctx.generator("test"))
        return {
            "test_accuracy": acc,
            "test_neg_elbo": bound,
            "n_labels": len(state.split["x_l"]),
            "n_unlabelled": len(state.split["x_u"]),
            "n_classes": ctx.config.n_classes,
            "labels": state.labels,
        }

    def collect(self, config: SSLConfig, per_seed: dict[str, dict[int, dict[str, Any]]]) -> Any:
        """Adds ``speedup_vs_marginal`` (marginal's seconds per step / the method's), per seed."""
        base = per_seed.get("marginal", {})
        for seeds in per_seed.values():
            for seed, result in seeds.items():
                own = result.get("seconds_per_step")
                ref = base.get(seed, {}).get("seconds_per_step")
                # a method that diverged before its first step has no time per step
                speedup = None if not own or ref is None else ref / own
                result["speedup_vs_marginal"] = speedup
        return {key: aggregate(seeds) for key, seeds in per_seed.items()}
