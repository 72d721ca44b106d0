r"""Learning to select k pixels: relaxed subsets, SIMPLE, I-MLE and straight-through top-k.

Protocol (after Xie & Ermon 2019's feature-selection experiment, at small
scale): a global selector with logits :math:`\theta \in \mathbb R^{D}` over the
:math:`D` pixels, a k-hot mask :math:`z` drawn by the method (one mask per
training example), and a linear softmax classifier on :math:`x \odot z`,
trained jointly by Adam on the cross-entropy. Each step draws ``masks``
masks, each shared by ``batch_size / masks`` examples of the batch (the
selector's logits are shared by all examples, so this is the same Monte Carlo
objective at a fraction of the cost of one mask per example: SIMPLE's exact
marginals cost :math:`O(Dk^2)` per mask). One selector and classifier per
``k`` in ``ks``, trained side by side in the same phase (their parameters are
disjoint, so the summed loss gives each the updates it would get alone). At
test time the mask is deterministic: the ``k`` largest :math:`\theta_i`.

Methods (the unit axis, like the estimators of ``vae`` / ``ssl``):

* ``relaxed_subset``: :math:`z` = :class:`~discograd.distributions.RelaxedSubset`
  ``(θ, k, temperature).rsample()`` (Xie & Ermon's k rounds of masked
  softmax; the classifier is trained on the relaxed, non-binary mask).
* ``simple``: :class:`~discograd.estimators.SIMPLE` ``(k)``: an exact sample of
  the k-subset law :math:`p(z) \propto e^{\theta^\top z}`, backward through its
  exact marginals.
* ``imle``: :class:`~discograd.estimators.IMLE` ``(k)`` (Sum-of-Gamma noise,
  λ = 100): perturb-and-MAP forward, implicit differentiation backward.
* ``st_topk``: straight-through Gumbel-top-k. Forward: the k-hot vector of
  :func:`~discograd.functional.gumbel_top_k` ``(θ, k)`` (k items without
  replacement from softmax(θ)); backward: the Jacobian of the soft surrogate
  :math:`s = k\,\mathrm{softmax}(\theta/\tau)` (τ = ``temperature``), i.e.
  :math:`z = h + s - \mathrm{sg}(s)`. :math:`s` sums to :math:`k` like
  :math:`h`, and is the noise-free first-order approximation of the inclusion
  probabilities; unlike ``RelaxedSubset.rsample(hard=True)`` the backward does
  not depend on the Gumbel draw.

Logged per method: the training cross-entropy of each ``k`` (``train_ce_k<k>``)
averaged over ``log_every`` steps; the validation accuracy with the top-k mask
(``valid_accuracy_k<k>``) every ``eval_every`` steps. Results: the test
accuracy with the top-k mask of each ``k`` (``test_accuracy_k<k>``), mean ±
s.e. over seeds. Pixels are the dataset's grey levels in [0, 1]; ``binarization``
is not used. Resuming, divergence, seeds: see :mod:`discograd.experiments.trainer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Categorical

from discograd.distributions import RelaxedSubset
from discograd.errors import ConfigError
from discograd.estimators import IMLE, SIMPLE
from discograd.experiments.config import DataConfig, TrainConfig, option
from discograd.experiments.images import ImageTask, batch_indices, check_batch
from discograd.experiments.trainer import Context, StepResult, TaskState, Unit
from discograd.functional import gumbel_top_k, straight_through

__all__ = ["TOPK_METHODS", "Selector", "TopKConfig", "TopKTask", "st_topk_mask", "top_k_mask"]

TOPK_METHODS: tuple[str, ...] = ("relaxed_subset", "simple", "imle", "st_topk")


@dataclass
class TopKConfig(DataConfig, TrainConfig):
    """A feature-selection run: data, subset sizes, methods, optimisation, evaluation."""

    ks: tuple[int, ...] = option((10, 50), "subset sizes k (pixels kept)", minimum=1)
    methods: tuple[str, ...] = option(
        TOPK_METHODS, f"methods: {', '.join(TOPK_METHODS)}", metavar="METHOD"
    )
    temperature: float = option(
        0.5, "temperature of relaxed_subset and of st_topk's backward", positive=True
    )
    batch_size: int = option(100, "training batch size", minimum=1)
    masks: int = option(
        10, "masks drawn per step, each shared by batch_size / masks examples", minimum=1
    )
    steps: int = option(150, "training steps per method and seed", minimum=1)
    lr: float = option(0.05, "learning rate (Adam)", positive=True)
    log_every: int = option(25, "log the training averages every N steps", minimum=1)
    eval_every: int = option(50, "evaluate on the validation set every N steps", minimum=1)
    checkpoint_every: int = option(50, "save a checkpoint every N steps", minimum=1)

    def validate(self) -> None:
        super().validate()
        if not self.methods:
            raise ConfigError("methods must name at least one method")
        bad = [m for m in self.methods if m not in TOPK_METHODS]
        if bad:
            raise ConfigError(
                f"methods: unknown method {bad[0]!r} (choose from {', '.join(TOPK_METHODS)})"
            )
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"methods must not repeat a method, got {self.methods}")
        if self.batch_size % self.masks:
            raise ConfigError(
                f"batch_size={self.batch_size} must be a multiple of masks={self.masks}"
            )
        if not self.ks:
            raise ConfigError("ks must name at least one subset size")
        if len(set(self.ks)) != len(self.ks):
            raise ConfigError(f"ks must not repeat a size, got {self.ks}")


def top_k_mask(theta: Tensor, k: int) -> Tensor:
    """The deterministic test-time mask: ones on the ``k`` largest logits."""
    return torch.zeros_like(theta).scatter_(-1, theta.topk(k, -1).indices, 1.0)


def st_topk_mask(
    theta: Tensor, k: int, n: int, temperature: float, generator: torch.Generator | None
) -> Tensor:
    r"""``n`` straight-through Gumbel-top-k masks ``[n, D]``.

    Forward: the k-hot vector of ``gumbel_top_k(θ, k)``; backward: the Jacobian
    of :math:`k\,\mathrm{softmax}(\theta/\tau)`.
    """
    logits = theta.detach().expand(n, -1)
    hard = torch.zeros_like(logits).scatter_(
        -1, gumbel_top_k(logits, k, -1, generator).indices, 1.0
    )
    soft = k * torch.softmax(theta / temperature, -1).expand(n, -1)
    return straight_through(hard, soft)


class Selector(nn.Module):
    """Selector logits over the pixels and one linear softmax classifier on the masked image."""

    def __init__(self, dim: int, n_classes: int) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(dim))
        self.classifier = nn.Linear(dim, n_classes)

    def ce(self, x: Tensor, y: Tensor, z: Tensor) -> Tensor:
        """Mean cross-entropy per mask, ``[M]``: x ``[M, G, D]``, y ``[M, G]``, z ``[M, D]``."""
        logits = self.classifier(x * z.unsqueeze(-2))
        return (
            F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
            .view(y.shape)
            .mean(-1)
        )


@dataclass
class TopKState(TaskState):
    model: nn.ModuleDict  # one Selector per k, keyed "k<k>"
    method: str
    ks: tuple[int, ...]
    split: dict[str, tuple[Tensor, Tensor]]


def _sel(state: TopKState, k: int) -> Selector:
    sel = state.model[f"k{k}"]
    assert isinstance(sel, Selector)
    return sel


@torch.no_grad()
def _accuracy(sel: Selector, k: int, x: Tensor, y: Tensor) -> float:
    z = top_k_mask(sel.theta, k)
    return float((sel.classifier(x * z).argmax(-1) == y).double().mean())


class TopKTask(ImageTask[TopKConfig, TopKState]):
    """A selector + classifier per (method, k) and seed; same initial weights and batches."""

    name = "topk"
    Config = TopKConfig
    evaluations = ("eval_every",)

    def headlines(self, config: TopKConfig) -> tuple[str, ...]:
        return tuple(f"test_accuracy_k{k}" for k in config.ks)

    def units(self, config: TopKConfig) -> list[Unit]:
        return [Unit(m, None, m) for m in config.methods]

    def setup(self, config: TopKConfig, data: Any, ctx: Context, estimator: Any) -> TopKState:
        dim = int(data.dim)
        for k in config.ks:
            if k > dim:
                raise ConfigError(f"ks: k={k} exceeds the {dim} pixels")
        check_batch(config.batch_size, len(data.train))
        labels = torch.cat([data.train_labels, data.valid_labels, data.test_labels])
        n_classes = int(labels.max()) + 1
        split = {
            s: (
                getattr(data, s).float().to(ctx.device),
                getattr(data, f"{s}_labels").long().to(ctx.device),
            )
            for s in ("train", "valid", "test")
        }
        model = nn.ModuleDict({f"k{k}": Selector(dim, n_classes) for k in config.ks}).to(ctx.device)
        return TopKState(model, None, ctx.unit.extra, tuple(config.ks), split)

    def _loss(
        self, state: TopKState, sel: Selector, k: int, x: Tensor, y: Tensor, ctx: Context
    ) -> Tensor:
        """The loss per mask of one selector under the phase's method, ``[masks]``."""
        cfg, gen, n = ctx.config, ctx.stream("train"), ctx.config.masks
        x, y = x.view(n, -1, x.shape[-1]), y.view(n, -1)
        if state.method == "relaxed_subset":
            q = RelaxedSubset(sel.theta.expand(n, -1), k, cfg.temperature)
            return sel.ce(x, y, q.rsample(generator=gen))
        if state.method == "st_topk":
            return sel.ce(x, y, st_topk_mask(sel.theta, k, n, cfg.temperature, gen))
        est = SIMPLE(k) if state.method == "simple" else IMLE(k)
        out = est(
            lambda z: sel.ce(x, y, z), Categorical(logits=sel.theta.expand(n, -1)), generator=gen
        )
        return out.loss

    def step(self, state: TopKState, step: int, ctx: Context) -> StepResult:
        x_all, y_all = state.split["train"]
        idx = batch_indices(len(x_all), ctx.config.batch_size, step, ctx).to(x_all.device)
        x, y = x_all[idx], y_all[idx]
        total = x.new_zeros(())
        metrics: dict[str, Tensor] = {}
        for k in state.ks:  # a loop over the configured subset sizes (a few), not over data
            ce = self._loss(state, _sel(state, k), k, x, y, ctx).mean()
            metrics[f"train_ce_k{k}"] = ce.detach()
            total = total + ce
        return StepResult(total, None, 1.0, metrics)

    def evaluate(self, state: TopKState, step: int, ctx: Context) -> dict[str, Any]:
        if not ctx.due(step, ctx.config.eval_every):
            return {}
        x, y = state.split["valid"]
        return {f"valid_accuracy_k{k}": _accuracy(_sel(state, k), k, x, y) for k in state.ks}

    def finish(self, state: TopKState, ctx: Context) -> dict[str, Any]:
        x, y = state.split["test"]
        out: dict[str, Any] = {
            f"test_accuracy_k{k}": _accuracy(_sel(state, k), k, x, y) for k in state.ks
        }
        for k in state.ks:
            out[f"pixels_k{k}"] = (
                _sel(state, k).theta.detach().topk(k).indices.sort().values.tolist()
            )
        return out
