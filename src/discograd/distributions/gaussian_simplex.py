r"""Gaussian relaxations of the categorical: an invertible map of Gaussian noise onto the simplex.

With :math:`n = K - 1` Gaussian coordinates :math:`y = \mu + \sigma \odot \epsilon`
and a temperature :math:`\tau`, a sample is :math:`x = g(y/\tau)` for an
invertible :math:`g` from :math:`\mathbb R^n` onto the open simplex of
:math:`K` categories. Both maps here have :math:`|\det \partial g^{-1}/\partial x|
= 1/\prod_{k=1}^{K} x_k` (in the first :math:`n` coordinates), so with
:math:`y = \tau\,g^{-1}(x)`

.. math::
    \log p(x) = \sum_{i=1}^{n} \log \mathcal N(y_i;\,\mu_i, \sigma_i^2)
                + n \log\tau - \sum_{k=1}^{K} \log x_k,

a density with respect to Lebesgue measure on the first :math:`K - 1`
coordinates, the base measure of :class:`~discograd.distributions.Concrete`.

* :class:`InvertibleGaussian` — IGR-I (Potapczynski, Loaiza-Ganem &
  Cunningham 2020, "Invertible Gaussian Reparameterization: Revisiting the
  Gumbel-Softmax"): :math:`g` is softmax++,
  :math:`x_k = e^{v_k}/(\sum_{j\le n} e^{v_j} + \delta)`,
  :math:`x_K = \delta/(\sum_j e^{v_j} + \delta)`.
* :class:`LogisticNormal` — torch's ``LogisticNormal`` (a Gaussian pushed
  through ``StickBreakingTransform``) with a temperature.

Because the Gaussian's log-density does not depend on the map, the KL
divergence between two members of the same family with the same temperature
(and δ) is the Gaussians' KL, in closed form (registered with
``torch.distributions.kl_divergence``).

Low temperatures: coordinates of :math:`x` underflow to 0 as for the Concrete;
``log_prob(x)`` is a pure function of its value and reads such a coordinate as
``tiny`` (a finite stand-in). :meth:`rsample_gaussian` and
:meth:`log_prob_gaussian` work with :math:`y` and are exact at any temperature.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Distribution, Normal, constraints, kl_divergence, register_kl
from torch.distributions.utils import broadcast_all
from torch.types import _size

from discograd.distributions._utils import as_temperature, clamped_log, simplex
from discograd.functional import _compute_dtype

__all__ = ["InvertibleGaussian", "LogisticNormal"]


class _GaussianSimplex(Distribution):
    """Parameters, sampling, densities and ``expand`` shared by the two maps."""

    arg_constraints = {
        "loc": constraints.real_vector,
        "scale": constraints.independent(constraints.positive, 1),
        "temperature": constraints.positive,
    }
    support = simplex
    has_rsample = True

    def __init__(
        self,
        loc: Tensor,
        scale: Tensor | float,
        temperature: float | Tensor,
        validate_args: bool | None = None,
    ) -> None:
        if not isinstance(loc, Tensor) or not loc.is_floating_point():
            raise TypeError(f"loc must be a floating tensor, got {type(loc).__name__}")
        if loc.dim() < 1:
            raise ValueError(
                f"loc needs a last dimension of size K - 1 >= 1, got shape {tuple(loc.shape)}"
            )
        if isinstance(scale, (int, float)) and not isinstance(scale, bool):
            if not (scale > 0 and math.isfinite(scale)):
                raise ValueError(f"scale must be positive and finite, got scale={scale}")
        loc, scale = broadcast_all(loc, scale)
        tau = as_temperature(temperature, loc)
        if tau.dim() > 0 and tau.shape[-1] != 1:
            raise ValueError(
                "temperature must be a scalar or have a trailing dimension of size 1 "
                f"(e.g. shape [n, 1] for one per row), got shape {tuple(tau.shape)}"
            )
        n = loc.shape[-1]
        batch_shape = torch.broadcast_shapes(loc.shape[:-1], tau.shape[:-1])
        self.loc = loc.expand(batch_shape + (n,))
        self.scale = scale.expand(batch_shape + (n,))
        self.temperature = tau
        super().__init__(batch_shape, torch.Size([n + 1]), validate_args=validate_args)

    def expand(self, batch_shape: _size, _instance=None):
        new = self._get_checked_instance(type(self), _instance)
        batch_shape = torch.Size(batch_shape)
        n = self.event_shape[0] - 1
        new.loc = self.loc.expand(batch_shape + (n,))
        new.scale = self.scale.expand(batch_shape + (n,))
        new.temperature = self.temperature
        self._copy_extra(new)
        super(_GaussianSimplex, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _copy_extra(self, new: _GaussianSimplex) -> None:
        pass

    # The map and its inverse, in log space: v = y / tau -> log x, and back.
    def _log_simplex(self, v: Tensor) -> Tensor:
        raise NotImplementedError  # pragma: no cover

    def _inverse(self, log_x: Tensor) -> Tensor:
        raise NotImplementedError  # pragma: no cover

    def rsample_gaussian(
        self, sample_shape: _size = torch.Size(), generator: torch.Generator | None = None
    ) -> Tensor:
        r"""The Gaussian :math:`y = \mu + \sigma\epsilon` behind a sample (shape ``[..., K-1]``).

        :meth:`from_gaussian` maps it to the simplex; :meth:`log_prob_gaussian`
        gives the density of that point exactly at any temperature. Computed
        and returned in float32 for 16-bit parameters (as
        ``BinaryConcrete.rsample_logit``).
        """
        shape = self._extended_shape(sample_shape)[:-1] + self.loc.shape[-1:]
        cdt = _compute_dtype(self.loc.dtype)
        eps = torch.randn(shape, dtype=cdt, device=self.loc.device, generator=generator)
        return self.loc.to(cdt) + self.scale.to(cdt) * eps

    def _tau(self, cdt: torch.dtype) -> Tensor:
        return self.temperature.to(cdt)

    def from_gaussian(self, y: Tensor) -> Tensor:
        """The point of the simplex that Gaussian coordinates ``y`` map to (parameters' dtype)."""
        cdt = _compute_dtype(y.dtype)
        return self._log_simplex(y.to(cdt) / self._tau(cdt)).exp().to(self.loc.dtype)

    def rsample(
        self, sample_shape: _size = torch.Size(), generator: torch.Generator | None = None
    ) -> Tensor:
        return self.from_gaussian(self.rsample_gaussian(sample_shape, generator))

    def sample(
        self, sample_shape: _size = torch.Size(), generator: torch.Generator | None = None
    ) -> Tensor:
        with torch.no_grad():
            x = self.rsample(sample_shape, generator)
        return x.detach() if torch.jit.is_tracing() else x

    def _density(self, y: Tensor, log_x: Tensor) -> Tensor:
        cdt = y.dtype
        tau = self._tau(cdt)
        tau_batch = tau[..., 0] if tau.dim() > 0 else tau
        gauss = Normal(self.loc.to(cdt), self.scale.to(cdt), validate_args=False)
        n = self.loc.shape[-1]
        return gauss.log_prob(y).sum(-1) + n * tau_batch.log() - log_x.sum(-1)

    def log_prob(self, value: Tensor) -> Tensor:
        """The density of ``value`` on the simplex (Lebesgue measure on K - 1 coordinates).

        A coordinate that underflowed to 0 is read as ``tiny`` (see the module
        docstring); :meth:`log_prob_gaussian` is exact.
        """
        if self._validate_args:
            self._validate_sample(value)
        cdt = _compute_dtype(value.dtype)
        log_x = clamped_log(value, torch.finfo(value.dtype).tiny, cdt=cdt)
        y = self._inverse(log_x) * self._tau(cdt)
        return self._density(y, log_x).to(value.dtype)

    def log_prob_gaussian(self, y: Tensor) -> Tensor:
        """``log_prob(from_gaussian(y))`` computed from ``y``: exact at any temperature.

        Returned in the compute dtype (float32 for 16-bit): at low temperature
        the log-density is of order :math:`K|y|/\tau`, beyond float16's range.
        """
        cdt = _compute_dtype(y.dtype)
        y = y.to(cdt)
        log_x = self._log_simplex(y / self._tau(cdt))
        return self._density(y, log_x)


class InvertibleGaussian(_GaussianSimplex):
    r"""IGR-I: softmax++ of a tempered Gaussian (Potapczynski, Loaiza-Ganem & Cunningham 2020).

    .. math::
        y = \mu + \sigma\odot\epsilon \in \mathbb R^{K-1},\qquad
        x_k = \frac{e^{y_k/\tau}}{\sum_{j=1}^{K-1} e^{y_j/\tau} + \delta}\ (k < K),\qquad
        x_K = \frac{\delta}{\sum_{j=1}^{K-1} e^{y_j/\tau} + \delta},

    i.e. :math:`x = \mathrm{softmax}(y_1/\tau, \dots, y_{K-1}/\tau, \log\delta)`. The
    inverse is :math:`y_k = \tau(\log x_k - \log x_K + \log\delta)` and

    .. math::
        \log p(x) = \sum_{k<K} \log\mathcal N(y_k; \mu_k, \sigma_k^2)
                    + (K-1)\log\tau - \sum_{k=1}^{K}\log x_k

    (Lebesgue measure on the first :math:`K-1` coordinates). :math:`\arg\max_k x_k
    = \arg\max(y_1, \dots, y_{K-1}, \tau\log\delta)` at every temperature, and
    :math:`x` tends to that one-hot vector as :math:`\tau \to 0`. With
    :math:`\tau = \delta = 1` this is Aitchison's additive logistic normal.
    The KL divergence between two IGRs with the same τ and δ is the KL of their
    Gaussians (closed form, registered with ``kl_divergence``).

    Args:
        loc: :math:`\mu`, shape ``[..., K-1]``.
        scale: :math:`\sigma > 0`, broadcasting against ``loc`` (the authors'
            code parameterises :math:`\sigma = e^{\xi}`).
        temperature: :math:`\tau > 0`, a float or a tensor of shape ``[..., 1]``.
        delta: :math:`\delta > 0` (1 in the paper and its code).
        validate_args: as in ``torch.distributions``.
    """

    def __init__(
        self,
        loc: Tensor,
        scale: Tensor | float,
        temperature: float | Tensor,
        delta: float = 1.0,
        validate_args: bool | None = None,
    ) -> None:
        if isinstance(delta, bool) or not isinstance(delta, (int, float)):
            raise TypeError(f"delta must be a number, got {type(delta).__name__}")
        if not (delta > 0 and math.isfinite(delta)):
            raise ValueError(f"delta must be positive and finite, got delta={delta}")
        self.delta = float(delta)
        super().__init__(loc, scale, temperature, validate_args=validate_args)

    def _copy_extra(self, new: _GaussianSimplex) -> None:
        new.delta = self.delta  # type: ignore[attr-defined]

    def _log_simplex(self, v: Tensor) -> Tensor:
        last = torch.full_like(v[..., :1], math.log(self.delta))
        return torch.log_softmax(torch.cat([v, last], -1), -1)

    def _inverse(self, log_x: Tensor) -> Tensor:
        return log_x[..., :-1] - log_x[..., -1:] + math.log(self.delta)


class LogisticNormal(_GaussianSimplex):
    r"""torch's logistic-normal (stick-breaking) with a temperature: a relaxed categorical.

    .. math::
        y = \mu + \sigma\odot\epsilon,\quad
        z_i = \sigma\big(y_i/\tau - \log(K - i)\big),\quad
        x_i = z_i \prod_{j<i} (1 - z_j)\ (i < K),\quad x_K = \prod_{j<K}(1 - z_j),

    (:math:`i = 1, \dots, K-1`): ``torch.distributions.LogisticNormal(loc / τ,
    scale / τ)``, whose ``StickBreakingTransform`` centres the map with the
    offsets :math:`\log(K - i)`. Note that torch's "logistic normal" is this
    stick-breaking form, not Aitchison's additive one (that one is
    :class:`InvertibleGaussian` with τ = δ = 1; the two agree for K = 2).

    The density (same base measure as :class:`Concrete`) is

    .. math::
        \log p(x) = \sum_{i<K} \log\mathcal N(y_i; \mu_i, \sigma_i^2)
                    + (K-1)\log\tau - \sum_{k=1}^{K}\log x_k,\qquad
        y_i = \tau\big(\log x_i - \log\textstyle\sum_{j>i} x_j + \log(K - i)\big).

    Samples, densities and gradients are computed in log space (in float32 for
    16-bit parameters), so they stay finite at any temperature, unlike torch's
    class evaluated at ``loc / τ``. As :math:`\tau \to 0`, :math:`z_i \to
    \mathbb 1[y_i > 0]` and :math:`x` tends to a one-hot vector whose category
    has the closed-form law :meth:`limit_probs`:
    :math:`P(i) = \Phi(\mu_i/\sigma_i)\prod_{j<i}\Phi(-\mu_j/\sigma_j)`.

    Args:
        loc, scale: the Gaussian's :math:`\mu`, :math:`\sigma`, shape ``[..., K-1]``.
        temperature: :math:`\tau > 0`, a float or a tensor of shape ``[..., 1]``
            (default 1: torch's ``LogisticNormal(loc, scale)``).
        validate_args: as in ``torch.distributions``.
    """

    def __init__(
        self,
        loc: Tensor,
        scale: Tensor | float,
        temperature: float | Tensor = 1.0,
        validate_args: bool | None = None,
    ) -> None:
        super().__init__(loc, scale, temperature, validate_args=validate_args)

    def _offsets(self, like: Tensor) -> Tensor:
        n = like.shape[-1]
        return torch.arange(n, 0, -1, dtype=like.dtype, device=like.device).log()

    def _log_simplex(self, v: Tensor) -> Tensor:
        a = v - self._offsets(v)
        log_rest = F.logsigmoid(-a).cumsum(-1)  # log of the stick left after each break
        before = F.pad(log_rest[..., :-1], (1, 0))
        return torch.cat([F.logsigmoid(a) + before, log_rest[..., -1:]], -1)

    def _inverse(self, log_x: Tensor) -> Tensor:
        # log of the stick after piece i: log sum_{j>i} x_j, a reversed logcumsumexp.
        after = torch.logcumsumexp(log_x.flip(-1), -1).flip(-1)[..., 1:]
        return log_x[..., :-1] - after + self._offsets(after)

    def limit_probs(self) -> Tensor:
        r"""The categorical law of the :math:`\tau \to 0` limit, shape ``batch + [K]``."""
        cdt = _compute_dtype(self.loc.dtype)
        w = self.loc.to(cdt) / self.scale.to(cdt)
        log_stay = torch.special.log_ndtr(-w).cumsum(-1)
        before = F.pad(log_stay[..., :-1], (1, 0))
        log_p = torch.cat([torch.special.log_ndtr(w) + before, log_stay[..., -1:]], -1)
        return log_p.exp().to(self.loc.dtype)


def _same_map(p: _GaussianSimplex, q: _GaussianSimplex) -> bool:
    if p.event_shape != q.event_shape or getattr(p, "delta", None) != getattr(q, "delta", None):
        return False
    return bool(torch.equal(*torch.broadcast_tensors(p.temperature, q.temperature)))


def _kl_gaussian_simplex(p: _GaussianSimplex, q: _GaussianSimplex) -> Tensor:
    if not _same_map(p, q):
        raise NotImplementedError(
            "the closed-form KL needs the same temperature, delta and number of categories"
        )
    return kl_divergence(Normal(p.loc, p.scale), Normal(q.loc, q.scale)).sum(-1)


@register_kl(InvertibleGaussian, InvertibleGaussian)
def _kl_igr(p: InvertibleGaussian, q: InvertibleGaussian) -> Tensor:
    return _kl_gaussian_simplex(p, q)


@register_kl(LogisticNormal, LogisticNormal)
def _kl_logistic_normal(p: LogisticNormal, q: LogisticNormal) -> Tensor:
    return _kl_gaussian_simplex(p, q)
