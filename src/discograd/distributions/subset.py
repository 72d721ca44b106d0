r"""Distributions over k-subsets of :math:`C` items, as k-hot vectors: ``KSubset`` and
``RelaxedSubset``.

Two different laws on k-subsets are in use, and they are not the same:

* **The exponential family (conditional Poisson)** :math:`p_\theta(S) \propto
  \prod_{i \in S} e^{\theta_i}`, :math:`|S| = k`: :class:`KSubset`. Its
  normaliser is the elementary symmetric polynomial :math:`e_k(e^{\theta})`;
  its marginals :math:`\mu_i = P(i \in S) = \partial \log e_k / \partial
  \theta_i` sum to :math:`k`. This is the law SIMPLE (Ahmed et al. 2023) and
  I-MLE (Niepert et al. 2021) target.
* **Sampling without replacement** (Gumbel-top-k, Vieira 2014; Kool et al.
  2019): :math:`k` sequential draws from :math:`\mathrm{softmax}(\theta)`,
  each renormalised over what is left. Its inclusion probabilities differ
  from the conditional Poisson ones (for :math:`C = 3, k = 2` and
  :math:`\pi = (0.5, 0.3, 0.2)`: 0.839 vs 0.806 for the first item). This is
  the law whose relaxation is :class:`RelaxedSubset` (Xie & Ermon 2019):
  ``RelaxedSubset.sample`` is an exact draw of it
  (:func:`~discograd.functional.gumbel_top_k`).

Exact computations of :class:`KSubset` use the dynamic program over
:math:`(i, j)` = (items seen, items chosen), :math:`E_{i,j} = E_{i-1,j} +
e^{\theta_i} E_{i-1,j-1}`, in log space and evaluated as a balanced tree: each
node holds the log-coefficients of :math:`\prod_{i \in \text{node}} (1 + e^{\theta_i} x)`
truncated at degree :math:`k`, and a parent is the product of its two
children (a truncated convolution, one ``logsumexp``). The same numbers as the
sequential recursion, in :math:`\lceil\log_2 C\rceil` vectorised steps
instead of :math:`C`; :math:`O(C k^2)` work per row. Masked items (``-inf``
logits) and impossible degrees are carried as a large finite negative
stand-in, so every ``logsumexp`` has a finite maximum and its derivatives of
every order stay finite (``exp`` of the stand-in is exactly 0).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints
from torch.types import _size

from discograd.functional import (
    _compute_dtype,
    _divide_by_tau,
    _perturbed,
    _softmax_last,
    gumbel_top_k,
    straight_through,
)

__all__ = ["KSubset", "RelaxedSubset", "subset_log_normalizer", "subset_marginals"]


class _KHot(constraints.Constraint):
    """0/1 vectors along the last dimension with exactly ``k`` ones."""

    is_discrete = True
    event_dim = 1

    def __init__(self, k: int) -> None:
        self.k = k
        super().__init__()

    def check(self, value: Tensor) -> Tensor:
        binary = ((value == 0) | (value == 1)).all(-1)
        return binary & (value.sum(-1) == self.k)


class _RelaxedKHot(constraints.Constraint):
    """Non-negative points whose coordinates sum to ``k`` (up to rounding).

    Xie & Ermon's relaxation does not keep each coordinate below 1: an item can
    take mass in several rounds (at moderate temperatures its sum may exceed 1).
    """

    event_dim = 1

    def __init__(self, k: int) -> None:
        self.k = k
        super().__init__()

    def check(self, value: Tensor) -> Tensor:
        inside = (value >= 0).all(-1)
        return inside & ((value.sum(-1) - self.k).abs() <= 1e-3 * max(self.k, 1))


def _check_k(k: object, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got k={k!r}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] (the number of items), got k={k}")
    return k


def _check_logits(logits: object) -> Tensor:
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must have a floating dtype, got {logits.dtype}")
    if logits.dim() < 1:
        raise ValueError("logits need an item dimension (the last one)")
    return logits


def _stand_in(dtype: torch.dtype, n: int) -> float:
    """A finite log-weight far below any real one: sums of up to ``n`` of them stay finite."""
    return -torch.finfo(dtype).max / (4.0 * (n + 1))


def _check_enough(theta: Tensor, k: int) -> None:
    """``ValueError`` unless every row has at least ``k`` unmasked items (and no NaN/+inf)."""
    if torch.compiler.is_compiling():
        return
    # One reduction in the common case: a finite sum means every logit is finite
    # (barring overflow), and k <= C was checked already.
    if theta.numel() and math.isfinite(float(theta.sum())):
        return
    bad = torch.isnan(theta) | torch.isposinf(theta)
    if bool(bad.any()):
        raise ValueError("logits must be real numbers or -inf (a masked item); found NaN or +inf")
    if theta.numel() and int((theta > -math.inf).sum(-1).min()) < k:
        raise ValueError(
            f"k must not exceed the number of unmasked (finite) items of any row, got k={k}"
        )


def _convolve(a: Tensor, b: Tensor, k: int, low: float) -> Tensor:
    """Log-coefficients of the product of two polynomials, truncated at degree ``k``.

    Degree first: ``a``: ``[La, ...]``, ``b``: ``[Lb, ...]``; returns
    ``[min(k + 1, La + Lb - 1), ...]`` with ``out[m] = logsumexp_j (a[j] + b[m - j])``.
    The reduction runs over the leading dimension, vectorised along the
    contiguous rows and nodes (a reduction over a trailing dimension of a few
    entries is many times slower on CPU).
    """
    La, Lb = a.shape[0], b.shape[0]
    Lc = min(k + 1, La + Lb - 1)
    pad_front = b.new_full((La - 1,) + b.shape[1:], low)
    pad_back = b.new_full((max(0, Lc - Lb),) + b.shape[1:], low)
    padded = torch.cat([pad_front, b, pad_back])  # padded[La - 1 + d] = b[d]
    # terms[j, m] = a[j] + b[m - j] (b's stand-in where m - j is out of range)
    terms = torch.stack([padded[La - 1 - j : La - 1 - j + Lc] for j in range(La)]) + a.unsqueeze(1)
    top = terms.detach().amax(0)
    # exp of a very negative argument is a subnormal number, tens of times slower
    # on x86: terms more than ~80 (float32) below their maximum are counted as
    # that bound, a relative change below 1e-34 of the sum (and no gradient).
    floor = -80.0 if terms.dtype != torch.float64 else -700.0
    return (terms - top).clamp_min(floor).exp().sum(0).log() + top


def _levels(theta: Tensor, k: int) -> tuple[list[Tensor], float]:
    """The tree of truncated log-polynomials, leaves first; ``theta``: ``[R, C]`` (compute dtype).

    Degree-first layout: level 0 is ``[2, R, P]`` (``P``: ``C`` rounded up to a
    power of two, padded with empty items); the last level is
    ``[min(k, P) + 1, R, 1]``.
    """
    R, C = theta.shape
    P = 1 << max(C - 1, 0).bit_length()
    low = _stand_in(theta.dtype, P)
    finite = theta > -math.inf
    th = torch.where(finite, theta, low)
    # Relative to the row's largest logit (a constant): the normaliser only moves
    # by k times it, and rounding stays relative to the spread, not to |theta|.
    th = th - th.detach().amax(-1, keepdim=True)
    th = torch.where(finite, th, low)
    if P > C:
        th = torch.cat([th, th.new_full((R, P - C), low)], -1)
    x = torch.stack([torch.zeros_like(th), th])  # 1 + e^θ x
    levels = [x]
    while x.shape[-1] > 1:
        x = _convolve(x[..., 0::2], x[..., 1::2], k, low)
        levels.append(x)
    return levels, low


def subset_log_normalizer(logits: Tensor, k: int) -> Tensor:
    r""":math:`\log e_k(e^{\theta_1}, \dots, e^{\theta_C})` along the last dimension.

    The log-normaliser of :class:`KSubset`: :math:`\log \sum_{|S| = k} \prod_{i
    \in S} e^{\theta_i}`. Differentiable to any order (its gradient is
    :func:`subset_marginals`). Computed in float32 for 16-bit logits, returned
    in that compute dtype. ``-inf`` masks an item; ``k`` must not exceed the
    number of unmasked items.
    """
    _check_logits(logits)
    C = logits.shape[-1]
    _check_k(k, C)
    _check_enough(logits.detach(), k)
    lead = logits.shape[:-1]
    theta = logits.to(_compute_dtype(logits.dtype)).reshape(-1, C)
    levels, _ = _levels(theta, k)
    shift = torch.where(theta > -math.inf, theta, -math.inf).detach().amax(-1)
    return (levels[-1][k, :, 0] + k * shift).reshape(lead)


def subset_marginals(logits: Tensor, k: int) -> Tensor:
    r"""Exact inclusion probabilities :math:`\mu_i = P(i \in S)` of :class:`KSubset`.

    :math:`\mu = \nabla_\theta \log e_k(e^\theta)` (the mean of an exponential
    family is the gradient of its log-normaliser), computed by differentiating
    :func:`subset_log_normalizer`; with ``create_graph`` so that :math:`\mu` is
    itself differentiable in ``logits`` (its Jacobian is the covariance of the
    k-hot vector: what SIMPLE backpropagates through). Masked items get exactly
    0 and rows sum to ``k``. Same shape as ``logits``, in the compute dtype.
    """
    _check_logits(logits)
    if torch.is_inference_mode_enabled():
        # Autograd refuses inference tensors: differentiate a normal copy, outside
        # inference mode (the result carries no graph either way).
        with torch.inference_mode(False):
            return subset_marginals(logits.detach().clone(), k)
    with torch.enable_grad():
        cdt = _compute_dtype(logits.dtype)
        theta = logits.to(cdt)
        leaf = not theta.requires_grad
        if leaf:
            theta = theta.detach().requires_grad_()
        log_z = subset_log_normalizer(theta, k)
        (mu,) = torch.autograd.grad(log_z.sum(), theta, create_graph=not leaf)
    return mu.detach() if leaf else mu


def _sample_khot(theta: Tensor, k: int, n: int, generator: torch.Generator | None) -> Tensor:
    """``n`` exact k-hot draws of the conditional Poisson law per row of ``theta`` ``[R, C]``.

    Top-down through the tree: a node that must hold ``r`` chosen items gives
    ``j`` of them to its left child with probability
    :math:`\\propto e_j(\\text{left})\\, e_{r-j}(\\text{right})` (a Gumbel-max draw
    over ``j``), the rest to the right one. Returns ``[n, R, C]`` (compute dtype).
    """
    R, C = theta.shape
    levels, _ = _levels(theta, k)
    counts = torch.full((n, R, 1), k, dtype=torch.long, device=theta.device)
    for child in reversed(levels[:-1]):
        left, right = child[..., 0::2], child[..., 1::2]  # [L, R, N]
        L = child.shape[0]
        j = torch.arange(L, device=theta.device).view(1, L, 1, 1)
        rest = counts.unsqueeze(1) - j  # [n, L, R, N]
        ok = (rest >= 0) & (rest < L)
        right_terms = right.expand((n,) + right.shape).gather(1, rest.clamp(0, L - 1))
        scores = torch.where(ok, left + right_terms, -math.inf)
        pick = _perturbed(scores, generator).argmax(1)  # [n, R, N]
        counts = torch.stack([pick, counts - pick], -1).flatten(-2)
    return counts[..., :C].to(theta.dtype)


class KSubset(Distribution):
    r"""The exponential-family law on k-subsets: :math:`p_\theta(z) = e^{\theta^\top z} /
    e_k(e^\theta)` for k-hot :math:`z \in \{0, 1\}^C`, :math:`\sum_i z_i = k`.

    Also called the conditional Poisson (or conditional Bernoulli) distribution:
    independent Bernoulli(:math:`\sigma(\theta_i)`) items conditioned on exactly
    :math:`k` of them being on. For :math:`k = 1` it is
    ``OneHotCategorical(logits=θ)``. It is *not* the law of Gumbel-top-k
    (sampling without replacement, see :class:`RelaxedSubset`).

    Args:
        logits: item log-weights :math:`\theta`, items on the last dimension;
            ``-inf`` masks an item (never chosen). Shift-invariant.
        k: subset size, ``1 <= k <=`` the number of unmasked items of every row.
        validate_args: as in ``torch.distributions``.

    * ``sample`` (``generator=`` accepted): exact draws by the log-space
      dynamic program (see the module docstring), float k-hot vectors of
      ``logits``' dtype.
    * ``log_prob(z)`` = :math:`\theta^\top z - \log e_k(e^\theta)`, a log
      probability mass (counting measure on the k-hot vectors); ``-inf`` on a
      masked item.
    * ``marginals`` (= ``mean``): :math:`P(z_i = 1)`, exact, summing to ``k``.
    * ``log_normalizer``: :math:`\log e_k(e^\theta)`.

    Cost: :math:`O(Ck^2)` per row for the normaliser, marginals and each draw.
    """

    arg_constraints = {"logits": constraints.real_vector}
    has_enumerate_support = False

    def __init__(self, logits: Tensor, k: int, validate_args: bool | None = None) -> None:
        _check_logits(logits)
        self.k = _check_k(k, logits.shape[-1])
        _check_enough(logits.detach(), self.k)
        self.logits = logits
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=False)
        self._validate_args = (
            Distribution._validate_args if validate_args is None else validate_args
        )

    @constraints.dependent_property(is_discrete=True, event_dim=1)
    def support(self) -> constraints.Constraint:
        return _KHot(self.k)

    def expand(self, batch_shape: _size, _instance=None) -> KSubset:
        batch_shape = torch.Size(batch_shape)
        return KSubset(
            self.logits.expand(batch_shape + self.event_shape), self.k, self._validate_args
        )

    @property
    def log_normalizer(self) -> Tensor:
        return subset_log_normalizer(self.logits, self.k).to(self.logits.dtype)

    @property
    def marginals(self) -> Tensor:
        return subset_marginals(self.logits, self.k).to(self.logits.dtype)

    @property
    def mean(self) -> Tensor:
        return self.marginals

    def sample(
        self, sample_shape: _size = torch.Size(), generator: torch.Generator | None = None
    ) -> Tensor:
        shape = torch.Size(sample_shape)
        C = self.logits.shape[-1]
        with torch.no_grad():
            theta = self.logits.detach().to(_compute_dtype(self.logits.dtype)).reshape(-1, C)
            z = _sample_khot(theta, self.k, math.prod(shape), generator)
        return z.reshape(shape + self.batch_shape + self.event_shape).to(self.logits.dtype)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        cdt = _compute_dtype(self.logits.dtype)
        theta = self.logits.to(cdt)
        finite = theta > -math.inf
        on = value.to(cdt)
        score = torch.where(finite, on * torch.where(finite, theta, 0.0), 0.0).sum(-1)
        outside = (~finite & (on != 0)).any(-1)
        log_z = subset_log_normalizer(self.logits, self.k)
        return (score - log_z).masked_fill(outside, -math.inf).to(self.logits.dtype)


class RelaxedSubset(Distribution):
    r"""Xie & Ermon's relaxed k-subset: ``k`` rounds of a tempered softmax with masking.

    Xie & Ermon 2019, "Reparameterizable Subset Sampling via Continuous
    Relaxations" (IJCAI), Algorithm 2; official code ermongroup/subsets. With
    Gumbel keys :math:`r_i = \theta_i + G_i` and :math:`\alpha^{(1)} = r`:

    .. math:: a^{(j)} = \mathrm{softmax}(\alpha^{(j)}/\tau), \qquad
              \alpha^{(j+1)} = \alpha^{(j)} + \log\max(1 - a^{(j)}, \epsilon), \qquad
              y = \sum_{j=1}^{k} a^{(j)}.

    Each round is a relaxed arg max that (softly) removes what earlier rounds
    picked, so :math:`\sum_i y_i = k`, :math:`y_i \ge 0` (a coordinate can exceed 1
    at moderate temperatures: an item may take mass in several rounds), and as
    :math:`\tau \to 0` :math:`y` tends to the k-hot vector of the top :math:`k`
    keys: an exact draw of :math:`k` items **without replacement** from
    :math:`\mathrm{softmax}(\theta)` (the Gumbel-top-k trick), which ``sample``
    returns directly (through :func:`~discograd.functional.gumbel_top_k`). That
    law is not :class:`KSubset`'s.

    Args:
        logits: item log-weights; ``-inf`` masks an item.
        k: subset size, at most the number of unmasked items of every row.
        temperature: :math:`\tau > 0` (a float).
        validate_args: as in ``torch.distributions``.

    Methods: ``rsample(sample_shape, generator=None, hard=False)``: the relaxed
    sample :math:`y` (``hard=True``: the top-k k-hot vector of the same keys
    with :math:`y`'s gradient, straight through); ``sample``: exact k-hot draws.
    Computed in float32 for 16-bit logits (:math:`\epsilon` = that dtype's
    ``tiny``), cast back. Cost: one Gumbel draw and :math:`k` softmaxes over
    the items.

    ``log_prob`` raises ``NotImplementedError``: the relaxed sample has no
    closed-form density (it is a deterministic map of :math:`C` Gumbels onto
    a :math:`(C-1)`-dimensional set, with no tractable Jacobian; Xie & Ermon give
    none), and the probability of a k-subset without replacement is a sum over
    its :math:`k!` orderings, which this class does not compute.
    """

    arg_constraints = {"logits": constraints.real_vector}
    has_rsample = True

    def __init__(
        self,
        logits: Tensor,
        k: int,
        temperature: float,
        validate_args: bool | None = None,
    ) -> None:
        _check_logits(logits)
        self.k = _check_k(k, logits.shape[-1])
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise TypeError(f"temperature must be a float, got {type(temperature).__name__}")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be positive and finite, got {temperature!r}")
        _check_enough(logits.detach(), self.k)
        self.logits = logits
        self.temperature = float(temperature)
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=False)
        self._validate_args = (
            Distribution._validate_args if validate_args is None else validate_args
        )

    @constraints.dependent_property(event_dim=1)
    def support(self) -> constraints.Constraint:
        return _RelaxedKHot(self.k)

    def expand(self, batch_shape: _size, _instance=None) -> RelaxedSubset:
        batch_shape = torch.Size(batch_shape)
        logits = self.logits.expand(batch_shape + self.event_shape)
        return RelaxedSubset(logits, self.k, self.temperature, self._validate_args)

    def rsample(
        self,
        sample_shape: _size = torch.Size(),
        generator: torch.Generator | None = None,
        hard: bool = False,
    ) -> Tensor:
        keys = _perturbed(self.logits, generator, self._extended_shape(sample_shape))
        tiny = torch.finfo(keys.dtype).tiny
        alpha = keys
        y: Tensor | None = None
        a = None
        for _ in range(self.k):  # k rounds: a loop over the subset size, not over data
            if a is not None:
                # log max(1 - a, eps): the item picked in the last round drops out
                # softly. clamp's backward is a select (not a product), so the
                # 1/eps of log's backward never meets its zero: no 0 * inf at a = 1.
                alpha = alpha + (1.0 - a).clamp_min(tiny).log()
            a = _softmax_last(_divide_by_tau(alpha, self.temperature))
            y = a if y is None else y + a
        assert y is not None
        if hard:
            top = keys.detach().topk(self.k, -1).indices
            khot = torch.zeros_like(y).scatter_(-1, top, 1.0)
            y = straight_through(khot, y)
        return y.to(self.logits.dtype)

    def sample(
        self, sample_shape: _size = torch.Size(), generator: torch.Generator | None = None
    ) -> Tensor:
        """Exact k-hot draws without replacement (Gumbel-top-k), ``logits``' dtype."""
        shape = self._extended_shape(sample_shape)
        logits = self.logits.detach().expand(shape)
        idx = gumbel_top_k(logits, self.k, -1, generator).indices
        return torch.zeros(shape, dtype=self.logits.dtype, device=logits.device).scatter_(
            -1, idx, 1.0
        )

    def log_prob(self, value: Tensor) -> Tensor:
        raise NotImplementedError(
            "RelaxedSubset has no closed-form density (Xie & Ermon 2019 give none; the "
            "relaxed sample is a map of C Gumbels with no tractable Jacobian); for an exact "
            "k-subset log-probability use KSubset (the exponential-family law)"
        )
