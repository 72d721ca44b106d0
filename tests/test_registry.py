"""Estimators by name, and their metadata checked against what they do."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Independent, OneHotCategorical

from discograd import estimators as E
from discograd.baselines import EMA
from discograd.estimators import Estimate, Estimator, registry
from discograd.estimators.registry import ESTIMATORS, canonical, make, parse_spec
from discograd.schedules import ExponentialDecay, Schedule


def test_every_name_builds_its_class():
    for name, cls_name in ESTIMATORS.items():
        est = make(name)
        assert type(est).__name__ == cls_name
    assert isinstance(make("reinforce_ema:decay=0.5").baseline, EMA)
    assert make("rloo:n_samples=7").n_samples == 7
    assert make("GUMBEL-SOFTMAX:tau=0.3").tau == pytest.approx(0.3)


def test_parse_and_canonical():
    assert parse_spec("rebar:eta=1.5,tau=0.25,learn=false") == (
        "rebar",
        {"eta": 1.5, "tau": 0.25, "learn": False},
    )
    assert canonical("gumbel_rao: tau=0.5 , n_samples=10") == "gumbel_rao:n_samples=10,tau=0.5"
    assert canonical("arsm") == "arsm"


@pytest.mark.parametrize(
    "spec, match",
    [
        ("nope", "unknown estimator 'nope'"),
        ("rloo:n_samples", "use key=value"),
        ("rloo:k=3", "unknown hyper-parameter 'k' for rloo; it takes: n_samples"),
        ("rloo:n_samples=1", "n_samples"),
        ("gumbel_softmax:tau=-1", "tau"),
        ("reinmax:tau=0.5", "tau"),
        ("", "non-empty"),
    ],
)
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        make(spec)


def test_made_estimators_run():
    theta = torch.zeros(4, requires_grad=True)
    for name in ("rloo:n_samples=3", "arsm", "gumbel_softmax:tau=0.5"):
        out = make(name)(lambda z: z[..., -1], Categorical(logits=theta))
        assert out.loss.shape == ()
    assert E.Exact is type(make("exact"))


# ------------------------------------------------------------------ metadata
def test_names_and_filters():
    assert registry.names() == list(ESTIMATORS)
    assert registry.names()[0] == "exact"
    assert "reinforce_ema" not in registry.names(presets=False)
    assert registry.names(has_temperature=True) == [
        "gumbel_softmax",
        "st_gumbel_softmax",
        "gumbel_rao",
        "reinmax",
        "decoupled_st_gumbel_softmax",
        "gapped_straight_through",
    ]
    assert registry.names(exact=True) == ["exact", "exact_multi_sample"]
    assert registry.names(exact=True, multi_sample=False) == ["exact"]
    # Multi-sample-bound estimators (est(log_weight, q)) are listed apart.
    multi = registry.names(multi_sample=True)
    assert multi == ["exact_multi_sample", "vimco", "local_disarm", "local_arms"]
    single = registry.names(multi_sample=False)
    assert set(single) | set(multi) == set(ESTIMATORS) and not set(single) & set(multi)
    assert "arms" in single and registry.info("vimco").multi_sample
    assert not registry.info("arms").multi_sample
    ber = registry.names("bernoulli", unbiased=True, exact=False)
    assert "disarm" in ber and "arsm" not in ber and "exact" not in ber
    binary_only = {"arm", "disarm", "arms", "double_cv", "rodeo", "local_disarm", "local_arms"}
    assert set(registry.names("categorical")) == set(ESTIMATORS) - binary_only
    assert registry.names(unbiased=True, needs_grad_f=True) == [
        "rebar",
        "relax",
        "muprop",
        "double_cv",
        "rodeo",
    ]
    with pytest.raises(ValueError, match="kind"):
        registry.names("binary")


def test_info_records():
    rloo = registry.info("RLOO:n_samples=4")  # a spec: its hyper-parameters are ignored
    assert rloo.name == "rloo" and rloo.cls is E.RLOO and dict(rloo.defaults) == {"n_samples": 2}
    assert rloo.supports == {"bernoulli", "categorical"} and rloo.unbiased
    assert not rloo.needs_grad_f and not rloo.has_temperature and not rloo.exact
    assert "leave-one-out" in rloo.summary
    ema = registry.info("reinforce_ema")
    assert ema.cls is E.REINFORCE and ema.preset_of == "reinforce"
    assert dict(ema.defaults) == {"decay": 0.9, "n_samples": 1}
    reinforce = registry.info("reinforce")
    assert dict(reinforce.defaults) == {"n_samples": 1} and reinforce.components == ("baseline",)
    assert registry.info("relax").components == ("control_variate",)
    assert dict(registry.info("ars").defaults) == {
        "reference": "random",
        "max_evals_per_call": None,
    }
    assert registry.signature("gumbel_rao") == "GumbelRao(tau=1.0, n_samples=10)"
    assert registry.signature("reinforce_ema") == "reinforce_ema(decay=0.9, n_samples=1)"
    # REBAR / RELAX take a tau (the initial learned temperature) but have no schedule.
    assert "tau" in registry.info("rebar").defaults and not registry.info("rebar").has_temperature
    with pytest.raises(ValueError, match="unknown estimator 'nope'"):
        registry.info("nope")


def test_class_attributes_are_the_records():
    for e in registry.infos():
        for attr in (
            "supports",
            "unbiased",
            "needs_grad_f",
            "has_temperature",
            "exact",
            "multi_sample",
        ):
            assert getattr(e.cls, attr) == getattr(e, attr), (e.name, attr)
        if e.preset_of is None:
            assert e.cls.name == e.name
            assert getattr(E, e.cls.__name__) is e.cls  # exported by discograd.estimators


def test_make_with_python_values():
    gen = torch.Generator()
    assert make("rloo", generator=gen).generator is gen
    est = make("reinforce:n_samples=3", baseline=EMA(0.5))
    assert isinstance(est.baseline, EMA) and est.baseline.decay == 0.5 and est.n_samples == 3
    sched = ExponentialDecay(tau0=1.0, rate=0.1, floor=0.5)
    assert make("gumbel_softmax:tau=0.3", tau=sched).schedule is sched  # keywords win
    assert make("reinforce_ema:decay=0.5,n_samples=2").n_samples == 2
    with pytest.raises(ValueError, match="'baseline' of reinforce takes a module"):
        make("reinforce:baseline=ema")
    with pytest.raises(ValueError, match="unknown argument 'k' for rloo"):
        make("rloo", k=3)


# Metadata against behaviour: what the flags promise, every registered estimator keeps.
def _problem(kind: str):
    gen = torch.Generator().manual_seed(3)
    if kind == "categorical":
        theta = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64).requires_grad_()
        w = torch.linspace(-1, 1, 12, dtype=torch.float64).view(3, 4)

        def q():
            return Independent(OneHotCategorical(logits=theta), 1)

        def f(z):
            return ((z * w).sum((-1, -2)) - 0.3) ** 2
    else:
        theta = torch.randn(2, 5, generator=gen, dtype=torch.float64).requires_grad_()
        w = torch.linspace(-1, 1, 5, dtype=torch.float64)

        def q():
            return Independent(Bernoulli(logits=theta), 1)

        def f(z):
            return ((z * w).sum(-1) - 0.3) ** 2

    return theta, q, f


def _grad(name: str, kind: str, black_box: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The gradient estimate, and the gradient of ``cv_loss`` w.r.t. the estimator's parameters."""
    theta, q, f = _problem(kind)
    torch.manual_seed(0)  # RELAX's and RODEO's networks
    est = make(name)
    cost = (lambda z: f(z.detach())) if black_box else f
    out = est(cost, q(), generator=torch.Generator().manual_seed(1))
    (g,) = torch.autograd.grad(out.loss.sum(), theta, retain_graph=out.cv_loss is not None)
    params = [p for p in est.parameters() if p.requires_grad]
    if out.cv_loss is None or not params or not out.cv_loss.requires_grad:
        return g, None
    grads = torch.autograd.grad(out.cv_loss, params, allow_unused=True)
    return g, torch.cat([x.reshape(-1) for x in grads if x is not None])


