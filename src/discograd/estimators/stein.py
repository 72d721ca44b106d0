r"""Control variates for REINFORCE leave-one-out built from ∂f/∂z: DoubleCV and RODEO.

Both draw :math:`K` independent samples :math:`b_1..b_K` of the :math:`D`
Bernoulli variables of a data point (probabilities :math:`p = \sigma(\theta)`),
evaluate ``f`` once on all of them and differentiate it once with respect to
its input, giving :math:`f_k = f(b_k)` and :math:`G_k = \partial f/\partial z\,(b_k)`
(one backward pass through ``f`` at the same points, not a further evaluation:
``n_evals`` is :math:`K`). Everything sample-dependent that goes into a control
variate for sample :math:`k` is built from the *other* samples, so it is a fixed
function while :math:`b_k` is drawn, and its expectation over :math:`b_k` is known
in closed form: that is why both estimators are unbiased for every value of their
learned parameters. :math:`s(x) = x - p` is :math:`\nabla_\theta \log q_\theta(x)`
with respect to the logits.

How the pieces map to the contract:

* ``loss = mean_k f(b_k) + zero_valued(Σ ĝ.detach() · θ)``: the mean cost stays
  attached (pathwise gradients for parameters inside ``f`` and uses of θ inside
  ``f``); ĝ is formed explicitly from detached costs and gradients.
* ``cv_loss`` (training mode, autograd on, parameters that require grad): the
  mean over data points of :math:`\lVert \hat g\rVert^2` with ĝ a function of the
  control-variate parameters only (every cost, gradient and sample detached), as
  the official code trains them (Adam on the mean squared estimate). Since
  :math:`\mathbb E\lVert\hat g\rVert^2 = \mathrm{tr\,Var}\,\hat g + \lVert\nabla L\rVert^2`,
  descending it lowers the variance. No gradient of ``loss`` reaches them.
* ``f`` must be differentiable in ``z`` at 0/1 inputs (``needs_grad_f``); a cost
  that does not depend on ``z`` through autograd (an integer cost, a constant)
  has :math:`G = 0` and both estimators reduce to leave-one-out forms that stay
  unbiased.
* The scales of the control variates start at 0, as in the official code: the
  first estimates are exactly RLOO's, and ∂f/∂z enters only ``cv_loss`` until
  training has moved them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from discograd.estimators._common import leave_one_out_mean as _loo
from discograd.estimators._ops import as_dtype, as_shape, compute_dtype
from discograd.estimators._surrogate import surrogate
from discograd.estimators.base import CostFn, Estimate, Estimator, Latent
from discograd.estimators.registry import register

__all__ = ["RODEO", "DoubleCV", "SteinControlNet"]

_VARIANTS = ("auto", "avg", "output_avg")


def _check_samples(n_samples: object) -> int:
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 2:
        raise ValueError(f"n_samples must be an int >= 2, got n_samples={n_samples!r}")
    return n_samples


def _check_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {name}={value!r}")
    return float(value)


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {name}={value!r}")
    return value


class _Draws:
    """K samples of a data point's variables, their costs and ∂f/∂z, flattened to ``[K, B, D]``.

    Attributes: ``theta`` (attached logits ``[B, D]``), ``p``, ``b``, ``s = b - p``,
    ``grad`` (∂f/∂z, zero at deterministic variables), ``fd`` (detached costs
    ``[K, B]``), all in the compute dtype, and ``fz`` (attached costs ``[K] + batch``).
    """

    def __init__(
        self, f: CostFn, latent: Latent, K: int, generator: torch.Generator | None
    ) -> None:
        B, D = math.prod(latent.batch_shape), latent.n_vars
        cdt = compute_dtype(latent.dtype)
        self.theta = as_shape(latent.logits, (B, D))
        th = as_dtype(self.theta.detach(), cdt)
        self.p = torch.sigmoid(th)
        z = latent.sample((K,), generator, probs=self.p)  # this σ(θ), not a second one
        track = torch.is_grad_enabled()
        if track:
            z.requires_grad_()  # a fresh leaf: no detach needed
        self.fz = latent.call_f(f, z, (K,))
        grad = None
        if track and self.fz.requires_grad:
            # ones as the output gradient: each sample's cost differentiated at its
            # own input (f treats samples independently); the graph is kept for the
            # pathwise backward of the loss.
            (grad,) = torch.autograd.grad(
                self.fz, z, torch.ones_like(self.fz), retain_graph=True, allow_unused=True
            )
        self.b = as_dtype(z.detach().view(K, B, D), cdt)
        self.s = self.b - self.p
        if grad is None:
            self.grad = torch.zeros_like(self.b)
        elif latent.finite:
            self.grad = as_dtype(grad.view(K, B, D), cdt)
        else:
            # A deterministic variable's coordinate never varies: its ∂f/∂z enters
            # nothing in exact arithmetic, and an inf there must not make a NaN.
            self.grad = torch.where(torch.isfinite(th), as_dtype(grad.view(K, B, D), cdt), 0.0)
        self.fd = as_dtype(as_shape(self.fz.detach(), (K, B)), cdt)
        self.finite = latent.finite


class _SteinFamily(Estimator):
    """Bernoulli only, unbiased, differentiates ``f`` at the samples."""

    supports = frozenset({"bernoulli"})
    unbiased = True
    needs_grad_f = True
    has_temperature = False

    n_samples: int

    def _grad(self, d: _Draws) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def estimate(self, f: CostFn, latent: Latent, generator: torch.Generator | None) -> Estimate:
        K = self.n_samples
        d = _Draws(f, latent, K, generator)
        mean_f = d.fz.mean(0)
        value = mean_f.detach()
        need_cv = (
            self.training
            and torch.is_grad_enabled()
            and any(p.requires_grad for p in self.parameters())
        )
        if not (d.theta.requires_grad and torch.is_grad_enabled()) and not need_cv:
            return Estimate(loss=mean_f, value=value, n_evals=K)
        with torch.set_grad_enabled(need_cv):
            g = self._grad(d)  # [B, D], a function of the control-variate parameters only
        cv_loss = g.pow(2).sum(-1).mean() if need_cv else None
        loss = surrogate(mean_f.reshape(-1), g.detach(), d.theta, 1, finite=d.finite)
        return Estimate(
            loss=loss.reshape(latent.batch_shape), value=value, n_evals=K, cv_loss=cv_loss
        )


@register("double_cv")
class DoubleCV(_SteinFamily):
    r"""Double control variates: a leave-one-out baseline and a local linear control variate.

    With :math:`\bar G_{-k} = \frac1{K-1}\sum_{j\ne k} G_j` (the gradient of ``f``
    at the other samples) the local control variate of sample :math:`k` is the
    linear term of a Taylor expansion of ``f`` around the mean :math:`p`, with the
    unknown :math:`\nabla f(p)` replaced by :math:`\bar G_{-k}`:
    :math:`h_k = \alpha\,\bar G_{-k}^\top (b_k - p)`. Then

    .. math:: \hat g = \frac1K \sum_{k=1}^K \Big(f_k + h_k - \frac1{K-1}\sum_{j\ne k}
              (f_j + h_j)\Big)\, s(b_k) \;-\; \alpha\, \bar G \odot p \odot (1 - p),

    :math:`\bar G = \frac1K\sum_k G_k`. The last term is the closed-form
    expectation of the local control variate's score term,
    :math:`\mathbb E_{b_k}[h_k\, s(b_k)] = \alpha\,\bar G_{-k} \odot p(1-p)`
    (averaged over :math:`k`); the :math:`h_j` inside the baseline have mean zero
    given the other samples. So :math:`\hat g` is unbiased for every scalar α; α
    (0 at first, when this is RLOO) is an ``nn.Parameter`` trained through
    ``Estimate.cv_loss`` (:mod:`discograd.estimators.stein`). The official code's
    Fashion-MNIST setting is K = 2, where
    :math:`\hat g = \tfrac12 (f_1 + h_1 - f_2 - h_2)(s(b_1) - s(b_2)) - \alpha\bar G\odot p(1-p)`
    with :math:`h_1 = \alpha G_2^\top s(b_1)`, :math:`h_2 = \alpha G_1^\top s(b_2)`.

    Cost: :math:`K` evaluations of ``f`` per data point (one call) and one
    backward pass through ``f`` at the same points for :math:`G`.

    Args:
        n_samples: :math:`K \ge 2`.
        alpha: initial value of α.
        learn: if True α is an ``nn.Parameter`` trained through ``cv_loss``; else
            a fixed buffer and ``cv_loss`` is ``None``.
        generator: default random generator.

    Titsias & Shi 2022, "Double Control Variates for Gradient Estimation in
    Discrete Latent Variable Models" (AISTATS); official code thjashin/double-cv.
    """

    alpha: Tensor

    def __init__(
        self,
        n_samples: int = 2,
        alpha: float = 0.0,
        learn: bool = True,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(generator=generator)
        self.n_samples = _check_samples(n_samples)
        value = torch.tensor(_check_real("alpha", alpha))
        self.learn = _check_bool("learn", learn)
        if self.learn:
            self.alpha = nn.Parameter(value)
        else:
            self.register_buffer("alpha", value)

    def extra_repr(self) -> str:
        alpha = float(self.alpha.detach())
        return f"n_samples={self.n_samples}, alpha={alpha:.4g}, learn={self.learn}"

    def _grad(self, d: _Draws) -> Tensor:
        alpha = as_dtype(self.alpha, d.p.dtype)
        h = (_loo(d.grad) * d.s).sum(-1)  # [K, B]: the local control variates over α
        rloo = ((d.fd - _loo(d.fd)).unsqueeze(-1) * d.s).mean(0)
        local = ((h - _loo(h)).unsqueeze(-1) * d.s).mean(0) - d.grad.mean(0) * d.p * (1 - d.p)
        return rloo + alpha * local


class SteinControlNet(nn.Module):
    r"""RODEO's control network: two scalar features in, two outputs.

    :math:`(t, m) \mapsto W_2\,\mathrm{LeakyReLU}_{0.3}(w_t t + w_m m + c) + c_2`,
    broadcasting ``t`` (a linear Taylor feature of a point) against ``m`` (a cost
    level), output ``[..., 2]``: the function whose Stein operator corrects the
    baseline (output 0) and the one whose Stein operator corrects the gradient
    (output 1). Glorot-uniform weights and zero biases, the defaults of the
    official code's Keras layers; ``hidden`` units (100 there).

    :meth:`at_points` gives the same values for many ``t`` per ``m`` without
    forming the hidden layer (RODEO uses it).
    """

    slope = 0.3

    def __init__(self, hidden: int = 100) -> None:
        super().__init__()
        self.taylor = nn.Linear(1, hidden)
        self.cost = nn.Linear(1, hidden)
        self.out = nn.Linear(hidden, 2)
        for layer in (self.taylor, self.cost, self.out):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, taylor: Tensor, cost: Tensor) -> Tensor:
        # Both inputs are scalars: the first layer is an outer product, formed by
        # broadcasting (the cost part once per cost, not once per Taylor feature)
        # instead of a matrix product with an inner dimension of 1.
        level = self.cost(cost.unsqueeze(-1)) + self.taylor.bias
        h = torch.addcmul(level, taylor.unsqueeze(-1), self.taylor.weight[:, 0])
        return self.out(F.leaky_relu(h, self.slope))

    def at_points(self, taylor: Tensor, cost: Tensor) -> Tensor:
        r"""``forward(taylor, cost.unsqueeze(-1))`` for many points per cost: ``[..., Q, 2]``.

        ``taylor`` is ``[..., Q]`` and ``cost`` ``[...]``, the same leading shape.

        For a fixed cost the network is a piecewise-linear function of the
        scalar ``t``, with one kink per hidden unit (where :math:`w_i t + l_i`
        changes sign, :math:`l_i` the unit's cost level). Writing
        :math:`\mathrm{LeakyReLU}(x) = x + (1 - s)\,\mathrm{relu}(-x)` for a unit
        with :math:`w_i < 0` and :math:`s x + (1 - s)\,\mathrm{relu}(x)` otherwise,
        every relu becomes :math:`[t > r_i]\,(|w_i| t \pm l_i)`: sorting the kinks
        :math:`r_i` once per cost, the output at ``t`` is a linear part plus prefix
        sums over the kinks below ``t``, found by binary search. Cost
        :math:`O((H + Q)\log H)` per cost instead of :math:`O(QH)`, memory
        :math:`O(H + Q)` instead of :math:`O(QH)`, and autograd records only
        those small tensors. The same function as :meth:`forward`, summed in a
        different order (equal to rounding); differentiable in the parameters
        (the kinks' order and the active sets are locally constant).
        """
        return self._at_points(taylor, cost).movedim(0, -1)

    def _at_points(self, taylor: Tensor, cost: Tensor) -> Tensor:
        """:meth:`at_points` with the output dimension first: ``[2, ..., Q]``, contiguous."""
        s = self.slope
        w = self.taylor.weight[:, 0]  # [H]
        v = self.out.weight  # [2, H]
        bias = self.cost.bias + self.taylor.bias
        level = torch.addcmul(bias, cost.unsqueeze(-1), self.cost.weight[:, 0])  # [..., H]
        neg = (w.detach() < 0).to(w.dtype)
        sign = 1 - 2 * neg
        # relu(±(w t + l)) = relu(a t + c) with a >= 0 (+ 0.0 turns -0.0 into 0.0)
        a, c = w * sign + 0.0, level * sign
        with torch.no_grad():
            # A unit is active for t > -c / a; with a = 0 that kink is -inf (always
            # active) for c > 0 and +inf (never) for c < 0; c = a = 0 contributes
            # nothing either way (NaN -> +inf).
            # c / (-a) is -c / a exactly (negation is exact): one sign flip of H
            # numbers instead of one per point.
            kinks = (c / -a).nan_to_num_(math.inf, math.inf, -math.inf)
            kinks, order = kinks.sort(-1)
            # searchsorted's left side: the number of kinks strictly below t.
            pos = torch.searchsorted(kinks, taylor.contiguous())  # [..., Q]
        # The linear part: s x for every unit, plus (1 - s) x for the units with
        # w < 0. It starts each output's prefix sums, followed by the units' relu
        # slopes and levels in kink order: entry n sums the n lowest kinks.
        lin = s + (1 - s) * neg  # [H]
        base_level = ((level * lin) @ v.t() + self.out.bias).movedim(-1, 0).unsqueeze(-1)
        base_slope = (v @ (lin * w)).view((2,) + (1,) * c.dim()).expand_as(base_level)
        coef = ((1 - s) * v).view((2,) + (1,) * (c.dim() - 1) + (-1,))  # [2, 1.., H]
        terms = torch.stack([(coef * a).expand(coef.shape[:1] + c.shape), coef * c])
        by_kink = terms.gather(-1, order.expand(terms.shape))  # [2 (slope, level), 2, ..., H]
        start = torch.stack([base_slope, base_level])  # [2, 2, ..., 1]
        sums = torch.cat([start, by_kink], -1).cumsum(-1)  # [2, 2, ..., H + 1]
        active = sums.gather(-1, pos.expand(sums.shape[:2] + pos.shape))  # [2, 2, ..., Q]
        # unbind, not two indexings: its backward stacks the two gradients instead of
        # zero-filling a full-size gradient per index.
        slope, at_level = active.unbind(0)
        return torch.addcmul(at_level, taylor, slope)


@register("rodeo")
class RODEO(_SteinFamily):
    r"""RODEO: leave-one-out REINFORCE with control variates from a discrete Stein operator.

    The Stein operator of the random-scan Gibbs sampler of :math:`q` (pick a
    variable uniformly, redraw it from its marginal) maps any function
    :math:`h` of the :math:`D` binary variables to one with mean zero under
    :math:`q`:

    .. math:: (\mathcal A h)(x) = \frac1D \sum_{d=1}^D q(\lnot x_d)\,
              \big[h(x^{(d)}) - h(x)\big],

    :math:`x^{(d)}` is :math:`x` with variable :math:`d` flipped and
    :math:`q(\lnot x_d)` the probability of the flipped value. It needs
    :math:`h` at the :math:`D` neighbours of a sample, not ``f``. For sample
    :math:`k`, :math:`h_k = (h_k^0, h_k^1)` is a :class:`SteinControlNet` fed
    with the other samples' costs and first-order Taylor expansions
    :math:`f_j + G_j^\top (x - b_j)`:

    * ``variant="avg"`` (official ``discrete_stein_avg``): the network sees the
      averages, :math:`h_k(x) = \mathrm{net}\big(\frac1{K-1}\sum_{j\ne k}
      G_j^\top(x - b_j),\ \frac1{K-1}\sum_{j\ne k} f_j\big)`;
    * ``variant="output_avg"`` (official ``discrete_stein_output_avg``): its
      outputs are averaged, :math:`h_k(x) = \frac1{K-1}\sum_{j\ne k}
      \mathrm{net}\big(G_j^\top(x - b_j),\ f_j\big)`.

    At :math:`K = 2` the two coincide. ``variant="auto"`` (default) picks
    ``avg`` at :math:`K = 2` and ``output_avg`` at :math:`K > 2`, the choice
    the official README prescribes (and the cheaper network pass at K = 2).
    The estimate, with :math:`c_k = (\mathcal A h_k^0)(b_k)` and
    :math:`V_k = (\mathcal A [h_k^1 s])(b_k)` (the operator applied to each
    coordinate of the vector function :math:`h_k^1(x)\,s(x)`):

    .. math:: \hat g = \frac1K\sum_{k=1}^K \Big[\Big(f_k - \frac1{K-1}\sum_{j\ne k}
              (f_j + \alpha c_j)\Big)\, s(b_k) + \beta V_k\Big].

    :math:`h_k` is fixed given the samples other than :math:`b_k`, so
    :math:`\mathbb E[V_k] = 0`, and each :math:`c_j` has mean zero given the
    samples other than :math:`b_j` (which include :math:`b_k`): unbiased for
    every α, β and network. α, β (0 at first: the estimator starts as RLOO) and
    the network's weights are trained through ``Estimate.cv_loss``
    (:mod:`discograd.estimators.stein`), as the official code trains them
    (there with Adam, learning rate 1e-3). ``est.control_net`` may be replaced
    by any module with the same call signature (it is then called on the
    rows); the default :class:`SteinControlNet` is evaluated through
    :meth:`SteinControlNet.at_points`, which bypasses module hooks.

    Cost: :math:`K` evaluations of ``f`` per data point (one call), one backward
    pass through ``f`` for :math:`G`, and :math:`K(D + 1)` (``avg``) or
    :math:`K(K-1)(D+1)` (``output_avg``) rows through the small network; the
    default network is evaluated by :meth:`SteinControlNet.at_points`, in
    :math:`O((H + D)\log H)` per sample and data point for :math:`H` hidden units.

    Args:
        n_samples: :math:`K \ge 2`.
        variant: ``"auto"``, ``"avg"`` or ``"output_avg"``.
        hidden: width of the default :class:`SteinControlNet` (100 officially).
        alpha, beta: initial values of the scales of the baseline's and the
            gradient's Stein control variates.
        learn: if True α, β and the network are trained through ``cv_loss``;
            else fixed (``cv_loss`` is ``None``).
        generator: default random generator.

    Differences from the official code: its ``avg`` feature sums, rather than
    averages, the other samples' :math:`G_j^\top b_j` terms, which only matters
    for :math:`K > 2` (where it is not used); this class averages them, the
    Taylor expansion its comments describe.

    Shi, Zhou, Hwang, Titsias & Mackey 2022, "Gradient Estimation with Discrete
    Stein Operators" (NeurIPS); official code thjashin/rodeo.
    """

    alpha: Tensor
    beta: Tensor

    def __init__(
        self,
        n_samples: int = 2,
        variant: str = "auto",
        hidden: int = 100,
        alpha: float = 0.0,
        beta: float = 0.0,
        learn: bool = True,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(generator=generator)
        self.n_samples = _check_samples(n_samples)
        if variant not in _VARIANTS:
            raise ValueError(f"variant must be one of {list(_VARIANTS)}, got variant={variant!r}")
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be a positive int, got hidden={hidden!r}")
        self.variant = variant
        self.learn = _check_bool("learn", learn)
        scales = {"alpha": _check_real("alpha", alpha), "beta": _check_real("beta", beta)}
        for name, value in scales.items():
            if self.learn:
                setattr(self, name, nn.Parameter(torch.tensor(value)))
            else:
                self.register_buffer(name, torch.tensor(value))
        self.control_net: nn.Module = SteinControlNet(hidden)
        self.control_net.requires_grad_(self.learn)

    @property
    def resolved_variant(self) -> str:
        """``"avg"`` or ``"output_avg"``: what ``variant="auto"`` means at this K."""
        if self.variant != "auto":
            return self.variant
        return "avg" if self.n_samples == 2 else "output_avg"

    def extra_repr(self) -> str:
        a, b = float(self.alpha.detach()), float(self.beta.detach())
        return (
            f"n_samples={self.n_samples}, variant={self.resolved_variant}, "
            f"alpha={a:.4g}, beta={b:.4g}, learn={self.learn}"
        )

    def _net(self, taylor: Tensor, cost: Tensor) -> Tensor:
        """The network at ``taylor [..., Q]``, ``cost [...]``: ``[2, ..., Q]`` in the inputs' dtype.

        The default network is evaluated by :meth:`SteinControlNet.at_points`
        (no ``[..., Q, hidden]`` layer, the same values); any other module by
        its call, in its own dtype. The output dimension comes first, so that
        each output is a contiguous block.
        """
        net = self.control_net
        dtype = next(iter(net.parameters()), taylor).dtype
        t, m = as_dtype(taylor, dtype), as_dtype(cost, dtype)
        if isinstance(net, SteinControlNet) and type(net).forward is SteinControlNet.forward:
            out = net._at_points(t, m)
        else:
            out = net(t, m.unsqueeze(-1)).movedim(-1, 0)
        return as_dtype(out, taylor.dtype)

    def _control(self, d: _Draws) -> Tensor:
        """``[2, K, B, D + 1]``: both outputs of h_k at b_k (index 0) and at its D neighbours."""
        K = self.n_samples
        gb = (d.grad * d.b).sum(-1)  # [K, B]: G_j · b_j
        if self.resolved_variant == "avg":
            g_loo = _loo(d.grad)
            g_b = g_loo * d.b
            at_b = (g_b.sum(-1) - _loo(gb)).unsqueeze(-1)  # mean_j G_j · (b_k - b_j)
            # A one-variable flip changes a linear feature by one term, G_d (1 - 2 b_d):
            # O(D) per point.
            taylor = torch.cat([at_b, at_b + g_loo.add(g_b, alpha=-2)], -1)
            return self._net(taylor, _loo(d.fd))
        # Network j (cost f_j, expansion around b_j) is evaluated at the points of
        # the K - 1 samples k != j: others[k, i] is the i-th j != k, and
        # owner[j, i] the k with others[k, i] = j; one gather each way, no loop.
        ks = torch.arange(K, device=d.b.device)
        others = (ks.unsqueeze(1) + 1 + ks[: K - 1].unsqueeze(0)) % K  # [K, K-1]
        owner = (ks.unsqueeze(1) - 1 - ks[: K - 1].unsqueeze(0)) % K  # [K, K-1]
        b_k = d.b[owner]  # [K (j), K-1, B, D]
        g_j = d.grad.unsqueeze(1)
        g_b = g_j * b_k
        at_b = (g_b.sum(-1) - gb.unsqueeze(1)).unsqueeze(-1)  # G_j · (b_k - b_j)
        taylor = torch.cat([at_b, at_b + g_j.add(g_b, alpha=-2)], -1)
        Kj, n, B, P = taylor.shape
        # Rows grouped by network: [j, B, (K-1)(D+1)] against the costs f_j.
        rows = taylor.transpose(1, 2).reshape(Kj, B, n * P)
        out = self._net(rows, d.fd).reshape(2, Kj, B, n, P).transpose(2, 3)  # [2, j, i, B, D+1]
        return out[:, others, ks[: K - 1]].mean(2)  # h_k: the mean over j != k

    def _grad(self, d: _Draws) -> Tensor:
        cdt = d.p.dtype
        # h at b_k and at its D neighbours. split and unbind, not slices: their
        # backward passes join the gradients once instead of zero-filling a
        # full-size gradient of h per slice.
        at_b, nbrs = self._control(d).split([1, d.b.shape[-1]], -1)
        w = d.s.abs()  # q(¬b_d) = |b_d - p_d|: 0 at a deterministic variable
        # (A h)(b_k) for both outputs at once: [2, K, B].
        c, dh1 = (w * (nbrs - at_b)).mean(-1)
        # (A [h^1 s])(b_k): s at the neighbour x^(d) differs from s(b_k) in coordinate d
        # only, by 1 - 2 b_d, and q(¬b_d)(1 - 2 b_d) = -s_d; so coordinate d is
        # s_d ((A h^1)(b_k) - h^1(x^(d)) / D).
        stein_grad = d.s * (dh1.unsqueeze(-1) - nbrs.unbind(0)[1] / d.b.shape[-1])
        baseline = _loo(d.fd + as_dtype(self.alpha, cdt) * c)
        score = (d.fd - baseline).unsqueeze(-1) * d.s
        return (score + as_dtype(self.beta, cdt) * stein_grad).mean(0)
