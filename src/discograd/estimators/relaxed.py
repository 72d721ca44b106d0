r"""The relaxed and straight-through family: GumbelSoftmax, STGumbelSoftmax,
StraightThrough, GumbelRao, ReinMax.

These estimators differentiate ``f`` with respect to its input (``f`` must be
differentiable in ``z`` for the gradient to mean anything) and are **biased**
(``unbiased = False``): they trade exactness for low variance and one
evaluation of ``f``.

Notation: logits :math:`\theta` (per variable, :math:`C` categories),
:math:`\pi = \mathrm{softmax}(\theta)`, Gumbel noise :math:`G`, temperature
:math:`\tau`, :math:`D` the one-hot sample, :math:`A(p) = \mathrm{diag}(p) -
p p^\top` the Jacobian of the softmax at output :math:`p`. Bernoulli variables
with logit :math:`\alpha` use logistic noise :math:`L = \log U - \log(1 - U)`:
:math:`b = 1[\alpha + L > 0]` is exact, :math:`\sigma((\alpha + L)/\tau)` its
Binary Concrete relaxation (the two-category case of the Concrete, Maddison et
al. 2017 §3.3).

Temperatures are a float or a :mod:`discograd.schedules` schedule. Each
estimator keeps a step counter (saved in its ``state_dict``) that advances
once per forward call in training mode and is frozen in eval mode; the call
uses the temperature at the counter's value before it advances. See
:mod:`discograd.schedules`.

Numerics: noise and softmax are computed in float32 for float16/bfloat16
logits and cast back; ``-inf`` (masked) logits get probability 0 and a zero
gradient; everything stays finite for temperatures down to 1e-3.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from discograd.distributions import BinaryConcrete
from discograd.estimators._ops import (
    compute_dtype,
    divide_by_tau,
    logistic_from_uniform,
    one_hot,
    open_uniform,
    softmax_last,
)
from discograd.estimators._surrogate import zero_valued
from discograd.estimators.base import CostFn, Estimate, Estimator, Latent
from discograd.estimators.registry import register
from discograd.functional import (
    conditional_gumbel,
    conditional_logistic,
    gumbel_softmax,
    straight_through,
)
from discograd.schedules import Schedule, as_schedule

__all__ = ["GumbelRao", "GumbelSoftmax", "ReinMax", "STGumbelSoftmax", "StraightThrough"]


# --------------------------------------------------------------------- helpers
def _logistic_noise(
    shape: torch.Size, dtype: torch.dtype, device: torch.device, generator: torch.Generator | None
) -> Tensor:
    """Standard logistic noise ``log u - log(1 - u)``, finite (u clamped away from 0 and 1)."""
    return logistic_from_uniform(open_uniform(shape, dtype, device, generator))


def _finite_part(theta: Tensor) -> Tensor:
    """``theta`` with infinite entries (masked categories, deterministic Bernoulli
    variables) replaced by 0: gradients there are 0, never NaN."""
    # nan_to_num is one pass (where + comparison are two, ~6x slower here).
    return torch.nan_to_num(theta, nan=0.0, posinf=0.0, neginf=0.0)


def _softmax_jacobian_carrier(p: Tensor, theta: Tensor) -> Tensor:
    r"""A tensor whose Jacobian with respect to ``theta`` is :math:`A(p)`, ``p`` held fixed.

    :math:`p \odot \theta - p\,(p^\top \theta)` is linear in :math:`\theta` with
    :math:`\partial/\partial\theta = \mathrm{diag}(p) - p p^\top`. Only its
    gradient is used (through :func:`straight_through`); its value is not.
    """
    p = p.detach()
    th = _finite_part(theta)
    return p * th - p * (p * th).sum(-1, keepdim=True)


def _categorical_sample(latent: Latent, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """An exact sample: indices ``batch + var`` and one-hot in the compute dtype."""
    idx = latent.sample((), generator)
    cdt = compute_dtype(latent.dtype)
    return idx, one_hot(idx, latent.num_categories, cdt)


# ----------------------------------------------------------------- base class
class _Tempered(Estimator):
    """A relaxed estimator with a temperature (float or schedule) and a step counter."""

    supports = frozenset({"bernoulli", "categorical"})
    unbiased = False
    needs_grad_f = True
    has_temperature = True
    #: ``f`` sees relaxed values (not one-hot / 0-1 ones straight through).
    relaxed_values: ClassVar[bool] = False

    def __init__(self, tau: float | Schedule, *, generator: torch.Generator | None) -> None:
        super().__init__(generator=generator)
        self.schedule = as_schedule(tau)
        self._check_schedule()
        self._step = 0

    def _check_schedule(self) -> None:
        """Hook: refuse schedules outside the estimator's range at construction."""

    def _check_tau(self, tau: float) -> float:
        if isinstance(tau, bool) or not isinstance(tau, (int, float)):
            raise TypeError(f"the temperature schedule returned {type(tau).__name__}, not a float")
        if not (math.isfinite(tau) and tau > 0):
            raise ValueError(f"the temperature schedule returned tau={tau!r}; need 0 < tau < inf")
        return float(tau)

    # The counter is plain Python state (no device sync per call), saved as
    # the module's extra state so that state_dict / load_state_dict resume it.
    @property
    def step_count(self) -> int:
        """Forward calls made in training mode so far (the schedule's step)."""
        return self._step

    @step_count.setter
    def step_count(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"step_count must be an int >= 0, got {value!r}")
        self._step = value

    @property
    def tau(self) -> float:
        """The temperature the next call will use."""
        return self._check_tau(self.schedule(self._step))

    def get_extra_state(self) -> Any:
        return {"step": self._step}

    def set_extra_state(self, state: Any) -> None:
        self.step_count = int(state["step"])

    def extra_repr(self) -> str:
        return f"tau={self.schedule!r}, step={self._step}"

    def estimate(self, f: CostFn, latent: Latent, generator: torch.Generator | None) -> Estimate:
        z = self.relaxed_input(latent, self.tau, generator)
        if self.relaxed_values:
            with latent.relaxed_evaluation():
                fz = latent.call_f(f, z, ())
        else:
            fz = latent.call_f(f, z, ())
        if self.training:  # one step per successful training call
            self._step += 1
        return Estimate(loss=fz, value=fz.detach(), n_evals=1)

    def relaxed_input(
        self, latent: Latent, tau: float, generator: torch.Generator | None
    ) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