@pytest.mark.parametrize("name", registry.names())
def test_needs_grad_f_is_what_the_estimator_does(name):
    """needs_grad_f=False: a cost that hides z from autograd gives the same gradient."""
    e = registry.info(name)
    kind = "categorical" if "categorical" in e.supports else "bernoulli"
    g, cv = _grad(name, kind, black_box=False)
    g_black, cv_black = _grad(name, kind, black_box=True)
    if e.needs_grad_f:
        # DoubleCV and RODEO start with their control variates scaled by 0 (as the
        # official code does): ∂f/∂z then shows only in what trains them.
        uses = not torch.allclose(g, g_black)
        if not uses and cv is not None and cv_black is not None:
            uses = not torch.allclose(cv, cv_black)
        assert uses, f"{name} ignores ∂f/∂z"
    else:
        assert torch.equal(g, g_black), f"{name} uses ∂f/∂z"


@pytest.mark.parametrize("name", registry.names())
def test_supports_and_has_temperature_are_what_the_estimator_does(name):
    e = registry.info(name)
    for kind in ("bernoulli", "categorical"):
        _, q, f = _problem(kind)
        if kind in e.supports:
            make(name)(f, q())
        else:
            with pytest.raises(TypeError, match="does not support"):
                make(name)(f, q())
    est = make(name)
    if e.has_temperature:
        assert isinstance(est.schedule, Schedule) and isinstance(est.tau, float)
        assert make(name, tau=1.5).tau == 1.5
        t = registry.tempered(est)
        assert t is est
        t.schedule = ExponentialDecay(tau0=2.0, rate=0.5, floor=1.0)
        assert est.tau == 2.0
    else:
        assert not isinstance(getattr(est, "schedule", None), Schedule)
        assert registry.tempered(est) is None


