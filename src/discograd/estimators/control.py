r"""Control variates for discrete variables: REBAR, RELAX, NVIL and MuProp.

:class:`NVIL` (a learned input-dependent baseline with a centred, normalised
signal) and :class:`MuProp` (a Taylor expansion of ``f`` at the mean-field
point) are documented in their classes. REBAR and RELAX both use a continuous
variable :math:`z` with :math:`b = H(z)` (Gumbel scores
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
  estimator's variance. With ``variance_of="upstream"`` the same construction
  uses the gradient that ĝ sends to the leaves upstream of the logits (in a VAE
  the encoder's parameters): :math:`\sum_\phi \lVert J_\phi^\top \hat g\rVert^2`,
  the squared norm of the batch's update of those parameters, which is what the
  official DisARM / ARMS / RODEO code's RELAX minimises. In ``eval()`` mode no
  second pass is made and ``cv_loss`` is ``None``.
* ``f`` is called twice: once on ``b`` (attached; it is the loss) and once on
  the two relaxed points stacked along the sample dimension (a separate call,
  so the loss's graph never touches the temperature). ``n_evals`` counts 3
  (REBAR; RELAX with the relaxed ``f``) or 1 (RELAX without it).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from discograd.estimators._ops import (
    as_dtype,
    compute_dtype,
    divide_by_tau,
    gumbel_from_uniform_,
    is_compiling,
    logistic_from_uniform,
    one_hot,
    open_uniform,
    softmax_last,
)
from discograd.estimators._surrogate import sum_event, surrogate, zero_valued
from discograd.estimators.base import CostFn, Estimate, Estimator, Latent, _conform
from discograd.estimators.registry import register
from discograd.functional import conditional_gumbel, conditional_logistic

__all__ = ["NVIL", "REBAR", "RELAX", "BaselineNet", "MuProp"]


def _check_real(name: str, value, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {name}={value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be positive, got {name}={value!r}")
    return float(value)


_VARIANCE_OF = ("logits", "upstream")


def _check_variance_of(value: object) -> str:
    if value not in _VARIANCE_OF:
        raise ValueError(f"variance_of must be 'logits' or 'upstream', got variance_of={value!r}")
    return str(value)


def upstream_leaves(t: Tensor) -> list[Tensor]:
    """The leaf tensors that require grad and that ``t`` depends on, through its graph.

    ``t`` itself when it is such a leaf. Found by walking ``grad_fn`` to its
    ``AccumulateGrad`` nodes (each holds its leaf as ``.variable``), in the order
    met, each once.
    """
    if t.grad_fn is None:
        return [t] if t.requires_grad else []
    leaves: list[Tensor] = []
    seen: set[int] = set()
    stack = [t.grad_fn]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        leaf = getattr(node, "variable", None)
        if isinstance(leaf, Tensor):
            leaves.append(leaf)
            continue
        stack.extend(n for n, _ in node.next_functions if n is not None)
    return leaves


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
    variance_of = "logits"
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
        sq = self._variance_objective(g_hat, theta, n_event) if need_cv else None
        if sq is not None and sq.requires_grad:
            params = [p for p in self.parameters() if p.requires_grad]
            grads = torch.autograd.grad(sq, params, allow_unused=True)
            cv_loss = sq.detach()
            for p, g in zip(params, grads, strict=True):
                if g is not None:
                    cv_loss = cv_loss + (zero_valued(p) * g.to(p.dtype)).sum().to(cv_loss.dtype)
        return Estimate(loss=loss, value=value, n_evals=self.n_evals, cv_loss=cv_loss)

    def _variance_objective(self, g_hat: Tensor, theta: Tensor, n_event: int) -> Tensor:
        """What ``cv_loss`` descends: the mean over data points of ‖ĝ‖² (``logits``), or
        the squared norm of the gradient ĝ sends to the leaves upstream of the logits
        (``upstream``; the logits' own ‖ĝ‖² summed over the batch when they are a leaf
        or do not require grad)."""
        leaves = upstream_leaves(theta) if self.variance_of == "upstream" else []
        if leaves:
            # J^T ĝ by one vector-Jacobian product through the logits' graph, kept
            # differentiable in ĝ (and so in the control variate's parameters). Every
            # leaf was found on that graph, so none is unused.
            vjp = torch.autograd.grad(
                theta, leaves, grad_outputs=g_hat.to(theta.dtype), create_graph=True
            )
            return torch.stack([v.pow(2).sum().to(g_hat.dtype) for v in vjp]).sum()
        sq = sum_event(g_hat.pow(2), n_event)
        return sq.mean() if self.variance_of == "logits" else sq.sum()

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
        variance_of: whose variance ``cv_loss`` measures: ``"logits"`` (the mean
            over data points of ‖ĝ‖²) or ``"upstream"`` (the squared gradient of
            the leaves upstream of the logits, e.g. an encoder's parameters; one
            more backward pass through them). See :mod:`discograd.estimators.control`.
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
        variance_of: str = "logits",
        generator: torch.Generator | None = None,
    ):
        super().__init__(generator=generator)
        if not isinstance(learn, bool):
            raise ValueError(f"learn must be a bool, got learn={learn!r}")
        self.learn = learn
        self.variance_of = _check_variance_of(variance_of)
        self._init_eta_tau(eta, tau, learn)

    def extra_repr(self) -> str:
        eta, tau = float(self.eta.detach()), float(self.tau.detach())
        return f"eta={eta:.4g}, tau={tau:.4g}, learn={self.learn}, variance_of={self.variance_of}"

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
        variance_of: whose variance ``cv_loss`` measures: ``"logits"`` (the mean
            over data points of ‖ĝ‖²) or ``"upstream"`` (the squared gradient of
            the leaves upstream of the logits, e.g. an encoder's parameters, as the
            official DisARM / ARMS / RODEO code trains its RELAX; one more backward
            pass through them).
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
        variance_of: str = "logits",
        generator: torch.Generator | None = None,
    ):
        super().__init__(generator=generator)
        self.variance_of = _check_variance_of(variance_of)
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
        return (
            f"{eta}tau={float(self.tau.detach()):.4g}, relaxed_f={self.uses_relaxed_f}, "
            f"variance_of={self.variance_of}"
        )

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


# ------------------------------------------------------------ NVIL and MuProp
class BaselineNet(nn.Module):
    r"""The default input-dependent baseline :math:`b_\psi` of :class:`NVIL` and :class:`MuProp`.

    One hidden ``tanh`` layer and a linear output, as the baseline network of
    the official NVIL / MuProp code (tensorflow/models ``research/rebar``, 100
    hidden units). Input: features flattened per data point, ``batch + (k,)``;
    output: ``batch``. The first layer is sized lazily on the first call (make
    the optimiser after one call); the output layer starts at zero, so the
    baseline starts at 0.
    """

    def __init__(self, hidden: int = 100):
        super().__init__()
        out = nn.Linear(hidden, 1)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.net = nn.Sequential(nn.LazyLinear(hidden), nn.Tanh(), out)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


def _check_hidden(hidden: object) -> int:
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise ValueError(f"hidden must be a positive int, got hidden={hidden!r}")
    return hidden


def _check_module(name: str, module: object) -> nn.Module | None:
    if module is not None and not isinstance(module, nn.Module):
        raise ValueError(
            f"{name} must be None or a torch.nn.Module, got {name}={type(module).__name__}"
        )
    return module


class _InputBaseline(nn.Module):
    """An input-dependent baseline ``b(x)``: a module of the features of each data point.

    Features: the ``features=`` tensor given at call time (detached), or else the
    detached logits flattened per data point with masked / deterministic
    entries as ∓50 (what :class:`discograd.baselines.Learned` feeds its module).
    The default :class:`BaselineNet` gets them flattened to ``batch + (k,)``; a
    user module gets ``features=`` as given.
    """

    def __init__(self, module: nn.Module | None, hidden: int):
        super().__init__()
        self.custom = module is not None
        self.module: nn.Module = BaselineNet(hidden) if module is None else module

    def forward(self, latent: Latent, features: Tensor | None) -> Tensor:
        bs = latent.batch_shape
        if features is None:
            x = latent.logits.detach().to(compute_dtype(latent.dtype))
            x = x.clamp(-50.0, 50.0).reshape(bs + (-1,))
        else:
            if not isinstance(features, Tensor) or features.shape[: len(bs)] != bs:
                raise ValueError(
                    f"features must be a tensor whose shape starts with q.batch_shape "
                    f"{tuple(bs)}, got {getattr(features, 'shape', type(features).__name__)}"
                )
            x = features.detach()
            if not self.custom:
                x = x.reshape(bs + (-1,))
        p = next(iter(self.module.parameters()), None)
        if p is not None and p.is_floating_point() and x.is_floating_point():
            x = x.to(p.dtype)
        b = self.module(x)
        if isinstance(b, Tensor) and b.shape == bs + (1,):
            b = b.squeeze(-1)
        if not isinstance(b, Tensor) or b.shape != bs:
            raise ValueError(
                f"the baseline module returned {getattr(b, 'shape', type(b).__name__)}; "
                f"expected q.batch_shape {tuple(bs)} or q.batch_shape + (1,)"
            )
        return b


def _draw(
    latent: Latent, generator: torch.Generator | None, p: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(z, x, p)``: a sample, ``f``'s input, and for Bernoulli variables σ(θ) in the
    compute dtype (``p`` if given), the probabilities the sample was drawn with
    (``latent.sample``'s draw, u < σ(θ), without a second sigmoid); ``p`` is ``None``
    for categorical variables."""
    if latent.kind == "categorical":
        z = latent.sample((), generator)
        return z, latent.encode(z), None
    if p is None:
        p = torch.sigmoid(as_dtype(latent.logits.detach(), compute_dtype(latent.dtype)))
    z = latent.sample((), generator, probs=p)
    return z, z, p


