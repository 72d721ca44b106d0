"""Pieces every experiment shares: devices, seeds, config checks, data, divergence, CVs.

Bad settings raise :class:`~discograd.errors.ConfigError` (a ``ValueError``):
the command line reports those in one line and lets every other exception,
a bug, keep its traceback.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from discograd.errors import ConfigError
from discograd.estimators.base import Estimate, Estimator

__all__ = [
    "Diverged",
    "check_choice",
    "check_finite",
    "check_floats",
    "check_ints",
    "check_sizes",
    "cv_optimizer",
    "cv_step",
    "estimator_step",
    "load_data",
    "log_divergence",
    "resolve_device",
]


def resolve_device(device: str) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``; ``ConfigError`` if unavailable."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA device")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {device!r}; use cpu, cuda, cuda:N or auto")
    return dev


def cv_optimizer(
    estimator: Estimator, lr: float, f: Any = None, q: Any = None
) -> torch.optim.Optimizer | None:
    """Adam over the estimator's trainable control-variate parameters, if it has any.

    Lazily sized layers (RELAX's default network) get their shapes from one
    throw-away call on ``(f, q)`` first, made in eval mode (so it moves no
    schedule or baseline) with its own generator (so it moves no random
    stream) and with autograd on (RELAX skips its control variate without it).
    """
    if (
        f is not None
        and q is not None
        and any(
            isinstance(p, torch.nn.parameter.UninitializedParameter) for p in estimator.parameters()
        )
    ):
        was_training = estimator.training
        estimator.eval()
        device = next(iter(estimator.parameters())).device
        estimator(f, q, generator=torch.Generator(device=device).manual_seed(0))
        estimator.train(was_training)
    params = [p for p in estimator.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=lr) if params else None


def estimator_step(
    out: Estimate,
    params: Sequence[Tensor],
    cv_opt: torch.optim.Optimizer | None,
) -> tuple[list[Tensor], bool]:
    """Gradients of ``out.loss.sum()`` w.r.t. ``params``, and one control-variate step.

    Returns the gradients and whether they are all finite. The control
    variates (baselines, REBAR/RELAX) learn from ``out.cv_loss``; the graph is
    kept for that second backward pass.
    """
    if cv_opt is not None and out.cv_loss is not None and out.cv_loss.requires_grad:
        cv_step(out.cv_loss, cv_opt)
    grads = torch.autograd.grad(out.loss.sum(), list(params), allow_unused=True)
    grads_l = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]
    finite = all(bool(torch.isfinite(g).all()) for g in grads_l)
    return grads_l, finite


def cv_step(cv_loss: Tensor, cv_opt: torch.optim.Optimizer) -> None:
    """One step of ``cv_opt`` on ``cv_loss``, touching only that optimiser's parameters.

    ``cv_loss.backward()`` would also accumulate into the model's ``.grad``
    where the loss depends on them; ``autograd.grad`` keeps the two apart.
    """
    params = [p for group in cv_opt.param_groups for p in group["params"]]
    # retain_graph: the caller may still back-propagate the estimator's loss,
    # which can share part of this graph.
    grads = torch.autograd.grad(cv_loss, params, allow_unused=True, retain_graph=True)
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    cv_opt.step()


# -------------------------------------------------------------- divergence
class Diverged(Exception):
    """A training step produced a non-finite ``quantity``; raised by :func:`check_finite`."""

    def __init__(self, quantity: str) -> None:
        super().__init__(f"non-finite {quantity}")
        self.quantity = quantity


def check_finite(quantity: str, *tensors: Tensor | None) -> None:
    """Raise :class:`Diverged` naming ``quantity`` unless every tensor (``None`` skipped) is finite.

    Called before the step uses the values: a non-finite loss or gradient
    must not reach the model or the control variates.
    """
    for t in tensors:
        if t is not None and not bool(torch.isfinite(t).all()):
            raise Diverged(quantity)


def model_step(
    loss: Tensor,
    cv_loss: Tensor | None,
    opt: torch.optim.Optimizer,
    cv_opt: torch.optim.Optimizer | None,
    params: Iterable[Tensor],
) -> None:
    """One guarded training step of a model: control variates, backward, optimiser.

    Raises :class:`Diverged` (naming the loss, the control-variate loss or the
    gradient) before any non-finite value reaches the model or the control
    variates; ``opt.step()`` runs only when everything is finite.
    """
    check_finite("loss", loss)
    check_finite("control-variate loss", cv_loss)
    if cv_opt is not None and cv_loss is not None and cv_loss.requires_grad:
        cv_step(cv_loss, cv_opt)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    check_finite("gradient", *(p.grad for p in params))
    opt.step()


def log_divergence(
    run: Any, phase: str, estimator: str, step: int, quantity: str
) -> dict[str, Any]:
    """Log that ``estimator`` diverged in ``phase``; returns the entry for its results.

    ``step`` is the number of steps completed before the one that failed.
    The caller stops training and finishes the phase with this entry as its
    ``diverged`` result: a re-run then neither retries the estimator nor
    fails on it, and the next estimator runs.
    """
    info = {"estimator": estimator, "step": step, "quantity": quantity}
    run.log({"phase": phase, "diverged": True, **info})
    return info


def mean_or_nan(values: Sequence[float]) -> float:
    vals = [v for v in values if math.isfinite(v)]
    return sum(vals) / len(vals) if vals else math.nan


def summary_line(name: str, fields: dict[str, Any]) -> str:
    parts = []
    for k, v in fields.items():
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return f"{name}: " + " ".join(parts)


# ------------------------------------------------------------ config checks
BINARIZATIONS = ("threshold", "fixed", "dynamic")


def check_ints(cfg: Any, names: Sequence[str], minimum: int = 1) -> None:
    """Each named field is an int (not a bool) >= ``minimum``; ``ConfigError`` naming it."""
    for name in names:
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise ConfigError(f"{name} must be {kind}, got {name}={v!r}")


def check_floats(cfg: Any, names: Sequence[str], *, allow_zero: bool = False) -> None:
    """Each named field is a finite number > 0 (>= 0 with ``allow_zero``)."""
    for name in names:
        v = getattr(cfg, name)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if not ok or v < 0 or (v == 0 and not allow_zero):
            kind = "a finite number >= 0" if allow_zero else "positive"
            raise ConfigError(f"{name} must be {kind}, got {name}={v!r}")


def check_choice(cfg: Any, name: str, choices: Sequence[str]) -> None:
    v = getattr(cfg, name)
    if v not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {name}={v!r}")


def check_sizes(name: str, sizes: Sequence[int]) -> None:
    if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in sizes):
        raise ConfigError(f"{name} must hold positive ints, got {name}={tuple(sizes)!r}")


def check_estimators(
    specs: Sequence[str],
    kind: str | None = None,
    field: str = "estimators",
    support: int | None = None,
) -> list[Estimator]:
    """Build each spec (``ConfigError`` for unknown ones); none repeated; all support ``kind``.

    ``support``: configurations per data point, for estimators that enumerate
    them (``Exact``): more than their ``max_support`` is refused here rather
    than at the first training step.
    """
    from discograd.estimators.registry import canonical, make

    if not specs:
        raise ConfigError(f"{field} must name at least one estimator")
    if len({canonical(s) for s in specs}) != len(specs):
        raise ConfigError(f"{field} must not repeat an estimator, got {tuple(specs)}")
    built = []
    for spec in specs:
        est = make(spec)
        if kind is not None and kind not in est.supports:
            raise ConfigError(f"{field}: {spec} does not support {kind} variables")
        limit = getattr(est, "max_support", None)
        if support is not None and limit is not None and support > limit:
            raise ConfigError(
                f"{field}: {spec} would enumerate {support} configurations per data point "
                f"(at most {limit}); use a sampling estimator or a smaller problem"
            )
        built.append(est)
    return built


# ------------------------------------------------------------------- data
def load_data(cfg: Any, *, quiet: bool = False) -> Any:
    """The dataset of ``cfg`` (its ``dataset``, ``dataset_path`` and ``data_dir`` fields).

    :func:`discograd.data.load` reports a dataset it cannot find, read or
    download as ``OSError``, ``ValueError`` or ``ImportError`` (the offline
    digits need scikit-learn): here those are a ``ConfigError``.
    """
    from discograd.data import load

    try:
        return load(cfg.dataset, path=cfg.dataset_path, data_dir=cfg.data_dir, quiet=quiet)
    except (OSError, ValueError, ImportError) as err:
        raise ConfigError(str(err)) from err


def binarized_splits(data: Any, binarization: str, seed: int) -> dict[str, Tensor]:
    """The train / valid / test images of an ``ImageData``, binarised.

    ``threshold``: x > 1/2. ``fixed``: one Bernoulli draw (seeded). ``dynamic``:
    the training images stay grey (each batch is drawn afresh by
    :func:`training_batch`); the evaluation sets use one fixed draw, so every
    evaluation sees the same binary images.
    """
    from discograd.data import binarize

    out = {}
    for split in ("train", "valid", "test"):
        x = getattr(data, split)
        if binarization == "threshold":
            x = binarize(x, "threshold")
        elif binarization == "fixed" or split != "train":
            x = binarize(x, "fixed", generator=torch.Generator().manual_seed(seed + 17))
        out[split] = x
    return out


def batch_indices(n: int, size: int, step: int, seed: int) -> Tensor:
    """Indices of training batch ``step`` out of ``n``: a function of (seed, step) alone.

    Each epoch is a fresh permutation seeded by (seed, epoch), so a resumed run
    sees exactly the batches an uninterrupted one would. ``size >= n``: all.
    """
    if size >= n:
        return torch.arange(n)
    epoch, k = divmod(step, n // size)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return perm[k * size : (k + 1) * size]


def training_batch(x: Tensor, binarization: str, seed: int, device: Any) -> Tensor:
    """``x`` on ``device``, re-binarised with a draw seeded by ``seed`` under ``dynamic``."""
    if binarization == "dynamic":
        from discograd.data import binarize

        x = binarize(x, "dynamic", generator=torch.Generator().manual_seed(seed))
    return x.to(device)


def slug(text: str) -> str:
    """``text`` with every character but letters, digits, ``-``, ``_``, ``.`` replaced by ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
