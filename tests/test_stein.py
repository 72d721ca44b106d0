"""DoubleCV and RODEO: unbiasedness against Exact, reference loop implementations, contract.

The reference implementations below follow the papers' (and the official
code's) formulas term by term — loops over samples, other samples and
variables, each neighbour built by flipping one variable, ∂f/∂z written out by
hand — and are vectorised only over independent draws. The library's versions
are compared with them in mean and in variance over 20,000 draws.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Categorical, Independent

from discograd.estimators import RLOO, RODEO, DisARM, DoubleCV, Exact, SteinControlNet
from discograd.estimators.registry import make
from estimator_helpers import D64, trace_var

from conftest import Z_TOL, assert_mean_matches

# ------------------------------------------------------------------ the problem
B, D = 3, 4


def _logits(seed: int = 0) -> torch.Tensor:
    """Different logits per data point; one variable certain to be 1 and one to be 0."""
    gen = torch.Generator().manual_seed(seed)
    theta = 1.2 * torch.randn(B, D, dtype=D64, generator=gen)
    theta[0, 1] = math.inf
    theta[2, 3] = -math.inf
    return theta


W = torch.tensor([0.9, -0.6, 0.4, 0.7], dtype=D64)


def _cost(theta: torch.Tensor, w: torch.Tensor):
    """Nonlinear in a = w·z, plus log q(z) (θ used inside f), smooth in z, NaN-free at ±inf."""

    def f(z):
        a = (z * w).sum(-1)
        finite = torch.isfinite(theta)
        safe = torch.where(finite, theta, 0.0)
        lq = z * F.logsigmoid(safe) + (1 - z) * F.logsigmoid(-safe)
        return torch.sin(2 * a) + a**2 + torch.where(finite, lq, 0.0).sum(-1)

    return f


def _draws(est, n: int, seed: int) -> torch.Tensor:
    """``[n, B*D + D]`` gradient draws w.r.t. (θ, w) from one vectorised call."""
    theta = _logits().expand(n, B, D).clone().requires_grad_()
    w = W.expand(n, 1, D).clone().requires_grad_()
    out = est(
        _cost(theta, w),
        Independent(Bernoulli(logits=theta), 1),
        generator=torch.Generator().manual_seed(seed),
    )
    assert out.n_evals == est.n_samples and out.loss.shape == (n, B)
    torch.testing.assert_close(out.loss.detach(), out.value)
    g_theta, g_w = torch.autograd.grad(out.loss.sum(), (theta, w))
    return torch.cat([g_theta.reshape(n, -1), g_w.reshape(n, -1)], 1)


def _exact() -> torch.Tensor:
    theta = _logits().requires_grad_()
    w = W.clone().requires_grad_()
    out = Exact()(_cost(theta, w), Independent(Bernoulli(logits=theta), 1))
    g_theta, g_w = torch.autograd.grad(out.loss.sum(), (theta, w))
    return torch.cat([g_theta.reshape(-1), g_w.reshape(-1)])


def _randomised(est: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial control-variate parameters (unbiasedness must hold for any), float64, eval."""
    torch.manual_seed(seed)
    for m in est.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=0.7)
            torch.nn.init.normal_(m.bias, std=0.3)
    return est.double().eval()


ESTIMATORS = {
    "double_cv_k2": lambda: DoubleCV(2, alpha=0.8),
    "double_cv_k3": lambda: DoubleCV(3, alpha=-0.6),
    "rodeo_k2": lambda: RODEO(2, hidden=8, alpha=0.5, beta=0.7),
    "rodeo_avg_k3": lambda: RODEO(3, variant="avg", hidden=8, alpha=0.5, beta=-0.9),
    "rodeo_output_avg_k3": lambda: RODEO(3, hidden=8, alpha=-0.4, beta=0.8),
}


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_unbiased_against_exact(name):
    est = _randomised(ESTIMATORS[name](), seed=1)
    g = _draws(est, 8000, seed=2)
    assert torch.isfinite(g).all()
    # Deterministic variables (θ = ±inf) get exactly zero gradient.
    assert (g[:, 1] == 0).all() and (g[:, 2 * D + 3] == 0).all()
    assert_mean_matches(g, _exact())


# ------------------------------------------------- reference loop implementations
N_REF = 20000


