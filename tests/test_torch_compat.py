"""Drop-in compatibility with torch (issue 11, items 9, 11, 12, 13; item 10 is in test_functional).

First one regression test (or a few) per item, then checks ported from torch's
own suite (``test/distributions/test_distributions.py`` and
``test_constraints.py``: expand consistency, ``Independent`` wrappers, shapes,
constraints, ``biject_to`` / ``transform_to`` round trips, argument validation,
gradchecks), written anew for Concrete, ExpConcrete and BinaryConcrete.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch.distributions import (
    Distribution,
    Independent,
    RelaxedBernoulli,
    RelaxedOneHotCategorical,
    biject_to,
    constraints,
    transform_to,
)
from torch.distributions.transforms import SoftmaxTransform, StickBreakingTransform

import discograd as dg
from discograd.distributions import (
    BinaryConcrete,
    Concrete,
    ExpConcrete,
    GaussianRelaxedBernoulli,
    HardConcrete,
    HardKumaraswamy,
    InvertibleGaussian,
    LogisticNormal,
)

# torch >= 2.9 deprecates torch.jit; these tests check that it still works.
JIT = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _logits(*shape: int, seed: int = 0, scale: float = 3.0, dtype=torch.float32) -> torch.Tensor:
    return (torch.randn(*shape, generator=_gen(seed), dtype=torch.float64) * scale).to(dtype)


# =============================================================================
# Item 9: log_prob is a pure, differentiable function of the value
# =============================================================================


@pytest.mark.parametrize("cls", [Concrete, BinaryConcrete])
def test_log_prob_of_a_sample_equals_log_prob_of_its_copy(cls):
    # The value, not the tensor object, decides the density: at tau = 0.01,
    # where samples saturate in floating point.
    d = cls(0.01, logits=_logits(64, 5) if cls is Concrete else _logits(64))
    v = d.sample(generator=_gen(1))
    torch.testing.assert_close(d.log_prob(v), d.log_prob(v.clone()), rtol=0, atol=0)


@pytest.mark.parametrize("cls", [Concrete, BinaryConcrete])
def test_log_prob_follows_in_place_edits_of_the_value(cls):
    if cls is Concrete:
        d = Concrete(0.5, logits=_logits(4, 3, dtype=torch.float64))
        other = torch.distributions.Dirichlet(torch.ones(3, dtype=torch.float64)).sample((4,))
    else:
        d = BinaryConcrete(0.5, logits=_logits(4, dtype=torch.float64))
        other = torch.tensor([0.1, 0.3, 0.6, 0.9], dtype=torch.float64)
    v = d.sample(generator=_gen(2))
    v.copy_(other)
    torch.testing.assert_close(d.log_prob(v), d.log_prob(other), rtol=0, atol=0)


def test_log_prob_is_differentiable_in_the_value_like_torch():
    # The gradient in the value is that of torch's formula (which autograd
    # differentiates through its ExpTransform / SigmoidTransform).
    logits = _logits(6, 4, dtype=torch.float64)
    tau = torch.tensor(0.7, dtype=torch.float64)
    pairs = [
        (Concrete(tau, logits=logits), RelaxedOneHotCategorical(tau, logits=logits)),
        (BinaryConcrete(tau, logits=logits[:, 0]), RelaxedBernoulli(tau, logits=logits[:, 0])),
    ]
    for ours, theirs in pairs:
        v = ours.sample(generator=_gen(4)).requires_grad_()
        (g,) = torch.autograd.grad(ours.log_prob(v).sum(), v)
        w = v.detach().clone().requires_grad_()
        (g_ref,) = torch.autograd.grad(theirs.log_prob(w).sum(), w)
        torch.testing.assert_close(g, g_ref)


def test_log_prob_of_rsample_differentiates_through_the_sample_like_torch():
    # d/dθ log p_θ(y_θ): both the density's and the sample's dependence on θ.
    tau = torch.tensor(0.6, dtype=torch.float64)
    for make_ours, make_theirs, shape in (
        (Concrete, RelaxedOneHotCategorical, (5, 4)),
        (BinaryConcrete, RelaxedBernoulli, (5,)),
    ):
        logits = _logits(*shape, dtype=torch.float64).requires_grad_()
        ours = make_ours(tau, logits=logits)
        v = ours.rsample(generator=_gen(5))
        (g,) = torch.autograd.grad(ours.log_prob(v).sum(), logits, retain_graph=True)
        (g_ref,) = torch.autograd.grad(make_theirs(tau, logits=logits).log_prob(v).sum(), logits)
        torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("cls", [Concrete, ExpConcrete, BinaryConcrete])
def test_log_prob_gradcheck_in_value_and_parameters(cls):
    # torch's _gradcheck_log_prob, plus the value (off the support under the
    # perturbation, hence validate_args=False).
    event = (3,) if cls is not BinaryConcrete else ()
    logits = _logits(2, *event, dtype=torch.float64, scale=1.0).requires_grad_()
    tau = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    d = cls(tau.detach(), logits=logits.detach(), validate_args=False)
    value = d.sample(generator=_gen(6)).requires_grad_()

    def log_prob(v, lg, t):
        return cls(t, logits=lg, validate_args=False).log_prob(v)

    assert torch.autograd.gradcheck(log_prob, (value, logits, tau))


def test_independent_expand_agrees_with_the_unexpanded_distribution_at_low_temperature():
    # torch's test_independent_expand, at tau = 0.01 where samples saturate.
    torch.manual_seed(7)
    for base in (
        Concrete(0.01, logits=_logits(3, 5)),
        ExpConcrete(0.01, logits=_logits(3, 5)),
        BinaryConcrete(0.01, logits=_logits(3)),
    ):
        for ndims in range(len(base.batch_shape) + 1):
            indep = Independent(base, ndims)
            for s in (torch.Size(), torch.Size((2,)), torch.Size((2, 3))):
                expanded = indep.expand(s + indep.batch_shape)
                v = expanded.sample()
                assert v.shape == s + indep.batch_shape + indep.event_shape
                torch.testing.assert_close(expanded.log_prob(v), indep.log_prob(v))


@pytest.mark.parametrize(
    "dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str
)
@pytest.mark.parametrize("tau", [1e-3, 1.0, 100.0])
def test_log_prob_of_own_samples_has_finite_gradients(dtype, tau):
    # Without a cache the value's coordinates near 0 enter as log y: the
    # gradient 1/y overflows the dtype just above the smallest normal number,
    # which would give NaN through the sample's softmax / sigmoid. Large logits
    # and many categories put coordinates there.
    gen = _gen(8)
    logits = (torch.randn(500, 50, generator=gen) * 100).to(dtype).requires_grad_()
    for d in (Concrete(tau, logits=logits), BinaryConcrete(tau, logits=logits[:, 0])):
        (g,) = torch.autograd.grad(d.log_prob(d.rsample(generator=gen)).sum(), logits)
        assert torch.isfinite(g).all(), type(d).__name__


def test_log_prob_gradient_in_the_value_under_torch_func():
    # The saturating log is a custom autograd function: vmap and torch.func.grad
    # must give autograd's answer.
    d = Concrete(0.5, logits=_logits(3, scale=1.0))
    b = BinaryConcrete(0.5, logits=_logits(3, scale=1.0))
    for dist, values in ((d, d.sample((5,))), (b, b.sample((5,)))):
        batched = torch.func.vmap(torch.func.grad(lambda v, dist=dist: dist.log_prob(v).sum()))(
            values
        )
        leaf = values.clone().requires_grad_()
        (ref,) = torch.autograd.grad(dist.log_prob(leaf).sum(), leaf)
        torch.testing.assert_close(batched, ref)


def test_low_temperature_densities_in_log_space_are_exact():
    # The documented way to evaluate densities at low temperature: ExpConcrete
    # and the logit-space Binary Concrete, whose float32 values agree with a
    # float64 evaluation at the same point (the Concrete path reads underflowed
    # coordinates as tiny instead).
    logits = _logits(200, 6)
    e = ExpConcrete(1e-3, logits=logits)
    x = e.rsample(generator=_gen(9))
    assert torch.isfinite(x[logits > -math.inf]).all()
    ref = ExpConcrete(1e-3, logits=logits.double()).log_prob(x.double())
    torch.testing.assert_close(e.log_prob(x).double(), ref, rtol=1e-5, atol=1e-3)
    b = BinaryConcrete(1e-3, logits=logits[:, 0])
    s = b.rsample_logit(generator=_gen(10))
    ref_b = BinaryConcrete(1e-3, logits=logits[:, 0].double()).log_prob_logit(s.double())
    torch.testing.assert_close(b.log_prob_logit(s).double(), ref_b, rtol=1e-5, atol=1e-3)


# =============================================================================
# Item 11: BinaryConcrete takes Python numbers, like RelaxedBernoulli
# =============================================================================


@pytest.mark.parametrize("kwargs", [{"probs": 0.3}, {"logits": -1.2}, {"logits": 2}])
def test_binary_concrete_accepts_python_numbers(kwargs):
    ours = BinaryConcrete(0.5, **kwargs)
    theirs = RelaxedBernoulli(torch.tensor(0.5), **kwargs)
    assert ours.batch_shape == theirs.batch_shape == torch.Size()
    x = torch.tensor([0.1, 0.5, 0.9])
    torch.testing.assert_close(ours.log_prob(x), theirs.log_prob(x))
    assert ours.sample((5,)).shape == (5,) and ours.rsample().shape == ()


def test_binary_concrete_number_takes_a_tensor_temperatures_dtype():
    d = BinaryConcrete(torch.tensor([0.5, 2.0], dtype=torch.float64), probs=0.3)
    assert d.probs.dtype == torch.float64 and d.sample().dtype == torch.float64
    assert d.batch_shape == (2,)
    assert BinaryConcrete(0.5, logits=1.0).logits.dtype == torch.get_default_dtype()
    with pytest.raises(ValueError, match="probs"):
        BinaryConcrete(0.5, probs=1.5, validate_args=True)
    with pytest.raises(TypeError, match="tensor or a number"):
        BinaryConcrete(0.5, probs="0.3")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="tensor or a number"):
        BinaryConcrete(0.5, probs=True)  # type: ignore[arg-type]


# =============================================================================
# Item 12: torch.jit.trace and torch.jit.script
# =============================================================================


def _masked_logits() -> torch.Tensor:
    x = _logits(6, 5, scale=1.0)
    x[0, 1] = -math.inf
    return x


def _run(fn, logits: torch.Tensor, w: torch.Tensor, seed: int):
    """``fn(leaf)`` and its gradient, for a fresh leaf, drawing from the seeded global stream."""
    leaf = logits.clone().requires_grad_()
    torch.manual_seed(seed)
    out = fn(leaf)
    # where, not a product, on masked entries: ExpConcrete's are -inf.
    (g,) = torch.autograd.grad((torch.where(out > -math.inf, out, 0.0) * w).sum(), leaf)
    return out, g


def _trace(fn, example: torch.Tensor):
    # check_trace re-runs fn and compares outputs: meaningless for random ops.
    return torch.jit.trace(fn, (example,), check_trace=False)


@JIT
@pytest.mark.parametrize("hard", [False, True])
def test_gumbel_softmax_traced_without_grad_runs_with_grad(hard):
    logits = _masked_logits()
    w = _logits(6, 5, seed=1)

    def fn(t):
        return dg.gumbel_softmax(t, 0.5, hard)

    traced = _trace(fn, logits)  # example without grad
    buf = io.BytesIO()
    torch.jit.save(traced, buf)  # aten ops only: a trace that can be saved ...
    buf.seek(0)
    loaded = torch.jit.load(buf)
    y_ref, g_ref = _run(fn, logits, w, seed=3)
    for replay in (traced, loaded):  # ... and replayed on logits that require grad
        y, g = _run(replay, logits, w, seed=3)
        assert y.requires_grad
        torch.testing.assert_close(y, y_ref)
        torch.testing.assert_close(g, g_ref)
        assert torch.isfinite(g).all() and (g[0, 1] == 0)


@JIT
@pytest.mark.parametrize("cls", [Concrete, ExpConcrete, BinaryConcrete])
def test_distribution_sampling_traced_without_grad_runs_with_grad(cls):
    logits = _masked_logits() if cls is not BinaryConcrete else _logits(6, scale=1.0)
    w = _logits(*logits.shape, seed=2)

    def rsample(t):
        return cls(0.5, logits=t, validate_args=False).rsample((2,))

    def sample(t):
        return cls(0.5, logits=t, validate_args=False).sample((2,))

    y_ref, g_ref = _run(rsample, logits, w, seed=4)
    y, g = _run(_trace(rsample, logits), logits, w, seed=4)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(g, g_ref)
    # sample() stays without grad when the trace is replayed with grad.
    leaf = logits.clone().requires_grad_()
    assert not _trace(sample, logits)(leaf).requires_grad


@JIT
@pytest.mark.parametrize("hard", [False, True])
def test_gumbel_softmax_scripts_and_matches_eager(hard):
    scripted = torch.jit.script(dg.gumbel_softmax)
    logits = _masked_logits()
    w = _logits(6, 5, seed=1)
    y_ref, g_ref = _run(lambda t: dg.gumbel_softmax(t, 0.5, hard), logits, w, seed=5)
    y, g = _run(lambda t: scripted(t, 0.5, hard, 1e-10, -1), logits, w, seed=5)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(g, g_ref)
    assert torch.isfinite(g).all() and g[0, 1] == 0


@JIT
def test_scripted_gumbel_softmax_options():
    scripted = torch.jit.script(dg.gumbel_softmax)
    x = _logits(4, 3, scale=1.0)
    # dim, a tensor temperature with grad, generator=, 16-bit dtypes.
    a = scripted(x, 1.0, True, 1e-10, 0, generator=_gen(1))
    assert torch.equal(a, dg.gumbel_softmax(x, 1.0, True, 1e-10, 0, generator=_gen(1)))
    tau = torch.tensor(0.4, requires_grad=True)
    masked = _masked_logits()
    (g,) = torch.autograd.grad(scripted(masked, tau).pow(2).sum(), tau)
    assert torch.isfinite(g)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        y = scripted(masked.to(dtype), 1e-3, generator=_gen(2))
        ref = dg.gumbel_softmax(masked.to(dtype), 1e-3, generator=_gen(2))
        assert y.dtype == dtype and torch.isfinite(y).all()
        torch.testing.assert_close(y, ref)
    with pytest.raises(torch.jit.Error, match="tau must be positive"):
        scripted(x, 0.0)
    with pytest.raises(torch.jit.Error, match="floating"):
        scripted(x.long(), 1.0)


@JIT
def test_scripted_module_calling_gumbel_softmax():
    # TorchScript's recursive compilation reaches the function from a module.
    class Head(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return dg.gumbel_softmax(x, 0.5, True)

    scripted = torch.jit.script(Head())
    y = scripted(_logits(4, 3))
    assert ((y == 0) | (y == 1)).all() and (y.sum(-1) == 1).all()


def test_scripted_clamp_bounds_are_the_dtype_constants():
    # _gumbel_softmax_script spells finfo out (TorchScript has none).
    import inspect

    from discograd.functional import _gumbel_softmax_script

    src = inspect.getsource(_gumbel_softmax_script)
    for dt in (torch.float32, torch.float64):
        fi = torch.finfo(dt)
        assert repr(fi.tiny) in src and repr(1.0 - fi.eps / 2) in src


# =============================================================================
# Item 13: the simplex support has biject_to / transform_to
# =============================================================================


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_concrete_support_has_torchs_simplex_transforms(dtype):
    d = Concrete(0.5, logits=_logits(4, 5, dtype=dtype))
    y = d.sample(generator=_gen(11))
    for registry, cls in ((biject_to, StickBreakingTransform), (transform_to, SoftmaxTransform)):
        t = registry(d.support)
        assert isinstance(t, cls)
        torch.testing.assert_close(t(t.inv(y)), y)  # samples round-trip
        free = torch.randn(4, 4 if cls is StickBreakingTransform else 5, dtype=dtype)
        assert d.support.check(t(free)).all()
    t = biject_to(d.support)
    free = torch.randn(4, 4, dtype=dtype, generator=_gen(12))
    torch.testing.assert_close(t.inv(t(free)), free)  # a bijection
    # Through Independent, as a model's parameter would be constrained.
    indep = Independent(d, 1)
    t = biject_to(indep.support)
    torch.testing.assert_close(t(t.inv(y)), y)
    assert t.log_abs_det_jacobian(t.inv(y), y).shape == ()


# =============================================================================
# Ported from torch's test suite
# =============================================================================

_TAU_ROW = torch.tensor([[0.3], [1.0]])

# (class, constructor arguments): shapes, parameter kinds, temperatures.
EXAMPLES = [
    (Concrete, {"temperature": 0.5, "logits": _logits(2, 3)}),
    (Concrete, {"temperature": _TAU_ROW, "probs": torch.tensor([0.2, 0.3, 0.5])}),
    (Concrete, {"temperature": 0.01, "logits": _logits(4)}),
    (ExpConcrete, {"temperature": 0.5, "logits": _logits(2, 3)}),
    (ExpConcrete, {"temperature": _TAU_ROW, "probs": torch.tensor([0.2, 0.3, 0.5])}),
    (ExpConcrete, {"temperature": 0.01, "logits": _logits(4)}),
    (BinaryConcrete, {"temperature": 0.5, "probs": torch.tensor([0.2, 0.7])}),
    (BinaryConcrete, {"temperature": _TAU_ROW, "logits": _logits(3)}),
    (BinaryConcrete, {"temperature": 0.01, "logits": 0.4}),
    # Rectified gates: samples include the exact atoms 0 and 1.
    (HardConcrete, {"temperature": 0.5, "logits": _logits(2, 3)}),
    (HardConcrete, {"temperature": _TAU_ROW, "logits": _logits(3), "limits": (-0.2, 1.3)}),
    (HardConcrete, {"temperature": 0.01, "logits": 0.4}),
    (HardKumaraswamy, {"a": torch.tensor([0.3, 2.0]), "b": torch.tensor([[0.5], [4.0]])}),
    (HardKumaraswamy, {"a": 0.2, "b": 0.1}),
    (GaussianRelaxedBernoulli, {"loc": _logits(2, 3)}),
    (GaussianRelaxedBernoulli, {"loc": 0.5, "scale": torch.tensor([0.01, 1.0, 3.0])}),
    (InvertibleGaussian, {"loc": _logits(2, 3), "scale": 0.7, "temperature": 0.5}),
    (InvertibleGaussian, {"loc": _logits(3), "scale": 1.0, "temperature": _TAU_ROW, "delta": 2.0}),
    (LogisticNormal, {"loc": _logits(2, 3), "scale": torch.tensor([0.5, 1.0, 2.0])}),
    (LogisticNormal, {"loc": _logits(4), "scale": 1.0, "temperature": 0.01}),
]
IDS = [f"{cls.__name__}-{i}" for i, (cls, _) in enumerate(EXAMPLES)]

# Constructor arguments torch's validation must refuse.
BAD_EXAMPLES = [
    (Concrete, {"temperature": torch.tensor(-0.5), "logits": torch.zeros(3)}),
    (Concrete, {"temperature": 0.5, "probs": torch.tensor([0.5, -0.5, 1.0])}),
    (Concrete, {"temperature": 0.5, "logits": torch.tensor([0.0, math.nan])}),
    (ExpConcrete, {"temperature": torch.tensor([[0.0]]), "logits": torch.zeros(3)}),
    (BinaryConcrete, {"temperature": 0.5, "probs": torch.tensor([0.5, 1.5])}),
    (BinaryConcrete, {"temperature": 0.5, "logits": torch.tensor(math.nan)}),
    (BinaryConcrete, {"temperature": torch.tensor(-1.0), "logits": 0.0}),
    (HardConcrete, {"temperature": torch.tensor(-1.0), "logits": 0.0}),
    (HardConcrete, {"temperature": 0.5, "logits": torch.tensor(math.nan)}),
    (HardKumaraswamy, {"a": torch.tensor([1.0, -1.0]), "b": 1.0}),
    (HardKumaraswamy, {"a": 1.0, "b": torch.tensor(0.0)}),
    (GaussianRelaxedBernoulli, {"loc": torch.tensor(math.nan)}),
    (GaussianRelaxedBernoulli, {"loc": 0.0, "scale": torch.tensor([-1.0])}),
    (InvertibleGaussian, {"loc": torch.zeros(3), "scale": 1.0, "temperature": torch.tensor(-1.0)}),
    (LogisticNormal, {"loc": torch.tensor([0.0, math.nan]), "scale": 1.0}),
    (LogisticNormal, {"loc": torch.zeros(2), "scale": torch.tensor([1.0, -1.0])}),
]


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


@pytest.mark.parametrize(("cls", "params"), EXAMPLES, ids=IDS)
def test_support_attributes(cls, params):
    d = cls(**params)
    assert d.support.event_dim == cls.support.event_dim == len(d.event_shape)
    assert not d.support.is_discrete and not cls.support.is_discrete


@pytest.mark.parametrize(("cls", "params"), EXAMPLES, ids=IDS)
def test_sample_rsample_log_prob_shapes(cls, params):
    d = cls(**params)
    full = d.batch_shape + d.event_shape
    for shape in (torch.Size(), torch.Size((3,)), torch.Size((3, 2))):
        s = d.sample(shape)
        assert s.shape == shape + full and not s.requires_grad
        assert d.rsample(shape).shape == shape + full
        assert d.log_prob(s).shape == shape + d.batch_shape


@pytest.mark.parametrize(("cls", "params"), EXAMPLES, ids=IDS)
def test_rsample_requires_grad(cls, params):
    leaf = {k: v.clone().requires_grad_() for k, v in params.items() if isinstance(v, torch.Tensor)}
    d = cls(**{**params, **leaf})
    assert d.rsample().requires_grad == bool(leaf) and not d.sample().requires_grad


@pytest.mark.parametrize(("cls", "params"), EXAMPLES, ids=IDS)
def test_log_prob_of_a_batch_equals_log_prob_of_each_sample(cls, params):
    # torch's _check_log_prob: no cross-talk between the samples of a batch.
    d = cls(**params)
    s = d.sample((4,))
    lp = d.log_prob(s)
    for k in range(4):
        torch.testing.assert_close(lp[k], d.log_prob(s[k]))


@pytest.mark.parametrize(("cls", "params"), EXAMPLES, ids=IDS)
def test_distribution_expand(cls, params):
    for shape in (torch.Size(), torch.Size((2,)), torch.Size((2, 1))):
        d = cls(**params)
        expanded = d.expand(list(shape + d.batch_shape))
        sample = expanded.sample()
        assert type(expanded) is type(d)
        assert expanded.batch_shape == shape + d.batch_shape
        assert sample.shape == shape + d.batch_shape + d.event_shape
        assert d.sample().shape == d.batch_shape + d.event_shape
        torch.testing.assert_close(expanded.log_prob(sample), d.log_prob(sample))


@pytest.mark.parametrize(("cls", "params"), EXAMPLES, ids=IDS)
def test_distribution_subclass_expand(cls, params):
    class SubClass(cls):  # type: ignore[valid-type, misc]
        pass

    d = SubClass(**params)
    expanded = d.expand(torch.Size((2,)) + d.batch_shape)
    assert type(expanded) is SubClass
    sample = expanded.sample()
    torch.testing.assert_close(expanded.log_prob(sample), d.log_prob(sample))


@pytest.mark.parametrize(("cls", "params"), EXAMPLES, ids=IDS)
def test_independent_shape_and_expand(cls, params):
    base = cls(**params)
    for ndims in range(len(base.batch_shape) + 1):
        indep = Independent(base, ndims)
        assert indep.batch_shape == base.batch_shape[: len(base.batch_shape) - ndims]
        assert indep.event_shape == base.batch_shape[len(indep.batch_shape) :] + base.event_shape
        assert indep.log_prob(indep.sample()).shape == indep.batch_shape
        for s in (torch.Size(), torch.Size((2,)), torch.Size((2, 3))):
            expanded = indep.expand(s + indep.batch_shape)
            v = expanded.sample()
            assert v.shape == s + indep.batch_shape + indep.event_shape
            assert expanded.event_shape == indep.event_shape
            torch.testing.assert_close(expanded.log_prob(v), indep.log_prob(v))


@pytest.mark.parametrize(("cls", "params"), EXAMPLES, ids=IDS)
def test_params_and_samples_satisfy_their_constraints(cls, params):
    # torch's test_params_constraints / test_support_constraints.
    d = cls(**params, validate_args=True)
    for name, constraint in d.arg_constraints.items():
        if name in d.__dict__:  # parameters computed lazily are not validated by torch either
            assert constraint.check(getattr(d, name)).all(), name
    assert d.support.check(d.sample((20,))).all()


@pytest.mark.parametrize(("cls", "params"), EXAMPLES, ids=IDS)
def test_support_bijections_round_trip(cls, params):
    # torch's test_biject_to / test_transform_to, on each class's support and
    # on an Independent over all batch dimensions.
    d = cls(**params)
    for dist in (d, Independent(d, len(d.batch_shape))):
        for registry in (biject_to, transform_to):
            t = registry(dist.support)
            v = dist.sample((3,))
            torch.testing.assert_close(t(t.inv(v)), v, rtol=1e-5, atol=1e-6)
            free = torch.randn_like(t.inv(v))
            assert dist.support.check(t(free)).all()
            if registry is biject_to:
                assert t.bijective
                torch.testing.assert_close(t.inv(t(free)), free, rtol=1e-4, atol=1e-4)
                assert t.log_abs_det_jacobian(free, t(free)).shape == v.shape[:1] + dist.batch_shape


@pytest.mark.parametrize(("cls", "params"), EXAMPLES, ids=IDS)
def test_validate_args_on_values(cls, params):
    # torch's test_invalid_log_probs_arg: NaN and out-of-support values are
    # refused with validation on, evaluated without it.
    d_val = cls(**params, validate_args=True)
    d_nonval = cls(**params, validate_args=False)
    valid = d_val.sample()
    d_val.log_prob(valid)
    invalid = torch.full_like(valid, math.nan)
    with pytest.raises(ValueError, match=r"Expected value argument .* to be within the support"):
        d_val.log_prob(invalid)
    assert torch.isnan(d_nonval.log_prob(invalid)).all()
    if cls is not ExpConcrete:  # real_vector: every finite value is in the support
        outside = torch.full_like(valid, 2.0)
        with pytest.raises(ValueError, match="support"):
            d_val.log_prob(outside)
        d_nonval.log_prob(outside)


@pytest.mark.parametrize(("cls", "params"), BAD_EXAMPLES)
def test_validate_args_on_parameters(cls, params):
    with pytest.raises(ValueError):
        cls(**params, validate_args=True)


def test_validation_follows_torchs_default():
    logits = torch.tensor([0.0, math.nan, 1.0])
    default = Distribution._validate_args
    try:
        Distribution.set_default_validate_args(True)
        with pytest.raises(ValueError):
            Concrete(0.5, logits=logits)
        Distribution.set_default_validate_args(False)
        Concrete(0.5, logits=logits)  # refused only on request, as in torch
    finally:
        Distribution.set_default_validate_args(default)


def test_concrete_and_torchs_relaxed_one_hot_agree_on_supports():
    # torch's classes and ours describe the same sets.
    logits = _logits(3, 4)
    ours = Concrete(0.5, logits=logits)
    theirs = RelaxedOneHotCategorical(torch.tensor(0.5), logits=logits)
    y = ours.sample((5,))
    assert theirs.support.check(y).all() and ours.support.check(theirs.sample((5,))).all()
    assert isinstance(biject_to(ours.support), type(biject_to(theirs.support)))
    assert isinstance(transform_to(ours.support), type(transform_to(theirs.support)))
    assert BinaryConcrete.support is constraints.unit_interval
