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

Resuming: a checkpoint every ``checkpoint_every`` steps holds the model,
optimisers, estimator state and random streams; the batch order and the
dynamic binarisation are functions of (seed, step), so a resumed run logs the
same metrics as an uninterrupted one.

Divergence: a non-finite loss, control-variate loss or gradient stops that
estimator before the step is applied; the phase finishes with a ``diverged``
entry (estimator, step, quantity) and no test numbers, and the next
estimator runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from discograd.data.datasets import ImageData
from discograd.errors import ConfigError
from discograd.estimators.registry import canonical, make
from discograd.experiments.common import (
    BINARIZATIONS,
    Diverged,
    batch_indices,
    binarized_splits,
    check_choice,
    check_estimators,
    check_floats,
    check_ints,
    check_sizes,
    cv_optimizer,
    load_data,
    log_divergence,
    model_step,
    resolve_device,
    slug,
    training_batch,
)
from discograd.experiments.runner import RunDir, atomic_save, progress
from discograd.models import BernoulliVAE, CategoricalVAE, DiscreteVAE
from discograd.models.nets import ACTIVATIONS
from discograd.schedules import ExponentialDecay

__all__ = ["VAE_ESTIMATORS", "VAEConfig", "build_model", "run_vae"]

VAE_ESTIMATORS: tuple[str, ...] = (
    "gumbel_softmax:tau=1.0",
    "st_gumbel_softmax:tau=1.0",
    "reinforce_ema",
    "rloo:n_samples=4",
    "arsm",
    "relax",
)


class Interrupted(RuntimeError):
    """Raised by the test hook that simulates a kill after a checkpoint."""


@dataclass
class VAEConfig:
    """A VAE run: data, model, estimators, optimisation and evaluation settings."""

    dataset: str = "digits"
    dataset_path: str | None = None
    data_dir: str | None = None
    binarization: str = "threshold"
    latent: str = "categorical"
    n_latent: int = 20
    n_categories: int = 10
    hidden: tuple[int, ...] = (512, 256)
    activation: str = "leaky_relu"
    prior: str = "uniform"
    kl: str = "analytic"
    estimators: tuple[str, ...] = VAE_ESTIMATORS
    anneal_rate: float = 0.0
    anneal_every: int = 1000
    tau_floor: float = 0.5
    lr: float = 3e-4
    cv_lr: float = 1e-3
    batch_size: int = 200
    steps: int = 2000
    log_every: int = 50
    eval_every: int = 500
    eval_samples: int = 1000
    iw_examples: int = 1000
    checkpoint_every: int = 500
    grad_check_every: int = 0
    grad_check_draws: int = 100
    seed: int = 0
    device: str = "cpu"

    def validate(self) -> None:
        check_ints(self, ("n_latent", "batch_size", "steps", "log_every", "eval_every"))
        check_ints(self, ("eval_samples", "iw_examples", "checkpoint_every", "anneal_every"))
        check_ints(self, ("seed", "grad_check_every"), minimum=0)
        check_ints(self, ("grad_check_draws",), minimum=2)
        check_choice(self, "latent", ("categorical", "bernoulli"))
        if self.latent == "categorical":
            check_ints(self, ("n_categories",), minimum=2)
        check_sizes("hidden", self.hidden)
        check_choice(self, "activation", tuple(ACTIVATIONS))
        check_choice(self, "prior", ("uniform", "learned"))
        check_choice(self, "kl", ("analytic", "relaxed"))
        check_choice(self, "binarization", BINARIZATIONS)
        check_floats(self, ("lr", "cv_lr", "tau_floor"))
        check_floats(self, ("anneal_rate",), allow_zero=True)
        if self.grad_check_every:
            k = self.n_categories if self.latent == "categorical" else 2
            if k**self.n_latent > 2**16:
                raise ConfigError(
                    f"grad_check_every needs an enumerable posterior ({k}^{self.n_latent} "
                    "configurations is above 65536); use e.g. --n-latent 1 --n-categories 10"
                )
        k = self.n_categories if self.latent == "categorical" else 2
        built = check_estimators(self.estimators, self.latent, support=k**self.n_latent)
        for spec, est in zip(self.estimators, built, strict=True):
            if self.kl == "relaxed" and not hasattr(est, "schedule"):
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


def _make_estimator(cfg: VAEConfig, spec: str):
    est = make(spec)
    if cfg.anneal_rate > 0 and hasattr(est, "schedule"):
        tau0 = est.schedule(0)
        est.schedule = ExponentialDecay(
            tau0=tau0, rate=cfg.anneal_rate, floor=min(cfg.tau_floor, tau0), every=cfg.anneal_every
        )
    return est