# -------------------------------------------------------------- registration
def test_registering_an_estimator_and_a_preset():
    @registry.register("constant_test")
    class ConstantTest(Estimator):
        """Zero gradient, the value of f at the most likely configuration."""

        supports = frozenset({"bernoulli"})
        unbiased = False
        needs_grad_f = False
        has_temperature = False

        def __init__(self, scale: float = 2.0, *, generator=None):
            super().__init__(generator=generator)
            self.scale = scale

        def estimate(self, f, latent, generator):
            fz = latent.call_f(f, latent.encode(latent.likely()), ())
            return Estimate(loss=fz * self.scale, value=fz.detach() * self.scale, n_evals=1)

    @registry.register_preset("constant_test_half", ConstantTest)
    def _half(*, generator=None):
        """ConstantTest at scale 0.5."""
        return ConstantTest(0.5, generator=generator)

    try:
        assert ConstantTest.name == "constant_test"
        assert registry.names()[-2:] == ["constant_test", "constant_test_half"]
        assert make("constant_test:scale=3").scale == 3
        assert make("constant_test_half").scale == 0.5
        assert registry.info("constant_test_half").summary == "ConstantTest at scale 0.5."
        assert "constant_test" in registry.names("bernoulli", unbiased=False)
        assert ESTIMATORS["constant_test_half"] == "ConstantTest"
        with pytest.raises(ValueError, match="is taken"):
            registry.register("constant_test")(type("Other", (ConstantTest,), {}))
    finally:
        registry.unregister("constant_test_half")
        registry.unregister("constant_test")
    assert "constant_test" not in registry.names() and "constant_test" not in ESTIMATORS


def test_registration_refuses_incomplete_metadata():
    class NoMeta(Estimator):
        pass

    with pytest.raises(TypeError, match="must declare supports, unbiased, needs_grad_f"):
        registry.register("no_meta")(NoMeta)
    with pytest.raises(ValueError, match="snake case"):
        registry.register("Bad-Name", unbiased=True)(NoMeta)
    with pytest.raises(TypeError, match="no tau"):
        registry.register(
            "no_tau",
            supports={"bernoulli"},
            unbiased=False,
            needs_grad_f=True,
            has_temperature=True,
        )(type("NoTau", (Estimator,), {}))
    with pytest.raises(TypeError, match="non-empty frozenset"):
        registry.register(
            "bad_kind",
            supports={"gaussian"},
            unbiased=True,
            needs_grad_f=False,
            has_temperature=False,
        )(type("BadKind", (Estimator,), {}))

    class Required(Estimator):
        supports = frozenset({"bernoulli"})
        unbiased = needs_grad_f = has_temperature = False

        def __init__(self, width: int, *, generator=None):
            super().__init__(generator=generator)

    with pytest.raises(TypeError, match="'width' has no default"):
        registry.register("required")(Required)
    with pytest.raises(ValueError, match="is not registered"):
        registry.register_preset("orphan", Required)(lambda: Required(1))
    assert not {"no_meta", "no_tau", "bad_kind", "required", "orphan"} & set(registry.names())


def test_an_entry_put_straight_into_ESTIMATORS_still_works(monkeypatch):
    """The way to add a name before @register (tests/test_divergence.py uses it)."""

    class Doubled(E.RLOO):
        pass

    monkeypatch.setitem(ESTIMATORS, "doubled_test", "Doubled")
    monkeypatch.setattr(E, "Doubled", Doubled, raising=False)
    assert type(make("doubled_test:n_samples=3")) is Doubled
    assert registry.info("doubled_test").defaults == {"n_samples": 2}
    assert registry.names()[-1] == "doubled_test"
    assert registry.info("doubled_test").unbiased
