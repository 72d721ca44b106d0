r"""Learned control variates for discrete variables: REBAR and RELAX.

Both use a continuous variable :math:`z` with :math:`b = H(z)` (Gumbel scores
:math:`z = \theta + G` and :math:`b = \arg\max z` for categorical variables,
logistic :math:`z = \theta + L` and :math:`b = 1[z > 0]` for Bernoulli ones), a
second relaxed draw :math:`\tilde z \sim p(z \mid b)` (reparameterised in θ:
:func:`discograd.functional.conditional_gumbel` /
:func:`~discograd.functional.conditional_logistic`) and a control variate
:math:`c`:

.. math:: \hat g = \big[f(b) - c(\tilde z)\big]\,\nabla_\theta \log p(b)
          + \nabla_\theta c(z) - \nabla_\theta c(\tilde z).

Unbiased for any differentiable :math:`c`: :math:`z` and :math:`\tilde z` have
the same law, and :math:`\mathbb E[c(\tilde z)\nabla\log p(b)] +
\mathbb E[\nabla c(\tilde z)] = \nabla\,\mathbb E[c(z)]`.

How the pieces map to the contract:

* ``loss = f(b) + zero_valued(Σ ĝ.detach() · θ)``: ``f(b)`` stays attached
  (pathwise gradients for parameters inside ``f`` and uses of θ inside ``f``);
  ĝ is computed explicitly (``torch.autograd.grad`` of the control variate
  terms with respect to the logits) and enters detached, so **no gradient of
  ``loss`` reaches η, λ or ρ** and the relaxed evaluations add no variance to
  the gradients of parameters inside ``f``. Uses of θ inside ``f``'s relaxed
  evaluations are held fixed in ĝ: their two pathwise terms cancel in
  expectation, so ĝ stays unbiased.
* ``cv_loss`` (when the control variate has trainable parameters, the module
  is in training mode and autograd is on): the mean over data points of
  :math:`\lVert\hat g\rVert^2`, with ĝ the gradient with respect to the
  unnormalised logits. Its value is that number; its gradient — computed
  inside the call by a second backward pass through ĝ (``create_graph=True``)
  — reaches **only** the control-variate parameters. Since
  :math:`\mathbb E\lVert\hat g\rVert^2 = \mathrm{tr\,Var}(\hat g) + \lVert\nabla L\rVert^2`
  and the last term does not depend on them, descending ``cv_loss`` lowers the
  estimator's variance. In ``eval()`` mode no second pass is made and
  ``cv_loss`` is ``None``.
* ``f`` is called twice: once on ``b`` (attached; it is the loss) and once on
  the two relaxed points stacked along the sample dimension (a separate call,
  so the loss's graph never touches the temperature). ``n_evals`` counts 3
  (REBAR; RELAX with the relaxed ``f``) or 1 (RELAX without it).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from discograd.estimators._ops import (
    compute_dtype,
    divide_by_tau,
    gumbel_from_uniform_,
    logistic_from_uniform,
    one_hot,
    open_uniform,
    softmax_last,
)
from discograd.estimators._surrogate import sum_event, surrogate, zero_valued
from discograd.estimators.base import CostFn, Estimate, Estimator, Latent
from discograd.estimators.registry import register
from discograd.functional import conditional_gumbel, conditional_logistic

__all__ = ["REBAR", "RELAX"]


def _check_real(name: str, value, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {name}={value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be positive, got {name}={value!r}")
    return float(value)


class _RelaxedControl(Estimator):
    """Shared sampling, ĝ and cv_loss construction of REBAR and RELAX.

    Unbiased for ``f`` differentiable on relaxed points (``needs_grad_f``: the
    control variate is differentiated pathwise; a step-function ``f`` breaks
    the identity it rests on). ``has_temperature`` is False: the temperature λ
    belongs to the control variate and is learned (``tau=`` is its initial
    value), it is not a schedule the user anneals.
    """

    supports = frozenset({"bernoulli", "categorical"})
    unbiased = True
    needs_grad_f = True
    has_temperature = False

    uses_relaxed_f = True
    log_tau: Tensor
    eta: Tensor

    def _init_eta_tau(self, eta: float, tau: float, learn: bool, use_eta: bool = True) -> None:
        eta = _check_real("eta", eta)
        tau = _check_real("tau", tau, positive=True)
        params = {"log_tau": torch.tensor(math.log(tau))}
        if use_eta:
            params["eta"] = torch.tensor(eta)
        for name, value in params.items():
            if learn:
                setattr(self, name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)

    @property
    def tau(self) -> Tensor:
        """The current temperature λ (a tensor)."""
        return self.log_tau.exp()

    def _control(self, f_relaxed: Tensor | None, relaxed: Tensor, latent: Latent) -> Tensor:
        raise NotImplementedError  # pragma: no cover

    def estimate(self, f: CostFn, latent: Latent, generator: torch.Generator | None) -> Estimate:
        theta = latent.logits
        grad_on = torch.is_grad_enabled()
        # Logits that need no gradient still get a local leaf: ĝ (and so cv_loss)
        # is a gradient with respect to them.
        src = theta if theta.requires_grad or not grad_on else theta.detach().requires_grad_()
        cdt = compute_dtype(latent.dtype)
        th = src.to(cdt)
        n_event = len(latent.var_shape) + (latent.kind == "categorical")
        tau = self.log_tau.to(cdt).exp()
        u = open_uniform(tuple(th.shape), cdt, latent.device, generator)
        if latent.kind == "categorical":
            z = th + gumbel_from_uniform_(u)
            b = z.detach().argmax(-1)
            z_tilde = conditional_gumbel(th, b, generator)
            hard = one_hot(b, latent.num_categories, cdt)
            relaxed = softmax_last(divide_by_tau(torch.stack([z, z_tilde]), tau))
            probs = softmax_last(th.detach())
            score = hard - probs  # ∇ log p(b) w.r.t. the unnormalised logits
        else:
            noise = logistic_from_uniform(u)
            b = (th.detach() + noise > 0).to(cdt)
            # ±inf logits are deterministic variables: relaxed, both z and z̃ are
            # exactly b there (the same law, as unbiasedness needs), computed from
            # finite stand-ins so that no inf/inf or 0·inf reaches a gradient.
            finite = torch.isfinite(th)
            th_f = torch.where(finite, th, 0.0)
            z = th_f + noise
            z_tilde = conditional_logistic(th_f, b, generator)
            hard = b
            relaxed = torch.sigmoid(divide_by_tau(torch.stack([z, z_tilde]), tau))
            relaxed = torch.where(finite, relaxed, b)
            score = b - torch.sigmoid(th.detach())
        fb = latent.call_f(f, hard.to(latent.dtype), ())
        f_rel = None
        if self.uses_relaxed_f:
            with latent.relaxed_evaluation():
                f_rel = latent.call_f(f, relaxed.to(latent.dtype), (2,)).to(cdt)
        value = fb.detach()
        if not grad_on:
            return Estimate(loss=fb, value=value, n_evals=self.n_evals)
        c = self._control(f_rel, relaxed, latent)  # [2] + batch: c(z), c(z̃)
        need_cv = self.training and any(p.requires_grad for p in self.parameters())
        if not (theta.requires_grad or need_cv):
            return Estimate(loss=fb, value=value, n_evals=self.n_evals)
        diff = (c[0] - c[1]).sum()
        if diff.requires_grad:
            (g_path,) = torch.autograd.grad(diff, src, create_graph=need_cv, allow_unused=True)
        else:
            g_path = None
        if g_path is None:
            g_path = torch.zeros_like(th)
        coef = (fb.detach().to(cdt) - c[1]).reshape(latent.batch_shape + (1,) * n_event)
        g_hat = coef * score + g_path.to(cdt)
        if latent.kind == "categorical":
            # Gradient w.r.t. the normalised logits → w.r.t. the unnormalised ones.
            g_hat = g_hat - probs * g_hat.sum(-1, keepdim=True)
        loss = surrogate(fb, g_hat, theta, n_event, finite=latent.finite)
        cv_loss = None
        sq = sum_event(g_hat.pow(2), n_event).mean()
        if need_cv and sq.requires_grad:
            params = [p for p in self.parameters() if p.requires_grad]
            grads = torch.autograd.grad(sq, params, allow_unused=True)
            cv_loss = sq.detach()
            for p, g in zip(params, grads, strict=True):
                if g is not None:
                    cv_loss = cv_loss + (zero_valued(p) * g.to(p.dtype)).sum().to(cv_loss.dtype)
        return Estimate(loss=loss, value=value, n_evals=self.n_evals, cv_loss=cv_loss)

    @property
    def n_evals(self) -> int:
        return 3 if self.uses_relaxed_f else 1


@register("rebar")
class REBAR(_RelaxedControl):
    r"""REBAR: the relaxed cost as a control variate, scaled by a learned η.

    .. math:: \hat g = \big[f(b) - \eta f(\sigma_\lambda(\tilde z))\big]\nabla\log p(b)
              + \eta\nabla f(\sigma_\lambda(z)) - \eta\nabla f(\sigma_\lambda(\tilde z)),

    :math:`\sigma_\lambda(z) = \mathrm{softmax}(z/\lambda)` (categorical) or
    :math:`\mathrm{sigmoid}(z/\lambda)` (Bernoulli). Unbiased for any η, λ (see
    :mod:`discograd.estimators.control`); needs ``f`` differentiable on the
    relaxed points (simplex points / values in [0, 1]).

    Args:
        eta: initial scale η of the control variate.
        tau: initial temperature λ > 0.
        learn: if True, η and log λ are ``nn.Parameter`` s trained through
            ``Estimate.cv_loss`` (the estimator's variance); else fixed buffers
            and ``cv_loss`` is ``None``.
        generator: a ``torch.Generator`` for the noise.

    Three evaluations of ``f`` per data point: :math:`f(b)`,
    :math:`f(\sigma_\lambda(z))`, :math:`f(\sigma_\lambda(\tilde z))`.

    Tucker, Mnih, Maddison, Lawson & Sohl-Dickstein 2017, "REBAR: Low-variance,
    unbiased gradient estimates for discrete latent variable models" (NeurIPS).
    """

    def __init__(
        self,
        eta: float = 1.0,
        tau: float = 0.5,
        learn: bool = True,
        *,
        generator: torch.Generator | None = None,
    ):
        super().__init__(generator=generator)
        if not isinstance(learn, bool):
            raise ValueError(f"learn must be a bool, got learn={learn!r}")
        self.learn = learn
        self._init_eta_tau(eta, tau, learn)

    def extra_repr(self) -> str:
        eta, tau = float(self.eta.detach()), float(self.tau.detach())
        return f"eta={eta:.4g}, tau={tau:.4g}, learn={self.learn}"

    def _control(self, f_relaxed, relaxed, latent):
        return self.eta.to(f_relaxed.dtype) * f_relaxed


class MLPControlVariate(nn.Module):
    r"""RELAX's default learned part :math:`r_\rho`: a small MLP on the relaxed sample.

    Input: the relaxed sample, flattened over the variables of a data point
    (:math:`D \cdot C` features for categorical, :math:`D` for Bernoulli);
    one hidden ``tanh`` layer; output: one scalar per sample and data point.
    The first layer is sized lazily on the first call (so build optimisers
    after one call of the estimator); the output layer starts at zero, so
    RELAX starts as REBAR.
    """

    def __init__(self, hidden: int = 32):
        super().__init__()
        first = nn.LazyLinear(hidden)
        out = nn.Linear(hidden, 1)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.net = nn.Sequential(first, nn.Tanh(), out)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


@register("relax")
class RELAX(_RelaxedControl):
    r"""RELAX: a learned control variate
    :math:`c_\phi(z) = \eta f(\sigma_\lambda(z)) + r_\rho(\sigma_\lambda(z))`.

    .. math:: \hat g = \big[f(b) - c_\phi(\tilde z)\big]\nabla\log p(b)
              + \nabla c_\phi(z) - \nabla c_\phi(\tilde z),

    with :math:`z, \tilde z, \sigma_\lambda` as in :class:`REBAR`. Unbiased for any
    differentiable :math:`c_\phi`; η, λ and ρ are trained through
    ``Estimate.cv_loss`` to minimise the estimator's variance.

    Args:
        control_variate: ``None`` for :class:`MLPControlVariate` (a small MLP on
            the flattened relaxed sample), or an ``nn.Module`` mapping relaxed
            samples shaped like ``f``'s input (``S + batch + var_shape (+ (C,))``)
            to ``S + batch``.
        eta: initial scale of the relaxed-``f`` term.
        tau: initial temperature λ > 0.
        relaxed_f: include :math:`\eta f(\sigma_\lambda(z))` in the control
            variate (3 evaluations of ``f``); ``False``: :math:`c = r_\rho` only
            (1 evaluation).
        hidden: width of the default MLP.
        generator: a ``torch.Generator`` for the noise.

    Grathwohl, Choi, Wu, Roeder & Duvenaud 2018, "Backpropagation through the
    Void: Optimizing control variates for black-box gradient estimation" (ICLR),
    the discrete-variable RELAX estimator.
    """

    def __init__(
        self,
        control_variate: nn.Module | None = None,
        *,
        eta: float = 1.0,
        tau: float = 0.5,
        relaxed_f: bool = True,
        hidden: int = 32,
        generator: torch.Generator | None = None,
    ):
        super().__init__(generator=generator)
        if control_variate is not None and not isinstance(control_variate, nn.Module):
            raise ValueError(
                "control_variate must be None or a torch.nn.Module, "
                f"got control_variate={type(control_variate).__name__}"
            )
        if not isinstance(relaxed_f, bool):
            raise ValueError(f"relaxed_f must be a bool, got relaxed_f={relaxed_f!r}")
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be a positive int, got hidden={hidden!r}")
        self.uses_relaxed_f = relaxed_f
        self._init_eta_tau(eta, tau, learn=True, use_eta=relaxed_f)
        self.custom = control_variate is not None
        self.control_variate: nn.Module = (
            MLPControlVariate(hidden) if control_variate is None else control_variate
        )

    def extra_repr(self) -> str:
        eta = f"eta={float(self.eta.detach()):.4g}, " if self.uses_relaxed_f else ""
        return f"{eta}tau={float(self.tau.detach()):.4g}, relaxed_f={self.uses_relaxed_f}"

    def _control(self, f_relaxed, relaxed, latent):
        expected = (2,) + tuple(latent.batch_shape)
        if self.custom:
            r = self.control_variate(relaxed.to(latent.dtype))
            if not isinstance(r, Tensor) or r.shape != expected:
                raise ValueError(
                    f"control_variate returned {getattr(r, 'shape', type(r).__name__)} for "
                    f"relaxed samples of shape {tuple(relaxed.shape)}; expected {expected}"
                )
        else:
            n_event = len(latent.var_shape) + (latent.kind == "categorical")
            flat = relaxed.flatten(relaxed.dim() - n_event) if n_event else relaxed.unsqueeze(-1)
            net = self.control_variate
            dtype = next(iter(p for p in net.parameters() if not _lazy(p)), flat).dtype
            r = net(flat.to(dtype))
        r = r.to(relaxed.dtype)
        if self.uses_relaxed_f:
            return self.eta.to(f_relaxed.dtype) * f_relaxed + r
        return r


def _lazy(p: Tensor) -> bool:
    return isinstance(p, nn.parameter.UninitializedParameter)