# ------------------------------------------------------------------ estimators
@register("gumbel_softmax")
class GumbelSoftmax(_Tempered):
    r"""Gumbel-Softmax / Concrete relaxation: ``f`` evaluated on the relaxed sample.

    Categorical: :math:`y = \mathrm{softmax}((\theta + G)/\tau)`; Bernoulli: the
    Binary Concrete :math:`y = \sigma((\alpha + L)/\tau)`. The estimate is the
    reparameterisation gradient :math:`\hat g = \nabla_\theta f(y)`, unbiased
    for the *relaxed* objective :math:`\mathbb E_G[f(y)]` and biased for
    :math:`\mathbb E_q[f(z)]` (the bias vanishes as :math:`\tau \to 0` while the
    variance grows). ``Estimate.value`` is likewise :math:`f(y)` at the relaxed
    sample, an estimate of the relaxed objective, not of :math:`\mathbb E_q[f]`.

    Jang, Gu & Poole 2017, "Categorical Reparameterization with
    Gumbel-Softmax"; Maddison, Mnih & Teh 2017, "The Concrete Distribution".

    Args:
        tau: temperature > 0 (float or schedule); Jang et al. anneal from 1 to 0.5.
        generator: default random generator.

    One evaluation of ``f``, on points of the simplex (values in [0, 1] for
    Bernoulli): ``f`` must accept non-one-hot inputs. Use it where ``f`` makes
    sense between categories (a decoder's linear first layer does).
    """

    relaxed_values = True

    def __init__(
        self, tau: float | Schedule = 1.0, *, generator: torch.Generator | None = None
    ) -> None:
        super().__init__(tau, generator=generator)

    def relaxed_input(
        self, latent: Latent, tau: float, generator: torch.Generator | None
    ) -> Tensor:
        if latent.kind == "categorical":
            return gumbel_softmax(latent.logits, tau, generator=generator)
        return BinaryConcrete(tau, logits=latent.logits).rsample(generator=generator)


