r"""The Concrete (Gumbel-Softmax) distribution and its log-space form, ExpConcrete.

Maddison, Mnih & Teh 2017, "The Concrete Distribution: A Continuous Relaxation
of Discrete Random Variables"; Jang, Gu & Poole 2017, "Categorical
Reparameterization with Gumbel-Softmax".

With :math:`\pi = \mathrm{softmax}(\theta)`, :math:`C` categories and
temperature :math:`\tau`, a sample is

.. math:: x = \mathrm{log\_softmax}((\theta + G)/\tau) \quad\text{(ExpConcrete)},
          \qquad y = e^{x} = \mathrm{softmax}((\theta + G)/\tau) \quad\text{(Concrete)}.

Densities (closed form):

.. math::
    \log p_{\mathrm{Exp}}(x) &= \log\Gamma(C) + (C-1)\log\tau
        + \sum_k (\log\pi_k - \tau x_k) - C \log\sum_i e^{\log\pi_i - \tau x_i}, \\
    \log p(y) &= \log p_{\mathrm{Exp}}(\log y) - \sum_k \log y_k
        = \log\Gamma(C) + (C-1)\log\tau - C\log\sum_i \pi_i y_i^{-\tau}
          + \sum_k (\log\pi_k - (\tau+1)\log y_k).

``Concrete.log_prob`` is a density w.r.t. Lebesgue measure on the first
:math:`C-1` coordinates of the simplex (for :math:`C=2` it is the Binary
Concrete density of :math:`y_1`). ``ExpConcrete.log_prob`` is Maddison et al.'s
formula, as in ``torch.distributions.ExpRelaxedCategorical``: a density w.r.t.
the symmetric measure :math:`\prod_{k \ne j} dx_k / y_j` on the log-simplex (any
:math:`j` gives the same measure). It integrates to 1 against that measure, not
against :math:`dx_1\cdots dx_{C-1}`; in a KL or a likelihood ratio between two
ExpConcretes the base measure cancels.

Temperatures broadcast against the logits as tensors (torch's convention): a
per-row temperature has shape ``[n, 1]``. Unlike
``torch.distributions.RelaxedOneHotCategorical`` (torch issue #37162), the batch
shape includes the temperature's and ``log_prob`` has shape
``sample_shape + batch_shape``.

Masked categories (``-inf`` logits, zero probabilities) are supported: they are
never sampled and the density is that of the Concrete over the remaining
categories.

Low temperatures: ``log_prob`` is a pure, differentiable function of its value,
as in every ``torch.distributions`` class. The price is paid at low temperature:
coordinates of a Concrete sample underflow to exact 0 (at :math:`\tau = 10^{-2}`
most of them do in float32), and ``Concrete.log_prob`` evaluates such a value at
distance ``tiny`` (the dtype's smallest normal number) from the boundary, a
finite stand-in for a density that is 0 or infinite there, not the density of
the sample that was drawn. For densities at low temperature (a relaxed KL term,
a likelihood ratio) sample and evaluate in log space with :class:`ExpConcrete`,
whose samples are ``log_softmax`` outputs and never underflow.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints
from torch.distributions.utils import lazy_property
from torch.types import _size

from discograd.distributions._utils import as_temperature, check_params, clamped_log, simplex
from discograd.functional import _compute_dtype, _divide_by_tau, _perturbed, _softmax_last

__all__ = ["Concrete", "ExpConcrete"]


class _RelaxedCategorical(Distribution):
    """Parameters, shapes and sampling shared by Concrete and ExpConcrete."""

    arg_constraints = {
        "temperature": constraints.positive,
        "probs": constraints.simplex,
        "logits": constraints.real_vector,
    }
    has_rsample = True

    def __init__(
        self,
        temperature: float | Tensor,
        probs: Tensor | None = None,
        logits: Tensor | None = None,
        validate_args: bool | None = None,
    ) -> None:
        param = check_params(probs, logits)
        if param.dim() < 1:
            raise ValueError(
                f"probs/logits need a category dimension, got shape {tuple(param.shape)}"
            )
        tau = as_temperature(temperature, param)
        if tau.dim() > 0 and tau.shape[-1] != 1:
            raise ValueError(
                "temperature must be a scalar or broadcast over categories with a trailing "
                f"dimension of size 1 (e.g. shape [n, 1] for one per row), got shape "
                f"{tuple(tau.shape)}"
            )
        C = param.shape[-1]
        batch_shape = torch.broadcast_shapes(param.shape[:-1], tau.shape[:-1])
        if probs is not None:
            self.probs = (probs / probs.sum(-1, keepdim=True)).expand(batch_shape + (C,))
        else:
            assert logits is not None
            # Normalised only when .logits is read: sampling is shift-invariant
            # and skips the logsumexp (and its backward pass) altogether.
            self._raw_logits = logits
        self.temperature = tau
        self._dtype = param.dtype
        # A number temperature is also kept as a number (rounded like the tensor):
        # sampling then needs no tensor division at tau = 1, no device read ever.
        # (Not while tracing: the tensor is the trace's constant, the number a warning.)
        self._tau_number = (
            None
            if isinstance(temperature, Tensor) or torch.jit.is_tracing()
            else float(torch.tensor(float(temperature), dtype=param.dtype))
        )
        super().__init__(batch_shape, torch.Size([C]), validate_args=validate_args)
        if logits is not None and self._validate_args:
            # torch skips lazy parameters when validating; the raw logits are checked here.
            valid = constraints.real_vector.check(logits)
            if not bool(valid.all()):
                raise ValueError(
                    f"Expected parameter logits ({type(logits).__name__} of shape "
                    f"{tuple(logits.shape)}) of distribution {self!r} to satisfy the "
                    f"constraint real_vector (no NaN), but found invalid values:\n{logits}"
                )

    @lazy_property
    def logits(self) -> Tensor:
        raw = self.__dict__.get("_raw_logits")
        if raw is not None:
            return (raw - raw.logsumexp(-1, keepdim=True)).expand(self.param_shape)
        p = self.probs
        positive = p > 0
        # The inner where keeps d log(p)/dp finite where p = 0 (a masked category).
        return torch.where(positive, torch.where(positive, p, 1.0).log(), -torch.inf)

    @lazy_property
    def probs(self) -> Tensor:
        return self.logits.softmax(-1)

    @property
    def param_shape(self) -> torch.Size:
        return self.batch_shape + self.event_shape

    def expand(self, batch_shape: _size, _instance=None):
        new = self._get_checked_instance(type(self), _instance)
        batch_shape = torch.Size(batch_shape)
        param_shape = batch_shape + self.event_shape
        if "probs" in self.__dict__:
            new.probs = self.probs.expand(param_shape)
        if "logits" in self.__dict__:
            new.logits = self.logits.expand(param_shape)
        if "_raw_logits" in self.__dict__:
            new._raw_logits = self._raw_logits
        new.temperature = self.temperature
        new._dtype = self._dtype
        new._tau_number = self._tau_number
        super(_RelaxedCategorical, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def rsample(
        self, sample_shape: _size = torch.Size(), generator: torch.Generator | None = None
    ) -> Tensor:  # pragma: no cover - each subclass returns its own kind of sample
        raise NotImplementedError

    def sample(
        self, sample_shape: _size = torch.Size(), generator: torch.Generator | None = None
    ) -> Tensor:
        with torch.no_grad():
            y = self.rsample(sample_shape, generator)
        # A trace does not record no_grad: detach, so that a graph traced on
        # parameters without grad still returns a sample without grad.
        return y.detach() if torch.jit.is_tracing() else y

    @property
    def _tau_batch(self) -> Tensor:
        """The temperature with the category dimension dropped (broadcasts to batch)."""
        tau = self.temperature
        return tau[..., 0] if tau.dim() > 0 else tau

    def _tempered_scores(self, sample_shape: _size, generator: torch.Generator | None) -> Tensor:
        r""":math:`(\theta + G)/\tau` in the compute dtype."""
        # Unnormalised logits when we have them: softmax((θ + c + G)/τ) is the same sample.
        theta = self.__dict__.get("_raw_logits")
        theta = self.logits if theta is None else theta
        scores = _perturbed(theta, generator, self._extended_shape(sample_shape))
        tau = self.temperature if self._tau_number is None else self._tau_number
        return _divide_by_tau(scores, tau)

    def _log_rsample(self, sample_shape: _size, generator: torch.Generator | None) -> Tensor:
        """An ExpConcrete sample in the compute dtype."""
        return torch.log_softmax(self._tempered_scores(sample_shape, generator), -1)

    def _exp_log_prob(self, x: Tensor) -> Tensor:
        """Maddison et al.'s ExpConcrete log-density at log-coordinates ``x``."""
        cdt = _compute_dtype(x.dtype)
        x = x.to(cdt)
        logits = self.logits.to(cdt)
        finite = logits > -torch.inf
        tau = self.temperature.to(cdt)
        # Sanitise masked entries before the arithmetic, so no -inf - (-inf)
        # reaches autograd.
        s = torch.where(finite, logits, 0.0) - tau * torch.where(finite, x, 0.0)
        n = finite.sum(-1).to(x.dtype)
        out = (
            torch.where(finite, s, 0.0).sum(-1)
            - n * torch.where(finite, s, -torch.inf).logsumexp(-1)
            + torch.lgamma(n)
            + (n - 1) * self._tau_batch.to(cdt).log()
        )
        # Mass on a masked category: outside the support.
        outside = (~finite & (x > -torch.inf)).any(-1)
        return out.masked_fill(outside, -torch.inf)


