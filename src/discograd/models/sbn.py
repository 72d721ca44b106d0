r"""Stochastic binary networks for structured output prediction (Jang et al. 2017 §4.2).

Task (Raiko et al. 2015; Gu et al. 2016, MuProp; Jang et al. 2017): predict the
lower half :math:`x_b` of an image from its upper half :math:`x_t` through two
layers of discrete stochastic units,

.. math:: x_t \;\to\; h_1 \sim p(h_1 \mid x_t) \;\to\; h_2 \sim p(h_2 \mid h_1)
          \;\to\; x_b \sim \prod_j \mathrm{Bernoulli}(x_{b,j};\ \sigma(g(h_2))_j),

each stochastic layer Bernoulli (392-200-200-392 on MNIST) or categorical
(392-(20×10)-(20×10)-392), deterministic affine maps between them (optionally
with hidden layers). The rows of an H×W image are split at ``H // 2``, so the
model works on 8×8 digits as on 28×28 MNIST.

**Training objective** (Jang et al. train with one sample, as MuProp):

.. math:: \mathcal J(x) = \mathbb E_{h_1 \sim p(h_1|x_t)}\,
          \mathbb E_{h_2 \sim p(h_2|h_1)} \big[-\log p(x_b \mid h_2)\big]
          \;\ge\; -\log p(x_b \mid x_t),

an upper bound on the negative log-likelihood (Jensen). We do not offer the
m-sample training bound :math:`-\log \frac1m\sum_i p(x_b|h^{(i)})`: it couples
m joint samples inside one log, so it is not an expectation of a cost of one
sample and does not fit the estimator contract ``E_q[f]`` (it needs
multi-sample estimators such as VIMCO).

**Two stochastic layers, one estimator contract: nesting.** The outer
estimator handles :math:`q_1 = p(h_1|x_t)` with the cost

.. math:: f_1(h_1) = \text{inner}\big(f_2,\ p(h_2 \mid h_1)\big).\mathrm{loss},
          \qquad f_2(h_2) = -\log p(x_b \mid h_2),

i.e. ``f1`` calls a second estimator (same kind, separate instance) on the
second layer and returns its surrogate loss, of shape ``S + batch``. Why this
is unbiased when both estimators are (checked against exact enumeration in
``tests/test_sbn.py``):

* the *value* of the inner surrogate is the inner Monte-Carlo estimate, an
  unbiased estimate of :math:`\bar f_1(h_1) = \mathbb E[f_2 \mid h_1]`, drawn with
  noise independent of the outer noise (the inner estimator draws fresh noise
  for every entry of ``S + batch``). The outer score-function terms use
  :math:`f_1` values detached: :math:`\mathbb E[f_1(h_1)\, s(h_1)] =
  \mathbb E[\bar f_1(h_1)\, s(h_1)]` for any score weight :math:`s` that depends
  on the outer sample and outer noise only, so they are unbiased for the
  gradient of the first layer's parameters. Estimators that are linear in the
  cost values (REINFORCE, RLOO, ARM, DisARM, the ARSM family, including their
  deduplicated evaluations) inherit unbiasedness this way.
* the *gradient* of the inner surrogate is the inner estimator's gradient: an
  unbiased estimate of :math:`\nabla \bar f_1(h_1)` with respect to the second
  layer's and the decoder's parameters. The outer estimator back-propagates
  into ``f1`` wherever it keeps ``f1`` attached (its pathwise term), so those
  parameters get :math:`\mathbb E_{h_1}[\nabla \bar f_1(h_1)]`.
* relaxed outer estimators (Gumbel-Softmax and friends) pass relaxed
  :math:`h_1`; the inner layer's logits are then a differentiable function of
  :math:`h_1` and gradients flow through the inner surrogate into the first
  layer (biased, as those estimators are anyway). REBAR/RELAX as the outer
  estimator also differentiate ``f1`` on relaxed points: the inner
  surrogate's input-gradient is then unbiased for score-function and ARM-type
  inner estimators, so the control-variate identity holds in expectation.

**Accounting.** ``n_evals`` of an :class:`SBNObjective` counts decoder
evaluations (:math:`f_2`, the expensive cost of the model) per data point:
the outer estimator's ``n_evals`` (evaluations of ``f1``) times the mean of
the inner estimators' ``n_evals`` over those ``f1`` evaluations; it is exact
when the inner count is constant and an average for the deduplicating
ARM/ARSM family. ``layer_evals`` is the outer ``n_evals`` alone. The
``cv_loss`` is the sum of the outer call's and of every inner call's
``cv_loss`` (the two estimators' control variates are disjoint parameters, so
one optimiser over both trains each on its own variance objective).

**Evaluation** (Jang et al.: m = 1000): the importance-sampled estimate of the
negative log-likelihood with the model as proposal,

.. math:: -\log p(x_b \mid x_t) \approx -\log \frac1m \sum_{i=1}^m p(x_b \mid h_2^{(i)}),
          \qquad (h_1^{(i)}, h_2^{(i)}) \sim p(h_1 \mid x_t)\, p(h_2 \mid h_1^{(i)}),

which is an upper bound in expectation that tightens as m grows, computed in
chunks of samples with a running log-sum-exp.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent, OneHotCategorical

from discograd.estimators.base import Estimate, Estimator, Latent
from discograd.models.nets import mlp

__all__ = ["SBNObjective", "StochasticBinaryNetwork"]

LatentKind = Literal["bernoulli", "categorical"]


@dataclass
class SBNObjective:
    """One training evaluation of a :class:`StochasticBinaryNetwork`.

    Attributes:
        loss: scalar, the batch mean of the nested surrogate (back-propagate it).
        surrogate: ``[B]``, the per-example nested surrogate (attached);
            ``loss = surrogate.mean()``.
        nll: ``[B]``, detached, the estimators' Monte-Carlo estimate of
            :math:`\\mathbb E[-\\log p(x_b \\mid h_2)]` (the training bound).
        cv_loss: sum of the outer and all inner ``cv_loss`` (``None`` if none).
        n_evals: decoder evaluations per data point (mean over the batch).
        layer_evals: evaluations of the first layer's cost ``f1`` (= calls of
            the second layer) per data point (mean over the batch).
    """

    loss: Tensor
    surrogate: Tensor
    nll: Tensor
    cv_loss: Tensor | None
    n_evals: float
    layer_evals: float


class StochasticBinaryNetwork(nn.Module):
    r"""Two-stochastic-layer network predicting the bottom half of an image from its top half.

    Args:
        image_shape: ``(H, W)``; the top ``H // 2`` rows are the input, the
            remaining rows the target (MNIST: 392 / 392 pixels; digits: 32 / 32).
        latent: ``"bernoulli"`` (binary units) or ``"categorical"`` (one-hot
            variables of ``n_categories`` classes).
        units: units per stochastic layer ``(h1, h2)``: binary units
            (Bernoulli; default ``(200, 200)``) or categorical variables
            (categorical; default ``(20, 20)``, i.e. 20×10 with 10 classes).
        n_categories: classes per categorical variable (ignored for Bernoulli).
        hidden: deterministic hidden layer sizes inside each map
            (x_t→h1, h1→h2, h2→x_b). ``()`` (default, as Jang et al. and
            MuProp) makes every map affine.
        activation: nonlinearity of the hidden layers (see
            :data:`discograd.models.nets.ACTIVATIONS`).

    Jang, Gu & Poole 2017, "Categorical Reparameterization with Gumbel-Softmax"
    (ICLR), §4.2; Raiko, Berglund, Alain & Dinh 2015, "Techniques for Learning
    Binary Stochastic Feedforward Neural Networks" (ICLR); Gu, Levine,
    Sutskever & Mnih 2016, "MuProp" (ICLR).
    """

    def __init__(
        self,
        image_shape: tuple[int, int] = (28, 28),
        latent: LatentKind = "bernoulli",
        units: Sequence[int] | None = None,
        n_categories: int = 10,
        hidden: Sequence[int] = (),
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        if (
            len(image_shape) != 2
            or any(isinstance(s, bool) or not isinstance(s, int) for s in image_shape)
            or image_shape[0] < 2
            or image_shape[1] < 1
        ):
            raise ValueError(
                f"image_shape must be (H, W) with H >= 2 and W >= 1, got {image_shape!r}"
            )
        if latent not in ("bernoulli", "categorical"):
            raise ValueError(f"latent must be 'bernoulli' or 'categorical', got latent={latent!r}")
        if units is None:
            units = (200, 200) if latent == "bernoulli" else (20, 20)
        units = tuple(units)
        if len(units) != 2 or any(
            isinstance(u, bool) or not isinstance(u, int) or u < 1 for u in units
        ):
            raise ValueError(f"units must be two positive ints (h1, h2), got units={units!r}")
        if latent == "categorical" and (
            isinstance(n_categories, bool) or not isinstance(n_categories, int) or n_categories < 2
        ):
            raise ValueError(f"n_categories must be an int >= 2, got n_categories={n_categories!r}")
        H, W = image_shape
        self.image_shape = (H, W)
        self.top_dim = (H // 2) * W
        self.bottom_dim = (H - H // 2) * W
        self.latent_kind: LatentKind = latent
        self.units = units
        self.n_categories = n_categories if latent == "categorical" else 2
        per = self.n_categories if latent == "categorical" else 1
        code1, code2 = units[0] * per, units[1] * per
        hidden = tuple(hidden)
        self.layer1 = mlp([self.top_dim, *hidden, code1], activation)
        self.layer2 = mlp([code1, *hidden, code2], activation)
        self.decoder = mlp([code2, *hidden, self.bottom_dim], activation)

    # ------------------------------------------------------------- structure
    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` ``[..., H*W]`` -> (top ``[..., top_dim]``, bottom ``[..., bottom_dim]``)."""
        if x.shape[-1] != self.top_dim + self.bottom_dim:
            raise ValueError(
                f"x has {x.shape[-1]} features; this network expects flattened "
                f"{self.image_shape[0]}x{self.image_shape[1]} images "
                f"({self.top_dim + self.bottom_dim} features)"
            )
        return x[..., : self.top_dim], x[..., self.top_dim :]

    def _dist(self, logits: Tensor, n: int) -> Distribution:
        if self.latent_kind == "bernoulli":
            return Independent(Bernoulli(logits=logits, validate_args=False), 1)
        logits = logits.view(*logits.shape[:-1], n, self.n_categories)
        return Independent(OneHotCategorical(logits=logits, validate_args=False), 1)

    def _flat(self, h: Tensor) -> Tensor:
        # Categorical codes arrive one-hot (or relaxed) with a trailing C dimension.
        return h.flatten(-2) if self.latent_kind == "categorical" else h

    def q1(self, x_top: Tensor) -> Distribution:
        """:math:`p(h_1 \\mid x_t)`; batch shape ``x_top.shape[:-1]``."""
        return self._dist(self.layer1(x_top), self.units[0])

    def q2(self, h1: Tensor) -> Distribution:
        """:math:`p(h_2 \\mid h_1)` for codes ``h1`` of shape ``S + batch + var (+ C)``."""
        return self._dist(self.layer2(self._flat(h1)), self.units[1])

    def bottom_logits(self, h2: Tensor) -> Tensor:
        """Logits of the bottom pixels given codes ``h2`` (``S + batch + var (+ C)``)."""
        return self.decoder(self._flat(h2))

    def log_likelihood(self, x_bottom: Tensor, h2: Tensor) -> Tensor:
        """:math:`\\log p(x_b \\mid h_2)`, shape ``S + batch``, for ``h2`` of ``S + batch + …``."""
        logits, target = torch.broadcast_tensors(self.bottom_logits(h2), x_bottom)
        return -F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)

    # -------------------------------------------------------------- training
    def objective(
        self,
        x: Tensor,
        estimator: Estimator,
        inner: Estimator | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> SBNObjective:
        """Nested surrogate of :math:`\\mathbb E[-\\log p(x_b \\mid h_2)]` for a batch ``[B, H*W]``.

        Args:
            x: binary images, flattened.
            estimator: the outer estimator, on :math:`p(h_1 \\mid x_t)`.
            inner: the estimator on :math:`p(h_2 \\mid h_1)`, called inside the
                outer cost; ``None`` reuses ``estimator`` (fine for stateless
                estimators; give a separate instance to estimators with
                baselines, temperatures or control variates, so each layer
                keeps its own state).
            generator: random stream shared (sequentially) by both estimators.
        """
        inner = estimator if inner is None else inner
        x_top, x_bottom = self.split(x)
        calls: list[Estimate] = []

        def f2(h2: Tensor) -> Tensor:
            return -self.log_likelihood(x_bottom, h2)

        def f1(h1: Tensor) -> Tensor:
            out = inner(f2, self.q2(h1), generator=generator)
            calls.append(out)
            return out.loss

        out = estimator(f1, self.q1(x_top), generator=generator)
        B = x.shape[:-1]
        # Mean inner f2-evaluations per f1 evaluation, per data point.
        total = torch.zeros(B, device=x.device)
        count = torch.zeros(B, device=x.device)
        cv = out.cv_loss
        for c in calls:
            n = c.n_evals
            lead = c.loss.shape[: c.loss.dim() - len(B)]
            k = math.prod(lead)
            if isinstance(n, Tensor):
                total = total + n.to(total.dtype).reshape((k, *B)).sum(0)
            else:
                total = total + float(n) * k
            count = count + k
            if c.cv_loss is not None:
                cv = c.cv_loss if cv is None else cv + c.cv_loss
        per_f1 = total / count.clamp_min(1)
        outer_n = out.n_evals
        outer_t = (
            outer_n.to(total.dtype).reshape(B)
            if isinstance(outer_n, Tensor)
            else torch.full(B, float(outer_n), device=x.device)
        )
        return SBNObjective(
            loss=out.loss.mean(),
            surrogate=out.loss,
            nll=out.value.detach(),
            cv_loss=cv,
            n_evals=float((outer_t * per_f1).mean()),
            layer_evals=out.mean_evals,
        )

    # ------------------------------------------------------------ evaluation
    def _sample(self, q: Distribution, shape: tuple[int, ...], generator) -> Tensor:
        latent = Latent.parse(q, owner=type(self).__name__)
        return latent.encode(latent.sample(shape, generator=generator))

    @torch.no_grad()
    def sample_codes(
        self, x_top: Tensor, n: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``n`` ancestral samples ``(h1, h2)`` per input, leading shape ``(n,) + batch``."""
        h1 = self._sample(self.q1(x_top), (n,), generator)
        h2 = self._sample(self.q2(h1), (), generator)
        return h1, h2

    @torch.no_grad()
    def nll(
        self, x: Tensor, m: int, *, chunk: int = 100, generator: torch.Generator | None = None
    ) -> Tensor:
        """Importance-sampled :math:`-\\log \\frac1m \\sum_i p(x_b \\mid h_2^{(i)})`, ``[B]``.

        The m ancestral samples are drawn ``chunk`` at a time and combined with
        a running log-sum-exp, so memory does not grow with ``m``.
        """
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"m must be a positive int, got m={m!r}")
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk must be a positive int, got chunk={chunk!r}")
        x_top, x_bottom = self.split(x)
        total = torch.full(x.shape[:-1], -math.inf, device=x.device)
        done = 0
        while done < m:
            k = min(chunk, m - done)
            _, h2 = self.sample_codes(x_top, k, generator)
            total = torch.logaddexp(total, torch.logsumexp(self.log_likelihood(x_bottom, h2), 0))
            done += k
        return -(total - math.log(m))

    @torch.no_grad()
    def predict_bottom(
        self, x_top: Tensor, n: int = 100, generator: torch.Generator | None = None
    ) -> Tensor:
        """Predictive mean :math:`\\mathbb E[\\sigma(g(h_2))]` of the bottom pixels, n samples."""
        _, h2 = self.sample_codes(x_top, n, generator)
        return torch.sigmoid(self.bottom_logits(h2)).mean(0)