@register("st_gumbel_softmax")
class STGumbelSoftmax(_Tempered):
    r"""Straight-through Gumbel-Softmax: the hard sample forward, the relaxed one backward.

    Forward :math:`D = \mathrm{onehot}(\arg\max_k(\theta_k + G_k))` (an exact
    sample, so ``Estimate.value`` is an unbiased estimate of :math:`\mathbb E_q[f]`);
    backward through :math:`y = \mathrm{softmax}((\theta + G)/\tau)` with the same
    noise:

    .. math:: \hat g = \Big(\frac{\partial y}{\partial \theta}\Big)^{\!\top} \nabla_D f(D).

    Bernoulli: :math:`b = 1[\alpha + L > 0]` forward, :math:`\sigma((\alpha + L)/\tau)`
    backward. Biased. Jang, Gu & Poole 2017 (Section 2.2); Bengio, Léonard &
    Courville 2013.

    Args:
        tau: temperature > 0 (float or schedule).
        generator: default random generator.

    One evaluation of ``f``, on exact one-hot / 0-1 samples.
    """

    def __init__(
        self, tau: float | Schedule = 1.0, *, generator: torch.Generator | None = None
    ) -> None:
        super().__init__(tau, generator=generator)

    def relaxed_input(
        self, latent: Latent, tau: float, generator: torch.Generator | None
    ) -> Tensor:
        if latent.kind == "categorical":
            return gumbel_softmax(latent.logits, tau, hard=True, generator=generator)
        cdt = compute_dtype(latent.dtype)
        alpha = latent.logits.to(cdt)
        s = alpha + _logistic_noise(alpha.shape, cdt, latent.device, generator)
        hard = (s.detach() > 0).to(cdt)
        soft = torch.sigmoid(divide_by_tau(s, tau))
        return straight_through(hard, soft).to(latent.dtype)


@register("straight_through")
class StraightThrough(Estimator):
    r"""The straight-through estimator (STE): hard sample forward, identity Jacobian backward.

    Bernoulli: :math:`b \sim \mathrm{Bernoulli}(p)`, :math:`p = \sigma(\alpha)`,
    with the pseudo-derivative :math:`\partial b / \partial p := 1`, so
    :math:`\hat g_\alpha = p(1-p)\, f'(b)`. Categorical: :math:`D \sim \mathrm{Cat}(\pi)`
    with :math:`\partial D / \partial \pi := I`, so
    :math:`\hat g_\theta = A(\pi)\, \nabla_D f(D)`.

    Exact for ``f`` linear in ``z`` (then :math:`\nabla f` is constant and
    :math:`\mathbb E[f] = f(\mathbb E z)`, whose gradient is exactly this), for every
    draw; biased otherwise. Bengio, Léonard & Courville 2013, "Estimating or
    Propagating Gradients Through Stochastic Neurons for Conditional
    Computation"; Schulz & Aziz's tutorial (seed 003).

    Args:
        generator: default random generator.

    No temperature; one evaluation of ``f`` on exact samples.
    """

    supports = frozenset({"bernoulli", "categorical"})
    unbiased = False
    needs_grad_f = True
    has_temperature = False

    def __init__(self, *, generator: torch.Generator | None = None) -> None:
        super().__init__(generator=generator)

    def estimate(self, f: CostFn, latent: Latent, generator: torch.Generator | None) -> Estimate:
        cdt = compute_dtype(latent.dtype)
        if latent.kind == "categorical":
            _, hard = _categorical_sample(latent, generator)
            soft = softmax_last(latent.logits.to(cdt))
        else:
            soft = torch.sigmoid(latent.logits.to(cdt))
            hard = latent.sample((), generator, probs=soft.detach())  # this sigmoid
        z = straight_through(hard, soft).to(latent.dtype)
        fz = latent.call_f(f, z, ())
        return Estimate(loss=fz, value=fz.detach(), n_evals=1)


