"""k-subsets and the new straight-through variants, tested against their math.

* KSubset: log-normaliser and marginals against enumeration of p(S) ∝ Π_{i∈S} e^{θ_i}
  and against a sequential (i, j) dynamic program; samples exactly k-hot, their
  frequencies against the marginals (z-test) and log_prob against enumeration.
* gumbel_top_k: inclusion frequencies against the exact without-replacement
  inclusion probabilities by enumeration of ordered draws.
* RelaxedSubset: sums to k, non-negative, tends to the top-k of the same keys as
  τ → 0, exact k-hot ``sample``; finite values and gradients for τ in
  1e-3..100 in every dtype; log_prob raises NotImplementedError.
* SIMPLE: exact for linear f (its gradient is the exact gradient of E[w·z] for
  every draw); against a loop reference (sequential DP, autograd Jacobian) in
  mean and variance over 20,000 draws.
* IMLE: forward is the top-k MAP of θ + ε; against a reference written after
  torch-imle (torch's Gamma sampler, per-row top-k) in mean and variance;
  the Gamma sampler behind sum_of_gamma against Gamma's moments.
* DecoupledSTGumbelSoftmax and GappedStraightThrough: references written
  from the decoupled formulas and after chijames/GST, in mean and variance; forward law of the
  decoupled sample at τ_f ≠ 1; temperatures and schedules.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.distributions import Categorical, Independent, OneHotCategorical

import discograd
from discograd.distributions import KSubset, RelaxedSubset, subset_log_normalizer, subset_marginals
from discograd.estimators import (
    IMLE,
    SIMPLE,
    DecoupledSTGumbelSoftmax,
    GappedStraightThrough,
    STGumbelSoftmax,
    StraightThrough,
    registry,
)
from discograd.estimators.subsets import _standard_gamma, sum_of_gamma
from discograd.schedules import ExponentialDecay

from conftest import Z_TOL, assert_mean_matches

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


# ------------------------------------------------------------------ helpers
def enumerate_subsets(theta: torch.Tensor, k: int):
    """All k-subsets of the unmasked items, their log-probabilities and the marginals."""
    C = theta.shape[-1]
    subsets = list(itertools.combinations(range(C), k))
    w = torch.stack([theta[..., list(s)].sum(-1) for s in subsets], -1)
    log_z = torch.logsumexp(w, -1)
    p = (w - log_z.unsqueeze(-1)).exp()
    mu = torch.zeros_like(theta)
    for i, s in enumerate(subsets):
        mu[..., list(s)] += p[..., i : i + 1]
    return subsets, log_z, p, mu


def _logaddexp(a: float, b: float) -> float:
    hi = max(a, b)
    return hi if hi == -math.inf else hi + math.log(math.exp(a - hi) + math.exp(b - hi))


def sequential_log_normalizer(theta: torch.Tensor, k: int) -> torch.Tensor:
    """The (i, j) dynamic program item by item: E[i, j] = E[i-1, j] + e^{θ_i} E[i-1, j-1]."""
    rows = []
    for row in theta.tolist():
        E = [0.0] + [-math.inf] * k
        for t in row:
            E = [E[0]] + [_logaddexp(E[j], E[j - 1] + t) for j in range(1, k + 1)]
        rows.append(E[k])
    return torch.tensor(rows, dtype=theta.dtype)


def without_replacement_inclusion(theta: torch.Tensor, k: int) -> torch.Tensor:
    """P(i among k sequential draws without replacement from softmax θ), by enumeration."""
    p = torch.softmax(theta.double(), -1).tolist()
    C = len(p)
    incl = [0.0] * C
    for order in itertools.permutations(range(C), k):
        prob, left = 1.0, 1.0
        for i in order:
            prob *= p[i] / left
            left -= p[i]
        for i in order:
            incl[i] += prob
    return torch.tensor(incl, dtype=torch.float64)


def trace_variance(g: torch.Tensor) -> tuple[float, float]:
    """Trace of the covariance of draws ``[n, d]`` and its standard error."""
    d = ((g - g.mean(0)) ** 2).sum(-1)
    return float(d.mean()), float(d.std() / math.sqrt(len(d)))


def assert_same_mean_and_variance(a: torch.Tensor, b: torch.Tensor, label: str) -> None:
    a, b = a.double().flatten(1), b.double().flatten(1)
    diff = a.mean(0) - b.mean(0)
    se = (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()
    z = torch.where(se > 1e-12, diff.abs() / se.clamp_min(1e-300), diff.abs() * 1e12)
    va, sa = trace_variance(a)
    vb, sb = trace_variance(b)
    zv = abs(va - vb) / math.sqrt(sa**2 + sb**2)
    print(
        f"{label}: max |z| of means {float(z.max()):.2f}, variance ratio {va / vb:.4f} (z {zv:.2f})"
    )
    assert float(z.max()) < Z_TOL, (label, z)
    assert zv < Z_TOL, (label, va, vb)


def theta_rows(B: int, C: int, seed: int, masked: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(B, C, generator=g, dtype=torch.float64)
    if masked:
        theta[0, 1] = -math.inf
    return theta


# ------------------------------------------------------------------ KSubset
@pytest.mark.parametrize(("C", "k"), [(1, 1), (4, 1), (5, 2), (7, 3), (6, 5), (9, 4)])
def test_ksubset_normaliser_and_marginals_match_enumeration(C, k):
    theta = theta_rows(3, C, C * 10 + k, masked=C > k + 1)
    _, log_z, _, mu = enumerate_subsets(theta, k)
    torch.testing.assert_close(subset_log_normalizer(theta, k), log_z, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sequential_log_normalizer(theta, k), log_z, rtol=1e-12, atol=1e-12)
    m = subset_marginals(theta, k)
    torch.testing.assert_close(m, mu, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(m.sum(-1), torch.full((3,), float(k), dtype=torch.float64))
    assert (m[~torch.isfinite(theta)] == 0).all()


def test_ksubset_samples_log_prob_and_large_logits():
    theta = theta_rows(2, 6, 3)
    k = 3
    subsets, _, p, mu = enumerate_subsets(theta, k)
    d = KSubset(theta, k)
    z = d.sample((20000,), generator=torch.Generator().manual_seed(0))
    assert ((z == 0) | (z == 1)).all() and (z.sum(-1) == k).all()
    assert (z[:, 0, 1] == 0).all()  # the masked item
    assert_mean_matches(z, mu)
    # log_prob of each subset against the enumeration
    for i, s in enumerate(subsets):
        v = torch.zeros(6, dtype=torch.float64)
        v[list(s)] = 1
        lp = d.log_prob(v)
        if 1 in s:
            assert lp[0] == -math.inf
        torch.testing.assert_close(lp[1], p[1, i].log())
    # logits far apart and large: marginals accurate in float32, finite, k-hot draws
    big = torch.tensor([[30.0, -30.0, 0.0, 80.0, -80.0, 5.0]])
    m = subset_marginals(big, 3)
    torch.testing.assert_close(m.double(), enumerate_subsets(big.double(), 3)[3], atol=1e-5, rtol=0)
    huge = torch.tensor([[300.0, -300.0, 0.0, 1e4, -1e4, 5.0]])
    mh = subset_marginals(huge, 3)  # float32 rounding at |θ| = 1e4: ~1e-3 relative
    assert torch.isfinite(mh).all() and abs(float(mh.sum()) - 3) < 1e-2
    zz = KSubset(huge, 3).sample((50,), generator=torch.Generator().manual_seed(1))
    assert (zz.sum(-1) == 3).all() and (zz[..., 3] == 1).all() and (zz[..., 0] == 1).all()


def test_ksubset_errors():
    with pytest.raises(ValueError, match="k must be in"):
        KSubset(torch.zeros(4), 5)
    with pytest.raises(ValueError, match="unmasked"):
        KSubset(torch.tensor([0.0, -math.inf, -math.inf]), 2)
    with pytest.raises(ValueError, match="NaN"):
        KSubset(torch.tensor([0.0, float("nan"), 1.0]), 1)
    d = KSubset(torch.zeros(4), 2, validate_args=True)
    torch.testing.assert_close(
        d.log_prob(torch.tensor([1.0, 1.0, 0.0, 0.0])), -torch.tensor(6.0).log()
    )
    with pytest.raises(ValueError, match="support"):
        d.log_prob(torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert d.expand((3,)).sample().shape == (3, 4)
    torch.testing.assert_close(d.mean, torch.full((4,), 0.5))


# -------------------------------------------------------------- gumbel_top_k
@pytest.mark.parametrize(("C", "k"), [(5, 2), (6, 3)])
def test_gumbel_top_k_inclusion_frequencies_match_enumeration(C, k):
    theta = torch.randn(C, generator=torch.Generator().manual_seed(C), dtype=torch.float64)
    incl = without_replacement_inclusion(theta, k)
    n = 40000
    idx = discograd.gumbel_top_k(theta.expand(n, C), k, generator=torch.Generator().manual_seed(2))
    hits = torch.zeros(n, C, dtype=torch.float64).scatter_(-1, idx.indices, 1.0)
    assert_mean_matches(hits, incl)
    # ... and they differ from the exponential-family marginals: two different laws
    assert (incl - enumerate_subsets(theta, k)[3]).abs().max() > 0.01


# ------------------------------------------------------------- RelaxedSubset
def test_relaxed_subset_sums_to_k_and_hardens_at_low_temperature():
    theta = torch.randn(8, 12, generator=torch.Generator().manual_seed(0))
    theta[0, :3] = -math.inf
    k = 4
    for tau in (100.0, 1.0, 0.1):
        y = RelaxedSubset(theta, k, tau).rsample((5,), generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(y.sum(-1), torch.full((5, 8), float(k)))
        assert (y >= 0).all()
        assert (y[:, 0, :3] == 0).all()
    gen = torch.Generator()
    hard = RelaxedSubset(theta, k, 1.0).rsample((5,), gen.manual_seed(3), hard=True)
    errs = []
    for tau in (1.0, 0.3, 0.1, 1e-3):
        y = RelaxedSubset(theta, k, tau).rsample((5,), generator=gen.manual_seed(3))
        errs.append(float((y - hard).abs().max()))
    print("max |y - top-k k-hot| at tau 1, 0.3, 0.1, 1e-3:", errs)
    assert errs[-1] < 1e-3 and errs[0] > errs[-1]
    assert ((hard == 0) | (hard == 1)).all() and (hard.sum(-1) == k).all()
    s = RelaxedSubset(theta, k, 0.5).sample((100,), generator=gen.manual_seed(4))
    assert ((s == 0) | (s == 1)).all() and (s.sum(-1) == k).all() and (s[:, 0, :3] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_relaxed_subset_numerics(dtype):
    theta = (torch.randn(4, 16, generator=torch.Generator().manual_seed(5)) * 5).to(dtype)
    theta[0, :4] = -math.inf
    theta[1, 0] = 60.0
    theta = theta.requires_grad_()
    w = torch.randn(16, generator=torch.Generator().manual_seed(6)).to(dtype)
    for tau in (1e-3, 1e-2, 1.0, 10.0, 100.0):
        for hard in (False, True):
            y = RelaxedSubset(theta, 8, tau).rsample(
                (3,), generator=torch.Generator().manual_seed(7), hard=hard
            )
            assert y.dtype == dtype and torch.isfinite(y).all(), (tau, hard)
            (g,) = torch.autograd.grad((torch.tanh(y * w) * y).sum(), theta)
            assert torch.isfinite(g).all(), (tau, hard)
            assert (g[0, :4] == 0).all()


def test_relaxed_subset_log_prob_and_arguments():
    d = RelaxedSubset(torch.zeros(5), 2, 1.0)
    with pytest.raises(NotImplementedError, match="no closed-form density"):
        d.log_prob(torch.zeros(5))
    with pytest.raises(ValueError, match="temperature"):
        RelaxedSubset(torch.zeros(5), 2, 0.0)
    with pytest.raises(ValueError, match="k must be in"):
        RelaxedSubset(torch.zeros(5), 6, 1.0)
    assert d.expand((3,)).batch_shape == (3,)


# --------------------------------------------------------------------- SIMPLE
def _khot_problem(n: int, theta: torch.Tensor):
    leaf = theta.clone().expand(n, -1).contiguous().requires_grad_()
    return leaf, Categorical(logits=leaf)


def test_simple_is_exact_for_linear_f_and_k1_is_straight_through():
    theta = theta_rows(1, 6, 11)[0]
    w = torch.linspace(-1, 2, 6, dtype=torch.float64)
    k = 3
    leaf, q = _khot_problem(50, theta)
    out = SIMPLE(k)(lambda z: (z * w).sum(-1), q, generator=torch.Generator().manual_seed(0))
    (g,) = torch.autograd.grad(out.loss.sum(), leaf)
    t = theta.clone().requires_grad_()
    (exact,) = torch.autograd.grad((subset_marginals(t, k) * w).sum(), t)
    mu = enumerate_subsets(theta, k)[3]
    torch.testing.assert_close(g, exact.expand_as(g))  # every draw
    assert_mean_matches(out.value.unsqueeze(-1), (mu * w).sum().reshape(1))
    # k = 1: the categorical straight-through gradient A(π) ∇f(z) at SIMPLE's own sample
    leaf1, q1 = _khot_problem(7, theta)
    seen = []

    def f(z):
        seen.append(z.detach())
        return torch.tanh(z @ w)

    a = SIMPLE(1)(f, q1, generator=torch.Generator().manual_seed(4))
    (ga,) = torch.autograd.grad(a.loss.sum(), leaf1)
    z = seen[0]
    assert (z.sum(-1) == 1).all()
    pi = torch.softmax(theta, -1)
    grad_f = (1 - torch.tanh(z @ w) ** 2).unsqueeze(-1) * w
    st = pi * grad_f - pi * (grad_f @ pi).unsqueeze(-1)
    torch.testing.assert_close(ga, st)
    assert registry.info("straight_through").cls is StraightThrough  # the estimator it equals


NEG = -1e30  # the reference's log 0: -inf would make its autograd Jacobian NaN


def _reference_simple(theta: torch.Tensor, k: int, n: int, f, seed: int) -> torch.Tensor:
    """SIMPLE written out: sequential DP tables, backward sampling item by item,
    marginals by the forward-backward recursion, their Jacobian by autograd."""
    C = theta.shape[0]
    g = torch.Generator().manual_seed(seed)

    def tables(t):
        # A[i][j]: log e_j(θ_1..θ_i); B[i][j]: log e_j(θ_{i+1}..θ_C)
        A = [[0.0] + [NEG] * k]
        for i in range(C):
            prev = A[-1]
            A.append(
                [prev[0]]
                + [
                    torch.logaddexp(torch.as_tensor(prev[j]), prev[j - 1] + t[i])
                    for j in range(1, k + 1)
                ]
            )
        B = [[0.0] + [NEG] * k]
        for i in reversed(range(C)):
            nxt = B[0]
            B.insert(
                0,
                [nxt[0]]
                + [
                    torch.logaddexp(torch.as_tensor(nxt[j]), nxt[j - 1] + t[i])
                    for j in range(1, k + 1)
                ],
            )
        return A, B

    def marginals(t):
        A, B = tables(t)
        log_z = torch.as_tensor(A[C][k])
        mu = []
        for i in range(C):
            terms = [A[i][j] + B[i + 1][k - 1 - j] for j in range(k)]
            mu.append(
                torch.exp(
                    t[i]
                    + torch.logsumexp(
                        torch.stack([torch.as_tensor(x, dtype=torch.float64) for x in terms]), 0
                    )
                    - log_z
                )
            )
        return torch.stack(mu)

    J = torch.autograd.functional.jacobian(marginals, theta)  # J[i, l] = dμ_i/dθ_l
    A, _ = tables(theta)
    # backward sampling: from the last item down, include item i with probability
    # e^{θ_i} e_{r-1}(first i-1) / e_r(first i), r the number still to choose
    r = torch.full((n,), k)
    z = torch.zeros(n, C, dtype=torch.float64)
    for i in reversed(range(C)):
        a_prev = torch.tensor([float(A[i][j]) for j in range(k + 1)], dtype=torch.float64)
        a_here = torch.tensor([float(A[i + 1][j]) for j in range(k + 1)], dtype=torch.float64)
        rm1 = (r - 1).clamp_min(0)
        p_in = torch.where(r > 0, (theta[i] + a_prev[rm1] - a_here[r]).exp(), 0.0)
        take = torch.rand(n, generator=g, dtype=torch.float64) < p_in
        z[:, i] = take.double()
        r = r - take.long()
    assert (r == 0).all()
    zz = z.clone().requires_grad_()
    (grad_f,) = torch.autograd.grad(f(zz).sum(), zz)
    return grad_f @ J


def test_simple_against_a_loop_reference_in_mean_and_variance():
    theta = theta_rows(1, 7, 21, masked=False)[0]
    k, n = 3, 20000
    w = torch.linspace(-1.5, 1.0, 7, dtype=torch.float64)

    def f(z):
        return torch.sin(z @ w) + (z[..., :3] @ w[:3]) ** 2

    leaf, q = _khot_problem(n, theta)
    out = SIMPLE(k)(f, q, generator=torch.Generator().manual_seed(5))
    (g,) = torch.autograd.grad(out.loss.sum(), leaf)
    ref = _reference_simple(theta, k, n, f, seed=6)
    assert_same_mean_and_variance(g, ref, "SIMPLE vs loop reference")


# ----------------------------------------------------------------------- IMLE
def test_standard_gamma_moments():
    for alpha in (1.0 / 3.0, 1.0, 2.5):
        x = _standard_gamma(
            torch.Size((40000,)),
            alpha,
            torch.float64,
            torch.device("cpu"),
            torch.Generator().manual_seed(1),
        )
        assert_mean_matches(torch.stack([x, x * x], -1), torch.tensor([alpha, alpha * (alpha + 1)]))
    # The sum of k Sum-of-Gamma noises: mean H_s - log s (a Gumbel's as s grows).
    k, s = 4, 10
    e = sum_of_gamma(
        (40000, k), k, s, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    harmonic = sum(1.0 / i for i in range(1, s + 1))
    assert_mean_matches(e.sum(-1, keepdim=True), torch.tensor([harmonic - math.log(s)]))


def test_imle_forward_is_a_top_k_map_and_the_gradient_formula():
    theta = theta_rows(1, 8, 31)[0]
    k = 3
    leaf, q = _khot_problem(200, theta)
    seen = []

    def f(z):
        seen.append(z.detach())
        return (z * torch.arange(8.0, dtype=z.dtype)).sum(-1) ** 2

    out = IMLE(k, noise="none", lam=2.0)(f, q)
    z = seen[0]
    top = torch.zeros(8, dtype=torch.float64).scatter_(0, theta.topk(k).indices, 1.0)
    assert (z == top).all()
    # noise: still k-hot MAPs, never the masked item
    IMLE(k)(f, q, generator=torch.Generator().manual_seed(0))
    zs = seen[1]
    assert ((zs == 0) | (zs == 1)).all() and (zs.sum(-1) == k).all() and (zs[:, 1] == 0).all()
    # gradient = (MAP(θ) - MAP(θ - λ ∇f))/λ without noise
    (g,) = torch.autograd.grad(out.loss.sum(), leaf)
    grad_f = 2 * (top * torch.arange(8.0)).sum() * torch.arange(8.0, dtype=torch.float64)
    target = theta - 2.0 * grad_f
    z2 = torch.zeros(8, dtype=torch.float64).scatter_(0, target.topk(k).indices, 1.0)
    torch.testing.assert_close(g[0], (top - z2) / 2.0)
    assert g[0, 1] == 0


def _reference_imle(theta: torch.Tensor, k: int, n: int, f, lam: float, s: int) -> torch.Tensor:
    """After torch-imle: Sum-of-Gamma noise with torch's Gamma (one term at a time),
    MAP by top-k, target θ - λ dy, gradient (z - z')/λ."""
    torch.manual_seed(123)
    C = theta.shape[0]
    noise = torch.zeros(n, C, dtype=torch.float64)
    for i in range(1, s + 1):
        gamma = torch.distributions.Gamma(torch.tensor(1.0 / k), torch.tensor(i / k))
        noise = noise + gamma.sample((n, C)).double()
    noise = (noise - math.log(s)) / k

    def map_state(scores):
        return torch.zeros_like(scores).scatter_(-1, scores.topk(k, -1).indices, 1.0)

    z = map_state(theta + noise).requires_grad_()
    (dy,) = torch.autograd.grad(f(z).sum(), z)
    z_target = map_state(theta - lam * dy + noise)
    return (z.detach() - z_target) / lam


def test_imle_against_a_reference_in_mean_and_variance():
    theta = theta_rows(1, 6, 41)[0]
    k, n, lam = 2, 20000, 1.5
    w = torch.linspace(-1.0, 1.5, 6, dtype=torch.float64)

    def f(z):
        return torch.sin(2 * (z @ w)) + z[..., 0] * z[..., 2]

    leaf, q = _khot_problem(n, theta)
    out = IMLE(k, lam=lam)(f, q, generator=torch.Generator().manual_seed(9))
    (g,) = torch.autograd.grad(out.loss.sum(), leaf)
    ref = _reference_imle(theta, k, n, f, lam, 10)
    assert_same_mean_and_variance(g, ref, "IMLE vs torch-imle-style reference")


# ---------------------------------------------------- decoupled ST-GS and GST
def test_decoupled_against_a_reference_and_its_forward_law():
    theta = theta_rows(1, 5, 51)[0]
    n, tf, tb = 20000, 0.5, 2.0
    w = torch.linspace(-1.0, 2.0, 5, dtype=torch.float64)

    def f(z):
        return torch.tanh(z @ w) * 2 + (z @ w) ** 2

    leaf, q = _khot_problem(n, theta)
    seen = []

    def f_seen(z):
        seen.append(z.detach())
        return f(z)

    out = DecoupledSTGumbelSoftmax(tf, tb)(f_seen, q, generator=torch.Generator().manual_seed(3))
    (g,) = torch.autograd.grad(out.loss.sum(), leaf)
    assert_mean_matches(seen[0], torch.softmax(theta / tf, -1))
    # the two formulas written out on the n copies of the logits (not relaxit's
    # rsample, which divides the perturbed logits by each temperature)
    g2 = torch.Generator().manual_seed(4)
    t = theta.expand(n, 5).clone().requires_grad_()
    u = torch.rand(n, 5, generator=g2, dtype=torch.float64)
    gumbels = -torch.log(-torch.log(u))
    soft = torch.softmax(t / tb + gumbels, -1)
    index = (t.detach() / tf + gumbels).max(-1, keepdim=True)[1]
    hard = torch.zeros_like(soft).scatter_(-1, index, 1.0)
    (ref,) = torch.autograd.grad(f(hard - soft.detach() + soft).sum(), t)
    assert_same_mean_and_variance(g, ref, "DecoupledSTGumbelSoftmax vs reference")


def test_decoupled_at_one_temperature_is_st_gumbel_softmax_of_the_scaled_logits():
    # The paper writes both passes as softmax(l / tau + g), so tau_f = tau_b = tau
    # is ST-GS at temperature 1 on theta / tau (with the chain rule's 1 / tau),
    # not STGumbelSoftmax(tau), whose forward pass ignores tau.
    theta = theta_rows(1, 5, 53)[0]
    n, tau = 20000, 0.4
    w = torch.linspace(-1.0, 2.0, 5, dtype=torch.float64)

    def f(z):
        return torch.tanh(z @ w) * 2 + (z @ w) ** 2

    leaf, q = _khot_problem(n, theta)
    out = DecoupledSTGumbelSoftmax(tau, tau)(f, q, generator=torch.Generator().manual_seed(7))
    (g,) = torch.autograd.grad(out.loss.sum(), leaf)
    leaf2, q2 = _khot_problem(n, theta / tau)
    out2 = STGumbelSoftmax(1.0)(f, q2, generator=torch.Generator().manual_seed(8))
    (g2,) = torch.autograd.grad(out2.loss.sum(), leaf2)
    assert_same_mean_and_variance(g, g2 / tau, "DecoupledST(tau, tau) vs ST-GS(1) of theta/tau")


def test_gapped_against_the_reference_algorithm():
    theta = theta_rows(1, 5, 61)[0]
    theta[1] = -math.inf
    n, tau = 20000, 0.7
    w = torch.linspace(-1.0, 2.0, 5, dtype=torch.float64)

    def f(z):
        return torch.tanh(z @ w) * 2 + (z @ w) ** 2

    for gap in (1.0, "adaptive"):
        leaf, q = _khot_problem(n, theta)
        out = GappedStraightThrough(tau, gap)(f, q, generator=torch.Generator().manual_seed(5))
        (g,) = torch.autograd.grad(out.loss.sum(), leaf)
        assert (g[:, 1] == 0).all()
        # gst_mover's steps on the n copies (the masked item kept out of the arithmetic)
        g2 = torch.Generator().manual_seed(6)
        finite = torch.isfinite(theta)
        t = theta.expand(n, 5).clone().requires_grad_()
        probs = torch.softmax(theta, -1).expand(n, 5)
        d = torch.multinomial(probs, 1, generator=g2)
        action = torch.zeros(n, 5, dtype=torch.float64).scatter_(-1, d, 1.0)
        max_logits = theta.max()
        if gap == "adaptive":
            pi = probs.gather(-1, d)
            kappa = -torch.log1p(-pi) / pi
        else:
            kappa = gap
        move = torch.where(finite, (max_logits - theta) * action, 0.0)
        move2 = torch.where(finite, (theta - max_logits + kappa).clamp(min=0.0), 0.0)
        move2 = move2 * (1 - action)
        prob = torch.softmax((t + (move - move2)) / tau, -1)
        (ref,) = torch.autograd.grad(f(action - prob.detach() + prob).sum(), t)
        assert_same_mean_and_variance(g, ref, f"GappedStraightThrough gap={gap}")


def test_temperatures_schedules_and_arguments():
    est = registry.make("decoupled_st_gumbel_softmax:tau=0.5,tau_forward=2.0")
    assert est.tau == 0.5 and est.tau_forward == 2.0
    with pytest.raises(ValueError, match="tau_backward"):
        DecoupledSTGumbelSoftmax(tau_backward=0.3, tau=0.5)
    sched = DecoupledSTGumbelSoftmax(
        ExponentialDecay(tau0=1.0, rate=0.5, floor=0.1, every=1),
        ExponentialDecay(tau0=2.0, rate=1.0, floor=0.01, every=1),
    )
    q = OneHotCategorical(logits=torch.zeros(3, 4, requires_grad=True))
    for _ in range(2):
        sched(lambda z: z[..., 0], q)
    assert sched.step_count == 2
    assert sched.tau_forward == pytest.approx(math.exp(-1.0))
    assert sched.tau == pytest.approx(2 * math.exp(-2.0))
    assert registry.tempered(GappedStraightThrough()) is not None
    with pytest.raises(ValueError, match="gap"):
        GappedStraightThrough(gap=0.0)
    with pytest.raises(ValueError, match="noise"):
        IMLE(noise="gauss")
    with pytest.raises(ValueError, match="lam"):
        IMLE(lam=-1.0)
    with pytest.raises(ValueError, match="k must be"):
        SIMPLE(k=0)
    with pytest.raises(ValueError, match="exceeds"):
        SIMPLE(k=5)(lambda z: z.sum(-1), Categorical(logits=torch.zeros(4)))
    with pytest.raises(ValueError, match="KSubset"):
        SIMPLE(k=2)(lambda z: z.sum(-1), KSubset(torch.zeros(4), 3))
    with pytest.raises(TypeError, match="GappedStraightThrough"):
        GappedStraightThrough()(lambda z: z, torch.distributions.Bernoulli(logits=torch.zeros(3)))


# ------------------------------------------------------------------ numerics
@pytest.mark.parametrize("dtype", DTYPES)
def test_khot_and_st_numerics_over_temperatures(dtype):
    """No NaN/inf in values or gradients, temperatures 1e-3..100, masked items, k = 1 and 3."""
    theta = (torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(8)) * 4).to(dtype)
    theta[0, 0, :2] = -math.inf
    theta[1, 2, 3] = 40.0
    theta = theta.requires_grad_()
    w = torch.linspace(-1, 1, 6).to(dtype)
    cases = []
    for tau in (1e-3, 0.1, 1.0, 100.0):
        cases += [
            DecoupledSTGumbelSoftmax(tau, tau),
            DecoupledSTGumbelSoftmax(1.0, tau),
            GappedStraightThrough(tau),
            GappedStraightThrough(tau, "adaptive"),
            IMLE(3, noise_temperature=tau),
            IMLE(1, noise="gumbel", lam=tau),
        ]
    cases += [SIMPLE(1), SIMPLE(3), SIMPLE(4)]
    for est in cases:
        for q in (Independent(Categorical(logits=theta), 1), KSubset(theta, getattr(est, "k", 1))):
            if isinstance(q, KSubset) and not isinstance(est, (SIMPLE, IMLE)):
                continue
            per_var = isinstance(q, KSubset)

            def f(z, per_var=per_var):
                c = torch.tanh(z @ w) + (z * z).sum(-1)
                return c if per_var else c.sum(-1)

            out = est(f, q, generator=torch.Generator().manual_seed(0))
            assert out.loss.dtype == dtype and torch.isfinite(out.value).all(), est
            (g,) = torch.autograd.grad(out.loss.sum(), theta)
            assert torch.isfinite(g).all(), est
            assert (g[0, 0, :2] == 0).all(), est


