"""CARMS (Dimitriev & Zhou 2021): unbiasedness, the official algorithm (full pair pmf over
all orders) as a loop reference in mean, variance and draw by draw, the order set, and
lower variance than RLOO at equal evaluations."""

from __future__ import annotations

import pytest
import torch

from discograd.estimators import CARMS, RLOO
from discograd.estimators.coupled import _carms_orders
from estimator_helpers import assert_var_less
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
    # nonlinear f using log q and a decoder parameter, D = 3, C = 5, three data points
    # with different logits, masked categories, one variable with two possible categories
    theta, w = problem("categorical", B=3, D=3, C=5, seed=101 + n)
    assert_unbiased(CARMS(n), "categorical", theta, w, 6000, seed=102 + n, n_evals=n)


def _official_orders(C):
    """The official construction: rotations of the identity, then of its rows 1.., kept
    where the first category is smaller than the last."""
    keep = []
    for i in range(C):
        for j in range(C - 1):
            m = torch.roll(torch.eye(C), i, 0)
            m[1:] = torch.roll(m[1:], j, 0)
            order = m.argmax(-1)
            if order[0] < order[-1]:
                keep.append(order.tolist())
    return sorted(keep)


@pytest.mark.parametrize("C", [2, 3, 4, 7])
def test_orders_are_the_official_set(C):
    assert sorted(_carms_orders(C).tolist()) == _official_orders(C)


def _reference(theta, w, n_draws, n, gen=None, given=None):
    """The official CARMS algorithm written plainly: per variable (loop) one order drawn
    uniformly from the official set, inverse-CDF samples from one Dirichlet copula; the
    full C×C pair pmf averaged over all orders (loops over orders and category pairs);
    the leave-one-out estimator with weights π_a π_b / P(a, b) (loops over sample pairs).

    ``given``: the ``[n, N, B, D]`` category indices the library drew.
    """
    B, D, C = theta.shape
    th = theta.detach().expand(n_draws, B, D, C).clone().requires_grad_()
    ww = w.detach().expand(n_draws, 1, D, C).clone().requires_grad_()
    safe = torch.where(torch.isfinite(th), th, -1e4)  # exp underflows to exactly 0
    probs = torch.softmax(safe.detach(), -1)
    orders = torch.tensor(_official_orders(C))
    P = len(orders)
    if given is None:
        zs = []
        for d in range(D):
            k = torch.randint(P, (n_draws, B), generator=gen)
            laid = probs[..., d, :].gather(-1, orders[k])
            right = laid.cumsum(-1) / laid.sum(-1, keepdim=True)
            left = right - laid / laid.sum(-1, keepdim=True)
            e = -torch.rand((n, n_draws, B), generator=gen, dtype=D64).log()
            u = (1 - e / e.sum(0)) ** (n - 1)
            zd = []
            for i in range(n):
                inside = (left < u[i, ..., None]) & (u[i, ..., None] <= right)
                zd.append(orders[k].gather(-1, inside.double().argmax(-1, keepdim=True))[..., 0])
            zs.append(torch.stack(zd))
        z = torch.stack(zs, -1)  # [n, N, B, D]
    else:
        z = given
    f = cost("categorical", th, ww)
    fs = [f(torch.nn.functional.one_hot(z[i], C).double()) for i in range(n)]

    def bicdf(x, y):
        return torch.clamp(x ** (1 / (n - 1)) + y ** (1 / (n - 1)) - 1, min=0) ** (n - 1)

    surrogate = sum(fs) / n
    logq = torch.log_softmax(safe, -1)
    for d in range(D):
        pd = probs[..., d, :]
        joint = torch.zeros(n_draws, B, C, C, dtype=D64)
        for order in orders:
            laid = pd[..., order]
            right_o = laid.cumsum(-1) / laid.sum(-1, keepdim=True)
            left_o = right_o - laid / laid.sum(-1, keepdim=True)
            for ra in range(C):
                for rb in range(C):
                    a, b = order[ra], order[rb]
                    joint[..., a, b] += (
                        bicdf(right_o[..., ra], right_o[..., rb])
                        - bicdf(left_o[..., ra], right_o[..., rb])
                        - bicdf(right_o[..., ra], left_o[..., rb])
                        + bicdf(left_o[..., ra], left_o[..., rb])
                    ) / P
        for i in range(n):
            coef = 0.0
            for j in range(n):
                if j == i:
                    continue
                a, b = z[i, ..., d], z[j, ..., d]
                pab = joint.gather(-1, b[..., None, None].expand(n_draws, B, C, 1))[..., 0]
                pab = pab.gather(-1, a[..., None])[..., 0]
                pa = pd.gather(-1, a[..., None])[..., 0]
                pb = pd.gather(-1, b[..., None])[..., 0]
                coef = coef + pa * pb / pab * (fs[i] - fs[j]).detach()
            lq = logq[..., d, :].gather(-1, z[i, ..., d, None])[..., 0]
            surrogate = surrogate + coef / (n * (n - 1)) * lq
    g_theta, g_w = torch.autograd.grad(surrogate.sum(), (th, ww))
    g_theta = torch.where(torch.isfinite(th), g_theta, 0.0)
    return torch.cat([g_theta.reshape(n_draws, -1), g_w.reshape(n_draws, -1)], 1)


