"""The report says only what its numbers support (issue 12, items 3, 7 and 10).

Results are built with the engine's own :func:`aggregate` from hand-made
per-seed numbers, so each degenerate case is exact: zero variance, one
estimator, one seed, every seed diverged, identical numbers, NaN.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from discograd.experiments import RunDir, aggregate
from discograd.experiments.ssl import SSLConfig
from discograd.experiments.toy import ToyConfig
from discograd.experiments.vae import VAEConfig
from discograd.experiments.variance import VarianceConfig
from discograd.report import markdown as md
from discograd.report import (
    simplex_section,
    ssl_section,
    toy_section,
    vae_section,
    variance_section,
)
from discograd.report.markdown import compare, headline, pm
from discograd.report.timing import (
    Timing,
    compare_times,
    fmt_timing,
    speedup,
    speedup_cell,
    step_timing,
)

# What the report must never print: a ratio through a floor ("8.29e+295× higher"), a
# ratio claim at all, or Python's inf / nan.
FORBIDDEN = re.compile(
    r"e\+\d{3}|×\s*(higher|lower|faster|slower|more|less)|\binf\b|\bnan\b", re.IGNORECASE
)


def seeds(*values: dict[str, Any]) -> dict[str, Any]:
    """The aggregate over seeds 0, 1, ... of these per-seed results."""
    return aggregate({s: {"diverged": None, **v} for s, v in enumerate(values)})


def diverged(n_seeds: int, step: int = 3) -> dict[str, Any]:
    where = {"estimator": "x", "step": step, "quantity": "loss"}
    return aggregate({s: {"diverged": where, "steps": step} for s in range(n_seeds)})


def claims_a_winner(line: str) -> bool:
    return " had the lowest " in line or " had the highest " in line


# ---------------------------------------------------------------- compare
def test_a_winner_is_named_only_beyond_the_standard_error_with_the_numbers():
    results = {
        "a": seeds({"x": 1.0}, {"x": 1.2}, {"x": 1.1}),
        "b": seeds({"x": 2.0}, {"x": 2.2}, {"x": 2.1}),
    }
    line = compare(results, "x", "loss")
    assert line is not None and line.startswith("`a` had the lowest loss")
    # difference 1.0; its standard error √(se² + se²) with se = 0.1/√3 each
    se = math.hypot(0.1 / math.sqrt(3), 0.1 / math.sqrt(3))
    assert "difference 1," in line and f"standard error {md.fmt(se)}" in line
    assert "3 seeds" in line


def test_within_the_standard_error_nothing_is_ranked():
    results = {
        "a": seeds({"x": 1.0}, {"x": 2.0}, {"x": 3.0}),
        "b": seeds({"x": 1.5}, {"x": 2.5}, {"x": 3.0}),
    }
    line = compare(results, "x", "loss")
    assert line is not None and not claims_a_winner(line)
    assert "not distinguishable at 3 seeds" in line


def test_one_seed_ranks_nothing_however_large_the_difference():
    results = {"a": seeds({"x": 1.0}), "b": seeds({"x": 1e6})}
    line = compare(results, "x", "loss")
    assert line is not None and not claims_a_winner(line)
    assert "not distinguishable at 1 seed." in line


def test_a_single_estimator_or_none_has_no_ranking():
    assert compare({"a": seeds({"x": 1.0}, {"x": 2.0})}, "x", "loss") is None
    assert compare({}, "x", "loss") is None
    assert compare({"a": diverged(3), "b": diverged(3)}, "x", "loss") is None


def test_zero_variance_is_compared_without_a_ratio():
    """The bug of the issue: a zero variance divided through a 1e-300 floor."""
    results = {
        "exact_like": seeds({"v": 0.0}, {"v": 0.0}, {"v": 0.0}),
        "noisy": seeds({"v": 3.0}, {"v": 2.0}, {"v": 4.0}),
    }
    line = compare(results, "v", "variance")
    assert line is not None and line.startswith("`exact_like` had the lowest variance: 0 ± 0")
    assert not FORBIDDEN.search(line), line


def test_identical_numbers_are_said_to_be_equal_and_the_next_one_is_compared():
    same = [{"x": 1.0}, {"x": 1.5}, {"x": 2.0}]
    results = {"a": seeds(*same), "b": seeds(*same), "c": seeds({"x": 9.0}, {"x": 9.5}, {"x": 9.9})}
    line = compare(results, "x", "loss")
    assert line is not None
    assert line.startswith("`a` = `b` had the lowest loss") and "for `c`, the next" in line
    assert "`a` = `b`: equal in every seed" in line
    only_twins = compare({"a": seeds(*same), "b": seeds(*same)}, "x", "loss")
    assert only_twins is not None and not claims_a_winner(only_twins)
    assert "The loss was the same for `a` = `b` in every seed (to 1e-09 relative): " in only_twins


def test_equal_means_from_different_seeds_are_not_identical():
    results = {"a": seeds({"x": 1.0}, {"x": 2.0}), "b": seeds({"x": 2.0}, {"x": 1.0})}
    line = compare(results, "x", "loss")
    assert line is not None and "equal in every seed" not in line
    assert "not distinguishable at 2 seeds" in line


def test_a_mean_over_fewer_seeds_is_left_out_and_named():
    results = {
        "a": seeds({"x": 1.0}, {"x": 1.1}, {"x": 1.2}),
        "b": seeds({"x": 5.0}, {"x": 5.1}, {"x": 5.2}),
        "nan_seed": seeds({"x": 0.1}, {"x": math.nan}, {"x": 0.1}),
    }
    line = compare(results, "x", "loss")
    assert line is not None and line.startswith("`a` had the lowest loss")
    assert "`nan_seed` (2 of 3)" in line
    assert pm(results["nan_seed"], "x") == "0.1 ± 0 (2 of 3 seeds)"


def test_pm_shows_a_small_standard_error_rather_than_zero():
    r = seeds({"x": 12.521}, {"x": 12.522}, {"x": 12.523})
    assert pm(r, "x", decimals=2) == "12.5220 ± 0.0006"  # s.e. 0.001 / √3
    assert pm(seeds({"x": 3.0}), "x", decimals=2) == "3.00"  # one seed: no s.e.


def test_non_finite_numbers_are_not_printed_as_inf_or_nan():
    assert md.fmt(math.inf) == "∞" and md.fmt(math.nan) == "undefined (NaN)"


# ----------------------------------------------------------------- timing
def timed(*windows: list[float]) -> dict[str, Any]:
    """A result whose seeds timed these windows (seconds per step)."""
    return seeds(*({"step_seconds": w, "seconds_per_step": sum(w) / len(w)} for w in windows))


def test_timings_are_medians_and_quartiles_of_the_pooled_windows():
    t = step_timing(timed([1.0, 2.0, 3.0], [4.0, 5.0]))
    assert t is not None and (t.n, t.seeds, t.repeats) == (5, 2, True)
    assert t.quartiles() == (2.0, 3.0, 4.0)
    assert fmt_timing(t) == "3 [2–4]"


def test_without_windows_the_timing_is_one_mean_per_seed_and_says_so():
    one = step_timing(seeds({"seconds_per_step": 0.004}))
    assert one is not None and one.n == 1 and not one.repeats
    assert fmt_timing(one, scale=1000) == "4 (one measurement)"
    assert step_timing(seeds({"x": 1.0})) is None and fmt_timing(None) == "—"


def test_the_cheapest_is_named_only_when_the_interquartile_ranges_do_not_overlap():
    fast, slow = timed([1e-3, 1.1e-3, 1.2e-3, 1.3e-3]), timed([2e-3, 2.1e-3, 2.2e-3, 2.3e-3])
    line = compare_times({"fast": step_timing(fast), "slow": step_timing(slow)}, "time")
    assert line is not None and line.startswith("`fast` had the lowest time")
    assert "do not overlap" in line
    overlapping = timed([1e-3, 1.2e-3, 2.5e-3, 3e-3])  # lower quartile 1.15 < 1.225
    line = compare_times({"fast": step_timing(fast), "wide": step_timing(overlapping)}, "time")
    assert line is not None and not claims_a_winner(line) and "overlap" in line
    single = {"a": Timing((1.0,), 1, False), "b": Timing((9.0,), 1, False)}
    line = compare_times(single, "time")
    assert line is not None and not claims_a_winner(line) and "single measurement" in line
    assert compare_times({"a": step_timing(fast), "b": None}, "time") is None


def test_a_speed_up_is_a_ratio_of_medians_and_never_divides_by_zero():
    ref, own = Timing((4.0, 4.0, 4.0), 1, True), Timing((1.0, 2.0, 3.0), 1, True)
    assert speedup(ref, own) == (2.0, 4.0 / 2.5, 4.0 / 1.5)
    assert speedup(ref, Timing((0.0, 0.0), 1, True)) is None
    results = {"marginal": timed([4.0, 4.0, 4.0]), "gs": timed([1.0, 2.0, 3.0])}
    assert speedup_cell(results, "gs") == "2 [1.6–2.67]"
    assert speedup_cell(results, "marginal") == "1 (the reference)"
    assert speedup_cell({"gs": results["gs"]}, "gs") == "—"


def test_the_commands_headline_shows_the_reports_timing():
    results = {"a": {**timed([0.001, 0.002, 0.003]), "loss": 1.0}, "b": diverged(1)}
    rows = dict(headline(results, ("loss", "seconds_per_step")))
    assert rows["a"] == "loss 1  ms/step 2 [1.5–2.5]"
    assert rows["b"] == "diverged at step 3 (non-finite loss)"


# --------------------------------------------------------------- sections
@pytest.fixture
def no_plots(monkeypatch):
    monkeypatch.setattr("discograd.report.markdown._plots_available", lambda: False)


def run_dir(path: Path, cfg: Any) -> RunDir:
    import dataclasses

    return RunDir(path, dataclasses.asdict(cfg))


def check_true(text: str, summary: list[str]) -> None:
    for line in [text, *summary]:
        assert not FORBIDDEN.search(line), line


def variance_result(**per_seed_numbers: list[float]) -> dict[str, Any]:
    n = len(next(iter(per_seed_numbers.values())))
    return seeds(*({k: v[s] for k, v in per_seed_numbers.items()} for s in range(n)))


def stats(variance: list[float], mse: list[float], evals: float = 1.0) -> dict[str, Any]:
    return variance_result(
        variance=variance,
        variance_x_evals=[v * evals for v in variance],
        mse=mse,
        n_evals=[evals] * len(variance),
        bias=[math.sqrt(m) for m in mse],
        bias_noise=[0.0] * len(variance),
        snr=[math.inf if v == 0 else 1.0 for v in variance],
        cosine=[1.0] * len(variance),
        draw_seconds=[[1e-5, 2e-5, 3e-5]] * len(variance),
    )


def test_variance_section_with_zero_variance_and_an_exact_match(tmp_path, no_plots):
    cfg = VarianceConfig(draws=10, warmup=1)
    results = {
        "toy": {
            "description": "a problem",
            "exact_norm": 2.0,
            "estimators": {
                "exact": stats([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], 10),
                "straight_through": stats([0.0, 0.0, 0.0], [1e-33, 2e-33, 1e-33]),
                "gumbel_softmax:tau=0.5": stats([1.0, 1.1, 0.9], [2.0, 2.1, 1.9]),
                "rloo:n_samples=4": stats([0.5, 0.6, 0.4], [0.5, 0.6, 0.4], 4),
            },
        },
        "bernoulli": {  # one estimator: nothing to rank
            "description": "another",
            "exact_norm": 0.0,
            "estimators": {"rloo:n_samples=4": stats([0.5, 0.6, 0.4], [0.5, 0.6, 0.4], 4)},
        },
    }
    text, summary = variance_section(run_dir(tmp_path, cfg), results, cfg)
    check_true(text, summary)
    # exact is the reference, not an unbiased estimator to rank; ST is biased (registry)
    assert "The exact gradient (the reference" in text
    [st] = [s for s in summary if "straight_through" in s and "had the lowest" in s]
    assert st.startswith("Variance study, `toy`: `straight_through` had the lowest mean squared")
    assert any(
        "equal to the exact gradient up to rounding: `straight_through`" in s for s in summary
    )
    assert not any("`bernoulli`" in s for s in summary)  # a single estimator
    assert "ARSM" not in text and "linear" not in text  # no explanations of results
    assert "Plots skipped" in text
    assert "| exact | 0 ± 0 | 0 ± 0 | 10 ± 0 |" in text and "| ∞ |" in text  # SNR, zero variance


def toy_result(reward: list[float], p_last: list[float], steps_to: list[int | None]):
    return seeds(
        *(
            {
                "expected_reward": r,
                "optimum": 0.5 + 1 / 30,
                "p_last": p,
                "steps_to_p_last_0.9": s,
                "mean_grad_variance": 0.0,
                "evals_per_step": 1.0,
                "step_seconds": [1e-3, 2e-3],
            }
            for r, p, s in zip(reward, p_last, steps_to, strict=True)
        )
    )


def test_toy_section_with_one_seed_and_identical_estimators(tmp_path, no_plots):
    cfg = ToyConfig(steps=10, seeds=(0,))
    same = toy_result([0.52], [0.9], [7])
    results = {"exact": same, "straight_through": same, "arsm": toy_result([0.51], [0.5], [None])}
    text, summary = toy_section(run_dir(tmp_path, cfg), results, cfg)
    check_true(text, summary)
    assert "One seed: no standard errors" in text
    assert "in every seed (to 1e-09 relative): `exact` = `straight_through`" in text
    # exact is the reference: only straight_through reached p(last) > 0.9 among the others
    assert summary == [
        "Toy: fewer than two sampling estimators reached p(last) > 0.9 in every seed. The "
        "highest final p(last): `straight_through` (0.9) and `arsm` (0.5) are not "
        "distinguishable at 1 seed."
    ]


def test_toy_section_when_every_seed_diverged(tmp_path, no_plots):
    cfg = ToyConfig(steps=10, seeds=(0, 1))
    results = {"rloo:n_samples=4": diverged(2), "arsm": diverged(2, step=5)}
    text, summary = toy_section(run_dir(tmp_path, cfg), results, cfg)
    check_true(text, summary)
    assert summary == [
        "Diverged in the toy and stopped there (no test numbers): `rloo:n_samples=4` at step 3 "
        "(non-finite loss) in 2 seeds of 2, `arsm` at step 5 (non-finite loss) in 2 seeds of 2."
    ]


def test_vae_section_with_one_estimator_left(tmp_path, no_plots):
    cfg = VAEConfig(steps=10, seeds=(0, 1, 2))
    results = {
        "arsm": seeds(
            *(
                {
                    "test_neg_elbo": 30.0 + s,
                    "test_iw_bound": 29.0,
                    "valid_neg_elbo": 31.0,
                    "evals_per_step": 7.0,
                    "step_seconds": [0.01, 0.02],
                }
                for s in range(3)
            )
        ),
        "rloo:n_samples=4": diverged(3),
    }
    text, summary = vae_section(run_dir(tmp_path, cfg), results, cfg)
    check_true(text, summary)
    assert not any(claims_a_winner(s) or "distinguishable" in s for s in summary)
    assert "diverged at step 3 (non-finite loss) in 3 seeds of 3" in text
    assert "| arsm | 31.00 ± 0.58 | 29.00 ± 0.00 | 31.00 ± 0.00 | 7 ± 0 | 15 [10–20] |" in text


def test_ssl_section_times_and_speed_ups_from_windows(tmp_path, no_plots):
    cfg = SSLConfig(steps=10, seeds=(0, 1), timing_classes=20)

    def method(acc: float, windows: list[float]) -> dict[str, Any]:
        return seeds(
            *({"test_accuracy": acc, "test_neg_elbo": 20.0, "valid_accuracy": acc,
               "step_seconds": windows} for _ in range(2))
        )  # fmt: skip

    results = {"marginal": method(0.8, [0.004, 0.005]), "gs": method(0.8, [0.001, 0.0011])}
    timing = {"marginal": method(0.1, [0.04, 0.05]), "gs": method(0.1, [0.001, 0.002])}
    text, summary = ssl_section(run_dir(tmp_path, cfg), results, cfg, timing=timing)
    check_true(text, summary)
    assert "Time per step with 20 classes" in text
    # ms per step, and the ratio of medians with the ratios of the quartiles that bound it
    assert "| 1.05 [1–1.1] | 4.29 [3.64–5] |" in text
    assert "| gs | 1.5 [1–2] | 30 [20–50] |" in text
    assert any(s.endswith("(the interquartile ranges do not overlap).") for s in summary)
    accuracy = [s for s in summary if "accuracy" in s]
    assert len(accuracy) == 1 and "the same for `marginal` = `gs` in every seed" in accuracy[0]


def test_without_matplotlib_the_report_says_plots_were_skipped(tmp_path, no_plots):
    cfg = ToyConfig(steps=10)
    assert "Plots skipped" in simplex_section(run_dir(tmp_path, cfg))


# ------------------------------------------------------------------ trainer
def test_the_trainer_times_each_phase_in_windows_and_resumes_them(tmp_path):
    from discograd.experiments.toy import ToyTask
    from discograd.experiments.trainer import TIMING_WINDOWS
    from model_helpers import Interrupted, run_task

    cfg = ToyConfig(
        C=4, R=1, steps=60, eval_every=10, var_every=30, var_draws=4, checkpoint_every=10,
        estimators=("arsm",), seeds=(0, 1),
    )  # fmt: skip
    straight = run_task(ToyTask(), cfg, tmp_path / "straight")["arsm"]
    for result in straight["per_seed"].values():
        assert len(result["step_seconds"]) == TIMING_WINDOWS  # 60 steps: windows of 3
        assert all(t > 0 for t in result["step_seconds"])
    assert straight["step_seconds"] is None  # differs per seed: no one seed's list as the mean
    # A kill at the checkpoint of step 10, inside the window of steps 9-11: resumed, the
    # phase still has one time per window.
    with pytest.raises(Interrupted):
        run_task(ToyTask(), cfg, tmp_path / "resumed", interrupt_at=10)
    resumed = run_task(ToyTask(), cfg, tmp_path / "resumed")["arsm"]
    for result in resumed["per_seed"].values():
        assert len(result["step_seconds"]) == TIMING_WINDOWS


# ------------------------------------------------------------------ plots
def write_records(run: RunDir, records: list[dict[str, Any]]) -> None:
    with open(run.metrics_path, "a") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def test_toy_plots_with_zero_variance_nan_and_coinciding_curves(tmp_path):
    pytest.importorskip("matplotlib")
    cfg = ToyConfig(steps=20, var_every=10, seeds=(0, 1))
    run = run_dir(tmp_path, cfg)
    records = []
    for s in (0, 1):
        for label, var, evals in (
            ("exact", 0.0, 30),
            ("straight_through", 0.0, 1),
            ("rloo:n_samples=4", math.nan, 4),
            ("arsm", 1e-3, 7),
        ):
            for step in (0, 10, 20):
                records.append({
                    "phase": f"toy/{label}/seed{s}", "step": step, "evals": step * evals,
                    "expected_reward": 0.5 + step / 1000, "p_last": 0.1 + step / 100,
                    "grad_variance": var * (1 + s),
                })  # fmt: skip
    write_records(run, records)
    results = {k: toy_result([0.52, 0.52], [0.3, 0.3], [None, None]) for k in
               ("exact", "straight_through", "rloo:n_samples=4", "arsm")}  # fmt: skip
    text, _ = toy_section(run, results, cfg)
    for name in ("toy_reward.png", "toy_p_last.png", "toy_grad_variance.png"):
        assert (tmp_path / name).stat().st_size > 0 and f"]({name})" in text


def test_legend_names_coinciding_curves_and_where_they_coincide():
    pytest.importorskip("matplotlib")
    from discograd.report.curves import Curve
    from discograd.report.plots import _leaders, _legend, coincide

    def c(xs: tuple[float, ...], ys: tuple[float, ...]) -> Curve:
        return Curve(xs, ys, ys, ys, 2)

    by_step = {"exact": c((0, 1), (1, 2)), "st": c((0, 1), (1, 2)), "gs": c((0, 1), (1, 2)),
               "other": c((0, 1), (1, 3))}  # fmt: skip
    by_evals = {"exact": c((0, 30), (1, 2)), "st": c((0, 1), (1, 2)), "gs": c((0, 1), (1, 2)),
                "other": c((0, 1), (1, 3))}  # fmt: skip
    assert coincide(by_step["exact"], by_step["st"]) and not coincide(by_evals["exact"],
                                                                        by_evals["st"])  # fmt: skip
    labels = list(by_step)
    leaders = [_leaders(labels, by_step), _leaders(labels, by_evals)]
    _, texts = _legend(labels, leaders, ["iteration", "f-evaluations"], {k: i for i, k in
                       enumerate(labels)})  # fmt: skip
    assert texts == ["exact", "st = gs (identical)\n  (= exact against iteration)", "other"]


def test_variance_and_timing_plots_mark_what_a_log_axis_cannot_show(tmp_path):
    pytest.importorskip("matplotlib")
    from discograd.report import plots

    rows = [
        {"label": "exact", "n_evals": 10, "unbiased": True, "variance": (0.0, 0.0, 0.0),
         "variance_x_evals": (0.0, 0.0, 0.0)},
        {"label": "nan", "n_evals": 1, "unbiased": True, "variance": (None, None, None),
         "variance_x_evals": (math.nan, None, None)},
        {"label": "gs", "n_evals": 1, "unbiased": False, "variance": (1.0, 0.5, 2.0),
         "variance_x_evals": (1.0, 0.5, 2.0)},
    ]  # fmt: skip
    assert plots.variance_dots(tmp_path / "v.png", rows, title="t").stat().st_size > 0
    boxes = {"run": {"marginal": [100.0, 120.0], "gs": [1.0, 2.0], "none": []}}
    out = plots.timing_boxes(tmp_path / "t.png", boxes, xlabel="ms", title="t")
    assert out.stat().st_size > 0
