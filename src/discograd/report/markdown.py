"""What every section of the report shares: numbers, tables, guarded comparisons, the file.

Results come from :func:`discograd.experiments.trainer.aggregate`: per
estimator the mean of every number over seeds, with ``se`` (standard errors),
``n`` (seeds behind each mean), ``seeds`` and ``per_seed``. Tables print
``mean ± s.e.``. A sentence that ranks estimators is made only when the
difference exceeds its standard error, and says so with the numbers;
otherwise it says they are not distinguishable at that many seeds. Nothing is
divided by a floor: a ratio whose denominator can be zero is not printed.

Each task's section is a module of its own (:mod:`discograd.report.toy`, ...);
timings are in :mod:`discograd.report.timing`, curves over seeds in
:mod:`discograd.report.curves`.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeGuard

import torch

from discograd.errors import ConfigError
from discograd.estimators.registry import EstimatorInfo, info
from discograd.experiments.runner import RunDir, atomic_write_text
from discograd.experiments.trainer import aggregate

__all__ = [
    "Section",
    "compare",
    "divergence",
    "fmt",
    "headline",
    "nats_rows",
    "pm",
    "table",
    "write_report",
]

Results = Mapping[str, dict[str, Any]]


class Section(NamedTuple):
    """A task's part of the report: its markdown, and the summary lines it contributes."""

    text: str
    summary: list[str]


# -------------------------------------------------------------------- numbers
def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "undefined (NaN)"
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}"


def number(v: Any) -> TypeGuard[float]:
    """A finite int or float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def se_of(r: Mapping[str, Any], key: str) -> float | None:
    return (r.get("se") or {}).get(key)


def n_of(r: Mapping[str, Any], key: str) -> int:
    """Seeds behind the mean of ``key``."""
    return (r.get("n") or {}).get(key, 1 if number(r.get(key)) else 0)


def seeds_of(r: Mapping[str, Any]) -> int:
    """Seeds the run had for this estimator."""
    return len(r.get("seeds") or [0])


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def pm(r: Mapping[str, Any], key: str, *, scale: float = 1.0, decimals: int | None = None) -> str:
    """``r[key]`` as ``mean ± s.e.`` (the s.e. when there are two seeds or more).

    ``decimals``: fixed decimals (nats) instead of three significant digits;
    a mean over fewer seeds than the run had says so ("2 of 3 seeds").
    """
    v = r.get(key)
    if not number(v):
        return fmt(v)
    se = se_of(r, key)
    decimals = _decimals(r, key, scale, decimals)

    def show(x: float) -> str:
        return f"{x:.{decimals}f}" if decimals is not None else fmt(x)

    text = show(v * scale)
    if se is not None:
        text += f" ± {show(se * scale)}"
    n, total = n_of(r, key), seeds_of(r)
    if n < total:
        text += f" ({n} of {total} seeds)"
    return text


def _decimals(r: Mapping[str, Any], key: str, scale: float, decimals: int | None) -> int | None:
    """``decimals``, or more where the standard error would show as 0.00."""
    se = se_of(r, key)
    if decimals is not None and se is not None and 0 < se * scale < 0.5 * 10**-decimals:
        return -math.floor(math.log10(se * scale))
    return decimals


def column(results: Results, key: str, *, decimals: int, scale: float = 1.0) -> dict[str, str]:
    """``pm`` of ``key`` for every estimator, all to the same decimals: ``decimals``, or
    more where a standard error would show as 0 with that many."""
    d = max((_decimals(r, key, scale, decimals) or decimals for r in results.values()), default=0)
    return {k: pm(r, key, scale=scale, decimals=max(d, decimals)) for k, r in results.items()}


def per_seed_values(r: Mapping[str, Any], key: str) -> list[Any]:
    """``key`` in each seed's result, in seed order."""
    per_seed = r.get("per_seed") or {"0": r}
    return [v.get(key) for _, v in sorted(per_seed.items(), key=lambda kv: int(kv[0]))]


def derived(r: Mapping[str, Any], fn: Callable[[dict[str, Any]], float | None]) -> dict[str, Any]:
    """A number computed from each seed's result, aggregated like the others (key ``x``)."""
    per_seed = r.get("per_seed") or {"0": r}
    return aggregate({int(s): {"x": fn(v)} for s, v in per_seed.items()})


def sort_by(results: Results, key: str, *, lower: bool = True) -> list[tuple[str, dict[str, Any]]]:
    """``results`` best mean of ``key`` first; those without the number last, in order."""
    have = [kv for kv in results.items() if number(kv[1].get(key))]
    rest = [kv for kv in results.items() if not number(kv[1].get(key))]
    return sorted(have, key=lambda kv: kv[1][key], reverse=not lower) + rest


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ------------------------------------------------------- estimator metadata
def estimator_info(label: str) -> EstimatorInfo | None:
    """The registry's record of a result's label (an estimator spec), or ``None`` for a
    method that is not an estimator (M2's ``marginal``)."""
    try:
        return info(label)
    except ConfigError:
        return None


