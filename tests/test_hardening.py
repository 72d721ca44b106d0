"""Regression tests for issue 11, items 1–8: no silent wrong answer at the edges.

Each test names the item it covers. Together with ``test_conformance.py`` (every
registered estimator × dtype × mask × distribution × cost) they pin down:
deterministic Bernoulli variables (±inf logits), zero probabilities given
through ``probs=``, integer costs, mixed precision, invalid logits, ELBO-style
costs under argument validation and costs that ignore ``z``.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import (
    Bernoulli,
    Categorical,
    Distribution,
    Independent,
    OneHotCategorical,
)

from discograd.baselines import EMA, Learned
from discograd.diagnostics import exact_gradient
from discograd.estimators import (
    AR,
    ARM,
    ARSM,
    REBAR,
    REINFORCE,
    RELAX,
    RLOO,
    DisARM,
    Exact,
    GumbelRao,
    GumbelSoftmax,
    ReinMax,
    STGumbelSoftmax,
    StraightThrough,
    registry,
)

from conftest import assert_mean_matches

W3 = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------- item 1
@pytest.mark.parametrize("inf", [-math.inf, math.inf])
def test_item1_exact_treats_infinite_bernoulli_logits_as_deterministic(inf):
    """Item 1: a ±inf Bernoulli logit is a certain variable, not an impossible one."""
    theta = torch.tensor([inf, 0.3, 1.0], dtype=torch.float64, requires_grad=True)

    def f(b):
        return (b * W3).sum(-1) ** 2

    out = Exact()(f, Independent(Bernoulli(logits=theta), 1))
    # By hand: b0 is fixed, b1 and b2 are independent Bernoulli(σ(0.3)), Bernoulli(σ(1)).
    p1, p2 = torch.sigmoid(theta[1:].detach())
    b0 = 1.0 if inf > 0 else 0.0
    want = sum(
        (p1 if b1 else 1 - p1) * (p2 if b2 else 1 - p2) * (b0 + 2 * b1 + 3 * b2) ** 2
        for b1 in (0, 1)
        for b2 in (0, 1)
    )
    assert float(out.value) == pytest.approx(float(want), rel=1e-12)
    if inf < 0:
        assert float(out.value) == pytest.approx(13.92, abs=5e-3)  # the figure
    (g,) = exact_gradient(f, Independent(Bernoulli(logits=theta), 1), theta)
    assert torch.isfinite(g).all()
    assert g[0] == 0  # a certain variable: its logit does not move E[f]
    # The finite logits' gradient: by finite differences of the closed form.
    h = 1e-6
    for i in (1, 2):
        plus, minus = theta.detach().clone(), theta.detach().clone()
        plus[i] += h
        minus[i] -= h
        fd = (
            Exact()(f, Independent(Bernoulli(logits=plus), 1)).value
            - Exact()(f, Independent(Bernoulli(logits=minus), 1)).value
        ) / (2 * h)
        assert float(g[i]) == pytest.approx(float(fd), rel=1e-6)


# ----------------------------------------------------------------- item 2
#: every registered estimator class (presets are instances of these)
ALL_ESTIMATORS = [e.cls for e in registry.infos(presets=False)]


def _supports(cls, kind: str) -> bool:
    return kind in cls.supports


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
@pytest.mark.parametrize("cls", ALL_ESTIMATORS, ids=lambda c: c.__name__)
def test_item2_integer_costs_are_promoted(cls, dtype):
    """Item 2: an integer or bool cost is promoted to the compute dtype, gradient intact."""
    kind = "categorical" if _supports(cls, "categorical") else "bernoulli"
    theta = torch.randn(4, 3, 3 if kind == "categorical" else 1, generator=_gen(1))
    theta = theta.squeeze(-1).requires_grad_()
    if kind == "categorical":
        q = Independent(OneHotCategorical(logits=theta), 1)

        def f(z):
            count = z[..., 0].round().to(torch.int64).sum(-1)  # how many variables chose 0
            return (count >= 2) if dtype == torch.bool else (3 * count).to(dtype)
    else:
        q = Independent(Bernoulli(logits=theta), 1)

        def f(z):
            count = z.round().to(torch.int64).sum(-1)
            return (count >= 2) if dtype == torch.bool else (3 * count).to(dtype)

    # a 2-sample bound keeps ExactMultiSample's sum over tuples small (27^2)
    est = cls(2) if cls.multi_sample else cls()
    out = est(f, q, generator=_gen(2))
    assert out.loss.dtype == torch.float32 and out.value.dtype == torch.float32
    assert out.loss.requires_grad
    (g,) = torch.autograd.grad(out.loss.sum(), theta)
    assert torch.isfinite(g).all()
    # Estimators that need ∂f/∂z (REBAR and RELAX among the unbiased ones) are unbiased
    # only for an f differentiable in z; an integer f is a step function.
    if cls.unbiased and not cls.needs_grad_f:
        # Integer costs carry information: the estimate is not identically zero.
        n = 400
        leaf = theta.detach().expand(n, *theta.shape).clone().requires_grad_()
        base = OneHotCategorical if kind == "categorical" else Bernoulli
        qn = Independent(base(logits=leaf), 1)
        out = est(f, qn, generator=_gen(3))
        (gn,) = torch.autograd.grad(out.loss.sum(), leaf)
        if not cls.exact:
            assert gn.abs().sum() > 0
        q1 = Independent(base(logits=theta), 1)
        # multi-sample-bound estimators: f is their log weight, the truth the bound's
        k = est.bound_samples if cls.multi_sample else None
        exact = exact_gradient(lambda z: f(z).double(), q1, theta, n_samples=k)[0]
        # An estimate that is exact up to float32 rounding (IndeCateR on the additive
        # integer cost) has a spread of rounding errors only: z-testing its mean
        # against the float64 truth would measure float32 rounding, not bias.
        if float((gn.double().mean(0) - exact.double()).abs().max()) > 1e-5:
            assert_mean_matches(gn.double(), exact.double())


# ----------------------------------------------------------------- item 3
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize(
    "cls", [REINFORCE, RLOO, STGumbelSoftmax, ARSM, REBAR, AR, GumbelRao, ReinMax, StraightThrough]
)
def test_item3_zero_probabilities_are_never_sampled(cls, dtype):
    """Item 3: a category of probability exactly 0 (given through probs=) never reaches f."""
    probs = torch.tensor([0.0, 0.25, 0.0, 0.75], dtype=dtype).expand(20_000, 4)
    seen = torch.zeros(4, dtype=torch.float64)

    def f(z):
        seen.add_(z.detach().double().reshape(-1, 4).sum(0))
        return (z * torch.arange(4, dtype=z.dtype)).sum(-1)

    cls()(f, OneHotCategorical(probs=probs), generator=_gen(4))
    assert seen[0] == 0 and seen[2] == 0, f"zero-probability categories drawn: {seen.tolist()}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("p", [0.0, 1.0])
def test_item3_bernoulli_probs_zero_and_one_are_certain(dtype, p):
    """Item 3: Bernoulli(probs=0) never draws a 1 (probs=1 never a 0), in every dtype."""
    probs = torch.full((50_000,), p, dtype=dtype)
    for cls in (REINFORCE, ARM, DisARM, REBAR, STGumbelSoftmax, StraightThrough, ReinMax):
        got = []

        def f(b, got=got):
            got.append(b.detach())
            return b.float()

        cls()(f, Bernoulli(probs=probs), generator=_gen(5))
        hard = torch.cat([g.reshape(-1) for g in got[:1]])
        assert bool((hard == p).all()), f"{cls.__name__}: Bernoulli(probs={p}) drew {1 - p}"


def test_item3_exact_with_infinite_cost_on_impossible_category():
    """Item 3: Exact ignores an impossible category given through probs=, even if f = inf there."""
    probs = torch.tensor([0.0, 0.4, 0.6], dtype=torch.float16, requires_grad=True)

    def f(z):
        v = z.float() @ torch.tensor([1.0, 2.0, 3.0])
        return torch.where(z[..., 0] > 0, math.inf, v)

    out = Exact()(f, OneHotCategorical(probs=probs))
    assert float(out.value) == pytest.approx(0.4 * 2 + 0.6 * 3, rel=1e-3)
    (g,) = torch.autograd.grad(out.loss, probs)
    assert torch.isfinite(g).all()


def test_item3_zero_probability_behaves_like_masked_logit():
    """Item 3: probs with zeros give the Exact value and logit-gradient of -inf logits."""
    theta = torch.tensor([[-math.inf, 0.2, 1.0], [0.5, -math.inf, -0.3]], requires_grad=True)

    def f(z):
        return ((z * torch.tensor([1.0, -2.0, 3.0])).sum(-1) - 0.5) ** 2

    by_logits = Exact()(f, OneHotCategorical(logits=theta))
    (g_logits,) = torch.autograd.grad(by_logits.loss.sum(), theta)
    by_probs = Exact()(f, OneHotCategorical(probs=torch.softmax(theta, -1)))
    (g_probs,) = torch.autograd.grad(by_probs.loss.sum(), theta)
    torch.testing.assert_close(by_probs.value, by_logits.value)
    torch.testing.assert_close(g_probs, g_logits)
    assert (g_probs[~torch.isfinite(theta)] == 0).all()


# ----------------------------------------------------------------- item 4
BERNOULLI = [c for c in ALL_ESTIMATORS if "bernoulli" in c.supports]


@pytest.mark.parametrize("cls", BERNOULLI, ids=lambda c: c.__name__)
def test_item4_infinite_bernoulli_logits_stay_finite(cls):
    """Item 4: deterministic Bernoulli variables give finite loss, gradients and cv_loss."""
    theta = torch.tensor([[-math.inf, 0.3, math.inf], [0.1, math.inf, -0.7]], requires_grad=True)
    w = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)

    def f(b):
        return ((b * w).sum(-1) - 0.3) ** 2

    est = cls()
    for step in range(3):  # cv_loss must stay finite after control-variate steps too
        q = Independent(Bernoulli(logits=theta), 1)
        out = est(f, q, generator=_gen(6 + step))
        assert torch.isfinite(out.value).all()
        assert torch.isfinite(out.loss).all(), f"loss {out.loss}"
        torch.testing.assert_close(out.loss.detach(), out.value)
        g_theta, g_w = torch.autograd.grad(out.loss.sum(), (theta, w), retain_graph=True)
        assert torch.isfinite(g_theta).all() and torch.isfinite(g_w).all(), g_theta
        assert (g_theta[torch.isinf(theta)] == 0).all()
        if out.cv_loss is not None:
            assert torch.isfinite(out.cv_loss)
            params = [p for p in est.parameters() if p.requires_grad]
            grads = torch.autograd.grad(out.cv_loss, params, allow_unused=True)
            for p, g in zip(params, grads, strict=True):
                if g is not None:
                    assert torch.isfinite(g).all()
                    with torch.no_grad():
                        p -= 0.01 * g
    for p in est.parameters():
        assert torch.isfinite(p).all()


def test_item4_learned_baseline_with_infinite_bernoulli_logits():
    """Item 4: the Learned baseline's module sees finite features for ±inf logits."""
    theta = torch.tensor([[-math.inf, 0.3, math.inf]] * 4, requires_grad=True)
    module = torch.nn.Linear(3, 1)
    est = REINFORCE(baseline=Learned(module))
    out = est(lambda b: b.sum(-1), Independent(Bernoulli(logits=theta), 1), generator=_gen(7))
    assert torch.isfinite(out.loss).all() and torch.isfinite(out.cv_loss)
    (g,) = torch.autograd.grad(out.cv_loss, module.weight)
    assert torch.isfinite(g).all()


