"""Small building blocks shared by the models."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

from torch import nn

__all__ = ["ACTIVATIONS", "mlp"]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    # The slope of the DisARM / RODEO code's nonlinear Bernoulli VAEs.
    "leaky_relu_0.3": lambda: nn.LeakyReLU(0.3),
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "softplus": nn.Softplus,  # M2's nonlinearity (Kingma et al. 2014)
}


def mlp(sizes: Sequence[int], activation: str = "leaky_relu") -> nn.Sequential:
    """Linear layers of the given sizes with ``activation`` between them (none after the last)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
        raise ValueError(f"an MLP needs at least two positive sizes, got {list(sizes)}")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        if i:
            layers.append(ACTIVATIONS[activation]())
        layers.append(nn.Linear(int(a), int(b)))
    return nn.Sequential(*layers)
