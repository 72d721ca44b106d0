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
Where asked for (the published protocols, ``--protocol``, :mod:`protocols`):
the −ELBO over the whole training set every ``train_eval_every`` steps, the
test bound every ``test_every`` steps, and the RODEO / DisARM code's encoder
gradient variance every ``grad_var_every`` steps (:class:`GradientVariance`).
Resuming, divergence, seeds: see :mod:`discograd.experiments.trainer`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from discograd.errors import ConfigError
from discograd.estimators.base import Estimator
from discograd.experiments.common import (
    ChainedOptimizer,
    check_estimators,
    has_temperature,
    is_multi_sample,
    slug,
    temperature,
)
from discograd.experiments.config import AnnealConfig, DataConfig, TrainConfig, option
from discograd.experiments.images import (
    ImageState,
    ImageTask,
    binarized_splits,
    check_batch,
    training_batch,
)
from discograd.experiments.protocols import PROTOCOLS, help_text
from discograd.experiments.runner import atomic_save
from discograd.experiments.toy import ESTIMATORS_HELP
from discograd.experiments.trainer import Context, StepResult
from discograd.models import BernoulliVAE, CategoricalVAE, DiscreteVAE
from discograd.models.nets import ACTIVATIONS

__all__ = [
    "VAE_ESTIMATORS",
    "GradientVariance",
    "VAEConfig",
    "VAETask",
    "build_model",
    "encoder_gradient_stats",
]

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

    protocol: str = option("none", help_text(), choices=("none", *PROTOCOLS))
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
    prior_lr: float | None = option(
        None,
        "learning rate of plain SGD for a learned prior's logits, apart from the networks' "
        "Adam (the DisARM code: 0.01); none: the prior trains with the networks' Adam",
        positive=True,
    )
    center_input: bool = option(
        False, "the encoder sees x minus the training images' mean (the DisARM code)"
    )
    init_output_bias: bool = option(
        False,
        "the decoder's output bias starts at the logit of the training images' mean, "
        "clamped to [0.001, 0.999] (the DisARM code)",
    )
    kl: str = option(
        "analytic",
        "KL term: analytic; relaxed (the Concrete density; relaxed estimators only); or "
        "estimated: none, the estimators' cost is the whole negative ELBO "
        "log q(z|x) - log p(x, z) (the DisARM / RODEO code; needed by multi-sample "
        "estimators, whose cost is the negative K-sample bound)",
        choices=("analytic", "relaxed", "estimated"),
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
    train_eval_every: int = option(
        0,
        "every N steps, the -ELBO averaged over the whole training set (one pass, a fresh "
        "binarisation, one sample per image: the DisARM / RODEO code's train ELBO); 0: never",
        minimum=0,
    )
    test_every: int = option(
        0,
        "every N steps, the test IW bound (eval_samples samples, iw_examples images) as well "
        "as at the end; 0: only at the end",
        minimum=0,
    )
    grad_var_every: int = option(
        0,
        "log grad_var every N steps: the mean over the encoder's parameters of "
        "EMA[g^2] - EMA[g]^2, where g is the estimator's encoder gradient and the EMAs "
        "(decay grad_var_decay, from zero) are updated every step (the RODEO / DisARM "
        "code's var/grad); 0: off",
        minimum=0,
    )
    grad_var_decay: float = option(0.999, "decay of the gradient-variance EMAs", positive=True)

    @classmethod
    def presets(cls, overrides: dict[str, Any]) -> list[dict[str, Any]]:
        """The protocol's values, between the defaults and the user's (see :mod:`protocols`)."""
        name = overrides.get("protocol", "none")
        if name in (None, "none"):
            return []
        if name not in PROTOCOLS:
            raise ConfigError(
                f"protocol must be one of none, {', '.join(PROTOCOLS)}, got protocol={name!r}"
            )
        return [PROTOCOLS[name]]

    def validate(self) -> None:
        super().validate()
        if not self.grad_var_decay < 1:
            raise ConfigError(
                f"grad_var_decay must be < 1, got grad_var_decay={self.grad_var_decay}"
            )
        k = self.n_categories if self.latent == "categorical" else 2
        if self.grad_check_every and k**self.n_latent > 2**16:
            raise ConfigError(
                f"grad_check_every needs an enumerable posterior ({k}^{self.n_latent} "
                "configurations is above 65536); use e.g. --n-latent 1 --n-categories 10"
            )
        built = check_estimators(
            self.estimators, self.latent, support=k**self.n_latent, multi_sample=None
        )
        if len({is_multi_sample(est) for est in built}) > 1:
            raise ConfigError(
                "estimators: the multi-sample-bound estimators (est(log_weight, q)) optimise "
                "another objective than the others; run them apart, got "
                + " ".join(self.estimators)
            )
        for spec, est in zip(self.estimators, built, strict=True):
            if self.kl == "relaxed" and not has_temperature(est):
                raise ConfigError(
                    f"kl='relaxed' needs a relaxed estimator with a temperature; {spec} has none"
                )
            if is_multi_sample(est):
                if self.kl != "estimated":
                    raise ConfigError(
                        f"{spec} optimises the K-sample bound as a whole: it needs "
                        f"kl='estimated', got kl={self.kl!r}"
                    )
                if self.grad_check_every:
                    raise ConfigError(
                        f"grad_check_every compares single-sample gradients; {spec} is a "
                        "multi-sample estimator"
                    )


def build_model(cfg: VAEConfig, x_dim: int, train_mean: Tensor | None = None) -> DiscreteVAE:
    """The config's VAE; ``train_mean`` (the training images' mean) for ``center_input`` and
    ``init_output_bias``."""
    model: DiscreteVAE
    if cfg.latent == "categorical":
        model = CategoricalVAE(
            x_dim,
            cfg.n_latent,
            cfg.n_categories,
            cfg.hidden,
            cfg.activation,
            cfg.prior,  # type: ignore[arg-type]
        )
    else:
        model = BernoulliVAE(x_dim, cfg.n_latent, cfg.hidden, cfg.activation, cfg.prior)  # type: ignore[arg-type]
    if cfg.center_input or cfg.init_output_bias:
        if train_mean is None:
            raise ValueError("center_input and init_output_bias need the training mean")
        model.use_data_mean(
            train_mean, center_input=cfg.center_input, init_output_bias=cfg.init_output_bias
        )
    return model


def _elbo_kl(cfg: VAEConfig) -> str:
    """How evaluations estimate the ELBO: as the cost does when it is estimated whole, else
    with the analytic KL (also for relaxed training: the evaluations use discrete z)."""
    return "estimated" if cfg.kl == "estimated" else "analytic"


@torch.no_grad()
def _neg_elbo(
    model: DiscreteVAE, x: Tensor, gen: torch.Generator, chunk: int = 1000, kl: str = "analytic"
) -> float:
    device = gen.device
    total = 0.0
    for i in range(0, len(x), chunk):
        xb = x[i : i + chunk].to(device)
        total += float(model.neg_elbo(xb, generator=gen, kl=kl).sum())  # type: ignore[arg-type]
    return total / len(x)


class GradientVariance:
    r"""The RODEO / DisARM code's gradient variance: EMAs of g and g² of some parameters.

    :meth:`update` after each backward pass (g = the parameters' ``.grad``):
    :math:`m \leftarrow d\,m + (1-d)\,g`, :math:`s \leftarrow d\,s + (1-d)\,g^2`,
    both from zero and without bias correction, as ``tf.train.ExponentialMovingAverage``
    does on their zero-initialised variables. :meth:`value` is the mean over
    every parameter entry of :math:`s - m^2`.
    """

    def __init__(self, params: list[nn.Parameter], decay: float) -> None:
        self.params, self.decay = params, decay
        self.m = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]
        self.s = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]
        self.size = sum(p.numel() for p in params)

    @torch.no_grad()
    def update(self) -> None:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        d = self.decay
        torch._foreach_mul_(self.m, d)
        torch._foreach_add_(self.m, grads, alpha=1 - d)
        torch._foreach_mul_(self.s, d)
        torch._foreach_addcmul_(self.s, grads, grads, value=1 - d)

    @torch.no_grad()
    def value(self) -> float:
        total = sum(float((s - m * m).sum()) for m, s in zip(self.m, self.s, strict=True))
        return total / self.size

    def state_dict(self) -> dict[str, Any]:
        return {"m": [t.clone() for t in self.m], "s": [t.clone() for t in self.s]}

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        with torch.no_grad():
            for mine, theirs in ((self.m, saved["m"]), (self.s, saved["s"])):
                for t, v in zip(mine, theirs, strict=True):
                    t.copy_(v)


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
    grad_var: GradientVariance | None = None
    train_grey: Tensor | None = None  # the training images before binarisation