def is_exact(label: str) -> bool:
    """Whether ``label`` is an estimator that computes the exact gradient (enumeration)."""
    meta = estimator_info(label)
    return meta is not None and meta.exact


def is_unbiased(label: str) -> bool:
    meta = estimator_info(label)
    return meta is not None and meta.unbiased


# ---------------------------------------------------------------- divergence
def divergence(result: Mapping[str, Any]) -> str | None:
    """Where an estimator diverged ("step 37 (non-finite loss)"), or None if it did not."""
    d = result.get("diverged")
    if not isinstance(d, dict):
        return None
    where = f"step {d['step']} (non-finite {d['quantity']})"
    seeds, total = d.get("seeds"), seeds_of(result)
    if seeds is not None and total > 1:
        where += f" in {plural(len(seeds), 'seed')} of {total}"
    return where


def finished(results: Results) -> dict[str, dict[str, Any]]:
    """The results of the estimators that did not diverge (the ones with test numbers)."""
    return {k: v for k, v in results.items() if divergence(v) is None}


def nats_rows(results: Results, keys: Sequence[str], sort_key: str) -> list[list[Any]]:
    """Rows of a likelihood table: per estimator the nats ``keys`` (mean ± s.e., two
    decimals or more for a small standard error, whatever the magnitude), the
    evaluations per step and the ms / step; finished runs sorted by ``sort_key``,
    lowest first, then the diverged ones with where they diverged."""
    from discograd.report.timing import fmt_timing, step_timing

    done = finished(results)
    nats = {key: column(done, key, decimals=2) for key in keys}
    rows: list[list[Any]] = [
        [
            k,
            *(nats[key][k] for key in keys),
            pm(r, "evals_per_step"),
            fmt_timing(step_timing(r), scale=1000),
        ]
        for k, r in sort_by(done, sort_key)
    ]
    rows += [
        [
            k,
            f"diverged at {divergence(r)}",
            *([None] * (len(keys) - 1)),
            pm(r, "evals_per_step"),
            fmt_timing(step_timing(r), scale=1000),
        ]
        for k, r in results.items()
        if k not in done
    ]
    return rows


def divergence_lines(study: str, results: Results) -> list[str]:
    gone = {k: divergence(v) for k, v in results.items() if divergence(v) is not None}
    if not gone:
        return []
    return [
        f"Diverged in the {study} and stopped there (no test numbers): "
        + ", ".join(f"`{k}` at {where}" for k, where in gone.items())
        + "."
    ]


def seed_note(results: Results) -> str:
    n = max((seeds_of(r) for r in results.values()), default=1)
    if n == 1:
        return "One seed: no standard errors, so no estimator is ranked above another."
    return f"Mean ± standard error over {n} seeds."


# --------------------------------------------------------------- comparisons
#: Two numbers this close (relative) are "equal": the same computation can differ in
#: the last bits when the same gradient is computed in a different order.
EQUAL = 1e-9


def equal(x: Any, y: Any) -> bool:
    return number(x) and number(y) and math.isclose(x, y, rel_tol=EQUAL, abs_tol=0.0)


def equal_in_every_seed(ra: Mapping[str, Any], rb: Mapping[str, Any], keys: Sequence[str]) -> bool:
    """Whether ``ra`` and ``rb`` have equal numbers for ``keys`` in each seed."""
    for key in keys:
        a, b = per_seed_values(ra, key), per_seed_values(rb, key)
        if len(a) != len(b) or not all(equal(x, y) for x, y in zip(a, b, strict=True)):
            return False
    return True


def compare(
    results: Results,
    key: str,
    what: str,
    *,
    lower: bool = True,
    decimals: int | None = None,
    scale: float = 1.0,
) -> str | None:
    """A sentence on which estimator is best by ``key``, or that none can be told apart.

    The best (by mean) is compared with the next: it is named only when their
    difference exceeds its standard error √(se₁² + se₂²) (a standard error of 0
    means every seed gave the same number, so any difference is one every seed
    showed); with one seed there is no standard error, and the sentence says
    they are not distinguishable. Estimators equal to the best in every seed
    are named with it, and the next one is the first that is not. Estimators
    whose mean is over fewer seeds than the run had (a seed diverged, or gave
    NaN) are left out, and named. ``None`` when fewer than two estimators have
    the number.
    """
    have = {k: r for k, r in results.items() if number(r.get(key))}
    candidates = {k: r for k, r in have.items() if n_of(r, key) == seeds_of(r)}
    if len(candidates) < 2:
        return None
    order = sorted(candidates, key=lambda k: candidates[k][key], reverse=not lower)
    a = order[0]
    ra = candidates[a]
    ties = [k for k in order[1:] if equal_in_every_seed(ra, candidates[k], [key])]
    rest = [k for k in order[1:] if k not in ties]
    word = "lowest" if lower else "highest"
    if decimals is not None:  # both numbers to the same decimals
        decimals = max(
            _decimals(candidates[k], key, scale, decimals) or decimals for k in [a, *rest[:1]]
        )
    shown_a = pm(ra, key, scale=scale, decimals=decimals)
    left_out = [k for k in have if k not in candidates]
    tail = (
        " Left out (a mean over fewer seeds than the run had): "
        + ", ".join(f"`{k}` ({n_of(have[k], key)} of {seeds_of(have[k])})" for k in left_out)
        + "."
        if left_out
        else ""
    )
    named = " = ".join(f"`{k}`" for k in [a, *ties])
    if not rest:
        return (
            f"The {what} was the same for {named} in every seed (to {EQUAL:g} relative): "
            f"{shown_a}.{tail}"
        )
    if ties:
        tail = f" {named}: equal in every seed (to {EQUAL:g} relative).{tail}"
    b = rest[0]
    rb = candidates[b]
    shown_b = pm(rb, key, scale=scale, decimals=decimals)
    n = min(n_of(ra, key), n_of(rb, key))
    sa, sb = se_of(ra, key), se_of(rb, key)
    if sa is not None and sb is not None:
        diff = abs(ra[key] - rb[key]) * scale
        se = math.hypot(sa, sb) * scale
        if diff > se:
            return (
                f"{named} had the {word} {what}: {shown_a}, against {shown_b} for `{b}`, the "
                f"next (difference {fmt(diff)}, more than its standard error {fmt(se)}; "
                f"{plural(n, 'seed')}).{tail}"
            )
    return (
        f"The {word} {what}: {named} ({shown_a}) and `{b}` ({shown_b}) are not "
        f"distinguishable at {plural(n, 'seed')}.{tail}"
    )


