"""The binary toys of REBAR / RELAX (``discograd toy --problem rebar|relax``): exact
gradients, the descent they drive, the problem presets and the command."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch.distributions import Bernoulli, Independent

import discograd.cli as cli
from discograd.diagnostics import gradient_stats
from discograd.estimators import DisARM, Exact
from discograd.experiments import RunDir
from discograd.experiments.config import build
from discograd.experiments.toy import (
    BINARY_TOY_ESTIMATORS,
    TOY_ESTIMATORS,
    ToyConfig,
    ToyTask,
    binary_toy_gradient,
    binary_toy_loss,
)
from model_helpers import run_task


def cost(t: float):
    return lambda b: ((b - t) ** 2).sum(-1)


@pytest.mark.parametrize("t", [0.45, 0.499])
def test_the_closed_form_gradient_is_the_exact_one(t):
    theta = torch.tensor([-1.5, 0.0, 0.3, 2.0], dtype=torch.float64, requires_grad=True)
    (auto,) = torch.autograd.grad(binary_toy_loss(theta, t), theta)
    assert torch.allclose(binary_toy_gradient(theta.detach(), t), auto, rtol=1e-12)
    out = Exact()(cost(t), Independent(Bernoulli(logits=theta), 1))
    (by_enumeration,) = torch.autograd.grad(out.loss, theta)
    assert torch.allclose(by_enumeration, auto, rtol=1e-12)
    assert float(out.value) == pytest.approx(float(binary_toy_loss(theta.detach(), t)), rel=1e-12)
    # t = 0.499: the two outcomes differ by 1 - 2t = 0.002, the signal the RELAX toy tests
    assert float(auto[1]) == pytest.approx(0.25 * (1 - 2 * t))


def test_disarm_is_unbiased_on_the_relax_toy():
    theta = torch.tensor([0.4, -0.2, 1.0], dtype=torch.float64, requires_grad=True)
    q = Independent(Bernoulli(logits=theta), 1)
    stats = gradient_stats(
        DisARM(), cost(0.499), q, theta, 20000, generator=torch.Generator().manual_seed(0)
    )
    print(f"disarm on the relax toy: bias {stats.bias:.2e}, noise {stats.bias_noise:.2e}")
    assert stats.bias < 4 * stats.bias_noise


def test_the_exact_entry_follows_gradient_descent_from_zero(tmp_path):
    cfg = build(
        ToyConfig,
        {"problem": "rebar", "n_vars": 3, "steps": 40, "lr": 2.0, "eval_every": 10},
        {"var_every": 20, "var_draws": 8, "estimators": ["exact", "disarm"]},
    )
    res = run_task(ToyTask(), cfg, tmp_path)
    theta = torch.zeros(3, dtype=torch.float64)
    expected = {}
    for step in range(cfg.steps + 1):
        if step % 10 == 0:
            expected[step] = float(binary_toy_loss(theta, 0.45))
        theta = theta - 2.0 * binary_toy_gradient(theta, 0.45)
    records = RunDir(tmp_path, dataclasses.asdict(cfg)).records("toy/exact/seed0")
    got = {r["step"]: r["expected_loss"] for r in records if "expected_loss" in r}
    assert got.keys() == expected.keys()
    for step, value in expected.items():
        assert got[step] == pytest.approx(value, rel=1e-12)
    exact = res["exact"]
    assert exact["optimum"] == pytest.approx(3 * 0.45**2)
    assert exact["mean_grad_variance"] < 1e-30 and res["disarm"]["mean_grad_variance"] > 0
    assert exact["expected_loss"] < 3 * (0.5 * 0.45**2 + 0.5 * 0.55**2)  # went downhill


def test_problem_presets_and_overrides():
    arsm = build(ToyConfig)
    assert arsm.problem == "arsm" and arsm.estimators == TOY_ESTIMATORS and not arsm.binary
    relax = build(ToyConfig, {"problem": "relax"})
    assert relax.t == 0.499 and relax.estimators == BINARY_TOY_ESTIMATORS
    assert {"disarm", "arm", "relax", "exact"} <= set(relax.estimators)
    assert build(ToyConfig, {"problem": "rebar", "target": 0.3}).t == 0.3
    mine = build(ToyConfig, {"problem": "rebar"}, {"estimators": ["disarm"]})
    assert mine.estimators == ("disarm",)
    with pytest.raises(ValueError, match="does not support bernoulli"):
        build(ToyConfig, {"problem": "rebar", "estimators": ["arsm"]}).validate()


def test_the_command_runs_a_binary_toy(tmp_path, capsys):
    out = tmp_path / "relax"
    argv = [
        "toy", "--problem", "relax", "--steps", "20", "--eval-every", "5", "--var-every", "10",
        "--var-draws", "4", "--estimators", "exact", "disarm", "rloo:n_samples=2", "--quiet",
        "--out", str(out),
    ]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "expected_loss" in printed and "expected_reward" not in printed
    res = json.loads((out / "results.json").read_text())["toy"]
    assert res["exact"]["optimum"] == pytest.approx(0.499**2)
    assert "binary toy (relax)" in (out / "report.md").read_text()