def _bernoulli_score(latent: Latent, x: Tensor, p: Tensor, weight: Tensor) -> Tensor:
    """Zero-valued, ``batch_shape``: its gradient w.r.t. the logits is
    ``weight · ∇ log q(x)`` = ``weight (x - σ(θ))`` per variable, the gradient of
    ``weight · zero_valued(log q(x))`` formed explicitly (no log-probabilities'
    forward and backward passes); ``weight`` (detached, ``batch_shape``) is taken in
    the compute dtype, as the log-probabilities' backward pass would take it."""
    B, V = math.prod(latent.batch_shape), latent.n_vars
    cdt = p.dtype
    w = as_dtype(weight.detach(), cdt).reshape(B, 1)
    g = w * (as_dtype(x, cdt) - p).reshape(B, V)
    theta = latent.logits.reshape(B, V)
    return surrogate(p.new_zeros(()), g, theta, 1, finite=latent.finite).reshape(latent.batch_shape)


class _Called(Estimator):
    """``estimator(f, q, *, features=None, generator=None)``: an estimator whose
    baseline may read per-data-point features given at call time."""

    def forward(
        self,
        f: CostFn,
        q: Distribution,
        *,
        features: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Estimate:
        if not callable(f):
            raise TypeError(f"f must be callable, got {type(f).__name__}")
        latent = self.latent(q)
        gen = generator if generator is not None else self.generator
        return _conform(self._estimate(f, latent, gen, features), latent)

    def estimate(self, f: CostFn, latent: Latent, generator: torch.Generator | None) -> Estimate:
        return self._estimate(f, latent, generator, None)

    def _estimate(
        self,
        f: CostFn,
        latent: Latent,
        generator: torch.Generator | None,
        features: Tensor | None,
    ) -> Estimate:  # pragma: no cover - abstract
        raise NotImplementedError


@register("nvil")
class NVIL(_Called):
    r"""NVIL: REINFORCE with an input-dependent learned baseline, centred and
    variance-normalised learning signal.

    .. math:: \hat g = \frac{f(z) - b_\psi(x) - c}{\max(1, \sqrt v)}\,
              \nabla_\theta \log q_\theta(z) + \nabla_\theta f(z),
              \qquad z \sim q_\theta,

    (the last term only where ``f`` itself depends on the parameters). :math:`c`
    and :math:`v` are running estimates of the mean and the variance of the
    signal :math:`r = f(z) - b_\psi(x)` over the data points of a call,

    .. math:: c \leftarrow \alpha c + (1-\alpha)\,\overline{r}, \qquad
              v \leftarrow \alpha v + (1-\alpha)\,\overline{(r - \overline r)^2},

    with :math:`\alpha` = ``decay`` = 0.8 (the paper's value), both starting at 0.
    The baseline :math:`b_\psi` is trained through ``Estimate.cv_loss`` =
    :math:`\mathrm{mean}\,(f(z) - c - b_\psi(x))^2` over data points: it regresses
    the signal the running mean leaves (the paper's target; the paper's step for
    ψ is this regression gradient divided by :math:`\max(1, \sqrt v)`, a step
    size that Adam, as the Trainer uses for ``cv_loss``, largely absorbs). No
    gradient of ``loss`` reaches ψ and ``cv_loss`` sends none to θ or to
    parameters inside ``f``.

    **What is unbiased.** :math:`c`, :math:`v` (hence the scale
    :math:`s = \max(1, \sqrt v)`) and ψ are fixed before the sample is drawn: this
    call uses the statistics of the *previous* calls and updates them with its
    own signals afterwards (the paper's Algorithm 1 updates them first, so the
    current sample enters its own centring and scale, a bias of order
    :math:`(1-\alpha)/n` and a scale correlated with the sample; this order
    removes both). Given the past, the score part is therefore an unbiased
    estimate of :math:`\nabla_\theta \mathbb E[f] / s`: every step points, in
    expectation, along the exact gradient, shrunk by the known positive scalar
    :math:`1/s \le 1`. The pathwise part (parameters inside ``f``) is not
    scaled and is unbiased. With θ entering ``f`` only through a
    :math:`\log q_\theta(z)` term (a negative ELBO), its pathwise term has mean 0
    and the mean θ-gradient is exactly :math:`\nabla_\theta \mathbb E[f] / s`.
    Since :math:`s > 1` once the signal's variance exceeds 1, the estimator is
    registered as ``unbiased = False``; with ``normalize=False`` (or while
    :math:`v \le 1`) it is unbiased.

    :math:`v` is the variance across the data points of one call (population
    variance): with a single data point per call it stays 0 and the signal is
    only centred.

    The normalisation rescales this estimator's score term only. In NVIL the
    learning signal is the whole objective (the full ELBO), so the inference
    network's whole gradient is scaled together; terms of a loss outside
    ``f`` (an analytic KL added to ``Estimate.loss``) keep their scale and so
    gain weight by :math:`s` against it. Put the whole objective in ``f``, or
    use ``normalize=False``: on the Bernoulli VAE of ``discograd vae``
    (analytic KL outside ``f``, 300 steps) ``nvil`` reached a test −ELBO of
    381, ``nvil:normalize=false`` 260, REINFORCE with an EMA baseline 261. The
    statistics change only in training mode (``eval()`` freezes them); they are
    float64 buffers, saved in ``state_dict``.

    Args:
        baseline: ``None`` for :class:`BaselineNet` (one ``tanh`` layer of
            ``hidden`` units on the detached logits flattened per data point,
            or on ``features=``), or an ``nn.Module`` mapping the features of
            each data point to ``batch_shape`` (or ``batch_shape + (1,)``).
        decay: :math:`\alpha \in [0, 1)` of the running mean and variance.
        normalize: divide the centred signal by :math:`\max(1, \sqrt v)`;
            ``False``: centring only (then unbiased).
        hidden: width of the default baseline network.
        generator: default random generator.

    Call as ``est(f, q)`` or ``est(f, q, features=x)``: ``x`` (detached; shape
    ``q.batch_shape + ...``) is what the baseline sees instead of the logits,
    e.g. the encoder's input, the paper's :math:`C_\psi(x)`.

    One evaluation of ``f`` per data point.

    Mnih & Gregor 2014, "Neural Variational Inference and Learning in Belief
    Networks" (ICML), §3 and Algorithm 1.
    """

    supports = frozenset({"bernoulli", "categorical"})
    unbiased = False
    needs_grad_f = False
    has_temperature = False

    mean: Tensor
    var: Tensor

    def __init__(
        self,
        baseline: nn.Module | None = None,
        *,
        decay: float = 0.8,
        normalize: bool = True,
        hidden: int = 100,
        generator: torch.Generator | None = None,
    ):
        super().__init__(generator=generator)
        module = _check_module("baseline", baseline)
        if (
            isinstance(decay, bool)
            or not isinstance(decay, (int, float))
            or not (0.0 <= decay < 1.0)
        ):
            raise ValueError(f"decay must be a float in [0, 1), got decay={decay!r}")
        if not isinstance(normalize, bool):
            raise ValueError(f"normalize must be a bool, got normalize={normalize!r}")
        self.decay = float(decay)
        self.normalize = normalize
        self.baseline = _InputBaseline(module, _check_hidden(hidden))
        self.register_buffer("mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("var", torch.zeros((), dtype=torch.float64))

    def extra_repr(self) -> str:
        return f"decay={self.decay}, normalize={self.normalize}"

    @property
    def scale(self) -> float:
        """:math:`\\max(1, \\sqrt v)` (1 with ``normalize=False``): the next call's divisor."""
        return max(1.0, math.sqrt(float(self.var))) if self.normalize else 1.0

    def _estimate(self, f, latent, generator, features):
        b = self.baseline(latent, features)  # before sampling: it cannot see the sample
        z, x, p = _draw(latent, generator)
        fz = latent.call_f(f, x, ())
        fd = fz.detach()
        wd = torch.promote_types(fd.dtype, compute_dtype(latent.dtype))
        signal = fd.to(wd) - b.detach().to(wd)
        c = self.mean.to(device=signal.device, dtype=wd)
        weight = signal - c
        if self.normalize:
            weight = weight / self.var.to(device=signal.device, dtype=wd).sqrt().clamp_min(1.0)
        if p is None:
            log_q = latent.log_prob(z).to(wd)
            loss = fz + (weight * zero_valued(log_q)).to(fz.dtype)
        else:
            loss = fz + _bernoulli_score(latent, x, p, weight).to(fz.dtype)
        cv_loss = None
        if b.requires_grad:
            cv_loss = (fd.to(b.dtype) - c.to(b.dtype) - b).pow(2).mean()
        if self.training:
            self._observe(signal)
        return Estimate(loss=loss, value=fd, n_evals=1, cv_loss=cv_loss)

    @torch.no_grad()
    def _observe(self, signal: Tensor) -> None:
        r = signal.to(dtype=self.mean.dtype, device=self.mean.device).reshape(-1)
        mean = r.mean()
        var = (r - mean).pow(2).mean()
        a = self.decay
        if is_compiling():
            # As discograd.baselines.EMA: an in-graph assertion instead of bool(),
            # and the buffers replaced rather than updated in place (in place,
            # inductor's backward may re-read them after the update).
            torch._assert_async(torch.isfinite(var), "NVIL: the learning signal is not finite")
            self.mean = self.mean * a + (1.0 - a) * mean
            self.var = self.var * a + (1.0 - a) * var
            return
        if not bool(torch.isfinite(var)):
            raise ValueError(f"NVIL: the learning signal is not finite (mean {float(mean)})")
        self.mean.mul_(a).add_((1.0 - a) * mean)
        self.var.mul_(a).add_((1.0 - a) * var)


@register("muprop")
class MuProp(_Called):
    r"""MuProp: a first-order Taylor expansion of ``f`` at the mean-field point as
    control variate.

    With :math:`\bar z = \mathbb E_q[z]` (the probabilities :math:`\sigma(\theta)`
    of Bernoulli variables, the probability vectors of one-hot categorical ones)
    and :math:`g = \nabla_z f(\bar z)`,

    .. math:: \hat g = \big[f(z) - f(\bar z) - g^\top (z - \bar z)\big]\,
              \nabla_\theta \log q_\theta(z) + g^\top \nabla_\theta \bar z
              + \nabla_\theta f(z), \qquad z \sim q_\theta.

    The control variate :math:`h(z) = f(\bar z) + g^\top (z - \bar z)` is linear
    in :math:`z`, so :math:`\mathbb E_q[h] = f(\bar z)` and the part of the score
    term it removes, :math:`\mathbb E[h\,\nabla\log q]`, is the analytic
    :math:`g^\top \nabla_\theta \bar z` added back pathwise (:math:`f(\bar z)`,
    :math:`g` held fixed). The last term is the pathwise gradient of parameters
    inside ``f`` (and of θ where ``f`` uses it) at the sample. Unbiased for every
    ``f`` differentiable in ``z`` at :math:`\bar z`; in fact for every ``f``
    whose value and autograd gradient at :math:`\bar z` are finite, since ``h``
    is linear in ``z`` with coefficients fixed before the sample is drawn. The
    Taylor expansion only decides how much variance ``h`` removes (all of it
    for ``f`` linear in ``z``; a step function gets ``g = 0``, i.e. REINFORCE
    with the baseline :math:`f(\bar z)`).

    ``learned=True`` adds what the official code (tensorflow/models
    ``research/rebar``, ``get_muprop_gradient``) also uses: scales
    :math:`\eta_0, \eta_1 = 2\sigma(\rho_{0,1})` (starting at 1) and an
    input-dependent baseline :math:`b_\psi(x)`,

    .. math:: \hat g = \big[f(z) - \eta_0 f(\bar z) - \eta_1 g^\top (z - \bar z)
              - b_\psi(x)\big]\nabla_\theta \log q_\theta(z)
              + \eta_1 g^\top \nabla_\theta \bar z + \nabla_\theta f(z),

    unbiased for every :math:`\eta_0, \eta_1, \psi`; they are trained through
    ``Estimate.cv_loss``, the mean over data points of the squared signal in
    the bracket (no gradient of ``loss`` reaches them, and ``cv_loss`` none
    outside them). A ``baseline`` module without ``learned`` adds only
    :math:`b_\psi` (η fixed at 1).

    Args:
        baseline: ``None``, or an ``nn.Module`` mapping the features of each
            data point to ``batch_shape`` (see :class:`NVIL`: the detached
            logits, or ``features=`` given at call time).
        learned: the official code's configuration: learned η₀, η₁ and a
            baseline (``baseline``, or a :class:`BaselineNet` of ``hidden`` units).
        hidden: width of the default baseline network.
        generator: default random generator.

    ``f`` is evaluated on the sample and on :math:`\bar z` in one call
    (inside :meth:`~discograd.estimators.Latent.relaxed_evaluation`, since
    :math:`\bar z` is not a one-hot point) and differentiated once at
    :math:`\bar z`: two evaluations of ``f`` per data point (``n_evals`` = 2)
    and one backward pass through ``f``.

    Gu, Levine, Sutskever & Mnih 2016, "MuProp: Unbiased Backpropagation for
    Stochastic Neural Networks" (ICLR).
    """

    supports = frozenset({"bernoulli", "categorical"})
    unbiased = True
    needs_grad_f = True
    has_temperature = False

    def __init__(
        self,
        baseline: nn.Module | None = None,
        *,
        learned: bool = False,
        hidden: int = 100,
        generator: torch.Generator | None = None,
    ):
        super().__init__(generator=generator)
        module = _check_module("baseline", baseline)
        if not isinstance(learned, bool):
            raise ValueError(f"learned must be a bool, got learned={learned!r}")
        hidden = _check_hidden(hidden)
        self.learned = learned
        self.baseline = _InputBaseline(module, hidden) if learned or module is not None else None
        if learned:
            self.rho = nn.Parameter(torch.zeros(2))

    def extra_repr(self) -> str:
        return f"learned={self.learned}"

    @property
    def eta(self) -> Tensor | None:
        """The learned scales :math:`(\\eta_0, \\eta_1)`; ``None`` unless ``learned``."""
        return 2 * torch.sigmoid(self.rho) if self.learned else None

    def _estimate(self, f, latent, generator, features):
        b = None if self.baseline is None else self.baseline(latent, features)
        cdt = compute_dtype(latent.dtype)
        n_event = len(latent.var_shape) + (latent.kind == "categorical")
        theta = latent.logits
        th = theta.to(cdt)
        mean = torch.softmax(th, -1) if latent.kind == "categorical" else torch.sigmoid(th)
        z, x, p = _draw(latent, generator, None if latent.kind == "categorical" else mean.detach())
        grad_on = torch.is_grad_enabled()
        mean_in = mean.detach().to(latent.dtype).requires_grad_(grad_on)
        # One call for both points; z̄ is not a one-hot point (see relaxed_evaluation).
        with latent.relaxed_evaluation():
            both = latent.call_f(f, torch.stack([x, mean_in]), (2,))
        fz, f_mean = both[0], both[1]
        fd = fz.detach()
        if not grad_on:
            return Estimate(loss=fz, value=fd, n_evals=2)
        if f_mean.requires_grad:
            (g,) = torch.autograd.grad(f_mean.sum(), mean_in, retain_graph=True, allow_unused=True)
        else:  # f does not depend on z differentiably (a constant, an integer cost)
            g = None
        g = torch.zeros_like(mean) if g is None else g.to(cdt)
        if not latent.finite:
            # Masked categories and deterministic variables: z = z̄ there exactly;
            # a zero slope keeps 0 · inf out of the linear term.
            g = torch.where(torch.isfinite(th.detach()), g, 0.0)
        wd = torch.promote_types(fd.dtype, cdt)
        linear = sum_event(g * (x.to(cdt) - mean.detach()), n_event).to(wd)
        f0 = f_mean.detach().to(wd)
        eta = self.eta
        if eta is not None:
            e0, e1 = eta.to(wd).unbind()
            cv = e0 * f0 + e1 * linear
        else:
            e1 = None
            cv = f0 + linear
        if b is not None:
            cv = cv + b.to(wd)
        signal = fd.to(wd) - cv
        slope = g if e1 is None else e1.detach().to(cdt) * g
        if p is None:
            score = signal.detach() * zero_valued(latent.log_prob(z).to(wd))
        else:
            score = _bernoulli_score(latent, x, p, signal.detach())
        analytic = sum_event(slope * zero_valued(mean), n_event).to(wd)
        loss = fz + (score + analytic).to(fz.dtype)
        cv_loss = signal.pow(2).mean() if signal.requires_grad else None
        return Estimate(loss=loss, value=fd, n_evals=2, cv_loss=cv_loss)
