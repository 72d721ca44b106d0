"""Categorical DisARM (Dong, Mnih & Tucker 2021): unbiasedness for every encoding and order,
the official code's per-decision algorithm as a loop reference (mean, variance, and draw
by draw), the importance-weighted variant and why it needs ascending order."""

from __future__ import annotations

import itertools

import pytest
import torch

from discograd.estimators import CategoricalDisARM, DisARM
from multisample_helpers import (
    D64,
    assert_unbiased,
    cost,
    draws,
    exact,
    problem,
    same_mean_and_variance,
)

from conftest import Z_TOL, assert_mean_matches

CONFIGS = [
    dict(encoding="stick_breaking", order="ascending"),
    dict(encoding="stick_breaking", order="none"),
    dict(encoding="stick_breaking", order="descending"),
    dict(encoding="stick_breaking", order="ascending", importance_weighted=True),
    dict(encoding="tree", order="none"),
    dict(encoding="tree", order="ascending"),
]


def _label(cfg):
    return "-".join(str(v) for v in cfg.values())


@pytest.mark.parametrize("cfg", CONFIGS, ids=_label)
def test_unbiased_against_exact(cfg):
    # nonlinear f using log q and a decoder parameter, D = 3, C = 5 (an uneven tree),
    # three data points with different logits, masked categories, one variable with
    # two possible categories
    theta, w = problem("categorical", B=3, D=3, C=5, seed=61)
    assert_unbiased(CategoricalDisARM(**cfg), "categorical", theta, w, 10000, seed=62, n_evals=2)


# ----------------------------------------------------------------------------- reference
def _tree_nodes(C):
    """Balanced tree over [0, C): a list of (lo, mid, hi), the upper half [mid, hi) = decision 1."""
    out, stack = [], [(0, C)]
    while stack:
        lo, hi = stack.pop()
        if hi - lo < 2:
            continue
        mid = lo + (hi - lo) // 2
        out.append((lo, mid, hi))
        stack += [(lo, mid), (mid, hi)]
    return out


