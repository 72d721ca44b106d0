r"""Sparse gates: L0-regularised feature selection with each gate family.

Protocol (the sparse-gate task of issue 15, after Louizos, Welling & Kingma
2018 and Yamada et al. 2020): a linear softmax classifier on image pixels
(binarised as ``binarization`` says; the embedded Fashion-MNIST subset by
default), with one gate :math:`z_d` per pixel,

.. math::
    \text{logits} = W (x \odot z) + b,\qquad
    \mathcal L = \mathrm{CE} + \lambda \sum_d P(z_d \ne 0),

trained with Adam. The gates are drawn afresh for every example of a batch
(as the stochastic-gates code does for input features), and the penalty is
the closed-form :math:`\sum_d P(z_d \ne 0)` of each family
(``prob_nonzero()`` of the distributions in :mod:`discograd.distributions`).

Families (``families``), their parameters and their deterministic test-time
gate :math:`\hat z_d`:

* ``hard_concrete``: :class:`~discograd.distributions.HardConcrete` with
  logits :math:`\log\alpha_d` (initialised at 0, Louizos et al.'s
  ``droprate_init`` = 0.5), temperature ``temperature`` (their 2/3), limits
  (-0.1, 1.1). Test: Louizos et al. Eq. 13,
  :math:`\hat z = \min(1, \max(0, \sigma(\log\alpha)(\zeta - \gamma) + \gamma))`.
* ``hard_kuma``: :class:`~discograd.distributions.HardKumaraswamy` with
  :math:`a = \mathrm{softplus}(\rho^a_d)`, :math:`b = \mathrm{softplus}(\rho^b_d)`
  (initialised at :math:`a = b = 1`), limits (-0.1, 1.1). Test: the rule of
  Bastings et al.'s code (bastings/interpretable_predictions,
  ``latent_rationale/common/latent.py``): the mean of the unstretched
  Kumaraswamy(a, b) where :math:`P(0 < z < 1)` exceeds both
  :math:`P(z = 0)` and :math:`P(z = 1)`, otherwise 0 if :math:`P(z = 0) > P(z = 1)`
  and 1 if not.
* ``gaussian``: :class:`~discograd.distributions.GaussianRelaxedBernoulli`
  with :math:`\mu_d` (initialised at 0.5, the stochastic-gates code's
  ``mu = 0``) and :math:`\sigma` = ``sigma`` (0.5, the paper's). Test:
  Yamada et al.'s :math:`\hat z = \min(1, \max(0, \mu))`.
* ``straight_through``: Bernoulli gates :math:`z_d \sim \mathrm{Bern}(\sigma(\theta_d))`
  with the straight-through gradient (:func:`discograd.functional.straight_through`:
  hard sample forward, :math:`\partial z / \partial \sigma(\theta) = 1` backward),
  penalty :math:`\sum_d \sigma(\theta_d)`, :math:`\theta_d` initialised at 0
  (:math:`P(z_d = 1) = 1/2`). Test: :math:`\hat z = 1[\theta > 0]`, the mode.

Why the gate family is the Trainer's unit (and not an estimator from the
registry): three of the four families are reparameterised distributions, not
gradient estimators of an expectation over a Bernoulli or categorical latent,
and the gates are parameters of the model rather than per-example latents of
an encoder, so the registry's ``Estimator`` contract does not fit them. Each
unit is one (family, λ) pair, keyed ``<family>@<λ>``: every unit runs for
every seed with the same initial classifier weights and the same batches, and
the engine gives it checkpoints and exact resumption like every other task
(the gate noise comes from the phase's ``train`` stream).

Results per unit: ``test_accuracy`` and ``fraction_open`` (the fraction of
test-time gates :math:`\hat z_d > 0`), ``expected_open`` (:math:`\sum_d P(z_d
\ne 0) / D` at the end of training), and the validation accuracy every
``eval_every`` steps. The report plots test accuracy against the fraction
open, one line per family over λ, with standard-error bars over seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from discograd.errors import ConfigError
from discograd.experiments.config import DataConfig, TrainConfig, option
from discograd.experiments.images import ImageTask, binarized_splits, check_batch, training_batch
from discograd.experiments.trainer import Context, StepResult, TaskState, Unit

__all__ = ["GATE_FAMILIES", "GateModel", "GatesConfig", "GatesTask", "unit_key"]

GATE_FAMILIES: tuple[str, ...] = ("hard_concrete", "hard_kuma", "gaussian", "straight_through")

#: Louizos et al.'s (gamma, zeta) stretch, also used for HardKuma
LIMITS = (-0.1, 1.1)


@dataclass
class GatesConfig(DataConfig, TrainConfig):
    """A sparse-gate run: data, gate families, penalty weights, optimisation."""

    families: tuple[str, ...] = option(
        GATE_FAMILIES, "gate families to compare", choices=GATE_FAMILIES, metavar="FAMILY"
    )
    lambdas: tuple[float, ...] = option(
        (1e-4, 1e-3, 3e-3),
        "weights of the L0 penalty lambda * sum_d P(z_d != 0) (one unit per family and value)",
        minimum=0,
        metavar="LAMBDA",
    )
    temperature: float = option(
        2 / 3, "Hard Concrete temperature (Louizos et al.: 2/3)", positive=True
    )
    sigma: float = option(
        0.5, "standard deviation of the Gaussian gates (Yamada et al.: 0.5)", positive=True
    )
    batch_size: int = option(100, "training batch size", minimum=1)
    steps: int = option(300)
    lr: float = option(1e-2)
    log_every: int = option(50)
    eval_every: int = option(100)
    checkpoint_every: int = option(100)

    def validate(self) -> None:
        super().validate()
        if not self.families:
            raise ConfigError("families must name at least one gate family")
        if len(set(self.families)) != len(self.families):
            raise ConfigError(f"families must not repeat a family, got {self.families}")
        if not self.lambdas:
            raise ConfigError("lambdas must give at least one penalty weight")
        if len(set(self.lambdas)) != len(self.lambdas):
            raise ConfigError(f"lambdas must not repeat a value, got {self.lambdas}")


def unit_key(family: str, lam: float) -> str:
    return f"{family}@{lam:g}"


class GateModel(nn.Module):
    """A linear softmax classifier whose inputs pass through one gate per feature."""

    def __init__(self, family: str, dim: int, n_classes: int, cfg: GatesConfig) -> None:
        super().__init__()
        if family not in GATE_FAMILIES:
            raise ValueError(f"family must be one of {GATE_FAMILIES}, got family={family!r}")
        self.family, self.temperature, self.sigma = family, cfg.temperature, cfg.sigma
        self.linear = nn.Linear(dim, n_classes)
        zeros = torch.zeros(dim)
        if family == "hard_kuma":
            # softplus(log(e - 1)) = 1: a = b = 1, the uniform Kumaraswamy
            self.gate = nn.Parameter(torch.full((2, dim), math.log(math.e - 1)))
        elif family == "gaussian":
            self.gate = nn.Parameter(zeros + 0.5)
        else:
            self.gate = nn.Parameter(zeros)

    def distribution(self) -> Any:
        """The gate distribution of the stochastic families (``None`` for straight-through)."""
        from discograd.distributions import GaussianRelaxedBernoulli, HardConcrete, HardKumaraswamy

        if self.family == "hard_concrete":
            return HardConcrete(self.temperature, self.gate, limits=LIMITS)
        if self.family == "hard_kuma":
            a, b = F.softplus(self.gate)
            return HardKumaraswamy(a, b, limits=LIMITS)
        if self.family == "gaussian":
            return GaussianRelaxedBernoulli(self.gate, self.sigma)
        return None

    def prob_nonzero(self) -> Tensor:
        """:math:`P(z_d \\ne 0)` per feature (differentiable)."""
        dist = self.distribution()
        return torch.sigmoid(self.gate) if dist is None else dist.prob_nonzero()

    def penalty(self) -> Tensor:
        """The L0 penalty :math:`\\sum_d P(z_d \\ne 0)`."""
        return self.prob_nonzero().sum()

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` independent draws of the gates (``n × D``), reparameterised or straight-through."""
        from discograd.functional import straight_through

        dist = self.distribution()
        if dist is not None:
            return dist.rsample((n,), generator=generator)
        soft = torch.sigmoid(self.gate).expand(n, -1)
        u = torch.rand(soft.shape, generator=generator, device=soft.device, dtype=soft.dtype)
        return straight_through(u < soft.detach(), soft)

    @torch.no_grad()
    def test_gates(self) -> Tensor:
        """The deterministic test-time gate of the family (see the module docstring)."""
        lo, hi = LIMITS
        if self.family == "hard_concrete":
            return (torch.sigmoid(self.gate) * (hi - lo) + lo).clamp(0, 1)
        if self.family == "gaussian":
            return self.gate.clamp(0, 1)
        if self.family == "straight_through":
            return (self.gate > 0).to(self.gate.dtype)
        dist = self.distribution()
        p0, p1 = dist.prob_zero(), dist.prob_one()
        # Bastings et al.'s code takes the mean of the Kumaraswamy itself, not stretched
        mean = dist.kumaraswamy.mean
        zero_one = (p0 <= p1).to(mean.dtype)
        pc = 1 - p0 - p1
        return torch.where((pc > p0) & (pc > p1), mean, zero_one)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        return self.linear(x * z)


