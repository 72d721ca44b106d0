"""ARMS (Dimitriev & Zhou 2021): Dirichlet copula, debiasing factor, unbiasedness, DisARM at n=2."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Independent

from discograd.estimators import ARMS, DisARM
from discograd.estimators.coupled import arms_grad, copula_bits, copula_debias, dirichlet_copula
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


@pytest.mark.parametrize("n", [2, 3, 5])
def test_unbiased_against_exact(n):
    # nonlinear f using log q and a decoder parameter, D = 4, three data points
    # with different logits, one variable certain at 1 and one at 0
    theta, w = problem("bernoulli", B=3, D=4, seed=31)
    assert_unbiased(ARMS(n), "bernoulli", theta, w, 12000, seed=32 + n, n_evals=n)


def test_copula_marginals_and_pair_probability():
    """Each copula uniform is U(0, 1); two of them are both below m with probability J(m)."""
    n, N = 4, 200000
    uc = dirichlet_copula(n, (N,), D64, torch.device("cpu"), torch.Generator().manual_seed(33))
    for t in (0.1, 0.3, 0.5, 0.8):
        frac = (uc < t).double().mean(1)  # per coordinate k
        se = math.sqrt(t * (1 - t) / N)
        assert float((frac - t).abs().max()) < Z_TOL * se
    for m in (0.05, 0.2, 0.4):
        both = ((uc[0] < m) & (uc[1] < m)).double().mean()
        j = max(2 * m ** (1 / (n - 1)) - 1, 0) ** (n - 1)
        assert abs(float(both) - j) < Z_TOL * math.sqrt(max(j, 1e-12) * (1 - j) / N) + 1e-12
    # negative correlation: the pair is below the independent product
    assert float(((uc[0] < 0.4) & (uc[1] < 0.4)).double().mean()) < 0.4**2


def test_n2_is_disarm_draw_for_draw():
    """ARMS(2) with the copula pair (u, 1-u) is DisARM with the uniform u where θ < 0 and
    1 - u where θ >= 0 (ARMS flips the copula for p >= 1/2): the same draw, exactly."""
    gen = torch.Generator().manual_seed(34)
    B, V = 4000, 5
    theta = 2 * torch.randn(B, V, generator=gen, dtype=D64)
    theta[:, 0] = 0.0  # p = 1/2: the branch boundary
    u = torch.rand(B, V, generator=gen, dtype=D64)
    w = torch.randn(V, generator=gen, dtype=D64)

    def f(b):
        a = (b * w).sum(-1)
        return torch.sin(3 * a) + a**2

    b = copula_bits(theta, torch.stack([u, 1 - u]))
    values = torch.stack([f(b[0].double()), f(b[1].double())])
    g_arms = arms_grad(theta, b, values, 2)
    dis = DisARM()
    u_dis = torch.where(theta < 0, u, 1 - u)
    b1, b2 = dis._pair(theta, u_dis)
    torch.testing.assert_close(b[0], b1, rtol=0, atol=0)
    df = (f(b1.double()) - f(b2.double())).unsqueeze(-1)
    g_dis = dis._grad(theta, u_dis, torch.stack([b1, b2]).double(), df)
    torch.testing.assert_close(g_arms, g_dis, rtol=1e-12, atol=1e-12)
    assert (g_dis != 0).any()
    torch.testing.assert_close(copula_debias(theta, 2), torch.sigmoid(theta.abs()))


def test_n2_same_mean_and_variance_as_disarm():
    theta, w = problem("bernoulli", B=3, D=4, seed=35)
    n = 20000
    g_arms, _ = draws(ARMS(2), "bernoulli", theta, w, n, seed=36, multi=False)
    g_dis, _ = draws(DisARM(), "bernoulli", theta, w, n, seed=37, multi=False)
    z, r_theta, r_w = same_mean_and_variance(g_arms, g_dis, Z_TOL, theta.numel())
    print(f"\nARMS(2) vs DisARM: max |z| {z:.2f}, variance ratios {r_theta:.4f}, {r_w:.4f}")


def _reference_arms(theta, w, n_draws, n, gen, given=None):
    """Dimitriev & Zhou's algorithm, written plainly: loops over samples and variables.

    Returns ``[n_draws, P]`` gradient draws of E[f] w.r.t. (θ, w), with the helpers'
    cost f(b) = sin(2a) + a² + log q(b), a = Σ b w.
    """
    B, D = theta.shape
    th = theta.detach().expand(n_draws, B, D).clone().requires_grad_()
    ww = w.detach().expand(n_draws, 1, D).clone().requires_grad_()
    p = torch.sigmoid(th.detach())
    samples = [] if given is None else [given[k] for k in range(n)]
    if given is None:
        # Dirichlet copula per variable: n exponentials, normalised.
        e = -torch.rand((n, n_draws, B, D), generator=gen, dtype=D64).log()
        d = e / e.sum(0)
        for k in range(n):
            uk = (1 - d[k]) ** (n - 1)
            samples.append(torch.where(p < 0.5, uk < p, 1 - uk < p).double())

    f = cost("bernoulli", th, ww)
    fs = [f(b) for b in samples]
    fbar = sum(fs) / n
    g = torch.zeros_like(th)
    for dvar in range(D):
        if not torch.isfinite(theta[:, dvar]).all():
            continue  # a deterministic variable: b_k - p = 0, no gradient
        pd = p[..., dvar]
        low = torch.where(pd < 0.5, pd, 1 - pd)
        jlow = torch.clamp(2 * low ** (1 / (n - 1)) - 1, min=0) ** (n - 1)
        joint = torch.where(pd < 0.5, jlow, 2 * pd - 1 + jlow)
        debias = pd * (1 - pd) / (pd - joint)
        for k in range(n):
            g[..., dvar] += (fs[k] - fbar).detach() * (samples[k][..., dvar] - pd) * debias
        g[..., dvar] /= n - 1
    pathwise_theta, pathwise_w = torch.autograd.grad(fbar.sum(), (th, ww))
    g_theta = g + pathwise_theta
    return torch.cat([g_theta.reshape(n_draws, -1), pathwise_w.reshape(n_draws, -1)], 1)


@pytest.mark.parametrize("n", [3, 4])
def test_matches_the_reference_implementation(n):
    theta, w = problem("bernoulli", B=3, D=3, seed=38, masked=False)
    theta[0, 1] = math.inf  # a whole column deterministic: the reference skips it
    theta[1, 1] = math.inf
    theta[2, 1] = -math.inf
    N = 20000
    ref = _reference_arms(theta, w, N, n, torch.Generator().manual_seed(39))
    lib, _ = draws(ARMS(n), "bernoulli", theta, w, N, seed=40, multi=False)
    z, r_theta, r_w = same_mean_and_variance(lib, ref, Z_TOL, theta.numel())
    print(f"\nARMS({n}) vs reference: max |z| {z:.2f}, variance ratios {r_theta:.4f}, {r_w:.4f}")
    assert_mean_matches(ref, exact("bernoulli", theta, w)[0])


@pytest.mark.parametrize("n", [2, 3, 5])
def test_reference_reproduces_the_library_draw_by_draw(n):
    """On the samples the library drew (what f saw), the reference's gradient is the
    library's, draw for draw."""
    theta, w = problem("bernoulli", B=3, D=3, seed=41, masked=False)
    theta[:, 1] = torch.tensor([math.inf, -math.inf, math.inf], dtype=D64)
    N = 2000
    seen: list[torch.Tensor] = []
    g_lib, _ = draws(ARMS(n), "bernoulli", theta, w, N, seed=42, multi=False, seen=seen)
    assert len(seen) == 1
    g_ref = _reference_arms(theta, w, N, n, None, given=seen[0])
    torch.testing.assert_close(g_lib, g_ref, rtol=1e-9, atol=1e-10)