# ----------------------------------------------------------------- item 5
def test_item5_ema_baseline_in_mixed_precision():
    """Item 5: float16 logits, float32 costs around 1e5: the EMA baseline does not overflow."""
    theta = torch.zeros(64, 4, dtype=torch.float16, requires_grad=True)
    est = REINFORCE(baseline=EMA(0.5))
    for step in range(4):
        q = OneHotCategorical(logits=theta, validate_args=False)
        out = est(lambda z: 1e5 + z.float() @ torch.arange(4.0), q, generator=_gen(8 + step))
        assert torch.isfinite(out.loss).all() and torch.isfinite(out.value).all()
        (g,) = torch.autograd.grad(out.loss.sum(), theta)
        if step > 0:  # from the second call the baseline removes the 1e5
            assert torch.isfinite(g).all()


def test_item5_ar_large_costs_in_float16():
    """Item 5: AR with float16 logits and costs around 3e4 gives no NaN loss rows."""
    theta = torch.zeros(2000, 2, 5, dtype=torch.float16, requires_grad=True)
    q = Independent(OneHotCategorical(logits=theta, validate_args=False), 1)
    out = AR()(lambda z: 3e4 + z.float().sum((-1, -2)), q, generator=_gen(9))
    assert torch.isfinite(out.loss).all(), int((~torch.isfinite(out.loss)).sum())
    torch.testing.assert_close(out.loss.detach(), out.value)


