r"""Train discrete VAEs with any estimator; test −ELBO and an importance-weighted bound.

Protocols (../LITERATURE): the categorical VAE of Jang et al. 2017 and the ARSM
code (20×10 latents, encoder 784-512-256, decoder mirrored, LeakyReLU(0.2),
Adam 3e-4, batch 200, MNIST thresholded at 0.5, 55k/5k/10k) and the Bernoulli
VAE of the ARM / REBAR papers (200 latents, linear or nonlinear). Every
estimator trains from the same initial weights and sees the same batches.

Logged per estimator: train −ELBO (the estimator's own Monte-Carlo estimate,
averaged over ``log_every`` steps), f-evaluations and seconds per step, the
temperature; validation −ELBO every ``eval_every`` steps; at the end the test
single-sample −ELBO (discrete sample, analytic KL) and the importance-weighted
bound with ``eval_samples`` samples on the first ``iw_examples`` test images.
Resuming, divergence, seeds: see :mod:`discograd.experiments.trainer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from discograd.errors import ConfigError
from discograd.estimators.base import Estimator
from discograd.experiments.common import check_estimators, has_temperature, slug, temperature
from discograd.experiments.config import AnnealConfig, DataConfig, TrainConfig, option
from discograd.experiments.images import (
    ImageState,
    ImageTask,
    binarized_splits,
    check_batch,
    training_batch,
)
from discograd.experiments.runner import atomic_save
from discograd.experiments.toy import ESTIMATORS_HELP
from discograd.experiments.trainer import Context, StepResult
from discograd.models import BernoulliVAE, CategoricalVAE, DiscreteVAE
from discograd.models.nets import ACTIVATIONS

__all__ = ["VAE_ESTIMATORS", "VAEConfig", "VAETask", "build_model", "encoder_gradient_stats"]

VAE_ESTIMATORS: tuple[str, ...] = (
    "gumbel_softmax:tau=1.0",
    "st_gumbel_softmax:tau=1.0",
    "reinforce_ema",
    "rloo:n_samples=4",
    "arsm",
    "relax",
)


@dataclass
class VAEConfig(DataConfig, AnnealConfig, TrainConfig):
    """A VAE run: data, model, estimators, optimisation and evaluation settings."""

    latent: str = option(
        "categorical",
        "categorical (n_latent variables of n_categories) or bernoulli (n_latent bits)",
        choices=("categorical", "bernoulli"),
    )
    n_latent: int = option(20, "latent variables", minimum=1)
    n_categories: int = option(10, "categories per latent variable (categorical)", minimum=2)
    hidden: tuple[int, ...] = option(
        (512, 256), "hidden layer sizes of the encoder (the decoder mirrors them)", minimum=1
    )
    activation: str = option("leaky_relu", "hidden activation", choices=tuple(ACTIVATIONS))
    prior: str = option("uniform", "latent prior", choices=("uniform", "learned"))
    kl: str = option(
        "analytic",
        "KL term: analytic, or relaxed (the Concrete density; relaxed estimators only)",
        choices=("analytic", "relaxed"),
    )
    estimators: tuple[str, ...] = option(VAE_ESTIMATORS, ESTIMATORS_HELP, metavar="SPEC")
    lr: float = option(3e-4)
    batch_size: int = option(200, "training batch size", minimum=1)
    eval_samples: int = option(1000, "importance samples m of the test IW bound", minimum=1)
    iw_examples: int = option(1000, "test images for the IW bound", minimum=1)
    grad_check_every: int = option(
        0,
        "every N steps compare each estimator's encoder gradient with the exact one (needs "
        "an enumerable posterior, e.g. --n-latent 1 --n-categories 10); 0: never",
        minimum=0,
    )
    grad_check_draws: int = option(100, "draws per gradient check", minimum=2)

    def validate(self) -> None:
        super().validate()
        k = self.n_categories if self.latent == "categorical" else 2
        if self.grad_check_every and k**self.n_latent > 2**16:
            raise ConfigError(
                f"grad_check_every needs an enumerable posterior ({k}^{self.n_latent} "
                "configurations is above 65536); use e.g. --n-latent 1 --n-categories 10"
            )
        built = check_estimators(self.estimators, self.latent, support=k**self.n_latent)
        for spec, est in zip(self.estimators, built, strict=True):
            if self.kl == "relaxed" and not has_temperature(est):
                raise ConfigError(
                    f"kl='relaxed' needs a relaxed estimator with a temperature; {spec} has none"
                )


def build_model(cfg: VAEConfig, x_dim: int) -> DiscreteVAE:
    if cfg.latent == "categorical":
        return CategoricalVAE(
            x_dim,
            cfg.n_latent,
            cfg.n_categories,
            cfg.hidden,
            cfg.activation,
            cfg.prior,  # type: ignore[arg-type]
        )
    return BernoulliVAE(x_dim, cfg.n_latent, cfg.hidden, cfg.activation, cfg.prior)  # type: ignore[arg-type]


@torch.no_grad()
def _neg_elbo(model: DiscreteVAE, x: Tensor, gen: torch.Generator, chunk: int = 1000) -> float:
    device = gen.device
    total = 0.0
    for i in range(0, len(x), chunk):
        total += float(model.neg_elbo(x[i : i + chunk].to(device), generator=gen).sum())
    return total / len(x)


@torch.no_grad()
def _iw(model: DiscreteVAE, x: Tensor, m: int, gen: torch.Generator, chunk: int = 100) -> float:
    device = gen.device
    total = 0.0
    for i in range(0, len(x), chunk):
        total += float(model.iw_bound(x[i : i + chunk].to(device), m, generator=gen).sum())
    return total / len(x)


def encoder_gradient_stats(
    model: DiscreteVAE, est: Any, x: Tensor, n_draws: int, generator: torch.Generator
) -> dict[str, float | None]:
    """Bias, variance, SNR and cosine of ``est``'s gradient w.r.t. the encoder, on batch ``x``.

    The cost is the reconstruction term :math:`-\\log p(x\\mid z)` (the analytic KL
    is exact for every estimator); the truth is :class:`~discograd.estimators.Exact`.
    Call it with the estimator in eval mode (no schedule step, no baseline update).
    """
    from discograd.diagnostics import gradient_stats

    stats = gradient_stats(
        est,
        lambda z: -model.log_likelihood(x, z),
        model.posterior(x),
        list(model.encoder.parameters()),
        n_draws,
        generator=generator,
    )
    keep = ("bias", "bias_noise", "variance", "snr", "cosine", "mse")
    return {k: getattr(stats, k) for k in keep}


@dataclass
class VAEState(ImageState):
    model: DiscreteVAE
    estimator: Estimator


class VAETask(ImageTask[VAEConfig, VAEState]):
    """One VAE per estimator and seed, from the same initial weights and batches."""

    name = "vae"
    Config = VAEConfig
    evaluations = ("eval_every", "grad_check_every")
    headline = ("test_neg_elbo", "test_iw_bound", "seconds_per_step", "evals_per_step")

    def setup(self, config: VAEConfig, data: Any, ctx: Context, estimator: Any) -> VAEState:
        check_batch(config.batch_size, len(data.train))
        model = build_model(config, data.dim).to(ctx.device)
        sets = binarized_splits(data, config.binarization, ctx)
        return VAEState(model, estimator, sets, data.image_shape)

    def _batch(self, state: VAEState, step: int, ctx: Context) -> Tensor:
        cfg = ctx.config
        return training_batch(state.sets["train"], cfg.batch_size, step, cfg.binarization, ctx)[0]

    def step(self, state: VAEState, step: int, ctx: Context) -> StepResult:
        x = self._batch(state, step, ctx)
        tau = temperature(state.estimator)  # scheduled; REBAR/RELAX learn theirs
        obj = state.model.objective(
            x, state.estimator, kl=ctx.config.kl, tau=tau, generator=ctx.stream("train")
        )
        metrics = {"train_neg_elbo": obj.neg_elbo.mean(), "tau": tau}
        return StepResult(obj.loss, obj.cv_loss, obj.n_evals, metrics)

    def evaluate(self, state: VAEState, step: int, ctx: Context) -> dict[str, Any]:
        cfg, model = ctx.config, state.model
        record: dict[str, Any] = {}
        if ctx.due(step, cfg.eval_every):
            record["valid_neg_elbo"] = _neg_elbo(model, state.sets["valid"], ctx.generator("valid"))
        if ctx.due(step, cfg.grad_check_every):
            # The estimator's encoder gradient on this step's batch against the exact one.
            x = self._batch(state, step, ctx)
            gen = ctx.generator(f"grad-check/{step}")
            stats = encoder_gradient_stats(model, state.estimator, x, cfg.grad_check_draws, gen)
            record.update({f"grad_{k}": v for k, v in stats.items()})
        return record

    def finish(self, state: VAEState, ctx: Context) -> dict[str, Any]:
        cfg, model, test = ctx.config, state.model, state.sets["test"]
        _save_images(ctx, model, test, state.image_shape)
        return {
            "test_neg_elbo": _neg_elbo(model, test, ctx.generator("test")),
            "test_iw_bound": _iw(
                model, test[: cfg.iw_examples], cfg.eval_samples, ctx.generator("test-iw")
            ),
            "iw_samples": cfg.eval_samples,
            "iw_examples": min(cfg.iw_examples, len(test)),
        }


def _save_images(ctx: Context, model: Any, test: Tensor, shape: tuple[int, int]) -> None:
    """Test images, their reconstructions and prior samples, for the report's PNG grids."""
    with ctx.seeded("images"), torch.no_grad():
        x = test[:16].to(ctx.device)
        z = model.posterior(x).sample()
        recon = torch.sigmoid(model.decoder(model.decoder_input(z)))
        prior_z = model.prior().sample((16,))
        samples = torch.sigmoid(model.decoder(model.decoder_input(prior_z)))
    atomic_save(
        ctx.path / f"images-{slug(ctx.phase)}.pt",
        {"shape": tuple(shape), "test": x.cpu(), "recon": recon.cpu(), "samples": samples.cpu()},
    )
