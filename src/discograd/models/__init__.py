"""Models trained with discograd's estimators.

* :class:`CategoricalVAE`, :class:`BernoulliVAE` — discrete VAEs (Jang et al.
  2017; ARSM; ARM; REBAR).
* :class:`StochasticBinaryNetwork` — two stochastic layers (Bernoulli or
  categorical) for structured output prediction, trained with nested
  estimators (Raiko et al. 2015; MuProp; Jang et al. 2017).
* :class:`M2` — the semi-supervised M2 model (Kingma et al. 2014), labels
  marginalised exactly or handled by any estimator (Jang et al. 2017).
"""

from discograd.models.m2 import M2, M2Objective, UnlabelledTerm
from discograd.models.nets import mlp
from discograd.models.sbn import SBNObjective, StochasticBinaryNetwork
from discograd.models.vae import BernoulliVAE, CategoricalVAE, DiscreteVAE, VAEObjective

__all__ = [
    "M2",
    "BernoulliVAE",
    "CategoricalVAE",
    "DiscreteVAE",
    "M2Objective",
    "SBNObjective",
    "StochasticBinaryNetwork",
    "UnlabelledTerm",
    "VAEObjective",
    "mlp",
]