def test_item5_learned_baseline_dtype_follows_value():
    """Item 5: a float32 module on float16 logits: loss has the dtype of value."""
    # (torch's own simplex check rejects float16 probabilities: validate_args=False)
    theta = torch.randn(8, 4, generator=_gen(10)).half().requires_grad_()
    torch.manual_seed(0)  # the module's initialisation
    est = REINFORCE(baseline=Learned(torch.nn.Linear(4, 1)))
    out = est(
        lambda z: (z * 2).sum(-1),
        OneHotCategorical(logits=theta, validate_args=False),
        generator=_gen(10),
    )
    assert out.value.dtype == torch.float16
    assert out.loss.dtype == out.value.dtype


# ----------------------------------------------------------------- item 6
INVALID = {
    "nan-logits": lambda: Categorical(
        logits=torch.tensor([0.0, math.nan, 1.0]), validate_args=False
    ),
    "+inf-categorical": lambda: OneHotCategorical(
        logits=torch.tensor([0.0, math.inf, 1.0]), validate_args=False
    ),
    "all-masked": lambda: Categorical(logits=torch.full((2, 3), -math.inf), validate_args=False),
    "nan-probs": lambda: Categorical(probs=torch.tensor([0.5, math.nan, 0.5]), validate_args=False),
    "negative-probs": lambda: Categorical(
        probs=torch.tensor([0.5, -0.1, 0.6]), validate_args=False
    ),
    "nan-bernoulli": lambda: Bernoulli(logits=torch.tensor([0.0, math.nan]), validate_args=False),
    "bernoulli-probs>1": lambda: Bernoulli(probs=torch.tensor([0.5, 1.5]), validate_args=False),
}
ITEM6 = [
    (name, cls)
    for name in INVALID
    for cls in (Exact, REINFORCE, STGumbelSoftmax, ARSM, ARM, REBAR)
    if ("bernoulli" if "bernoulli" in name else "categorical") in cls.supports
]


