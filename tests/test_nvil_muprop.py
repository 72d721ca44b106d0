"""NVIL and MuProp: unbiasedness against Exact, reference loop implementations, the
running statistics of NVIL, the features path and the cv_loss contract."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Bernoulli, Categorical, Independent, Normal, OneHotCategorical

from discograd.diagnostics import exact_gradient
from discograd.estimators import NVIL, BaselineNet, MuProp
from estimator_helpers import D64, draws, exact, problem

from conftest import Z_TOL, assert_mean_matches


# ----------------------------------------------------------------- helpers
def safe_cost(kind: str, q, w: torch.Tensor):
    """sin(2a) + a² + log q(z), a = Σ z·w; smooth in z, and finite (with finite
    gradients in z) also where logits are ±inf: impossible values never reach f,
    so their log-probability terms are dropped."""
    dims = (-1, -2) if kind == "categorical" else (-1,)

    def f(z):
        lg = q.base_dist.logits
        finite = torch.isfinite(lg)
        safe = torch.where(finite, lg, 0.0)
        if kind == "categorical":
            terms = z * safe
        else:
            terms = z * F.logsigmoid(safe) + (1 - z) * F.logsigmoid(-safe)
        a = (z * w).sum(dims)
        return torch.sin(2 * a) + a**2 + torch.where(finite, terms, 0.0).sum(dims)

    return f


def masked_draws(est, kind: str, theta: torch.Tensor, w: torch.Tensor, n: int, seed: int):
    """Like ``estimator_helpers.draws`` with :func:`safe_cost` (±inf logits allowed)."""
    leaf = theta.detach().expand((n,) + theta.shape).clone().requires_grad_()
    w_leaf = w.detach().expand((n, 1) + w.shape).clone().requires_grad_()
    base = Categorical if kind == "categorical" else Bernoulli
    q = Independent(base(logits=leaf), 1)
    out = est(safe_cost(kind, q, w_leaf), q, generator=torch.Generator().manual_seed(seed))
    g_theta, g_w = torch.autograd.grad(out.loss.sum(), (leaf, w_leaf))
    return torch.cat([g_theta.reshape(n, -1), g_w.reshape(n, -1)], 1), out


def masked_exact(kind: str, theta: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    theta = theta.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    base = Categorical if kind == "categorical" else Bernoulli
    q = Independent(base(logits=theta), 1)
    g_theta, g_w = exact_gradient(safe_cost(kind, q, w), q, [theta, w])
    return torch.cat([g_theta.reshape(-1), g_w.reshape(-1)])


def with_masks(kind: str, theta: torch.Tensor) -> torch.Tensor:
    theta = theta.detach().clone()
    if kind == "categorical":  # one masked category; a variable with one category left
        theta[0, 1, 2] = -math.inf
        theta[1, 0, [0, 1, 3]] = -math.inf
    else:  # deterministic variables, one of each value
        theta[0, 1] = math.inf
        theta[2, 0] = -math.inf
    return theta.requires_grad_()


def randomise(module: nn.Module, seed: int, scale: float = 0.5) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def sized(est, kind: str, theta: torch.Tensor, w: torch.Tensor):
    """One eval-mode call, so that a lazily sized baseline network gets its shapes."""
    was = est.training
    est.eval()
    base = Categorical if kind == "categorical" else Bernoulli
    q = Independent(base(logits=theta.detach()), 1)
    est(safe_cost(kind, q, w.detach()), q)
    est.train(was)
    return est


def assert_same_law(lib: torch.Tensor, ref: torch.Tensor, label: str) -> None:
    """Two independent sets of draws have the same mean and the same variance,
    coordinate by coordinate, within Z_TOL standard errors (the variance's
    standard error from the fourth central moment)."""
    lib, ref = lib.double(), ref.double()
    n_a, n_b = lib.shape[0], ref.shape[0]
    m_a, m_b = lib.mean(0), ref.mean(0)
    v_a, v_b = lib.var(0), ref.var(0)
    z_mean = (m_a - m_b).abs() / (v_a / n_a + v_b / n_b).sqrt()
    k_a = ((lib - m_a) ** 4).mean(0)
    k_b = ((ref - m_b) ** 4).mean(0)
    se_var = ((k_a - v_a**2) / n_a + (k_b - v_b**2) / n_b).sqrt()
    z_var = (v_a - v_b).abs() / se_var
    ratio = v_a / v_b
    print(
        f"\n{label}: n = {n_a} / {n_b}, max |z| of means {float(z_mean.max()):.2f}, "
        f"of variances {float(z_var.max()):.2f}; variance ratios library/reference "
        f"{float(ratio.min()):.3f}..{float(ratio.max()):.3f}, trace ratio "
        f"{float(v_a.sum() / v_b.sum()):.4f}"
    )
    assert float(z_mean.max()) < Z_TOL, (label, z_mean)
    assert float(z_var.max()) < Z_TOL, (label, z_var, ratio)


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def log_sig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x > -30 else x


# --------------------------------------------------- reference implementations
# Deliberately simple: one data point and one variable at a time, Python floats,
# the gradients written out by hand (no autograd), a random.Random for sampling.
# The cost is f(z) = sin(2a) + a² + log q(z) with a = Σ z·w (estimator_helpers.cost),
# so ∂f/∂a = 2 cos(2a) + 2a, ∂ log q(z)/∂θ = z - σ(θ) (Bernoulli) or onehot - p.


def _h(a: float) -> float:
    return math.sin(2 * a) + a * a


def _dh(a: float) -> float:
    return 2 * math.cos(2 * a) + 2 * a


def reference_bernoulli(theta, w, n, seed, *, method, c=0.0, s=1.0, base=None, eta=(1.0, 1.0)):
    """``n`` draws of [∂/∂θ (B·D), ∂/∂w (D)] of NVIL or MuProp, Bernoulli variables."""
    rng = random.Random(seed)
    B, D = len(theta), len(w)
    # What depends on θ alone, per data point: probabilities, baseline, and for
    # MuProp the expansion point z̄ = p, f(z̄), ∂f/∂z at z̄ and the analytic slope.
    consts = []
    for i in range(B):
        th = theta[i]
        p = [sig(t) for t in th]
        b = 0.0 if base is None else base(th)
        fm, grad, slope = 0.0, [0.0] * D, [0.0] * D
        if method == "muprop":
            am = sum(p[d] * w[d] for d in range(D))
            fm = _h(am) + sum(
                p[d] * log_sig(th[d]) + (1 - p[d]) * log_sig(-th[d]) for d in range(D)
            )
            grad = [_dh(am) * w[d] + th[d] for d in range(D)]  # ∂/∂z_d of a², sin, log q
            slope = [eta[1] * grad[d] * p[d] * (1 - p[d]) for d in range(D)]
        consts.append((th, p, b, fm, grad, slope))
    rows = []
    for _ in range(n):
        g_theta = [[0.0] * D for _ in range(B)]
        g_w = [0.0] * D
        for i in range(B):
            th, p, b, fm, grad, slope = consts[i]
            z = [1.0 if rng.random() < p[d] else 0.0 for d in range(D)]
            a = sum(z[d] * w[d] for d in range(D))
            logq = sum(log_sig(th[d]) if z[d] else log_sig(-th[d]) for d in range(D))
            fz = _h(a) + logq
            if method == "nvil":
                weight = (fz - b - c) / s
            else:  # MuProp: minus the Taylor expansion at z̄ = p
                lin = sum(grad[d] * (z[d] - p[d]) for d in range(D))
                weight = fz - eta[0] * fm - eta[1] * lin - b
            for d in range(D):
                score = z[d] - p[d]
                g_theta[i][d] = weight * score + slope[d] + score  # last: log q's own gradient
                g_w[d] += _dh(a) * z[d]
        rows.append([x for r in g_theta for x in r] + g_w)
    return torch.tensor(rows, dtype=D64)


def reference_categorical(theta, w, n, seed, *, method, c=0.0, s=1.0, base=None, eta=(1.0, 1.0)):
    """``n`` draws of [∂/∂θ (B·D·C), ∂/∂w (D·C)] of NVIL or MuProp, categorical variables."""
    rng = random.Random(seed)
    B, D, C = len(theta), len(w), len(w[0])
    consts = []
    for i in range(B):
        logp = []
        for d in range(D):
            top = max(theta[i][d])
            lse = top + math.log(sum(math.exp(t - top) for t in theta[i][d]))
            logp.append([t - lse for t in theta[i][d]])
        p = [[math.exp(x) for x in row] for row in logp]
        # the baseline reads the normalised log-probabilities (the default features)
        b = 0.0 if base is None else base([x for row in logp for x in row])
        fm, grad, slope = 0.0, [[0.0] * C for _ in range(D)], [[0.0] * C for _ in range(D)]
        if method == "muprop":
            am = sum(p[d][j] * w[d][j] for d in range(D) for j in range(C))
            fm = _h(am) + sum(p[d][j] * logp[d][j] for d in range(D) for j in range(C))
            grad = [[_dh(am) * w[d][j] + logp[d][j] for j in range(C)] for d in range(D)]
            for d in range(D):  # ∂/∂θ_dj of Σ_k g_dk p_dk = p_dj (g_dj - Σ_k p_dk g_dk)
                mean_g = sum(p[d][j] * grad[d][j] for j in range(C))
                for j in range(C):
                    slope[d][j] = eta[1] * p[d][j] * (grad[d][j] - mean_g)
        consts.append((logp, p, b, fm, grad, slope))
    rows = []
    for _ in range(n):
        g_theta = [[[0.0] * C for _ in range(D)] for _ in range(B)]
        g_w = [[0.0] * C for _ in range(D)]
        for i in range(B):
            logp, p, b, fm, grad, slope = consts[i]
            k = []
            for d in range(D):  # inverse CDF
                u, acc, pick = rng.random(), 0.0, C - 1
                for j in range(C):
                    acc += p[d][j]
                    if u < acc:
                        pick = j
                        break
                k.append(pick)
            a = sum(w[d][k[d]] for d in range(D))
            fz = _h(a) + sum(logp[d][k[d]] for d in range(D))
            if method == "nvil":
                weight = (fz - b - c) / s
            else:
                lin = sum(grad[d][j] * ((j == k[d]) - p[d][j]) for d in range(D) for j in range(C))
                weight = fz - eta[0] * fm - eta[1] * lin - b
            for d in range(D):
                for j in range(C):
                    score = (j == k[d]) - p[d][j]
                    g_theta[i][d][j] = weight * score + slope[d][j] + score
                g_w[d][k[d]] += _dh(a)
        rows.append([x for r in g_theta for row in r for x in row] + [x for r in g_w for x in r])
    return torch.tensor(rows, dtype=D64)


class LinearBaseline(nn.Module):
    """b(x) = u·x + u0 of the flattened logits: a user baseline the reference can evaluate."""

    def __init__(self, size: int, seed: int):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.u = nn.Parameter(0.3 * torch.randn(size, dtype=D64, generator=gen))
        self.u0 = nn.Parameter(torch.tensor(0.7, dtype=D64))

    def forward(self, x):
        return x @ self.u + self.u0

    def python(self, flat):
        u = self.u.detach().tolist()
        return sum(a * x for a, x in zip(u, flat, strict=True)) + float(self.u0.detach())


REF_N = 20000


def _ref_problem(kind: str):
    theta, w = problem(kind, B=2, D=3, C=3, seed=61)
    return theta, w


def _reference(kind, theta, w, seed, n=REF_N, **kw):
    th = theta.detach().tolist()
    ww = w.detach().tolist()
    fn = reference_categorical if kind == "categorical" else reference_bernoulli
    return fn(th, ww, n, seed, **kw)


@pytest.mark.parametrize("kind", ["bernoulli", "categorical"])
def test_nvil_matches_reference_loop(kind):
    theta, w = _ref_problem(kind)
    size = theta[0].numel()
    est = NVIL(LinearBaseline(size, seed=62)).double().eval()  # eval: the statistics stay put
    with torch.no_grad():
        est.mean.fill_(0.9)
        est.var.fill_(2.25)  # scale 1.5
    lib, out = draws(est, kind, theta, w, REF_N, seed=63)
    base = est.baseline.module.python
    ref = _reference(kind, theta, w, 64, method="nvil", c=0.9, s=1.5, base=base)
    assert out.n_evals == 1
    assert_same_law(lib, ref, f"NVIL {kind}")


@pytest.mark.parametrize("kind", ["bernoulli", "categorical"])
@pytest.mark.parametrize("learned", [False, True], ids=["plain", "learned"])
def test_muprop_matches_reference_loop(kind, learned):
    theta, w = _ref_problem(kind)
    if learned:
        est = MuProp(LinearBaseline(theta[0].numel(), seed=65), learned=True).double()
        with torch.no_grad():  # η = 2σ(ρ) = (0.6, 1.3)
            est.rho.copy_(torch.logit(torch.tensor([0.3, 0.65], dtype=D64)))
        kw = {"base": est.baseline.module.python, "eta": (0.6, 1.3)}
    else:
        est, kw = MuProp().double(), {}
    lib, out = draws(est, kind, theta, w, REF_N, seed=66)
    ref = _reference(kind, theta, w, 67, method="muprop", **kw)
    assert out.n_evals == 2
    assert_same_law(lib, ref, f"MuProp {kind} {'learned' if learned else 'plain'}")


def test_reference_loops_are_unbiased():
    # The references themselves agree with Exact (NVIL's θ-part scaled by 1/s).
    for kind in ["bernoulli", "categorical"]:
        theta, w = _ref_problem(kind)
        truth = exact(kind, theta, w)
        ref = _reference(kind, theta, w, 68, 5000, method="muprop")
        assert_mean_matches(ref, truth)
        ref = _reference(kind, theta, w, 69, 5000, method="nvil", c=0.5, s=2.0)
        k = theta.numel()
        scaled = torch.cat([truth[:k] / 2.0, truth[k:]])
        assert_mean_matches(ref, scaled)


# ------------------------------------------------------------ z-tests: MuProp
MUPROP_CASES = [
    ("bernoulli", "plain"),
    ("bernoulli", "learned"),
    ("categorical", "plain"),
    ("categorical", "learned"),
    ("categorical", "custom"),
]


@pytest.mark.parametrize("kind,variant", MUPROP_CASES)
@pytest.mark.parametrize("masks", [False, True], ids=["finite", "masked"])
def test_muprop_unbiased(kind, variant, masks):
    theta, w = problem(kind, B=3, D=3, C=4, seed=71)
    if masks:
        theta = with_masks(kind, theta)
    if variant == "plain":
        est = MuProp().double()
    elif variant == "learned":
        est = sized(MuProp(learned=True, hidden=8).double(), kind, theta, w)
        randomise(est, 72)  # arbitrary η and baseline: still unbiased
    else:
        est = MuProp(LinearBaseline(theta[0].numel(), seed=73)).double()
    g, out = masked_draws(est, kind, theta, w, 6000, seed=74)
    assert torch.isfinite(g).all()
    assert_mean_matches(g, masked_exact(kind, theta, w))
    if masks:
        off = ~torch.isfinite(theta.detach()).reshape(-1)
        assert (g[:, : off.numel()][:, off] == 0).all()
    torch.testing.assert_close(out.loss.detach(), out.value)
    assert out.n_evals == 2 and (out.cv_loss is None) == (variant == "plain")


def test_muprop_is_exact_for_linear_costs():
    # f linear in z: the Taylor control variate is f itself, the signal is 0 and
    # every draw is the exact gradient (zero variance).
    for kind, shape in [("bernoulli", (4, 3)), ("categorical", (4, 3, 5))]:
        gen = torch.Generator().manual_seed(75)
        theta = torch.randn(shape, dtype=D64, generator=gen).requires_grad_()
        w = torch.randn(shape[1:], dtype=D64, generator=gen)
        dims = (-1, -2) if kind == "categorical" else (-1,)

        def f(z, w=w, dims=dims):
            return 3.0 + (z * w).sum(dims)

        base = Categorical if kind == "categorical" else Bernoulli
        (truth,) = exact_gradient(f, Independent(base(logits=theta), 1), theta)
        for seed in range(3):
            q = Independent(base(logits=theta), 1)
            out = MuProp()(f, q, generator=torch.Generator().manual_seed(seed))
            (g,) = torch.autograd.grad(out.loss.sum(), theta)
            torch.testing.assert_close(g, truth)


def test_muprop_evaluates_f_once_on_the_sample_and_the_mean():
    theta = torch.tensor([[0.4, -1.0, 2.0], [0.0, 1.5, -0.3]], dtype=D64, requires_grad=True)
    seen = []

    def f(z):
        seen.append(z.detach().clone())
        return (z**2).sum(-1)

    q = OneHotCategorical(logits=theta)
    out = MuProp()(f, q, generator=torch.Generator().manual_seed(76))
    assert len(seen) == 1 and seen[0].shape == (2, 2, 3)
    torch.testing.assert_close(seen[0][1], torch.softmax(theta.detach(), -1))
    assert set(seen[0][0].unique().tolist()) <= {0.0, 1.0} and (seen[0][0].sum(-1) == 1).all()
    assert out.n_evals == 2 and out.value.shape == (2,)


# --------------------------------------------------------------- z-tests: NVIL
@pytest.mark.parametrize("kind", ["bernoulli", "categorical"])
@pytest.mark.parametrize("masks", [False, True], ids=["finite", "masked"])
@pytest.mark.parametrize("normalize", [True, False], ids=["normalised", "centred"])
def test_nvil_mean_is_the_gradient_over_the_scale(kind, masks, normalize):
    # Statistics frozen at c = 1.3, v = 6.25 (scale 2.5), a random baseline network:
    # the θ-part has mean ∇E[f] / 2.5 (θ enters f only through log q), the
    # decoder's part the exact gradient; with normalize=False the θ-part is exact.
    theta, w = problem(kind, B=3, D=3, C=4, seed=81)
    if masks:
        theta = with_masks(kind, theta)
    est = sized(NVIL(hidden=8, normalize=normalize).double(), kind, theta, w)
    randomise(est.baseline, 82)
    est.eval()
    with torch.no_grad():
        est.mean.fill_(1.3)
        est.var.fill_(6.25)
    assert est.scale == (2.5 if normalize else 1.0)
    g, out = masked_draws(est, kind, theta, w, 8000, seed=83)
    assert torch.isfinite(g).all()
    truth = masked_exact(kind, theta, w)
    k = theta.numel()
    truth[:k] /= est.scale
    assert_mean_matches(g, truth)
    if masks:
        off = ~torch.isfinite(theta.detach()).reshape(-1)
        assert (g[:, :k][:, off] == 0).all()
    torch.testing.assert_close(out.loss.detach(), out.value)
    assert float(est.mean) == 1.3 and float(est.var) == 6.25  # eval: frozen


def test_nvil_first_call_is_unbiased():
    # Training mode, fresh statistics (c = v = 0): plain REINFORCE with the baseline.
    theta, w = problem("categorical", B=3, D=3, C=4, seed=84)
    est = sized(NVIL(hidden=8).double(), "categorical", theta, w)
    randomise(est.baseline, 85)
    g, _ = masked_draws(est, "categorical", theta, w, 8000, seed=86)
    assert_mean_matches(g, masked_exact("categorical", theta, w))
    assert float(est.var) > 1  # the 8000 × 3 signals of this call moved the statistics


# ------------------------------------------------- NVIL statistics, step by step
def test_nvil_statistics_match_a_reference_loop():
    """Several training steps (with Adam steps on cv_loss between them): the running
    mean and variance, the θ-gradient and cv_loss of every step agree with a loop
    over data points that recomputes them from the samples f saw."""
    torch.manual_seed(0)
    B, D = 6, 3
    gen = torch.Generator().manual_seed(87)
    theta = (1.2 * torch.randn(B, D, dtype=D64, generator=gen)).requires_grad_()
    t = torch.tensor([0.3, -0.6, 1.4], dtype=D64)
    seen = []

    def f(z):
        seen.append(z.detach().clone())
        return 8.0 * ((z - t) ** 2).sum(-1) + 5.0 * z[..., 0] * z[..., 2]

    alpha = 0.8
    est = NVIL(hidden=5).double()
    q = Independent(Bernoulli(logits=theta), 1)
    est(f, q)  # sizes the network; resets below
    randomise(est.baseline, 88)
    with torch.no_grad():
        est.mean.zero_()
        est.var.zero_()
    opt = torch.optim.Adam(est.parameters(), lr=0.05)
    c = v = 0.0
    net = est.baseline.module
    for step in range(6):
        seen.clear()
        with torch.no_grad():
            b = net(theta.detach()).tolist()  # the features: the logits of each data point
        out = est(f, q, generator=torch.Generator().manual_seed(100 + step))
        (g,) = torch.autograd.grad(out.loss.sum(), theta)
        z = seen[0].tolist()
        fz = out.value.tolist()
        s = max(1.0, math.sqrt(v))
        p = torch.sigmoid(theta.detach()).tolist()
        want = [[(fz[i] - b[i] - c) / s * (z[i][d] - p[i][d]) for d in range(D)] for i in range(B)]
        torch.testing.assert_close(g, torch.tensor(want, dtype=D64), rtol=1e-10, atol=1e-10)
        cv = sum((fz[i] - c - b[i]) ** 2 for i in range(B)) / B
        assert float(out.cv_loss.detach()) == pytest.approx(cv, rel=1e-10)
        r = [fz[i] - b[i] for i in range(B)]
        m = sum(r) / B
        c = alpha * c + (1 - alpha) * m
        v = alpha * v + (1 - alpha) * sum((x - m) ** 2 for x in r) / B
        assert float(est.mean) == pytest.approx(c, rel=1e-12)
        assert float(est.var) == pytest.approx(v, rel=1e-12)
        opt.zero_grad()
        out.cv_loss.backward()
        opt.step()
    assert v > 1  # the scale was active in the later steps
    est.eval()
    est(f, q)
    assert float(est.mean) == pytest.approx(c, rel=1e-12)  # eval: frozen


# ------------------------------------------------------------------ features
def test_nvil_features_reach_a_user_baseline_which_learns():
    """``est(f, q, features=x)``: the module sees x (detached) and, trained through
    cv_loss, learns E[f | x]."""
    gen = torch.Generator().manual_seed(91)
    B = 64
    x = torch.randn(B, 2, dtype=D64, generator=gen)
    encoder = nn.Linear(2, 4).double()
    got = []

    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1)).double()

        def forward(self, feats):
            got.append(feats)
            return self.net(feats)  # batch + (1,): accepted

    est = NVIL(Recorder())
    h = x.detach().requires_grad_()  # features with a graph: the baseline must not use it
    theta = encoder(x)
    q = Independent(Bernoulli(logits=theta), 1)
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=D64)
    f = lambda z: 10 * (z * weights).sum(-1)  # noqa: E731
    out = est(f, q, features=h)
    assert got[0].shape == (B, 2) and not got[0].requires_grad
    torch.testing.assert_close(got[0], x)
    out.loss.sum().backward()
    assert all(p.grad is None for p in est.parameters())  # loss: nothing to the baseline
    assert encoder.weight.grad is not None
    encoder.zero_grad(set_to_none=True)
    out.cv_loss.backward()  # cv_loss: nothing to the features or the encoder
    assert h.grad is None and encoder.weight.grad is None

    expected = (torch.sigmoid(theta.detach()) * weights).sum(-1) * 10  # E[f | x]
    opt = torch.optim.Adam(est.parameters(), lr=0.02)
    losses = []
    for step in range(300):
        out = est(f, q, features=x, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        out.cv_loss.backward()
        opt.step()
        losses.append(float(out.cv_loss.detach()))
    with torch.no_grad():
        b = est.baseline.module(x).squeeze(-1) + est.mean
    # The residual spread of f about E[f | x] is Var[f | x]; b tracks E[f | x]
    # far better than the global mean does.
    err = float(((b - expected) ** 2).mean())
    spread = float(((expected - expected.mean()) ** 2).mean())
    print(f"\nNVIL features: mean squared error of b(x) + c {err:.3f} vs Var_x E[f|x] {spread:.3f}")
    assert err < 0.1 * spread
    with pytest.raises(ValueError, match="features must be a tensor"):
        est(f, q, features=x[:3])


def test_default_network_reads_features_or_logits():
    theta = torch.randn(5, 3, dtype=D64, requires_grad=True)
    q = Independent(Bernoulli(logits=theta), 1)
    f = lambda z: z.sum(-1)  # noqa: E731
    est = NVIL(hidden=4).double()
    est(f, q, features=torch.randn(5, 2, 7, dtype=D64))  # flattened: 14 inputs
    assert est.baseline.module.net[0].in_features == 14
    est = MuProp(learned=True, hidden=4).double()
    est(f, q)
    assert est.baseline.module.net[0].in_features == 3
    assert isinstance(est.baseline.module, BaselineNet)


# --------------------------------------------------------- the cv_loss contract
@pytest.mark.parametrize("make", [lambda: NVIL(hidden=6), lambda: MuProp(learned=True, hidden=6)])
@pytest.mark.parametrize("kind", ["bernoulli", "categorical"])
def test_loss_and_cv_loss_keep_apart(make, kind):
    theta, w = problem(kind, B=4, seed=92)
    est = make().double()
    q = Independent((Categorical if kind == "categorical" else Bernoulli)(logits=theta), 1)
    f = safe_cost(kind, q, w)
    est(f, q)  # lazy sizing
    randomise(est, 93)
    out = est(f, q)
    out.loss.sum().backward()
    assert theta.grad is not None and w.grad is not None
    assert all(p.grad is None for p in est.parameters())
    theta.grad = w.grad = None
    out = est(f, q)
    out.cv_loss.backward()
    assert theta.grad is None and w.grad is None
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in est.parameters())


def test_muprop_learned_training_lowers_the_variance():
    gen = torch.Generator().manual_seed(94)
    theta = torch.randn(1, 4, 3, dtype=D64, generator=gen).requires_grad_()
    w = torch.randn(4, 3, dtype=D64, generator=gen)

    def f(z):  # strongly nonlinear: the Taylor expansion alone leaves much
        a = (z * w).sum((-1, -2))
        return 20 + torch.sin(3 * a) * 4 + a**3

    reps = theta.detach().expand(64, 4, 3)
    est = MuProp(learned=True, hidden=16).double()
    qr = Independent(Categorical(logits=reps), 1)
    est(f, qr)
    q = Independent(Categorical(logits=theta), 1)

    def variance():
        g, _ = draws_of(est, f, q, theta)
        return g

    before = variance()
    opt = torch.optim.Adam(est.parameters(), lr=0.05)
    for step in range(150):
        out = est(f, qr, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        out.cv_loss.backward()
        opt.step()
    after = variance()
    (truth,) = exact_gradient(f, q, theta)
    assert_mean_matches(after, truth.reshape(-1))
    vb, va = float(before.var(0).sum()), float(after.var(0).sum())
    print(f"\nMuProp learned: trace of the covariance {vb:.4g} -> {va:.4g} after 150 cv steps")
    assert va < 0.8 * vb


def draws_of(est, f, q, theta, n=4000):
    from discograd.diagnostics import gradient_draws

    return gradient_draws(est, f, q, theta, n, generator=torch.Generator().manual_seed(95))


# ------------------------------------------------------------------ the rest
def test_modes_no_grad_and_metadata():
    theta = torch.randn(3, 2, requires_grad=True)
    q = Independent(Bernoulli(logits=theta), 1)
    f = lambda z: (z**2).sum(-1)  # noqa: E731
    with torch.no_grad():
        for est in [NVIL(), MuProp(), MuProp(learned=True)]:
            out = est(f, q)
            assert not out.loss.requires_grad and out.cv_loss is None
    assert MuProp()(f, q).cv_loss is None and list(MuProp().parameters()) == []
    assert NVIL.unbiased is False and NVIL.needs_grad_f is False
    assert MuProp.unbiased is True and MuProp.needs_grad_f is True
    assert "decay=0.8" in repr(NVIL()) and "learned=True" in repr(MuProp(learned=True))
    eta = MuProp(learned=True).eta
    torch.testing.assert_close(eta, torch.ones(2))
    assert MuProp().eta is None


def test_arguments():
    for kwargs, match in [
        ({"decay": 1.0}, "decay=1.0"),
        ({"decay": -0.1}, "decay=-0.1"),
        ({"decay": True}, "decay=True"),
        ({"normalize": 1}, "normalize=1"),
        ({"hidden": 0}, "hidden=0"),
        ({"baseline": lambda x: x}, "baseline"),
    ]:
        with pytest.raises(ValueError, match=match):
            NVIL(**kwargs)
    for kwargs, match in [
        ({"learned": "yes"}, "learned='yes'"),
        ({"hidden": 2.5}, "hidden=2.5"),
        ({"baseline": 3}, "baseline"),
    ]:
        with pytest.raises(ValueError, match=match):
            MuProp(**kwargs)
    theta = torch.zeros(2, 3, requires_grad=True)
    with pytest.raises(ValueError, match="the baseline module returned"):
        NVIL(nn.Identity())(lambda z: z.sum(-1), Categorical(logits=theta))
    for est in [NVIL(), MuProp()]:
        with pytest.raises(TypeError, match=f"{type(est).__name__} does not support Normal"):
            est(lambda z: z, Normal(theta, 1.0))


def test_muprop_stays_unbiased_for_a_step_function():
    # h(z) = f(z̄) + g·(z - z̄) is linear in z with coefficients fixed before the
    # sample: unbiased whatever g is. A count of variables above 1/2 has g = 0.
    theta, _ = problem("bernoulli", B=3, D=4, seed=96)
    f = lambda z: 2.0 * (z > 0.5).sum(-1).double() + (z[..., 0] > 0.5).double()  # noqa: E731
    n = 6000
    leaf = theta.detach().expand((n,) + theta.shape).clone().requires_grad_()
    out = MuProp()(
        f, Independent(Bernoulli(logits=leaf), 1), generator=torch.Generator().manual_seed(97)
    )
    (g,) = torch.autograd.grad(out.loss.sum(), leaf)
    (truth,) = exact_gradient(f, Independent(Bernoulli(logits=theta), 1), theta)
    assert_mean_matches(g.reshape(n, -1), truth.reshape(-1))
