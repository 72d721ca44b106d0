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
defaults here are sized for the offline 8×8 ``digits`` (32 input and 32 output
pixels), where absolute numbers are not comparable with MNIST.

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

Resuming: a checkpoint every ``checkpoint_every`` steps holds the model, the
optimisers, both estimators' states and the random stream; batches and
dynamic binarisation are functions of (seed, step), so a resumed run logs the
same metrics as an uninterrupted one.

Divergence: as in :mod:`discograd.experiments.vae`, a non-finite loss,
control-variate loss or gradient ends that estimator's phase with a
``diverged`` entry and no test numbers; the next estimator runs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

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
    load_data,
    log_divergence,
    model_step,
    resolve_device,
    slug,
    training_batch,
)
from discograd.experiments.runner import RunDir, atomic_save, progress
from discograd.experiments.vae import Interrupted
from discograd.models import StochasticBinaryNetwork
from discograd.models.nets import ACTIVATIONS

__all__ = ["SBN_ESTIMATORS", "SBNConfig", "build_model", "run_sbn"]

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
class SBNConfig:
    """A structured-prediction run: data, network, estimators, optimisation, evaluation.

    ``units=()`` means the paper's sizes for the latent kind (200 binary units
    or 20 categorical variables per layer); ``estimators=()`` means
    :data:`SBN_ESTIMATORS` for the latent kind.
    """

    dataset: str = "digits"
    dataset_path: str | None = None
    data_dir: str | None = None
    binarization: str = "threshold"
    latent: str = "bernoulli"
    units: tuple[int, ...] = ()
    n_categories: int = 10
    hidden: tuple[int, ...] = ()
    activation: str = "tanh"
    estimators: tuple[str, ...] = ()
    lr: float = 1e-3
    cv_lr: float = 1e-3
    batch_size: int = 100
    steps: int = 2000
    log_every: int = 50
    eval_every: int = 500
    valid_samples: int = 100
    eval_samples: int = 1000
    iw_examples: int = 1000
    checkpoint_every: int = 500
    seed: int = 0
    device: str = "cpu"

    def estimator_specs(self) -> tuple[str, ...]:
        """The estimators this run trains (the per-kind defaults when ``estimators`` is empty)."""
        return tuple(self.estimators) or SBN_ESTIMATORS.get(self.latent, ())

    def validate(self) -> None:
        check_ints(self, ("batch_size", "steps", "log_every", "eval_every", "valid_samples"))
        check_ints(self, ("eval_samples", "iw_examples", "checkpoint_every"))
        check_ints(self, ("seed",), minimum=0)
        check_choice(self, "latent", ("categorical", "bernoulli"))
        if self.units and len(self.units) != 2:
            raise ConfigError(f"units must be () or two positive ints, got units={self.units!r}")
        check_sizes("units", self.units)
        if self.latent == "categorical":
            check_ints(self, ("n_categories",), minimum=2)
        check_sizes("hidden", self.hidden)
        check_choice(self, "activation", tuple(ACTIVATIONS))
        check_choice(self, "binarization", BINARIZATIONS)
        check_floats(self, ("lr", "cv_lr"))
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


def _batch(data: Tensor, cfg: SBNConfig, step: int, device: torch.device) -> Tensor:
    """The training batch of ``step``: a function of (seed, step) alone."""
    x = data[batch_indices(len(data), cfg.batch_size, step, cfg.seed)]
    return training_batch(x, cfg.binarization, cfg.seed * 1_000_003 + step, device)


@torch.no_grad()
def _nll(
    model: StochasticBinaryNetwork, x: Tensor, m: int, device, seed: int, chunk: int = 100
) -> float:
    """Mean importance-sampled −log p(x_b | x_t) with ``m`` samples, over ``x`` in chunks."""
    gen = torch.Generator(device=device).manual_seed(seed)
    total = 0.0
    for i in range(0, len(x), chunk):
        total += float(model.nll(x[i : i + chunk].to(device), m, generator=gen).sum())
    return total / len(x)


