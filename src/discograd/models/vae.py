r"""Discrete VAEs: categorical (Jang et al. 2017; ARSM) and Bernoulli (ARM; REBAR).

Generative model :math:`p(z)\,p(x \mid z)` with Bernoulli pixels, inference
model :math:`q(z \mid x)`. Training minimises the negative ELBO

.. math::
    -\mathcal L(x) = \mathbb E_{q(z|x)}[-\log p(x \mid z)] + \mathrm{KL}(q(z\mid x)\,\|\,p(z)).

The expectation is handed to any :class:`~discograd.estimators.Estimator` with
cost :math:`f(z) = -\log p(x \mid z)` (so the decoder trains pathwise through
``f``); the KL term is either

* ``"analytic"`` — the exact KL between the discrete posterior and prior (its
  gradient is exact; Jang et al.'s first option), or
* ``"relaxed"`` — a one-sample estimate of the KL between the Concrete
  relaxations of posterior and prior at temperature τ (Maddison et al.'s
  choice; seed 000's second option), evaluated in log / logit space so it stays
  finite at low τ. Meant for relaxed estimators.
* ``"estimated"`` — no separate KL term: the estimator's cost is the whole
  negative ELBO, :math:`f(z) = \log q(z \mid x) - \log p(z) - \log p(x \mid z)`,
  as in the DisARM, ARMS, Double CV and RODEO code (their estimators estimate
  all of it). The prior trains pathwise through ``f``. Inside ``f``,
  :math:`\log q` is evaluated at the detached encoder logits: its pathwise
  gradient :math:`\nabla_\phi \log q(z \mid x)` has mean zero, and the official
  code leaves it out (the encoder's gradient is the estimator's alone), so the
  gradient variance is comparable with theirs.

Multi-sample estimators (``multi_sample = True``: VIMCO, local DisARM) take
:meth:`DiscreteVAE.log_weight` instead of a cost and optimise the K-sample bound
:math:`\log \frac1K \sum_k p(x, z_k)/q(z_k \mid x)` (:meth:`DiscreteVAE.objective`).

Data-dependent initialisation (:meth:`DiscreteVAE.use_data_mean`, the REBAR /
DisARM code's choices): the encoder sees :math:`x - \bar x` (the training mean)
and the decoder's output bias starts at :math:`\mathrm{logit}(\bar x)`, clamped to
[0.001, 0.999].

Evaluation: the single-sample negative ELBO with a discrete sample and analytic
KL, and the importance-weighted bound
:math:`-\log \frac1m \sum_i p(x, z_i)/q(z_i \mid x)`, :math:`z_i \sim q`
(Burda et al. 2016), which tightens as m grows (m = 1000 in Jang et al.).
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

from discograd.distributions import BinaryConcrete, ExpConcrete
from discograd.estimators.base import CostFn, Estimator
from discograd.models.nets import mlp

__all__ = ["BernoulliVAE", "CategoricalVAE", "DiscreteVAE", "VAEObjective"]

KL = Literal["analytic", "relaxed", "estimated"]


@dataclass
class VAEObjective:
    """One training evaluation: ``loss`` to back-propagate, per-example diagnostics."""

    loss: Tensor  # scalar: mean over the batch of the surrogate negative ELBO
    neg_elbo: Tensor  # [B], detached: the estimator's Monte-Carlo estimate of −ELBO
    kl: Tensor  # [B], detached
    cv_loss: Tensor | None
    n_evals: float


class DiscreteVAE(nn.Module):
    """Shared machinery; subclasses define the posterior, the prior and the KL.

    Posteriors and priors are built with ``validate_args=False``: torch's check of
    a ``OneHotCategorical`` computes the softmax of the logits and a simplex test
    on every construction (a few percent of a training step), and the
    estimators check the logits themselves (NaN is refused, ``Latent.parse``)."""

    x_dim: int
    encoder: nn.Module
    decoder: nn.Module

    input_mean: Tensor | None
    prior_logits: Tensor

    def posterior(self, x: Tensor) -> Independent:
        raise NotImplementedError

    def prior(self) -> Independent:
        raise NotImplementedError

    def log_prob(self, logits: Tensor, z: Tensor) -> Tensor:
        """log of the factorised q or p with ``logits`` at ``z`` (also at relaxed z), summed."""
        raise NotImplementedError

    def encoder_input(self, x: Tensor) -> Tensor:
        """What the encoder sees: ``x``, less the training mean if :meth:`use_data_mean` set it."""
        return x if self.input_mean is None else x - self.input_mean

    @torch.no_grad()
    def use_data_mean(
        self, mean: Tensor, *, center_input: bool = True, init_output_bias: bool = True
    ) -> None:
        """Centre the encoder's input on ``mean`` (the training images' mean pixel values)
        and / or start the decoder's output bias at its logit (clamped to [0.001, 0.999])."""
        mean = mean.to(self.prior_logits.device, self.prior_logits.dtype)
        if center_input:
            self.input_mean = mean.clone()
        if init_output_bias:
            last = self.decoder[-1]  # type: ignore[index]
            p = mean.clamp(0.001, 0.999)
            last.bias.copy_(torch.log(p) - torch.log1p(-p))

    def decoder_input(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def analytic_kl(self, q: Independent) -> Tensor:
        raise NotImplementedError

    def relaxed_kl(self, q: Independent, tau: float | Tensor, generator=None) -> Tensor:
        raise NotImplementedError

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x | z), shape ``S + (B,)``, for ``z`` of leading shape ``S + (B,)``."""
        return -self.neg_log_likelihood(x, z)

    def neg_log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """−log p(x | z), the reconstruction cost (one negation fewer on the training path)."""
        logits = self.decoder(self.decoder_input(z))
        target = x
        if x.shape != logits.shape:
            try:  # the usual case, samples ahead of the batch dims: one view, no wrapper
                target = x.expand(logits.shape)
            except RuntimeError:
                logits, target = torch.broadcast_tensors(logits, x)
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)

    def objective(
        self,
        x: Tensor,
        estimator: Estimator,
        *,
        kl: KL = "analytic",
        tau: float | Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> VAEObjective:
        """The surrogate negative ELBO of a batch ``x`` [B, x_dim] under ``estimator``."""
        q = self.posterior(x)
        if getattr(estimator, "multi_sample", False):
            if kl != "estimated":
                raise ValueError(
                    f"a multi-sample estimator optimises the K-sample bound as a whole: "
                    f"kl must be 'estimated', got {kl!r}"
                )
            out = estimator(self.log_weight(x, q), q, generator=generator)
            return VAEObjective(
                loss=out.loss.mean(),
                neg_elbo=out.value.detach(),
                kl=torch.zeros_like(out.value),
                cv_loss=out.cv_loss,
                n_evals=out.mean_evals,
            )
        if kl == "estimated":
            a = q.base_dist.logits.detach()
            out = estimator(
                lambda z: (
                    self.log_prob(a, z)
                    - self.log_prob(self.prior_logits, z)
                    + self.neg_log_likelihood(x, z)
                ),
                q,
                generator=generator,
            )
            return VAEObjective(
                loss=out.loss.mean(),
                neg_elbo=out.value.detach(),
                kl=torch.zeros_like(out.value),
                cv_loss=out.cv_loss,
                n_evals=out.mean_evals,
            )
        out = estimator(lambda z: self.neg_log_likelihood(x, z), q, generator=generator)
        if kl == "analytic":
            kl_term = self.analytic_kl(q)
        elif kl == "relaxed":
            if tau is None:
                raise ValueError("kl='relaxed' needs the relaxation temperature tau")
            kl_term = self.relaxed_kl(q, tau, generator)
        else:
            raise ValueError(f"kl must be 'analytic', 'relaxed' or 'estimated', got {kl!r}")
        return VAEObjective(
            loss=(out.loss + kl_term).mean(),
            neg_elbo=(out.value + kl_term).detach(),
            kl=kl_term.detach(),
            cv_loss=out.cv_loss,
            n_evals=out.mean_evals,
        )

    def log_weight(self, x: Tensor, q: Independent | None = None) -> CostFn:
        """``z -> log p(x, z) - log q(z | x)``, shape ``S + (B,)``: what multi-sample
        estimators take (gradients reach the encoder through ``log q`` too)."""
        q = self.posterior(x) if q is None else q
        a = q.base_dist.logits

        def log_w(z: Tensor) -> Tensor:
            return (
                self.log_likelihood(x, z)
                + self.log_prob(self.prior_logits, z)
                - self.log_prob(a, z)
            )

        return log_w

    @torch.no_grad()
    def neg_elbo(
        self, x: Tensor, generator: torch.Generator | None = None, *, kl: KL = "analytic"
    ) -> Tensor:
        """Single-sample −ELBO per example with a discrete z ~ q: with the analytic KL, or
        (``kl="estimated"``) the one-sample estimate log q(z|x) − log p(x, z) of the
        DisARM / RODEO code."""
        q = self.posterior(x)
        z = q.sample() if generator is None else _sample(q, generator)
        if kl == "estimated":
            return -self.log_weight(x, q)(z)
        return -self.log_likelihood(x, z) + self.analytic_kl(q)

    @torch.no_grad()
    def iw_bound(
        self, x: Tensor, m: int, *, chunk: int = 100, generator: torch.Generator | None = None
    ) -> Tensor:
        """Importance-weighted −log p(x) bound with ``m`` samples per example, [B].

        Samples are drawn in chunks of ``chunk`` and combined with a running
        log-sum-exp, so memory does not grow with ``m``.
        """
        if m < 1:
            raise ValueError(f"m must be >= 1, got m={m}")
        q = self.posterior(x)
        p = self.prior()
        total = torch.full((x.shape[0],), -math.inf, device=x.device)
        done = 0
        while done < m:
            k = min(chunk, m - done)
            z = _sample(q, generator, (k,))
            log_w = self.log_likelihood(x, z) + p.log_prob(z) - q.log_prob(z)
            total = torch.logaddexp(total, torch.logsumexp(log_w, 0))
            done += k
        return -(total - math.log(m))


def _sample(
    q: Distribution, generator: torch.Generator | None, shape: tuple[int, ...] = ()
) -> Tensor:
    """Exact samples of a (possibly Independent) Bernoulli / OneHotCategorical, with a generator."""
    base = q.base_dist if isinstance(q, Independent) else q
    full = torch.Size(shape) + base.batch_shape
    if isinstance(base, OneHotCategorical):
        from discograd.functional import gumbel_max

        return gumbel_max(base.logits.expand(full + base.event_shape), generator=generator)
    if not isinstance(base, Bernoulli):
        raise TypeError(
            f"expected Bernoulli or OneHotCategorical latents, got {type(base).__name__}"
        )
    probs = base.probs.expand(full)
    u = torch.rand(full, dtype=probs.dtype, device=probs.device, generator=generator)
    return (u < probs).to(probs.dtype)


class CategoricalVAE(DiscreteVAE):
    """A VAE with ``n_latent`` categorical latents of ``n_categories`` classes (default 20×10).

    Encoder ``x_dim - hidden... - n_latent·n_categories`` (logits), decoder the
    mirror image from the flattened one-hot code, activation between layers
    (LeakyReLU(0.2) by default, as the ARSM code). ``prior="uniform"`` fixes
    p(z) uniform (ARSM); ``"learned"`` learns its logits (Jang et al.).
    """

    def __init__(
        self,
        x_dim: int = 784,
        n_latent: int = 20,
        n_categories: int = 10,
        hidden: Sequence[int] = (512, 256),
        activation: str = "leaky_relu",
        prior: Literal["uniform", "learned"] = "uniform",
    ) -> None:
        super().__init__()
        if n_latent < 1 or n_categories < 2:
            raise ValueError(
                f"need n_latent >= 1 and n_categories >= 2, got {n_latent}, {n_categories}"
            )
        self.x_dim, self.n_latent, self.n_categories = x_dim, n_latent, n_categories
        self.register_buffer("input_mean", None)
        code = n_latent * n_categories
        self.encoder = mlp([x_dim, *hidden, code], activation)
        self.decoder = mlp([code, *reversed(tuple(hidden)), x_dim], activation)
        if prior == "learned":
            self.prior_logits = nn.Parameter(torch.zeros(n_latent, n_categories))
        elif prior == "uniform":
            self.register_buffer("prior_logits", torch.zeros(n_latent, n_categories))
        else:
            raise ValueError(f"prior must be 'uniform' or 'learned', got {prior!r}")

    def posterior(self, x: Tensor) -> Independent:
        logits = self.encoder(self.encoder_input(x))
        logits = logits.view(*x.shape[:-1], self.n_latent, self.n_categories)
        return Independent(OneHotCategorical(logits=logits, validate_args=False), 1)

    def prior(self) -> Independent:
        return Independent(OneHotCategorical(logits=self.prior_logits, validate_args=False), 1)

    def decoder_input(self, z: Tensor) -> Tensor:
        return z.flatten(-2)

    def log_prob(self, logits: Tensor, z: Tensor) -> Tensor:
        return (z * torch.log_softmax(logits, -1)).sum((-1, -2))

    def analytic_kl(self, q: Independent) -> Tensor:
        log_q = q.base_dist.logits  # normalised by torch
        log_p = torch.log_softmax(self.prior_logits, -1)
        return (log_q.exp() * (log_q - log_p)).sum((-1, -2))

    def relaxed_kl(self, q: Independent, tau: float | Tensor, generator=None) -> Tensor:
        q_t = ExpConcrete(tau, logits=q.base_dist.logits)
        p_t = ExpConcrete(tau, logits=self.prior_logits)
        s = q_t.rsample(generator=generator)
        return (q_t.log_prob(s) - p_t.log_prob(s)).sum(-1)


class BernoulliVAE(DiscreteVAE):
    """A VAE with ``n_latent`` Bernoulli latents (default 200, as ARM / REBAR).

    ``hidden=()`` gives the "linear" model of those papers (affine encoder and
    decoder); ``hidden=(200, 200)`` a "nonlinear" one. The prior is
    factorised Bernoulli, uniform or with learned logits.
    """

    def __init__(
        self,
        x_dim: int = 784,
        n_latent: int = 200,
        hidden: Sequence[int] = (),
        activation: str = "leaky_relu",
        prior: Literal["uniform", "learned"] = "learned",
    ) -> None:
        super().__init__()
        if n_latent < 1:
            raise ValueError(f"need n_latent >= 1, got {n_latent}")
        self.x_dim, self.n_latent = x_dim, n_latent
        self.register_buffer("input_mean", None)
        self.encoder = mlp([x_dim, *hidden, n_latent], activation)
        self.decoder = mlp([n_latent, *reversed(tuple(hidden)), x_dim], activation)
        if prior == "learned":
            self.prior_logits = nn.Parameter(torch.zeros(n_latent))
        elif prior == "uniform":
            self.register_buffer("prior_logits", torch.zeros(n_latent))
        else:
            raise ValueError(f"prior must be 'uniform' or 'learned', got {prior!r}")

    def posterior(self, x: Tensor) -> Independent:
        logits = self.encoder(self.encoder_input(x))
        return Independent(Bernoulli(logits=logits, validate_args=False), 1)

    def prior(self) -> Independent:
        return Independent(Bernoulli(logits=self.prior_logits, validate_args=False), 1)

    def decoder_input(self, z: Tensor) -> Tensor:
        return z

    def log_prob(self, logits: Tensor, z: Tensor) -> Tensor:
        logits, z = torch.broadcast_tensors(logits, z)
        return -F.binary_cross_entropy_with_logits(logits, z, reduction="none").sum(-1)

    def analytic_kl(self, q: Independent) -> Tensor:
        a, b = q.base_dist.logits, self.prior_logits
        # KL(Bern(σ(a)) || Bern(σ(b))) = σ(a)(log σ(a) − log σ(b)) + σ(−a)(log σ(−a) − log σ(−b))
        pa = torch.sigmoid(a)
        kl = pa * (F.logsigmoid(a) - F.logsigmoid(b)) + (1 - pa) * (
            F.logsigmoid(-a) - F.logsigmoid(-b)
        )
        return kl.sum(-1)

    def relaxed_kl(self, q: Independent, tau: float | Tensor, generator=None) -> Tensor:
        q_t = BinaryConcrete(tau, logits=q.base_dist.logits)
        p_t = BinaryConcrete(tau, logits=self.prior_logits)
        s = q_t.rsample_logit(generator=generator)
        return (q_t.log_prob_logit(s) - p_t.log_prob_logit(s)).sum(-1)