def _ref_f_and_grad(z: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """f(z) = sin(2a) + a², a = w·z, and ∂f/∂z = (2 cos 2a + 2a) w, by hand."""
    a = (z * w).sum(-1)
    return torch.sin(2 * a) + a**2, (2 * torch.cos(2 * a) + 2 * a).unsqueeze(-1) * w


def _ref_samples(theta: torch.Tensor, K: int, n: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    p = torch.sigmoid(theta)
    return [
        (torch.rand((n,) + theta.shape, dtype=D64, generator=gen) < p).double() for _ in range(K)
    ]


def ref_double_cv(theta, w, K, alpha, n, seed, samples=None):
    """Titsias & Shi 2022, written out: global leave-one-out + local Taylor term at the mean."""
    p = torch.sigmoid(theta)
    b = _ref_samples(theta, K, n, seed) if samples is None else list(samples)
    fg = [_ref_f_and_grad(bk, w) for bk in b]
    f = [x[0] for x in fg]
    G = [x[1] for x in fg]
    h = []
    for k in range(K):
        g_others = sum(G[j] for j in range(K) if j != k) / (K - 1)
        h.append(alpha * ((b[k] - p) * g_others).sum(-1))
    g = torch.zeros((n,) + theta.shape, dtype=D64)
    for k in range(K):
        baseline = sum(f[j] + h[j] for j in range(K) if j != k) / (K - 1)
        g = g + ((f[k] + h[k] - baseline).unsqueeze(-1) * (b[k] - p)) / K
    # The local control variate's expectation, E[(b - p)(b - p)ᵀ] = diag p(1 - p).
    g = g - alpha * (sum(G) / K) * p * (1 - p)
    if K == 2:  # the official code's K = 2 branch, term by term: the same number
        b1 = alpha * (G[1] * (b[0] - p)).sum(-1, keepdim=True)
        c1 = alpha * (G[0] * (b[1] - p)).sum(-1, keepdim=True)
        diffs = f[0].unsqueeze(-1) + b1 - (f[1].unsqueeze(-1) + c1)
        official = 0.5 * (diffs * (b[0] - p) - diffs * (b[1] - p))
        official = official - alpha * 0.5 * (G[0] + G[1]) * p * (1 - p)
        torch.testing.assert_close(official, g)
    return g


def ref_rodeo(theta, w, K, alpha, beta, net, variant, n, seed, samples=None):
    """Shi et al. 2022, written out: Gibbs Stein operator over explicit neighbours."""
    p = torch.sigmoid(theta)
    b = _ref_samples(theta, K, n, seed) if samples is None else list(samples)
    fg = [_ref_f_and_grad(bk, w) for bk in b]
    f = [x[0] for x in fg]
    G = [x[1] for x in fg]
    Dn = theta.shape[-1]

    def h(k, x):  # the control functions of sample k at point x: [..., 2]
        others = [j for j in range(K) if j != k]
        if variant == "avg":
            t = sum((G[j] * (x - b[j])).sum(-1) for j in others) / (K - 1)
            m = sum(f[j] for j in others) / (K - 1)
            return net(t, m)
        return sum(net((G[j] * (x - b[j])).sum(-1), f[j]) for j in others) / (K - 1)

    c, V = [], []
    for k in range(K):
        x = b[k]
        hx = h(k, x)
        ck = torch.zeros_like(f[k])
        Vk = torch.zeros_like(x)
        for d in range(Dn):
            y = x.clone()
            y[..., d] = 1 - y[..., d]
            q_flip = torch.where(x[..., d] > 0.5, 1 - p[..., d], p[..., d])
            hy = h(k, y)
            ck = ck + q_flip * (hy[..., 0] - hx[..., 0]) / Dn
            Vk = Vk + (q_flip.unsqueeze(-1) * (hy[..., 1:] * (y - p) - hx[..., 1:] * (x - p)) / Dn)
        c.append(ck)
        V.append(Vk)
    g = torch.zeros((n,) + theta.shape, dtype=D64)
    for k in range(K):
        baseline = sum(f[j] + alpha * c[j] for j in range(K) if j != k) / (K - 1)
        g = g + ((f[k] - baseline).unsqueeze(-1) * (b[k] - p) + beta * V[k]) / K
    return g


def _lib_draws(est, theta, w, n, seed) -> torch.Tensor:
    leaf = theta.expand((n,) + theta.shape).clone().requires_grad_()

    def f(z):
        return _ref_f_and_grad(z, w)[0]

    out = est(
        f, Independent(Bernoulli(logits=leaf), 1), generator=torch.Generator().manual_seed(seed)
    )
    (g,) = torch.autograd.grad(out.loss.sum(), leaf)
    return g.reshape(n, -1)


def _same_estimator(lib: torch.Tensor, ref: torch.Tensor, exact: torch.Tensor, label: str):
    for draws in (lib, ref):
        assert_mean_matches(draws, exact)
    diff = lib.mean(0) - ref.mean(0)
    se = (lib.var(0) / lib.shape[0] + ref.var(0) / ref.shape[0]).sqrt()
    z_mean = float((diff.abs() / se).max())
    (v_lib, se_lib), (v_ref, se_ref) = trace_var(lib), trace_var(ref)
    z_var = abs(v_lib - v_ref) / math.hypot(se_lib, se_ref)
    print(
        f"{label}: max |z| of the mean difference {z_mean:.2f}; trace of covariance "
        f"library {v_lib:.5g} ± {se_lib:.2g}, reference {v_ref:.5g} ± {se_ref:.2g}, "
        f"ratio {v_lib / v_ref:.4f}, z {z_var:.2f}"
    )
    assert z_mean < Z_TOL
    assert z_var < Z_TOL


REF_THETA = torch.tensor([[0.4, -1.1, 0.8], [-0.3, 1.5, 0.1]], dtype=D64)
REF_W = torch.tensor([1.1, -0.7, 0.5], dtype=D64)


def _ref_exact() -> torch.Tensor:
    theta = REF_THETA.clone().requires_grad_()
    out = Exact()(lambda z: _ref_f_and_grad(z, REF_W)[0], Independent(Bernoulli(logits=theta), 1))
    (g,) = torch.autograd.grad(out.loss.sum(), theta)
    return g.reshape(-1)


@pytest.mark.parametrize("K", [2, 3])
def test_double_cv_matches_reference(K):
    alpha = 0.9
    lib = _lib_draws(DoubleCV(K, alpha=alpha).double().eval(), REF_THETA, REF_W, N_REF, seed=3)
    ref = ref_double_cv(REF_THETA, REF_W, K, alpha, N_REF, seed=4).reshape(N_REF, -1)
    _same_estimator(lib, ref, _ref_exact(), f"DoubleCV K={K}")


@pytest.mark.parametrize(("K", "variant"), [(2, "avg"), (3, "avg"), (3, "output_avg")])
def test_rodeo_matches_reference(K, variant):
    alpha, beta = 0.6, 0.8
    est = _randomised(RODEO(K, variant=variant, hidden=8, alpha=alpha, beta=beta), seed=5)
    lib = _lib_draws(est, REF_THETA, REF_W, N_REF, seed=6)
    with torch.no_grad():
        ref = ref_rodeo(
            REF_THETA, REF_W, K, alpha, beta, est.control_net, variant, N_REF, seed=7
        ).reshape(N_REF, -1)
    _same_estimator(lib, ref, _ref_exact(), f"RODEO K={K} {variant}")


@pytest.mark.parametrize(
    "make_est",
    [
        lambda: DoubleCV(2, alpha=0.9),
        lambda: DoubleCV(4, alpha=-0.7),
        lambda: RODEO(2, hidden=8, alpha=0.6, beta=0.8),
        lambda: RODEO(3, variant="avg", hidden=8, alpha=0.6, beta=-0.8),
        lambda: RODEO(3, variant="output_avg", hidden=8, alpha=-0.6, beta=0.8),
    ],
)
def test_reference_on_the_library_samples(make_est):
    """Draw by draw: the reference, fed the samples the library passed to f, gives
    the library's estimate (to rounding)."""
    est = _randomised(make_est(), seed=14)
    n, seen = 500, []
    leaf = REF_THETA.expand((n,) + REF_THETA.shape).clone().requires_grad_()

    def f(z):
        seen.append(z.detach().clone())
        return _ref_f_and_grad(z, REF_W)[0]

    out = est(
        f, Independent(Bernoulli(logits=leaf), 1), generator=torch.Generator().manual_seed(15)
    )
    (g,) = torch.autograd.grad(out.loss.sum(), leaf)
    (z,) = seen
    K, alpha = est.n_samples, float(est.alpha.detach())
    with torch.no_grad():
        if isinstance(est, DoubleCV):
            ref = ref_double_cv(REF_THETA, REF_W, K, alpha, n, 0, samples=z)
        else:
            net, variant = est.control_net, est.resolved_variant
            ref = ref_rodeo(
                REF_THETA, REF_W, K, alpha, float(est.beta.detach()), net, variant, n, 0, z
            )
    torch.testing.assert_close(g, ref, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------- exact identities
def _one_call(est, seed=8, n=50):
    theta = _logits(seed=3).expand(n, B, D).clone().requires_grad_()
    out = est(
        _cost(theta, W),
        Independent(Bernoulli(logits=theta), 1),
        generator=torch.Generator().manual_seed(seed),
    )
    (g,) = torch.autograd.grad(out.loss.sum(), theta)
    return g


@pytest.mark.parametrize("K", [2, 4])
def test_zero_scales_are_rloo(K):
    """α = β = 0 (the official initialisation): exactly RLOO on the same samples."""
    rloo = _one_call(RLOO(K))
    torch.testing.assert_close(_one_call(DoubleCV(K).double()), rloo)
    torch.testing.assert_close(_one_call(RODEO(K).double()), rloo)


def test_variants_coincide_at_two_samples():
    est = _randomised(RODEO(2, variant="avg", alpha=0.7, beta=0.4, hidden=8), seed=9)
    other = RODEO(2, variant="output_avg", alpha=0.7, beta=0.4, hidden=8).double().eval()
    other.load_state_dict(est.state_dict())
    torch.testing.assert_close(_one_call(est), _one_call(other))
    assert RODEO(2).resolved_variant == "avg" and RODEO(3).resolved_variant == "output_avg"
    # At K = 3 they differ (the network is nonlinear).
    a = _randomised(RODEO(3, variant="avg", alpha=0.7, beta=0.4, hidden=8), seed=9)
    o = RODEO(3, variant="output_avg", alpha=0.7, beta=0.4, hidden=8).double().eval()
    o.load_state_dict(a.state_dict())
    assert not torch.allclose(_one_call(a), _one_call(o))


def test_one_call_of_f_with_k_samples():
    calls = []

    def f(z):
        calls.append(tuple(z.shape))
        return (z * W).sum(-1) ** 2

    theta = torch.zeros(5, D, dtype=D64, requires_grad=True)
    for est in (DoubleCV(3), RODEO(4)):
        calls.clear()
        out = est(f, Independent(Bernoulli(logits=theta), 1))
        assert calls == [(est.n_samples, 5, D)] and out.n_evals == est.n_samples


# ------------------------------------------------------------ learned parameters
def test_cv_loss_trains_only_the_control_variate():
    theta = _logits(seed=4).requires_grad_()
    w = W.clone().requires_grad_()
    for est in (DoubleCV(2, alpha=0.3), RODEO(3, alpha=0.3, beta=0.2, hidden=8)):
        est = est.double()
        out = est(_cost(theta, w), Independent(Bernoulli(logits=theta), 1))
        params = list(est.parameters())
        # No gradient of loss reaches the control-variate parameters...
        grads = torch.autograd.grad(out.loss.sum(), params, allow_unused=True, retain_graph=True)
        assert all(g is None for g in grads)
        # ... and cv_loss reaches only them, with its value the mean squared estimate.
        assert out.cv_loss is not None and out.cv_loss.dim() == 0
        assert torch.autograd.grad(out.cv_loss, (theta, w), allow_unused=True) == (None, None)
        grads = torch.autograd.grad(out.cv_loss, params, allow_unused=True)
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        (g_theta,) = torch.autograd.grad(
            est(_cost(theta, w), Independent(Bernoulli(logits=theta), 1)).loss.sum(), theta
        )
        assert torch.isfinite(g_theta).all()
        est.eval()
        assert est(_cost(theta, w), Independent(Bernoulli(logits=theta), 1)).cv_loss is None
    fixed = RODEO(learn=False)
    assert not any(p.requires_grad for p in fixed.parameters())
    out = fixed(_cost(theta, w), Independent(Bernoulli(logits=theta.float()), 1))
    assert out.cv_loss is None
    assert list(DoubleCV(learn=False).parameters()) == []


def _train(est, theta, f, steps, seed, reps=128, lr=0.03):
    """Adam on cv_loss, the way the official code trains α, β and the network."""
    opt = torch.optim.Adam(est.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    leaf = theta.expand((reps,) + theta.shape).clone().requires_grad_()
    q = Independent(Bernoulli(logits=leaf), 1)
    for _ in range(steps):
        out = est(f, q, generator=gen)
        opt.zero_grad()
        out.cv_loss.backward()
        opt.step()
    return est.eval()


def test_variance_after_training_against_rloo_and_disarm():
    """Trained control variates stay unbiased; their variance is printed next to
    RLOO's and DisARM's at the same number of evaluations (a measurement, not a claim)."""
    theta = torch.tensor([[0.6, -0.9, 1.4, -0.2, 0.3, -1.7]], dtype=D64)
    w = torch.tensor([1.0, -0.8, 0.6, 1.3, -0.5, 0.9], dtype=D64)

    def f(z):
        a = (z * w).sum(-1)
        return torch.sin(2 * a) + (a - 0.5) ** 2

    leaf = theta.clone().requires_grad_()
    (exact,) = torch.autograd.grad(
        Exact()(f, Independent(Bernoulli(logits=leaf), 1)).loss.sum(), leaf
    )
    n = 10000
    rows = []
    for K in (2, 4):
        torch.manual_seed(10)
        ests = {f"RLOO({K})": RLOO(K).double()}
        if K == 2:
            ests["DisARM"] = DisARM().double()
        ests[f"DoubleCV({K})"] = _train(DoubleCV(K).double(), theta, f, 150, seed=11)
        ests[f"RODEO({K})"] = _train(RODEO(K, hidden=32).double(), theta, f, 150, seed=12)
        for label, est in ests.items():
            g = _lib_draws_f(est, theta, f, n, seed=13)
            assert_mean_matches(g, exact)
            v, se = trace_var(g)
            rows.append((label, v, se, getattr(est, "alpha", None), getattr(est, "beta", None)))
        # training moved the learned scales away from 0 (their value is RLOO)
        assert float(ests[f"DoubleCV({K})"].alpha.detach()) != 0.0
    print("\ntrace of the covariance of the logit gradient (D = 6, 10,000 draws):")
    for label, v, se, a, b in rows:
        extra = "" if a is None else f"  alpha={float(a.detach()):.3f}"
        extra += "" if b is None else f" beta={float(b.detach()):.3f}"
        print(f"  {label:12s} {v:.5f} ± {se:.5f}{extra}")


def _lib_draws_f(est, theta, f, n, seed) -> torch.Tensor:
    leaf = theta.expand((n,) + theta.shape).clone().requires_grad_()
    out = est(
        f, Independent(Bernoulli(logits=leaf), 1), generator=torch.Generator().manual_seed(seed)
    )
    (g,) = torch.autograd.grad(out.loss.sum(), leaf)
    return g.reshape(n, -1)


# ----------------------------------------------------------------------- contract
def test_hyper_parameters_are_checked():
    bad = [
        (DoubleCV, {"n_samples": 1}, "n_samples=1"),
        (DoubleCV, {"n_samples": 2.0}, "n_samples=2.0"),
        (DoubleCV, {"alpha": math.nan}, "alpha=nan"),
        (DoubleCV, {"learn": 1}, "learn=1"),
        (RODEO, {"n_samples": True}, "n_samples=True"),
        (RODEO, {"variant": "mu"}, "variant='mu'"),
        (RODEO, {"hidden": 0}, "hidden=0"),
        (RODEO, {"beta": math.inf}, "beta=inf"),
    ]
    for cls, kwargs, text in bad:
        with pytest.raises(ValueError, match=text):
            cls(**kwargs)
    assert make("rodeo:n_samples=3,variant=avg").resolved_variant == "avg"
    assert make("double_cv:n_samples=4").n_samples == 4


def test_bernoulli_only_and_plain_bernoulli():
    theta = torch.zeros(2, 3, requires_grad=True)
    for est in (DoubleCV(), RODEO()):
        with pytest.raises(TypeError, match=rf"{type(est).__name__} does not support Categorical"):
            est(lambda z: z.sum(-1), Categorical(logits=theta))
        out = est(lambda b: b * 2.0, Bernoulli(logits=theta[0]))  # batch (3,), no variable dim
        assert out.loss.shape == (3,)
        out.loss.sum().backward()
        assert torch.isfinite(theta.grad).all()
        theta.grad = None


def test_no_grad_returns_the_value():
    theta = torch.zeros(2, 3)
    with torch.no_grad():
        for est in (DoubleCV(), RODEO()):
            out = est(lambda z: (z * 1.0).sum(-1), Independent(Bernoulli(logits=theta), 1))
            assert out.cv_loss is None and not out.loss.requires_grad
            torch.testing.assert_close(out.loss, out.value)


def test_control_net_shapes():
    net = SteinControlNet(hidden=5)
    assert net(torch.zeros(3, 4, 7), torch.zeros(3, 4, 1)).shape == (3, 4, 7, 2)
    assert net.at_points(torch.zeros(3, 4, 7), torch.zeros(3, 4)).shape == (3, 4, 7, 2)


def _kinked_net(dtype: torch.dtype) -> SteinControlNet:
    """Random weights, two units with a zero Taylor weight (constant in t, no kink)."""
    torch.manual_seed(16)
    net = SteinControlNet(hidden=40).to(dtype)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.6)
    with torch.no_grad():
        net.taylor.weight[3] = 0.0
        net.taylor.weight[7] = 0.0
        net.taylor.bias[3], net.taylor.bias[7] = 2.0, -2.0
    return net


@pytest.mark.parametrize("dtype", [torch.float32, D64])
def test_at_points_is_the_network(dtype):
    """at_points (sorted kinks, prefix sums, binary search) against the plain call:
    values and parameter gradients, float32 and float64."""
    net = _kinked_net(dtype)
    gen = torch.Generator().manual_seed(17)
    t = 3 * torch.randn(6, 5, 33, dtype=dtype, generator=gen)
    m = 2 * torch.randn(6, 5, dtype=dtype, generator=gen)
    with torch.no_grad():  # two features exactly at a unit's kink
        level = net.cost(m.unsqueeze(-1)) + net.taylor.bias
        t[..., 0] = -level[..., 0] / net.taylor.weight[0, 0]
        t[..., 1] = -level[..., 1] / net.taylor.weight[1, 0]
    dense, fast = net(t, m.unsqueeze(-1)), net.at_points(t, m)
    tol = {"rtol": 1e-11, "atol": 1e-11} if dtype == D64 else {"rtol": 1e-5, "atol": 1e-4}
    torch.testing.assert_close(fast, dense, **tol)
    # Gradients away from the kinks (at one, each side picks its own one-sided slope).
    dense, fast = dense[..., 2:, :], fast[..., 2:, :]
    params = list(net.parameters())
    weight = torch.randn(dense.shape, dtype=dtype, generator=gen)
    for g_fast, g_dense in zip(
        torch.autograd.grad((fast * weight).sum(), params),
        torch.autograd.grad((dense * weight).sum(), params),
        strict=True,
    ):
        scale = float(g_dense.abs().max())
        torch.testing.assert_close(g_fast / scale, g_dense / scale, **tol)


class _PlainCall(torch.nn.Module):
    """The same network behind a module that only has a call: RODEO's generic path."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, taylor, cost):
        return self.net(taylor, cost)


@pytest.mark.parametrize(
    ("K", "variant"), [(2, "avg"), (3, "avg"), (3, "output_avg"), (4, "output_avg")]
)
def test_fast_network_path_is_the_generic_one(K, variant):
    """RODEO with its default network (evaluated by at_points) and with the same
    network behind a plain call: the same gradient estimate, cv_loss and cv_loss
    gradient on the same samples (training mode, deterministic variables included)."""
    est = RODEO(K, variant=variant, hidden=40, alpha=0.6, beta=-0.7).double()
    est.control_net = _kinked_net(D64)
    plain = RODEO(K, variant=variant, hidden=40, alpha=0.6, beta=-0.7).double()
    plain.control_net = _PlainCall(est.control_net)
    calls = []  # module calls of the network: none on the fast path
    est.control_net.register_forward_hook(lambda *args: calls.append(1))
    results = []
    for e in (est, plain):
        theta = _logits(seed=5).expand(30, B, D).clone().requires_grad_()
        out = e(
            _cost(theta, W),
            Independent(Bernoulli(logits=theta), 1),
            generator=torch.Generator().manual_seed(18),
        )
        (g,) = torch.autograd.grad(out.loss.sum(), theta)
        params = [e.alpha, e.beta, *est.control_net.parameters()]
        results.append((g, out.cv_loss, torch.autograd.grad(out.cv_loss, params), len(calls)))
    (g1, cv1, p1, n1), (g2, cv2, p2, n2) = results
    assert n1 == 0 and n2 > 0
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(cv1, cv2, rtol=1e-10, atol=0)
    for a, b in zip(p1, p2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * float(b.abs().max()))