def run_sbn(
    cfg: SBNConfig,
    run: RunDir,
    *,
    quiet: bool = False,
    data: ImageData | None = None,
    _interrupt_at: int | None = None,
) -> dict[str, Any]:
    """Train one network per estimator (or resume); returns ``{canonical spec: summary}``.

    Each summary holds ``test_nll`` (importance-sampled with ``iw_samples``
    samples on ``iw_examples`` test images), ``test_nll_1`` (the single-sample
    bound on the same images), ``valid_nll``, ``seconds_per_step``,
    ``evals_per_step`` (decoder evaluations per example), ``layer_evals_per_step``
    (second-layer evaluations per example), and the settings behind them.
    """
    cfg.validate()
    device = resolve_device(cfg.device)
    if data is None:
        data = load_data(cfg, quiet=quiet)
    if len(data.train) < cfg.batch_size:
        raise ConfigError(
            f"batch_size={cfg.batch_size} exceeds the {len(data.train)} training images"
        )
    if data.image_shape[0] < 2:
        raise ConfigError(f"images need at least 2 rows to split, got {data.image_shape}")
    sets = binarized_splits(data, cfg.binarization, cfg.seed)
    results: dict[str, Any] = {}
    for spec in cfg.estimator_specs():
        phase = f"sbn/{canonical(spec)}"
        if not run.is_done(phase):
            run.finish(
                phase, _train(cfg, run, phase, spec, sets, data, device, quiet, _interrupt_at)
            )
        results[canonical(spec)] = run.result(phase)
    return results


def _estimators(spec: str, device) -> nn.ModuleDict:
    """Two instances of ``spec``: ``outer`` on p(h1 | x_t), ``inner`` on p(h2 | h1)."""
    return nn.ModuleDict({"outer": make(spec), "inner": make(spec)}).to(device)


def _cv_optimizer(model, ests: nn.ModuleDict, probe: Tensor, lr: float, device):
    """Adam over both estimators' control-variate parameters, if any.

    Lazily sized parameters (RELAX's default network) get their shapes from one
    throw-away nested call with autograd on (RELAX sizes them only there), in
    eval mode (frozen baselines and schedules) with its own generator, so no
    state or random stream moves.
    """
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in ests.parameters()):
        ests.eval()
        model.objective(
            probe,
            ests["outer"],
            ests["inner"],
            generator=torch.Generator(device=device).manual_seed(0),
        )
        ests.train()
    params = [p for p in ests.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=lr) if params else None


