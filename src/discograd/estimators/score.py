r"""The score-function family: REINFORCE (+ baselines), RLOO, VarGrad.

All three rest on :math:`\nabla_\theta \mathbb E_{q_\theta}[f] =
\mathbb E_{q_\theta}[f(z)\,\nabla_\theta \log q_\theta(z)]` (Williams 1992) and
need no derivative of ``f`` with respect to ``z``; they are unbiased.

Surrogates. With :math:`S` samples :math:`z_s \sim q_\theta` (drawn in one batch,
``f`` called once on all of them) and weights :math:`w_s`,

.. math:: \text{loss} = \frac1S \sum_s f(z_s)
          + \sum_s \operatorname{sg}(w_s)\,
            \big[\log q_\theta(z_s) - \operatorname{sg}(\log q_\theta(z_s))\big]

(``sg`` = stop-gradient; the bracket is zero in value, ``zero_valued``). Its value
is the Monte-Carlo mean of ``f``. The non-detached first term carries, by
autograd, the pathwise gradient of ``f`` with respect to parameters inside ``f``
(a decoder) and with respect to :math:`\theta` where ``f`` uses it directly (an
entropy or :math:`\log q` term): :math:`\nabla_\theta \mathbb E_q[f_\theta] =
\mathbb E_q[\nabla_\theta f_\theta(z)] + \mathbb E_q[f_\theta(z)\nabla_\theta\log q(z)]`,
so both terms are needed and the score term must use the detached cost.
"""

from __future__ import annotations

import torch
from torch import Tensor

from discograd.estimators._ops import as_dtype, compute_dtype
from discograd.estimators._surrogate import zero_valued
from discograd.estimators.base import CostFn, Estimate, Estimator, Latent
from discograd.estimators.baselines import EMA, Baseline
from discograd.estimators.registry import register, register_preset

__all__ = ["REINFORCE", "RLOO", "VarGrad"]


def _check_samples(n_samples: object, minimum: int) -> int:
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < minimum:
        raise ValueError(f"n_samples must be an int >= {minimum}, got n_samples={n_samples!r}")
    return n_samples


