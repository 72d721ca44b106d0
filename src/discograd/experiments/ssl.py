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
thousands of epochs); the defaults are sized for the offline 8×8 ``digits``
(1,197 training images: 100 labelled, 1,097 unlabelled).

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

Resuming works as in :mod:`discograd.experiments.vae`: checkpoints every
``checkpoint_every`` steps, batches a function of (seed, step). So does
divergence: a non-finite loss, control-variate loss or gradient ends that
method's phase with a ``diverged`` entry and no test numbers; the next
method runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from discograd.data.datasets import ImageData
from discograd.errors import ConfigError
from discograd.estimators.base import Estimator
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
    training_batch,
)
from discograd.experiments.runner import RunDir, progress
from discograd.experiments.vae import Interrupted
from discograd.models import M2
from discograd.models.nets import ACTIVATIONS
from discograd.schedules import ExponentialDecay

__all__ = ["SSL_METHODS", "SSLConfig", "build_model", "run_ssl", "select_labelled"]

SSL_METHODS: tuple[str, ...] = (
    "marginal",
    "gumbel_softmax:tau=1.0",
    "st_gumbel_softmax:tau=1.0",
)


@dataclass
class SSLConfig:
    """A semi-supervised M2 run: data, labels, model, methods, optimisation, evaluation."""

    dataset: str = "digits"
    dataset_path: str | None = None
    data_dir: str | None = None
    binarization: str = "threshold"
    n_classes: int = 10
    n_labels: int = 100
    z_dim: int = 16
    hidden: tuple[int, ...] = (256,)
    activation: str = "softplus"
    methods: tuple[str, ...] = SSL_METHODS
    entropy: str = "analytic"
    alpha: float = 0.1
    anneal_rate: float = 0.0
    anneal_every: int = 1000
    tau_floor: float = 0.5
    lr: float = 1e-3
    cv_lr: float = 1e-3
    batch_size: int = 100
    labelled_batch: int = 100
    steps: int = 2000
    log_every: int = 50
    eval_every: int = 500
    checkpoint_every: int = 500
    seed: int = 0
    device: str = "cpu"

    def validate(self) -> None:
        check_ints(self, ("n_labels", "z_dim", "batch_size", "labelled_batch", "steps"))
        check_ints(self, ("log_every", "eval_every", "checkpoint_every", "anneal_every"))
        check_ints(self, ("seed",), minimum=0)
        check_ints(self, ("n_classes",), minimum=2)
        if self.n_labels % self.n_classes:
            raise ConfigError(
                f"n_labels={self.n_labels} must be a multiple of n_classes={self.n_classes} "
                "(the labelled set is balanced over the classes)"
            )
        check_sizes("hidden", self.hidden)
        check_choice(self, "activation", tuple(ACTIVATIONS))
        check_choice(self, "binarization", BINARIZATIONS)
        check_choice(self, "entropy", ("analytic", "sampled"))
        check_floats(self, ("lr", "cv_lr", "tau_floor"))
        check_floats(self, ("alpha", "anneal_rate"), allow_zero=True)
        if not self.methods:
            raise ConfigError("methods must name at least one method")
        if len({canonical(m) for m in self.methods}) != len(self.methods):
            raise ConfigError(f"methods must not repeat a method, got {self.methods}")
        specs = [m for m in self.methods if canonical(m) != "marginal"]
        if specs:
            check_estimators(specs, "categorical", field="methods", support=self.n_classes)


def build_model(cfg: SSLConfig, x_dim: int) -> M2:
    return M2(x_dim, cfg.n_classes, cfg.z_dim, cfg.hidden, cfg.activation)


def select_labelled(labels: Tensor, n_labels: int, n_classes: int, seed: int) -> Tensor:
    """Indices of ``n_labels`` examples, ``n_labels / n_classes`` of each class, chosen by ``seed``.

    A seeded permutation of all indices, stably sorted by label; the first
    ``n_labels / n_classes`` of each class are taken (sorted index order).
    ``ConfigError`` if a class has too few examples.
    """
    per = n_labels // n_classes
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed * 7919 + 13))
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


def _labels(data: ImageData, cfg: SSLConfig) -> tuple[dict[str, Tensor], str]:
    """The labels to use: the dataset's, or random ones when ``n_classes`` differs from it."""
    real = {s: getattr(data, f"{s}_labels").long() for s in ("train", "valid", "test")}
    n_real = int(max(int(v.max()) for v in real.values() if len(v)) + 1)
    if n_real == cfg.n_classes:
        return real, "real"
    gen = torch.Generator().manual_seed(cfg.seed * 31 + 7)
    return (
        {s: torch.randint(cfg.n_classes, (len(v),), generator=gen) for s, v in real.items()},
        "random",
    )


def _batch(x: Tensor, idx: Tensor, cfg: SSLConfig, step: int, salt: int, device) -> Tensor:
    return training_batch(
        x[idx], cfg.binarization, (cfg.seed * 1_000_003 + step) * 2 + salt, device
    )


