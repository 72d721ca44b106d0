"""The variance study's section: bias, variance, SNR, cosine and cost against the exact gradient."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from discograd.experiments.runner import RunDir
from discograd.experiments.variance import TIMING_DRAWS, TIMING_REPEATS
from discograd.report import markdown as md
from discograd.report.markdown import Results, Section, pm
from discograd.report.timing import draw_timing, fmt_timing

__all__ = [
    "Candidate",
    "budget_candidates",
    "equal_budget_section",
    "equal_budget_table",
    "family_summary",
    "section",
    "winner",
]

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
    if getattr(cfg, "budgets", ()):
        return Section("\n".join(equal_budget_section(results, cfg)), _budget_summary(results, cfg))
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


# ------------------------------------------------------- equal evaluations
EQUAL_BUDGET_HEADING = "## Categorical estimators at equal evaluations"


class Candidate(NamedTuple):
    """One estimator in one cell: its ``variance × n_evals`` (mean and s.e. over seeds)."""

    label: str
    mean: float
    se: float | None


def winner(candidates: Sequence[Candidate]) -> tuple[Candidate | None, list[Candidate]]:
    """``(winner, tied)``: the lowest mean, named only if its error bar (mean ± s.e.)
    overlaps no other's: for every other candidate, ``mean_o - mean_w > se_w + se_o``.

    Otherwise ``(None, tied)`` with ``tied`` the candidates whose error bars
    overlap the lowest one's (itself first). Without a standard error (one
    seed) nothing is distinguishable; a lone candidate wins by default.
    """
    order = sorted(candidates, key=lambda c: c.mean)
    if not order:
        return None, []
    best = order[0]
    if len(order) == 1:
        return best, [best]

    def apart(c: Candidate) -> bool:
        if best.se is None or c.se is None:
            return False
        return c.mean - best.mean > best.se + c.se

    tied = [best, *(c for c in order[1:] if not apart(c))]
    return (best, [best]) if len(tied) == 1 else (None, tied)


def budget_candidates(res: Mapping[str, Any], budget: int) -> list[Candidate]:
    """The unbiased sampling estimators (enumeration aside) compared at ``budget`` on one
    problem: matched to it, with a finite ``variance × n_evals`` in every seed and a mean
    cost of at most ``budget`` (averaging independent draws reaches it). A variance at
    rounding level (``ROUNDING`` × ‖exact gradient‖²) counts as 0: the gradient is exact."""
    ests: Mapping[str, Any] = res["estimators"]
    norm = res.get("exact_norm")
    floor = ROUNDING * float(norm) ** 2 if md.number(norm) else 0.0
    out = []
    for label in res.get("budgets", {}).get(str(budget), []):
        v = ests.get(label)
        if v is None or md.is_exact(label) or not md.is_unbiased(label):
            continue
        value, cost = v.get("variance_x_evals"), v.get("n_evals")
        if not (md.number(value) and md.number(cost)) or cost > budget * (1 + 1e-9):
            continue
        if md.n_of(v, "variance_x_evals") < md.seeds_of(v):
            continue  # a seed gave no number: not comparable
        if value <= floor:
            out.append(Candidate(label, 0.0, 0.0))
            continue
        out.append(Candidate(label, float(value), md.se_of(v, "variance_x_evals")))
    return out


def _cell_text(res: Mapping[str, Any], budget: int) -> str:
    text = _winner_text(res, budget)
    support = res.get("support")
    if md.number(support) and support <= budget:
        text += f"; enumeration costs {support}"
    return text


def _winner_text(res: Mapping[str, Any], budget: int) -> str:
    cands = budget_candidates(res, budget)
    if not cands:
        return "—"
    best, tied = winner(cands)
    seeds = md.seeds_of(res["estimators"][cands[0].label])
    if best is None:
        names = ", ".join(f"`{c.label}`" for c in tied)
        if all(c.mean == 0 for c in tied):
            return f"exact (zero variance): {names}"
        return f"not distinguishable at {md.plural(seeds, 'seed')}: {names}"
    rest = sorted((c for c in cands if c is not best), key=lambda c: c.mean)
    if not rest:
        return f"`{best.label}` (the only one within budget)"
    if best.mean == 0:
        return f"**`{best.label}`** (exact: zero variance)"
    return f"**`{best.label}`** ({md.fmt(rest[0].mean / best.mean)}× below `{rest[0].label}`)"


def equal_budget_table(results: Results, budgets: Sequence[int]) -> str:
    """Which estimator at which C, D, logits (rows) and budget (columns): see :func:`winner`."""
    rows = []
    for pname, res in results.items():
        where = [res["C"], res["D"], res["logits"]] if "C" in res else [f"`{pname}`", "", ""]
        rows.append([*where, *(_cell_text(res, b) for b in budgets)])
    return md.table(["C", "D", "logits", *(f"budget {b}" for b in budgets)], rows)


def family(label: str) -> str:
    """``label`` without its sample size (``rloo:n_samples=8`` -> ``rloo``)."""
    from discograd.estimators.registry import parse_spec
    from discograd.experiments.variance import SAMPLE_SIZE_PARAMETERS

    name, kwargs = parse_spec(label)
    rest = [f"{k}={v}" for k, v in sorted(kwargs.items()) if k not in SAMPLE_SIZE_PARAMETERS]
    return name + (":" + ",".join(rest) if rest else "")


def family_summary(results: Results, budgets: Sequence[int]) -> str:
    """Per estimator family, over every (problem, budget) cell where it was compared:
    cells, wins, ties for the lowest, and the geometric mean of its
    ``variance × n_evals`` over the lowest one's, and its median µs per draw (the median
    over those cells of each one's median timed call)."""
    stats: dict[str, dict[str, Any]] = {}
    for res in results.values():
        for b in budgets:
            cands = budget_candidates(res, b)
            if not cands:
                continue
            best, tied = winner(cands)
            low = min(c.mean for c in cands)
            for c in cands:
                s = stats.setdefault(
                    family(c.label), {"cells": 0, "wins": 0, "ties": 0, "logs": [], "us": []}
                )
                timing = draw_timing(res["estimators"][c.label])
                if timing is not None:
                    s["us"].append(timing.quartiles()[1] * 1e6)
                s["cells"] += 1
                s["wins"] += best is c
                s["ties"] += best is None and c in tied
                if low > 0 and c.mean > 0:
                    s["logs"].append(math.log(c.mean / low))
    rows = []
    for fam, s in sorted(stats.items(), key=lambda kv: (-kv[1]["wins"], -kv[1]["ties"], kv[0])):
        gm = math.exp(sum(s["logs"]) / len(s["logs"])) if s["logs"] else None
        median = statistics.median(s["us"]) if s["us"] else None
        rows.append([f"`{fam}`", s["cells"], s["wins"], s["ties"], md.fmt(gm), md.fmt(median)])
    return md.table(
        [
            "estimator",
            "cells compared",
            "wins",
            "tied for lowest",
            "× the lowest (geo. mean)",
            "µs / draw (median)",
        ],
        rows,
    )


