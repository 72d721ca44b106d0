"""A diverging estimator is recorded and skipped, never fatal (issue 11, item 19).

``diverging`` is REINFORCE whose loss (or only the loss's gradient) turns NaN
from its third training call on: a deterministic divergence at step 2.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import discograd.cli as cli
from discograd import estimators
from discograd.estimators import REINFORCE
from discograd.estimators.registry import ESTIMATORS
from discograd.experiments.runner import RunDir
from discograd.experiments.sbn import SBNConfig, SBNTask
from discograd.experiments.ssl import SSLConfig, SSLTask
from discograd.experiments.toy import ToyConfig, ToyTask
from discograd.experiments.vae import VAEConfig, VAETask
from discograd.report import sbn_section, ssl_section, toy_section, vae_section
from model_helpers import run_task, tiny_data


class _NaNGradient(torch.autograd.Function):
    """The identity whose gradient is NaN: a finite loss with a non-finite gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * math.nan


class Diverging(REINFORCE):
    def __init__(self, what: str = "loss", after: int = 2) -> None:
        super().__init__()
        self.what, self.after, self.calls = what, after, 0

    def forward(self, f, q, *, generator=None):
        out = super().forward(f, q, generator=generator)
        if not self.training:  # diagnostics, not training steps
            return out
        self.calls += 1
        if self.calls <= self.after:
            return out
        if self.what == "loss":
            return dataclasses.replace(out, loss=out.loss * math.nan)
        return dataclasses.replace(out, loss=_NaNGradient.apply(out.loss))


@pytest.fixture(autouse=True)
def diverging(monkeypatch):
    monkeypatch.setitem(ESTIMATORS, "diverging", "Diverging")
    monkeypatch.setattr(estimators, "Diverging", Diverging, raising=False)
    monkeypatch.setattr("discograd.report.markdown._plots_available", lambda: False)


def _check(results: dict, spec: str, quantity: str, step: int, metric: str, other: str) -> None:
    where = {"estimator": spec, "step": step, "quantity": quantity}
    assert results[spec]["diverged"] == {**where, "seeds": [0]}
    assert results[spec]["per_seed"]["0"]["diverged"] == where
    assert results[spec].get(metric) is None  # a model stopped part-way has no test numbers
    assert results[other]["diverged"] is None and math.isfinite(results[other][metric])


def _rerun_changes_nothing(task, cfg, path, results, data) -> None:
    n = len(RunDir(path, dataclasses.asdict(cfg)).records())
    assert run_task(task, cfg, path, data=data) == results  # neither retried nor fatal
    assert len(RunDir(path, dataclasses.asdict(cfg)).records()) == n


@pytest.mark.parametrize("quantity", ["loss", "gradient"])
def test_vae_records_the_divergence_and_trains_the_next_estimator(quantity, tmp_path):
    spec = f"diverging:what={quantity}"
    cfg = VAEConfig(
        n_latent=2, n_categories=3, hidden=(8,), batch_size=20, steps=6, log_every=2,
        eval_every=3, eval_samples=3, iw_examples=10, checkpoint_every=3,
        estimators=(spec, "gumbel_softmax:tau=1.0"),
    )  # fmt: skip
    data = tiny_data()
    res = run_task(VAETask(), cfg, tmp_path, data=data)
    run = RunDir(tmp_path, dataclasses.asdict(cfg))
    _check(res, spec, quantity, 2, "test_neg_elbo", "gumbel_softmax:tau=1.0")
    [rec] = [r for r in run.records(f"vae/{spec}/seed0") if r.get("diverged")]
    assert (rec["estimator"], rec["step"], rec["quantity"]) == (spec, 2, quantity)
    text, summary = vae_section(run, res, cfg)
    assert f"diverged at step 2 (non-finite {quantity})" in text
    assert any(f"`{spec}` at step 2" in line for line in summary)
    _rerun_changes_nothing(VAETask(), cfg, tmp_path, res, data)


def test_sbn_records_the_divergence_and_trains_the_next_estimator(tmp_path):
    spec = "diverging:what=loss"
    cfg = SBNConfig(
        units=(6, 4), estimators=(spec, "st_gumbel_softmax:tau=1.0"), batch_size=20, steps=6,
        log_every=2, eval_every=3, valid_samples=5, eval_samples=10, iw_examples=10,
        checkpoint_every=3,
    )  # fmt: skip
    data = tiny_data()
    res = run_task(SBNTask(), cfg, tmp_path, data=data)
    run = RunDir(tmp_path, dataclasses.asdict(cfg))
    _check(res, spec, "loss", 2, "test_nll", "st_gumbel_softmax:tau=1.0")
    text, summary = sbn_section(run, res, cfg)
    assert "diverged at step 2 (non-finite loss)" in text and "Diverged in the SBN" in summary[-1]
    _rerun_changes_nothing(SBNTask(), cfg, tmp_path, res, data)


def test_ssl_records_the_divergence_and_trains_the_next_method(tmp_path):
    spec = "diverging:what=gradient"
    cfg = SSLConfig(
        n_classes=3, n_labels=6, z_dim=2, hidden=(8,), methods=(spec, "marginal"),
        batch_size=10, labelled_batch=4, steps=6, log_every=2, eval_every=3, checkpoint_every=3,
        timing_classes=0,
    )  # fmt: skip
    data = tiny_data()
    res = run_task(SSLTask(), cfg, tmp_path, data=data)
    run = RunDir(tmp_path, dataclasses.asdict(cfg))
    _check(res, spec, "gradient", 2, "test_accuracy", "marginal")
    assert res[spec]["speedup_vs_marginal"] > 0  # its cost per step is still measured
    text, summary = ssl_section(run, res, cfg)
    assert "diverged at step 2 (non-finite gradient)" in text
    assert "Diverged in the semi-supervised M2" in summary[-1]
    _rerun_changes_nothing(SSLTask(), cfg, tmp_path, res, data)


def test_toy_records_where_and_what(tmp_path):
    spec = "diverging:what=loss"
    cfg = ToyConfig(C=4, R=1, steps=10, var_every=5, var_draws=4, estimators=(spec, "exact"))
    res = run_task(ToyTask(), cfg, tmp_path)
    run = RunDir(tmp_path, dataclasses.asdict(cfg))
    assert res[spec]["diverged"] == {"estimator": spec, "step": 2, "quantity": "loss", "seeds": [0]}
    assert res["exact"]["diverged"] is None
    text, summary = toy_section(run, res, cfg)
    assert "step 2 (non-finite loss)" in text and f"`{spec}` at step 2" in summary[-1]


def test_the_command_reports_the_divergence_and_exits_0(tmp_path, capsys):
    out = tmp_path / "vae"
    argv = [
        "vae", "--n-latent", "2", "--n-categories", "3", "--hidden", "16", "--steps", "6",
        "--batch-size", "50", "--eval-every", "3", "--log-every", "3", "--eval-samples", "4",
        "--iw-examples", "20", "--checkpoint-every", "3", "--quiet", "--out", str(out),
        "--estimators", "diverging", "gumbel_softmax:tau=1.0",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    table = capsys.readouterr().out.split("vae results")[1].splitlines()
    assert any(
        " ".join(line.split()) == "diverging diverged at step 2 (non-finite loss)" for line in table
    )
    res = json.loads((out / "results.json").read_text())["vae"]
    where = {"estimator": "diverging", "step": 2, "quantity": "loss"}
    assert res["diverging"]["diverged"] == {**where, "seeds": [0]}
    assert "diverged at step 2 (non-finite loss)" in (out / "report.md").read_text()
    assert cli.main(argv) == 0  # a re-run neither retries nor fails
