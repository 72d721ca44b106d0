"""InvertibleGaussian (IGR-I) and LogisticNormal against their math and against torch."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from discograd.distributions import InvertibleGaussian, LogisticNormal

from conftest import Z_TOL, chi_square_pvalue

F64 = torch.float64


def _params(batch: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    loc = torch.randn(batch, n, generator=gen, dtype=F64)
    scale = torch.rand(batch, n, generator=gen, dtype=F64) + 0.3
    return loc, scale


# ----------------------------------------------- closed forms, written out anew


def igr_logpdf(x: np.ndarray, mu: np.ndarray, sigma: np.ndarray, tau: float, delta: float) -> float:
    """Potapczynski et al.'s change of variables: y_k = τ(log x_k − log x_K + log δ),
    |det ∂y/∂x_{1:K−1}| = τ^(K−1) / Π_k x_k."""
    y = tau * (np.log(x[:-1]) - np.log(x[-1]) + math.log(delta))
    jac = (len(x) - 1) * math.log(tau) - np.log(x).sum()
    return float(stats.norm.logpdf(y, mu, sigma).sum() + jac)


def softmax_pp(v: np.ndarray, delta: float) -> np.ndarray:
    """The authors' softmax++: e^v / (Σ e^v + δ), and the remainder as the last coordinate."""
    head = np.exp(v) / (np.exp(v).sum() + delta)
    return np.append(head, 1.0 - head.sum())


@pytest.mark.parametrize("tau", [0.3, 1.0, 2.5])
@pytest.mark.parametrize("delta", [1.0, 0.4])
def test_igr_density_and_map_match_the_paper(tau, delta):
    loc, scale = _params(6, 3)
    d = InvertibleGaussian(loc, scale, tau, delta=delta)
    y = d.rsample_gaussian(generator=torch.Generator().manual_seed(1))
    x = d.from_gaussian(y)
    ref_x = np.stack([softmax_pp(row / tau, delta) for row in y.numpy()])
    np.testing.assert_allclose(x.numpy(), ref_x, rtol=1e-12, atol=1e-15)
    ref = [igr_logpdf(x[i].numpy(), loc[i].numpy(), scale[i].numpy(), tau, delta) for i in range(6)]
    torch.testing.assert_close(d.log_prob(x), torch.tensor(ref, dtype=F64))
    torch.testing.assert_close(d.log_prob_gaussian(y), torch.tensor(ref, dtype=F64))


@pytest.mark.parametrize("tau", [0.3, 1.0, 2.5])
def test_logistic_normal_is_torchs_at_loc_over_tau(tau):
    loc, scale = _params(5, 4)
    ours = LogisticNormal(loc, scale, tau)
    theirs = torch.distributions.LogisticNormal(loc / tau, scale / tau)
    x = theirs.sample((7,))
    torch.testing.assert_close(ours.log_prob(x), theirs.log_prob(x))
    v = torch.randn(7, 5, 4, dtype=F64, generator=torch.Generator().manual_seed(2))
    sb = torch.distributions.StickBreakingTransform()
    torch.testing.assert_close(ours.from_gaussian(v * tau), sb(v))
    if tau == 1.0:
        torch.testing.assert_close(LogisticNormal(loc, scale).log_prob(x), theirs.log_prob(x))


def test_two_categories_igr_is_torchs_logistic_normal():
    # For K = 2 softmax([v, 0]) and the stick-breaking map coincide (offset log 1 = 0).
    loc, scale = _params(5, 1)
    x = torch.distributions.LogisticNormal(loc, scale).sample((6,))
    for tau in (0.5, 1.0):
        torch.testing.assert_close(
            InvertibleGaussian(loc, scale, tau).log_prob(x),
            torch.distributions.LogisticNormal(loc / tau, scale / tau).log_prob(x),
        )


# ------------------------------------------------------------ normalisation


def _quad_k2(d) -> list[float]:
    """∫_0^1 p(x_1) dx_1 per batch entry, in logit coordinates s (no endpoint
    singularity), by the trapezoid rule on a fine grid: at these temperatures the
    integrand's width in s is at least 0.05, the step 0.003."""
    s = torch.linspace(-300, 300, 200_001, dtype=F64)
    x = torch.stack([torch.sigmoid(s), torch.sigmoid(-s)], -1)
    log_jac = torch.nn.functional.logsigmoid(s) + torch.nn.functional.logsigmoid(-s)
    f = (d.log_prob(x[:, None, :].expand(-1, d.batch_shape[0], 2)) + log_jac[:, None]).exp()
    return torch.trapezoid(f, s, dim=0).tolist()


