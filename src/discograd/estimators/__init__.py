"""Gradient estimators of :math:`\\nabla_\\theta \\mathbb E_{z\\sim q_\\theta}[f(z)]`, one contract.

See :mod:`discograd.estimators.base` for the calling convention.
"""

from discograd.estimators.base import Estimate, Estimator, Latent, zero_valued
from discograd.estimators.exact import Exact
from discograd.estimators.relaxed import (
    GumbelRao,
    GumbelSoftmax,
    ReinMax,
    STGumbelSoftmax,
    StraightThrough,
)
from discograd.estimators.score import REINFORCE, RLOO, VarGrad

__all__ = [
    "REINFORCE",
    "RLOO",
    "Estimate",
    "Estimator",
    "Exact",
    "GumbelRao",
    "GumbelSoftmax",
    "Latent",
    "ReinMax",
    "STGumbelSoftmax",
    "StraightThrough",
    "VarGrad",
    "zero_valued",
]
