r"""More straight-through relaxations: DecoupledSTGumbelSoftmax and GappedStraightThrough.

Both evaluate ``f`` once, on a hard one-hot (0/1 for Bernoulli) sample, and
backpropagate through a softmax surrogate; both are biased. Notation as in
:mod:`discograd.estimators.relaxed`: logits :math:`\theta`, Gumbel noise
:math:`G`, one-hot sample :math:`D`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from discograd.estimators._ops import (
    compute_dtype,
    divide_by_tau,
    logistic_from_uniform,
    one_hot,
    open_uniform,
    perturbed,
    softmax_last,
)
from discograd.estimators.base import Latent
from discograd.estimators.registry import register
from discograd.estimators.relaxed import _Tempered
from discograd.functional import straight_through
from discograd.schedules import Schedule, as_schedule

__all__ = ["DecoupledSTGumbelSoftmax", "GappedStraightThrough"]


@register("decoupled_st_gumbel_softmax")
class DecoupledSTGumbelSoftmax(_Tempered):
    r"""Decoupled straight-through Gumbel-Softmax: one temperature forward, another backward.

    Shah, Yan, Mozer & Liu 2024, "Improving Discrete Optimisation Via Decoupled
    Straight-Through Gumbel-Softmax" (arXiv 2410.13331). With one Gumbel draw
    :math:`G` shared by both passes:

    .. math:: D = \mathrm{onehot}\big(\arg\max_i(\theta_i/\tau_f + G_i)\big), \qquad
              y = \mathrm{softmax}(\theta/\tau_b + G), \qquad
              \hat g = \Big(\frac{\partial y}{\partial\theta}\Big)^{\!\top} \nabla_D f(D).

    :math:`\tau_f` sets the forward pass's randomness: :math:`D` is an exact
    sample of :math:`\mathrm{Cat}(\mathrm{softmax}(\theta/\tau_f))`, so of
    :math:`q` itself at :math:`\tau_f = 1` (then ``Estimate.value`` is unbiased
    for :math:`\mathbb E_q[f]`); :math:`\tau_f < 1` explores less. :math:`\tau_b`
    sets how the gradient spreads over the categories. The temperatures divide
    the logits and the noise is added after, :math:`\mathrm{softmax}(\ell/\tau + g)`
    as the paper writes both passes (departing, by its own footnote, from
    Jang et al.'s :math:`(\ell + g)/\tau`); so at :math:`\tau_f = \tau_b = \tau`
    this is ST-GS on the logits :math:`\theta/\tau`, not ``STGumbelSoftmax(tau)``.
    relaxit 1.2.1's ``DecoupledStraightThroughGumbelSoftmax`` divides the
    perturbed logits instead, so its forward sample ignores :math:`\tau_f` and
    the two agree only at :math:`\tau_f = \tau_b = 1` (see docs/estimators.md). Bernoulli
    variables: :math:`b = 1[\alpha/\tau_f + L > 0]`, backward through
    :math:`\sigma(\alpha/\tau_b + L)`, :math:`L` logistic noise. Biased.

    Args:
        tau_forward: :math:`\tau_f > 0`, float or schedule (default 1: exact samples).
        tau_backward: :math:`\tau_b > 0`, float or schedule.
        tau: the registry's temperature (``has_temperature``), an alias of
            ``tau_backward``: give one of the two. ``est.schedule`` / ``est.tau``
            are the backward temperature (what annealing code changes);
            ``est.schedule_forward`` / ``est.tau_forward`` the forward one.
            Both schedules follow the estimator's one step counter.
        generator: default random generator.

    One evaluation of ``f``, on one-hot / 0-1 samples.
    """

    def __init__(
        self,
        tau_forward: float | Schedule = 1.0,
        tau_backward: float | Schedule = 1.0,
        *,
        tau: float | Schedule | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if tau is not None:
            if not (isinstance(tau_backward, (int, float)) and tau_backward == 1.0):
                raise ValueError(
                    f"give the backward temperature once: tau={tau!r} is an alias of "
                    f"tau_backward={tau_backward!r}"
                )
            tau_backward = tau
        super().__init__(tau_backward, generator=generator)
        self.schedule_forward = as_schedule(tau_forward)

    @property
    def tau_forward(self) -> float:
        """The forward temperature the next call will use."""
        return self._check_tau(self.schedule_forward(self._step))

    def extra_repr(self) -> str:
        return f"tau_forward={self.schedule_forward!r}, " + super().extra_repr()

    def relaxed_input(
        self, latent: Latent, tau: float, generator: torch.Generator | None
    ) -> Tensor:
        tau_f = self.tau_forward
        cdt = compute_dtype(latent.dtype)
        theta = latent.logits.to(cdt)
        if latent.kind == "categorical":
            # scores_f - scores_b = theta (1/tau_f - 1/tau_b): one noise draw, two views.
            noise = perturbed(torch.zeros_like(theta.detach()), generator)
            scores_f = divide_by_tau(theta.detach(), tau_f) + noise
            hard = one_hot(scores_f.argmax(-1), latent.num_categories, cdt)
            soft = softmax_last(divide_by_tau(theta, tau) + noise)
        else:
            noise = logistic_from_uniform(open_uniform(theta.shape, cdt, latent.device, generator))
            hard = ((theta.detach() / tau_f + noise) > 0).to(cdt)
            soft = torch.sigmoid(theta / tau + noise)
        return straight_through(hard, soft).to(latent.dtype)


@register("gapped_straight_through")
class GappedStraightThrough(_Tempered):
    r"""Gapped straight-through (GST): ST-Gumbel-Softmax with a deterministic, gapped perturbation.

    Fan, Wang, Tsai, Wang & Chen 2022, "Training Discrete Deep Generative Models
    via Gapped Straight-Through Estimator" (ICML); official code chijames/GST
    (``gst_mover``). Forward: an exact sample :math:`D \sim \mathrm{Cat}(\pi)`.
    Backward: instead of Gumbel noise, the logits are moved by constants (no
    gradient) so that the sampled category :math:`d` is the arg max with a gap
    :math:`\kappa` to every other one, and nothing else moves more than needed.
    With :math:`M = \max_i \theta_i`:

    .. math:: \tilde\theta_d = M, \qquad
              \tilde\theta_i = \theta_i - \max(0,\ \theta_i - M + \kappa) \quad (i \ne d),
              \qquad \hat g = \Big(\frac{\partial\,\mathrm{softmax}(\tilde\theta/\tau)}
              {\partial\theta}\Big)^{\!\top} \nabla_D f(D),

    i.e. :math:`\tilde\theta = \theta + m` with the move :math:`m` held fixed, so
    the Jacobian is the softmax's at :math:`\tilde\theta/\tau`, divided by
    :math:`\tau`. ``gap="adaptive"`` uses the paper's
    :math:`\kappa = -\log(1 - \pi_d)/\pi_d` ("GST-p"). Categorical variables
    only (write a Bernoulli as two categories). Biased.

    Args:
        tau: temperature > 0 (float or schedule).
        gap: :math:`\kappa > 0` (default 1, "GST-1.0"), or ``"adaptive"``.
        generator: default random generator.

    One evaluation of ``f`` on exact one-hot samples; no extra noise is drawn.
    """

    supports = frozenset({"categorical"})

    def __init__(
        self,
        tau: float | Schedule = 1.0,
        gap: float | str = 1.0,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(tau, generator=generator)
        if gap != "adaptive" and not (
            isinstance(gap, (int, float))
            and not isinstance(gap, bool)
            and math.isfinite(gap)
            and gap > 0
        ):
            raise ValueError(f'gap must be a positive float or "adaptive", got gap={gap!r}')
        self.gap = gap

    def extra_repr(self) -> str:
        return super().extra_repr() + f", gap={self.gap!r}"

    def relaxed_input(
        self, latent: Latent, tau: float, generator: torch.Generator | None
    ) -> Tensor:
        cdt = compute_dtype(latent.dtype)
        theta = latent.logits.to(cdt)
        idx = latent.sample((), generator)
        hard = one_hot(idx, latent.num_categories, cdt)
        with torch.no_grad():
            th = theta.detach()
            top = th.amax(-1, keepdim=True)
            picked = th.gather(-1, idx.unsqueeze(-1))
            if self.gap == "adaptive":
                # pi_d < 1 strictly (as the reference code's 1 - 1e-5 factor): a finite gap.
                p = picked.exp().clamp(max=1.0 - torch.finfo(cdt).eps)
                gap: Tensor | float = -torch.log1p(-p) / p
            else:
                gap = float(self.gap)
            lower = (th - top + gap).clamp_min(0.0)
            finite = th > -math.inf
            move = torch.where(hard > 0, top - picked, torch.where(finite, -lower, 0.0))
        soft = softmax_last(divide_by_tau(theta + move, tau))
        return straight_through(hard, soft).to(latent.dtype)