@pytest.mark.parametrize("cls", [InvertibleGaussian, LogisticNormal])
@pytest.mark.parametrize("tau", [0.1, 1.0, 4.0])
def test_density_integrates_to_one_k2(cls, tau):
    loc, scale = _params(3, 1, seed=4)
    d = cls(loc, scale, tau)
    for total in _quad_k2(d):
        assert abs(total - 1) < 1e-7


@pytest.mark.parametrize("cls", [InvertibleGaussian, LogisticNormal])
def test_density_integrates_to_one_k3(cls):
    # ∫ p(x) dx_1 dx_2 over the simplex, in additive-log-ratio coordinates s
    # (x = softmax(s_1, s_2, 0)) on a trapezoid grid; the Jacobian |det ∂x/∂s|
    # comes from central differences, not from a closed form under test.
    loc = torch.tensor([0.3, -0.4], dtype=F64)
    scale = torch.tensor([0.8, 1.2], dtype=F64)
    d = cls(loc, scale, 1.5)
    grid = torch.linspace(-9, 9, 361, dtype=F64)
    s = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)

    def alr_inverse(t: torch.Tensor) -> torch.Tensor:
        return torch.softmax(torch.cat([t, torch.zeros_like(t[:, :1])], -1), -1)

    h = 1e-5
    cols = []
    for j in range(2):
        e = torch.zeros(2, dtype=F64)
        e[j] = h
        cols.append((alr_inverse(s + e) - alr_inverse(s - e))[:, :2] / (2 * h))
    det = torch.linalg.det(torch.stack(cols, -1)).abs()
    f = (d.log_prob(alr_inverse(s)).exp() * det).reshape(361, 361)
    step = float(grid[1] - grid[0])
    total = float(torch.trapezoid(torch.trapezoid(f, dx=step), dx=step))
    assert abs(total - 1) < 1e-6, total


@pytest.mark.parametrize("cls", [InvertibleGaussian, LogisticNormal])
def test_histogram_matches_density_k2(cls):
    loc, scale = _params(2, 1, seed=7)
    # For K = 2 the two maps coincide at δ = 1: IGR gets another δ here.
    d = LogisticNormal(loc, scale, 0.7) if cls is LogisticNormal else cls(loc, scale, 0.7, 2.5)
    n = 30_000
    x = d.sample((n,), generator=torch.Generator().manual_seed(8))[..., 0].numpy()
    edges = np.linspace(0, 1, 13)
    for i in range(2):

        def pdf(v: float, i: int = i) -> float:
            pt = torch.tensor([[v, 1 - v]], dtype=F64).expand(2, 2)
            return math.exp(float(d.log_prob(pt)[i]))

        probs = np.array(
            [integrate.quad(pdf, a, b, limit=200)[0] for a, b in itertools.pairwise(edges)]
        )
        assert abs(probs.sum() - 1) < 1e-6
        counts = np.histogram(x[:, i], edges)[0]
        pval = chi_square_pvalue(counts, probs)
        print(f"{cls.__name__} entry {i}: histogram chi-square p = {pval:.3f}")
        assert pval > 1e-4


# ------------------------------------------------------- discrete limits


@pytest.mark.parametrize("tau", [1e-3, 0.5, 3.0])
@pytest.mark.parametrize("delta", [1.0, 5.0])
def test_igr_argmax_is_the_argmax_of_y_and_tau_log_delta(tau, delta):
    loc, scale = _params(50, 4, seed=9)
    d = InvertibleGaussian(loc, scale, tau, delta=delta)
    y = d.rsample_gaussian((20,), generator=torch.Generator().manual_seed(10))
    x = d.from_gaussian(y)
    scores = torch.cat([y, torch.full_like(y[..., :1], tau * math.log(delta))], -1)
    assert torch.equal(x.argmax(-1), scores.argmax(-1))


