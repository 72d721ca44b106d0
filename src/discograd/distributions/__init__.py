"""Relaxed distributions: ``torch.distributions`` subclasses with closed-form densities.

* :class:`Concrete` — Gumbel-Softmax samples on the simplex.
* :class:`ExpConcrete` — the same in log space, stable at low temperature.
* :class:`BinaryConcrete` — the relaxed Bernoulli.
* :class:`HardConcrete`, :class:`HardKumaraswamy`, :class:`GaussianRelaxedBernoulli` —
  rectified gates on [0, 1] with point masses at 0 and 1 (sparse gates, L0).
* :class:`InvertibleGaussian`, :class:`LogisticNormal` — Gaussian noise mapped onto
  the simplex (IGR's softmax++, stick-breaking) with a temperature.
* :class:`KSubset` — the exponential-family law on k-subsets (k-hot vectors), exact.
* :class:`RelaxedSubset` — Xie & Ermon's relaxed k-subset (relaxed Gumbel-top-k).
"""

from discograd.distributions.binary_concrete import BinaryConcrete
from discograd.distributions.concrete import Concrete, ExpConcrete
from discograd.distributions.gates import GaussianRelaxedBernoulli, HardConcrete, HardKumaraswamy
from discograd.distributions.gaussian_simplex import InvertibleGaussian, LogisticNormal
from discograd.distributions.subset import (
    KSubset,
    RelaxedSubset,
    subset_log_normalizer,
    subset_marginals,
)

__all__ = [
    "BinaryConcrete",
    "Concrete",
    "ExpConcrete",
    "GaussianRelaxedBernoulli",
    "HardConcrete",
    "HardKumaraswamy",
    "InvertibleGaussian",
    "KSubset",
    "LogisticNormal",
    "RelaxedSubset",
    "subset_log_normalizer",
    "subset_marginals",
]
