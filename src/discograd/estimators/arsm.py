r"""The augment-REINFORCE family for categorical variables: AR, ARS, ARSM, ARS+, ARSM+.

Yin, Yue & Zhou 2019, "ARSM: Augment-REINFORCE-Swap-Merge Estimator for Gradient
Backpropagation Through Categorical Variables" (ICML); the Rao-Blackwellised
ARS+ / ARSM+ after Dong, Mnih & Tucker 2021, "Coupled Gradient Estimators for
Discrete Latent Variables" (NeurIPS) and the seed slides (Rakitin).

Notation, per variable: logits :math:`\theta \in \mathbb R^C` (normalised),
:math:`\varpi \sim \mathrm{Dir}(1_C)`, the sample
:math:`z = \arg\min_i \varpi_i e^{-\theta_i}` (exactly
:math:`\mathrm{Cat}(\mathrm{softmax}\,\theta)`)
and the pseudo-actions :math:`z^{j\rightleftharpoons m}`: the same arg min with
:math:`\varpi_j` and :math:`\varpi_m` swapped (:math:`z^{j\rightleftharpoons j} = z`).
With :math:`D` variables sharing one cost, a swap :math:`(j, m)` acts on every
variable at once (each with its own :math:`\varpi_d`) and
:math:`F_{jm} = f(z_1^{j\rightleftharpoons m}, \dots, z_D^{j\rightleftharpoons m})`.

* AR:   :math:`g_{d,l} = f(z)\,(1 - C\varpi_{d,l})`
* ARS:  :math:`g_{d,l} = (F_{jl} - \bar F_j)(1 - C\varpi_{d,j})`,
  :math:`\bar F_j = \frac1C\sum_m F_{jm}`, one reference :math:`j`
* ARSM: :math:`g_{d,l} = \frac1C\sum_j (F_{jl} - \bar F_j)(1 - C\varpi_{d,j})`

All are unbiased for :math:`\nabla_\theta \mathbb E[f]` (the gradient with respect
to the logits; it sums to zero over categories). The pseudo-actions of every
swap pair, variable and data point are computed as tensors; the distinct joint
configurations of each data point are evaluated in two calls of ``f``: the true
sample with gradient, every other configuration at once without (see
:func:`discograd.estimators._augment.evaluate_unique`).

Contract details shared by the family:

* ``loss = f(z) + zero_valued(Σ g · θ)``: ``f`` at the true sample stays
  attached (parameters inside ``f`` and uses of θ inside ``f`` get their pathwise
  gradient); the score term uses detached values of ``f``.
* ``n_evals`` (a tensor of shape ``q.batch_shape``): the number of distinct joint
  configurations evaluated for that data point, the true sample included —
  at most :math:`C(C-1)/2 + 1` for ARSM / ARSM+, :math:`C` for ARS / ARS+, 1 for
  AR. A data point whose pseudo-actions all coincide with ``z`` costs exactly
  one evaluation, ``f(z)``, which ``Estimate.value`` and the pathwise gradient
  need anyway: its score term costs nothing and is exactly zero. Because ``f``
  takes one sample dimension for the whole batch, data points with fewer
  distinct configurations than the batch maximum ``M`` are padded with copies
  of their true sample: ``f`` sees ``M`` slots per data point; those copies are
  not counted.
* Masked categories (``-inf`` logits) are never sampled, receive zero gradient,
  and produce no NaN or inf.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from discograd.estimators._augment import (
    dirichlet_noise,
    evaluate_unique,
    swap_reference,
    swap_table,
)
from discograd.estimators._ops import compute_dtype
from discograd.estimators._surrogate import surrogate
from discograd.estimators.base import CostFn, Estimate, Estimator, Latent
from discograd.estimators.registry import register

__all__ = ["AR", "ARS", "ARSM", "ARSMPlus", "ARSPlus"]


class _AugmentREINFORCE(Estimator):
    """The AR family: categorical only, unbiased, ``f`` a black box."""

    supports = frozenset({"categorical"})
    unbiased = True
    needs_grad_f = False
    has_temperature = False

    def _setup(self, latent: Latent, generator: torch.Generator | None):
        """Flattened logits ``[B, V, C]`` (attached), detached compute copy, noise."""
        B = math.prod(latent.batch_shape)
        V, C = latent.n_vars, latent.num_categories
        theta = latent.logits.reshape(B, V, C)
        cdt = compute_dtype(latent.dtype)
        th = theta.detach().to(cdt)
        gumbel, log_w = dirichlet_noise((B, V, C), cdt, latent.device, generator)
        return theta, th, gumbel, log_w

    @staticmethod
    def _finish(latent: Latent, theta: Tensor, f_true: Tensor, grad: Tensor, n_evals) -> Estimate:
        # surrogate zeroes the gradient of masked (-inf) logits.
        loss = surrogate(f_true, grad, theta, 2, finite=latent.finite)
        loss = loss.reshape(latent.batch_shape)
        if isinstance(n_evals, Tensor):
            n_evals = n_evals.reshape(latent.batch_shape)
        return Estimate(
            loss=loss, value=f_true.detach().reshape(latent.batch_shape), n_evals=n_evals
        )


@register("ar")
class AR(_AugmentREINFORCE):
    r"""Augment-REINFORCE (AR) for categorical variables.

    .. math:: g_{d,l} = f(z)\,(1 - C\,\varpi_{d,l}), \qquad
              \varpi_d \sim \mathrm{Dir}(1_C),\quad
              z_d = \arg\min_i \varpi_{d,i}\, e^{-\theta_{d,i}}.

    Unbiased: with exponential racing, :math:`E = \xi\varpi` (:math:`\xi \sim
    \Gamma(C, 1)` independent of :math:`\varpi`) and the REINFORCE gradient of
    the exponential clocks, :math:`\mathbb E[f(z)(1 - E_l)] = \mathbb E[f(z)(1 - C\varpi_l)]`.
    One evaluation of ``f`` per data point. High variance: it has no baseline.

    Yin, Yue & Zhou 2019, "ARSM: Augment-REINFORCE-Swap-Merge Estimator for
    Gradient Backpropagation Through Categorical Variables" (ICML), the AR estimator.
    """

    def estimate(self, f: CostFn, latent: Latent, generator: torch.Generator | None) -> Estimate:
        theta, th, gumbel, log_w = self._setup(latent, generator)
        C = latent.num_categories
        z = (th + gumbel).argmax(-1)
        fz = latent.call_f(f, latent.encode(z.reshape(latent.index_shape())), ())
        fz = fz.reshape(-1)
        grad = fz.detach().to(th.dtype)[:, None, None] * (1 - C * log_w.exp())
        return self._finish(latent, theta, fz, grad, 1)


def _check_max_evals(max_evals_per_call: int | None) -> int | None:
    if max_evals_per_call is None:
        return None
    if (
        isinstance(max_evals_per_call, bool)
        or not isinstance(max_evals_per_call, int)
        or max_evals_per_call < 1
    ):
        raise ValueError(
            "max_evals_per_call must be None or a positive int, "
            f"got max_evals_per_call={max_evals_per_call!r}"
        )
    return max_evals_per_call


def _check_reference(reference) -> int | str:
    if isinstance(reference, str) and reference == "random":
        return "random"
    if isinstance(reference, bool) or not isinstance(reference, int) or reference < 0:
        raise ValueError(
            "reference must be 'random' or a non-negative int category, "
            f"got reference={reference!r}"
        )
    return reference


class _WithEvals(_AugmentREINFORCE):
    def __init__(
        self, *, max_evals_per_call: int | None = None, generator: torch.Generator | None = None
    ):
        super().__init__(generator=generator)
        self.max_evals_per_call = _check_max_evals(max_evals_per_call)

    def extra_repr(self) -> str:
        return f"max_evals_per_call={self.max_evals_per_call}"


class _ReferenceSwap(_WithEvals):
    """ARS and ARS+: one reference category per data point."""

    plus = False

    def __init__(
        self,
        reference: str | int = "random",
        *,
        max_evals_per_call: int | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__(max_evals_per_call=max_evals_per_call, generator=generator)
        self.reference = _check_reference(reference)

    def extra_repr(self) -> str:
        return f"reference={self.reference!r}, " + super().extra_repr()

    def estimate(self, f: CostFn, latent: Latent, generator: torch.Generator | None) -> Estimate:
        theta, th, gumbel, log_w = self._setup(latent, generator)
        B, V, C = th.shape
        reference = self.reference
        if isinstance(reference, str):  # "random", the only string _check_reference accepts
            ref = torch.randint(C, (B,), device=latent.device, generator=generator)
        else:
            if reference >= C:
                raise ValueError(
                    f"{type(self).__name__}: reference={reference} is not a category "
                    f"of a distribution with {C} categories"
                )
            ref = torch.full((B,), reference, dtype=torch.long, device=latent.device)
        swaps = swap_reference(th, gumbel, ref)  # [C(m), B*V]: swap (ref, m)
        z = swaps.gather(0, ref.view(B, 1).expand(B, V).reshape(1, -1))  # m = ref: no swap
        # [B, 1 + C, V]: the true sample, then the swap with every m.
        configs = torch.cat([z, swaps]).view(1 + C, B, V).transpose(0, 1)
        values, f_true, count = evaluate_unique(
            latent, f, configs, max_per_call=self.max_evals_per_call
        )
        fm = values[:, 1:].to(th.dtype)  # [B, C]: f(z^{ref<->m})
        df = fm - fm.mean(-1, keepdim=True)
        if self.plus:
            pseudo = swaps.view(C, B, V).permute(1, 2, 0)  # [B, V, C]
            w_ref = rao_blackwell_reference(th, log_w, ref, pseudo)  # [B, V]
            coef = (1 - C * w_ref) * ~(swaps == swaps[:1]).all(0).view(B, V)
        else:
            w_ref = log_w.gather(-1, ref.view(B, 1, 1).expand(B, V, 1)).squeeze(-1).exp()
            coef = 1 - C * w_ref
        grad = coef.unsqueeze(-1) * df.unsqueeze(1)
        return self._finish(latent, theta, f_true, grad, count)


@register("ars")
class ARS(_ReferenceSwap):
    r"""Augment-REINFORCE-Swap (ARS) for categorical variables.

    .. math:: g_{d,l} = \Big(f(z^{j\rightleftharpoons l}) - \frac1C\sum_{m=1}^C
              f(z^{j\rightleftharpoons m})\Big)(1 - C\,\varpi_{d,j}),

    one reference category :math:`j` per data point (uniform at random, or
    fixed), the swap :math:`(j, m)` applied to all :math:`D` variables at once.
    Unbiased: the Dirichlet is exchangeable, so
    :math:`\mathbb E[f(z)(1 - C\varpi_l)] = \mathbb E[f(z^{j\rightleftharpoons l})(1 - C\varpi_j)]`,
    and the mean over :math:`m` is a baseline with zero expected contribution.
    At most :math:`C` evaluations of ``f`` per data point (the distinct
    configurations among :math:`z^{j\rightleftharpoons m}`, :math:`m = 1..C`).

    Args:
        reference: ``"random"`` (a uniform category per data point and call) or
            a fixed category index.
        max_evals_per_call: at most this many configurations per data point in
            call of ``f`` (bounds memory); ``None``: all pseudo-actions in one call.
        generator: a ``torch.Generator`` for the noise.

    Yin, Yue & Zhou 2019, "ARSM" (ICML), the ARS estimator.
    """


@register("ars_plus")
class ARSPlus(_ReferenceSwap):
    r"""ARS+: ARS with symmetry zeroing and a Rao-Blackwellised Dirichlet weight.

    .. math:: g_{d,l} = (1 - \delta_d)\Big(f(z^{j\rightleftharpoons l}) - \frac1C\sum_m
              f(z^{j\rightleftharpoons m})\Big)\big(1 - C\,\hat\varpi_{d,j}\big)

    * Symmetry: :math:`\delta_d = 1` when the pseudo-actions of variable
      :math:`d` all coincide (:math:`z_d^{j\rightleftharpoons m} = z_d\ \forall m`).
      Then, given :math:`\varpi_d`, the other variables' pseudo-actions are
      exchangeable in :math:`m`, so that term has conditional mean zero: dropping
      it keeps the estimator unbiased and cannot add variance.
    * Rao-Blackwellisation: for a partner :math:`h \ne j`, given
      :math:`\varpi_{d,-(j,h)}`, the pair :math:`(\varpi_{d,j}, \varpi_{d,h})` is
      uniform on the segment :math:`t + (s - t) = s`. Each observed
      pseudo-action ``argmin`` of the swapped vector is an intersection of
      inequalities linear in :math:`t = \varpi_{d,j}`, so given the pseudo-actions
      :math:`t` is uniform on an interval :math:`[lo_h, hi_h]` and
      :math:`\mathbb E[\varpi_{d,j} \mid \cdot] = (lo_h + hi_h)/2`.
      :math:`\hat\varpi_{d,j}` averages these midpoints over all partners
      :math:`h \ne j` (an average of conditional expectations: unbiased, and no
      more variance than one). See :func:`rao_blackwell_reference`.

    Same evaluations as :class:`ARS` (at most :math:`C`); arguments as :class:`ARS`.

    Seed slides (Rakitin) "ARS+ and ARSM+"; Dong, Mnih & Tucker 2021, "Coupled
    Gradient Estimators for Discrete Latent Variables" (NeurIPS), which Rao-Blackwellises ARS.
    """

    plus = True


class _Merge(_WithEvals):
    """ARSM and ARSM+: every reference, every swap pair."""

    plus = False

    def estimate(self, f: CostFn, latent: Latent, generator: torch.Generator | None) -> Estimate:
        theta, th, gumbel, log_w = self._setup(latent, generator)
        C = th.shape[-1]
        B, V = th.shape[:2]
        table = swap_table(th, gumbel)  # [C(j), C(m), B*V], symmetric
        ju, mu = torch.triu_indices(C, C, 1, device=latent.device)
        zero = ju.new_zeros(1)
        # Candidates: (0, 0) (the true sample: the diagonal is z), then every j < m.
        configs = table[torch.cat([zero, ju]), torch.cat([zero, mu])]  # [P, B*V]
        configs = configs.view(-1, B, V).transpose(0, 1)  # [B, P, V]
        values, f_true, count = evaluate_unique(
            latent, f, configs, max_per_call=self.max_evals_per_call
        )
        # Pair index of (j, m): 0 on the diagonal (the true sample), symmetric.
        pair = torch.zeros(C, C, dtype=torch.long, device=latent.device)
        k = torch.arange(1, ju.numel() + 1, device=latent.device)
        pair[ju, mu] = k
        pair[mu, ju] = k
        fjm = values[:, pair].to(th.dtype)  # [B, C(j), C(m)]
        df = fjm - fjm.mean(-1, keepdim=True)
        coef = 1 - C * log_w.exp()  # [B, V, C(j)]
        if self.plus:
            same = (table == table[:, :1]).all(1)  # [C(j), B*V]: z^{j<->m} equal for all m
            coef = coef * ~same.t().view(B, V, C)
        grad = torch.einsum("bvj,bjl->bvl", coef, df) / C
        return self._finish(latent, theta, f_true, grad, count)


@register("arsm")
class ARSM(_Merge):
    r"""Augment-REINFORCE-Swap-Merge (ARSM) for categorical variables.

    .. math:: g_{d,l} = \frac1C\sum_{j=1}^C \Big(f(z^{j\rightleftharpoons l})
              - \frac1C\sum_{m=1}^C f(z^{j\rightleftharpoons m})\Big)(1 - C\,\varpi_{d,j}),

    the mean of ARS over all references :math:`j`, sharing one Dirichlet draw
    per variable (common random numbers); a swap :math:`(j, m)` acts on all
    :math:`D` variables at once, variable :math:`d` uses its own
    :math:`\varpi_{d,j}`. Unbiased (a mean of unbiased ARS estimators).

    Evaluations: the distinct joint configurations among the
    :math:`C(C-1)/2 + 1` candidates (:math:`z^{j\rightleftharpoons m} =
    z^{m\rightleftharpoons j}`; all diagonal ones equal :math:`z`), never more;
    a data point whose pseudo-actions all coincide costs one (``f(z)``) and gets
    zero gradient.

    Args:
        max_evals_per_call: at most this many configurations per data point in
            call of ``f`` (bounds memory); ``None``: all pseudo-actions in one call.
        generator: a ``torch.Generator`` for the noise.

    Yin, Yue & Zhou 2019, "ARSM: Augment-REINFORCE-Swap-Merge Estimator for
    Gradient Backpropagation Through Categorical Variables" (ICML).
    """


@register("arsm_plus")
class ARSMPlus(_Merge):
    r"""ARSM+: ARSM with symmetry zeroing per variable and reference.

    .. math:: g_{d,l} = \frac1C\sum_{j=1}^C (1 - \delta_{d,j})
              \Big(f(z^{j\rightleftharpoons l}) - \frac1C\sum_m f(z^{j\rightleftharpoons m})\Big)
              (1 - C\,\varpi_{d,j}),

    :math:`\delta_{d,j} = 1` when :math:`z_d^{j\rightleftharpoons m}` is the same
    for every :math:`m`: given :math:`\varpi_d` that term has mean zero (the other
    variables' pseudo-actions are exchangeable in :math:`m`), so dropping it keeps
    the estimator unbiased. With one variable it equals ARSM exactly (the
    dropped terms are already zero); with several it removes pure noise. As in
    the seed slides, ARSM+ uses the symmetry only: Rao-Blackwellising each
    reference's :math:`\varpi_{d,j}` separately would condition the terms of the
    sum on different information and carries no variance guarantee.

    Same evaluations and arguments as :class:`ARSM`.

    Seed slides (Rakitin) "ARS+ and ARSM+"; Dong, Mnih & Tucker 2021, "Coupled
    Gradient Estimators for Discrete Latent Variables".
    """

    plus = True


# ------------------------------------------------------------ Rao-Blackwell
def rao_blackwell_reference(theta: Tensor, log_w: Tensor, ref: Tensor, pseudo: Tensor) -> Tensor:
    r""":math:`\hat\varpi_j = \frac{1}{C-1}\sum_{h \ne j} \mathbb E[\varpi_j \mid
    z^{j\rightleftharpoons 1..C}, \varpi_{-(j,h)}]` per variable (``j = ref``): ``[B, V]``.

    The midpoints of :func:`reference_bounds`, averaged over the partners ``h``.
    """
    B, _, C = theta.shape
    if C == 1:
        return log_w.squeeze(-1).exp()
    lo, hi = reference_bounds(theta, log_w, ref, pseudo)
    partner = torch.arange(C, device=theta.device).view(1, 1, C) != ref.view(B, 1, 1)
    return (0.5 * (lo + hi) * partner).sum(-1) / (C - 1)


def reference_bounds(
    theta: Tensor, log_w: Tensor, ref: Tensor, pseudo: Tensor
) -> tuple[Tensor, Tensor]:
    r"""The interval :math:`[lo_h, hi_h]` on which :math:`\varpi_j` (``j = ref``) is
    uniform given the pseudo-actions :math:`z^{j\rightleftharpoons 1..C}` and
    :math:`\varpi_{-(j,h)}`, for every partner ``h``: two ``[B, V, C]`` tensors
    (the entries at ``h = j`` are meaningless).

    Args:
        theta: logits ``[B, V, C]`` (``-inf`` masked).
        log_w: :math:`\log\varpi` ``[B, V, C]``.
        ref: reference category per data point ``[B]``.
        pseudo: observed pseudo-actions ``[B, V, C]`` (swap ``(j, m)`` at ``[..., m]``).

    Derivation (one variable, reference :math:`j`, partner :math:`h`, swap
    :math:`\sigma = (j\ m)`): the swapped vector is
    :math:`x_i = \varpi_{\sigma(i)} e^{-\theta_i}`. With :math:`t = \varpi_j` and
    :math:`\varpi_h = s - t` free and everything else fixed, exactly two entries
    move: :math:`x_{i_1} = t\,e^{-\theta_{i_1}}` at :math:`i_1 = m` (it holds
    :math:`\varpi_j`) and :math:`x_{i_2} = (s - t)\,e^{-\theta_{i_2}}` at
    :math:`i_2 = \sigma(h)`; :math:`R = \min_{i \ne i_1, i_2} x_i` is constant. The
    observed arg min :math:`a` gives

    * :math:`a = i_1`: :math:`t \le s\,\sigma(\theta_{i_1} - \theta_{i_2})` and
      :math:`t \le R e^{\theta_{i_1}}`;
    * :math:`a = i_2`: :math:`t \ge s\,\sigma(\theta_{i_1} - \theta_{i_2})` and
      :math:`t \ge s - R e^{\theta_{i_2}}`;
    * otherwise: :math:`t \ge R e^{\theta_{i_1}}` and :math:`t \le s - R e^{\theta_{i_2}}`.

    Intersected over all :math:`m` and with :math:`[0, s]` this is the interval
    :math:`[lo_h, hi_h]` on which :math:`t` is conditionally uniform (the
    Dirichlet(1) is uniform on the simplex). Vectorised over data points,
    variables, swaps :math:`m` and partners :math:`h`: O(C^2) per variable.
    """
    B, V, C = theta.shape
    lo, hi = _reference_bounds_first(theta, log_w, ref, pseudo)
    return lo.t().contiguous().view(B, V, C), hi.t().contiguous().view(B, V, C)


def _reference_bounds_first(
    theta: Tensor, log_w: Tensor, ref: Tensor, pseudo: Tensor
) -> tuple[Tensor, Tensor]:
    r""":func:`reference_bounds` computed swap-first: ``lo``, ``hi`` as ``[C(h), B*V]``.

    Every ``[m, h]`` quantity is laid out ``[C(m), C(h), B*V]`` (innermost the
    ``B*V`` variables, categories broadcast as rows), as in
    :func:`~discograd.estimators._augment.swap_table`, and the case analysis
    uses only the few entries a swap moves:

    * :math:`R` excludes :math:`i_1 = m` and :math:`i_2 = \sigma(h)` from the
      swapped vector, whose entries are the unswapped
      :math:`x^0_i = \log\varpi_i - \theta_i` except :math:`x_j = \log\varpi_m -
      \theta_j` (for :math:`m \ne j`). So :math:`R` is the least of the unswapped
      entries outside :math:`\{j, m, h\}` — the first of the three smallest
      outside ``j`` not at ``m`` or ``h``: the smallest everywhere, the second on
      row and column of the smallest, the third at the two entries pairing the
      smallest two — and, off the diagonal and for :math:`m \ne j`, of
      :math:`\log\varpi_m - \theta_j` (on the diagonal :math:`h = m`,
      :math:`i_2 = j`; for :math:`m = j` nothing is swapped).
    * :math:`a = i_1` (:math:`a = m`) is a property of the row ``m``; on the
      other rows :math:`a = i_2` holds at the single partner :math:`h^* =
      \sigma(a)`, patched by a scatter.
    * Everything else is reduced over ``m`` in log space, on :math:`\log R` itself
      (the only ``[C(m), C(h), B*V]`` tensor): :math:`e^x` and :math:`s - e^x` are
      monotone, so ``max`` / ``min`` over ``m`` commute with them. Entries that
      carry no bound (rows :math:`a = i_1`, and :math:`h^*` on every row) are
      set to :math:`-\infty` with ``minimum`` against a row of ``±inf`` and a
      scatter (on CPU ``torch.where`` over broadcast operands is several times
      slower).
    * The term :math:`s\,\sigma(\theta_{i_1} - \theta_{i_2})` of the upper bound
      matters only on rows :math:`a = i_1` (about one ``m`` per variable): those
      rows are gathered, ``[C(h), K]``, and reduced into ``hi`` by a scatter.
    """
    B, V, C = theta.shape
    N = B * V
    dev, dt = theta.device, theta.dtype
    inf = math.inf
    th = theta.reshape(N, C).t().contiguous()  # [C, N]
    lw = log_w.reshape(N, C).t().contiguous()
    j = ref.view(B, 1).expand(B, V).reshape(1, N)
    th_j = th.gather(0, j)  # [1, N]
    a = pseudo.permute(2, 0, 1).reshape(C, N)  # [C(m), N]: the observed arg min
    ar = torch.arange(C, device=dev).view(C, 1)

    # The three smallest unswapped entries outside j, smallest first: v0 at i0,
    # v1 at i1, v2 (each [N]); one amin over the categories per rank, the found
    # entry then excluded. Ties (measure zero but for +inf, masked, whose
    # position never matters: R is +inf either way) pick the last index.
    x0 = (lw - th).scatter_(0, j, inf)  # [C, N]
    i32 = torch.int32
    ar32 = ar.to(i32)
    v0 = x0.amin(0, keepdim=True)
    i0 = ((x0 == v0).to(i32) * ar32).amax(0, keepdim=True).long()
    v1 = x0.scatter_(0, i0, inf).amin(0, keepdim=True)
    i1 = ((x0 == v1).to(i32) * ar32).amax(0, keepdim=True).long()
    v2 = x0.scatter_(0, i1, inf).amin(0)
    v0, v1, i0, i1 = v0.squeeze(0), v1.squeeze(0), i0.squeeze(0), i1.squeeze(0)
    log_r = v0.expand(C, C, N).contiguous()
    log_r.scatter_(0, i0.view(1, 1, N).expand(1, C, N), v1.expand(1, C, N))
    log_r.scatter_(1, i0.view(1, 1, N).expand(C, 1, N), v1.expand(C, 1, N))
    flat = log_r.view(C * C, N)
    flat.scatter_(0, (i0 * C + i1).view(1, N), v2.view(1, N))
    flat.scatter_(0, (i1 * C + i0).view(1, N), v2.view(1, N))
    diag = flat[:: C + 1].clone()  # h = m: R excludes m and j only
    x_j = (lw - th_j).scatter_(0, j, inf)  # [C(m), N]: swapped entry j, none for m = j
    torch.minimum(log_r, x_j.unsqueeze(1), out=log_r)
    flat[:: C + 1] = diag

    # θ_{i1} = θ_m (rows), θ_{i2} = θ_h (columns) but θ_j on the diagonal.
    # ϖ_j + ϖ_h: [C(h), N] (two exps and an add; torch's CPU logaddexp is not vectorised)
    w = lw.exp()
    s = w.gather(0, j) + w
    masked = bool(torch.isneginf(th).any())  # θ = -∞ with R = ∞: R e^θ → 0, not NaN

    c1 = a == ar  # [C(m), N]: a = i1 (row-wise)
    # hi on rows a = i1 (few: one m per variable on average), gathered as K
    # columns: min(cross, R e^{θ_m}), cross = s σ(θ_{i1} - θ_{i2}).
    rows = c1.view(-1).nonzero().squeeze(1)  # m * N + n
    m_k, n_k = rows // N, rows % N
    th_m = th.view(-1)[rows]  # θ_{i1} = θ_m, finite (m is the arg min)
    # index_select (not advanced indexing, several times slower on CPU) gathers.
    d = th_m - th.index_select(1, n_k)  # [C(h), K]: θ_{i1} - θ_{i2}, but θ_j at h = m
    d[m_k, torch.arange(rows.numel(), device=dev)] = th_m - th_j[0, n_k]
    hi_c1 = torch.sigmoid_(d).mul_(s.index_select(1, n_k))
    at_k = (m_k * (C * N) + n_k) + (ar * N)  # [C(h), K]: flat index of log R[m_k, h, n_k]
    u1_k = (log_r.view(-1).index_select(0, at_k.view(-1)).view(C, -1) + th_m).exp_()
    if masked:
        u1_k.nan_to_num_(0.0, inf)
    torch.minimum(hi_c1, u1_k, out=hi_c1)

    a32, j32, m32 = a.to(i32), j.to(i32), ar32
    c1i = c1.to(i32)
    aj = ((a32 == j32) & ~c1).to(i32)
    i2_star = a32 + c1i * (j32 - a32)  # i2 = σ(h*): a, but j on rows a = i1
    h_s = (i2_star + aj * (m32 - a32)).long()  # h* = σ_m(a): [C(m), N]
    i2_star = i2_star.long()
    # Flat index of the entries [m, h*(m), n] of log R (index_select / index_fill_
    # on it are several times faster on CPU than gather / scatter_ along dim 1).
    at_star = (ar * C + h_s) * N + torch.arange(N, device=dev)
    # a = i2 at h*: t ≥ max(cross, u2) (on rows a = i1, h* = j: meaningless column).
    th_a = th.gather(0, a)  # θ_{i2} at h* is θ_a
    s_star = s.gather(0, h_s)
    cross_star = s_star * torch.sigmoid(th - th_a)  # [C(m), N]
    th_i2 = th.gather(0, i2_star)  # θ_{h*} off the diagonal, θ_j on it
    e2_star = (log_r.view(-1).index_select(0, at_star.view(-1)).view(C, N) + th_i2).exp_()
    if masked:
        e2_star.nan_to_num_(0.0, inf)
    patch = torch.maximum(cross_star, s_star - e2_star)  # u2 = s - R e^{θ_{i2}} at h*

    # Everything else reduces over m in log space: e^x and s - e^x are monotone,
    # so max / min commute with them. Entries carrying no bound are set to -∞:
    # rows a = i1 (their hi is hi_c1, their lo is 0) and h* on every row (patch).
    kill = torch.where(c1, -inf, inf).to(dt).unsqueeze(1)
    torch.minimum(log_r, kill, out=log_r)
    log_r.view(-1).index_fill_(0, at_star.view(-1), -inf)
    diag = flat[:: C + 1].clone()
    flat[:: C + 1] = -inf
    # hi = min(s - max_m R e^{θ_{i2}}, s): θ_{i2} = θ_h off the diagonal, θ_j on it.
    # torch's CPU exp leaves its vectorised path (~20x slower) for arguments that
    # underflow, -∞ included (killed entries): exponents are clamped at
    # x_min, whose e^{x_min} (7e-35 in float32) is far below half an ulp of s
    # (s ≥ ϖ_j ≥ (eps / 2) / (C log(1 / tiny)) through the clamped uniforms of
    # dirichlet_noise: 7e-11 for float32 and C = 10), so s - e^x is unchanged.
    x_min = 0.9 * math.log(torch.finfo(dt).tiny)
    x_off = log_r.amax(0) + th
    x_diag = diag + th_j
    if masked:  # NaN = -∞ + ∞: R e^θ → 0
        x_off.nan_to_num_(-inf, inf)
        x_diag.nan_to_num_(-inf, inf)
    hi = torch.minimum(s - torch.maximum(x_off, x_diag).clamp_min_(x_min).exp_(), s)
    hi.scatter_reduce_(1, n_k.expand(C, -1), hi_c1, "amin")
    # lo = max(max_m R e^{θ_m}, the patches at h*, 0).
    flat[:: C + 1] = diag
    log_u1 = log_r.add_(th.unsqueeze(1))
    if masked:
        log_u1.nan_to_num_(-inf, inf)
    lo = log_u1.amax(0).clamp_min_(x_min).exp_()
    lo.scatter_reduce_(0, h_s, patch, "amax")
    # Clamped exponents (e^{x_min}) and negative bounds to 0.
    lo = F.threshold(lo, math.exp(x_min), 0.0)
    return lo, hi
