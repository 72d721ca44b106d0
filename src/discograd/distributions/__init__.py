"""Relaxed distributions: ``torch.distributions`` subclasses with closed-form densities.

* :class:`Concrete` — Gumbel-Softmax samples on the simplex.
* :class:`ExpConcrete` — the same in log space, stable at low temperature.
* :class:`BinaryConcrete` — the relaxed Bernoulli.
* :class:`KSubset` — the exponential-family law on k-subsets (k-hot vectors), exact.
* :class:`RelaxedSubset` — Xie & Ermon's relaxed k-subset (relaxed Gumbel-top-k).
"""

from discograd.distributions.binary_concrete import BinaryConcrete
from discograd.distributions.concrete import Concrete, ExpConcrete
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
    "KSubset",
    "RelaxedSubset",
    "subset_log_normalizer",
    "subset_marginals",
]
