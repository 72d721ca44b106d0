"""HardConcrete, HardKumaraswamy and GaussianRelaxedBernoulli against their math."""

from __future__ import annotations

import itertools
import math
from decimal import Decimal, getcontext

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from scipy.special import expit

from discograd.distributions import GaussianRelaxedBernoulli, HardConcrete, HardKumaraswamy

from conftest import chi_square_pvalue

F64 = torch.float64
LIMITS = (-0.1, 1.1)


def _t(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=F64)


# A few parameter settings per class, as batches (one distribution per entry).
def hard_concrete() -> HardConcrete:
    return HardConcrete(_t([2 / 3, 2 / 3, 0.3, 1.5]), logits=_t([-1.5, 0.4, 2.0, 0.0]))


def hard_kuma() -> HardKumaraswamy:
    return HardKumaraswamy(_t([0.5, 1.0, 3.0, 0.2]), _t([0.7, 2.0, 1.0, 0.3]))


def gaussian_gate() -> GaussianRelaxedBernoulli:
    return GaussianRelaxedBernoulli(_t([-0.2, 0.5, 0.9, 0.3]), _t([0.5, 0.5, 0.2, 1.0]))


FACTORIES = [hard_concrete, hard_kuma, gaussian_gate]
IDS = ["HardConcrete", "HardKumaraswamy", "GaussianRelaxedBernoulli"]


# --------------------------------------------- closed forms, written out anew


def hard_concrete_atoms(alpha: float, tau: float, lo: float, hi: float) -> tuple[float, float]:
    """P(z=0), P(z=1) from the Binary Concrete CDF F(s) = σ(τ logit(s) − α) (Louizos et al.)."""

    def cdf(s: float) -> float:
        return float(expit(tau * (math.log(s) - math.log1p(-s)) - alpha))

    return cdf(-lo / (hi - lo)), 1.0 - cdf((1.0 - lo) / (hi - lo))


def hard_concrete_pdf(z: float, alpha: float, tau: float, lo: float, hi: float) -> float:
    """The stretched Binary Concrete density (Maddison et al.'s form) divided by r − l."""
    s = (z - lo) / (hi - lo)
    num = tau * math.exp(alpha) * s ** (-tau - 1) * (1 - s) ** (-tau - 1)
    return num / (math.exp(alpha) * s ** (-tau) + (1 - s) ** (-tau)) ** 2 / (hi - lo)


def kuma_atoms(a: float, b: float, lo: float, hi: float) -> tuple[float, float]:
    def cdf(x: float) -> float:
        return 1.0 - (1.0 - x**a) ** b

    return cdf(-lo / (hi - lo)), 1.0 - cdf((1.0 - lo) / (hi - lo))


def exact_params(d) -> list[tuple[float, ...]]:
    """Per batch entry, the parameters the reference formulas take."""
    if isinstance(d, HardConcrete):
        return [(float(a), float(t)) for a, t in zip(d.logits, d.temperature, strict=True)]
    if isinstance(d, HardKumaraswamy):
        return [(float(a), float(b)) for a, b in zip(d.a, d.b, strict=True)]
    return [(float(m), float(s)) for m, s in zip(d.loc, d.scale, strict=True)]


def reference_atoms(d) -> np.ndarray:
    out = []
    for p in exact_params(d):
        if isinstance(d, HardConcrete):
            out.append(hard_concrete_atoms(*p, *LIMITS))
        elif isinstance(d, HardKumaraswamy):
            out.append(kuma_atoms(*p, *LIMITS))
        else:
            m, s = p
            out.append((stats.norm.cdf(-m / s), stats.norm.sf((1 - m) / s)))
    return np.array(out)


def reference_pdf(d, i: int, z: float) -> float:
    p = exact_params(d)[i]
    if isinstance(d, HardConcrete):
        return hard_concrete_pdf(z, *p, *LIMITS)
    if isinstance(d, HardKumaraswamy):
        a, b = p
        k = (z - LIMITS[0]) / (LIMITS[1] - LIMITS[0])
        return a * b * k ** (a - 1) * (1 - k**a) ** (b - 1) / (LIMITS[1] - LIMITS[0])
    m, s = p
    return float(stats.norm.pdf(z, m, s))


# ------------------------------------------------------------- the atoms


