"""The VAE experiment: exact resume, bookkeeping, validation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from discograd.data.datasets import ImageData
from discograd.errors import ConfigError
from discograd.experiments import RunDir
from discograd.experiments.vae import VAEConfig, VAETask
from model_helpers import Interrupted, run_task, without_timing


def tiny_data(seed: int = 0) -> ImageData:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(160, 16, generator=gen)
    y = torch.randint(0, 10, (160,), generator=gen)
    return ImageData(
        "tiny", (4, 4), x[:100], y[:100], x[100:130], y[100:130], x[130:], y[130:], "test"
    )


CFG = VAEConfig(
    n_latent=2, n_categories=3, hidden=(8,), batch_size=20, steps=24, log_every=4, eval_every=8,
    eval_samples=3, iw_examples=10, checkpoint_every=6, binarization="dynamic",
    estimators=("rloo:n_samples=2", "relax", "gumbel_softmax:tau=1.0"), anneal_rate=0.05,
    anneal_every=4,
)  # fmt: skip


def _records(path) -> list[dict]:
    return without_timing(RunDir(path, dataclasses.asdict(CFG)).records())


def test_resume_gives_the_same_metrics_as_an_uninterrupted_run(tmp_path):
    data = tiny_data()
    res_a = run_task(VAETask(), CFG, tmp_path / "a", data=data)

    # Kill the run at every checkpoint from step 12 on, resuming each time: each
    # attempt gets a little further, some die mid-phase after others finished.
    interruptions = 0
    while True:
        try:
            res_b = run_task(VAETask(), CFG, tmp_path / "b", data=data, interrupt_at=12)
            break
        except Interrupted:
            interruptions += 1
            assert interruptions < 20
    assert interruptions >= 3
    assert without_timing(res_a) == without_timing(res_b)
    assert _records(tmp_path / "a") == _records(tmp_path / "b")
    # the annealed temperature was logged and resumed with the schedule
    a = RunDir(tmp_path / "a", dataclasses.asdict(CFG))
    taus = [r["tau"] for r in a.records("vae/gumbel_softmax:tau=1.0/seed0") if "tau" in r]
    assert taus[0] == 1.0 and taus[-1] < 1.0


def test_seeds_are_an_axis_and_the_final_models_are_kept(tmp_path):
    cfg = dataclasses.replace(CFG, steps=4, seeds=(0, 1, 2), estimators=("rloo:n_samples=2",))
    res = run_task(VAETask(), cfg, tmp_path, data=tiny_data())["rloo:n_samples=2"]
    values = [res["per_seed"][s]["test_neg_elbo"] for s in ("0", "1", "2")]
    assert len(set(values)) == 3  # each seed its own initial weights, batches and noise
    mean = sum(values) / 3
    se = (sum((v - mean) ** 2 for v in values) / 2 / 3) ** 0.5
    assert res["test_neg_elbo"] == pytest.approx(mean) and res["se"]["test_neg_elbo"] == (
        pytest.approx(se)
    )
    assert res["n"]["test_neg_elbo"] == 3 and res["seeds"] == [0, 1, 2]
    # The documented one-liner gives back the trained model, ready to use.
    saved = torch.load(tmp_path / "models" / "vae_rloo_n_samples_2_seed1.pt", weights_only=False)
    model = saved["model"]
    assert saved["seed"] == 1 and saved["estimator"] == "rloo:n_samples=2"
    x = (tiny_data().test[:5] > 0.5).float()
    assert model.neg_elbo(x, generator=torch.Generator().manual_seed(0)).shape == (5,)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("steps", 0, "steps must be a positive integer"),
        ("latent", "gaussian", "latent must be"),
        ("kl", "exact", "kl must be"),
        ("binarization", "otsu", "binarization"),
        ("lr", -1.0, "lr must be positive"),
        ("estimators", ("arm",), "does not support categorical"),
        ("estimators", ("rloo:n_samples=2",), None),  # fine unless kl is relaxed:
    ],
)
def test_config_validation(field, value, match):
    cfg = dataclasses.replace(CFG, **{field: value})
    if match is None:
        cfg.validate()
        with pytest.raises(ValueError, match="needs a relaxed estimator"):
            dataclasses.replace(cfg, kl="relaxed").validate()
        return
    with pytest.raises(ValueError, match=match):
        cfg.validate()


def test_batch_larger_than_the_data_is_refused(tmp_path):
    cfg = dataclasses.replace(CFG, batch_size=500, estimators=("rloo:n_samples=2",))
    with pytest.raises(ValueError, match="batch_size=500 exceeds"):
        run_task(VAETask(), cfg, tmp_path, data=tiny_data())


def test_gradient_checks_against_the_exact_encoder_gradient(tmp_path):
    cfg = dataclasses.replace(
        CFG, n_latent=1, n_categories=5, grad_check_every=8, grad_check_draws=20,
        binarization="threshold", anneal_rate=0.0,
        estimators=("exact", "rloo:n_samples=3", "gumbel_softmax:tau=1.0"),
    )  # fmt: skip
    run_task(VAETask(), cfg, tmp_path, data=tiny_data())
    run = RunDir(tmp_path, dataclasses.asdict(cfg))
    checks = {
        phase: [r for r in run.records(f"{phase}/seed0") if "grad_cosine" in r]
        for phase in ("vae/exact", "vae/rloo:n_samples=3", "vae/gumbel_softmax:tau=1.0")
    }
    assert all(len(v) == 4 for v in checks.values())  # steps 0, 8, 16, 24
    for r in checks["vae/exact"]:
        assert r["grad_variance"] == 0 and r["grad_cosine"] > 0.999999
    for r in checks["vae/rloo:n_samples=3"]:
        # unbiased: the bias is of the size of its Monte-Carlo noise floor
        assert r["grad_variance"] > 0 and r["grad_bias"] < 5 * r["grad_bias_noise"]
    with pytest.raises(ValueError, match="enumerable posterior"):
        dataclasses.replace(cfg, n_latent=20, n_categories=10).validate()


def test_exact_on_a_posterior_too_large_to_enumerate_is_refused_up_front():
    cfg = dataclasses.replace(CFG, n_latent=20, estimators=("exact",))
    with pytest.raises(ConfigError, match="exact would enumerate 3486784401 configurations"):
        cfg.validate()
    dataclasses.replace(cfg, n_latent=2).validate()


def test_relax_trained_on_the_encoders_gradient_variance(tmp_path):
    # variance_of=upstream: the control variate descends the squared gradient of the
    # encoder's parameters (one more backward pass through them inside the step); the
    # step's own backward pass must still find the encoder's graph whole.
    cfg = dataclasses.replace(
        CFG, steps=8, kl="estimated", estimators=("relax:variance_of=upstream",)
    )
    res = run_task(VAETask(), cfg, tmp_path, data=tiny_data())["relax:variance_of=upstream"]
    assert torch.isfinite(torch.tensor(res["test_neg_elbo"]))
    assert res["per_seed"]["0"]["diverged"] is None
