r"""The estimator contract: :class:`Estimator`, :class:`Estimate`, and :class:`Latent`.

Problem: :math:`L(\theta) = \mathbb E_{z \sim q_\theta}[f(z)]` with ``q`` a
``Bernoulli``, ``Categorical``, ``OneHotCategorical`` or an ``Independent`` of
one of them (several latent variables sharing one cost).

Calling convention::

    out = estimator(f, q)            # an Estimate
    out.loss.mean().backward()       # d loss / d theta is the gradient estimate

``f`` maps samples of shape ``S + q.batch_shape + var_shape (+ (C,))`` to costs of
shape ``S + q.batch_shape``, for any leading sample shape ``S``. Categorical
variables reach ``f`` one-hot encoded (a trailing dimension of size ``C``, also
for index-valued ``Categorical``), relaxed estimators pass points of the
simplex instead; Bernoulli variables reach it as 0./1. floats (relaxed: values
in [0, 1]). ``var_shape`` is the part of ``q.event_shape`` that counts
variables: ``Independent(Categorical(logits[B, D, C]), 1)`` has ``var_shape = (D,)``
and ``f`` sees ``S + (B, D, C)``.

Every ``Estimate.loss`` is a *surrogate*: its value equals ``Estimate.value`` (the
Monte-Carlo estimate of E[f], handy for logging) and its gradient with respect
to the distribution's parameters is the estimator. Gradients also reach
parameters inside ``f`` and any use of the parameters inside ``f`` (an entropy or
``log q`` term) by ordinary autograd.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import (
    Bernoulli,
    Categorical,
    Distribution,
    Independent,
    OneHotCategorical,
)

from discograd.estimators._ops import compute_dtype, is_compiling, one_hot, open_uniform, perturbed
from discograd.schedules import Schedule

__all__ = ["CostFn", "Estimate", "Estimator", "Kind", "Latent", "Tempered"]

CostFn = Callable[[Tensor], Tensor]
#: The two kinds of discrete variables: ``Estimator.supports`` is a set of them.
Kind = Literal["bernoulli", "categorical"]


@dataclass
class Estimate:
    """What an estimator returns.

    Attributes:
        loss: the surrogate, shape ``q.batch_shape``. Its gradient is the
            gradient estimate; its value equals ``value``.
        value: detached Monte-Carlo estimate of :math:`\\mathbb E_q[f]`, shape
            ``q.batch_shape``.
        n_evals: evaluations of ``f`` per data point (one evaluation = ``f`` on
            one configuration of all variables of one data point). A number
            when it is the same for every data point, else a tensor of shape
            ``q.batch_shape``.
        cv_loss: for estimators with trainable control variates (baselines,
            REBAR, RELAX): a scalar whose gradient trains them to lower the
            estimator's variance; ``None`` otherwise. No gradient of ``loss``
            reaches those parameters.
    """

    loss: Tensor
    value: Tensor
    n_evals: float | Tensor
    cv_loss: Tensor | None = None

    @property
    def mean_evals(self) -> float:
        """``n_evals`` averaged over data points."""
        n = self.n_evals
        return float(n.float().mean()) if isinstance(n, Tensor) else float(n)


_SUPPORTED = "Bernoulli, Categorical, OneHotCategorical, or Independent of one of them"
#: The distributions a Latent wraps (alone or inside Independent).
_Base = Bernoulli | Categorical | OneHotCategorical


def _given_probs(base: _Base) -> bool:
    """Whether ``base`` was built from ``probs=`` (its ``logits`` are then a clamped stand-in)."""
    inner = base._categorical if isinstance(base, OneHotCategorical) else base
    probs = inner.__dict__.get("probs")
    return probs is not None and getattr(inner, "_param", None) is probs


def _canonical_logits(base: _Base, kind: Kind) -> tuple[Tensor, bool]:
    r"""Exact logits of ``base``: ``-inf`` where a probability is 0 (``+inf`` where a
    Bernoulli probability is 1), normalised for categorical variables.

    torch derives ``logits`` from ``probs`` through a clamp at the dtype's eps,
    so a probability of exactly 0 becomes a finite logit (-6.9 in float16,
    -15.9 in float32) and is sampled; here it becomes the mask it is. Invalid
    parameters (NaN, a ``+inf`` categorical logit, a row with every category
    masked, probabilities outside [0, 1]) raise ``ValueError``: with
    ``validate_args=False`` torch accepts them, and they would otherwise turn
    into silently wrong samples and expectations.

    Also returns whether every logit is known to be finite (no masked category,
    no deterministic variable), which lets the surrogates skip their masking.
    """
    if _given_probs(base):
        p = base.probs
        pc = p.to(compute_dtype(p.dtype))
        _check_params(pc, "probs", base, kind)
        positive = pc > 0
        # The inner where keeps d log(p)/dp finite where p = 0 (never selected).
        if kind == "categorical":
            logits = torch.where(positive, torch.where(positive, pc, 1.0).log(), -math.inf)
        else:
            inside = positive & (pc < 1)
            ps = torch.where(inside, pc, 0.5)
            certain = torch.where(pc > 0.5, math.inf, -math.inf)  # constant: no gradient
            logits = torch.where(inside, ps.log() - torch.log1p(-ps), certain)
        return logits.to(p.dtype), False
    logits = base.logits
    return logits, _check_params(logits, "logits", base, kind)


def _invalid(x: Tensor, name: str, kind: Kind) -> Tensor:
    """Where the parameter is invalid. Categorical logits are normalised by torch:
    NaN, +inf and all-masked rows all come out as NaN. A Bernoulli logit may be
    ±inf (a deterministic variable)."""
    if name == "logits":
        return torch.isnan(x)
    return ~((x >= 0) & (x <= 1)) if kind == "bernoulli" else ~(x >= 0)  # NaN: invalid


def _check_params(x: Tensor, name: str, base: Distribution, kind: Kind) -> bool:
    """``ValueError`` naming the parameter if any entry of ``x`` is invalid; returns
    whether every entry is finite, where that comes for free (else ``False``).

    The common case costs one vectorised reduction: the sum of valid logits is
    not NaN (unless ``+inf`` and ``-inf`` Bernoulli logits meet, when the exact
    check runs), and valid probabilities have ``min >= 0`` (``max <= 1``). On
    CUDA reading the result synchronises with the device once per call. Under
    ``torch.compile`` the check is an in-graph assertion (``RuntimeError``),
    which does not break the graph.
    """
    x = x.detach()  # no autograd nodes for a check
    if is_compiling():
        ok = ~_invalid(x, name, kind).any()
        torch._assert_async(ok, f"invalid {name} of {type(base).__name__}")
        return False
    if name == "logits":
        total = float(x.sum())  # finite iff every logit is (barring overflow)
        if not math.isnan(total):
            return math.isfinite(total)
    elif kind == "categorical":
        if bool(x.amin() >= 0):  # amin propagates NaN
            return False
    elif bool((x.amin() >= 0) & (x.amax() <= 1)):
        return False
    bad = _invalid(x, name, kind)
    if not bool(bad.any()):
        return False
    at = tuple(bad.nonzero()[0].tolist())
    if name == "probs":
        rule = "a number in [0, 1]" if kind == "bernoulli" else "non-negative, not NaN"
        found = f"found {float(x[at])!r} at index {at}"
    elif kind == "bernoulli":
        rule, found = "a number or ±inf (not NaN)", f"found NaN at index {at}"
    else:
        rule = (
            "a real number or -inf (a masked category), with at least one finite entry per "
            "row; NaN and +inf are refused"
        )
        found = f"row {at[:-1]} has NaN, +inf or every category masked"
    raise ValueError(
        f"invalid {name} of {type(base).__name__} (validate_args=False lets torch accept "
        f"them): each entry must be {rule}; {found}"
    )


class Latent:
    """A supported discrete distribution in canonical form.

    Attributes:
        q: the distribution as given.
        kind: ``"bernoulli"`` or ``"categorical"``.
        logits: Bernoulli: shape ``batch_shape + var_shape``. Categorical: shape
            ``batch_shape + var_shape + (C,)``, normalised log-probabilities
            (``-inf`` for masked categories). Gradients flow to ``q``'s parameters.
        batch_shape: ``q.batch_shape``; each entry is a data point with its own cost.
        var_shape: shape of the latent variables that share one cost.
        num_categories: ``C`` (2 for Bernoulli variables).
    """

    def __init__(
        self,
        q: Distribution,
        kind: Kind,
        logits: Tensor,
        batch_shape: torch.Size,
        base_type: type[_Base] | None = None,
    ):
        self.q = q
        self.base_type: type[_Base] = base_type or (
            Bernoulli if kind == "bernoulli" else Categorical
        )
        self.kind: Kind = kind
        self.logits = logits
        self.batch_shape = batch_shape
        var_end = logits.dim() - (1 if kind == "categorical" else 0)
        self.var_shape = logits.shape[len(batch_shape) : var_end]
        self.num_categories = logits.shape[-1] if kind == "categorical" else 2
        #: every logit is known to be finite (no masked category, no deterministic
        #: variable); False when unknown. Lets surrogates skip their masking.
        self.finite = False

    # ------------------------------------------------------------------ parsing
    @classmethod
    def parse(cls, q: object, owner: str = "this estimator") -> Latent:
        """Canonicalise ``q``; ``TypeError`` naming ``q``'s type if unsupported."""
        if not isinstance(q, Distribution):
            raise TypeError(
                f"{owner} expects a torch.distributions object ({_SUPPORTED}), "
                f"got {type(q).__name__}"
            )
        found: Distribution = q
        while isinstance(found, Independent):
            found = found.base_dist
        if type(found) is Bernoulli:
            kind: Kind = "bernoulli"
        elif type(found) in (Categorical, OneHotCategorical):
            kind = "categorical"
        else:
            inner = f" of {type(found).__name__}" if found is not q else ""
            raise TypeError(
                f"{owner} does not support {type(q).__name__}{inner}; supported: {_SUPPORTED}"
            )
        base = cast(_Base, found)
        logits, finite = _canonical_logits(base, kind)
        # Independent reinterprets trailing batch dims as variables; expand so
        # the logits carry the full batch + variable shape.
        var_shape = base.batch_shape[len(q.batch_shape) :]
        full = q.batch_shape + var_shape + (logits.shape[-1:] if kind == "categorical" else ())
        if logits.shape != full:  # a no-op expand would still add an autograd node
            logits = logits.expand(full)
        latent = cls(q, kind, logits, q.batch_shape, type(base))
        latent.finite = finite
        return latent

    def rebuild(self, logits: Tensor) -> Distribution:
        """A distribution of ``q``'s type with these logits (extra leading batch dims allowed)."""
        base = self.base_type(logits=logits, validate_args=False)
        n = len(self.var_shape)
        return Independent(base, n, validate_args=False) if n else base

    # ----------------------------------------------------------------- geometry
    @property
    def n_vars(self) -> int:
        return math.prod(self.var_shape)

    @property
    def dtype(self) -> torch.dtype:
        return self.logits.dtype

    @property
    def device(self) -> torch.device:
        return self.logits.device

    def support_size(self) -> int:
        """Number of joint configurations of the variables of one data point."""
        return self.num_categories**self.n_vars

    def index_shape(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Size:
        """Shape of a tensor of configurations: ``S + batch_shape + var_shape``."""
        return torch.Size(sample_shape) + self.batch_shape + self.var_shape

    # ----------------------------------------------------------------- sampling
    def sample(
        self,
        sample_shape: torch.Size | tuple[int, ...] = (),
        generator: torch.Generator | None = None,
        *,
        probs: Tensor | None = None,
    ) -> Tensor:
        """Exact samples as configurations ``S + batch_shape + var_shape``.

        Categorical: int64 category indices (Gumbel-max). Bernoulli: 0./1. floats,
        ``u < σ(θ)`` with ``u`` uniform in the compute dtype (below 1); ``probs`` is that
        σ(θ) when the caller has formed it already (detached, in the compute
        dtype, any shape with ``batch_shape + var_shape``'s elements): the same
        draw without a second sigmoid.
        """
        shape = self.index_shape(sample_shape)
        logits = self.logits.detach()
        cdt = compute_dtype(logits.dtype)
        if self.kind == "categorical":
            return perturbed(logits, generator, shape + (self.num_categories,)).argmax(-1)
        if probs is None:
            probs = torch.sigmoid(logits.to(cdt))
        else:
            probs = probs.reshape(self.index_shape(()))
        # Clamped below 1: a backend whose uniforms include 1 would otherwise draw 0
        # where σ(θ) = 1 (a +inf logit).
        u = open_uniform(shape, cdt, self.device, generator)
        return (u < probs).to(logits.dtype)

    def encode(self, z: Tensor) -> Tensor:
        """Configurations to ``f``'s input: one-hot floats (categorical), floats (Bernoulli)."""
        if self.kind == "categorical":
            return one_hot(z, self.num_categories, self.dtype)
        return z.to(self.dtype)

    def log_prob(self, z: Tensor) -> Tensor:
        """Joint :math:`\\log q(z)` of configurations ``S + batch + var``: shape ``S + batch``."""
        lp = self.log_prob_vars(z)
        n = len(self.var_shape)
        if n <= 1:
            return lp.sum(-1) if n else lp
        return lp.flatten(-n).sum(-1)

    def log_prob_vars(self, z: Tensor) -> Tensor:
        """Per-variable :math:`\\log q(z_v)` of configurations: shape ``S + batch + var``.

        ``-inf`` exactly where a value is impossible (a masked category, the
        other value of a Bernoulli variable whose logit is ``±inf``); finite,
        with finite gradients, everywhere else.
        """
        if self.kind == "categorical":
            logits = self.logits.expand(z.shape + (self.num_categories,))
            return logits.gather(-1, z.unsqueeze(-1)).squeeze(-1)
        theta = self.logits.expand(z.shape)
        if self.finite and z.dtype == theta.dtype:
            # One fused op forward and backward; the same log σ(±θ) for finite θ.
            return -F.binary_cross_entropy_with_logits(theta, z, reduction="none")
        # log σ(±θ) by one where and one logsigmoid: exact for θ = ±inf (0 or -inf,
        # with a finite gradient), unlike -binary_cross_entropy_with_logits (NaN).
        return F.logsigmoid(torch.where(z > 0.5, theta, -theta))

    def likely(self) -> Tensor:
        """A possible configuration of every data point, ``batch + var``: each variable's
        most probable value (the certain one of a deterministic variable)."""
        if self.kind == "categorical":
            return self.logits.detach().argmax(-1)
        return (self.logits.detach() > 0).to(self.dtype)

    def enumerate_support(self) -> Tensor:
        """All joint configurations: shape ``(N,) + batch_shape + var_shape``."""
        N, V, C = self.support_size(), self.n_vars, self.num_categories
        codes = torch.arange(N, device=self.device)
        powers = C ** torch.arange(V - 1, -1, -1, device=self.device)
        digits = (codes.unsqueeze(-1) // powers) % C  # (N, V), most significant first
        z = digits.reshape((N,) + (1,) * len(self.batch_shape) + self.var_shape)
        z = z.expand((N,) + self.batch_shape + self.var_shape)
        return z if self.kind == "categorical" else z.to(self.dtype)

    # ------------------------------------------------------------------ costs
    @contextlib.contextmanager
    def relaxed_evaluation(self) -> Iterator[None]:
        r"""Evaluate ``f`` on relaxed points (values between the categories) inside this.

        A negative ELBO is written ``f(z) = q.log_prob(z) - log p(x, z)``. On a
        relaxed point torch's argument validation rejects the value ("not within
        the support") and ``OneHotCategorical.log_prob`` reads only its arg max.
        Inside this context:

        * validation is off for ``q`` and the distributions it wraps, and for
          every distribution that follows torch's default (a prior built
          inside ``f`` or before it without ``validate_args=``); the default is
          process-wide while the context lasts;
        * ``log_prob`` of ``q``'s one-hot categorical variables is the
          continuous extension :math:`\sum_k y_k \log \pi_k` (torch's
          Bernoulli ``log_prob`` already is :math:`y\log p + (1 - y)\log(1-p)`),
          which is what REBAR evaluates (Tucker et al. 2017, §3).

        Everything is restored on exit, also on error.
        """
        chain: list[Distribution] = []
        d: Distribution = self.q
        while True:
            chain.append(d)
            if isinstance(d, Independent):
                d = d.base_dist
            elif isinstance(d, OneHotCategorical):
                d = d._categorical
            else:
                break
        missing = object()
        saved = [(x, x.__dict__.get("_validate_args", missing)) for x in chain]
        patched = [x for x in chain if type(x) is OneHotCategorical]
        default = Distribution._validate_args
        try:
            Distribution.set_default_validate_args(False)
            for x in chain:
                x._validate_args = False
            for x in patched:
                x.log_prob = _continuous_log_prob(x)  # type: ignore[method-assign]
            yield
        finally:
            Distribution.set_default_validate_args(default)
            for x, old in saved:
                if old is missing:
                    x.__dict__.pop("_validate_args", None)
                else:
                    x._validate_args = old
            for x in patched:
                x.__dict__.pop("log_prob", None)

    def call_f(self, f: CostFn, x: Tensor, sample_shape: torch.Size | tuple[int, ...]) -> Tensor:
        """Evaluate ``f`` on inputs with leading ``sample_shape``; check its output.

        Integer and bool costs (counts, rewards, accuracies) are promoted to the
        compute dtype (float32 for 16-bit logits): every estimator then returns a
        floating ``loss`` with its gradient, instead of an integer one without.
        """
        out = f(x)
        expected = torch.Size(sample_shape) + self.batch_shape
        if not isinstance(out, Tensor):
            raise TypeError(f"f must return a tensor, got {type(out).__name__}")
        if out.shape != expected:
            raise ValueError(
                f"f returned shape {tuple(out.shape)} for samples of shape {tuple(x.shape)}; "
                f"expected sample_shape + q.batch_shape = {tuple(expected)} (one cost per "
                "sample and data point: reduce over the variable dimensions inside f)"
            )
        if not out.is_floating_point():
            if out.is_complex():
                raise TypeError(f"f must return real costs, got f(z).dtype={out.dtype}")
            out = out.to(compute_dtype(self.dtype))
        return out


def _continuous_log_prob(d: OneHotCategorical) -> Callable[[Tensor], Tensor]:
    """:math:`\\sum_k y_k \\log \\pi_k`: ``d.log_prob`` extended to points of the simplex."""

    def log_prob(value: Tensor) -> Tensor:
        logits = d.logits
        masked = torch.isneginf(logits)
        # Masked categories hold 0 in relaxed points: 0 · (-inf) must be 0, not NaN.
        return torch.where(masked, 0.0, value * logits.masked_fill(masked, 0.0)).sum(-1)

    return log_prob


class Estimator(nn.Module):
    """Base class: ``estimator(f, q) -> Estimate``.

    Subclasses implement :meth:`estimate` on a parsed :class:`Latent`, declare
    what they are in the class attributes below, and validate hyper-parameters
    in ``__init__`` (``ValueError``). Trainable parts are registered as
    sub-modules or parameters so optimisers find them; estimators hold no
    global state. :func:`discograd.estimators.registry.register` gives a class
    its ``name`` and makes it available by name (``make("name:key=value")``).

    Class attributes (the metadata the registry, the command line, the reports
    and the conformance tests read; :func:`~discograd.estimators.registry.register`
    requires a registered class or one of its family bases to set the first
    four explicitly rather than inherit these defaults):

    * ``supports``: the variable kinds it accepts, a subset of
      ``{"bernoulli", "categorical"}``; other distributions raise ``TypeError``.
    * ``unbiased``: the gradient estimate's mean is the exact gradient of
      :math:`\\mathbb E_q[f]` for every ``f`` the estimator accepts (for those
      with ``needs_grad_f``: every ``f`` differentiable in ``z``).
    * ``needs_grad_f``: it differentiates ``f`` with respect to its input (``f``
      must be differentiable in ``z``, on relaxed points for relaxations and
      REBAR / RELAX); ``False``: ``f`` is a black box and may be a step function.
    * ``has_temperature``: it takes a user-set temperature ``tau`` (a float or a
      :mod:`discograd.schedules` schedule), exposed as ``est.schedule`` (which
      may be replaced, e.g. to anneal) and ``est.tau`` (the float the next call
      uses). REBAR and RELAX have ``False``: their ``tau=`` is the initial
      value of a temperature that belongs to the control variate and is
      learned through ``cv_loss`` (a tensor, not a schedule).
    * ``exact``: it returns the exact gradient (no sampling): ``Exact`` and
      ``ExactMultiSample`` only.
    * ``multi_sample``: it is a multi-sample-bound estimator, called as
      ``est(log_weight, q)``: the function it is given returns log importance
      weights ℓ(z) = log p(x, z) − log q(z) (shapes as for ``f``), the
      objective is the K-sample bound E[log (1/K) Σ_k exp ℓ(z_k)], ``Estimate.value``
      is its negative (a cost) and ``loss``'s gradient estimates the gradient of
      that negative bound. ``False``: the function is a cost ``f`` and the
      objective E_q[f]. Code that runs "every estimator" on a
      cost ``f`` must leave these out (``registry.names(multi_sample=False)``).
    * ``name``: the registered name, set by ``register`` (``""`` if unregistered).

    Args:
        generator: default ``torch.Generator`` for the estimator's randomness;
            a ``generator=`` passed at call time takes precedence.
    """

    name: ClassVar[str] = ""
    supports: ClassVar[frozenset[str]] = frozenset({"bernoulli", "categorical"})
    unbiased: ClassVar[bool] = True
    needs_grad_f: ClassVar[bool] = False
    has_temperature: ClassVar[bool] = False
    exact: ClassVar[bool] = False
    multi_sample: ClassVar[bool] = False

    def __init__(self, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.generator = generator

    def forward(
        self, f: CostFn, q: Distribution, *, generator: torch.Generator | None = None
    ) -> Estimate:
        if not callable(f):
            raise TypeError(f"f must be callable, got {type(f).__name__}")
        latent = self.latent(q)
        out = self.estimate(f, latent, generator if generator is not None else self.generator)
        return _conform(out, latent)

    def latent(self, q: Distribution) -> Latent:
        """Parse ``q``; ``TypeError`` naming both when this estimator does not support it."""
        name = type(self).__name__
        latent = Latent.parse(q, owner=name)
        if latent.kind not in self.supports:
            kinds = " and ".join(sorted(self.supports))
            raise TypeError(
                f"{name} does not support {type(q).__name__} ({latent.kind} variables); "
                f"it supports {kinds} variables"
            )
        return latent

    def estimate(
        self, f: CostFn, latent: Latent, generator: torch.Generator | None
    ) -> Estimate:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ""


class Tempered(Protocol):
    """What ``has_temperature`` promises of an instance (for type checkers).

    ``schedule`` may be replaced (a :mod:`discograd.schedules` schedule, e.g. to
    anneal); ``tau`` is the temperature the next call uses.
    :func:`discograd.estimators.registry.tempered` returns an estimator typed as this.
    """

    schedule: Schedule

    @property
    def tau(self) -> float: ...


def _conform(out: Estimate, latent: Latent) -> Estimate:
    """The contract every estimator's result keeps, whatever ``f`` did.

    * ``loss`` has ``value``'s dtype: estimators compute score terms in a safe
      dtype (float32 for 16-bit inputs) and a float32 baseline must not turn a
      float16 loss into a float32 one.
    * ``loss`` is connected to the logits (when they require grad): a cost that
      ignores ``z`` (a constant, a detached ``f``) gives a zero gradient, as it
      does for the score-function family, instead of a ``backward()`` error.
    """
    loss = out.loss
    if loss.dtype != out.value.dtype:
        loss = loss.to(out.value.dtype)
    logits = latent.logits
    if not loss.requires_grad and logits.requires_grad and torch.is_grad_enabled():
        n_event = logits.dim() - len(latent.batch_shape)
        anchor = torch.nan_to_num(logits, nan=0.0, posinf=0.0, neginf=0.0) * 0
        loss = loss + (anchor.flatten(anchor.dim() - n_event).sum(-1) if n_event else anchor).to(
            loss.dtype
        )
    if loss is not out.loss:
        out.loss = loss
    return out
