"""M2: exact marginalisation by hand, estimator paths against it, labelled-set choice, runs."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from discograd.estimators.registry import make
from discograd.experiments.runner import RunDir
from discograd.experiments.ssl import SSLConfig, SSLTask, select_labelled
from discograd.models import M2
from model_helpers import (
    assert_kill_per_phase_resumes_exactly,
    flat,
    per_draw_grads,
    run_task,
    tiny_data,
)

from conftest import assert_mean_matches

D64 = torch.float64


def tiny(C: int = 3, seed: int = 0) -> tuple[M2, torch.Tensor]:
    torch.manual_seed(seed)
    model = M2(6, C, z_dim=2, hidden=(5,)).double()
    gen = torch.Generator().manual_seed(seed + 1)
    x = (torch.rand(4, 6, generator=gen) < 0.5).to(D64)
    return model, x


def hand_marginal(model: M2, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """U(x) = Σ_y q(y|x)(−L(x, y)) − H(q(y|x)), a loop over classes (autograd-able), [B]."""
    C = model.n_classes
    log_pi = torch.log_softmax(model.classifier(x), -1)
    total = (log_pi.exp() * log_pi).sum(-1)  # −H
    for c in range(C):
        y = F.one_hot(torch.full((len(x),), c), C).to(x.dtype)
        total = total + log_pi[:, c].exp() * model.neg_elbo(x, y, eps=eps[c])
    return total


def test_neg_elbo_matches_its_definition():
    model, x = tiny()
    y = F.one_hot(torch.tensor([0, 1, 2, 0]), 3).to(D64)
    eps = torch.randn(4, 2, dtype=D64, generator=torch.Generator().manual_seed(3))
    mu, logvar = model.encoder(torch.cat([x, y], -1)).chunk(2, -1)
    z = mu + (0.5 * logvar).exp() * eps
    log_px = -F.binary_cross_entropy_with_logits(
        model.decoder(torch.cat([z, y], -1)), x, reduction="none"
    ).sum(-1)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    kl = torch.distributions.kl_divergence(q, p).sum(-1)
    torch.testing.assert_close(model.neg_elbo(x, y, eps=eps), -log_px + kl + math.log(3))


@pytest.mark.parametrize("entropy", ["analytic", "sampled"])
def test_exact_marginal_equals_hand_enumeration_with_its_gradient(entropy):
    model, x = tiny()
    params = list(model.parameters())
    seed = 5
    out = model.unlabelled(
        x, "marginal", entropy=entropy, generator=torch.Generator().manual_seed(seed)
    )
    # The batched call draws the noise of all classes at once, [C, B, z]: replay it.
    eps = torch.randn(3, 4, 2, dtype=D64, generator=torch.Generator().manual_seed(seed))
    ref = hand_marginal(model, x, eps)
    torch.testing.assert_close(out.value, ref.detach())
    torch.testing.assert_close(out.loss, ref)
    g = torch.autograd.grad(out.loss.sum(), params)
    g_ref = torch.autograd.grad(ref.sum(), params)
    torch.testing.assert_close(flat(g), flat(g_ref))
    assert out.n_evals == 3.0 and out.cv_loss is None


def test_objective_weights_follow_kingma():
    """J^α/N = N_l/N · mean(−L) + N_u/N · mean(U) + α · mean(−log q(y|x))."""
    model, x = tiny()
    y = torch.tensor([0, 2, 1, 1])
    x_u = x.flip(0)
    obj = model.objective(
        x,
        y,
        x_u,
        "marginal",
        alpha=0.3,
        dataset_sizes=(10, 90),
        generator=torch.Generator().manual_seed(0),
    )
    gen = torch.Generator().manual_seed(0)
    lab, nll = model.labelled_terms(x, y, generator=gen)
    unl = model.unlabelled(x_u, "marginal", generator=gen)
    expected = 0.1 * lab.mean() + 0.9 * unl.loss.mean() + 0.3 * nll.mean()
    torch.testing.assert_close(obj.loss, expected)
    torch.testing.assert_close(nll, -torch.log_softmax(model.classifier(x), -1)[range(4), y])
    torch.testing.assert_close(obj.unlabelled_bound, unl.value)
    with pytest.raises(ValueError, match="alpha"):
        model.objective(x, y, x_u, "marginal", alpha=-1.0)
    with pytest.raises(TypeError, match="int64"):
        model.labelled_terms(x, y.float())
    with pytest.raises(ValueError, match="method"):
        model.unlabelled(x, "enumerate")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="entropy"):
        model.unlabelled(x, "marginal", entropy="none")  # type: ignore[arg-type]


def paired_differences(model, x, spec: str, n: int, entropy: str = "analytic"):
    """Draws of (estimator gradient − marginal gradient) of Σ_b U(x_b), independent noise."""
    est = make(spec).double()
    params = list(model.parameters())
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)

    def by(method, gen):
        def losses(k: int) -> torch.Tensor:
            out = model.unlabelled(x.repeat(k, 1), method, entropy=entropy, generator=gen)
            return out.loss.view(k, -1).sum(1)

        return losses

    a = per_draw_grads(by(est, g1), params, n)
    b = per_draw_grads(by("marginal", g2), params, n)
    return a - b, a


@pytest.mark.parametrize(
    ("spec", "entropy"),
    [("rloo:n_samples=3", "analytic"), ("rloo:n_samples=3", "sampled"), ("arsm", "analytic")],
)
def test_unbiased_estimator_path_matches_the_marginal_gradient(spec, entropy):
    """Both are unbiased for ∇ E_ε[U]: the mean paired difference is zero (z-test, all params)."""
    model, x = tiny()
    diff, draws = paired_differences(model, x, spec, 2000, entropy)
    assert draws.abs().sum(0).gt(0).all()
    assert_mean_matches(diff, torch.zeros(diff.shape[1]))


def test_the_paired_test_has_power_against_gumbel_softmax():
    model, x = tiny()
    diff, _ = paired_differences(model, x, "gumbel_softmax:tau=1.0", 2000)
    with pytest.raises(AssertionError, match="max"):
        assert_mean_matches(diff, torch.zeros(diff.shape[1]))


def test_estimator_costs_and_finiteness_at_extreme_weights():
    model, x = tiny(C=4)
    gen = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 1, 2, 3])
    for method, n in (
        ("marginal", 4.0),
        (make("gumbel_softmax:tau=1.0"), 1.0),
        (make("relax"), 3.0),
    ):
        out = model.objective(x, y, x, method, generator=gen)
        assert out.n_evals == n
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1e3)
    for method in ("marginal", make("st_gumbel_softmax:tau=1.0").double()):
        out = model.objective(x, y, x, method, generator=gen)
        grads = torch.autograd.grad(out.loss, list(model.parameters()), allow_unused=True)
        assert torch.isfinite(out.loss)
        assert all(g is None or torch.isfinite(g).all() for g in grads)
    with pytest.raises(ValueError, match="n_classes"):
        M2(6, 1)
    with pytest.raises(ValueError, match="classes"):
        model.neg_elbo(x, torch.zeros(4, 3, dtype=D64))


def test_select_labelled_is_balanced_seeded_and_checked():
    def gen(seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    labels = torch.arange(300) % 10
    a = select_labelled(labels, 100, 10, gen(0))
    assert len(a) == len(set(a.tolist())) == 100
    assert torch.bincount(labels[a], minlength=10).tolist() == [10] * 10
    assert torch.equal(a, select_labelled(labels, 100, 10, gen(0)))
    assert not torch.equal(a, select_labelled(labels, 100, 10, gen(1)))
    with pytest.raises(ValueError, match="class"):
        select_labelled(labels[:95], 100, 10, gen(0))  # class 9 has 9 examples


# ------------------------------------------------------------------ experiment
def small_cfg(**kw) -> SSLConfig:
    base = dict(
        n_classes=3,
        n_labels=6,
        z_dim=2,
        hidden=(8,),
        methods=("marginal", "st_gumbel_softmax:tau=1.0", "reinforce_ema"),
        anneal_rate=0.1,
        anneal_every=2,
        batch_size=10,
        labelled_batch=4,
        steps=8,
        log_every=2,
        eval_every=4,
        checkpoint_every=3,
        timing_classes=0,
    )
    base.update(kw)
    return SSLConfig(**base)


def test_run_ssl_smoke_and_resume_equivalence(tmp_path):
    data = tiny_data()
    cfg = small_cfg()
    res_full = run_task(SSLTask(), cfg, tmp_path / "full", data=data)
    full = RunDir(tmp_path / "full", dataclasses.asdict(cfg))
    assert set(res_full) == {"marginal", "st_gumbel_softmax:tau=1.0", "reinforce_ema"}
    for summary in res_full.values():
        assert 0.0 <= summary["test_accuracy"] <= 1.0
        assert math.isfinite(summary["test_neg_elbo"]) and summary["speedup_vs_marginal"] > 0
        assert (summary["labels"], summary["n_labels"], summary["n_unlabelled"]) == ("real", 6, 54)
    assert res_full["marginal"]["evals_per_step"] == 3.0
    assert res_full["marginal"]["speedup_vs_marginal"] == 1.0
    taus = [r["tau"] for r in full.records("ssl/st_gumbel_softmax:tau=1.0/seed0") if "tau" in r]
    assert taus[0] > taus[-1]  # the annealed temperature is part of the resumed state

    # kill every phase once, right after its checkpoint at step 6
    assert_kill_per_phase_resumes_exactly(
        SSLTask, cfg, tmp_path, data, res_full, phases=len(cfg.methods), interrupt_at=6
    )


def test_run_ssl_random_labels_for_timing(tmp_path):
    cfg = small_cfg(n_classes=6, methods=("marginal", "gumbel_softmax:tau=1.0"), steps=2)
    res = run_task(SSLTask(), cfg, tmp_path, data=tiny_data())
    assert res["marginal"]["labels"] == "random" and res["marginal"]["evals_per_step"] == 6.0
    assert res["gumbel_softmax:tau=1.0"]["evals_per_step"] == 1.0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("steps", 0),
        ("n_classes", 1),
        ("n_labels", 7),
        ("z_dim", 0),
        ("entropy", "none"),
        ("alpha", -0.1),
        ("lr", 0.0),
        ("binarization", "otsu"),
        ("methods", ()),
        ("methods", ("arm",)),
        ("methods", ("nonsense",)),
        ("hidden", (0,)),
        ("seeds", (-2,)),
    ],
)
def test_bad_config_values_name_the_field(field, value):
    pattern = {"methods": "method|estimator", "n_labels": "n_labels"}.get(field, field)
    with pytest.raises(ValueError, match=pattern):
        small_cfg(**{field: value}).validate()


def test_batch_larger_than_the_unlabelled_set_is_refused(tmp_path):
    cfg = small_cfg(batch_size=100)
    with pytest.raises(ValueError, match="batch_size"):
        run_task(SSLTask(), cfg, tmp_path, data=tiny_data())