@register("gumbel_rao")
class GumbelRao(_Tempered):
    r"""Gumbel-Rao: the straight-through Gumbel-Softmax Jacobian, Rao-Blackwellised.

    Paulus, Maddison & Krause 2021, "Rao-Blackwellizing the Straight-Through
    Gumbel-Softmax Gradient Estimator". Keep the hard sample :math:`D` (one
    evaluation of ``f``) and replace the ST-GS Jacobian by its average over
    :math:`K` draws of the Gumbel noise conditioned on :math:`\arg\max = D`:

    .. math:: \hat g = \Big(\frac1K \sum_{k=1}^K
              \frac{\partial\, \mathrm{softmax}((\theta + G^{(k)})/\tau)}{\partial\theta}
              \Big)^{\!\top} \nabla_D f(D), \qquad
              G^{(k)} \sim G \mid \arg\max_i(\theta_i + G_i) = D,

    the noise :math:`G^{(k)}` held fixed in the derivative (exactly the ST-GS
    Jacobian). Its mean equals :class:`STGumbelSoftmax`'s at the same
    :math:`\tau` (the conditional expectation of the same quantity given
    :math:`D`) and its variance is no larger; it falls as ``n_samples`` grows.
    Conditional noise: :func:`discograd.functional.conditional_gumbel`
    (Bernoulli: :func:`~discograd.functional.conditional_logistic`), vectorised
    over the :math:`K` draws.

    Args:
        tau: temperature > 0 (float or schedule).
        n_samples: :math:`K \ge 1` conditional noise draws (``f`` is still
            evaluated once: ``n_evals = 1``; the cost is :math:`K` softmaxes).
        generator: default random generator.
    """

    def __init__(
        self,
        tau: float | Schedule = 1.0,
        n_samples: int = 10,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(tau, generator=generator)
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"n_samples must be an int >= 1, got n_samples={n_samples!r}")
        self.n_samples = n_samples

    def extra_repr(self) -> str:
        return super().extra_repr() + f", n_samples={self.n_samples}"

    def relaxed_input(
        self, latent: Latent, tau: float, generator: torch.Generator | None
    ) -> Tensor:
        K = self.n_samples
        cdt = compute_dtype(latent.dtype)
        theta = latent.logits.to(cdt)
        if latent.kind == "categorical":
            idx, hard = _categorical_sample(latent, generator)
            scores = conditional_gumbel(theta.detach(), idx.expand((K,) + idx.shape), generator)
            # theta + G with G = scores - theta held fixed; masked entries stay -inf.
            th = _finite_part(theta)
            perturbed = scores + zero_valued(th)
            soft = softmax_last(divide_by_tau(perturbed, tau)).mean(0)
        else:
            hard = latent.sample((), generator).to(cdt)
            # A ±inf logit is a deterministic variable: its relaxation is never
            # used in value (straight-through) and must carry no NaN gradient.
            th = _finite_part(theta)
            s = conditional_logistic(th.detach(), hard.expand((K,) + hard.shape), generator)
            soft = torch.sigmoid(divide_by_tau(s + zero_valued(th), tau)).mean(0)
        return straight_through(hard, soft).to(latent.dtype)


