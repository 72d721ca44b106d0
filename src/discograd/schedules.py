r"""Temperature schedules for the relaxed estimators.

A schedule maps the training step :math:`t = 0, 1, 2, \dots` to a temperature
:math:`\tau_t > 0`. Relaxed estimators (:class:`~discograd.estimators.GumbelSoftmax`
and friends) take either a float (a :class:`Constant`) or a schedule, and keep
their own step counter:

* the counter starts at 0 and advances by one after every forward call made in
  training mode (``estimator.training``, the ``nn.Module`` default); in eval
  mode (``estimator.eval()``) it is frozen, so evaluation never moves the
  temperature;
* each call uses :math:`\tau_t` at the counter's value *before* the call
  advances it (the first call uses :math:`\tau_0`);
* the counter is part of the estimator's ``state_dict`` (as extra state), so a
  checkpoint resumes the schedule where it stopped; ``estimator.step_count``
  reads it and ``estimator.step_count = n`` sets it.

One call per optimisation step is the intended use. An estimator called
several times per step (two latent layers sharing one estimator) advances
several times: give each layer its own estimator, or scale ``every``.

Schedules:

* :class:`Constant` — :math:`\tau_t = \tau`.
* :class:`ExponentialDecay` — Jang, Gu & Poole 2017 ("Categorical
  Reparameterization with Gumbel-Softmax", Section 4): the temperature is
  annealed as :math:`\tau = \max(\tau_{\min}, \tau_0 e^{-r t})`, updated every
  :math:`N` steps; here :math:`t` is rounded down to a multiple of ``every``.

A custom schedule subclasses :class:`Schedule` and implements ``__call__(step)``
(and ``minimum`` when it knows a lower bound).
"""

from __future__ import annotations

import math

__all__ = ["Constant", "ExponentialDecay", "Schedule", "as_schedule"]


def _positive_float(name: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        v = float(value)
        if math.isfinite(v) and (v >= 0 if allow_zero else v > 0):
            return v
    kind = "non-negative" if allow_zero else "positive"
    raise ValueError(f"{name} must be a {kind} finite float, got {name}={value!r}")


class Schedule:
    """A temperature as a function of the training step: ``schedule(step) -> float``."""

    def __call__(self, step: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def minimum(self) -> float:
        """A lower bound of the temperatures it can return (0 when unknown)."""
        return 0.0


class Constant(Schedule):
    """:math:`\\tau_t = \\tau` for every step."""

    def __init__(self, tau: float) -> None:
        self.tau = _positive_float("tau", tau)

    def __call__(self, step: int) -> float:
        return self.tau

    @property
    def minimum(self) -> float:
        return self.tau

    def __repr__(self) -> str:
        return f"Constant(tau={self.tau})"


class ExponentialDecay(Schedule):
    r"""Exponential annealing with a floor (Jang, Gu & Poole 2017).

    .. math:: \tau_t = \max\big(\text{floor},\ \tau_0\, e^{-\text{rate}\cdot
              N \lfloor t / N \rfloor}\big), \qquad N = \text{every}.

    Jang et al. use :math:`\tau_0 = 1`, floor 0.5, rate in {1e-5, 1e-4} and N in
    {500, 1000}.

    Args:
        tau0: the starting temperature (> 0).
        rate: the decay rate per step (>= 0; 0 keeps ``max(floor, tau0)``).
        floor: the smallest temperature (> 0).
        every: the temperature changes only every ``every`` steps (int >= 1).
    """

    def __init__(
        self, tau0: float = 1.0, rate: float = 1e-4, floor: float = 0.5, every: int = 1000
    ) -> None:
        self.tau0 = _positive_float("tau0", tau0)
        self.rate = _positive_float("rate", rate, allow_zero=True)
        self.floor = _positive_float("floor", floor)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an int >= 1, got every={every!r}")
        self.every = every

    def __call__(self, step: int) -> float:
        t = (int(step) // self.every) * self.every
        return max(self.floor, self.tau0 * math.exp(-self.rate * t))

    @property
    def minimum(self) -> float:
        return self.floor if self.rate > 0 else max(self.floor, self.tau0)

    def __repr__(self) -> str:
        return (
            f"ExponentialDecay(tau0={self.tau0}, rate={self.rate}, floor={self.floor}, "
            f"every={self.every})"
        )


def as_schedule(tau: float | Schedule, name: str = "tau") -> Schedule:
    """A float becomes :class:`Constant`; a :class:`Schedule` passes through."""
    if isinstance(tau, Schedule):
        return tau
    return Constant(_positive_float(name, tau))
