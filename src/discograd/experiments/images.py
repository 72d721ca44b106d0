"""Image data for the tasks that train on it (vae, sbn, ssl): loading, binarising, batches.

Batches and dynamic binarisation are functions of (seed, step) through the
phase's named streams, so a resumed phase sees exactly the batches an
uninterrupted one would.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

from discograd.errors import ConfigError
from discograd.experiments.trainer import Context, Task, TaskState

__all__ = [
    "ImageState",
    "ImageTask",
    "batch_indices",
    "binarized_splits",
    "check_batch",
    "dataset_value",
    "known_datasets",
    "load_data",
    "training_batch",
]


def known_datasets() -> tuple[str, ...]:
    from discograd.data import DATASET_NAMES

    return tuple(DATASET_NAMES)


def dataset_value(value: str) -> str:
    """A ``dataset`` setting as stored: a known name, or a folder made absolute.

    A folder is resolved when the config is built, so that a run resumed from
    another working directory finds the same data.
    """
    if value in known_datasets():
        return value
    folder = Path(value).expanduser()
    if not folder.is_dir():
        raise ConfigError(
            f"dataset {value!r} is neither a known dataset ({', '.join(known_datasets())}) "
            "nor an existing folder"
        )
    return str(folder.resolve())


def load_data(cfg: Any, *, quiet: bool = False) -> Any:
    """The dataset of ``cfg`` (its ``dataset`` and ``data_dir`` fields).

    :func:`discograd.data.load` reports a dataset it cannot find, read or
    download as ``OSError``, ``ValueError`` or ``ImportError`` (the offline
    digits need scikit-learn): here those are a ``ConfigError``.
    """
    from discograd.data import load

    name = dataset_value(cfg.dataset)
    path = None if name in known_datasets() else name
    try:
        return load(
            name,
            path=path,
            data_dir=cfg.data_dir,
            quiet=quiet,
            validation=getattr(cfg, "validation", 5000),
        )
    except (OSError, ValueError, ImportError) as err:
        raise ConfigError(str(err)) from err


def binarized_splits(data: Any, binarization: str, ctx: Context) -> dict[str, Tensor]:
    """The train / valid / test images of an ``ImageData``, binarised.

    ``threshold``: x > 1/2. ``fixed``: one Bernoulli draw (stream ``binarize``
    of the seed). ``dynamic``: the training images stay grey (each batch is
    drawn afresh by :func:`training_batch`); the evaluation sets use one fixed
    draw, so every evaluation sees the same binary images.
    """
    from discograd.data import binarize

    out = {}
    for split in ("train", "valid", "test"):
        x = getattr(data, split)
        if binarization == "threshold":
            x = binarize(x, "threshold")
        elif binarization == "fixed" or split != "train":
            x = binarize(x, "fixed", generator=ctx.generator(f"binarize/{split}", "cpu"))
        out[split] = x
    return out


def batch_indices(n: int, size: int, step: int, ctx: Context, name: str = "train") -> Tensor:
    """Indices of batch ``step`` out of ``n``: a function of (seed, name, step) alone.

    Each epoch is a fresh permutation from stream ``<name>/epoch<k>``, so a
    resumed run sees exactly the batches an uninterrupted one would.
    ``size >= n``: all.
    """
    if size >= n:
        return torch.arange(n)
    epoch, k = divmod(step, n // size)
    perm = _permutation(ctx.seed_of(f"{name}/epoch{epoch}"), n)
    return perm[k * size : (k + 1) * size]


@functools.lru_cache(maxsize=8)
def _permutation(seed: int, n: int) -> Tensor:
    # One permutation per epoch, not per step: a randperm of the whole training
    # set every step cost a few percent of a small model's step.
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def training_batch(
    x: Tensor, size: int, step: int, binarization: str, ctx: Context, name: str = "train"
) -> tuple[Tensor, Tensor]:
    """Batch ``step`` of ``x`` on the device and its indices; re-binarised under ``dynamic``.

    The dynamic draw comes from stream ``<name>/binarize/<step>``: also a
    function of (seed, step).
    """
    idx = batch_indices(len(x), size, step, ctx, name)
    # index_select: several times faster than x[idx] on CPU, but it wants the
    # indices on x's device (x[idx] moved them itself).
    batch = x.index_select(0, idx if idx.device == x.device else idx.to(x.device))
    if binarization == "dynamic":
        from discograd.data import binarize

        batch = binarize(
            batch, "dynamic", generator=ctx.generator(f"{name}/binarize/{step}", "cpu")
        )
    if batch.device != ctx.device:  # a no-op .to() still costs a dispatch per step
        batch = batch.to(ctx.device)
    return batch, idx


def check_batch(size: int, n: int, what: str = "training images") -> None:
    """``ConfigError`` when a batch of ``size`` is more than the ``n`` examples there are."""
    if n < size:
        raise ConfigError(f"batch_size={size} exceeds the {n} {what}")


@dataclass
class ImageState(TaskState):
    """A model trained on images: the binarised splits and the image shape."""

    sets: dict[str, Tensor]
    image_shape: tuple[int, int]


C = TypeVar("C")
S = TypeVar("S", bound=TaskState)


class ImageTask(Task[C, S]):
    """A task on image data: the config's dataset, loaded once per run."""

    def load(self, config: C, *, quiet: bool = False) -> Any:
        return load_data(config, quiet=quiet)
