"""Models trained with discograd's estimators.

* :class:`CategoricalVAE`, :class:`BernoulliVAE` — discrete VAEs (Jang et al.
  2017; ARSM; ARM; REBAR).
"""

from discograd.models.nets import mlp
from discograd.models.vae import BernoulliVAE, CategoricalVAE, DiscreteVAE, VAEObjective

__all__ = ["BernoulliVAE", "CategoricalVAE", "DiscreteVAE", "VAEObjective", "mlp"]
