r"""The semi-supervised M2 model (Kingma, Rezende, Mohamed & Welling 2014), with any estimator.

Generative model :math:`p(y)\,p(z)\,p_\theta(x \mid y, z)`: a uniform class prior
:math:`p(y) = 1/C`, :math:`p(z) = \mathcal N(0, I)`, Bernoulli pixels. Inference
model :math:`q_\phi(y \mid x)` (the classifier) and a Gaussian
:math:`q_\phi(z \mid x, y) = \mathcal N(\mu(x, y), \mathrm{diag}\,\sigma^2(x, y))`,
reparameterised.

Labelled examples (Kingma et al. 2014, the labelled bound):

.. math:: -\mathcal L(x, y) = \mathbb E_{q(z|x,y)}\big[-\log p(x \mid y, z)\big]
          + \mathrm{KL}\big(q(z \mid x, y)\,\|\,p(z)\big) - \log p(y),

one reparameterised :math:`z` and the analytic Gaussian KL.

Unlabelled examples, :math:`y` a latent variable (the unlabelled bound):

.. math:: \mathcal U(x) = \sum_y q(y \mid x)\,\big[-\mathcal L(x, y)\big]
          - \mathcal H\big(q(y \mid x)\big)
          = \mathbb E_{y \sim q(y|x)}\big[-\mathcal L(x, y) + \log q(y \mid x)\big].

* ``"marginal"`` — exact marginalisation over the classes: all :math:`C`
  one-hot labels go through the encoder and decoder in **one batched call**
  (the :class:`~discograd.estimators.Exact` estimator on
  :math:`q(y \mid x)`), :math:`C` evaluations of :math:`-\mathcal L(x, y)`
  per example.
* any :class:`~discograd.estimators.Estimator` (Gumbel-Softmax and
  straight-through Gumbel-Softmax in Jang et al. 2017 §4.3; RLOO, REINFORCE,
  ARSM, ... all through the same contract) — the estimator handles
  :math:`\mathbb E_{q(y|x)}[f(y)]` with :math:`f(y) = -\mathcal L(x, y)` for
  one-hot or relaxed :math:`y` (a relaxed :math:`y` enters the encoder and
  decoder as a point of the simplex).

  The entropy term is ``entropy="analytic"`` (default): :math:`-\mathcal H(q)`
  computed exactly, so only :math:`\mathbb E_q[-\mathcal L]` is estimated and
  its exact gradient is added; or ``"sampled"``: :math:`f(y) = -\mathcal L(x, y)
  + \log q(y \mid x)` with :math:`\log q(y|x) = \sum_k y_k \log \pi_k` (also
  for relaxed :math:`y`), the whole of :math:`\mathcal U` through the estimator.
  Both have the same expectation; the analytic form leaves less to chance
  (the entropy and its gradient are exact), so it usually has less variance.

Training objective: Kingma et al.'s :math:`\mathcal J^\alpha` per data point of a
training set with :math:`N_l` labelled and :math:`N_u` unlabelled examples,
:math:`N = N_l + N_u`:

.. math:: \frac{\mathcal J^\alpha}{N} = \frac{N_l}{N}\,\overline{-\mathcal L(x, y)}_{\,l}
          + \frac{N_u}{N}\,\overline{\mathcal U(x)}_{\,u}
          + \frac{\alpha}{N}\,\overline{-\log q(y \mid x)}_{\,l},

bars denoting means over the labelled / unlabelled batches (an unbiased
estimate of Kingma's summed :math:`\mathcal J^\alpha` divided by :math:`N`,
whatever the batch sizes). Kingma et al. use :math:`\alpha = 0.1 \cdot N`,
i.e. ``alpha`` :math:`= \alpha / N = 0.1` here. (A public TensorFlow
replication of their code draws labelled and unlabelled examples into every
minibatch in proportion :math:`N_l : N_u` and scales the classification loss
by :math:`\alpha` times the batch size over the labelled examples per batch,
which gives these same weights.)

Kingma et al. 2014, "Semi-supervised Learning with Deep Generative Models"
(NeurIPS); Jang, Gu & Poole 2017, "Categorical Reparameterization with
Gumbel-Softmax" (ICLR), §4.3.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import OneHotCategorical

from discograd.estimators.base import Estimator
from discograd.estimators.exact import Exact
from discograd.models.nets import mlp

__all__ = ["M2", "M2Objective", "UnlabelledTerm"]

Entropy = Literal["analytic", "sampled"]
Method = Estimator | Literal["marginal"]

_LOGVAR_MAX = 20.0  # exp(±20/2) keeps σ and the KL finite for any encoder output


@dataclass
class UnlabelledTerm:
    """:math:`\\mathcal U(x)` of a batch under one method.

    Attributes:
        loss: ``[B]`` surrogate (attached): its value is ``value``, its gradient the estimate.
        value: ``[B]`` detached Monte-Carlo estimate of :math:`\\mathcal U(x)`.
        cv_loss: the estimator's control-variate loss, or ``None``.
        n_evals: evaluations of :math:`-\\mathcal L(x, y)` per example (C for ``"marginal"``).
    """

    loss: Tensor
    value: Tensor
    cv_loss: Tensor | None
    n_evals: float


@dataclass
class M2Objective:
    """One training evaluation of :meth:`M2.objective`.

    Attributes:
        loss: scalar to back-propagate, :math:`\\mathcal J^\\alpha / N`.
        labelled_neg_elbo: ``[B_l]`` detached :math:`-\\mathcal L(x, y)` of the labelled batch.
        class_nll: ``[B_l]`` detached :math:`-\\log q(y \\mid x)` of the labelled batch.
        unlabelled_bound: ``[B_u]`` detached estimate of :math:`\\mathcal U(x)`.
        cv_loss: the estimator's control-variate loss (``None`` if none).
        n_evals: evaluations of :math:`-\\mathcal L(x, y)` per unlabelled example.
    """

    loss: Tensor
    labelled_neg_elbo: Tensor
    class_nll: Tensor
    unlabelled_bound: Tensor
    cv_loss: Tensor | None
    n_evals: float


class M2(nn.Module):
    r"""The M2 model: classifier :math:`q(y|x)`, encoder :math:`q(z|x,y)`, decoder :math:`p(x|y,z)`.

    Args:
        x_dim: pixels per image (Bernoulli).
        n_classes: :math:`C` (10 real classes; Jang et al. time 100 classes too).
        z_dim: size of the Gaussian latent (Kingma et al.: 50 on MNIST).
        hidden: hidden layer sizes of each of the three networks (Kingma et
            al.: one layer of 500 units on MNIST).
        activation: their nonlinearity (Kingma et al.: softplus).
    """

    def __init__(
        self,
        x_dim: int = 784,
        n_classes: int = 10,
        z_dim: int = 50,
        hidden: Sequence[int] = (500,),
        activation: str = "softplus",
    ) -> None:
        super().__init__()
        for name, v, lo in (("x_dim", x_dim, 1), ("n_classes", n_classes, 2), ("z_dim", z_dim, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {name}={v!r}")
        self.x_dim, self.n_classes, self.z_dim = x_dim, n_classes, z_dim
        hidden = tuple(hidden)
        self.classifier = mlp([x_dim, *hidden, n_classes], activation)
        self.encoder = mlp([x_dim + n_classes, *hidden, 2 * z_dim], activation)
        self.decoder = mlp([z_dim + n_classes, *hidden, x_dim], activation)

    # ------------------------------------------------------------ networks
    def class_logits(self, x: Tensor) -> Tensor:
        """Normalised :math:`\\log q(y \\mid x)`, ``[..., C]``."""
        return torch.log_softmax(self.classifier(x), -1)

    def q_y(self, x: Tensor) -> OneHotCategorical:
        """:math:`q(y \\mid x)` as a ``OneHotCategorical`` with batch shape ``x.shape[:-1]``."""
        return OneHotCategorical(logits=self.class_logits(x), validate_args=False)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """The most probable class under :math:`q(y \\mid x)`, int64 ``[...]``."""
        return self.classifier(x).argmax(-1)

    def neg_elbo(
        self,
        x: Tensor,
        y: Tensor,
        *,
        generator: torch.Generator | None = None,
        eps: Tensor | None = None,
    ) -> Tensor:
        """:math:`-\\mathcal L(x, y)` with one reparameterised :math:`z`, shape ``y.shape[:-1]``.

        Args:
            x: images ``[B, x_dim]`` (or already of ``y``'s leading shape).
            y: one-hot or relaxed labels ``S + (B, C)``.
            generator: stream of the Gaussian noise.
            eps: the standard normal noise ``S + (B, z_dim)`` itself (tests);
                drawn from ``generator`` when ``None``.
        """
        if y.shape[-1] != self.n_classes:
            raise ValueError(f"y must end in {self.n_classes} classes, got shape {tuple(y.shape)}")
        lead = y.shape[:-1]
        xe = x.expand(lead + x.shape[-1:])
        stats = self.encoder(torch.cat([xe, y.to(xe.dtype)], -1))
        mu, logvar = stats.chunk(2, -1)
        logvar = logvar.clamp(-_LOGVAR_MAX, _LOGVAR_MAX)
        if eps is None:
            eps = torch.randn(mu.shape, dtype=mu.dtype, device=mu.device, generator=generator)
        z = mu + (0.5 * logvar).exp() * eps
        logits = self.decoder(torch.cat([z, y.to(z.dtype)], -1))
        rec = F.binary_cross_entropy_with_logits(logits, xe, reduction="none").sum(-1)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)
        return rec + kl + math.log(self.n_classes)  # −log p(y) = log C

    # ------------------------------------------------------------ objectives
    def labelled_terms(
        self, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(−L(x, y), −log q(y|x))``, both ``[B]``, of a labelled batch (``y``: int64 classes)."""
        if y.dtype != torch.int64:
            raise TypeError(f"labels must be int64 class indices, got dtype {y.dtype}")
        one_hot = F.one_hot(y, self.n_classes).to(x.dtype)
        nll = -self.class_logits(x).gather(-1, y.unsqueeze(-1)).squeeze(-1)
        return self.neg_elbo(x, one_hot, generator=generator), nll

    def unlabelled(
        self,
        x: Tensor,
        method: Method,
        *,
        entropy: Entropy = "analytic",
        generator: torch.Generator | None = None,
    ) -> UnlabelledTerm:
        """:math:`\\mathcal U(x)` of an unlabelled batch ``[B, x_dim]`` by ``method``.

        ``"marginal"`` sums over all classes exactly (one batched call of the
        encoder/decoder on ``[C, B, ...]``); an estimator estimates the
        expectation over :math:`y \\sim q(y \\mid x)`.
        """
        if entropy not in ("analytic", "sampled"):
            raise ValueError(f"entropy must be 'analytic' or 'sampled', got entropy={entropy!r}")
        if isinstance(method, str):
            if method != "marginal":
                raise ValueError(f"method must be 'marginal' or an Estimator, got {method!r}")
            est: Estimator = Exact(max_support=max(self.n_classes, 2))
        elif isinstance(method, Estimator):
            est = method
        else:
            raise TypeError(
                f"method must be 'marginal' or an Estimator, got {type(method).__name__}"
            )
        logits = self.class_logits(x)
        q = OneHotCategorical(logits=logits, validate_args=False)

        if entropy == "analytic":

            def f(y: Tensor) -> Tensor:
                return self.neg_elbo(x, y, generator=generator)

            # −H(q) exactly; its gradient is exact too.
            extra = (logits.exp() * logits).sum(-1)
        else:

            def f(y: Tensor) -> Tensor:
                # Σ_k y_k log π_k: log q(y|x) at one-hot y, its linear extension at relaxed y.
                return self.neg_elbo(x, y, generator=generator) + (y * logits).sum(-1)

            extra = torch.zeros_like(logits[..., 0])
        out = est(f, q, generator=generator)
        return UnlabelledTerm(
            loss=out.loss + extra,
            value=(out.value + extra).detach(),
            cv_loss=out.cv_loss,
            n_evals=out.mean_evals,
        )

    def objective(
        self,
        x_l: Tensor,
        y_l: Tensor,
        x_u: Tensor,
        method: Method,
        *,
        alpha: float = 0.1,
        dataset_sizes: tuple[int, int] | None = None,
        entropy: Entropy = "analytic",
        generator: torch.Generator | None = None,
    ) -> M2Objective:
        """The surrogate of :math:`\\mathcal J^\\alpha / N` (module docstring) for one step.

        Args:
            x_l, y_l: labelled batch ``[B_l, x_dim]`` and its int64 labels ``[B_l]``.
            x_u: unlabelled batch ``[B_u, x_dim]``.
            method: ``"marginal"`` or an estimator for :math:`y \\sim q(y|x)`.
            alpha: weight of the classification term, :math:`\\alpha / N`
                (Kingma et al.: 0.1).
            dataset_sizes: ``(N_l, N_u)``, the sizes of the labelled and
                unlabelled training sets (weights ``N_l/N``, ``N_u/N``);
                ``None`` uses the batch sizes.
            entropy: ``"analytic"`` or ``"sampled"`` (module docstring).
            generator: random stream of every draw.
        """
        if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool)) or not (
            alpha >= 0 and math.isfinite(alpha)
        ):
            raise ValueError(f"alpha must be a finite number >= 0, got alpha={alpha!r}")
        n_l, n_u = dataset_sizes if dataset_sizes is not None else (len(x_l), len(x_u))
        if n_l < 1 or n_u < 1:
            raise ValueError(f"dataset_sizes must be positive, got {(n_l, n_u)}")
        w_l, w_u = n_l / (n_l + n_u), n_u / (n_l + n_u)
        lab, class_nll = self.labelled_terms(x_l, y_l, generator=generator)
        unl = self.unlabelled(x_u, method, entropy=entropy, generator=generator)
        loss = w_l * lab.mean() + w_u * unl.loss.mean() + alpha * class_nll.mean()
        return M2Objective(
            loss=loss,
            labelled_neg_elbo=lab.detach(),
            class_nll=class_nll.detach(),
            unlabelled_bound=unl.value,
            cv_loss=unl.cv_loss,
            n_evals=unl.n_evals,
        )

    @torch.no_grad()
    def marginal_bound(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """:math:`\\mathcal U(x)` summed exactly over the classes (one z per class), ``[B]``.

        The negative ELBO of :math:`\\log p(x)` with :math:`y` marginalised — the
        test "−ELBO" of the semi-supervised experiments.
        """
        return self.unlabelled(x, "marginal", generator=generator).value