def _reference(theta, w, n_draws, cfg, gen=None, given=None):
    """The official code's estimator written plainly: for each variable (loop) the
    categories sorted, the binary logits of each decision (loop), the antithetic
    decisions, and per decision the DisARM factor where both samples take it and
    ½(f_s - f_other)(b - p) where only sample s does; the chain rule to the softmax
    logits by autograd through the decision logits. Importance weighted: the official
    weight vector times ½(f1 - f2)(log q(z1) - log q(z2)), differentiated by autograd.

    ``given``: the pair (z1, z2) of category indices ``[N, B, D]`` the library drew.
    """
    B, D, C = theta.shape
    enc, order = cfg["encoding"], cfg["order"]
    iw = cfg.get("importance_weighted", False)
    th = theta.detach().expand(n_draws, B, D, C).clone().requires_grad_()
    ww = w.detach().expand(n_draws, 1, D, C).clone().requires_grad_()
    # -1e4 stands for -inf: exp underflows to exactly 0 in float64, gradients stay finite
    safe = torch.where(torch.isfinite(th), th, -1e4)
    nodes = _tree_nodes(C) if enc == "tree" else [(i, i, i + 1) for i in range(C - 1)]
    per_var = []
    for d in range(D):
        t = safe[..., d, :]
        if order == "none":
            perm = torch.arange(C).expand(n_draws, B, C)
        else:
            perm = torch.sort(t.detach(), dim=-1, descending=order == "descending", stable=True)[1]
        s = t.gather(-1, perm)
        phis = []
        for lo, mid, hi in nodes:
            if enc == "tree":
                phis.append(s[..., mid:hi].logsumexp(-1) - s[..., lo:mid].logsumexp(-1))
            else:  # stick-breaking: decision i stops at category i (mid == lo == i)
                phis.append(s[..., lo] - s[..., lo + 1 :].logsumexp(-1))
        per_var.append((perm, s, phis))

    def on_path(pos, node):
        lo, mid, hi = node
        if enc == "tree":
            return (pos >= lo) & (pos < hi), (pos >= mid).double()
        return pos >= lo, (pos == lo).double()

    if given is None:
        z1, z2 = [], []
        for perm, _s, phis in per_var:
            pos = [torch.full((n_draws, B), -1), torch.full((n_draws, B), -1)]
            lo_hi = [(torch.zeros(n_draws, B), torch.full((n_draws, B), float(C)))] * 2
            for node, phi in zip(nodes, phis, strict=True):
                p = torch.sigmoid(phi.detach())
                u = torch.rand(p.shape, generator=gen, dtype=D64)
                for k, bit in enumerate((u < p, 1 - u < p)):
                    if enc == "tree":
                        lo, mid, hi = node
                        here = (lo_hi[k][0] == lo) & (lo_hi[k][1] == hi)
                        new_lo = torch.where(here & bit, float(mid), lo_hi[k][0])
                        new_hi = torch.where(here & ~bit, float(mid), lo_hi[k][1])
                        lo_hi[k] = (new_lo, new_hi)
                    else:
                        pos[k] = torch.where((pos[k] < 0) & bit, node[0], pos[k])
            if enc == "tree":
                # nodes come in depth-first order, so each walk is complete
                final = [lo_hi[k][0].long() for k in range(2)]
            else:
                final = [torch.where(pos[k] < 0, C - 1, pos[k]) for k in range(2)]
            z1.append(perm.gather(-1, final[0][..., None]).squeeze(-1))
            z2.append(perm.gather(-1, final[1][..., None]).squeeze(-1))
        z1, z2 = torch.stack(z1, -1), torch.stack(z2, -1)
    else:
        z1, z2 = given
    f = cost("categorical", th, ww)
    f1 = f(torch.nn.functional.one_hot(z1, C).double())
    f2 = f(torch.nn.functional.one_hot(z2, C).double())
    df = (f1 - f2).detach()
    surrogate = 0.5 * (f1 + f2)
    for d, (perm, s, phis) in enumerate(per_var):
        inv = torch.argsort(perm, -1)
        p1 = inv.gather(-1, z1[..., d, None]).squeeze(-1)  # positions in encoding order
        p2 = inv.gather(-1, z2[..., d, None]).squeeze(-1)
        if iw:
            sig = [torch.sigmoid(phi.detach()) for phi in phis]
            both_zero = [
                torch.where(phi.detach() >= -1e-5, 0.0, (1 - q) ** 2 / (1 - 2 * q))
                for phi, q in zip(phis, sig, strict=True)
            ]
            weights = [torch.sigmoid(phis[0].detach().abs())]
            prod = torch.ones_like(sig[0])
            for i in range(1, C - 1):
                prod = prod * both_zero[i - 1]
                weights.append(prod * torch.sigmoid(phis[i].detach().abs()))
            weights.append(prod * both_zero[C - 2])
            m = torch.minimum(p1, p2)
            wgt = torch.stack(weights, -1).gather(-1, m[..., None]).squeeze(-1)
            signal = torch.where(z1[..., d] == z2[..., d], 0.0, 0.5 * wgt * df)
            logq = torch.log_softmax(s, -1)
            diff = logq.gather(-1, p1[..., None]) - logq.gather(-1, p2[..., None])
            surrogate = surrogate + signal * diff.squeeze(-1)
            continue
        for node, phi in zip(nodes, phis, strict=True):
            p = torch.sigmoid(phi.detach())
            in1, b1 = on_path(p1, node)
            in2, b2 = on_path(p2, node)
            both = in1 & in2
            disarm = (
                0.5 * df * (b1 != b2).double() * (-1.0) ** b2 * torch.sigmoid(phi.detach().abs())
            )
            signal = torch.where(both, disarm, 0.0)
            signal = signal + torch.where(in1 & ~in2, 0.5 * df * (b1 - p), 0.0)
            signal = signal + torch.where(in2 & ~in1, -0.5 * df * (b2 - p), 0.0)
            surrogate = surrogate + signal * phi
    g_theta, g_w = torch.autograd.grad(surrogate.sum(), (th, ww))
    g_theta = torch.where(torch.isfinite(th), g_theta, 0.0)
    return torch.cat([g_theta.reshape(n_draws, -1), g_w.reshape(n_draws, -1)], 1)


@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[3], CONFIGS[4]], ids=_label)
def test_matches_the_reference_implementation(cfg):
    theta, w = problem("categorical", B=3, D=3, C=4, seed=71)
    N = 20000
    ref = _reference(theta, w, N, cfg, gen=torch.Generator().manual_seed(72))
    lib, _ = draws(CategoricalDisARM(**cfg), "categorical", theta, w, N, seed=73, multi=False)
    z, r_theta, r_w = same_mean_and_variance(lib, ref, Z_TOL, theta.numel())
    print(
        f"\nCategoricalDisARM({_label(cfg)}) vs reference: max |z| {z:.2f}, "
        f"variance ratios {r_theta:.4f}, {r_w:.4f}"
    )
    assert_mean_matches(ref, exact("categorical", theta, w)[0])


