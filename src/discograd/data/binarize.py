"""Binarisation of [0, 1] intensities, as the literature does it three ways.

* ``threshold``: :math:`x > 1/2` (the ARSM code's MNIST).
* ``fixed``: one Bernoulli(x) draw with a fixed seed, kept for all epochs
  (in the spirit of the "static" binarised MNIST of Larochelle & Murray).
* ``dynamic``: a fresh Bernoulli(x) draw every time (every epoch), a
  regulariser used by many VAE papers.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["BINARIZATIONS", "binarize"]

Binarization = Literal["threshold", "fixed", "dynamic"]
BINARIZATIONS: tuple[str, ...] = ("threshold", "fixed", "dynamic")


def binarize(
    x: Tensor, mode: Binarization = "threshold", *, generator: torch.Generator | None = None
) -> Tensor:
    """0./1. floats from intensities in [0, 1].

    ``fixed`` with no generator uses seed 0, so it is the same draw every call;
    ``dynamic`` draws from ``generator`` (or the global stream).
    """
    if mode == "threshold":
        return (x > 0.5).to(x.dtype)
    if mode == "fixed":
        gen = generator or torch.Generator(device=x.device).manual_seed(0)
        return (torch.rand(x.shape, generator=gen, device=x.device) < x).to(x.dtype)
    if mode == "dynamic":
        return (torch.rand(x.shape, generator=generator, device=x.device) < x).to(x.dtype)
    raise ValueError(f"binarization must be one of {BINARIZATIONS}, got {mode!r}")