def _train(cfg, run, phase, spec, sets, data, device, quiet, interrupt_at) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)  # the same initial weights for every estimator
    model = build_model(cfg, data.image_shape).to(device)
    ests = _estimators(spec, device)
    outer, inner = ests["outer"], ests["inner"]
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    cv_opt = _cv_optimizer(
        model, ests, sets["train"][: cfg.batch_size].to(device), cfg.cv_lr, device
    )
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    start, seconds, evals, layer_evals = 0, 0.0, 0.0, 0.0
    # The checkpoint of iteration c is saved before that iteration logs anything.
    ckpt = run.resume(phase, device)
    if ckpt is not None:
        with run.restoring(phase):
            start, seconds = ckpt["step"], ckpt["seconds"]
            evals, layer_evals = ckpt["evals"], ckpt["layer_evals"]
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["opt"])
            ests.load_state_dict(ckpt["estimators"])
            if cv_opt is not None and ckpt["cv_opt"] is not None:
                cv_opt.load_state_dict(ckpt["cv_opt"])
            gen.set_state(ckpt["gen"])
    valid = sets["valid"][: cfg.iw_examples]

    def log_valid(step: int) -> None:
        nll = _nll(model, valid, cfg.valid_samples, device, cfg.seed + 2)
        run.log({"phase": phase, "step": step, "valid_nll": nll})

    if start == 0:
        log_valid(0)
    window: list[float] = []
    diverged: dict[str, Any] | None = None
    with progress(cfg.steps, f"sbn {canonical(spec)}", quiet=quiet, initial=start) as bar:
        for step in range(start, cfg.steps):
            if step % cfg.checkpoint_every == 0 and step > start:
                run.save_checkpoint(
                    phase,
                    {
                        "step": step,
                        "seconds": seconds,
                        "evals": evals,
                        "layer_evals": layer_evals,
                        "model": model.state_dict(),
                        "opt": opt.state_dict(),
                        "estimators": ests.state_dict(),
                        "cv_opt": cv_opt.state_dict() if cv_opt is not None else None,
                        "gen": gen.get_state(),
                    },
                    device,
                )
                if interrupt_at is not None and step >= interrupt_at:
                    raise Interrupted(f"simulated interruption at step {step}")
            x = _batch(sets["train"], cfg, step, device)
            t0 = time.perf_counter()
            obj = model.objective(x, outer, inner, generator=gen)
            try:
                model_step(obj.loss, obj.cv_loss, opt, cv_opt, model.parameters())
            except Diverged as err:
                diverged = log_divergence(run, phase, canonical(spec), step, err.quantity)
                break
            seconds += time.perf_counter() - t0
            evals += obj.n_evals
            layer_evals += obj.layer_evals
            window.append(float(obj.nll.mean()))
            if (step + 1) % cfg.log_every == 0:
                run.log(
                    {
                        "phase": phase,
                        "step": step + 1,
                        "train_nll_bound": sum(window) / len(window),
                        "seconds_per_step": seconds / (step + 1),
                        "evals_per_step": evals / (step + 1),
                        "layer_evals_per_step": layer_evals / (step + 1),
                    }
                )
                window.clear()
            if (step + 1) % cfg.eval_every == 0:
                log_valid(step + 1)
            bar.update()
    test = sets["test"][: cfg.iw_examples]
    if diverged is not None:
        # A network stopped part-way has no test numbers worth comparing.
        done = diverged["step"]
        return {
            "test_nll": None,
            "test_nll_1": None,
            "valid_nll": None,
            "iw_samples": cfg.eval_samples,
            "iw_examples": len(test),
            "valid_samples": cfg.valid_samples,
            "seconds_per_step": seconds / done if done else None,
            "evals_per_step": evals / done if done else None,
            "layer_evals_per_step": layer_evals / done if done else None,
            "steps": done,
            "latent": cfg.latent,
            "units": list(model.units),
            "diverged": diverged,
        }
    summary = {
        "test_nll": _nll(model, test, cfg.eval_samples, device, cfg.seed + 4),
        "test_nll_1": _nll(model, test, 1, device, cfg.seed + 3),
        "valid_nll": _nll(model, valid, cfg.valid_samples, device, cfg.seed + 2),
        "iw_samples": cfg.eval_samples,
        "iw_examples": len(test),
        "valid_samples": cfg.valid_samples,
        "seconds_per_step": seconds / cfg.steps,
        "evals_per_step": evals / cfg.steps,
        "layer_evals_per_step": layer_evals / cfg.steps,
        "steps": cfg.steps,
        "latent": cfg.latent,
        "units": list(model.units),
    }
    run.log({"phase": phase, "step": cfg.steps, **{f"final_{k}": v for k, v in summary.items()}})
    _save_images(run, phase, model, sets["test"], device, cfg, data.image_shape)
    return {**summary, "diverged": None}


def _save_images(run, phase, model, test, device, cfg, shape) -> None:
    """Test digits, their completions (predictive mean) and one sampled completion each.

    Saved as ``images-<phase>.pt`` with the keys of the VAE experiment's image
    files: ``test`` (true images), ``recon`` (top half + the predictive mean
    of the bottom half over 100 samples) and ``samples`` (top half + the
    bottom pixel probabilities of one sample of the hidden layers).
    """
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 5)
    with torch.no_grad():
        x = test[:16].to(device)
        top, _ = model.split(x)
        mean = model.predict_bottom(top, 100, generator=gen)
        _, h2 = model.sample_codes(top, 1, generator=gen)
        one = torch.sigmoid(model.bottom_logits(h2[0]))
    atomic_save(
        run.path / f"images-{slug(phase)}.pt",
        {
            "shape": tuple(shape),
            "test": x.cpu(),
            "recon": torch.cat([top, mean], -1).cpu(),
            "samples": torch.cat([top, one], -1).cpu(),
        },
    )