@pytest.mark.parametrize(("name", "cls"), ITEM6, ids=[f"{n}-{c.__name__}" for n, c in ITEM6])
def test_item6_invalid_parameters_are_refused(name, cls):
    """Item 6: NaN / +inf categorical logits, bad probs (validate_args=False) raise ValueError."""
    default = Distribution._validate_args
    Distribution.set_default_validate_args(False)  # OneHotCategorical's inner Categorical
    try:
        q = INVALID[name]()
    finally:
        Distribution.set_default_validate_args(default)

    def f(z):
        return z if isinstance(q, Bernoulli) else z.float().sum(-1)

    with pytest.raises(ValueError, match=r"logits|probs"):
        cls()(f, q)


def test_item6_refused_by_exact_gradient():
    """Item 6: diagnostics.exact_gradient refuses NaN logits instead of reporting 0."""
    theta = torch.tensor([0.0, math.nan, 1.0], requires_grad=True)
    with pytest.raises(ValueError, match="logits"):
        exact_gradient(
            lambda z: z.sum(-1), OneHotCategorical(logits=theta, validate_args=False), theta
        )


# ----------------------------------------------------------------- item 7
@pytest.mark.parametrize("cls", [REBAR, RELAX, GumbelSoftmax])
@pytest.mark.parametrize("kind", ["bernoulli", "categorical", "onehot"])
def test_item7_elbo_cost_with_validation_on(cls, kind):
    """Item 7: f = q.log_prob(z) + ... works on relaxed points with argument validation on."""
    old = Distribution._validate_args
    Distribution.set_default_validate_args(True)
    try:
        theta = torch.randn(5, 3, 4 if kind != "bernoulli" else 1, generator=_gen(11))
        theta = theta.squeeze(-1).requires_grad_()
        base = {"bernoulli": Bernoulli, "categorical": Categorical, "onehot": OneHotCategorical}
        q = Independent(base[kind](logits=theta), 1)
        prior = Independent(base[kind](logits=torch.zeros_like(theta)), 1)

        def f(z):
            zz = z.argmax(-1) if kind == "categorical" else z
            event = (-1,) if kind == "bernoulli" else (-1, -2)
            return q.log_prob(zz) - prior.log_prob(zz) + z.sum(event)

        out = cls()(f, q, generator=_gen(12))
        (g,) = torch.autograd.grad(out.loss.sum(), theta, retain_graph=True)
        assert torch.isfinite(g).all()
        if cls is not GumbelSoftmax:
            assert out.cv_loss is not None and torch.isfinite(out.cv_loss)
        assert q._validate_args and q.base_dist._validate_args  # restored
        assert Distribution._validate_args
    finally:
        Distribution.set_default_validate_args(old)