def test_debias_is_finite_everywhere():
    theta = torch.tensor([-math.inf, -50.0, -1.0, 0.0, 1e-8, 2.0, 50.0, math.inf], dtype=D64)
    for n in (2, 3, 8, 30):
        c = copula_debias(theta, n)
        assert torch.isfinite(c).all() and (c >= 0.5).all()
    for dtype in (torch.float16, torch.bfloat16):
        theta16 = torch.tensor([[-math.inf, 0.3, math.inf]], dtype=dtype, requires_grad=True)
        out = ARMS(3)(lambda b: (b * 2).sum(-1) ** 2, Independent(Bernoulli(logits=theta16), 1))
        out.loss.sum().backward()
        assert torch.isfinite(theta16.grad).all() and theta16.grad[0, 0] == 0


def test_hyper_parameters_and_supports():
    for bad in (1, 0, 2.5, True, "3"):
        with pytest.raises(ValueError, match=r"n_samples"):
            ARMS(bad)
    with pytest.raises(TypeError, match="ARMS does not support Categorical"):
        ARMS()(lambda z: z.sum(-1), Categorical(logits=torch.zeros(2, 3)))
    out = ARMS(3)(lambda b: b, Bernoulli(logits=torch.zeros(4, requires_grad=True)))
    assert out.loss.shape == (4,) and out.n_evals == 3
