"""Gradient estimators of :math:`\\nabla_\\theta \\mathbb E_{z\\sim q_\\theta}[f(z)]`, one contract.

See :mod:`discograd.estimators.base` for the calling convention.
"""

from discograd.estimators.arm import ARM, DisARM
from discograd.estimators.arsm import AR, ARS, ARSM, ARSMPlus, ARSPlus
from discograd.estimators.base import Estimate, Estimator, Latent, zero_valued
from discograd.estimators.control import REBAR, RELAX, MLPControlVariate
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
    "AR",
    "ARM",
    "ARS",
    "ARSM",
    "REBAR",
    "REINFORCE",
    "RELAX",
    "RLOO",
    "ARSMPlus",
    "ARSPlus",
    "DisARM",
    "Estimate",
    "Estimator",
    "Exact",
    "GumbelRao",
    "GumbelSoftmax",
    "Latent",
    "MLPControlVariate",
    "ReinMax",
    "STGumbelSoftmax",
    "StraightThrough",
    "VarGrad",
    "zero_valued",
]
