r"""Estimators for costs of a k-hot vector: SIMPLE and I-MLE.

The latent is a k-subset of :math:`C` items with log-weights :math:`\theta`,
distributed as the exponential family :math:`p_\theta(S) \propto \prod_{i \in S}
e^{\theta_i}` (:class:`~discograd.distributions.KSubset`). Calling convention,
within the contract of :mod:`discograd.estimators.base`::

    est = SIMPLE(k=8)
    out = est(f, q)    # q: Categorical / OneHotCategorical (or Independent of one) with logits θ
                       #    of shape batch + var + (C,), or a KSubset(θ, k=8)

``q``'s logits are the item weights; ``f`` receives k-hot vectors of shape
``S + batch + var + (C,)`` (exactly ``k`` ones per variable, none on a masked
item) and returns ``S + batch`` costs. ``k = 1`` (the default, so that the
registry can build them by name) is the plain categorical case: the k-subset
law is then ``Categorical(softmax(θ))`` itself and ``f`` sees one-hot vectors
as for every other estimator. A :class:`~discograd.distributions.KSubset`
``q`` must have the estimator's ``k`` (a ``ValueError`` otherwise).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.distributions import Categorical, Distribution

from discograd.distributions.subset import KSubset, _sample_khot, subset_marginals
from discograd.estimators._ops import compute_dtype, uniform
from discograd.estimators.base import CostFn, Estimate, Estimator, Latent
from discograd.estimators.registry import register
from discograd.functional import straight_through

__all__ = ["IMLE", "SIMPLE", "sum_of_gamma"]


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {name}={value!r}")
    return value


def _check_positive(name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (math.isfinite(value) and value > 0)
    ):
        raise ValueError(f"{name} must be a positive finite float, got {name}={value!r}")
    return float(value)


class _KHotEstimator(Estimator):
    """Parsing shared by the k-hot estimators: categorical logits or a KSubset, and ``k``."""

    supports = frozenset({"categorical"})
    unbiased = False
    needs_grad_f = True
    has_temperature = False
    #: ``f`` receives k-hot vectors (``k`` ones per variable); the conformance
    #: test runs a k-hot section for classes that set this.
    k_hot: ClassVar[bool] = True

    def __init__(self, k: int, *, generator: torch.Generator | None) -> None:
        super().__init__(generator=generator)
        self.k = _check_int("k", k, 1)

    def latent(self, q: Distribution) -> Latent:
        if isinstance(q, KSubset):
            if q.k != self.k:
                raise ValueError(f"{type(self).__name__}(k={self.k}) was given KSubset(k={q.k})")
            q = Categorical(logits=q.logits, validate_args=False)
        latent = super().latent(q)
        C = latent.num_categories
        if self.k > C:
            raise ValueError(f"k={self.k} exceeds the number of items C={C}")
        finite = int((latent.logits.detach() > -math.inf).sum(-1).min()) if C else 0
        if finite < self.k:
            raise ValueError(
                f"k={self.k} exceeds the number of unmasked items of some variable ({finite})"
            )
        return latent

    def _rows(self, latent: Latent) -> Tensor:
        """The logits as rows ``[R, C]`` in the compute dtype (gradients flow)."""
        cdt = compute_dtype(latent.dtype)
        return latent.logits.to(cdt).reshape(-1, latent.num_categories)

    def extra_repr(self) -> str:
        return f"k={self.k}"


@register("simple")
class SIMPLE(_KHotEstimator):
    r"""SIMPLE: an exact k-subset sample forward, the exact marginals' Jacobian backward.

    Ahmed, Zeng, Niepert & Van den Broeck 2023, "SIMPLE: A Gradient Estimator
    for k-Subset Sampling" (ICLR); official code UCLA-StarAI/SIMPLE. Forward:
    an exact draw :math:`z \sim p_\theta(z) \propto e^{\theta^\top z}` on k-hot
    vectors (:class:`~discograd.distributions.KSubset`). Backward: straight
    through the exact marginals :math:`\mu(\theta) = \mathbb E_\theta[z] =
    \nabla_\theta \log e_k(e^\theta)`:

    .. math:: \hat g = \Big(\frac{\partial \mu}{\partial\theta}\Big)^{\!\top} \nabla_z f(z),
              \qquad \frac{\partial \mu}{\partial\theta} = \mathrm{Cov}_\theta(z).

    Exact in expectation for ``f`` linear in ``z``; biased otherwise. For
    ``k = 1``, :math:`\mu = \mathrm{softmax}(\theta)` and SIMPLE is the
    categorical straight-through estimator. The marginals come from the
    log-space :math:`(i, j)` dynamic program (items seen, items chosen),
    evaluated as a balanced tree (:func:`~discograd.distributions.subset_marginals`),
    and its derivative by double backpropagation; the sample from the same
    tables, top down. Cost: one evaluation of ``f``; :math:`O(Ck^2)` work per
    variable for the sample and the marginals (truncated products of
    polynomials of up to :math:`k + 1` coefficients).

    Args:
        k: subset size (default 1).
        generator: default random generator.
    """

    def __init__(self, k: int = 1, *, generator: torch.Generator | None = None) -> None:
        super().__init__(k, generator=generator)

    def estimate(self, f: CostFn, latent: Latent, generator: torch.Generator | None) -> Estimate:
        theta = self._rows(latent)
        with torch.no_grad():
            hard = _sample_khot(theta.detach(), self.k, 1, generator)[0]
        mu = subset_marginals(theta, self.k)
        shape = latent.logits.shape
        z = straight_through(hard.view(shape), mu.view(shape)).to(latent.dtype)
        fz = latent.call_f(f, z, ())
        return Estimate(loss=fz, value=fz.detach(), n_evals=1)


# ------------------------------------------------------------------------ I-MLE
def _standard_gamma(
    shape: torch.Size, alpha: float, dtype: torch.dtype, device: torch.device, generator: Any
) -> Tensor:
    """Gamma(``alpha``, 1) draws, reproducible from ``generator``.

    torch's Gamma sampler takes no generator: it runs on the default generator
    of the device, forked and seeded from ``generator`` (one draw of it), so the
    caller's global random state is left untouched. Without a generator it uses
    the global stream like any torch sampler.
    """
    conc = torch.full(shape, alpha, dtype=dtype, device=device)
    if generator is None:
        return torch._standard_gamma(conc)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda, device_type=device.type if cuda else "cuda"):
        torch.manual_seed(seed)
        return torch._standard_gamma(conc)


def sum_of_gamma(
    shape: torch.Size | tuple[int, ...],
    k: int,
    n_terms: int = 10,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Sum-of-Gamma noise (Niepert et al. 2021, Eq. 8), with :math:`s` = ``n_terms``:

    .. math:: \epsilon = \frac1k\Big(\sum_{i=1}^{s} \mathrm{Gamma}(1/k,\ \text{rate } i/k)
              - \log s\Big).

    The sum of ``k`` independent such variables is (as :math:`s \to \infty`) a
    Gumbel, so perturbing each of the ``k`` units of a k-subset's score with it
    approximates the Gumbel perturbation of the whole subset; for ``k = 1`` it
    is a truncated series of a Gumbel. Gamma(1/k, rate i/k) = (k/i)·Gamma(1/k, 1).
    """
    dev = torch.device("cpu") if device is None else torch.device(device)
    shape = torch.Size(shape)
    g = _standard_gamma(torch.Size((n_terms,)) + shape, 1.0 / k, dtype, dev, generator)
    scale = k / torch.arange(1, n_terms + 1, dtype=dtype, device=dev)
    total = (g * scale.view((n_terms,) + (1,) * len(shape))).sum(0)
    return (total - math.log(n_terms)) / k