def _make_method(cfg: SSLConfig, spec: str) -> Estimator | None:
    if canonical(spec) == "marginal":
        return None
    est = make(spec)
    if cfg.anneal_rate > 0 and hasattr(est, "schedule"):
        tau0 = est.schedule(0)
        est.schedule = ExponentialDecay(
            tau0=tau0, rate=cfg.anneal_rate, floor=min(cfg.tau_floor, tau0), every=cfg.anneal_every
        )
    return est


@torch.no_grad()
def _evaluate(model: M2, x: Tensor, y: Tensor, device, seed: int, chunk: int = 500):
    """(accuracy, mean marginal −ELBO) over ``x`` in chunks; the −ELBO uses its own stream."""
    gen = torch.Generator(device=device).manual_seed(seed)
    correct, bound = 0, 0.0
    for i in range(0, len(x), chunk):
        xb = x[i : i + chunk].to(device)
        correct += int((model.predict(xb).cpu() == y[i : i + chunk]).sum())
        bound += float(model.marginal_bound(xb, generator=gen).sum())
    return correct / len(x), bound / len(x)


def run_ssl(
    cfg: SSLConfig,
    run: RunDir,
    *,
    quiet: bool = False,
    data: ImageData | None = None,
    _interrupt_at: int | None = None,
) -> dict[str, Any]:
    """Train one M2 per method (or resume); returns ``{canonical method: summary}``.

    Each summary holds ``test_accuracy``, ``test_neg_elbo``, ``valid_accuracy``,
    ``valid_neg_elbo``, ``seconds_per_step``, ``evals_per_step`` (−ELBO
    evaluations per unlabelled example), ``n_classes``, ``labels``
    (``"real"`` / ``"random"``), ``n_labels``, ``n_unlabelled`` and, when
    ``"marginal"`` is among the methods, ``speedup_vs_marginal``.
    """
    cfg.validate()
    device = resolve_device(cfg.device)
    if data is None:
        data = load_data(cfg, quiet=quiet)
    labels, kind = _labels(data, cfg)
    lab_idx = select_labelled(labels["train"], cfg.n_labels, cfg.n_classes, cfg.seed)
    mask = torch.ones(len(data.train), dtype=torch.bool)
    mask[lab_idx] = False
    unl_idx = mask.nonzero().squeeze(-1)
    if len(unl_idx) < cfg.batch_size:
        raise ConfigError(
            f"batch_size={cfg.batch_size} exceeds the {len(unl_idx)} unlabelled training images"
        )
    sets = binarized_splits(data, cfg.binarization, cfg.seed)
    split = {
        "x_l": sets["train"][lab_idx],
        "y_l": labels["train"][lab_idx],
        "x_u": sets["train"][unl_idx],
        "valid": (sets["valid"], labels["valid"]),
        "test": (sets["test"], labels["test"]),
    }
    results: dict[str, Any] = {}
    for spec in cfg.methods:
        phase = f"ssl/{canonical(spec)}"
        if not run.is_done(phase):
            summary = _train(cfg, run, phase, spec, split, data.dim, device, quiet, _interrupt_at)
            summary.update(labels=kind, n_classes=cfg.n_classes)
            run.finish(phase, summary)
        results[canonical(spec)] = dict(run.result(phase))
    base = results.get("marginal", {}).get("seconds_per_step")
    if base is not None:
        for summary in results.values():
            # a method that diverged before its first step has no time per step
            own = summary["seconds_per_step"]
            summary["speedup_vs_marginal"] = None if own is None else base / max(own, 1e-12)
    return results