@pytest.mark.parametrize("n", [2, 4])
def test_matches_the_reference_implementation(n):
    theta, w = problem("categorical", B=2, D=2, C=4, seed=111)
    N = 20000
    ref = _reference(theta, w, N, n, gen=torch.Generator().manual_seed(112))
    lib, _ = draws(CARMS(n), "categorical", theta, w, N, seed=113, multi=False)
    z, r_theta, r_w = same_mean_and_variance(lib, ref, Z_TOL, theta.numel())
    print(f"\nCARMS({n}) vs reference: max |z| {z:.2f}, variance ratios {r_theta:.4f}, {r_w:.4f}")
    assert_mean_matches(ref, exact("categorical", theta, w)[0])


@pytest.mark.parametrize("n", [2, 3, 5])
def test_reference_reproduces_the_library_draw_by_draw(n):
    """On the samples the library drew (what f saw), the official algorithm's gradient
    is the library's, draw for draw."""
    theta, w = problem("categorical", B=3, D=3, C=5, seed=121)
    N = 300
    seen: list[torch.Tensor] = []
    g_lib, _ = draws(CARMS(n), "categorical", theta, w, N, seed=122, multi=False, seen=seen)
    assert len(seen) == 1 and seen[0].shape == (n, N, 3, 3, 5)
    g_ref = _reference(theta, w, N, n, given=seen[0].argmax(-1))
    torch.testing.assert_close(g_lib, g_ref, rtol=1e-7, atol=1e-8)


def test_lower_variance_than_rloo_at_equal_evaluations():
    theta, w = problem("categorical", B=2, D=3, C=5, seed=131, masked=False)
    k = theta.numel()
    g_c, _ = draws(CARMS(4), "categorical", theta, w, 16000, seed=132, multi=False)
    g_r, _ = draws(RLOO(4), "categorical", theta, w, 16000, seed=133, multi=False)
    print(
        f"\nCARMS(4) / RLOO(4) logit variance: "
        f"{float(g_c[:, :k].var(0).sum() / g_r[:, :k].var(0).sum()):.3f}"
    )
    assert_var_less(g_c[:, :k], g_r[:, :k])


def test_hyper_parameters_and_supports():
    for bad in (1, 0, 2.5, True, "3"):
        with pytest.raises(ValueError, match=r"n_samples"):
            CARMS(bad)
    with pytest.raises(TypeError, match="CARMS does not support Bernoulli"):
        CARMS()(lambda b: b, torch.distributions.Bernoulli(logits=torch.zeros(3)))
    leaf = torch.zeros(2, 1, requires_grad=True)  # one category: zero gradient
    out = CARMS(3)(lambda x: x.sum(-1) * 3, torch.distributions.Categorical(logits=leaf))
    out.loss.sum().backward()
    assert out.n_evals == 3 and (leaf.grad == 0).all()