def test_logistic_normal_limit_is_the_closed_form_categorical():
    loc = torch.tensor([[0.2, -0.5, 0.1, 0.6], [-1.0, 0.0, 0.5, -0.2]], dtype=F64)
    scale = torch.tensor([[0.5, 1.0, 0.7, 1.5], [1.0, 0.3, 0.8, 1.1]], dtype=F64)
    d = LogisticNormal(loc, scale, 1e-4)
    probs = d.limit_probs()
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, dtype=F64))
    n = 40_000
    x = d.sample((n,), generator=torch.Generator().manual_seed(12))
    for i in range(2):
        counts = np.bincount(x[:, i].argmax(-1).numpy(), minlength=5)
        p = chi_square_pvalue(counts, probs[i].numpy())
        print(f"LogisticNormal tau=1e-4 argmax vs limit_probs: chi-square p = {p:.3f}")
        assert p > 1e-4, (counts, probs[i] * n)
    # Near one-hot at that temperature.
    assert float((x.max(-1).values > 0.99).double().mean()) > 0.99


# ---------------------------------------------------------------- KL


@pytest.mark.parametrize("cls", [InvertibleGaussian, LogisticNormal])
def test_closed_form_kl_matches_monte_carlo(cls):
    loc_q, scale_q = _params(3, 3, seed=13)
    loc_p, scale_p = _params(3, 3, seed=14)
    q, p = cls(loc_q, scale_q, 0.5), cls(loc_p, scale_p, 0.5)
    kl = torch.distributions.kl_divergence(q, p)
    y = q.rsample_gaussian((20_000,), generator=torch.Generator().manual_seed(15))
    diff = q.log_prob_gaussian(y) - p.log_prob_gaussian(y)
    z = (diff.mean(0) - kl).abs() / (diff.std(0) / math.sqrt(diff.shape[0]))
    print(f"{cls.__name__} KL closed form vs Monte Carlo: |z| = {z.tolist()}")
    assert float(z.max()) < Z_TOL
    # The same on the simplex, through log_prob of the samples.
    x = q.from_gaussian(y)
    torch.testing.assert_close(q.log_prob(x) - p.log_prob(x), diff)
    with pytest.raises(NotImplementedError, match="same temperature"):
        torch.distributions.kl_divergence(q, cls(loc_p, scale_p, 0.7))


# ---------------------------------------------------------------- numerics

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("cls", [InvertibleGaussian, LogisticNormal])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tau", [1e-3, 1.0, 100.0])
def test_finite_values_and_gradients(cls, dtype, tau):
    # The true gradients are O(K/τ) per sample (the Jacobian term): at τ = 1e-3
    # a sum over several samples, or a small scale, exceeds float16's range, so
    # 16-bit runs take one sample per parameter and scales from 0.5.
    gen = torch.Generator().manual_seed(16)
    half = dtype in (torch.float16, torch.bfloat16)
    loc = (torch.randn(64, 5, generator=gen) * 3).to(dtype).requires_grad_()
    scale = (torch.rand(64, 5, generator=gen) + (0.5 if half else 0.1)).to(dtype).requires_grad_()
    d = cls(loc, scale, tau)
    shape = () if half else (4,)
    x = d.rsample(shape, generator=gen)
    assert x.dtype == dtype and torch.isfinite(x).all()
    assert d.support.check(x).all()
    lp = d.log_prob(x)
    assert lp.dtype == dtype and torch.isfinite(lp).all()
    w = torch.linspace(-1, 1, x.numel()).reshape(x.shape).to(dtype)
    grads = torch.autograd.grad((x * w).sum() + lp.sum(), (loc, scale))
    assert all(torch.isfinite(g).all() for g in grads)
    y = d.rsample_gaussian(shape, generator=gen)
    lg = d.log_prob_gaussian(y)
    assert torch.isfinite(lg).all()
    grads = torch.autograd.grad(lg.sum(), (loc, scale))
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("cls", [InvertibleGaussian, LogisticNormal])
def test_log_prob_gaussian_is_exact_at_low_temperature(cls):
    # float32 against float64 at the same y: the Gaussian path never underflows.
    loc, scale = _params(32, 4, seed=17)
    d64 = cls(loc, scale, 1e-3)
    d32 = cls(loc.float(), scale.float(), 1e-3)
    y = d32.rsample_gaussian(generator=torch.Generator().manual_seed(18))
    torch.testing.assert_close(
        d32.log_prob_gaussian(y).double(), d64.log_prob_gaussian(y.double()), rtol=1e-5, atol=1e-3
    )
    # At this temperature the value path reads underflowed coordinates as tiny.
    assert (d32.from_gaussian(y) == 0).any()


