"""The variance study at equal f-evaluations: the sum family's closed-form gradient against
enumeration, budget matching, the winner rule, and a small run from the command line."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.distributions import Independent, OneHotCategorical

import discograd.cli as cli
from discograd.diagnostics import exact_gradient
from discograd.errors import ConfigError
from discograd.estimators import Exact
from discograd.experiments.config import build
from discograd.experiments.variance import (
    Problem,
    VarianceConfig,
    budget_plan,
    make_problem,
    match_budget,
    sample_size_parameter,
    sum_expected,
    sum_problem,
    sum_weights,
)
from discograd.report.variance import (
    EQUAL_BUDGET_HEADING,
    Candidate,
    budget_candidates,
    equal_budget_table,
    winner,
)


# ------------------------------------------------- the sum family's exact gradient
@pytest.mark.parametrize(
    ("C", "D", "logits"), [(3, 3, "skewed"), (4, 2, "uniform"), (2, 6, "skewed")]
)
def test_sum_family_closed_form_equals_enumeration(C, D, logits):
    p = sum_problem(C, D, logits)
    leaf = p.logits.clone().requires_grad_()
    (closed,) = p.exact(leaf)
    (enumerated,) = exact_gradient(p.f, p.build(leaf), leaf)
    assert p.support == C**D
    assert float(enumerated.abs().max()) > 1e-2  # a gradient worth comparing
    torch.testing.assert_close(closed, enumerated, rtol=0, atol=1e-12)
    value = Exact()(p.f, p.build(p.logits)).value
    torch.testing.assert_close(sum_expected(p.logits, _weights(p)), value, rtol=0, atol=1e-12)


def test_sum_family_closed_form_with_several_data_points_and_masks():
    # Other logits than the built-in ones: a batch of 3, a masked category, large values.
    p = sum_problem(4, 3, "uniform")
    gen = torch.Generator().manual_seed(1)
    theta = torch.randn(3, 3, 4, generator=gen, dtype=torch.float64) * 3
    theta[1, 2, 0] = -math.inf
    leaf = theta.clone().requires_grad_()
    (closed,) = torch.autograd.grad(sum_expected(leaf, _weights(p)).sum(), leaf)
    (enumerated,) = exact_gradient(p.f, Independent(OneHotCategorical(logits=leaf), 1), leaf)
    torch.testing.assert_close(closed, enumerated, rtol=0, atol=1e-12)
    assert closed[1, 2, 0] == 0


def _weights(p: Problem) -> torch.Tensor:
    return sum_weights(p.logits.shape[-1], p.logits.shape[-2])


def test_large_sum_problem_has_an_exact_gradient_without_enumeration():
    p = make_problem("sum-C100-D20-skewed")
    assert p.support == 100**20
    leaf = p.logits.clone().requires_grad_()
    (g,) = p.exact(leaf)
    assert g.shape == (1, 20, 100) and torch.isfinite(g).all()
    assert abs(float(g.sum(-1).abs().max())) < 1e-12  # a softmax gradient sums to 0 per variable


# ------------------------------------------------------------ budget matching
def test_match_budget_linear_capped_and_fixed_costs():
    assert match_budget(lambda n: float(n), 16) == 16  # RLOO, CARMS: n evaluations
    assert match_budget(lambda n: 6.0 * n, 16) == 2  # IndeCateR with D C = 6
    assert match_budget(lambda n: n + 1.0, 8) == 7  # sum-and-sample: k + 1
    capped = lambda n: float(n) if 2 <= n <= 10 else None  # noqa: E731 (unordered set)
    assert match_budget(capped, 32) == 10
    assert match_budget(capped, 4) == 4
    assert match_budget(capped, 1) == 2  # over budget even at its smallest
    assert match_budget(lambda n: 1.0, 16) is None  # cost independent of n (Gumbel-Rao)
    assert match_budget(lambda n: None, 16) is None


def test_budget_plan_matches_sample_sizes_and_keeps_fixed_costs_within_budget():
    costs = {"arsm": 5.5, "gumbel_rao": 1.0}

    def probe(spec, problem):
        name, _, rest = spec.partition(":")
        n = int(rest.split("=")[1]) if rest else 0
        if name == "rloo":
            return float(n) if n >= 2 else None
        if name == "indecater":
            return 30.0 * n
        return costs[name.split(":")[0]]

    plan, over = budget_plan(["rloo", "arsm", "indecater", "gumbel_rao"], (4, 16), None, probe)
    assert plan == {
        "rloo:n_samples=4": [4],
        "rloo:n_samples=16": [16],
        "arsm": [16],  # costs 5.5: averaged up to 16, not run at 4
        "gumbel_rao": [4, 16],  # its n_samples are relaxed samples, not f-evaluations
    }
    assert over == {"indecater:n_samples=1": 30.0}
    assert sample_size_parameter("sum_and_sample") == "k"
    assert sample_size_parameter("rloo:n_samples=3") is None  # fixed by the spec
    # SIMPLE's and I-MLE's k is the subset's size, not a number of samples
    assert sample_size_parameter("simple") is None and sample_size_parameter("imle") is None


def test_budget_plan_with_real_estimators():
    p = sum_problem(5, 2, "skewed")
    specs = ["rloo", "carms", "unordered_set", "sum_and_sample", "categorical_disarm"]
    plan, over = budget_plan(specs, (4, 8), p)
    assert plan == {
        "rloo:n_samples=4": [4],
        "rloo:n_samples=8": [8],
        "carms:n_samples=4": [4],
        "carms:n_samples=8": [8],
        "unordered_set:n_samples=4": [4],
        "unordered_set:n_samples=8": [8],
        "sum_and_sample:k=3": [4],
        "sum_and_sample:k=7": [8],
        "categorical_disarm": [4, 8],
    }
    assert over == {}


# ---------------------------------------------------------------- winner rule
def test_winner_named_only_when_error_bars_do_not_overlap():
    apart = [Candidate("a", 1.0, 0.1), Candidate("b", 1.5, 0.2), Candidate("c", 3.0, 0.5)]
    best, tied = winner(apart)
    assert best is not None and best.label == "a" and tied == [best]
    # b's bar (1.25 ± 0.2) reaches a's (1.0 ± 0.1): not distinguishable; c stays apart.
    overlap = [Candidate("c", 3.0, 0.5), Candidate("b", 1.25, 0.2), Candidate("a", 1.0, 0.1)]
    best, tied = winner(overlap)
    assert best is None and [c.label for c in tied] == ["a", "b"]
    # Touching bars (difference = sum of the s.e.) are not apart either.
    assert winner([Candidate("a", 1.0, 0.25), Candidate("b", 1.5, 0.25)])[0] is None
    # One seed: no standard errors, nothing distinguishable; a lone candidate wins.
    assert winner([Candidate("a", 1.0, None), Candidate("b", 9.0, None)])[0] is None
    assert winner([Candidate("a", 1.0, None)])[0] == Candidate("a", 1.0, None)
    assert winner([]) == (None, [])


def _result(variance_x_evals, se, n_evals, seeds=(0, 1, 2)):
    return {
        "variance_x_evals": variance_x_evals,
        "n_evals": n_evals,
        "se": {"variance_x_evals": se, "n_evals": 0.0},
        "n": {"variance_x_evals": len(seeds), "n_evals": len(seeds)},
        "seeds": list(seeds),
    }


def test_budget_candidates_keep_unbiased_sampling_estimators_within_budget():
    res = {
        "exact_norm": 1.0,
        "budgets": {
            "4": ["rloo:n_samples=4", "arsm", "exact", "gumbel_softmax:tau=0.5", "ar"],
        },
        "estimators": {
            "rloo:n_samples=4": _result(2.0, 0.1, 4),
            "arsm": _result(1.0, 0.1, 5.2),  # data-dependent cost above the budget
            "exact": _result(0.0, 0.0, 4),
            "gumbel_softmax:tau=0.5": _result(0.1, 0.01, 1),  # biased
            "ar": _result(1e-20, 0.0, 1),  # rounding: exact
        },
    }
    cands = budget_candidates(res, 4)
    assert {c.label: c.mean for c in cands} == {"rloo:n_samples=4": 2.0, "ar": 0.0}


# ------------------------------------------------------------- the command line
def test_config_checks_the_grid_and_problem_names():
    with pytest.raises(ConfigError, match="give both C and D"):
        build(VarianceConfig, {}, {"C": (3,)}, {}).validate()
    with pytest.raises(ConfigError, match="unknown problem"):
        build(VarianceConfig, {}, {"problems": ("sum-C3",)}, {}).validate()
    with pytest.raises(ConfigError, match="at least one problem"):
        build(VarianceConfig, {}, {"problems": ()}, {}).validate()
    cfg = build(VarianceConfig, {}, {"problems": (), "C": (3, 5), "D": (2,)}, {})
    cfg.validate()


def user_problem(device):
    """A problem of one's own, reached as ``test_variance_budget:user_problem``."""
    p = sum_problem(3, 2, "skewed", device)
    return Problem("mine", p.kind, p.logits, p.build, p.f, "a user's problem, no closed form")


