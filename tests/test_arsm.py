"""AR, ARS, ARSM, ARS+, ARSM+: unbiasedness, variance ordering, evaluations, chunking, masks."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Independent, OneHotCategorical

import discograd as dg
from discograd.diagnostics import exact_gradient, gradient_draws
from discograd.estimators import AR, ARS, ARSM, ARSMPlus, ARSPlus
from discograd.estimators._augment import dirichlet_noise, swap_argmax
from discograd.estimators.arsm import reference_bounds
from estimator_helpers import D64, assert_var_less, draws, exact, problem

from conftest import assert_mean_matches

FAMILY = [
    AR(),
    ARS(),
    ARS(reference=1),
    ARSM(),
    ARSPlus(),
    ARSPlus(reference=3),
    ARSMPlus(),
    ARSM(max_evals_per_call=2),
]


@pytest.mark.parametrize("est", FAMILY, ids=lambda e: f"{type(e).__name__}({e.extra_repr()})")
def test_unbiased_with_decoder_and_log_q(est):
    # 3 data points with different logits, D = 2 variables, C = 4 categories,
    # nonlinear f with decoder weights inside and a log q(z) term.
    theta, w = problem("categorical", B=3, D=2, C=4, seed=1)
    g, out = draws(est, "categorical", theta, w, 12000, seed=2)
    assert torch.isfinite(g).all()
    assert_mean_matches(g, exact("categorical", theta, w))
    assert out.loss.shape == out.value.shape == (12000, 3)
    torch.testing.assert_close(out.loss.detach(), out.value)


@pytest.mark.parametrize(
    "est", [AR(), ARSM(), ARSPlus(), ARSMPlus()], ids=lambda e: type(e).__name__
)
def test_unbiased_with_masked_categories(est):
    theta, w = problem("categorical", B=2, D=2, C=5, seed=3)
    with torch.no_grad():
        theta[0, 0, 1] = -math.inf
        theta[1, 1, [0, 4]] = -math.inf
    g, out = draws(est, "categorical", theta, w, 8000, seed=4)
    assert torch.isfinite(g).all() and torch.isfinite(out.loss).all()
    masked = ~torch.isfinite(theta.detach()).reshape(-1)
    assert (g[:, : masked.numel()][:, masked] == 0).all()
    assert_mean_matches(g, exact("categorical", theta, w))


def test_onehot_and_plain_categorical_and_batch_shapes():
    gen = torch.Generator().manual_seed(5)
    theta = torch.randn(2, 3, 5, dtype=D64, generator=gen).requires_grad_()
    seen = []

    def f(x):
        seen.append(x.shape)
        return (x * torch.arange(5.0, dtype=D64)).sum(-1) ** 2

    out = ARSM()(f, OneHotCategorical(logits=theta), generator=gen)
    assert out.loss.shape == (2, 3) and out.n_evals.shape == (2, 3)
    assert seen[-1][1:] == (2, 3, 5)
    out.loss.sum().backward()
    assert theta.grad.shape == theta.shape and torch.isfinite(theta.grad).all()
    # A single categorical, no batch: shapes () everywhere.
    out = ARS()(f, Categorical(logits=theta[0, 0]), generator=gen)
    assert out.loss.shape == () and out.n_evals.shape == ()
    # Two variable dimensions: var_shape (2, 3).
    q = Independent(Categorical(logits=theta), 2)
    seen.clear()
    out = ARSPlus()(lambda x: f(x).sum((-1, -2)), q, generator=gen)
    # the true sample's call (with gradient), then the pseudo-actions' (without)
    assert out.loss.shape == () and all(s[1:] == (2, 3, 5) for s in seen)
    assert sum(s[0] for s in seen) == int(out.n_evals)


# ------------------------------------------------------------- the ARSM toy
def toy(C: int = 10, R: int = 30, skew: bool = False):
    theta = torch.zeros(C, dtype=D64)
    if skew:
        theta = torch.linspace(-2.0, 2.0, C, dtype=D64)
    theta.requires_grad_()
    values = torch.arange(C, dtype=D64)

    def f(z):  # z one-hot: f(z) = 0.5 + (z + 1) / (C R), categories 0..C-1
        return 0.5 + ((z * values).sum(-1) + 1) / (C * R)

    return theta, Categorical(logits=theta), f


@pytest.mark.parametrize("skew", [False, True])
def test_variance_ordering_on_the_arsm_toy(skew):
    theta, q, f = toy(skew=skew)
    (g_star,) = exact_gradient(f, q, theta)
    n = 6000
    stats = {}
    for est in [AR(), ARS(), ARSM(), ARSPlus(), ARSMPlus()]:
        g, _ = gradient_draws(est, f, q, theta, n, generator=torch.Generator().manual_seed(7))
        assert_mean_matches(g, g_star)
        stats[type(est).__name__] = g
    assert_var_less(stats["ARS"], stats["AR"])
    assert_var_less(stats["ARSM"], stats["ARS"])
    assert_var_less(stats["ARSPlus"], stats["ARS"], paired=True)
    # One variable: the symmetry terms ARSM+ drops are exactly zero already.
    assert torch.equal(stats["ARSMPlus"], stats["ARSM"])


def test_arsm_plus_below_arsm_with_several_variables():
    # D = 6 variables, some nearly deterministic: many (variable, reference)
    # terms have coinciding pseudo-actions, which ARSM+ drops.
    gen = torch.Generator().manual_seed(8)
    theta = (3.0 * torch.randn(1, 6, 4, dtype=D64, generator=gen)).requires_grad_()
    w = torch.randn(6, 4, dtype=D64, generator=gen)
    f = lambda z: torch.sin(2 * (z * w).sum((-1, -2))) + (z * w).sum((-1, -2)) ** 2  # noqa: E731
    q = Independent(Categorical(logits=theta), 1)
    (g_star,) = exact_gradient(f, q, theta)
    g = {}
    for est in [ARSM(), ARSMPlus()]:
        g[est] = gradient_draws(
            est, f, q, theta, 10000, generator=torch.Generator().manual_seed(9)
        )[0]
        assert_mean_matches(g[est], g_star)
    # Same noise, same evaluations: ARSM+ only zeroes terms.
    g_m, g_p = g.values()
    assert_var_less(g_p, g_m, paired=True)
    assert (g_p != g_m).any(1).float().mean() > 0.5


# ------------------------------------------------------ pseudo-actions, RB
def brute_pseudo(theta, log_w, ref):
    """argmin_i of ϖ with entries ref and m swapped, times e^{-θ}, for every m (a loop)."""
    B, V, C = theta.shape
    out = []
    idx = ref.view(B, 1, 1).expand(B, V, 1)
    for m in range(C):
        lw = log_w.clone()
        lw_ref, lw_m = lw.gather(-1, idx).clone(), lw[..., m : m + 1].clone()
        lw.scatter_(-1, idx, lw_m)
        lw[..., m : m + 1] = lw_ref
        out.append((lw - theta).argmin(-1))
    return torch.stack(out, -1)


def test_swap_table_matches_brute_force():
    gen = torch.Generator().manual_seed(10)
    B, V, C = 500, 3, 6
    theta = torch.randn(B, V, C, dtype=D64, generator=gen)
    theta[:50, 0, [1, 2]] = -math.inf
    gumbel, log_w = dirichlet_noise((B, V, C), D64, theta.device, gen)
    table = swap_argmax(theta, gumbel)
    assert torch.equal(table, table.transpose(-1, -2))
    assert torch.equal(
        table.diagonal(dim1=-2, dim2=-1), (theta + gumbel).argmax(-1)[..., None].expand(B, V, C)
    )
    for j in range(C):
        ref = torch.full((B,), j)
        assert torch.equal(table[:, :, j], brute_pseudo(theta, log_w, ref))
        assert torch.equal(swap_argmax(theta, gumbel, ref), table[:, :, j])


def test_rao_blackwell_interval_is_exact():
    # The interval [lo_h, hi_h] must be exactly the set of ϖ_ref = t (with
    # ϖ_h = s - t) that reproduce every observed pseudo-action: points just
    # inside keep them all, points just outside change at least one.
    gen = torch.Generator().manual_seed(11)
    B, V, C = 1500, 2, 5
    theta = 1.5 * torch.randn(B, V, C, dtype=D64, generator=gen)
    theta[:100, 0, 2] = -math.inf
    theta = theta.log_softmax(-1)
    gumbel, log_w = dirichlet_noise((B, V, C), D64, theta.device, gen)
    ref = torch.randint(C, (B,), generator=gen)
    pseudo = swap_argmax(theta, gumbel, ref)
    assert torch.equal(pseudo, brute_pseudo(theta, log_w, ref))
    lo, hi = reference_bounds(theta, log_w, ref, pseudo)
    w = log_w.exp()
    idx = ref.view(B, 1, 1).expand(B, V, 1)
    w_ref = w.gather(-1, idx)
    partner = torch.arange(C).view(1, 1, C) != ref.view(B, 1, 1)
    assert ((lo <= w_ref + 1e-12) & (w_ref <= hi + 1e-12) | ~partner).all()
    s = w_ref + w
    checked = 0
    for h in range(C):
        for frac, inside in [(1e-3, True), (1 - 1e-3, True), (-1e-3, False), (1 + 1e-3, False)]:
            t = lo[..., h] + frac * (hi[..., h] - lo[..., h])
            valid = partner[..., h] & (t > 0) & (t < s[..., h])
            wn = w.clone()
            wn.scatter_(-1, idx, t.unsqueeze(-1))
            wn[..., h] = s[..., h] - t
            same = (brute_pseudo(theta, wn.log(), ref) == pseudo).all(-1)
            assert (same == inside)[valid].all()
            checked += int(valid.sum())
    assert checked > 20000


# ------------------------------------------------------ evaluations, dedupe
def recording(f):
    calls = []

    def g(x):
        calls.append(x.detach().clone())
        return f(x)

    return g, calls


@pytest.mark.parametrize(
    "est", [ARS(), ARSPlus(), ARSM(), ARSMPlus()], ids=lambda e: type(e).__name__
)
def test_n_evals_counts_distinct_configurations(est):
    gen = torch.Generator().manual_seed(12)
    C = 5
    theta = (
        torch.randn(400, 2, C, dtype=D64, generator=gen)
        * torch.linspace(0.1, 4, 400, dtype=D64)[:, None, None]
    )
    f, calls = recording(lambda x: (x * torch.arange(C, dtype=D64)).sum((-1, -2)) ** 2)
    out = est(f, Independent(Categorical(logits=theta.requires_grad_()), 1), generator=gen)
    # Two calls: the true samples (gradient attached), then all pseudo-actions
    # (no gradient: f's backward would otherwise run over every slot).
    assert len(calls) == 2 and calls[0].shape[0] == 1
    x = torch.cat(calls)  # [M, 400, 2, C]
    bound = C * (C - 1) // 2 + 1 if isinstance(est, (ARSM, ARSMPlus)) else C
    assert x.shape[0] == int(out.n_evals.max()) <= bound
    distinct = torch.tensor([torch.unique(x[:, b].flatten(1), dim=0).shape[0] for b in range(400)])
    assert torch.equal(
        out.n_evals, distinct
    )  # each distinct configuration once, padding not counted
    assert (out.n_evals >= 1).all() and out.n_evals.min() < out.n_evals.max()


def test_arsm_never_exceeds_the_bound_and_reaches_it():
    gen = torch.Generator().manual_seed(13)
    C = 4
    theta = torch.zeros(3000, 3, C, dtype=D64, requires_grad=True)
    out = ARSM()(
        lambda x: (x * torch.arange(C)).sum((-1, -2)),
        Independent(Categorical(logits=theta), 1),
        generator=gen,
    )
    assert int(out.n_evals.max()) == C * (C - 1) // 2 + 1
    assert out.mean_evals <= C * (C - 1) // 2 + 1


def test_coincident_pseudo_actions_cost_nothing_and_give_zero_gradient():
    # Data point 0: one category left per variable, so every pseudo-action is
    # the sample itself. Data point 1: ordinary.
    C = 5
    theta = torch.zeros(2, 2, C, dtype=D64)
    theta[0, :, 1:] = -math.inf
    theta.requires_grad_()
    f, calls = recording(lambda x: ((x * torch.arange(C, dtype=D64)).sum((-1, -2)) - 1.0) ** 2)
    for est in [ARSM(), ARSMPlus(), ARS(), ARSPlus()]:
        calls.clear()
        theta.grad = None
        out = est(
            f,
            Independent(Categorical(logits=theta), 1),
            generator=torch.Generator().manual_seed(14),
        )
        out.loss.sum().backward()
        assert out.n_evals[0] == 1 and out.n_evals[1] > 1
        assert torch.isfinite(theta.grad).all()
        assert (theta.grad[0] == 0).all() and (theta.grad[1] != 0).any()
        assert out.value[0] == 1.0  # f(z) with z = (0, 0)
    # A batch of only coincident data points: f is called once, on the sample alone.
    calls.clear()
    out = ARSM()(f, Independent(Categorical(logits=theta[:1]), 1))
    assert len(calls) == 1 and calls[0].shape[0] == 1 and out.n_evals.tolist() == [1]


def test_chunking_gives_identical_results():
    theta, w = problem("categorical", B=4, D=3, C=5, seed=15)
    results = []
    for chunk in [None, 1, 3, 100]:
        theta.grad = None
        w.grad = None
        f, calls = recording(lambda x: torch.tanh((x * w).sum((-1, -2))) * 3)
        out = ARSM(max_evals_per_call=chunk)(
            f,
            Independent(Categorical(logits=theta), 1),
            generator=torch.Generator().manual_seed(16),
        )
        out.loss.sum().backward()
        M = int(out.n_evals.max())
        assert calls[0].shape[0] == 1  # the true sample, with gradient
        if chunk is not None:
            assert max(c.shape[0] for c in calls) <= chunk
            assert len(calls) == 1 + math.ceil((M - 1) / chunk)
        else:
            assert len(calls) == 2
        results.append((out.loss.detach(), out.n_evals, theta.grad.clone(), w.grad.clone()))
    for r in results[1:]:
        for a, b in zip(results[0], r, strict=True):
            assert torch.equal(a, b)


def test_gradient_sums_to_zero_and_reaches_raw_logits():
    # The estimate w.r.t. unnormalised logits sums to zero over categories.
    gen = torch.Generator().manual_seed(17)
    raw = torch.randn(50, 2, 6, dtype=D64, generator=gen).requires_grad_()
    f = lambda x: (x * torch.arange(6, dtype=D64)).sum((-1, -2)) ** 2  # noqa: E731
    for est in [AR(), ARS(), ARSM(), ARSPlus(), ARSMPlus()]:
        raw.grad = None
        est(f, Independent(Categorical(logits=raw), 1), generator=gen).loss.sum().backward()
        torch.testing.assert_close(raw.grad.sum(-1), torch.zeros(50, 2, dtype=D64))


def test_reproducible_with_generator():
    theta, w = problem("categorical", seed=18)
    for est in [ARS(), ARSPlus(), ARSM()]:
        a, _ = draws(est, "categorical", theta, w, 10, seed=19)
        b, _ = draws(est, "categorical", theta, w, 10, seed=19)
        assert torch.equal(a, b)
    est = ARSM(generator=torch.Generator().manual_seed(3))
    f = lambda x: x.sum((-1, -2))  # noqa: E731
    q = Independent(Categorical(logits=theta), 1)
    assert not torch.equal(est(f, q).n_evals, torch.zeros(3))  # runs with its own generator


def test_half_precision_logits():
    theta = torch.randn(8, 3, 4).to(torch.bfloat16).requires_grad_()
    out = ARSPlus()(
        lambda x: (x.float() ** 2).sum((-1, -2)).to(x.dtype),
        Independent(Categorical(logits=theta), 1),
    )
    out.loss.sum().backward()
    assert out.loss.dtype == torch.bfloat16 and torch.isfinite(theta.grad.float()).all()


def test_arguments_and_supported_distributions():
    with pytest.raises(ValueError, match="max_evals_per_call=0"):
        ARSM(max_evals_per_call=0)
    with pytest.raises(ValueError, match="max_evals_per_call"):
        ARS(max_evals_per_call=2.5)
    with pytest.raises(ValueError, match="reference='first'"):
        ARS(reference="first")
    with pytest.raises(ValueError, match="reference=-1"):
        ARSPlus(reference=-1)
    theta = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="reference=3"):
        ARS(reference=3)(lambda x: x.sum(-1), Categorical(logits=theta))
    for est in [AR(), ARS(), ARSM(), ARSPlus(), ARSMPlus()]:
        with pytest.raises(TypeError, match=rf"{type(est).__name__} does not support Bernoulli"):
            est(lambda b: b, Bernoulli(logits=theta))
        assert est.unbiased and est.supports == frozenset({"categorical"})
    assert "max_evals_per_call=4" in repr(ARSM(max_evals_per_call=4))
    assert dg.estimators.ARSM is ARSM
