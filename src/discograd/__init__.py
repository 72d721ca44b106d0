"""discograd: gradients through discrete random variables.

Sample-level ops (:mod:`discograd.functional`, re-exported here), relaxed
distributions (:mod:`discograd.distributions`), gradient estimators behind one
contract (:mod:`discograd.estimators`) and exact-gradient diagnostics
(:mod:`discograd.diagnostics`), with REINFORCE baselines
(:mod:`discograd.baselines`) and temperature schedules (:mod:`discograd.schedules`).
"""

from discograd import (
    baselines,
    diagnostics,
    distributions,
    errors,
    estimators,
    functional,
    schedules,
)
from discograd.estimators import Estimate, Estimator, Exact, ExactMultiSample
from discograd.functional import (
    conditional_gumbel,
    conditional_logistic,
    gumbel_max,
    gumbel_softmax,
    gumbel_top_k,
    sample_gumbel,
    straight_through,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "Estimate",
    "Estimator",
    "Exact",
    "ExactMultiSample",
    "__version__",
    "baselines",
    "conditional_gumbel",
    "conditional_logistic",
    "diagnostics",
    "distributions",
    "errors",
    "estimators",
    "functional",
    "gumbel_max",
    "gumbel_softmax",
    "gumbel_top_k",
    "sample_gumbel",
    "schedules",
    "straight_through",
]
