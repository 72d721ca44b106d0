"""The sparse-gate task: its penalty, test-time gates, a CLI run with its plot, and resuming."""

from __future__ import annotations

import json
import math

import pytest
import torch

import discograd.cli as cli
from discograd.distributions import GaussianRelaxedBernoulli, HardConcrete, HardKumaraswamy
from discograd.experiments.gates import GATE_FAMILIES, GateModel, GatesConfig, GatesTask
from model_helpers import (
    assert_kill_per_phase_resumes_exactly,
    run_task,
    tiny_data,
)


def model(family: str, dim: int = 7) -> GateModel:
    torch.manual_seed(0)
    m = GateModel(family, dim, 3, GatesConfig(temperature=0.5, sigma=0.4))
    with torch.no_grad():  # gates away from their initial values, some open, some shut
        m.gate.copy_(torch.randn(m.gate.shape) * 2)
    return m


@pytest.mark.parametrize("family", GATE_FAMILIES)
def test_penalty_is_the_sum_of_prob_nonzero(family):
    m = model(family)
    g = m.gate.detach()
    expected = {
        "hard_concrete": lambda: HardConcrete(0.5, g, limits=(-0.1, 1.1)).prob_nonzero(),
        "hard_kuma": lambda: HardKumaraswamy(
            *torch.nn.functional.softplus(g), limits=(-0.1, 1.1)
        ).prob_nonzero(),
        "gaussian": lambda: GaussianRelaxedBernoulli(g, 0.4).prob_nonzero(),
        "straight_through": lambda: torch.sigmoid(g),
    }[family]()
    torch.testing.assert_close(m.penalty(), expected.sum())
    m.penalty().backward()  # the penalty trains the gates
    assert m.gate.grad is not None and bool(m.gate.grad.abs().sum() > 0)


@pytest.mark.parametrize("family", GATE_FAMILIES)
def test_sampled_gates_match_the_penalty_and_carry_gradient(family):
    m = model(family)
    z = m.sample(20000, torch.Generator().manual_seed(1))
    assert z.shape == (20000, 7) and bool(((z >= 0) & (z <= 1)).all())
    open_freq = (z != 0).double().mean(0)
    p = m.prob_nonzero().detach().double()
    se = (p * (1 - p) / 20000).sqrt().clamp(min=1e-12)
    assert float(((open_freq - p).abs() / se).max()) < 5
    z.sum().backward()
    assert bool(m.gate.grad.abs().sum() > 0)


def test_test_time_gates_follow_each_papers_rule():
    m = model("hard_concrete")
    g = m.gate.detach()
    torch.testing.assert_close(m.test_gates(), (torch.sigmoid(g) * 1.2 - 0.1).clamp(0, 1))
    m = model("gaussian")
    torch.testing.assert_close(m.test_gates(), m.gate.detach().clamp(0, 1))
    m = model("straight_through")
    torch.testing.assert_close(m.test_gates(), (m.gate.detach() > 0).float())
    m = model("hard_kuma")
    a, b = torch.nn.functional.softplus(m.gate.detach())
    d = HardKumaraswamy(a, b, limits=(-0.1, 1.1))
    p0, p1 = d.prob_zero(), d.prob_one()
    z = m.test_gates()
    seen = set()
    for k in range(7):  # Bastings et al.'s rule, one gate at a time
        pc = 1 - p0[k] - p1[k]
        if pc > p0[k] and pc > p1[k]:
            seen.add("mean")
            assert math.isclose(float(z[k]), float(d.kumaraswamy.mean[k]), rel_tol=1e-6)
        else:
            seen.add("atom")
            assert z[k] == (0 if p0[k] > p1[k] else 1)
    assert seen == {"mean", "atom"}  # both branches are exercised


def small_cfg(**kw):
    base = dict(
        steps=8,
        batch_size=20,
        lr=0.05,
        lambdas=(0.0, 0.05),
        eval_every=4,
        log_every=4,
        checkpoint_every=4,
    )
    base.update(kw)
    return GatesConfig(**base)


def test_run_gates_and_resume_equivalence(tmp_path):
    data = tiny_data()
    cfg = small_cfg()
    res_full = run_task(GatesTask(), cfg, tmp_path / "full", data=data)
    assert set(res_full) == {f"{f}@{lam:g}" for f in GATE_FAMILIES for lam in (0.0, 0.05)}
    for summary in res_full.values():
        assert 0.0 <= summary["test_accuracy"] <= 1.0
        assert 0.0 <= summary["fraction_open"] <= 1.0
    for fam in GATE_FAMILIES:  # a penalty shuts gates
        assert res_full[f"{fam}@0.05"]["expected_open"] < res_full[f"{fam}@0"]["expected_open"]

    # kill every phase once, right after its checkpoint at step 4
    assert_kill_per_phase_resumes_exactly(
        GatesTask, cfg, tmp_path, data, res_full, phases=len(res_full), interrupt_at=4
    )


def test_gates_cli_writes_results_table_and_plot(tmp_path, capsys):
    out = tmp_path / "gates"
    argv = [
        "gates", "--steps", "4", "--batch-size", "20", "--eval-every", "2", "--log-every", "2",
        "--checkpoint-every", "2", "--families", "hard_concrete", "straight_through",
        "--lambdas", "0.001", "0.01", "--seeds", "2", "--out", str(out), "--quiet",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "hard_concrete@0.01" in printed and "fraction_open" in printed
    results = json.loads((out / "results.json").read_text())["gates"]
    assert set(results) == {
        "hard_concrete@0.001", "hard_concrete@0.01", "straight_through@0.001",
        "straight_through@0.01",
    }  # fmt: skip
    assert results["hard_concrete@0.01"]["se"]["test_accuracy"] is not None  # 2 seeds
    report = (out / "report.md").read_text()
    assert "Sparse gates" in report and "gates_accuracy_vs_open.png" in report
    assert (out / "gates_accuracy_vs_open.png").stat().st_size > 1000
    # a second call resumes: nothing is trained again, the same results
    assert cli.main(argv) == 0
    assert "resuming" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["gates"] == results


@pytest.mark.parametrize(
    ("field", "value"), [("families", ()), ("lambdas", ()), ("lambdas", (0.1, 0.1))]
)
def test_bad_config_values_name_the_field(field, value):
    from discograd.errors import ConfigError

    with pytest.raises(ConfigError, match=field):
        small_cfg(**{field: value}).validate()
