"""The variance study's section: bias, variance, SNR, cosine and cost against the exact gradient."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from discograd.experiments.runner import RunDir
from discograd.experiments.variance import TIMING_DRAWS, TIMING_REPEATS
from discograd.report import markdown as md
from discograd.report.markdown import Results, Section, pm
from discograd.report.timing import draw_timing, fmt_timing

__all__ = ["section"]

#: column title -> (result key, scale); "µs / draw" is a timing (median [IQR])
_COLUMN = {
    "var × evals": ("variance_x_evals", 1.0),
    "MSE": ("mse", 1.0),
    "variance": ("variance", 1.0),
    "f-evals": ("n_evals", 1.0),
    "bias": ("bias", 1.0),
    "noise": ("bias_noise", 1.0),
    "SNR": ("snr", 1.0),
    "cosine": ("cosine", 1.0),
}
UNBIASED_COLUMNS = ("var × evals", "variance", "f-evals", "bias", "noise", "SNR", "cosine")
BIASED_COLUMNS = ("MSE", "bias", "variance", "f-evals", "SNR", "cosine")
#: a relative MSE below this is "the exact gradient up to rounding"
ROUNDING = 1e-12


def _cell(v: dict[str, Any], column: str) -> str:
    key, scale = _COLUMN[column]
    return pm(v, key, scale=scale)


def _stats_table(stats: dict[str, dict[str, Any]], columns: Sequence[str], sort_key: str) -> str:
    rows = [
        [label, *(_cell(v, c) for c in columns), fmt_timing(draw_timing(v), scale=1e6)]
        for label, v in md.sort_by(stats, sort_key)
    ]
    return md.table(["estimator", *columns, "µs / draw"], rows)


def section(run: RunDir, results: Results, cfg: Any) -> Section:
    all_estimators = {
        f"{p}/{k}": v for p, res in results.items() for k, v in res["estimators"].items()
    }
    text = [
        "## Bias and variance against the exact gradient",
        "",
        f"{cfg.draws} vectorised draws per estimator and problem, compared with the exact "
        "gradient by enumeration (`discograd.diagnostics.gradient_stats`). Estimators with state "
        f"(EMA baselines, REBAR/RELAX control variates) first train for {cfg.warmup} steps. "
        "*bias* is ‖mean − exact‖ (its Monte-Carlo floor is *noise*: an unbiased estimator's bias "
        "is of that size); *var × evals* is the variance at equal cost (averaging k draws divides "
        "the variance by k and multiplies the cost by k); *cosine* is the mean cosine between a "
        "single draw and the exact gradient. *µs / draw*: median [interquartile range] of "
        f"{TIMING_REPEATS} timed calls of {min(TIMING_DRAWS, cfg.draws)} vectorised draws per "
        "seed, all seeds pooled. Unbiased or not: the estimator's registry metadata. "
        f"{md.seed_note(all_estimators)}",
        "",
    ]
    summary: list[str] = []
    plots_ok = md._plots_available()
    for pname, res in results.items():
        ests: dict[str, dict[str, Any]] = res["estimators"]
        exact = {k: v for k, v in ests.items() if md.is_exact(k)}
        unbiased = {k: v for k, v in ests.items() if md.is_unbiased(k) and k not in exact}
        biased = {k: v for k, v in ests.items() if k not in unbiased and k not in exact}
        text += [f"### Problem `{pname}`: {res['description']}", ""]
        if exact:
            text += [
                "The exact gradient (the reference; its own numbers, a check):",
                "",
                _stats_table(exact, UNBIASED_COLUMNS, "variance_x_evals"),
                "",
            ]
        if unbiased:
            text += [
                "Unbiased estimators, sorted by variance at equal cost:",
                "",
                _stats_table(unbiased, UNBIASED_COLUMNS, "variance_x_evals"),
                "",
            ]
        if biased:
            text += [
                "Biased (relaxed / straight-through) estimators, sorted by mean squared error:",
                "",
                _stats_table(biased, BIASED_COLUMNS, "mse"),
                "",
            ]
        matched = _matches_exact(res, {**unbiased, **biased})
        if matched:
            text += [f"Equal to the exact gradient up to rounding in every seed: {matched}.", ""]
        if plots_ok:
            text += _plot(run, pname, exact, unbiased, biased)
        lines = [
            md.compare(
                unbiased, "variance_x_evals", "variance at equal cost among unbiased estimators"
            ),
            md.compare(biased, "mse", "mean squared error among biased estimators"),
        ]
        summary += [f"Variance study, `{pname}`: {line}" for line in lines if line]
        if matched:
            summary.append(
                f"Variance study, `{pname}`: equal to the exact gradient up to rounding: {matched}."
            )
    if not plots_ok:
        text += [md.PLOTS_SKIPPED, ""]
    return Section("\n".join(text), summary)


def _matches_exact(res: dict[str, Any], ests: dict[str, dict[str, Any]]) -> str:
    """The estimators whose MSE was below ``ROUNDING`` × ‖exact gradient‖² in every seed
    (a product, not a quotient: no floor for a zero gradient), with their largest MSE."""
    norm2 = float(res.get("exact_norm", 0.0)) ** 2
    found = []
    for k, v in ests.items():
        mses = md.per_seed_values(v, "mse")
        if mses and all(md.number(m) and m <= ROUNDING * norm2 for m in mses):
            found.append(f"`{k}` (largest MSE {md.fmt(max(mses))})")
    if not found:
        return ""
    return (
        ", ".join(found)
        + f"; ‖exact gradient‖² = {md.fmt(norm2)}, rounding: MSE ≤ "
        + (f"{ROUNDING:g} ‖exact gradient‖²")
    )


def _range(v: dict[str, Any], key: str) -> tuple[float | None, float | None, float | None]:
    """(mean, smallest seed, largest seed) of ``key``; NaN-free numbers only."""
    values = [x for x in md.per_seed_values(v, key) if md.number(x)]
    mean = v.get(key)
    return (
        mean if md.number(mean) else None,
        min(values) if values else None,
        max(values) if values else None,
    )


def _plot(
    run: RunDir,
    pname: str,
    exact: dict[str, dict[str, Any]],
    unbiased: dict[str, dict[str, Any]],
    biased: dict[str, dict[str, Any]],
) -> list[str]:
    from discograd.report import plots

    rows = [
        {
            "label": k,
            "n_evals": v.get("n_evals"),
            "unbiased": k not in biased,
            "variance": _range(v, "variance"),
            "variance_x_evals": _range(v, "variance_x_evals"),
        }
        for group, key in (
            (exact, "variance_x_evals"),
            (unbiased, "variance_x_evals"),
            (biased, "mse"),
        )
        for k, v in md.sort_by(group, key)
    ]
    name = f"variance_{pname}.png"
    plots.variance_dots(run.path / name, rows, title=f"Problem {pname}: gradient variance")
    return md.img(
        name,
        f"variance per call and at equal cost on {pname}",
        "Dots: mean over seeds; bars: min–max across seeds; order as in the tables.",
    )
