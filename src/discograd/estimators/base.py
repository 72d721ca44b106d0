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

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

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

from discograd.functional import _compute_dtype, _perturbed, _uniform
from discograd.functional import _softmax_last as softmax_last

__all__ = [
    "CostFn",
    "Estimate",
    "Estimator",
    "Latent",
    "one_hot",
    "softmax_last",
    "zero_valued",
]

CostFn = Callable[[Tensor], Tensor]
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


def one_hot(index: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """``F.one_hot(index, num_classes).to(dtype)`` as rows of the identity: one gather.

    F.one_hot fills an int64 tensor and converts it: several times slower on CPU.
    """
    eye = torch.eye(num_classes, dtype=dtype, device=index.device)
    return eye.index_select(0, index.reshape(-1)).view(index.shape + (num_classes,))


def zero_valued(x: Tensor) -> Tensor:
    """``x - x.detach()``: zero in value, the gradient of ``x`` in backward."""
    return x - x.detach()


_SUPPORTED = "Bernoulli, Categorical, OneHotCategorical, or Independent of one of them"


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
        base_type: type[Distribution] | None = None,
    ):
        self.q = q
        self.base_type = base_type or (Bernoulli if kind == "bernoulli" else Categorical)
        self.kind: Kind = kind
        self.logits = logits
        self.batch_shape = batch_shape
        var_end = logits.dim() - (1 if kind == "categorical" else 0)
        self.var_shape = logits.shape[len(batch_shape) : var_end]
        self.num_categories = logits.shape[-1] if kind == "categorical" else 2

    # ------------------------------------------------------------------ parsing
    @classmethod
    def parse(cls, q: object, owner: str = "this estimator") -> Latent:
        """Canonicalise ``q``; ``TypeError`` naming ``q``'s type if unsupported."""
        if not isinstance(q, Distribution):
            raise TypeError(
                f"{owner} expects a torch.distributions object ({_SUPPORTED}), "
                f"got {type(q).__name__}"
            )
        base = q
        while isinstance(base, Independent):
            base = base.base_dist
        if type(base) is Bernoulli:
            kind: Kind = "bernoulli"
        elif type(base) in (Categorical, OneHotCategorical):
            kind = "categorical"
        else:
            inner = f" of {type(base).__name__}" if base is not q else ""
            raise TypeError(
                f"{owner} does not support {type(q).__name__}{inner}; supported: {_SUPPORTED}"
            )
        logits = base.logits
        # Independent reinterprets trailing batch dims as variables; expand so
        # the logits carry the full batch + variable shape.
        var_shape = base.batch_shape[len(q.batch_shape) :]
        full = q.batch_shape + var_shape + (logits.shape[-1:] if kind == "categorical" else ())
        return cls(q, kind, logits.expand(full), q.batch_shape, type(base))

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
    ) -> Tensor:
        """Exact samples as configurations ``S + batch_shape + var_shape``.

        Categorical: int64 category indices (Gumbel-max). Bernoulli: 0./1. floats.
        """
        shape = self.index_shape(sample_shape)
        logits = self.logits.detach()
        cdt = _compute_dtype(logits.dtype)
        if self.kind == "categorical":
            return _perturbed(logits, generator, shape + (self.num_categories,)).argmax(-1)
        u = _uniform(shape, cdt, self.device, generator)
        return (u < torch.sigmoid(logits.to(cdt))).to(logits.dtype)

    def encode(self, z: Tensor) -> Tensor:
        """Configurations to ``f``'s input: one-hot floats (categorical), floats (Bernoulli)."""
        if self.kind == "categorical":
            return one_hot(z, self.num_categories, self.dtype)
        return z.to(self.dtype)

    def log_prob(self, z: Tensor) -> Tensor:
        """Joint :math:`\\log q(z)` of configurations ``S + batch + var``: shape ``S + batch``."""
        if self.kind == "categorical":
            logits = self.logits.expand(z.shape + (self.num_categories,))
            lp = logits.gather(-1, z.unsqueeze(-1)).squeeze(-1)
        else:
            lp = -F.binary_cross_entropy_with_logits(
                self.logits.expand(z.shape), z.to(self.dtype), reduction="none"
            )
        return lp.flatten(-len(self.var_shape)).sum(-1) if self.var_shape else lp

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
    def call_f(self, f: CostFn, x: Tensor, sample_shape: torch.Size | tuple[int, ...]) -> Tensor:
        """Evaluate ``f`` on inputs with leading ``sample_shape`` and check its output shape."""
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
        return out


class Estimator(nn.Module):
    """Base class: ``estimator(f, q) -> Estimate``.

    Subclasses implement :meth:`estimate` on a parsed :class:`Latent`, declare the
    variable kinds they support in ``supports``, and validate hyper-parameters
    in ``__init__`` (``ValueError``). Trainable parts are registered as
    sub-modules or parameters so optimisers find them; estimators hold no
    global state.

    Args:
        generator: default ``torch.Generator`` for the estimator's randomness;
            a ``generator=`` passed at call time takes precedence.
    """

    supports: ClassVar[frozenset[str]] = frozenset({"bernoulli", "categorical"})
    unbiased: ClassVar[bool] = True

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
        return self.estimate(f, latent, generator if generator is not None else self.generator)

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