def test_log_prob_matches_log_prob_gaussian_where_nothing_underflows():
    for cls in (InvertibleGaussian, LogisticNormal):
        loc, scale = _params(20, 3, seed=19)
        d = cls(loc, scale, 0.8)
        y = d.rsample_gaussian((5,), generator=torch.Generator().manual_seed(20))
        torch.testing.assert_close(d.log_prob(d.from_gaussian(y)), d.log_prob_gaussian(y))


# ------------------------------------------------------- contract details


def test_shapes_temperatures_and_expand():
    loc, scale = _params(4, 2)
    temps = torch.tensor([[0.2], [0.5], [1.0], [3.0]], dtype=F64)
    for cls in (InvertibleGaussian, LogisticNormal):
        d = cls(loc, scale, temps)
        assert d.batch_shape == (4,) and d.event_shape == (3,)
        v = d.sample((7,), generator=torch.Generator().manual_seed(0))
        lp = d.log_prob(v)
        assert v.shape == (7, 4, 3) and lp.shape == (7, 4)
        for i in range(4):
            row = cls(loc[i], scale[i], float(temps[i, 0]))
            torch.testing.assert_close(lp[:, i], row.log_prob(v[:, i].clone()))
        e = d.expand((2, 4))
        assert type(e) is cls and e.sample().shape == (2, 4, 3)
        torch.testing.assert_close(
            e.log_prob(v[:2, None].expand(2, 2, 4, 3)), lp[:2, None].expand(2, 2, 4)
        )
        a = d.sample((3,), generator=torch.Generator().manual_seed(1))
        assert torch.equal(a, d.sample((3,), generator=torch.Generator().manual_seed(1)))
    assert InvertibleGaussian(loc, scale, 0.5, delta=3.0).expand((2, 4)).delta == 3.0


def test_bad_arguments():
    loc = torch.zeros(3)
    with pytest.raises(ValueError, match="delta=0"):
        InvertibleGaussian(loc, 1.0, 0.5, delta=0.0)
    with pytest.raises(ValueError, match="delta=-1"):
        InvertibleGaussian(loc, 1.0, 0.5, delta=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        InvertibleGaussian(loc, 1.0, 0.0)
    with pytest.raises(ValueError, match="trailing dimension"):
        LogisticNormal(torch.zeros(3, 2), 1.0, torch.tensor([0.5, 1.0, 2.0]))
    with pytest.raises(ValueError, match="scale=-1"):
        LogisticNormal(loc, -1.0)
    with pytest.raises(ValueError, match="scale"):
        LogisticNormal(loc, torch.tensor([1.0, 0.0, 1.0]), validate_args=True)
    with pytest.raises(ValueError, match="loc"):
        LogisticNormal(torch.tensor([0.0, math.nan]), 1.0, validate_args=True)
    with pytest.raises(ValueError, match="last dimension"):
        LogisticNormal(torch.tensor(0.0), 1.0)
    with pytest.raises(TypeError, match="loc"):
        InvertibleGaussian([0.0, 1.0], 1.0, 0.5)  # type: ignore[arg-type]
    d = InvertibleGaussian(loc, 1.0, 0.5, validate_args=True)
    with pytest.raises(ValueError, match="support"):
        d.log_prob(torch.tensor([0.5, 0.6, 0.1, 0.1]))


@pytest.mark.parametrize("cls", [InvertibleGaussian, LogisticNormal])
def test_gradcheck_of_log_prob(cls):
    loc, scale = _params(2, 3, seed=21)
    loc.requires_grad_()
    scale.requires_grad_()
    tau = torch.tensor(0.7, dtype=F64, requires_grad=True)
    x = cls(loc, scale, 0.7).sample(generator=torch.Generator().manual_seed(22))
    x = x.clone().requires_grad_()

    def f(v, m, s, t):
        return cls(m, s, t, validate_args=False).log_prob(v)

    assert torch.autograd.gradcheck(f, (x, loc, scale, tau))
    y = torch.randn(2, 3, dtype=F64, generator=torch.Generator().manual_seed(23))
    y.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda v, m, s, t: cls(m, s, t).log_prob_gaussian(v), (y, loc, scale, tau)
    )