def _batches(data: Tensor, cfg: VAEConfig, step: int, device) -> Tensor:
    """The training batch of ``step``: a function of (seed, step) alone."""
    x = data[batch_indices(len(data), cfg.batch_size, step, cfg.seed)]
    return training_batch(x, cfg.binarization, cfg.seed * 1_000_003 + step, device)


@torch.no_grad()
def _neg_elbo(model: DiscreteVAE, x: Tensor, device, seed: int, chunk: int = 1000) -> float:
    gen = torch.Generator(device=device).manual_seed(seed)
    total = 0.0
    for i in range(0, len(x), chunk):
        total += float(model.neg_elbo(x[i : i + chunk].to(device), generator=gen).sum())
    return total / len(x)


@torch.no_grad()
def _iw(model: DiscreteVAE, x: Tensor, m: int, device, seed: int, chunk: int = 100) -> float:
    gen = torch.Generator(device=device).manual_seed(seed)
    total = 0.0
    for i in range(0, len(x), chunk):
        total += float(model.iw_bound(x[i : i + chunk].to(device), m, generator=gen).sum())
    return total / len(x)


def encoder_gradient_stats(
    model: DiscreteVAE, est, x: Tensor, n_draws: int, seed: int
) -> dict[str, float | None]:
    """Bias, variance, SNR and cosine of ``est``'s gradient w.r.t. the encoder, on batch ``x``.

    The cost is the reconstruction term :math:`-\\log p(x\\mid z)` (the analytic KL
    is exact for every estimator); the truth is :class:`~discograd.estimators.Exact`.
    The estimator runs in eval mode: no schedule step, no baseline update.
    """
    from discograd.diagnostics import gradient_stats

    was_training = est.training
    est.eval()
    try:
        params = [p for p in model.encoder.parameters()]
        gen = torch.Generator(device=x.device).manual_seed(seed)
        stats = gradient_stats(
            est,
            lambda z: -model.log_likelihood(x, z),
            model.posterior(x),
            params,
            n_draws,
            generator=gen,
        )
    finally:
        est.train(was_training)
    keep = ("bias", "bias_noise", "variance", "snr", "cosine", "mse")
    return {k: getattr(stats, k) for k in keep}


def run_vae(
    cfg: VAEConfig,
    run: RunDir,
    *,
    quiet: bool = False,
    data: ImageData | None = None,
    _interrupt_at: int | None = None,
) -> dict[str, Any]:
    """Train one model per estimator (or resume); returns ``{spec: summary}``."""
    cfg.validate()
    device = resolve_device(cfg.device)
    if data is None:
        data = load_data(cfg, quiet=quiet)
    if len(data.train) < cfg.batch_size:
        raise ConfigError(
            f"batch_size={cfg.batch_size} exceeds the {len(data.train)} training images"
        )
    sets = binarized_splits(data, cfg.binarization, cfg.seed)
    results: dict[str, Any] = {}
    for spec in cfg.estimators:
        phase = f"vae/{canonical(spec)}"
        if not run.is_done(phase):
            run.finish(
                phase, _train(cfg, run, phase, spec, sets, data, device, quiet, _interrupt_at)
            )
        results[canonical(spec)] = run.result(phase)
    return results


