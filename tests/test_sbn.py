"""Stochastic binary networks: nested estimators vs exact enumeration, the NLL estimate, runs."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from discograd.estimators import Exact
from discograd.estimators.registry import make
from discograd.experiments.runner import RunDir
from discograd.experiments.sbn import SBNConfig, SBNTask
from discograd.models import StochasticBinaryNetwork
from model_helpers import (
    assert_kill_per_phase_resumes_exactly,
    flat,
    per_draw_grads,
    run_task,
    tiny_data,
)

from conftest import assert_mean_matches

D64 = torch.float64


def tiny(latent: str = "bernoulli", seed: int = 0) -> tuple[StochasticBinaryNetwork, torch.Tensor]:
    """A 2×4-image network (4 pixels in, 4 out) with 3 and 2 binary units (or 2 and 1
    ternary variables), in float64, and two data points with distinct inputs."""
    torch.manual_seed(seed)
    if latent == "bernoulli":
        model = StochasticBinaryNetwork((2, 4), "bernoulli", units=(3, 2))
    else:
        model = StochasticBinaryNetwork((2, 4), "categorical", units=(2, 1), n_categories=3)
    model = model.double()
    with torch.no_grad():  # larger weights: gradients well away from zero
        for p in model.parameters():
            p.mul_(2.0)
    x = torch.tensor([[1, 0, 1, 1, 0, 1, 1, 0], [0, 1, 1, 0, 1, 1, 0, 1]], dtype=D64)
    return model, x


def configurations(kind: str, n_vars: int, C: int) -> torch.Tensor:
    """All joint configurations, encoded as f sees them: [N, n_vars] or [N, n_vars, C]."""
    if kind == "bernoulli":
        return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n_vars)), dtype=D64)
    idx = torch.tensor(list(itertools.product(range(C), repeat=n_vars)))
    return F.one_hot(idx, C).to(D64)


def log_prob(kind: str, logits: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """log p(h) of configurations h under factorised logits (broadcasting), summed over units."""
    if kind == "bernoulli":
        return (h * F.logsigmoid(logits) + (1 - h) * F.logsigmoid(-logits)).sum(-1)
    C = h.shape[-1]
    lg = torch.log_softmax(logits.view(*logits.shape[:-1], -1, C), -1)
    return (h * lg).sum((-1, -2))


def enumerated(
    model: StochasticBinaryNetwork, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """By hand: E_{h1} E_{h2|h1}[−log p(x_b|h2)] and −log p(x_b|x_t), both [B] (autograd-able)."""
    kind, C = model.latent_kind, model.n_categories
    x_top, x_bot = model.split(x)
    h1 = configurations(kind, model.units[0], C)  # [N1, ...]
    h2 = configurations(kind, model.units[1], C)  # [N2, ...]
    flat1 = h1.flatten(1)
    lp1 = log_prob(kind, model.layer1(x_top).unsqueeze(0), h1.unsqueeze(1))  # [N1, B]
    lp2 = log_prob(kind, model.layer2(flat1).unsqueeze(0), h2.unsqueeze(1))  # [N2, N1]
    ll = -F.binary_cross_entropy_with_logits(
        model.decoder(h2.flatten(1)).unsqueeze(1).expand(-1, len(x), -1),
        x_bot.expand(len(h2), -1, -1),
        reduction="none",
    ).sum(-1)  # [N2, B]
    joint = lp1.unsqueeze(0) + lp2.unsqueeze(-1)  # [N2, N1, B]
    bound = (joint.exp() * -ll.unsqueeze(1)).sum((0, 1))
    nll = -torch.logsumexp(joint + ll.unsqueeze(1), (0, 1))
    return bound, nll


@pytest.mark.parametrize("latent", ["bernoulli", "categorical"])
def test_nested_exact_equals_hand_enumeration(latent):
    model, x = tiny(latent)
    params = list(model.parameters())
    ref, _ = enumerated(model, x)
    out = model.objective(x, Exact(), Exact())
    torch.testing.assert_close(out.nll, ref.detach())
    torch.testing.assert_close(out.surrogate, ref)
    g_out = torch.autograd.grad(out.loss, params)
    g_ref = torch.autograd.grad(ref.mean(), params)
    torch.testing.assert_close(flat(g_out), flat(g_ref))
    n1 = model.n_categories ** model.units[0]
    n2 = model.n_categories ** model.units[1]
    assert out.layer_evals == n1 and out.n_evals == n1 * n2


def nested_draws(model, x, spec: str, n: int, seed: int = 0):
    outer, inner = make(spec).double(), make(spec).double()
    gen = torch.Generator().manual_seed(seed)
    values = []

    def losses(k: int) -> torch.Tensor:
        out = model.objective(x.repeat(k, 1), outer, inner, generator=gen)
        values.append(out.nll.view(k, -1))
        return out.surrogate.view(k, -1).sum(1)

    grads = per_draw_grads(losses, list(model.parameters()), n)
    return grads, torch.cat(values)


@pytest.mark.parametrize(
    ("latent", "spec"),
    [
        ("bernoulli", "rloo:n_samples=3"),
        ("bernoulli", "reinforce_ema"),
        ("bernoulli", "arm"),
        ("bernoulli", "rebar"),
        ("categorical", "arsm"),
    ],
)
def test_nested_unbiased_estimators_match_the_exact_gradient(latent, spec):
    """z-test on every parameter: both layers (outer and inner score terms) and the decoder."""
    model, x = tiny(latent)
    params = list(model.parameters())
    ref, _ = enumerated(model, x)
    exact = flat(torch.autograd.grad(ref.sum(), params))
    grads, values = nested_draws(model, x, spec, 3000)
    assert grads.abs().sum(0).gt(0).all()  # every coordinate is exercised
    assert_mean_matches(grads, exact)
    assert_mean_matches(values, ref)  # the nested value is unbiased for the bound


def test_nested_test_has_power_against_a_biased_estimator():
    """The same z-test rejects Gumbel-Softmax (biased), so the test above can fail."""
    model, x = tiny("bernoulli")
    params = list(model.parameters())
    ref, _ = enumerated(model, x)
    exact = flat(torch.autograd.grad(ref.sum(), params))
    grads, _ = nested_draws(model, x, "gumbel_softmax:tau=1.0", 1000)
    with pytest.raises(AssertionError, match="max"):
        assert_mean_matches(grads, exact)


def test_evaluations_and_control_variate_losses_are_collected():
    model, x = tiny("bernoulli")
    gen = torch.Generator().manual_seed(0)
    out = model.objective(
        x, make("rloo:n_samples=4").double(), make("rloo:n_samples=4").double(), generator=gen
    )
    assert (out.n_evals, out.layer_evals) == (16.0, 4.0)
    out = model.objective(x, make("arm").double(), make("arm").double(), generator=gen)
    assert 1.0 <= out.layer_evals <= 2.0 and 1.0 <= out.n_evals <= 4.0
    # REBAR: 3 evaluations of f1, each calling an inner REBAR with 3 of f2.
    outer, inner = make("rebar").double(), make("rebar").double()
    out = model.objective(x, outer, inner, generator=gen)
    assert (out.n_evals, out.layer_evals) == (9.0, 3.0)
    assert out.cv_loss is not None
    cv_params = [*outer.parameters(), *inner.parameters()]
    g_cv = torch.autograd.grad(out.cv_loss, cv_params, retain_graph=True, allow_unused=True)
    assert all(g is not None and torch.isfinite(g).all() for g in g_cv)
    assert any(float(g.abs().sum()) > 0 for g in g_cv[2:])  # the inner estimator learns too
    # No gradient of the loss reaches the control variates.
    g_loss = torch.autograd.grad(out.loss, cv_params, allow_unused=True)
    assert all(g is None or float(g.abs().sum()) == 0 for g in g_loss)


@pytest.mark.parametrize("latent", ["bernoulli", "categorical"])
def test_importance_sampled_nll_tightens_to_the_exact_value(latent):
    model, x = tiny(latent, seed=1)
    x = x.repeat(50, 1)
    with torch.no_grad():
        bound, nll = enumerated(model, x)
    gen = torch.Generator().manual_seed(0)
    one = model.nll(x, 1, generator=gen)
    # m = 1: an unbiased estimate of the single-sample bound.
    assert_mean_matches((one - bound).unsqueeze(1), torch.zeros(1))
    many = model.nll(x, 4000, chunk=700, generator=gen)
    assert float((many - nll).abs().max()) < 0.05
    assert float(bound.mean()) > float(nll.mean())
    assert torch.isfinite(one).all()
    with pytest.raises(ValueError, match="m must be"):
        model.nll(x, 0)
    with pytest.raises(ValueError, match="chunk must be"):
        model.nll(x, 5, chunk=0)
    pred = model.predict_bottom(model.split(x)[0], 10, generator=gen)
    assert pred.shape == (100, 4) and bool(((pred >= 0) & (pred <= 1)).all())


def test_model_arguments_and_split():
    m = StochasticBinaryNetwork((8, 8))
    assert (m.top_dim, m.bottom_dim, m.units) == (32, 32, (200, 200))
    m = StochasticBinaryNetwork((28, 28), "categorical")
    assert (m.top_dim, m.bottom_dim, m.units) == (392, 392, (20, 20))
    assert m.layer1[-1].out_features == 200  # 20 variables × 10 classes
    top, bottom = StochasticBinaryNetwork((3, 2), units=(2, 2)).split(torch.arange(6.0))
    assert top.tolist() == [0.0, 1.0] and bottom.tolist() == [2.0, 3.0, 4.0, 5.0]
    with pytest.raises(ValueError, match="features"):
        m.split(torch.zeros(3, 10))
    with pytest.raises(ValueError, match="image_shape"):
        StochasticBinaryNetwork((1, 8))
    with pytest.raises(ValueError, match="latent"):
        StochasticBinaryNetwork((8, 8), "gaussian")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="units"):
        StochasticBinaryNetwork((8, 8), units=(3,))
    with pytest.raises(ValueError, match="n_categories"):
        StochasticBinaryNetwork((8, 8), "categorical", n_categories=1)


# ------------------------------------------------------------------ experiment
def small_cfg(**kw) -> SBNConfig:
    base = dict(
        units=(6, 4),
        estimators=("st_gumbel_softmax:tau=1.0", "reinforce_ema", "relax"),
        batch_size=20,
        steps=8,
        log_every=2,
        eval_every=4,
        valid_samples=5,
        eval_samples=20,
        iw_examples=10,
        checkpoint_every=3,
    )
    base.update(kw)
    return SBNConfig(**base)


def test_run_sbn_smoke_and_resume_equivalence(tmp_path):
    data = tiny_data()
    cfg = small_cfg()
    res_full = run_task(SBNTask(), cfg, tmp_path / "full", data=data)
    full = RunDir(tmp_path / "full", dataclasses.asdict(cfg))
    assert set(res_full) == {"st_gumbel_softmax:tau=1.0", "reinforce_ema", "relax"}
    for summary in res_full.values():
        assert summary["iw_samples"] == 20 and summary["iw_examples"] == 10
        for key in ("test_nll", "test_nll_1", "valid_nll", "seconds_per_step", "evals_per_step"):
            assert math.isfinite(summary[key])
    assert res_full["relax"]["evals_per_step"] == 9.0
    assert res_full["reinforce_ema"]["layer_evals_per_step"] == 1.0
    assert (full.path / "images-sbn_relax_seed0.pt").exists()
    saved = torch.load(full.path / "images-sbn_relax_seed0.pt")
    assert saved["recon"].shape == saved["test"].shape == (16, 16)

    # Kill every phase once, right after its checkpoint at step 6 (state: EMA
    # baselines, RELAX's network and its optimiser, temperature counters).
    assert_kill_per_phase_resumes_exactly(
        SBNTask, cfg, tmp_path, data, res_full, phases=len(cfg.estimators), interrupt_at=6
    )


def test_run_sbn_categorical_defaults(tmp_path):
    cfg = small_cfg(latent="categorical", units=(3, 2), n_categories=4, estimators=(), steps=2)
    assert cfg.estimator_specs()[-1] == "ars"
    cfg = dataclasses.replace(cfg, estimators=("arsm", "gumbel_softmax:tau=1.0"))
    res = run_task(SBNTask(), cfg, tmp_path, data=tiny_data())
    assert res["arsm"]["layer_evals_per_step"] >= 1.0
    assert res["gumbel_softmax:tau=1.0"]["evals_per_step"] == 1.0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("steps", 0),
        ("batch_size", 1.5),
        ("latent", "gaussian"),
        ("units", (3,)),
        ("n_categories", 1),
        ("binarization", "otsu"),
        ("lr", -1.0),
        ("estimators", ("arsm",)),
        ("estimators", ("exact",)),
        ("estimators", ("rloo:n_samples=4", "rloo:n_samples=4")),
        ("seeds", (-1,)),
        ("hidden", (0,)),
    ],
)
def test_bad_config_values_name_the_field(field, value):
    kw = {field: value}
    if field == "n_categories":
        kw["latent"] = "categorical"
    with pytest.raises(ValueError, match=field.rstrip("s") if field == "estimators" else field):
        SBNConfig(**kw).validate()


def test_batch_larger_than_data_is_refused(tmp_path):
    cfg = small_cfg(batch_size=1000)
    with pytest.raises(ValueError, match="batch_size"):
        run_task(SBNTask(), cfg, tmp_path, data=tiny_data())
