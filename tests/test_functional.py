"""Sample-level ops: Gumbel noise, Gumbel-max, Gumbel-Softmax, straight-through."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import discograd as dg
from discograd.functional import _gumbel_from_uniform_

from conftest import assert_mean_matches, chi_square_pvalue

EULER = 0.5772156649015329

# --------------------------------------------------------------------- gumbel


def test_gumbel_mean_and_variance(gen):
    n = 400_000
    g = dg.sample_gumbel((n,), dtype=torch.float64, generator=gen)
    # Mean: Euler-Mascheroni; variance pi^2/6; fourth central moment 3.4 pi^4/15 ... use
    # the exact variance of the sample variance via the excess kurtosis 12/5.
    var = math.pi**2 / 6
    se_mean = math.sqrt(var / n)
    assert abs(float(g.mean()) - EULER) < 4.5 * se_mean
    se_var = var * math.sqrt((2 + 12 / 5) / n)
    assert abs(float(g.var()) - var) < 4.5 * se_var


def test_gumbel_matches_cdf(gen):
    from scipy import stats

    g = dg.sample_gumbel((50_000,), generator=gen).double().numpy()
    assert stats.kstest(g, stats.gumbel_r.cdf).pvalue > 1e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_gumbel_finite_at_the_extremes_of_the_uniform(dtype):
    cdt = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    eps = torch.finfo(cdt).eps
    u = torch.tensor([0.0, torch.finfo(cdt).tiny, 1e-30, 0.5, 1 - eps, 1 - eps / 2, 1.0], dtype=cdt)
    g = _gumbel_from_uniform_(u).to(dtype)
    assert torch.isfinite(g).all(), g
    # Order is preserved (monotone transform), clamps aside.
    assert (g[1:].float() >= g[:-1].float()).all()


def test_sample_gumbel_dtype_device_and_errors(gen):
    g = dg.sample_gumbel((3, 4), dtype=torch.float16, generator=gen)
    assert g.shape == (3, 4) and g.dtype == torch.float16 and torch.isfinite(g).all()
    assert dg.sample_gumbel([5]).dtype == torch.get_default_dtype()
    with pytest.raises(TypeError, match="dtype"):
        dg.sample_gumbel((3,), dtype=torch.int64)


def test_generator_reproducibility():
    a = dg.sample_gumbel((100,), generator=torch.Generator().manual_seed(7))
    b = dg.sample_gumbel((100,), generator=torch.Generator().manual_seed(7))
    c = dg.sample_gumbel((100,), generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    x = torch.randn(10, 6)
    for fn in (
        lambda g: dg.gumbel_max(x, generator=g),
        lambda g: dg.gumbel_softmax(x, 0.3, generator=g),
        lambda g: dg.gumbel_softmax(x, 0.3, hard=True, generator=g),
    ):
        assert torch.equal(
            fn(torch.Generator().manual_seed(3)), fn(torch.Generator().manual_seed(3))
        )


# ----------------------------------------------------------------- gumbel-max


def test_gumbel_max_frequencies_chi_square_with_masked_category(gen):
    logits = torch.tensor([0.3, -1.0, float("-inf"), 1.2, 0.0, -0.4])
    probs = torch.softmax(logits, -1).numpy()
    n = 60_000
    samples = dg.gumbel_max(logits.expand(n, -1), generator=gen)
    assert ((samples == 0) | (samples == 1)).all() and (samples.sum(-1) == 1).all()
    counts = samples.sum(0).numpy()
    assert counts[2] == 0
    assert chi_square_pvalue(counts, probs) > 1e-3


def test_gumbel_max_other_dim_and_dtype(gen):
    logits = torch.randn(6, 3, dtype=torch.float16)
    s = dg.gumbel_max(logits, dim=0, generator=gen)
    assert s.dtype == torch.float16 and (s.sum(0) == 1).all()


# -------------------------------------------------------------- gumbel-softmax


def test_hard_is_one_hot_forward_with_the_soft_gradient():
    logits = torch.randn(8, 5, requires_grad=True)
    upstream = torch.randn(8, 5)
    hard = dg.gumbel_softmax(logits, tau=0.7, hard=True, generator=torch.Generator().manual_seed(0))
    soft = dg.gumbel_softmax(
        logits, tau=0.7, hard=False, generator=torch.Generator().manual_seed(0)
    )
    # Exactly one-hot, and at the argmax of the soft sample (same noise).
    assert ((hard == 0) | (hard == 1)).all() and (hard.sum(-1) == 1).all()
    assert torch.equal(hard.argmax(-1), soft.argmax(-1))
    (g_hard,) = torch.autograd.grad((hard * upstream).sum(), logits)
    (g_soft,) = torch.autograd.grad((soft * upstream).sum(), logits)
    torch.testing.assert_close(g_hard, g_soft)


def test_soft_matches_the_formula_with_the_same_noise():
    logits = torch.randn(4, 7, dtype=torch.float64)
    g = dg.sample_gumbel((4, 7), dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    y = dg.gumbel_softmax(logits, tau=0.4, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(y, torch.softmax((logits + g) / 0.4, -1))


def test_same_distribution_as_torch(gen):
    # Drop-in: the mean of soft samples matches torch's implementation (z-test
    # per coordinate, torch's draws as the reference) and hard samples pick
    # categories with the same frequencies.
    logits = torch.tensor([0.5, -0.3, 1.1, 0.0], dtype=torch.float64)
    n = 40_000
    ours = dg.gumbel_softmax(logits.expand(n, -1), tau=0.8, generator=gen)
    torch.manual_seed(0)
    theirs = F.gumbel_softmax(logits.expand(n, -1), tau=0.8)
    diff = ours - theirs  # independent draws: var(diff) = var(ours) + var(theirs)
    assert_mean_matches(diff, torch.zeros(4))
    hard = dg.gumbel_softmax(logits.expand(n, -1), tau=0.8, hard=True, generator=gen)
    assert chi_square_pvalue(hard.sum(0).numpy(), torch.softmax(logits, -1).numpy()) > 1e-3


def test_accepts_torch_positional_and_eps_keyword():
    x = torch.randn(3, 4)
    y = dg.gumbel_softmax(x, 0.5, True, eps=1e-10, dim=-1)
    assert (y.sum(-1) == 1).all()


def test_torch_positional_signature():
    # Issue 11, item 10: torch's (logits, tau, hard, eps, dim) by position.
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    y = dg.gumbel_softmax(x, 1.0, True, 1e-10, 0)
    assert ((y == 0) | (y == 1)).all() and (y.sum(0) == 1).all()  # one-hot along dim 0
    torch.manual_seed(1)
    assert torch.equal(y, dg.gumbel_softmax(x, tau=1.0, hard=True, dim=0))
    theirs = F.gumbel_softmax(x, 1.0, True, 1e-10, 0)  # the same call means the same in torch
    assert theirs.shape == y.shape and (theirs.sum(0) == 1).all()
    soft = dg.gumbel_softmax(x, 0.5, False, 1e-10, 0, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(soft.sum(0), torch.ones(3))
    # Parameter names and order follow torch's; generator= stays keyword-only.
    ours = inspect.signature(dg.gumbel_softmax).parameters
    assert list(ours)[:5] == list(inspect.signature(F.gumbel_softmax).parameters)
    assert ours["generator"].kind is inspect.Parameter.KEYWORD_ONLY
    with pytest.raises(TypeError):
        dg.gumbel_softmax(x, 1.0, False, 1e-10, -1, torch.Generator())  # type: ignore[misc]


DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
TAUS = [1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0]
SCALES = [1.0, 100.0, 1e4]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
@pytest.mark.parametrize("masked", [False, True], ids=["finite", "masked"])
def test_numerics_matrix(dtype, hard, masked):
    """No NaN/inf in value or gradient: every tau x logit scale, -inf masks, 16-64 bit."""
    gen = torch.Generator().manual_seed(11)
    base = torch.randn(64, 10, generator=gen)
    if masked:
        mask = torch.rand(64, 10, generator=gen) < 0.4
        mask[:, 3] = False  # keep one category available in every row
        mask[0] = True
        mask[0, 9] = False  # a row with a single available category
    for tau in TAUS:
        for scale in SCALES:
            logits = (base * scale).to(dtype)
            if masked:
                logits = logits.masked_fill(mask, float("-inf"))
            logits.requires_grad_(True)
            y = dg.gumbel_softmax(logits, tau=tau, hard=hard, generator=gen)
            ctx = f"dtype={dtype} tau={tau} scale={scale} hard={hard} masked={masked}"
            assert y.dtype == dtype, ctx
            assert torch.isfinite(y).all(), ctx
            assert (y >= 0).all(), ctx
            tol = 1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-5
            assert torch.allclose(y.sum(-1).float(), torch.ones(64), atol=tol), ctx
            if hard:
                assert ((y == 0) | (y == 1)).all(), ctx
            if masked:
                assert (y[mask] == 0).all(), ctx  # exactly 0, never chosen
                assert (y[0, 9] == 1).all(), ctx
            upstream = torch.randn(64, 10, generator=gen).to(dtype)
            (g,) = torch.autograd.grad((y * upstream).sum(), logits)
            assert torch.isfinite(g).all(), ctx
            if masked:
                assert (g[mask] == 0).all(), ctx


def test_learned_temperature_gets_finite_gradients_with_masks():
    logits = torch.tensor([[0.2, float("-inf"), 1.0]], requires_grad=True)
    tau = torch.tensor(0.3, requires_grad=True)
    y = dg.gumbel_softmax(logits, tau=tau, generator=torch.Generator().manual_seed(0))
    g_logits, g_tau = torch.autograd.grad((y * torch.tensor([1.0, 2.0, 3.0])).sum(), (logits, tau))
    assert torch.isfinite(g_logits).all() and torch.isfinite(g_tau)
    assert y[0, 1] == 0


def test_tensor_temperature_broadcasts():
    logits = torch.randn(3, 5)
    tau = torch.tensor([[0.1], [1.0], [10.0]])
    y = dg.gumbel_softmax(logits, tau=tau, generator=torch.Generator().manual_seed(0))
    assert y.shape == (3, 5) and torch.allclose(y.sum(-1), torch.ones(3))


def test_low_temperature_is_nearly_one_hot_and_high_is_nearly_uniform(gen):
    logits = torch.randn(1000, 6, generator=gen)
    cold = dg.gumbel_softmax(logits, tau=1e-3, generator=gen)
    hot = dg.gumbel_softmax(logits, tau=100.0, generator=gen)
    # Nearly every row is one-hot; a row whose top two perturbed scores lie
    # within ~tau of each other legitimately splits its mass.
    assert float((cold.max(-1).values > 0.99).float().mean()) > 0.97
    assert float((hot - 1 / 6).abs().max()) < 0.05


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"tau": 0.0}, ValueError, "tau"),
        ({"tau": -1.0}, ValueError, "tau"),
        ({"tau": float("nan")}, ValueError, "tau"),
        ({"tau": float("inf")}, ValueError, "tau"),
        ({"tau": "1"}, TypeError, "tau"),
        ({"tau": torch.tensor([0.5, -0.1])}, ValueError, "tau"),
    ],
)
def test_gumbel_softmax_bad_tau(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        dg.gumbel_softmax(torch.randn(2, 2), **kwargs)


def test_bad_logits():
    with pytest.raises(TypeError, match="logits"):
        dg.gumbel_softmax(torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="logits"):
        dg.gumbel_softmax(np.zeros(3))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="logits"):
        dg.gumbel_max([0.0, 1.0])  # type: ignore[arg-type]


# ------------------------------------------------------------ straight-through


def test_straight_through_value_and_gradient():
    soft = torch.tensor([[0.1, 0.2, 0.7]], requires_grad=True)
    hard = torch.tensor([[0.0, 0.0, 1.0]])
    out = dg.straight_through(hard, soft)
    assert torch.equal(out, hard)
    upstream = torch.tensor([[1.0, -2.0, 3.0]])
    (g,) = torch.autograd.grad((out * upstream).sum(), soft)
    assert torch.equal(g, upstream)


def test_straight_through_is_exact_where_the_idiom_rounds():
    # hard - soft.detach() + soft can round 1 to 1 - ulp; ours never does.
    soft = torch.rand(100_000, generator=torch.Generator().manual_seed(0), requires_grad=True)
    hard = torch.ones(100_000)
    assert torch.equal(dg.straight_through(hard, soft), hard)
    soft_inf = torch.tensor([float("-inf"), 0.5], requires_grad=True)
    assert torch.isfinite(dg.straight_through(torch.tensor([0.0, 1.0]), soft_inf)).all()


def test_straight_through_broadcast_and_dtype():
    soft = torch.rand(1, 4, dtype=torch.float64, requires_grad=True)
    hard = torch.zeros(3, 4, dtype=torch.float32)
    out = dg.straight_through(hard, soft)
    assert out.shape == (3, 4) and out.dtype == torch.float64
    (g,) = torch.autograd.grad(out.sum(), soft)
    assert torch.equal(g, torch.full((1, 4), 3.0, dtype=torch.float64))
    with pytest.raises(TypeError, match="soft"):
        dg.straight_through(hard, torch.ones(3, 4, dtype=torch.int64))


def test_straight_through_ops_under_vmap_and_grad_match_eager():
    # Eager calls take the classic autograd.Function, torch.func the
    # setup_context one: both must compute the same thing.
    soft = torch.rand(5, 4, 3, dtype=torch.float64)
    hard = (soft > 0.5).to(torch.float64)
    w = torch.randn(4, 3, dtype=torch.float64)

    def st_loss(s, h):
        return (dg.straight_through(h, s.softmax(-1)) * w).sum()

    def gs_loss(s):
        return (
            dg.gumbel_softmax(s, 0.7, hard=True, generator=torch.Generator().manual_seed(1)) * w
        ).sum()

    for loss, args in ((st_loss, (soft, hard)), (gs_loss, (soft,))):
        batched = torch.func.vmap(torch.func.grad(loss), randomness="same")(*args)
        for i in range(soft.shape[0]):
            s = soft[i].clone().requires_grad_()
            (eager,) = torch.autograd.grad(loss(s, *[a[i] for a in args[1:]]), s)
            assert torch.allclose(batched[i], eager)


# ------------------------------------------------------- conditional noise


def test_conditional_gumbel_reproduces_the_unconditional_distribution(gen):
    from scipy import stats

    logits = torch.tensor([0.5, -1.0, 1.2, 0.0, float("-inf")], dtype=torch.float64)
    n = 30_000
    k = dg.gumbel_max(logits.expand(n, -1), generator=gen).argmax(-1)
    z = dg.functional.conditional_gumbel(logits, k, generator=gen)
    assert z.shape == (n, 5)
    assert torch.equal(z.argmax(-1), k)  # the conditioning holds exactly
    assert torch.isneginf(z[:, 4]).all()
    # Marginally, each score is Gumbel(theta_i): KS test per category.
    for i in range(4):
        p = stats.kstest(z[:, i].numpy() - float(logits[i]), stats.gumbel_r.cdf).pvalue
        assert p > 1e-3, (i, p)
    # The maximum is Gumbel(logsumexp theta) whatever the argmax.
    lse = float(torch.logsumexp(logits, -1))
    top = z.max(-1).values.numpy() - lse
    for cat in (0, 2):
        assert stats.kstest(top[(k == cat).numpy()], stats.gumbel_r.cdf).pvalue > 1e-3


def test_conditional_gumbel_shapes_gradients_and_errors(gen):
    logits = torch.randn(3, 4, requires_grad=True)
    masked = logits.detach().clone()
    masked[:, 1] = float("-inf")
    masked.requires_grad_(True)
    index = torch.tensor([[0, 2, 3], [3, 3, 0]])  # sample dim of 2, broadcast over 3 rows
    for lg in (logits, masked):
        z = dg.functional.conditional_gumbel(lg, index, generator=gen)
        assert z.shape == (2, 3, 4) and torch.equal(z.argmax(-1), index)
        (g,) = torch.autograd.grad(torch.softmax(z / 0.5, -1)[..., 0].sum(), lg)
        assert torch.isfinite(g).all()
    half = dg.functional.conditional_gumbel(logits.detach().half(), index, generator=gen)
    assert half.dtype == torch.float16 and torch.equal(half.argmax(-1), index)
    with pytest.raises(TypeError, match="index"):
        dg.functional.conditional_gumbel(logits, index.float())


def test_conditional_logistic_reproduces_the_unconditional_distribution(gen):
    from scipy import stats

    alpha = 0.7
    n = 30_000
    b = (torch.rand(n, generator=gen, dtype=torch.float64) < 1 / (1 + math.exp(-alpha))).double()
    z = dg.functional.conditional_logistic(
        torch.tensor(alpha, dtype=torch.float64), b, generator=gen
    )
    assert torch.equal((z > 0).double(), b)
    assert stats.kstest(z.numpy() - alpha, stats.logistic.cdf).pvalue > 1e-3


def test_conditional_logistic_saturated_logits_stay_finite_and_consistent(gen):
    alpha = torch.tensor([-40.0, -15.0, 0.0, 15.0, 40.0], requires_grad=True)
    for value in (torch.zeros(5), torch.ones(5)):
        z = dg.functional.conditional_logistic(alpha, value.expand(1000, 5), generator=gen)
        assert torch.isfinite(z).all()
        assert torch.equal((z > 0).float(), value.expand(1000, 5))
        (g,) = torch.autograd.grad(torch.sigmoid(z).sum(), alpha)
        assert torch.isfinite(g).all()
    with pytest.raises(TypeError, match="value"):
        dg.functional.conditional_logistic(alpha, 1.0)  # type: ignore[arg-type]
