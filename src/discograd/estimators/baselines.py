r"""Baselines for the score-function estimator :class:`~discograd.estimators.REINFORCE`.

A baseline :math:`b` is subtracted from the cost in the score term,
:math:`(f(z) - b)\,\nabla_\theta \log q_\theta(z)`. The estimator stays unbiased
as long as :math:`b` does not depend on the sample :math:`z` it multiplies
(:math:`\mathbb E[\nabla \log q] = 0`); a good :math:`b` is close to
:math:`\mathbb E[f]` and removes most of the variance a large mean cost causes
(Williams 1992; Mnih & Gregor 2014, "Neural Variational Inference and Learning
in Belief Networks", NVIL).

The protocol has two halves, called by the estimator in this order:

1. ``b = baseline.predict(latent)`` *before* the sample is drawn, so the current
   sample cannot enter its own baseline. ``b`` has shape ``latent.batch_shape``
   (or broadcasts to it); it may carry gradient to the baseline's own
   parameters, the estimator uses ``b.detach()``.
2. ``cv_loss = baseline.observe(costs, b)`` with the detached costs
   ``S + batch_shape`` of this call: the baseline updates its state (EMA) or
   returns a loss that trains it (Learned); this becomes ``Estimate.cv_loss``.

Baselines:

* :class:`EMA` — an exponential moving average of past mean costs.
* :class:`Learned` — an input-dependent baseline, a module of the detached logits.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from discograd.estimators._ops import compute_dtype, is_compiling
from discograd.estimators.base import Latent

__all__ = ["EMA", "Baseline", "Learned"]


class Baseline(nn.Module):
    """Base class of baselines; see the module docstring for the protocol."""

    def predict(self, latent: Latent) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def observe(self, costs: Tensor, b: Tensor) -> Tensor | None:  # pragma: no cover
        raise NotImplementedError


class EMA(Baseline):
    r"""Exponential moving average of past costs:
    :math:`m_t = \beta\, m_{t-1} + (1 - \beta)\,\bar f_t`.

    :math:`\bar f_t` is the mean cost of call :math:`t` (over samples and data
    points: one scalar baseline shared by all data points). The baseline used
    in call :math:`t` is the bias-corrected average of the *previous* calls,
    :math:`b_t = m_{t-1} / (1 - \beta^{t-1})` (as in Adam, so that the first
    average equals the first mean cost instead of being shrunk towards 0); the
    update with this call's costs happens after :math:`b_t` is fixed, so the
    current sample never enters its own baseline. **On the first call there is
    no past cost and the baseline is 0** (plain REINFORCE).

    The state lives in buffers (``state_dict`` saves and restores it). It is
    updated only in training mode; ``baseline.eval()`` (or the owning
    estimator's ``eval()``) freezes it.

    Args:
        decay: :math:`\beta \in [0, 1)`; 0.9–0.99 are typical. With 0 the
            baseline is the previous call's mean cost.
    """

    count: Tensor
    average: Tensor

    def __init__(self, decay: float = 0.9) -> None:
        super().__init__()
        if (
            isinstance(decay, bool)
            or not isinstance(decay, (int, float))
            or not (0.0 <= decay < 1.0)
        ):
            raise ValueError(f"decay must be a float in [0, 1), got decay={decay!r}")
        self.decay = float(decay)
        # float64 where it exists: the average of millions of costs in float32 drifts.
        self.register_buffer("average", torch.zeros((), dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))

    def extra_repr(self) -> str:
        return f"decay={self.decay}"

    @property
    def value(self) -> float:
        """The baseline the next call will use (0 before any update)."""
        n = int(self.count)
        if n == 0:
            return 0.0
        return float(self.average) / (1.0 - self.decay**n)

    def predict(self, latent: Latent) -> Tensor:
        # Tensor ops only, no int(self.count): torch.compile traces this without a
        # graph break. A 0-dim pow matches Python's float ** int exactly; at
        # count 0 the division is 0/0 and the where picks the 0 baseline.
        n = self.count.to(self.average.dtype)
        b = torch.where(self.count > 0, self.average / (1.0 - self.decay**n), 0.0)
        # The compute dtype, not the logits' (float16 overflows at 65504): the
        # estimator forms f - b in it.
        return b.to(device=latent.device, dtype=compute_dtype(latent.dtype))

    @torch.no_grad()
    def observe(self, costs: Tensor, b: Tensor) -> None:
        if not self.training:
            return None
        mean = costs.detach().to(dtype=self.average.dtype, device=self.average.device).mean()
        if is_compiling():
            # bool(tensor) would break the graph: the check is an in-graph assert
            # (a RuntimeError). The buffers are replaced, not updated in place
            # (same values): in place, torch 2.13 gets two things silently wrong,
            # inductor's backward recomputes the baseline from the buffers after
            # this update (wrong gradients; pytorch/pytorch PR 197039), and
            # in-place ops on the 0-dim float64 average are dropped altogether.
            torch._assert_async(torch.isfinite(mean), "EMA baseline: the mean cost is not finite")
            self.average = self.average * self.decay + (1.0 - self.decay) * mean
            self.count = self.count + 1
            return None
        if not bool(torch.isfinite(mean)):
            raise ValueError(f"EMA baseline: the mean cost is not finite ({float(mean)})")
        self.average.mul_(self.decay).add_((1.0 - self.decay) * mean)
        self.count.add_(1)
        return None


class Learned(Baseline):
    r"""An input-dependent baseline :math:`b_\psi(\theta)`, trained by regression on the cost.

    ``module`` maps the detached logits of each data point, flattened to shape
    ``batch_shape + (V*C,)`` (categorical: normalised log-probabilities) or
    ``batch_shape + (V,)`` (Bernoulli logits), to one number per data point
    (shape ``batch_shape`` or ``batch_shape + (1,)``). Masked (``-inf``)
    log-probabilities are fed as ``-50`` (probability ~2e-22) and ``±inf``
    Bernoulli logits (deterministic variables) as ``±50``, so a module sees
    finite inputs.

    ``Estimate.cv_loss`` is :math:`\mathrm{mean}\,(f(z) - b_\psi)^2` over samples
    and data points: minimising it drives :math:`b_\psi` to
    :math:`\mathbb E[f \mid \theta]` (NVIL's input-dependent baseline, Mnih &
    Gregor 2014). The estimator uses ``b.detach()``, so no gradient of
    ``Estimate.loss`` reaches :math:`\psi`; only ``cv_loss`` trains it. The
    input is detached, so ``cv_loss`` sends no gradient to :math:`\theta`
    either. ``b`` depends on :math:`\theta` only, never on the sample, so the
    estimator stays unbiased whatever :math:`\psi` is.

    Inputs are cast to the dtype of the module's first parameter (if any); the
    module must live on the logits' device.

    Args:
        module: an ``nn.Module`` (e.g. ``nn.Sequential(nn.Linear(V*C, 32),
            nn.Tanh(), nn.Linear(32, 1))``).
    """

    MASKED_INPUT = -50.0

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise ValueError(
                f"module must be a torch.nn.Module, got module={type(module).__name__}"
            )
        self.module = module

    def features(self, latent: Latent) -> Tensor:
        """The module's input: detached logits flattened per data point."""
        x = latent.logits.detach()
        if latent.kind == "categorical":
            x = x.clamp_min(self.MASKED_INPUT)
        else:  # a ±inf logit (a deterministic variable) as ±50: probability 1 - 2e-22
            x = x.clamp(self.MASKED_INPUT, -self.MASKED_INPUT)
        x = x.reshape(latent.batch_shape + (-1,))
        p = next(self.module.parameters(), None)
        return x.to(p.dtype) if p is not None and p.is_floating_point() else x

    def predict(self, latent: Latent) -> Tensor:
        b = self.module(self.features(latent))
        if not isinstance(b, Tensor):
            raise TypeError(f"the Learned baseline's module returned {type(b).__name__}")
        bs = latent.batch_shape
        if b.shape == bs + (1,):
            b = b.squeeze(-1)
        if b.shape != bs:
            raise ValueError(
                f"the Learned baseline's module returned shape {tuple(b.shape)}; expected "
                f"batch_shape {tuple(bs)} or batch_shape + (1,)"
            )
        return b

    def observe(self, costs: Tensor, b: Tensor) -> Tensor:
        err = costs.detach().to(b.dtype) - b
        return err.pow(2).mean()