def _top_k_hot(scores: Tensor, k: int) -> Tensor:
    idx = scores.topk(k, -1).indices
    return torch.zeros_like(scores).scatter_(-1, idx, 1.0)


class _PerturbAndMAP(torch.autograd.Function):
    """Forward: top-k of ``theta + eps`` as a k-hot vector. Backward: I-MLE's
    finite difference against the MAP of the target parameters ``theta - lam * g``."""

    @staticmethod
    def forward(ctx: Any, theta: Tensor, eps: Tensor, k: int, lam: float) -> Tensor:
        z = _top_k_hot(theta + eps, k)
        ctx.save_for_backward(theta, eps, z)
        ctx.k, ctx.lam = k, lam
        return z

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None, None]:
        theta, eps, z = ctx.saved_tensors
        finite = theta > -math.inf
        # A masked item stays at -inf in the target (never chosen); g there is finite.
        target = theta - ctx.lam * torch.where(finite, g.to(theta.dtype), 0.0)
        z_target = _top_k_hot(target + eps, ctx.k)
        return (z - z_target) / ctx.lam, None, None, None


@register("imle")
class IMLE(_KHotEstimator):
    r"""Implicit maximum-likelihood estimation (I-MLE) with perturb-and-MAP.

    Niepert, Minervini & Franceschi 2021, "Implicit MLE: Backpropagating Through
    Discrete Exponential Family Distributions" (NeurIPS); official code
    uclnlp/torch-imle. Forward: the MAP state of the perturbed weights,
    :math:`z = \mathrm{topk}(\theta + \tau\epsilon)` as a k-hot vector, with
    :math:`\epsilon` Sum-of-Gamma noise (:func:`sum_of_gamma`; ``noise="gumbel"``:
    standard Gumbel; ``"none"``: no noise). Backward: the target distribution
    by perturbation-based implicit differentiation,
    :math:`\theta' = \theta - \lambda \nabla_z f(z)`, and

    .. math:: \hat g = \frac{1}{\lambda}\Big(\mathrm{MAP}(\theta + \tau\epsilon)
              - \mathrm{MAP}(\theta' + \tau\epsilon)\Big)

    with the same noise draw. (torch-imle's default target, ``alpha = beta = 1``,
    omits the :math:`1/\lambda`: its gradients are :math:`\lambda` times these.)
    Perturb-and-MAP with Sum-of-Gamma noise approximates a sample of the
    k-subset law, exactly so for ``k = 1`` with Gumbel noise; the gradient is
    biased. Cost: one evaluation of ``f`` and two top-k's per variable.

    Args:
        k: subset size (default 1).
        noise: ``"sum_of_gamma"`` (default), ``"gumbel"`` or ``"none"``.
        lam: :math:`\lambda > 0`, the step to the target distribution (default
            100). One draw's gradient is zero unless :math:`\lambda\nabla_z f`
            moves the top-k, so :math:`\lambda` must be large against the gaps
            between the perturbed weights (at 10, costs of order 1 often give an
            all-zero gradient); larger is coarser, and :math:`1/\lambda` scales it.
        noise_temperature: :math:`\tau > 0` scaling the noise (default 1).
        n_terms: :math:`s`, terms of the Sum-of-Gamma series (default 10).
        generator: default random generator.
    """

    _NOISES = ("sum_of_gamma", "gumbel", "none")

    def __init__(
        self,
        k: int = 1,
        noise: str = "sum_of_gamma",
        lam: float = 100.0,
        noise_temperature: float = 1.0,
        n_terms: int = 10,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(k, generator=generator)
        if noise not in self._NOISES:
            raise ValueError(f"noise must be one of {self._NOISES}, got noise={noise!r}")
        self.noise = noise
        self.lam = _check_positive("lam", lam)
        self.noise_temperature = _check_positive("noise_temperature", noise_temperature)
        self.n_terms = _check_int("n_terms", n_terms, 1)

    def extra_repr(self) -> str:
        return (
            f"k={self.k}, noise={self.noise!r}, lam={self.lam}, "
            f"noise_temperature={self.noise_temperature}, n_terms={self.n_terms}"
        )

    def _noise(self, theta: Tensor, generator: torch.Generator | None) -> Tensor:
        shape, cdt, dev = theta.shape, theta.dtype, theta.device
        if self.noise == "none":
            return torch.zeros(shape, dtype=cdt, device=dev)
        if self.noise == "gumbel":
            u = uniform(shape, cdt, dev, generator).clamp_(torch.finfo(cdt).tiny, 1 - 1e-7)
            eps = -(-u.log()).log()
        else:
            eps = sum_of_gamma(
                shape, self.k, self.n_terms, dtype=cdt, device=dev, generator=generator
            )
        return eps * self.noise_temperature

    def estimate(self, f: CostFn, latent: Latent, generator: torch.Generator | None) -> Estimate:
        theta = self._rows(latent)
        eps = self._noise(theta.detach(), generator)
        z = _PerturbAndMAP.apply(theta, eps, self.k, self.lam)
        fz = latent.call_f(f, z.view(latent.logits.shape).to(latent.dtype), ())
        return Estimate(loss=fz, value=fz.detach(), n_evals=1)
