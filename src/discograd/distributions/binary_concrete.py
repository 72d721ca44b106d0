r"""The Binary Concrete (relaxed Bernoulli) distribution.

Maddison, Mnih & Teh 2017, "The Concrete Distribution", Section 3.3 (Jang et al.
2017 call it the Gumbel-Softmax with two categories). With logit :math:`\alpha`,
temperature :math:`\tau` and logistic noise :math:`L = \log U - \log(1-U)`:

.. math::
    x = \sigma(s),\quad s = (\alpha + L)/\tau, \qquad
    p(x) = \frac{\tau e^{\alpha} x^{-\tau-1}(1-x)^{-\tau-1}}
                {\big(e^{\alpha} x^{-\tau} + (1-x)^{-\tau}\big)^2}.

``log_prob`` evaluates the density through the logit :math:`s = \mathrm{logit}(x)`,
using :math:`\log x = -\mathrm{softplus}(-s)` and
:math:`\log(1-x) = -\mathrm{softplus}(s)`:

.. math:: \log p(x) = \log\tau + \alpha + (\tau+1)\,[\mathrm{sp}(s) + \mathrm{sp}(-s)]
          - 2\tau\,\mathrm{sp}(s) - 2\,\mathrm{sp}(\alpha - \tau s).

``log_prob`` is a pure, differentiable function of its value, as in every
``torch.distributions`` class. Trade-off: at low temperature samples saturate to
exactly 0 or 1 in floating point, and ``log_prob`` evaluates such a value at
distance ``tiny`` (the dtype's smallest normal number) from 0 or ``eps/2`` from 1,
a finite stand-in, not the density of the sample that was drawn. For
low-temperature densities stay in logit space: :meth:`BinaryConcrete.rsample_logit`
and :meth:`BinaryConcrete.log_prob_logit` are exact at any temperature.
``x > 1/2`` is an exact Bernoulli(σ(α)) sample.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Distribution, constraints
from torch.distributions.utils import lazy_property, logits_to_probs, probs_to_logits
from torch.types import _size

from discograd.distributions._utils import (
    as_temperature,
    check_params,
    clamped_log,
    number_as_tensor,
    uniform,
)
from discograd.functional import _compute_dtype, _divide_by_tau

__all__ = ["BinaryConcrete"]


class BinaryConcrete(Distribution):
    r"""Binary Concrete / relaxed Bernoulli: :math:`x = \sigma((\alpha + L)/\tau)` on (0, 1).

    Args:
        temperature: :math:`\tau > 0`; a float or a tensor broadcasting against
            the logits (it joins the batch shape).
        probs: probability of 1 of the Bernoulli being relaxed: a tensor or a
            Python number (as in ``RelaxedBernoulli``; a number takes the dtype
            and device of a tensor temperature, else the default dtype).
        logits: its logit :math:`\alpha`, a tensor or a Python number.
        validate_args: as in ``torch.distributions``.

    ``log_prob(x)`` is a pure function of ``x``, differentiable in it. A sample
    that saturated to 0 or 1 (low temperature) is evaluated next to the
    boundary, not at its exact logit: for relaxed KL terms and likelihood
    ratios at low temperature use :meth:`rsample_logit` with
    :meth:`log_prob_logit`, which never leave logit space.
    """

    arg_constraints = {
        "temperature": constraints.positive,
        "probs": constraints.unit_interval,
        "logits": constraints.real,
    }
    support = constraints.unit_interval
    has_rsample = True

    def __init__(
        self,
        temperature: float | Tensor,
        probs: Tensor | float | None = None,
        logits: Tensor | float | None = None,
        validate_args: bool | None = None,
    ) -> None:
        p: Tensor | None = number_as_tensor(probs, temperature)
        lg: Tensor | None = number_as_tensor(logits, temperature)
        param = check_params(p, lg, "a tensor or a number")
        tau = as_temperature(temperature, param)
        batch_shape = torch.broadcast_shapes(param.shape, tau.shape)
        if p is not None:
            self.probs = p.expand(batch_shape)
        else:
            assert lg is not None
            self.logits = lg.expand(batch_shape)
        self.temperature = tau
        super().__init__(batch_shape, validate_args=validate_args)

    @lazy_property
    def logits(self) -> Tensor:
        return probs_to_logits(self.probs, is_binary=True)

    @lazy_property
    def probs(self) -> Tensor:
        return logits_to_probs(self.logits, is_binary=True)

    @property
    def param_shape(self) -> torch.Size:
        return self.batch_shape

    def expand(self, batch_shape: _size, _instance=None):
        new = self._get_checked_instance(BinaryConcrete, _instance)
        batch_shape = torch.Size(batch_shape)
        if "probs" in self.__dict__:
            new.probs = self.probs.expand(batch_shape)
        if "logits" in self.__dict__:
            new.logits = self.logits.expand(batch_shape)
        new.temperature = self.temperature
        super(BinaryConcrete, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def rsample_logit(
        self, sample_shape: _size = torch.Size(), generator: torch.Generator | None = None
    ) -> Tensor:
        """A reparameterised sample in logit space, :math:`s = (\\alpha + L)/\\tau`.

        Finite at any temperature; pair it with :meth:`log_prob_logit`. Computed
        in float32 for 16-bit parameters.
        """
        shape = self._extended_shape(sample_shape)
        u = uniform(shape, self.logits, generator)
        finfo = torch.finfo(u.dtype)
        u = u.clamp_(finfo.tiny, 1.0 - finfo.eps / 2)
        logistic = u.log() - torch.log1p(-u)
        return _divide_by_tau(self.logits + logistic, self.temperature)

    def rsample(
        self, sample_shape: _size = torch.Size(), generator: torch.Generator | None = None
    ) -> Tensor:
        return torch.sigmoid(self.rsample_logit(sample_shape, generator)).to(self.logits.dtype)

    def sample(
        self, sample_shape: _size = torch.Size(), generator: torch.Generator | None = None
    ) -> Tensor:
        with torch.no_grad():
            x = self.rsample(sample_shape, generator)
        # A trace does not record no_grad: detach, so that a graph traced on
        # parameters without grad still returns a sample without grad.
        return x.detach() if torch.jit.is_tracing() else x

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        # 0 and 1 are read as tiny and 1 - eps/2 (of the value's dtype): the
        # density there is 0 or infinite, and a finite stand-in is more useful.
        finfo = torch.finfo(value.dtype)
        cdt = _compute_dtype(value.dtype)
        s = clamped_log(value, finfo.tiny, 1.0 - finfo.eps / 2, cdt=cdt, logit=True)
        return self.log_prob_logit(s).to(value.dtype)

    def log_prob_logit(self, s: Tensor) -> Tensor:
        """The density of :math:`x = \\sigma(s)` (w.r.t. dx), computed from its logit ``s``.

        Exact where ``x`` itself would round to 0 or 1: use it to evaluate
        another BinaryConcrete (a relaxed prior) at this one's sample, e.g.
        for a relaxed KL term.
        """
        cdt = _compute_dtype(s.dtype)
        s = s.to(cdt)
        alpha = self.logits.to(cdt)
        tau = self.temperature.to(cdt)
        sp_pos, sp_neg = F.softplus(s), F.softplus(-s)
        out = (
            tau.log()
            + alpha
            + (tau + 1) * (sp_pos + sp_neg)
            - 2 * tau * sp_pos
            - 2 * F.softplus(alpha - tau * s)
        )
        # An infinite logit is a point mass at 0 or 1: no density anywhere, the
        # limit of the finite case (-inf), not the inf - inf of the formula.
        return torch.where(alpha.isinf(), -math.inf, out)