@dataclass
class GatesState(TaskState):
    model: GateModel
    lam: float
    sets: dict[str, Tensor]
    labels: dict[str, Tensor]


@torch.no_grad()
def _accuracy(model: GateModel, x: Tensor, y: Tensor, z: Tensor) -> float:
    pred = model(x.to(z.device), z).argmax(-1).cpu()
    return float((pred == y).double().mean())


class GatesTask(ImageTask[GatesConfig, GatesState]):
    """One gated linear classifier per (family, λ) and seed."""

    name = "gates"
    Config = GatesConfig
    evaluations = ("eval_every",)
    headline = ("test_accuracy", "fraction_open")

    def units(self, config: GatesConfig) -> list[Unit]:
        return [
            Unit(unit_key(fam, lam), None, (fam, lam))
            for fam in config.families
            for lam in config.lambdas
        ]

    def estimator(self, config: GatesConfig, unit: Unit) -> None:
        return None

    def setup(self, config: GatesConfig, data: Any, ctx: Context, estimator: Any) -> GatesState:
        family, lam = ctx.unit.extra
        check_batch(config.batch_size, len(data.train))
        sets = binarized_splits(data, config.binarization, ctx)
        labels = {s: getattr(data, f"{s}_labels").long() for s in ("train", "valid", "test")}
        n_classes = int(max(int(v.max()) for v in labels.values() if len(v)) + 1)
        # The classifier's weights come first from the seeded global RNG: the same for
        # every family and λ of a seed.
        model = GateModel(family, data.dim, n_classes, config).to(ctx.device)
        return GatesState(model, None, float(lam), sets, labels)

    def step(self, state: GatesState, step: int, ctx: Context) -> StepResult:
        cfg, model = ctx.config, state.model
        x, idx = training_batch(state.sets["train"], cfg.batch_size, step, cfg.binarization, ctx)
        y = state.labels["train"][idx].to(ctx.device)
        z = model.sample(len(x), ctx.stream("train"))
        ce = F.cross_entropy(model(x, z), y)
        penalty = model.penalty()
        loss = ce + state.lam * penalty
        metrics = {
            "train_loss": loss.detach(),
            "train_cross_entropy": ce.detach(),
            "expected_open": penalty.detach() / z.shape[-1],
        }
        return StepResult(loss, None, 1, metrics)

    def evaluate(self, state: GatesState, step: int, ctx: Context) -> dict[str, Any]:
        if not ctx.due(step, ctx.config.eval_every):
            return {}
        z = state.model.test_gates()
        acc = _accuracy(state.model, state.sets["valid"], state.labels["valid"], z)
        return {"valid_accuracy": acc, "valid_fraction_open": float((z > 0).double().mean())}

    def finish(self, state: GatesState, ctx: Context) -> dict[str, Any]:
        model = state.model
        z = model.test_gates()
        family, lam = ctx.unit.extra
        return {
            "test_accuracy": _accuracy(model, state.sets["test"], state.labels["test"], z),
            "fraction_open": float((z > 0).double().mean()),
            "expected_open": float(model.prob_nonzero().detach().mean()),
            "family": family,
            "lambda": float(lam),
        }