def test_equal_budget_run_from_the_command_line(tmp_path):
    out = tmp_path / "eq"
    rc = cli.main(
        [
            "variance", "--problems", "test_variance_budget:user_problem", "--C", "3",
            "--D", "2", "--logits", "skewed", "--budgets", "2", "4", "--draws", "20",
            "--seeds", "2", "--timing-repeats", "1", "--estimators", "rloo",
            "categorical_disarm", "arsm", "indecater", "gumbel_softmax:tau=1.0",
            "--out", str(out), "--quiet",
        ]
    )  # fmt: skip
    assert rc == 0
    res = json.loads((out / "results.json").read_text())["variance"]
    assert set(res) == {"test_variance_budget:user_problem", "sum-C3-D2-skewed"}
    cell = res["sum-C3-D2-skewed"]
    assert cell["C"] == 3 and cell["D"] == 2 and cell["logits"] == "skewed"
    assert cell["budgets"]["2"][:2] == ["rloo:n_samples=2", "categorical_disarm"]
    assert "rloo:n_samples=4" in cell["budgets"]["4"]
    assert cell["over_budget"] == {"indecater:n_samples=1": 6.0}
    assert cell["estimators"]["rloo:n_samples=4"]["n_evals"] == 4
    assert cell["estimators"]["rloo:n_samples=4"]["bias"] is not None  # closed-form truth
    mine = res["test_variance_budget:user_problem"]
    assert mine["estimators"]["rloo:n_samples=2"]["bias"] is not None  # enumerated
    report = (out / "report.md").read_text()
    assert EQUAL_BUDGET_HEADING in report
    assert "| C | D | logits | budget 2 | budget 4 |" in report


def test_the_table_names_a_winner_only_where_the_error_bars_allow():
    def problem(rloo, carms, C):
        return {
            "C": C,
            "D": 3,
            "logits": "skewed",
            "support": C**3,
            "exact_norm": 1.0,
            "budgets": {"4": ["rloo:n_samples=4", "carms:n_samples=4"]},
            "estimators": {
                "rloo:n_samples=4": _result(*rloo, 4),
                "carms:n_samples=4": _result(*carms, 4),
            },
        }

    results = {
        "apart": problem((2.0, 0.1), (1.0, 0.1), 10),
        "overlap": problem((1.15, 0.1), (1.0, 0.1), 10),
    }
    table = equal_budget_table(results, [4]).splitlines()
    assert table[2] == "| 10 | 3 | skewed | **`carms:n_samples=4`** (2× below `rloo:n_samples=4`) |"
    assert table[3] == (
        "| 10 | 3 | skewed | not distinguishable at 3 seeds: "
        "`carms:n_samples=4`, `rloo:n_samples=4` |"
    )