@register("reinmax")
class ReinMax(_Tempered):
    r"""ReinMax: a second-order (Heun's method) straight-through estimator.

    Liu, Dong, Liu, Yu & Gao 2023, "Bridging Discrete and Backpropagation:
    Straight-Through and Beyond" (NeurIPS), Algorithm 1. Forward: an exact
    sample :math:`D \sim \mathrm{Cat}(\pi_0)`, :math:`\pi_0 = \mathrm{softmax}(\theta)`.
    Backward, with :math:`\pi_1 = \tfrac12\big(D + \mathrm{softmax}(\theta/\tau)\big)`:

    .. math:: \hat g_\theta = \Big(2\,A(\pi_1) - \tfrac12\,A(\pi_0)\Big)\,\nabla_D f(D),
              \qquad A(p) = \mathrm{diag}(p) - p p^\top

    (Algorithm 1 writes it as :math:`\pi_2 = 2\pi_1 - \pi_0/2`, with :math:`\pi_1`
    carrying the softmax Jacobian at its own value, and returns
    :math:`\pi_2 - \mathrm{sg}(\pi_2) + D`). Plain ST is the first-order (forward
    Euler) approximation :math:`A(\pi_0)\nabla f(D)`; at :math:`\tau = 1` ReinMax
    is the trapezoidal rule and is exact in expectation for every ``f`` that is
    quadratic in each variable. Biased otherwise. Bernoulli variables are the
    two-category case, :math:`\hat g_\alpha = \big(2 q(1-q) - \tfrac12 p(1-p)\big) f'(b)`
    with :math:`p = \sigma(\alpha)`, :math:`q = \tfrac12(b + \sigma(\alpha/\tau))`.

    **Temperature.** :math:`\tau` only enters :math:`\pi_1`; the sample always
    comes from :math:`\pi_0` (no Gumbel noise). :math:`\tau = 1` is the
    derivation's own point (second-order accurate); :math:`\tau > 1` pulls
    :math:`\mathrm{softmax}(\theta/\tau)` towards uniform, a smoothing knob the
    paper tunes in :math:`\tau \ge 1`. Values :math:`\tau < 1` are refused
    (``ValueError``), as the authors' reference implementation does: they
    sharpen :math:`\pi_1` towards :math:`(D + \mathrm{onehot}(\arg\max\theta))/2`,
    which is neither the Heun step the estimator is derived from nor a
    variance reduction (unlike Gumbel-Softmax, where small :math:`\tau` lowers
    the bias). Schedules must keep :math:`\tau \ge 1` (checked on ``minimum``
    and at every call).

    Args:
        tau: temperature :math:`\ge 1` (float or schedule); default 1.
        generator: default random generator.

    One evaluation of ``f`` on exact samples.
    """

    def __init__(
        self, tau: float | Schedule = 1.0, *, generator: torch.Generator | None = None
    ) -> None:
        super().__init__(tau, generator=generator)

    def _check_schedule(self) -> None:
        if self.schedule.minimum < 1.0:
            raise ValueError(
                f"ReinMax needs tau >= 1 (Liu et al. 2023; smaller values are not the Heun "
                f"step it is derived from), got tau={self.schedule!r} "
                f"(minimum {self.schedule.minimum})"
            )

    def _check_tau(self, tau: float) -> float:
        tau = super()._check_tau(tau)
        if tau < 1.0:
            raise ValueError(f"ReinMax needs tau >= 1, the schedule returned tau={tau}")
        return tau

    def relaxed_input(
        self, latent: Latent, tau: float, generator: torch.Generator | None
    ) -> Tensor:
        cdt = compute_dtype(latent.dtype)
        theta = latent.logits.to(cdt)
        if latent.kind == "categorical":
            _, hard = _categorical_sample(latent, generator)
            th = theta.detach()
            pi0 = softmax_last(th)
            pi1 = 0.5 * (hard + softmax_last(divide_by_tau(th, tau)))
            soft = 2.0 * _softmax_jacobian_carrier(pi1, theta) - 0.5 * _softmax_jacobian_carrier(
                pi0, theta
            )
        else:
            hard = latent.sample((), generator).to(cdt)
            a = theta.detach()
            p = torch.sigmoid(a)
            q = 0.5 * (hard + torch.sigmoid(a / tau))
            weight = 2.0 * q * (1.0 - q) - 0.5 * p * (1.0 - p)
            soft = weight * _finite_part(theta)  # weight is 0 at ±inf: no 0 · inf
        return straight_through(hard, soft).to(latent.dtype)
