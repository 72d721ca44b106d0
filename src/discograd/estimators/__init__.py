"""Gradient estimators of :math:`\\nabla_\\theta \\mathbb E_{z\\sim q_\\theta}[f(z)]`, one contract.

See :mod:`discograd.estimators.base` for the calling convention and
:mod:`discograd.estimators.registry` for estimators by name and their metadata
(``make("rloo:n_samples=4")``, ``names(kind="bernoulli", unbiased=True)``,
``info("arsm")``).
"""

# Importing a family module registers its estimators; the registry lists names
# in this order (the order of docs/estimators.md's table), so it is kept by hand.
# isort: off
from discograd.estimators.base import Estimate, Estimator, Latent
from discograd.estimators.exact import Exact, ExactMultiSample
from discograd.estimators.score import REINFORCE, RLOO, VarGrad
from discograd.estimators.relaxed import (
    GumbelRao,
    GumbelSoftmax,
    ReinMax,
    STGumbelSoftmax,
    StraightThrough,
)
from discograd.estimators.arsm import AR, ARS, ARSM, ARSMPlus, ARSPlus
from discograd.estimators.arm import ARM, DisARM
from discograd.estimators.control import (
    NVIL,
    REBAR,
    RELAX,
    BaselineNet,
    MLPControlVariate,
    MuProp,
)
from discograd.estimators.coupled import ARMS, CARMS, CategoricalDisARM
from discograd.estimators.indecater import IndeCateR
from discograd.estimators.stein import RODEO, DoubleCV, SteinControlNet
from discograd.estimators.multisample import VIMCO, LocalARMS, LocalDisARM
from discograd.estimators.without_replacement import REINFORCEWOR, SumAndSample, UnorderedSet
from discograd.estimators.st_variants import DecoupledSTGumbelSoftmax, GappedStraightThrough
from discograd.estimators.subsets import IMLE, SIMPLE

# isort: on
from discograd.estimators import baselines, registry
from discograd.estimators._surrogate import zero_valued
from discograd.estimators.registry import EstimatorInfo, info, infos, make, names, register

__all__ = [
    "AR",
    "ARM",
    "ARMS",
    "ARS",
    "ARSM",
    "CARMS",
    "IMLE",
    "NVIL",
    "REBAR",
    "REINFORCE",
    "REINFORCEWOR",
    "RELAX",
    "RLOO",
    "RODEO",
    "SIMPLE",
    "VIMCO",
    "ARSMPlus",
    "ARSPlus",
    "BaselineNet",
    "CategoricalDisARM",
    "DecoupledSTGumbelSoftmax",
    "DisARM",
    "DoubleCV",
    "Estimate",
    "Estimator",
    "EstimatorInfo",
    "Exact",
    "ExactMultiSample",
    "GappedStraightThrough",
    "GumbelRao",
    "GumbelSoftmax",
    "IndeCateR",
    "Latent",
    "LocalARMS",
    "LocalDisARM",
    "MLPControlVariate",
    "MuProp",
    "ReinMax",
    "STGumbelSoftmax",
    "SteinControlNet",
    "StraightThrough",
    "SumAndSample",
    "UnorderedSet",
    "VarGrad",
    "baselines",
    "info",
    "infos",
    "make",
    "names",
    "register",
    "registry",
    "zero_valued",
]