# ----------------------------------------------------------------- item 8
@pytest.mark.parametrize("cls", ALL_ESTIMATORS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("cost", ["constant", "detached"])
def test_item8_costs_that_ignore_z_give_a_connected_zero_gradient(cls, cost):
    """Item 8: every estimator returns a loss connected to the logits, whatever f does."""
    kind = "categorical" if "categorical" in cls.supports else "bernoulli"
    theta = torch.randn((3, 4) if kind == "categorical" else (3,), generator=_gen(13))
    theta.requires_grad_()
    q = OneHotCategorical(logits=theta) if kind == "categorical" else Bernoulli(logits=theta)

    def f(z):
        if cost == "constant":
            return torch.full(z.shape[: z.dim() - (kind == "categorical")], 2.0)
        return z.detach().sum(-1) if kind == "categorical" else z.detach()

    out = cls()(f, q, generator=_gen(14))
    assert out.loss.requires_grad
    (g,) = torch.autograd.grad(out.loss.sum(), theta)
    assert torch.isfinite(g).all()
    if (not cls.unbiased and cls.needs_grad_f) or cls is Exact:
        # Relaxations and Exact: no path from the logits to f and no score term, so
        # the estimate is exactly 0. (NVIL is biased only by its scale: its score
        # term centres a constant cost by past statistics, 0 on the first call.)
        torch.testing.assert_close(g, torch.zeros_like(g))


def test_item7_onehot_log_prob_is_continuous_on_relaxed_points():
    """Item 7: inside relaxed_evaluation, OneHotCategorical.log_prob(y) = Σ y_k log π_k."""
    theta = torch.tensor([[0.3, -1.0, 2.0], [0.0, -math.inf, 1.0]])
    q = OneHotCategorical(logits=theta)
    y = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.0, 0.4]])
    latent = REBAR().latent(q)
    with latent.relaxed_evaluation():
        inside = q.log_prob(y)
    log_pi = torch.log_softmax(theta, -1)
    want = torch.stack([(y[0] * log_pi[0]).sum(), 0.6 * log_pi[1, 0] + 0.4 * log_pi[1, 2]])
    torch.testing.assert_close(inside, want)
    with pytest.raises(ValueError, match="support"):  # validation is back afterwards
        q.log_prob(y)
    onehot = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(q.log_prob(onehot), log_pi[[0, 1], [2, 0]])