@pytest.mark.parametrize("cfg", CONFIGS, ids=_label)
@pytest.mark.parametrize("C", [4, 7])
def test_reference_reproduces_the_library_draw_by_draw(cfg, C):
    """On the pair of samples the library drew (what f saw), the official algorithm's
    gradient is the library's closed form, draw for draw."""
    theta, w = problem("categorical", B=3, D=3, C=C, seed=81)
    N = 400
    seen: list[torch.Tensor] = []
    est = CategoricalDisARM(**cfg)
    g_lib, _ = draws(est, "categorical", theta, w, N, seed=82, multi=False, seen=seen)
    assert len(seen) == 1 and seen[0].shape == (2, N, 3, 3, C)
    z1, z2 = seen[0].argmax(-1)
    assert (z1 != z2).any()
    g_ref = _reference(theta, w, N, cfg, given=(z1, z2))
    torch.testing.assert_close(g_lib, g_ref, rtol=1e-8, atol=1e-9)


def test_importance_weighting_needs_ascending_order():
    """The weighted estimator is unbiased only if every pair of categories can occur
    together: with descending order (a stick-breaking probability above 1/2 early) it
    is measurably biased, which is why the constructor refuses that configuration."""
    theta, w = problem("categorical", B=3, D=3, C=4, seed=91)
    est = CategoricalDisARM(importance_weighted=True)
    est.order = "descending"  # bypass the check to show what it prevents
    g, _ = draws(est, "categorical", theta, w, 20000, seed=92, multi=False)
    g_star = exact("categorical", theta, w)[0]
    k = theta.numel()
    se = g[:, :k].std(0) / 20000**0.5
    z = ((g[:, :k].mean(0) - g_star[:k]).abs() / se)[se > 0]
    print(f"\nimportance weighted, descending order: max |z| {float(z.max()):.1f}")
    assert float(z.max()) > 10


def test_hyper_parameters_and_supports():
    for kwargs, name in [
        (dict(encoding="binary"), "encoding"),
        (dict(order="abs"), "order"),
        (dict(importance_weighted=1), "importance_weighted"),
        (dict(importance_weighted=True, order="none"), "order"),
        (dict(importance_weighted=True, encoding="tree"), "encoding"),
    ]:
        with pytest.raises(ValueError, match=name):
            CategoricalDisARM(**kwargs)
    with pytest.raises(TypeError, match="CategoricalDisARM does not support Bernoulli"):
        CategoricalDisARM()(lambda b: b, torch.distributions.Bernoulli(logits=torch.zeros(3)))
    for enc, order in itertools.product(("stick_breaking", "tree"), ("ascending", "none")):
        # one category: a constant variable, zero gradient
        leaf = torch.zeros(2, 1, requires_grad=True)
        q = torch.distributions.Categorical(logits=leaf)
        out = CategoricalDisARM(enc, False, order)(lambda x: x.sum(-1) * 3, q)
        out.loss.sum().backward()
        assert out.n_evals == 2 and (leaf.grad == 0).all()


def test_two_categories_is_disarm_draw_for_draw():
    """With C = 2 (no reordering) the one decision is a Bernoulli variable with logit
    θ_0 - θ_1 that selects category 0, and categorical DisARM is binary DisARM: the same
    uniforms, the same draws, the gradient split as (+g, -g) over the two logits."""
    gen = torch.Generator().manual_seed(141)
    theta = 1.5 * torch.randn(500, 4, 2, dtype=D64, generator=gen)
    w = torch.randn(4, dtype=D64, generator=gen)

    def f_bits(b):
        a = (b * w).sum(-1)
        return torch.sin(3 * a) + a**2

    cat = theta.clone().requires_grad_()
    out_c = CategoricalDisARM(order="none")(
        lambda x: f_bits(x[..., 0]),
        torch.distributions.Independent(torch.distributions.Categorical(logits=cat), 1),
        generator=torch.Generator().manual_seed(142),
    )
    (g_cat,) = torch.autograd.grad(out_c.loss.sum(), cat)
    logit = (theta[..., 0] - theta[..., 1]).clone().requires_grad_()
    out_b = DisARM()(
        f_bits,
        torch.distributions.Independent(torch.distributions.Bernoulli(logits=logit), 1),
        generator=torch.Generator().manual_seed(142),
    )
    (g_bin,) = torch.autograd.grad(out_b.loss.sum(), logit)
    torch.testing.assert_close(out_c.value, out_b.value)
    torch.testing.assert_close(g_cat[..., 0], g_bin, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_cat[..., 1], -g_bin, rtol=1e-10, atol=1e-12)
    assert (g_bin != 0).any()