def identical(results: Results, keys: Sequence[str]) -> list[list[str]]:
    """Groups of two or more estimators whose ``keys`` are equal numbers in every seed."""
    groups: list[list[str]] = []
    for label, r in results.items():
        if not all(number(v) for k in keys for v in per_seed_values(r, k)):
            continue
        for group in groups:
            if equal_in_every_seed(results[group[0]], r, keys):
                group.append(label)
                break
        else:
            groups.append([label])
    return [g for g in groups if len(g) > 1]


def identical_line(results: Results, keys: Sequence[str], what: str) -> list[str]:
    """A sentence naming the estimators whose ``what`` were equal in every seed."""
    groups = identical(results, keys)
    if not groups:
        return []
    return [
        f"Equal {what} in every seed (to {EQUAL:g} relative): "
        + "; ".join(" = ".join(f"`{k}`" for k in g) for g in groups)
        + "."
    ]


# --------------------------------------------------------------------- plots
def _plots_available() -> bool:
    """Whether matplotlib can be imported (the one switch every section asks)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


PLOTS_SKIPPED = "Plots skipped: matplotlib is not available (`pip install 'discograd[plot]'`)."


def img(name: str, alt: str, caption: str = "") -> list[str]:
    """A plot in the report: the image, and its caption (what the lines and bands are)."""
    return [f"![{alt}]({name})", "", *([f"*{caption}*", ""] if caption else [])]


def phases(task: str, label: str, r: Mapping[str, Any]) -> list[str]:
    """The phase names of ``label``'s seeds."""
    return [f"{task}/{label}/seed{s}" for s in r.get("seeds") or [0]]


def dataset_name(cfg: Any) -> str:
    return Path(cfg.dataset).name


# -------------------------------------------------------------- the command
def headline(results: Results, keys: Sequence[str]) -> list[tuple[str, str]]:
    """One row per estimator for the command's printout: its headline numbers.

    Numbers are mean ± s.e. over seeds as in the report's tables; times per
    step are the report's medians and interquartile ranges (ms), and the
    speed-up over ``marginal`` is the report's ratio of medians.
    """
    from discograd.report.timing import fmt_timing, speedup_cell, step_timing

    rows = []
    for label, r in results.items():
        where = divergence(r)
        if where is not None:
            rows.append((label, f"diverged at {where}"))
            continue
        cells = []
        for key in keys:
            if key == "seconds_per_step":
                cells.append(f"ms/step {fmt_timing(step_timing(r), scale=1000)}")
            elif key == "speedup_vs_marginal":
                cells.append(f"speed-up vs marginal {speedup_cell(results, label)}")
            else:
                cells.append(f"{key} {pm(r, key)}")
        rows.append((label, "  ".join(cells)))
    return rows


def machine() -> str:
    cpu = os.cpu_count()
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    py = platform.python_version()
    return f"{platform.platform()}, Python {py}, torch {torch.__version__}, {cpu} CPUs, {dev}"


def write_report(
    run: RunDir,
    title: str,
    command: str,
    sections: Sequence[str],
    summary: Sequence[str],
    extra_top: Sequence[str] = (),
) -> Path:
    """``report.md`` in the run folder: summary first, then the sections."""
    lines = [
        f"# {title}",
        "",
        f"`{command}` — {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}, {machine()}.",
        "",
        "## Summary (from these numbers, with their standard errors over seeds)",
        "",
    ]
    lines += [f"* {s}" for s in summary] or ["* No comparison: see the tables below."]
    lines += ["", *extra_top, *sections]
    path = run.path / "report.md"
    atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
    return path