def test_item3_gradient_stats_with_zero_probabilities():
    """Item 3: diagnostics on a probs= distribution with zeros: unbiased, zero-prob never drawn."""
    from discograd.diagnostics import gradient_stats

    theta = torch.tensor([[0.5, -math.inf, 0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    q = OneHotCategorical(probs=torch.softmax(theta, -1))

    def f(z):
        assert (z[..., 1] == 0).all()
        return ((z * torch.tensor([1.0, 9.0, -2.0, 3.0], dtype=z.dtype)).sum(-1) - 1) ** 2

    stats = gradient_stats(RLOO(4), f, q, theta, n_draws=4000, generator=_gen(15))
    assert stats.bias < 4 * stats.bias_noise


# ----------------------------------------------- uniforms at the ends of their range
@pytest.mark.parametrize("value", [0.0, 1 - 2**-24, 1.0], ids=["zero", "below-one", "one"])
@pytest.mark.parametrize("kind", ["bernoulli", "categorical"])
def test_uniforms_at_the_ends_of_their_range_never_sample_the_impossible(monkeypatch, kind, value):
    """Every uniform the generator can return, its ends included, keeps f off the impossible.

    torch.rand returns exactly 0 with probability 2^-24 (float32), and some
    backends draw from (0, 1]. Two bugs lived there: ``1 - u < p`` with ``u`` at
    the clamp's floor drew b = 0 at a +inf logit (DisARM, LocalDisARM) or took
    the side of a stick-breaking or tree node whose remaining categories are all
    masked (CategoricalDisARM); and ``u < σ(θ)`` with ``u = 1`` drew 0 at a +inf
    logit (``Latent.sample``, so REINFORCE and every score-function estimator).
    Every draw of discograd's generator is made this one constant, every
    registered estimator that takes the kind (and the configurations that sample
    differently) is called, and: the loss and its gradient are finite, and every
    point ``f`` sees (samples, pseudo-samples, relaxed points) keeps each
    deterministic variable at its value (Bernoulli) or puts no weight on a masked
    category (categorical).
    """
    import discograd._rng

    monkeypatch.setattr(discograd._rng, "uniform_", lambda out, generator: out.fill_(value))
    if kind == "bernoulli":
        theta = torch.tensor([[math.inf, 0.3, -math.inf], [-math.inf, math.inf, 1.5]])

        def dist(t):
            return Independent(Bernoulli(logits=t), 1)

        def possible(z):
            forced_one, forced_zero = theta == math.inf, theta == -math.inf
            return bool(((z == 1) | ~forced_one).all() & ((z == 0) | ~forced_zero).all())

    else:
        theta = torch.tensor([[[0.2, 1.0, -math.inf, -math.inf], [-math.inf, 0.5, -math.inf, 0.1]]])
        theta = theta.expand(3, 2, 4).contiguous()
        masked = theta == -math.inf

        def dist(t):
            return Independent(Categorical(logits=t), 1)

        def possible(z):
            if z.shape[-2:] == (2, 4):  # one-hot or relaxed: no weight on a masked category
                return bool((z.masked_fill(~masked, 0) == 0).all())
            return not bool(masked.expand(*z.shape, 4).gather(-1, z.long().unsqueeze(-1)).any())

    variants = {
        "bernoulli": ["arms:n_samples=2", "local_arms:n_samples=3", "vimco:n_samples=3"],
        "categorical": [
            "categorical_disarm:encoding=tree",
            "categorical_disarm:order=none",
            "categorical_disarm:order=descending",
            "categorical_disarm:importance_weighted=True",
            "carms:n_samples=2",
        ],
    }[kind]
    called = set()
    for name in [*registry.names(), *variants]:
        est = registry.make(name)
        if kind not in est.supports:
            continue
        seen = []

        def f(z, seen=seen):
            seen.append(z.detach())
            one_hot = kind == "categorical" and z.shape[-2:] == (2, 4)
            flat = z.to(torch.float32).flatten(z.dim() - 2 if one_hot else z.dim() - 1)
            return ((0.7 * flat).sum(-1) - 0.2) ** 2

        t = theta.clone().requires_grad_()
        out = est((lambda z: -f(z)) if est.multi_sample else f, dist(t), generator=_gen(1))
        (g,) = torch.autograd.grad(out.loss.sum(), t)
        called.add(name)
        assert torch.isfinite(out.loss).all() and torch.isfinite(g).all(), (name, out.loss, g)
        for z in seen:
            assert possible(z), f"{name} evaluated an impossible point at u = {value}: {z}"
    assert called >= (
        {"reinforce", "arm", "disarm", "arms", "local_disarm", "local_arms", "rebar", "relax"}
        if kind == "bernoulli"
        else {"categorical_disarm", "carms", "arsm", "ars_plus", "arsm_plus", "unordered_set"}
    ), called