def _draw(
    f: CostFn, latent: Latent, n: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """``n`` samples in one call of ``f``: costs ``(n,) + batch`` and ``log q`` of the samples."""
    z = latent.sample((n,), generator)
    fz = latent.call_f(f, latent.encode(z), (n,))
    return fz, latent.log_prob(z)


def _safe_dtype(costs: Tensor, latent: Latent) -> torch.dtype:
    """The dtype score weights are formed in: at least float32 (float16 overflows at 65504)."""
    return torch.promote_types(costs.dtype, compute_dtype(latent.dtype))


def _score_term(weights: Tensor, log_q: Tensor, dtype: torch.dtype) -> Tensor:
    """``Σ_s sg(w_s) · zero_valued(log q_s)`` in the weights' dtype, returned in ``dtype``.

    Zero in value; its gradient is the score-function estimate. Formed in the
    weights' (safe) dtype so that a large weight times 0 stays 0, not inf · 0.
    """
    return as_dtype((weights * zero_valued(as_dtype(log_q, weights.dtype))).sum(0), dtype)


class _ScoreFunction(Estimator):
    """The score-function family: any distribution, unbiased, ``f`` a black box."""

    supports = frozenset({"bernoulli", "categorical"})
    unbiased = True
    needs_grad_f = False
    has_temperature = False


@register("reinforce")
class REINFORCE(_ScoreFunction):
    r"""The score-function (REINFORCE) estimator with an optional baseline.

    .. math:: \hat g = \frac1S \sum_{s=1}^S \big(f(z_s) - b\big)\,\nabla_\theta \log q_\theta(z_s)
              \;+\; \frac1S \sum_s \nabla_\theta f(z_s),
              \qquad z_s \sim q_\theta \text{ i.i.d.}

    (the second term only where ``f`` itself depends on the parameters).
    Williams 1992, "Simple statistical gradient-following algorithms for
    connectionist reinforcement learning". Unbiased for any baseline :math:`b`
    that does not depend on the samples: ``None`` (:math:`b = 0`),
    :class:`discograd.baselines.EMA` (running mean of past costs) or
    :class:`discograd.baselines.Learned` (a module of the detached logits,
    trained through ``Estimate.cv_loss``; Mnih & Gregor 2014).

    Args:
        baseline: ``None`` or a :class:`discograd.baselines.Baseline`; it is a
            sub-module, so its state is saved and its parameters are found by
            ``estimator.parameters()``.
        n_samples: :math:`S \ge 1`, evaluations of ``f`` per data point.
        generator: default random generator.

    ``n_evals`` is :math:`S`. Variance grows with the magnitude of ``f``: with
    a large mean cost and no baseline it is large; prefer :class:`RLOO` when
    :math:`S \ge 2` samples are affordable.
    """

    def __init__(
        self,
        baseline: Baseline | None = None,
        n_samples: int = 1,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(generator=generator)
        if baseline is not None and not isinstance(baseline, Baseline):
            raise ValueError(
                "baseline must be None or a discograd.baselines.Baseline (EMA, Learned), "
                f"got baseline={baseline!r}"
            )
        self.baseline = baseline
        self.n_samples = _check_samples(n_samples, 1)

    def extra_repr(self) -> str:
        return f"n_samples={self.n_samples}"

    def estimate(self, f: CostFn, latent: Latent, generator: torch.Generator | None) -> Estimate:
        S = self.n_samples
        # The baseline is fixed before anything is sampled: it cannot see the samples.
        baseline = self.baseline
        b = None if baseline is None else baseline.predict(latent)
        fz, log_q = _draw(f, latent, S, generator)
        fd = fz.detach()
        wd = _safe_dtype(fd, latent)
        weights = fd.to(wd) if b is None else fd.to(wd) - b.detach().to(wd)
        loss = fz.mean(0) + _score_term(weights / S, log_q, fz.dtype)
        cv_loss = None if baseline is None or b is None else baseline.observe(fd, b)
        return Estimate(loss=loss, value=fd.mean(0), n_evals=S, cv_loss=cv_loss)


@register_preset("reinforce_ema", REINFORCE)
def _reinforce_ema(
    decay: float = 0.9, n_samples: int = 1, *, generator: torch.Generator | None = None
) -> REINFORCE:
    """REINFORCE with an :class:`~discograd.baselines.EMA` baseline of the given decay."""
    return REINFORCE(EMA(decay), n_samples, generator=generator)


@register("rloo")
class RLOO(_ScoreFunction):
    r"""REINFORCE leave-one-out (REINFORCE+): each sample's baseline is the mean of the others.

    .. math:: \hat g = \frac1S \sum_{s} \Big(f(z_s) - \frac{1}{S-1}\sum_{j \ne s} f(z_j)\Big)
              \nabla_\theta \log q_\theta(z_s)
              = \frac{1}{S-1} \sum_{s=1}^S \big(f(z_s) - \bar f\big)\,
                \nabla_\theta \log q_\theta(z_s)

    plus :math:`\frac1S\sum_s \nabla_\theta f(z_s)` where ``f`` depends on the
    parameters. Unbiased (each baseline is independent of the sample it
    multiplies). Kool, van Hoof & Welling 2019, "Buy 4 REINFORCE samples, get a
    baseline for free!"; Salimans & Knowles 2014. Dong, Mnih & Tucker 2021 find
    it a strong default at equal cost.

    Args:
        n_samples: :math:`S \ge 2` (= ``n_evals``).
        generator: default random generator.
    """

    def __init__(self, n_samples: int = 2, *, generator: torch.Generator | None = None) -> None:
        super().__init__(generator=generator)
        self.n_samples = _check_samples(n_samples, 2)

    def extra_repr(self) -> str:
        return f"n_samples={self.n_samples}"

    def _weights(self, fd: Tensor) -> Tensor:
        """Score-term weights of the detached costs ``fd`` ``[S, ...]``."""
        return (fd - fd.mean(0)) / (self.n_samples - 1)

    def estimate(self, f: CostFn, latent: Latent, generator: torch.Generator | None) -> Estimate:
        S = self.n_samples
        fz, log_q = _draw(f, latent, S, generator)
        fd = fz.detach()
        weights = self._weights(as_dtype(fd, _safe_dtype(fd, latent)))
        loss = fz.mean(0) + _score_term(weights, log_q, fz.dtype)
        return Estimate(loss=loss, value=fd.mean(0), n_evals=S)


@register("vargrad")
class VarGrad(RLOO):
    r"""VarGrad: the gradient of the log-variance loss, for KL objectives.

    Richter, Boustati, Nüsken, Ruiz & Akyildiz 2020, "VarGrad: A Low-Variance
    Gradient Estimator for Variational Inference". For
    :math:`f(z) = \log q_\theta(z) - \log p(z)` (a negative ELBO up to a
    constant), the gradient of :math:`\tfrac12 \widehat{\mathrm{Var}}_{r}[f]` at
    :math:`r = q_\theta` (samples held fixed) is

    .. math:: \hat g_\theta = \frac{1}{S-1} \sum_{s=1}^S \big(f(z_s) - \bar f\big)\,
              \nabla_\theta \log q_\theta(z_s),

    an unbiased estimate of :math:`\nabla_\theta \mathrm{KL}(q_\theta \| p)`.
    It differs from :class:`RLOO` only by dropping the zero-mean term
    :math:`\frac1S \sum_s \nabla_\theta \log q_\theta(z_s)` that the pathwise
    gradient of :math:`f`'s own :math:`\log q` contributes.

    Surrogate (``sg`` = stop-gradient, ``zv(x) = x - sg(x)``)::

        loss = mean_s f_s + sum_s sg((f_s - f̄)/(S-1)) zv(log q_s) - (1/S) sum_s zv(log q_s)

    Its θ-gradient is :math:`\frac1S\sum_s \nabla_\theta f_s + \hat g_\theta -
    \frac1S \sum_s \nabla_\theta \log q_s`. When ``f``'s dependence on θ is its
    :math:`\log q` term, :math:`\nabla_\theta f_s = \nabla_\theta \log q_s` and the
    first and last terms cancel: the gradient is exactly :math:`\hat g_\theta`
    above. For any other ``f`` it is the RLOO estimator minus the zero-mean
    term :math:`\frac1S\sum_s \nabla_\theta \log q_s`, so it stays unbiased.
    Parameters inside :math:`p` (a decoder, a learned prior) get the usual
    pathwise gradient :math:`\frac1S \sum_s \nabla_\phi f(z_s)`.

    Use it for (negative) ELBOs whose ``f`` computes :math:`\log q` itself; for
    other costs prefer :class:`RLOO`.

    Args:
        n_samples: :math:`S \ge 2` (= ``n_evals``).
        generator: default random generator.
    """

    def _weights(self, fd: Tensor) -> Tensor:
        # RLOO's weights minus 1/S: cancels the score that f's own log q contributes.
        return super()._weights(fd) - 1.0 / self.n_samples