class ExpConcrete(_RelaxedCategorical):
    r"""The log of a Concrete sample: :math:`x = \mathrm{log\_softmax}((\theta + G)/\tau)`.

    Numerically stable at any temperature (samples are log-softmax outputs, the
    density never exponentiates them), hence the form to use for relaxed KL terms
    at low temperature (Maddison et al. 2017, Appendix C).

    Args:
        temperature: :math:`\tau > 0`; a float or a tensor broadcasting against
            ``logits`` (shape ``[..., 1]``).
        probs: event probabilities (normalised along the last dimension).
        logits: unnormalised log-probabilities; ``-inf`` masks a category.
        validate_args: as in ``torch.distributions``.

    ``log_prob`` implements the closed form in this module's docstring.
    """

    support = constraints.real_vector

    def rsample(
        self, sample_shape: _size = torch.Size(), generator: torch.Generator | None = None
    ) -> Tensor:
        return self._log_rsample(sample_shape, generator).to(self._dtype)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return self._exp_log_prob(value).to(value.dtype)


class Concrete(_RelaxedCategorical):
    r"""Concrete / Gumbel-Softmax on the simplex: :math:`y = \mathrm{softmax}((\theta + G)/\tau)`.

    The relaxation of ``OneHotCategorical(logits=θ)``: ``argmax y`` is an exact
    categorical sample at every temperature, and :math:`y \to` one-hot as
    :math:`\tau \to 0`. The density is log-convex for :math:`\tau \le 1/(C-1)`.

    Args:
        temperature: :math:`\tau > 0`; a float or a tensor broadcasting against
            ``logits`` (shape ``[..., 1]``).
        probs: event probabilities (normalised along the last dimension).
        logits: unnormalised log-probabilities; ``-inf`` masks a category.
        validate_args: as in ``torch.distributions``.

    ``log_prob`` implements the closed form
    :math:`p(y) = \Gamma(C)\,\tau^{C-1} (\sum_i \pi_i y_i^{-\tau})^{-C} \prod_k \pi_k y_k^{-\tau-1}`
    in log space, as a pure function of the value (differentiable in it, like
    torch's ``RelaxedOneHotCategorical``). Trade-off at low temperature: a
    coordinate of a sample that underflowed to 0 is read as ``tiny`` (the
    dtype's smallest normal number), so ``log_prob`` of such a sample is
    finite but is not its density; use :class:`ExpConcrete` (samples and
    densities in log space) for low-temperature densities.
    """

    support = simplex

    def rsample(
        self, sample_shape: _size = torch.Size(), generator: torch.Generator | None = None
    ) -> Tensor:
        return _softmax_last(self._tempered_scores(sample_shape, generator)).to(self._dtype)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        cdt = _compute_dtype(value.dtype)
        finite = self.logits > -torch.inf
        # A zero coordinate of a category that can occur is read as "tiny" (of
        # the value's dtype): the density there is 0 or infinite, and a finite
        # stand-in is more useful. A masked category enters as log 0 = -inf, or
        # finite where it holds mass (outside the support), without gradient.
        log_y = clamped_log(torch.where(finite, value, 1.0), torch.finfo(value.dtype).tiny, cdt=cdt)
        x = torch.where(finite, log_y, value.detach().to(cdt).log())
        out = self._exp_log_prob(x) - torch.where(finite, x, 0.0).sum(-1)
        return out.to(value.dtype)
