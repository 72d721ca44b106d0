r"""Rectified (stretched-and-clamped) gates: mixed distributions on [0, 1].

A continuous variable :math:`\bar s` whose support reaches past [0, 1] is
clamped, :math:`z = \min(1, \max(0, \bar s))`, so that :math:`z` is exactly 0
with probability :math:`P(\bar s \le 0)`, exactly 1 with probability
:math:`P(\bar s \ge 1)`, and has a density on (0, 1) in between. The gradient of
``rsample`` flows through the clamp: it is zero at the atoms.

* :class:`HardConcrete` — a stretched Binary Concrete (Louizos, Welling &
  Kingma 2018, "Learning Sparse Neural Networks through L0 Regularization").
* :class:`HardKumaraswamy` — a stretched Kumaraswamy (Bastings, Aziz & Titov
  2019, "Interpretable Neural Predictions with Differentiable Binary
  Variables").
* :class:`GaussianRelaxedBernoulli` — a clamped Gaussian, the stochastic gate
  of Yamada, Lindenbaum, Negahban & Kluger 2020, "Feature Selection using
  Stochastic Gates".

Base measure. ``log_prob`` is a log-density with respect to
:math:`\nu = \lambda|_{(0,1)} + \delta_0 + \delta_1` (Lebesgue measure on the
open interval plus a unit point mass at each end): at exactly 0 it returns
:math:`\log P(z = 0)`, at exactly 1 :math:`\log P(z = 1)`, and in between the
log-density of the continuous part (which integrates to
:math:`1 - P(z=0) - P(z=1)`). Values outside [0, 1] get ``-inf`` (or a
``ValueError`` with ``validate_args``).

Because the interior (0, 1) maps to a range of the underlying variable that is
bounded away from its own boundaries, the interior density is well conditioned
at every temperature; the atoms take over the mass that saturates.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Distribution, Kumaraswamy, constraints
from torch.distributions.utils import broadcast_all
from torch.types import _size

from discograd.distributions._utils import as_temperature, number_as_tensor, uniform
from discograd.functional import _compute_dtype, _divide_by_tau

__all__ = ["GaussianRelaxedBernoulli", "HardConcrete", "HardKumaraswamy"]


def _check_limits(limits: tuple[float, float]) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in limits)
    except (TypeError, ValueError):
        raise TypeError(f"limits must be a pair of numbers, got limits={limits!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < 0.0 and hi > 1.0):
        raise ValueError(
            f"limits must be finite with limits[0] < 0 < 1 < limits[1], got limits={limits!r}"
        )
    return lo, hi


def _as_param(value: Tensor | float, name: str, like: Tensor | float | None = None) -> Tensor:
    if isinstance(value, bool) or not isinstance(value, (Tensor, int, float)):
        raise TypeError(f"{name} must be a tensor or a number, got {type(value).__name__}")
    if isinstance(value, Tensor) and not value.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {value.dtype}")
    return number_as_tensor(value, like if isinstance(like, Tensor) else 1.0)


def _log_neg_expm1(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, accurate at both ends (Mächler 2012)."""
    near = x > -math.log(2.0)
    # Each branch gets an argument where it is finite, so that the branch not
    # taken contributes no NaN to the gradient.
    a = torch.where(near, x, -1.0)
    b = torch.where(near, -1.0, x)
    return torch.where(near, torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(b)))


def _log1m_exp_neg_exp(lx: Tensor) -> Tensor:
    """``log(1 - exp(-exp(lx)))``: log P(atom) from the log of minus the log of its complement.

    Where ``exp(lx)`` is tiny, ``1 - exp(-x) = x (1 - x/2 + x²/6 - ...)``; the
    direct form would round ``exp(-x)`` to 1 and return ``-inf``.
    """
    lx = lx.clamp(max=50.0)  # exp(-e^50) is 0 in every dtype: the result is 0 beyond
    x = torch.exp(lx)
    small = x < 1e-5
    xs = torch.where(small, x, 0.0)
    series = lx + torch.log1p(-xs / 2 + xs * xs / 6)
    direct = _log_neg_expm1(-torch.where(small, 1.0, x))
    return torch.where(small, series, direct)