#: attribute marking the parameter the prior's own optimiser trains (``prior_lr``)
PRIOR_PARAMETER = "_discograd_prior"


class VAETask(ImageTask[VAEConfig, VAEState]):
    """One VAE per estimator and seed, from the same initial weights and batches."""

    name = "vae"
    Config = VAEConfig
    evaluations = (
        "eval_every",
        "grad_check_every",
        "train_eval_every",
        "test_every",
        "grad_var_every",
    )
    headline = ("test_neg_elbo", "test_iw_bound", "seconds_per_step", "evals_per_step")

    def setup(self, config: VAEConfig, data: Any, ctx: Context, estimator: Any) -> VAEState:
        check_batch(config.batch_size, len(data.train))
        sets = binarized_splits(data, config.binarization, ctx)
        # The mean pixel of the training images as training sees them (under dynamic
        # binarisation, the grey levels: the mean of the draws).
        mean = sets["train"].mean(0)
        model = build_model(config, data.dim, mean).to(ctx.device)
        if isinstance(model.prior_logits, nn.Parameter):
            setattr(model.prior_logits, PRIOR_PARAMETER, True)
        grad_var = None
        if config.grad_var_every:
            params = [p for p in model.encoder.parameters() if p.requires_grad]
            grad_var = GradientVariance(params, config.grad_var_decay)
        return VAEState(model, estimator, sets, data.image_shape, grad_var, data.train)

    def optimizer(self, config: VAEConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        """Adam at ``lr``; with ``prior_lr``, plain SGD for the learned prior's logits."""
        prior = [p for p in params if getattr(p, PRIOR_PARAMETER, False)]
        if config.prior_lr is None or not prior:
            return torch.optim.Adam(params, lr=config.lr)
        rest = [p for p in params if not getattr(p, PRIOR_PARAMETER, False)]
        return ChainedOptimizer(
            torch.optim.Adam(rest, lr=config.lr), torch.optim.SGD(prior, lr=config.prior_lr)
        )

    def state_dict(self, state: VAEState) -> dict[str, Any]:
        return {} if state.grad_var is None else {"grad_var": state.grad_var.state_dict()}

    def load_state_dict(self, state: VAEState, saved: Mapping[str, Any]) -> None:
        if state.grad_var is not None:
            state.grad_var.load_state_dict(saved["grad_var"])

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
        after = None if state.grad_var is None else state.grad_var.update
        return StepResult(obj.loss, obj.cv_loss, obj.n_evals, metrics, after_backward=after)

    def evaluate(self, state: VAEState, step: int, ctx: Context) -> dict[str, Any]:
        cfg, model = ctx.config, state.model
        kl = _elbo_kl(cfg)
        record: dict[str, Any] = {}
        if ctx.due(step, cfg.eval_every):
            record["valid_neg_elbo"] = _neg_elbo(
                model, state.sets["valid"], ctx.generator("valid"), kl=kl
            )
        if ctx.due(step, cfg.train_eval_every):
            record["train_set_neg_elbo"] = self._train_set(state, step, ctx, kl)
        if ctx.due(step, cfg.test_every):
            # The last step's is the final one (finish does not repeat it).
            name = "test-iw" if step == ctx.steps else f"test-iw/{step}"
            record["test_iw_bound"] = self._test_iw(state, ctx, ctx.generator(name))
        if ctx.due(step, cfg.grad_var_every) and state.grad_var is not None:
            record["grad_var"] = state.grad_var.value()
        if ctx.due(step, cfg.grad_check_every):
            # The estimator's encoder gradient on this step's batch against the exact one.
            x = self._batch(state, step, ctx)
            gen = ctx.generator(f"grad-check/{step}")
            stats = encoder_gradient_stats(model, state.estimator, x, cfg.grad_check_draws, gen)
            record.update({f"grad_{k}": v for k, v in stats.items()})
        return record

    def _train_set(self, state: VAEState, step: int, ctx: Context, kl: str) -> float:
        """-ELBO averaged over the training set: one pass, freshly binarised under dynamic."""
        cfg = ctx.config
        x = state.sets["train"]
        if cfg.binarization == "dynamic" and state.train_grey is not None:
            from discograd.data import binarize

            gen = ctx.generator(f"train-eval/binarize/{step}", "cpu")
            x = binarize(state.train_grey, "dynamic", generator=gen)
        return _neg_elbo(state.model, x, ctx.generator(f"train-eval/{step}"), kl=kl)

    def _test_iw(self, state: VAEState, ctx: Context, gen: torch.Generator) -> float:
        cfg, test = ctx.config, state.sets["test"]
        return _iw(state.model, test[: cfg.iw_examples], cfg.eval_samples, gen)

    def finish(self, state: VAEState, ctx: Context) -> dict[str, Any]:
        cfg, model, test = ctx.config, state.model, state.sets["test"]
        _save_images(ctx, model, test, state.image_shape)
        out: dict[str, Any] = {
            "test_neg_elbo": _neg_elbo(model, test, ctx.generator("test"), kl=_elbo_kl(cfg)),
        }
        if not cfg.test_every:  # else the last step's evaluation holds it
            out["test_iw_bound"] = self._test_iw(state, ctx, ctx.generator("test-iw"))
        out.update(iw_samples=cfg.eval_samples, iw_examples=min(cfg.iw_examples, len(test)))
        return out


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
