"""Relaxed distributions: ``torch.distributions`` subclasses with closed-form densities.

* :class:`Concrete` — Gumbel-Softmax samples on the simplex.
* :class:`ExpConcrete` — the same in log space, stable at low temperature.
* :class:`BinaryConcrete` — the relaxed Bernoulli.
"""

from discograd.distributions.binary_concrete import BinaryConcrete
from discograd.distributions.concrete import Concrete, ExpConcrete

__all__ = ["BinaryConcrete", "Concrete", "ExpConcrete"]