@pytest.mark.parametrize("dtype", DTYPES)
def test_decoupled_bernoulli_numerics_and_forward_law(dtype):
    """Bernoulli: finite for temperatures 1e-3..100 and ±inf logits; b ~ Bernoulli(σ(α/τ_f))."""
    alpha = (torch.randn(4, 5, generator=torch.Generator().manual_seed(9)) * 4).to(dtype)
    alpha[0, 0], alpha[1, 1] = math.inf, -math.inf
    alpha = alpha.requires_grad_()
    w = torch.linspace(-1, 1, 5).to(dtype)
    for tf in (1e-3, 1.0, 100.0):
        for tb in (1e-3, 1.0, 100.0):
            seen = []

            def f(z, seen=seen):
                seen.append(z.detach())
                return torch.tanh(z @ w) + (z * z).sum(-1)

            q = Independent(torch.distributions.Bernoulli(logits=alpha), 1)
            out = DecoupledSTGumbelSoftmax(tf, tb)(f, q, generator=torch.Generator().manual_seed(1))
            (g,) = torch.autograd.grad(out.loss.sum(), alpha)
            assert torch.isfinite(out.value).all() and torch.isfinite(g).all(), (tf, tb)
            assert g[0, 0] == 0 and g[1, 1] == 0
            assert seen[0][0, 0] == 1 and seen[0][1, 1] == 0
    a = torch.tensor([0.8, -0.5, 2.0], dtype=torch.float64).expand(20000, 3)
    seen = []
    DecoupledSTGumbelSoftmax(0.5, 1.0)(
        lambda z: seen.append(z.detach()) or z.sum(-1),
        Independent(torch.distributions.Bernoulli(logits=a), 1),
        generator=torch.Generator().manual_seed(2),
    )
    assert_mean_matches(seen[0], torch.sigmoid(a[0] / 0.5))


def test_simple_and_marginals_run_under_inference_mode():
    # subset_marginals differentiates the log-normaliser; autograd refuses the
    # inference tensors of torch.inference_mode (SIMPLE used to raise there).
    theta = theta_rows(3, 6, 71)
    theta[0, 2] = -math.inf
    with torch.no_grad():
        ref = subset_marginals(theta, 2)
    with torch.inference_mode():
        mu = subset_marginals(theta.clone(), 2)
        q = Categorical(logits=theta.clone())
        w = torch.linspace(-1.0, 2.0, 6, dtype=theta.dtype)
        out = SIMPLE(2)(lambda z: (z @ w) ** 2, q, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(mu, ref)
    assert torch.isfinite(out.value).all() and out.value.shape == (3,)