class _RectifiedGate(Distribution):
    """Sampling, ``log_prob`` on the mixed base measure, atoms and ``expand``.

    Subclasses set ``_params`` (tensor attributes of batch shape) and implement
    :meth:`_stretched` (a sample of the unclamped variable in the compute
    dtype), :meth:`_log_atoms` (log P(z=0), log P(z≠0), log P(z=1)) and
    :meth:`_log_density` (the density of the continuous part at a value in
    [0, 1]).
    """

    support = constraints.unit_interval
    has_rsample = True
    _params: tuple[str, ...] = ()
    # Parameters kept in their own (broadcastable) shape: a scalar temperature
    # stays a scalar, which the sampler divides by without a broadcast pass.
    _shared: tuple[str, ...] = ()
    limits: tuple[float, float]

    @property
    def _dtype(self) -> torch.dtype:
        return getattr(self, self._params[0]).dtype

    def expand(self, batch_shape: _size, _instance=None):
        new = self._get_checked_instance(type(self), _instance)
        batch_shape = torch.Size(batch_shape)
        for name in self._params:
            setattr(new, name, getattr(self, name).expand(batch_shape))
        for name in self._shared:
            setattr(new, name, getattr(self, name))
        new.limits = self.limits
        super(_RectifiedGate, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _stretched(self, shape: torch.Size, generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError  # pragma: no cover

    def _log_atoms(self) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError  # pragma: no cover

    def _log_density(self, v: Tensor) -> Tensor:
        raise NotImplementedError  # pragma: no cover

    def rsample(
        self, sample_shape: _size = torch.Size(), generator: torch.Generator | None = None
    ) -> Tensor:
        """A reparameterised sample: exact 0 and 1 at the atoms, gradient 0 there."""
        s = self._stretched(self._extended_shape(sample_shape), generator)
        # hardtanh is clamp to [0, 1] whose backward is one fused kernel
        # (clamp's builds two masks and a where); both give 0 at the atoms.
        return F.hardtanh(s, 0.0, 1.0).to(self._dtype)

    def sample(
        self, sample_shape: _size = torch.Size(), generator: torch.Generator | None = None
    ) -> Tensor:
        with torch.no_grad():
            z = self.rsample(sample_shape, generator)
        return z.detach() if torch.jit.is_tracing() else z

    def log_prob(self, value: Tensor) -> Tensor:
        """log P(z=0) at 0, log P(z=1) at 1, the log-density of the continuous part between.

        The base measure is Lebesgue measure on (0, 1) plus unit point masses
        at 0 and 1 (see the module docstring).
        """
        if self._validate_args:
            self._validate_sample(value)
        v = value.to(_compute_dtype(value.dtype))
        lp0, _, lp1 = self._log_atoms()
        # The density is evaluated at the value clamped into [0, 1] (finite
        # there), so that the branches not taken keep the gradient finite;
        # clamp passes NaN through.
        inner = self._log_density(v.clamp(0.0, 1.0))
        out = torch.where((v < 0) | (v > 1), -math.inf, inner)
        out = torch.where(v == 1, lp1, out)
        out = torch.where(v == 0, lp0, out)
        return out.to(value.dtype)

    def prob_zero(self) -> Tensor:
        """P(z = 0), in closed form."""
        return self._log_atoms()[0].exp().to(self._dtype)

    def prob_nonzero(self) -> Tensor:
        """P(z ≠ 0) in closed form: the expected L0 norm's term for this gate."""
        return self._log_atoms()[1].exp().to(self._dtype)

    def prob_one(self) -> Tensor:
        """P(z = 1), in closed form."""
        return self._log_atoms()[2].exp().to(self._dtype)

    def _stretch(self, s: Tensor) -> Tensor:
        lo, hi = self.limits
        # l + (r - l) s in one pass.
        return torch.add(torch.full((), lo, dtype=s.dtype, device=s.device), s, alpha=hi - lo)


class HardConcrete(_RectifiedGate):
    r"""Hard Concrete gate (Louizos, Welling & Kingma 2018).

    With logit :math:`\alpha`, temperature :math:`\tau` and limits
    :math:`(l, r)`, :math:`l < 0 < 1 < r`:

    .. math::
        u \sim U(0, 1),\quad s = \sigma\big((\log u - \log(1-u) + \alpha)/\tau\big),\quad
        z = \min(1, \max(0, l + (r - l)\,s)).

    Closed forms (:math:`s` is a Binary Concrete, whose CDF is
    :math:`F(s) = \sigma(\tau\,\mathrm{logit}\,s - \alpha)`):

    .. math::
        P(z \ne 0) = \sigma\big(\alpha - \tau \log(-l/r)\big),\qquad
        P(z = 1) = \sigma\big(\alpha - \tau \log((1-l)/(r-1))\big),

    and for :math:`0 < z < 1`, with :math:`t = \log(z-l) - \log(r-z)`,

    .. math::
        p(z) = \frac{\tau\,\sigma(\tau t - \alpha)\,\sigma(\alpha - \tau t)\,(r - l)}
                    {(z - l)(r - z)}.

    ``log_prob`` returns :math:`\log P(z=0)` at exactly 0, :math:`\log P(z=1)`
    at exactly 1 and :math:`\log p(z)` in between (Lebesgue measure plus unit
    point masses at 0 and 1). :meth:`prob_nonzero` is the L0 penalty.

    Args:
        temperature: :math:`\tau > 0` (the paper's :math:`\beta`, 2/3 there); a
            float or a tensor broadcasting against ``logits``.
        logits: :math:`\alpha = \log\alpha_{\text{paper}}`, a tensor or a number.
        limits: the stretch interval :math:`(l, r)` (the paper's
            :math:`(\gamma, \zeta) = (-0.1, 1.1)`).
        validate_args: as in ``torch.distributions``.
    """

    arg_constraints = {"temperature": constraints.positive, "logits": constraints.real}
    _params = ("logits",)
    _shared = ("temperature",)

    def __init__(
        self,
        temperature: float | Tensor,
        logits: Tensor | float,
        limits: tuple[float, float] = (-0.1, 1.1),
        validate_args: bool | None = None,
    ) -> None:
        lg = _as_param(logits, "logits", temperature)
        tau = as_temperature(temperature, lg)
        batch_shape = torch.broadcast_shapes(lg.shape, tau.shape)
        self.logits = lg.expand(batch_shape)
        self.temperature = tau
        self.limits = _check_limits(limits)
        super().__init__(batch_shape, validate_args=validate_args)

    def _stretched(self, shape: torch.Size, generator: torch.Generator | None) -> Tensor:
        u = uniform(shape, self.logits, generator)
        finfo = torch.finfo(u.dtype)
        # logit(u) = log u - log(1 - u) in one pass; the clamp keeps it finite.
        noise = torch.logit(u.clamp_(finfo.tiny, 1.0 - finfo.eps / 2))
        x = _divide_by_tau(noise.add_(self.logits), self.temperature)
        return self._stretch(torch.sigmoid(x))

    def _log_atoms(self) -> tuple[Tensor, Tensor, Tensor]:
        lo, hi = self.limits
        cdt = _compute_dtype(self._dtype)
        alpha, tau = self.logits.to(cdt), self.temperature.to(cdt)
        nonzero = alpha - tau * math.log(-lo / hi)
        one = alpha - tau * math.log((1.0 - lo) / (hi - 1.0))
        return F.logsigmoid(-nonzero), F.logsigmoid(nonzero), F.logsigmoid(one)

    def _log_density(self, v: Tensor) -> Tensor:
        lo, hi = self.limits
        alpha, tau = self.logits.to(v.dtype), self.temperature.to(v.dtype)
        a, b = torch.log(v - lo), torch.log(hi - v)
        x = tau * (a - b) - alpha
        return tau.log() + F.logsigmoid(x) + F.logsigmoid(-x) - a - b + math.log(hi - lo)


class HardKumaraswamy(_RectifiedGate):
    r"""HardKuma gate (Bastings, Aziz & Titov 2019): a stretched, rectified Kumaraswamy.

    .. math::
        u \sim U(0, 1),\quad k = \big(1 - u^{1/b}\big)^{1/a} \sim \mathrm{Kuma}(a, b),\quad
        z = \min(1, \max(0, l + (r - l)\,k)),

    (``u`` and ``1 - u`` have the same law; torch's ``Kumaraswamy`` samples the
    same way). With the Kumaraswamy CDF :math:`F(x) = 1 - (1 - x^a)^b`,
    :math:`x_0 = -l/(r-l)` and :math:`x_1 = (1-l)/(r-l)`:

    .. math::
        P(z \ne 0) = (1 - x_0^a)^b,\qquad P(z = 0) = 1 - (1 - x_0^a)^b,\qquad
        P(z = 1) = (1 - x_1^a)^b,

    and for :math:`0 < z < 1`, with :math:`k = (z - l)/(r - l)`,

    .. math:: p(z) = \frac{a b\, k^{a-1} (1 - k^a)^{b-1}}{r - l}.

    ``log_prob`` returns :math:`\log P(z=0)` at exactly 0, :math:`\log P(z=1)`
    at exactly 1 and :math:`\log p(z)` in between (Lebesgue measure plus unit
    point masses at 0 and 1). All are computed in log space
    (:math:`\log(1 - x^a) = \log(-\mathrm{expm1}(a \log x))`), so they stay
    finite where :math:`x^a` underflows or rounds to 1.

    Args:
        a, b: Kumaraswamy shapes (``concentration1``, ``concentration0`` of
            ``torch.distributions.Kumaraswamy``), positive tensors or numbers.
        limits: the stretch interval :math:`(l, r)`, :math:`l < 0 < 1 < r`.
        validate_args: as in ``torch.distributions``.
    """

    arg_constraints = {"a": constraints.positive, "b": constraints.positive}
    _params = ("a", "b")

    def __init__(
        self,
        a: Tensor | float,
        b: Tensor | float,
        limits: tuple[float, float] = (-0.1, 1.1),
        validate_args: bool | None = None,
    ) -> None:
        a_t, b_t = _as_param(a, "a", b), _as_param(b, "b", a)
        self.a, self.b = broadcast_all(a_t, b_t)
        self.limits = _check_limits(limits)
        super().__init__(self.a.shape, validate_args=validate_args)

    @property
    def kumaraswamy(self) -> Kumaraswamy:
        """The unstretched Kumaraswamy(a, b) on (0, 1), as torch's class."""
        return Kumaraswamy(self.a, self.b, validate_args=False)

    def _stretched(self, shape: torch.Size, generator: torch.Generator | None) -> Tensor:
        u = uniform(shape, self.a, generator)
        finfo = torch.finfo(u.dtype)
        log_u = u.clamp_(finfo.tiny, 1.0 - finfo.eps / 2).log_()
        cdt = u.dtype
        a, b = self.a.to(cdt), self.b.to(cdt)
        # k = (1 - u^(1/b))^(1/a) in log space: 1 - u^(1/b) = -expm1(log(u) / b).
        k = torch.exp(torch.log(-torch.expm1(log_u / b)) / a)
        return self._stretch(k)

    def _log_atoms(self) -> tuple[Tensor, Tensor, Tensor]:
        lo, hi = self.limits
        cdt = _compute_dtype(self._dtype)
        a, b = self.a.to(cdt), self.b.to(cdt)
        log_x0 = math.log(-lo / (hi - lo))
        log_x1 = math.log((1.0 - lo) / (hi - lo))
        # log P(z≠0) = b log(1 - x0^a); log P(z=0) from log(-log P(z≠0)),
        # which stays accurate where P(z≠0) rounds to 1.
        log1m_x0a = _log_neg_expm1(a * log_x0)
        nonzero = b * log1m_x0a
        lp = a * log_x0  # log x0^a
        p = lp.exp()
        small = p < 1e-5
        ps = torch.where(small, p, 0.0)
        # -log(1 - p) = p (1 + p/2 + ...) for small p; otherwise log(-log1m).
        log_neg_log1m = torch.where(
            small,
            lp + torch.log1p(ps / 2),
            torch.log(-torch.where(small, -1.0, log1m_x0a)),
        )
        zero = _log1m_exp_neg_exp(b.log() + log_neg_log1m)
        one = b * _log_neg_expm1(a * log_x1)
        return zero, nonzero, one

    def _log_density(self, v: Tensor) -> Tensor:
        lo, hi = self.limits
        a, b = self.a.to(v.dtype), self.b.to(v.dtype)
        log_k = torch.log(v - lo) - math.log(hi - lo)
        return (
            a.log()
            + b.log()
            + (a - 1) * log_k
            + (b - 1) * _log_neg_expm1(a * log_k)
            - math.log(hi - lo)
        )


class GaussianRelaxedBernoulli(_RectifiedGate):
    r"""Stochastic gate (Yamada, Lindenbaum, Negahban & Kluger 2020): a clamped Gaussian.

    .. math::
        \epsilon \sim N(0, 1),\quad z = \min(1, \max(0, \mu + \sigma\epsilon)),

    .. math::
        P(z \ne 0) = \Phi(\mu/\sigma),\quad P(z = 0) = \Phi(-\mu/\sigma),\quad
        P(z = 1) = \Phi((\mu - 1)/\sigma),\quad
        p(z) = \frac{1}{\sigma}\varphi\Big(\frac{z - \mu}{\sigma}\Big)\ (0 < z < 1).

    ``loc`` is the paper's :math:`\mu_d` (Eq. 4, regulariser
    :math:`\sum_d \Phi(\mu_d/\sigma)`). The authors' code (runopti/stg) keeps a
    parameter shifted by 1/2, gate ``clamp(mu + 0.5 + sigma * eps, 0, 1)``:
    its ``mu`` is ``loc - 0.5`` here. ``scale`` is :math:`\sigma` (0.5 in the
    paper), the gate's temperature in effect. ``log_prob`` returns
    :math:`\log P(z=0)` at exactly 0, :math:`\log P(z=1)` at exactly 1 and the
    log-density in between (Lebesgue measure plus unit point masses at 0 and 1).

    Args:
        loc: :math:`\mu`, a tensor or a number.
        scale: :math:`\sigma > 0`, a tensor or a number (default 0.5).
        validate_args: as in ``torch.distributions``.

    ``limits`` is (0, 1): there is no stretch, the Gaussian's support already
    covers both ends.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    _params = ("loc", "scale")

    def __init__(
        self,
        loc: Tensor | float,
        scale: Tensor | float = 0.5,
        validate_args: bool | None = None,
    ) -> None:
        loc_t, scale_t = _as_param(loc, "loc", scale), _as_param(scale, "scale", loc)
        if not isinstance(scale, Tensor) and not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"scale must be positive and finite, got scale={scale}")
        self.loc, self.scale = broadcast_all(loc_t, scale_t)
        self.limits = (0.0, 1.0)
        super().__init__(self.loc.shape, validate_args=validate_args)

    def _stretched(self, shape: torch.Size, generator: torch.Generator | None) -> Tensor:
        cdt = _compute_dtype(self._dtype)
        eps = torch.randn(shape, dtype=cdt, device=self.loc.device, generator=generator)
        return self.loc.to(cdt) + self.scale.to(cdt) * eps

    def _log_atoms(self) -> tuple[Tensor, Tensor, Tensor]:
        cdt = _compute_dtype(self._dtype)
        loc, scale = self.loc.to(cdt), self.scale.to(cdt)
        w = loc / scale
        ndtr = torch.special.log_ndtr
        return ndtr(-w), ndtr(w), ndtr((loc - 1) / scale)

    def _log_density(self, v: Tensor) -> Tensor:
        loc, scale = self.loc.to(v.dtype), self.scale.to(v.dtype)
        w = (v - loc) / scale
        return -0.5 * w * w - scale.log() - 0.5 * math.log(2 * math.pi)