def _train(cfg, run, phase, spec, sets, data, device, quiet, interrupt_at) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)  # the same initial weights for every estimator
    model = build_model(cfg, data.dim).to(device)
    est = _make_estimator(cfg, spec).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    probe = sets["train"][: cfg.batch_size].to(device)
    cv_opt = cv_optimizer(
        est, cfg.cv_lr, lambda z: -model.log_likelihood(probe, z), model.posterior(probe)
    )
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    start, seconds, evals = 0, 0.0, 0.0
    window: list[float] = []
    # Records of a step count are logged before the checkpoint of that count.
    ckpt = run.resume(phase, device)
    if ckpt is not None:
        with run.restoring(phase):
            start, seconds, evals = ckpt["step"], ckpt["seconds"], ckpt["evals"]
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["opt"])
            est.load_state_dict(ckpt["estimator"])
            if cv_opt is not None and ckpt["cv_opt"] is not None:
                cv_opt.load_state_dict(ckpt["cv_opt"])
            gen.set_state(ckpt["gen"])
            window = list(ckpt["window"])

    def validate(done: int) -> None:
        model.eval()
        nelbo = _neg_elbo(model, sets["valid"], device, cfg.seed + 2)
        run.log({"phase": phase, "step": done, "valid_neg_elbo": nelbo})
        model.train()

    def grad_check(done: int) -> None:
        """The estimator's encoder gradient on this step's batch against the exact one."""
        x = _batches(sets["train"], cfg, done, device)
        stats = encoder_gradient_stats(model, est, x, cfg.grad_check_draws, cfg.seed + done)
        run.log({"phase": phase, "step": done, **{f"grad_{k}": v for k, v in stats.items()}})

    if start == 0 and cfg.grad_check_every:
        grad_check(0)

    if start == 0:
        validate(0)
    diverged: dict[str, Any] | None = None
    with progress(cfg.steps, f"vae {canonical(spec)}", quiet=quiet, initial=start) as bar:
        for step in range(start, cfg.steps):
            x = _batches(sets["train"], cfg, step, device)
            # The relaxed estimators' scheduled temperature (REBAR/RELAX learn theirs).
            tau = float(est.tau) if hasattr(est, "schedule") else None
            t0 = time.perf_counter()
            obj = model.objective(x, est, kl=cfg.kl, tau=tau, generator=gen)  # type: ignore[arg-type]
            try:
                model_step(obj.loss, obj.cv_loss, opt, cv_opt, model.parameters())
            except Diverged as err:
                diverged = log_divergence(run, phase, canonical(spec), step, err.quantity)
                break
            seconds += time.perf_counter() - t0
            evals += obj.n_evals
            window.append(float(obj.neg_elbo.mean()))
            done = step + 1
            bar.update()
            if done % cfg.log_every == 0:
                run.log(
                    {
                        "phase": phase,
                        "step": done,
                        "train_neg_elbo": sum(window) / len(window),
                        "seconds_per_step": seconds / done,
                        "evals_per_step": evals / done,
                        "tau": tau,
                    }
                )
                window.clear()
            if done % cfg.eval_every == 0:
                validate(done)
            if cfg.grad_check_every and done % cfg.grad_check_every == 0:
                grad_check(done)
            if done % cfg.checkpoint_every == 0 and done < cfg.steps:
                run.save_checkpoint(
                    phase,
                    {
                        "step": done,
                        "seconds": seconds,
                        "evals": evals,
                        "window": list(window),
                        "model": model.state_dict(),
                        "opt": opt.state_dict(),
                        "estimator": est.state_dict(),
                        "cv_opt": cv_opt.state_dict() if cv_opt is not None else None,
                        "gen": gen.get_state(),
                    },
                    device,
                )
                if interrupt_at is not None and done >= interrupt_at:
                    raise Interrupted(f"simulated interruption after step {done}")
    if diverged is not None:
        # A model stopped part-way has no test numbers worth comparing.
        done = diverged["step"]
        return {
            "test_neg_elbo": None,
            "valid_neg_elbo": None,
            "test_iw_bound": None,
            "iw_samples": cfg.eval_samples,
            "iw_examples": min(cfg.iw_examples, len(sets["test"])),
            "seconds_per_step": seconds / done if done else None,
            "evals_per_step": evals / done if done else None,
            "steps": done,
            "diverged": diverged,
        }
    model.eval()
    test = sets["test"]
    summary = {
        "test_neg_elbo": _neg_elbo(model, test, device, cfg.seed + 3),
        "valid_neg_elbo": _neg_elbo(model, sets["valid"], device, cfg.seed + 2),
        "test_iw_bound": _iw(
            model, test[: cfg.iw_examples], cfg.eval_samples, device, cfg.seed + 4
        ),
        "iw_samples": cfg.eval_samples,
        "iw_examples": min(cfg.iw_examples, len(test)),
        "seconds_per_step": seconds / cfg.steps,
        "evals_per_step": evals / cfg.steps,
        "steps": cfg.steps,
    }
    run.log({"phase": phase, "step": cfg.steps, **{f"final_{k}": v for k, v in summary.items()}})
    _save_images(run, phase, model, test, device, cfg, data.image_shape)
    return {**summary, "diverged": None}


def _save_images(run, phase, model, test, device, cfg, shape) -> None:
    """Test images, their reconstructions and prior samples, for the report's PNG grids."""
    with torch.no_grad():
        x = test[:16].to(device)
        z = model.posterior(x).sample()
        recon = torch.sigmoid(model.decoder(model.decoder_input(z)))
        prior_z = model.prior().sample((16,))
        samples = torch.sigmoid(model.decoder(model.decoder_input(prior_z)))
    atomic_save(
        run.path / f"images-{slug(phase)}.pt",
        {"shape": tuple(shape), "test": x.cpu(), "recon": recon.cpu(), "samples": samples.cpu()},
    )