def _train(cfg, run, phase, spec, split, x_dim, device, quiet, interrupt_at) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)  # the same initial weights for every method
    model = build_model(cfg, x_dim).to(device)
    est = _make_method(cfg, spec)
    method: Estimator | str = "marginal" if est is None else est.to(device)
    holder = nn.ModuleDict({} if est is None else {"estimator": est})
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    x_l, y_l, x_u = split["x_l"], split["y_l"].to(device), split["x_u"]
    sizes = (len(x_l), len(x_u))
    cv_opt = None
    if est is not None:
        if any(isinstance(p, nn.parameter.UninitializedParameter) for p in est.parameters()):
            # RELAX sizes its network on a call with autograd on: one throw-away
            # call in eval mode with its own generator (no state moves).
            est.eval()
            model.unlabelled(
                x_u[:2].to(device),
                est,
                entropy=cfg.entropy,  # type: ignore[arg-type]
                generator=torch.Generator(device=device).manual_seed(0),
            )
            est.train()
        params = [p for p in est.parameters() if p.requires_grad]
        cv_opt = torch.optim.Adam(params, lr=cfg.cv_lr) if params else None
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    start, seconds, evals = 0, 0.0, 0.0
    # The checkpoint of iteration c is saved before that iteration logs anything.
    ckpt = run.resume(phase, device)
    if ckpt is not None:
        with run.restoring(phase):
            start, seconds, evals = ckpt["step"], ckpt["seconds"], ckpt["evals"]
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["opt"])
            holder.load_state_dict(ckpt["estimator"])
            if cv_opt is not None and ckpt["cv_opt"] is not None:
                cv_opt.load_state_dict(ckpt["cv_opt"])
            gen.set_state(ckpt["gen"])

    def log_valid(step: int) -> None:
        acc, bound = _evaluate(model, *split["valid"], device, cfg.seed + 2)
        run.log({"phase": phase, "step": step, "valid_accuracy": acc, "valid_neg_elbo": bound})

    if start == 0:
        log_valid(0)
    window: dict[str, list[float]] = {"loss": [], "lab": [], "unl": [], "cls": []}
    diverged: dict[str, Any] | None = None
    with progress(cfg.steps, f"ssl {canonical(spec)}", quiet=quiet, initial=start) as bar:
        for step in range(start, cfg.steps):
            if step % cfg.checkpoint_every == 0 and step > start:
                run.save_checkpoint(
                    phase,
                    {
                        "step": step,
                        "seconds": seconds,
                        "evals": evals,
                        "model": model.state_dict(),
                        "opt": opt.state_dict(),
                        "estimator": holder.state_dict(),
                        "cv_opt": cv_opt.state_dict() if cv_opt is not None else None,
                        "gen": gen.get_state(),
                    },
                    device,
                )
                if interrupt_at is not None and step >= interrupt_at:
                    raise Interrupted(f"simulated interruption at step {step}")
            il = batch_indices(len(x_l), cfg.labelled_batch, step, cfg.seed * 2 + 1)
            iu = batch_indices(len(x_u), cfg.batch_size, step, cfg.seed * 2)
            xl = _batch(x_l, il, cfg, step, 1, device)
            xu = _batch(x_u, iu, cfg, step, 0, device)
            tau = float(est.tau) if est is not None and hasattr(est, "schedule") else None
            t0 = time.perf_counter()
            obj = model.objective(
                xl,
                y_l[il.to(device)],
                xu,
                method,  # type: ignore[arg-type]
                alpha=cfg.alpha,
                dataset_sizes=sizes,
                entropy=cfg.entropy,  # type: ignore[arg-type]
                generator=gen,
            )
            try:
                model_step(obj.loss, obj.cv_loss, opt, cv_opt, model.parameters())
            except Diverged as err:
                diverged = log_divergence(run, phase, canonical(spec), step, err.quantity)
                break
            seconds += time.perf_counter() - t0
            evals += obj.n_evals
            window["loss"].append(float(obj.loss.detach()))
            window["lab"].append(float(obj.labelled_neg_elbo.mean()))
            window["unl"].append(float(obj.unlabelled_bound.mean()))
            window["cls"].append(float(obj.class_nll.mean()))
            if (step + 1) % cfg.log_every == 0:
                mean = {k: sum(v) / len(v) for k, v in window.items()}
                run.log(
                    {
                        "phase": phase,
                        "step": step + 1,
                        "train_objective": mean["loss"],
                        "train_labelled_neg_elbo": mean["lab"],
                        "train_unlabelled_bound": mean["unl"],
                        "train_class_nll": mean["cls"],
                        "seconds_per_step": seconds / (step + 1),
                        "evals_per_step": evals / (step + 1),
                        "tau": tau,
                    }
                )
                for v in window.values():
                    v.clear()
            if (step + 1) % cfg.eval_every == 0:
                log_valid(step + 1)
            bar.update()
    if diverged is not None:
        # A model stopped part-way has no test numbers worth comparing.
        done = diverged["step"]
        return {
            "test_accuracy": None,
            "test_neg_elbo": None,
            "valid_accuracy": None,
            "valid_neg_elbo": None,
            "seconds_per_step": seconds / done if done else None,
            "evals_per_step": evals / done if done else None,
            "steps": done,
            "n_labels": len(x_l),
            "n_unlabelled": len(x_u),
            "diverged": diverged,
        }
    test_acc, test_bound = _evaluate(model, *split["test"], device, cfg.seed + 3)
    valid_acc, valid_bound = _evaluate(model, *split["valid"], device, cfg.seed + 2)
    summary = {
        "test_accuracy": test_acc,
        "test_neg_elbo": test_bound,
        "valid_accuracy": valid_acc,
        "valid_neg_elbo": valid_bound,
        "seconds_per_step": seconds / cfg.steps,
        "evals_per_step": evals / cfg.steps,
        "steps": cfg.steps,
        "n_labels": len(x_l),
        "n_unlabelled": len(x_u),
    }
    run.log({"phase": phase, "step": cfg.steps, **{f"final_{k}": v for k, v in summary.items()}})
    return {**summary, "diverged": None}