@pytest.mark.parametrize("factory", FACTORIES, ids=IDS)
def test_closed_form_atoms(factory):
    d = factory()
    ref = reference_atoms(d)
    torch.testing.assert_close(d.prob_zero(), _t(ref[:, 0]), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(d.prob_one(), _t(ref[:, 1]), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(d.prob_nonzero(), _t(1 - ref[:, 0]), rtol=1e-12, atol=1e-14)
    # log_prob at exactly 0 and 1 is the log of the point mass.
    n = d.batch_shape[0]
    torch.testing.assert_close(d.log_prob(torch.zeros(n, dtype=F64)), _t(np.log(ref[:, 0])))
    torch.testing.assert_close(d.log_prob(torch.ones(n, dtype=F64)), _t(np.log(ref[:, 1])))


def test_stochastic_gates_regulariser_is_the_papers():
    # Yamada et al.: P(z > 0) = Φ(μ/σ); the authors' code writes the gate as
    # clamp(mu + 0.5 + σ ε) with regulariser Φ((mu + 0.5)/σ), i.e. loc = mu + 0.5.
    mu, sigma = _t([-0.4, 0.0, 0.3]), 0.5
    d = GaussianRelaxedBernoulli(mu + 0.5, sigma)
    code = 0.5 * (1 + torch.erf((mu + 0.5) / sigma / math.sqrt(2)))
    torch.testing.assert_close(d.prob_nonzero(), code)


@pytest.mark.parametrize("factory", FACTORIES, ids=IDS)
def test_histogram_and_atoms_match_samples(factory):
    # Chi-square over 12 cells per distribution: the two atoms and 10 bins of
    # (0, 1) whose probabilities come from integrating the reference density.
    d = factory()
    n = 40_000
    z = d.sample((n,), generator=torch.Generator().manual_seed(3)).numpy()
    atoms = reference_atoms(d)
    edges = np.linspace(0.0, 1.0, 11)
    pvals: list[float] = []
    for i in range(d.batch_shape[0]):
        zi = z[:, i]
        bins = [
            integrate.quad(lambda v, i=i: reference_pdf(d, i, v), lo, hi, epsabs=1e-12)[0]
            for lo, hi in itertools.pairwise(edges)
        ]
        probs = np.array([atoms[i, 0], *bins, atoms[i, 1]])
        assert abs(probs.sum() - 1) < 1e-7
        inner = zi[(zi > 0) & (zi < 1)]
        counts = np.array([(zi == 0).sum(), *np.histogram(inner, edges)[0], (zi == 1).sum()])
        assert counts.sum() == n
        pvals.append(chi_square_pvalue(counts, probs))
        assert pvals[-1] > 1e-4, (i, counts, probs * n)
    print(f"{type(d).__name__}: chi-square p = {[round(v, 3) for v in pvals]}")


# ---------------------------------------------------------------- the density


@pytest.mark.parametrize("factory", FACTORIES, ids=IDS)
def test_log_density_matches_the_reference_formula(factory):
    d = factory()
    z = torch.linspace(0.01, 0.99, 17, dtype=F64)
    lp = d.log_prob(z[:, None].expand(-1, d.batch_shape[0]))
    ref = [[math.log(reference_pdf(d, i, float(v))) for i in range(lp.shape[1])] for v in z]
    torch.testing.assert_close(lp, _t(ref), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("factory", FACTORIES, ids=IDS)
def test_density_plus_atoms_integrates_to_one(factory):
    d = factory()
    n = d.batch_shape[0]
    for i in range(n):

        def pdf(v: float, i: int = i) -> float:
            return math.exp(float(d.log_prob(torch.full((n,), v, dtype=F64))[i]))

        inner, _ = integrate.quad(pdf, 0.0, 1.0, limit=200, epsabs=1e-12, epsrel=1e-10)
        total = inner + float(d.prob_zero()[i]) + float(d.prob_one()[i])
        assert abs(total - 1.0) < 1e-8


@pytest.mark.parametrize("tau", [1e-3, 0.05, 100.0])
def test_hard_concrete_density_integrates_to_one_at_extreme_temperatures(tau):
    d = HardConcrete(tau, logits=_t([-3.0, 0.5]))
    for i in range(2):

        def pdf(v: float, i: int = i) -> float:
            return math.exp(float(d.log_prob(torch.full((2,), v, dtype=F64))[i]))

        inner, _ = integrate.quad(pdf, 0.0, 1.0, points=[0.5], limit=400, epsabs=1e-13)
        assert abs(inner + float(d.prob_zero()[i] + d.prob_one()[i]) - 1.0) < 1e-8


def test_hard_kumaraswamy_against_torch_kumaraswamy():
    d = hard_kuma()
    lo, hi = LIMITS
    k = torch.linspace(0.1, 0.9, 9, dtype=F64)[:, None].expand(-1, 4)
    kuma = torch.distributions.Kumaraswamy(d.a, d.b)
    torch.testing.assert_close(d.kumaraswamy.log_prob(k), kuma.log_prob(k))
    torch.testing.assert_close(d.log_prob(lo + (hi - lo) * k), kuma.log_prob(k) - math.log(hi - lo))
    # The atoms are the Kumaraswamy CDF at the points that map to 0 and 1
    # (torch's Kumaraswamy is a TransformedDistribution with a cdf).
    x0, x1 = _t(-lo / (hi - lo)), _t((1 - lo) / (hi - lo))
    torch.testing.assert_close(d.prob_zero(), kuma.cdf(x0.expand(4)))
    torch.testing.assert_close(d.prob_one(), 1 - kuma.cdf(x1.expand(4)))
    # Same sampler law as torch's: a two-sample KS test on the unstretched part.
    gen = torch.Generator().manual_seed(11)
    ours = (d.sample((4000,), generator=gen)[:, 2] - lo) / (hi - lo)
    torch.manual_seed(12)
    theirs = kuma.sample((4000,))[:, 2]
    inside = (ours > x0) & (ours < x1)
    theirs_inside = theirs[(theirs > x0) & (theirs < x1)]
    assert stats.ks_2samp(ours[inside].numpy(), theirs_inside.numpy()).pvalue > 1e-3


def _decimal_kuma_log_atoms(a: float, b: float) -> tuple[float, float]:
    """log P(z=0), log P(z=1) of HardKuma in 400-digit decimal arithmetic."""
    getcontext().prec = 400
    lo, hi = Decimal(LIMITS[0]), Decimal(LIMITS[1])
    x0, x1 = -lo / (hi - lo), (1 - lo) / (hi - lo)
    da, db = Decimal(a), Decimal(b)
    p0 = 1 - (1 - (da * x0.ln()).exp()) ** db
    p1 = (1 - (da * x1.ln()).exp()) ** db
    return float(p0.ln()), float(p1.ln())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hard_kumaraswamy_atoms_in_the_tails(dtype):
    # Where x0^a underflows (large a) or rounds to 1 (small a), the log atoms
    # stay accurate: a naive log(1 - (1 - x0^a)^b) gives -inf or 0.
    a = [60.0, 40.0, 1e-4, 2.0, 1e-2]
    b = [0.5, 3.0, 2.0, 1e-6, 50.0]
    d = HardKumaraswamy(torch.tensor(a, dtype=dtype), torch.tensor(b, dtype=dtype))
    ref = np.array([_decimal_kuma_log_atoms(x, y) for x, y in zip(a, b, strict=True)])
    lp0 = d.log_prob(torch.zeros(5, dtype=dtype)).double()
    lp1 = d.log_prob(torch.ones(5, dtype=dtype)).double()
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(lp0, _t(ref[:, 0]), rtol=tol, atol=tol)
    torch.testing.assert_close(lp1, _t(ref[:, 1]), rtol=tol, atol=tol)


# ------------------------------------------------------ reparameterisation


def _expected_value(d, i: int) -> float:
    """E[z] = P(z=1) + ∫_0^1 z p(z) dz, by quadrature."""
    n = d.batch_shape[0]

    def integrand(v: float) -> float:
        return v * math.exp(float(d.log_prob(torch.full((n,), v, dtype=F64))[i]))

    inner, _ = integrate.quad(integrand, 0.0, 1.0, limit=200, epsabs=1e-13, epsrel=1e-11)
    return inner + float(d.prob_one()[i])


PARAM_NAMES = {
    HardConcrete: ("logits", "temperature"),
    HardKumaraswamy: ("a", "b"),
    GaussianRelaxedBernoulli: ("loc", "scale"),
}


@pytest.mark.parametrize("which", [0, 1])
@pytest.mark.parametrize("factory", FACTORIES, ids=IDS)
def test_rsample_gradient_is_the_gradient_of_the_mean(factory, which):
    # The pathwise gradient through the clamp is unbiased for d E[z] / dθ, for
    # each parameter θ; the reference is a central difference of E[z] computed
    # by quadrature. Draws at the atoms get exactly zero gradient.
    d0 = factory()
    cls = type(d0)
    names = PARAM_NAMES[cls]
    values = {k: getattr(d0, k).detach().clone() for k in names}
    name = names[which]
    base = values[name]

    def build(p):
        kw = {**values, name: p}
        if cls is HardConcrete:
            return HardConcrete(kw["temperature"], logits=kw["logits"])
        return cls(kw[names[0]], kw[names[1]])

    n = 100_000
    # One copy of the parameters per draw: row s of the gradient is dz_s/dθ.
    p = base[None].expand(n, -1).clone().requires_grad_()
    z = build(p).rsample(generator=torch.Generator().manual_seed(5))
    (g,) = torch.autograd.grad(z.sum(), p)
    assert torch.isfinite(g).all()
    atoms = (z == 0) | (z == 1)
    assert atoms.any() and (g[atoms] == 0).all() and (g[~atoms] != 0).all()
    h = 1e-5
    zvals = []
    for i in range(base.numel()):
        up, down = base.clone(), base.clone()
        up[i] += h
        down[i] -= h
        ref = (_expected_value(build(up), i) - _expected_value(build(down), i)) / (2 * h)
        se = float(g[:, i].std()) / math.sqrt(n)
        zvals.append(abs(float(g[:, i].mean()) - ref) / se)
        assert zvals[-1] < 4.5, (i, float(g[:, i].mean()), ref, se)
    print(f"{cls.__name__} d E[z]/d {name}: |z| = {[round(v, 2) for v in zvals]}")


# ---------------------------------------------------------------- numerics


def _build(cls, temp: float, dtype: torch.dtype, requires_grad: bool = True):
    """A batch of gates whose spread scales with ``temp``: the temperature, the
    Gaussian's scale, or for HardKuma the size of a and b (small a and b push
    the mass to the atoms as a low temperature does)."""
    gen = torch.Generator().manual_seed(17)
    raw = torch.randn(256, generator=gen) * 3
    if cls is HardConcrete:
        params = {"logits": raw}
        d_args = lambda p: HardConcrete(temp, logits=p["logits"])  # noqa: E731
    elif cls is HardKumaraswamy:
        # a, b from about 1e-3 to 200; 1/a (in d log p / da) must fit in float16.
        params = {"a": math.sqrt(temp) * (raw / 3).exp(), "b": math.sqrt(temp) * (-raw / 3).exp()}
        d_args = lambda p: HardKumaraswamy(p["a"], p["b"])  # noqa: E731
    else:
        params = {"loc": raw / 3, "scale": torch.full((256,), temp)}
        d_args = lambda p: GaussianRelaxedBernoulli(p["loc"], p["scale"])  # noqa: E731
    params = {k: v.to(dtype).requires_grad_(requires_grad) for k, v in params.items()}
    return d_args(params), params


GATES = [HardConcrete, HardKumaraswamy, GaussianRelaxedBernoulli]
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("cls", GATES, ids=IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("temp", [1e-3, 1.0, 100.0])
def test_finite_values_and_gradients(cls, dtype, temp):
    d, params = _build(cls, temp, dtype)
    z = d.rsample((8,), generator=torch.Generator().manual_seed(1))
    assert z.dtype == dtype and torch.isfinite(z).all()
    assert ((z >= 0) & (z <= 1)).all()
    lp = d.log_prob(z)
    assert lp.dtype == dtype and torch.isfinite(lp).all()
    w = torch.linspace(-1, 1, z.numel()).reshape(z.shape).to(dtype)
    grads = torch.autograd.grad((z * w).sum() + lp.sum(), list(params.values()))
    assert all(torch.isfinite(g).all() for g in grads)
    for prob in (d.prob_zero(), d.prob_nonzero(), d.prob_one()):
        assert prob.dtype == dtype and torch.isfinite(prob).all()
        (g,) = torch.autograd.grad(prob.sum(), next(iter(params.values())))
        assert torch.isfinite(g).all()


@pytest.mark.parametrize("cls", GATES, ids=IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_log_prob_is_finite_at_the_exact_atoms(cls, dtype):
    # The rectified gates' own samples include exact 0 and 1; their log_prob
    # (log point masses) and its gradient are finite.
    d, params = _build(cls, 0.05, dtype)
    z = d.rsample((32,), generator=torch.Generator().manual_seed(2))
    assert (z == 0).any() and (z == 1).any() and ((z > 0) & (z < 1)).any()
    lp = d.log_prob(z)
    assert torch.isfinite(lp).all()
    grads = torch.autograd.grad(lp.sum(), list(params.values()))
    assert all(torch.isfinite(g).all() for g in grads)


def test_half_precision_agrees_with_float64():
    for cls in GATES:
        d16, _ = _build(cls, 1.0, torch.float16, requires_grad=False)
        d64, _ = _build(cls, 1.0, torch.float64, requires_grad=False)
        z = d64.sample((4,), generator=torch.Generator().manual_seed(0))
        z = torch.where((z == 0) | (z == 1), z, z.to(torch.float16).double())
        ref = d64.log_prob(z)
        ours = d16.log_prob(z.to(torch.float16)).double()
        # The parameters themselves were rounded to float16.
        torch.testing.assert_close(ours, ref, rtol=2e-2, atol=0.1)
        torch.testing.assert_close(
            d16.prob_nonzero().double(), d64.prob_nonzero(), rtol=1e-2, atol=1e-3
        )


# ------------------------------------------------------- contract details


def test_log_prob_outside_the_support_and_nan():
    d = HardConcrete(0.5, logits=torch.zeros(3), validate_args=False)
    v = torch.tensor([-0.2, 1.5, math.nan])
    out = d.log_prob(v)
    assert torch.isneginf(out[:2]).all() and torch.isnan(out[2])
    with pytest.raises(ValueError, match="support"):
        HardConcrete(0.5, logits=torch.zeros(3), validate_args=True).log_prob(v)


@pytest.mark.parametrize("limits", [(0.0, 1.1), (-0.1, 1.0), (0.2, 1.5), (-0.1, math.inf)])
def test_bad_limits_are_refused(limits):
    with pytest.raises(ValueError, match=r"limits="):
        HardConcrete(0.5, logits=0.0, limits=limits)
    with pytest.raises(ValueError, match=r"limits="):
        HardKumaraswamy(1.0, 1.0, limits=limits)


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="temperature"):
        HardConcrete(0.0, logits=0.0)
    with pytest.raises(ValueError, match="temperature"):
        HardConcrete(torch.tensor(-1.0), logits=0.0, validate_args=True)
    with pytest.raises(ValueError, match="logits"):
        HardConcrete(1.0, logits=torch.tensor(math.nan), validate_args=True)
    with pytest.raises(ValueError, match="parameter a"):
        HardKumaraswamy(torch.tensor(-1.0), 1.0, validate_args=True)
    with pytest.raises(ValueError, match="parameter b"):
        HardKumaraswamy(1.0, torch.tensor(0.0), validate_args=True)
    with pytest.raises(ValueError, match="scale"):
        GaussianRelaxedBernoulli(0.0, -0.5)
    with pytest.raises(ValueError, match="scale"):
        GaussianRelaxedBernoulli(0.0, torch.tensor(0.0), validate_args=True)
    with pytest.raises(TypeError, match="logits"):
        HardConcrete(1.0, logits="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="floating"):
        HardKumaraswamy(torch.tensor(1), 1.0)


def test_limits_change_the_atoms_as_the_formulas_say():
    lo, hi = -0.5, 1.2
    d = HardConcrete(0.7, logits=_t([0.3]), limits=(lo, hi))
    p0, p1 = hard_concrete_atoms(0.3, 0.7, lo, hi)
    torch.testing.assert_close(d.prob_zero(), _t([p0]))
    torch.testing.assert_close(d.prob_one(), _t([p1]))
    z = d.sample((20_000,), generator=torch.Generator().manual_seed(4))[:, 0]
    counts = np.array([(z == 0).sum(), ((z > 0) & (z < 1)).sum(), (z == 1).sum()])
    assert chi_square_pvalue(counts, np.array([p0, 1 - p0 - p1, p1])) > 1e-4


def test_generator_reproducibility_and_expand():
    for cls in GATES:
        d, _ = _build(cls, 1.0, torch.float32, requires_grad=False)
        a = d.sample((3,), generator=torch.Generator().manual_seed(8))
        b = d.sample((3,), generator=torch.Generator().manual_seed(8))
        assert torch.equal(a, b)
        e = d.expand((2, 256))
        assert type(e) is cls and e.limits == d.limits
        v = e.sample()
        torch.testing.assert_close(e.log_prob(v), d.log_prob(v))
        torch.testing.assert_close(e.prob_nonzero(), d.prob_nonzero().expand(2, 256))


@pytest.mark.parametrize("factory", FACTORIES, ids=IDS)
def test_gradcheck_of_log_prob_and_atoms(factory):
    # log_prob in the value (interior points) and in both parameters, and the
    # closed-form atoms in both parameters, against finite differences.
    d0 = factory()
    cls = type(d0)
    names = PARAM_NAMES[cls]
    p0 = tuple(getattr(d0, k).detach().clone().requires_grad_() for k in names)

    def build(a, b):
        if cls is HardConcrete:
            return HardConcrete(b, logits=a, validate_args=False)
        return cls(a, b, validate_args=False)

    value = torch.tensor([0.13, 0.5, 0.77, 0.31], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, a, b: build(a, b).log_prob(v), (value, *p0))
    atoms = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=F64)
    assert torch.autograd.gradcheck(lambda a, b: build(a, b).log_prob(atoms), p0)
    assert torch.autograd.gradcheck(lambda a, b: build(a, b).prob_nonzero(), p0)