def _detail_table(res: Mapping[str, Any], budgets: Sequence[int]) -> str:
    served = {
        label: [b for b in budgets if label in res.get("budgets", {}).get(str(b), [])]
        for label in res["estimators"]
    }
    rows = []
    for label, v in md.sort_by(res["estimators"], "variance_x_evals"):
        rows.append(
            [
                f"`{label}`",
                ", ".join(map(str, served[label])) or "—",
                _cell(v, "f-evals"),
                _cell(v, "var × evals"),
                _cell(v, "SNR"),
                _cell(v, "bias"),
                _cell(v, "noise"),
                fmt_timing(draw_timing(v), scale=1e6),
            ]
        )
    return md.table(
        ["estimator", "budgets", "f-evals", "var × evals", "SNR", "bias", "noise", "µs / draw"],
        rows,
    )


def equal_budget_section(results: Results, cfg: Any) -> list[str]:
    """The equal-evaluation comparison: the winner table, a summary per family, details."""
    budgets = list(cfg.budgets)
    all_estimators = {
        f"{p}/{k}": v for p, res in results.items() for k, v in res["estimators"].items()
    }
    text = [
        EQUAL_BUDGET_HEADING,
        "",
        f"Every estimator at equal f-evaluations: budgets {', '.join(map(str, budgets))}. An "
        "estimator with a sample size (`n_samples`; `k` for sum-and-sample) gets the largest one "
        "whose cost is within the budget (`discograd.experiments.variance.match_budget`); one "
        "with a fixed or data-dependent cost (ARSM family, categorical DisARM) is compared at "
        "every budget at least its mean cost, as the average of budget / cost independent draws, "
        "whose variance is *variance × f-evaluations* / budget. So each cell compares "
        "variance × f-evaluations (the gradient variance summed over logits, times the mean "
        f"f-evaluations per draw; {cfg.draws} draws per estimator and seed, mean ± s.e. over "
        "seeds) among the unbiased estimators within budget. A winner is named only when its "
        "error bar (mean ± s.e.) overlaps no other's (`discograd.report.variance.winner`); "
        "otherwise the cell lists those that overlap the lowest. Ratio: the runner-up's "
        "variance × f-evaluations over the winner's. Enumeration (`exact`) is left out; a cell "
        "says when the budget would pay for it. "
        f"{md.seed_note(all_estimators)}",
        "",
        "### Which estimator at which C, D, budget",
        "",
        equal_budget_table(results, budgets),
        "",
        "### Per estimator, over every cell",
        "",
        family_summary(results, budgets),
        "",
    ]
    over = {p: res.get("over_budget", {}) for p, res in results.items() if res.get("over_budget")}
    if over:
        text += [
            f"Not run (cost above the largest budget, {max(budgets)}): "
            + "; ".join(
                f"`{p}`: " + ", ".join(f"`{s}` ({md.fmt(c)})" for s, c in o.items())
                for p, o in over.items()
            )
            + ".",
            "",
        ]
    text += ["### Each problem", ""]
    for pname, res in results.items():
        text += [
            f"#### `{pname}`: {res['description']}",
            "",
            f"Configurations per data point: {res.get('support')}; ‖exact gradient‖ = "
            f"{md.fmt(res.get('exact_norm'))}.",
            "",
            _detail_table(res, budgets),
            "",
        ]
    return text


def _budget_summary(results: Results, cfg: Any) -> list[str]:
    cells = named = 0
    wins: dict[str, int] = {}
    for res in results.values():
        for b in cfg.budgets:
            cands = budget_candidates(res, b)
            if len(cands) < 2:
                continue
            cells += 1
            best, _ = winner(cands)
            if best is not None:
                named += 1
                wins[family(best.label)] = wins.get(family(best.label), 0) + 1
    if not cells:
        return []
    most = ", ".join(f"`{k}` {v}" for k, v in sorted(wins.items(), key=lambda kv: -kv[1]))
    return [
        f"Equal evaluations: a winner in {named} of {cells} (problem, budget) cells"
        + (f" ({most})" if most else "")
        + "; the others are not distinguishable at these seeds."
    ]
