"""Baselines for REINFORCE: an alias of :mod:`discograd.estimators.baselines`.

The classes live beside the estimator that uses them; this module keeps the
public name ``discograd.baselines`` (``from discograd.baselines import EMA``).
"""

from discograd.estimators.baselines import EMA, Baseline, Learned

__all__ = ["EMA", "Baseline", "Learned"]
