"""Timings in the report: medians of repeated measurements with their spread, never one number.

Where the repeats come from, per estimator:

* time per step: the Trainer times every phase in
  :data:`~discograd.experiments.trainer.TIMING_WINDOWS` consecutive windows
  (a result's ``step_seconds``: the mean seconds per step of each); the
  windows of all seeds are pooled. Results without them (runs from before
  they were recorded) fall back to each seed's mean ``seconds_per_step``: one
  measurement per seed.
* time per draw (the variance study): each seed's ``draw_seconds`` (repeated
  timed calls), pooled; else each seed's ``seconds_per_draw``.

A timing is shown as ``median [lower quartile–upper quartile]``, and a single
measurement says that it is one. The lowest time is named only when the
interquartile ranges of the two fastest do not overlap; otherwise the sentence
says they are not distinguishable.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from discograd.report.markdown import fmt, number, plural

__all__ = [
    "Timing",
    "compare_times",
    "draw_timing",
    "fmt_timing",
    "speedup",
    "speedup_cell",
    "step_timing",
]


@dataclass(frozen=True)
class Timing:
    """Repeated measurements of one time (seconds), pooled over seeds."""

    values: tuple[float, ...]
    seeds: int
    #: whether ``values`` are repeats within each seed (else one mean per seed)
    repeats: bool
    #: what one repeat is ("timed windows", "timed calls")
    unit: str = "timed repeats"

    @property
    def n(self) -> int:
        return len(self.values)

    def quartiles(self) -> tuple[float, float, float]:
        """(lower quartile, median, upper quartile); linear interpolation between values."""
        if self.n == 1:
            return (self.values[0],) * 3
        q1, med, q3 = statistics.quantiles(self.values, n=4, method="inclusive")
        return q1, med, q3

    @property
    def median(self) -> float:
        return self.quartiles()[1]

    def describe(self) -> str:
        """What the numbers are, e.g. "60 timing windows, 3 seeds"."""
        if self.repeats:
            return f"{self.n} {self.unit} of {plural(self.seeds, 'seed')}"
        return f"{plural(self.seeds, 'seed')}, one mean each"


def _timing(r: Mapping[str, Any], key: str, fallback: str, unit: str) -> Timing | None:
    per_seed = r.get("per_seed") or {"0": r}
    runs = [v for _, v in sorted(per_seed.items(), key=lambda kv: int(kv[0]))]
    lists = [run.get(key) for run in runs]
    pooled = [
        float(t) for times in lists if isinstance(times, list) for t in times if number(t) and t > 0
    ]
    if pooled:
        return Timing(tuple(pooled), sum(1 for t in lists if t), repeats=True, unit=unit)
    means = [float(run[fallback]) for run in runs if number(run.get(fallback))]
    return Timing(tuple(means), len(means), repeats=False) if means else None


def step_timing(r: Mapping[str, Any]) -> Timing | None:
    """Seconds per training step of one estimator (see the module docstring)."""
    return _timing(r, "step_seconds", "seconds_per_step", "timed windows")


def draw_timing(r: Mapping[str, Any]) -> Timing | None:
    """Seconds per gradient draw of one estimator in the variance study."""
    return _timing(r, "draw_seconds", "seconds_per_draw", "timed calls")


def fmt_timing(t: Timing | None, *, scale: float = 1.0) -> str:
    """``median [q1–q3]`` (times ``scale``), or the one measurement there is, saying so."""
    if t is None:
        return "—"
    q1, med, q3 = (v * scale for v in t.quartiles())
    if t.n == 1:
        return f"{fmt(med)} (one measurement)"
    return f"{fmt(med)} [{fmt(q1)}–{fmt(q3)}]"


def compare_times(
    timings: Mapping[str, Timing | None], what: str, *, unit: str = "ms", scale: float = 1000
) -> str | None:
    """A sentence on which estimator took the least time, or that none can be told apart.

    The two with the lowest medians are compared: the first is named only when
    its upper quartile is below the other's lower quartile (the interquartile
    ranges do not overlap), and never from single measurements. ``None`` when
    fewer than two have a timing.
    """
    have = {k: t for k, t in timings.items() if t is not None}
    if len(have) < 2:
        return None
    a, b = sorted(have, key=lambda k: have[k].median)[:2]
    ta, tb = have[a], have[b]
    shown_a, shown_b = (fmt_timing(t, scale=scale) for t in (ta, tb))
    if ta.n < 2 or tb.n < 2:
        return (
            f"The lowest {what} ({unit}): `{a}` ({shown_a}) and `{b}` ({shown_b}) are not "
            "distinguishable: a single measurement has no spread."
        )
    if ta.quartiles()[2] < tb.quartiles()[0]:
        return (
            f"`{a}` had the lowest {what} ({unit}, median [interquartile range]): {shown_a} "
            f"over {ta.describe()}, against {shown_b} for `{b}`, the next (the interquartile "
            "ranges do not overlap)."
        )
    return (
        f"The lowest {what} ({unit}, median [interquartile range]): `{a}` ({shown_a}) and "
        f"`{b}` ({shown_b}) are not distinguishable: their interquartile ranges overlap."
    )


def speedup(ref: Timing | None, own: Timing | None) -> tuple[float, float, float] | None:
    """``ref``'s time over ``own``'s: (ratio of the medians, and the ratios of the quartiles
    that bound it: ref's lower / own's upper, ref's upper / own's lower).

    ``None`` when either is missing or a quartile of ``own`` is not positive (no
    division by a floor).
    """
    if ref is None or own is None:
        return None
    r1, rm, r3 = ref.quartiles()
    o1, om, o3 = own.quartiles()
    if min(o1, om, o3) <= 0:
        return None
    return rm / om, r1 / o3, r3 / o1


def speedup_cell(results: Mapping[str, Mapping[str, Any]], label: str) -> str:
    """``label``'s speed-up over ``marginal`` as ``ratio [low–high]``; "—" without marginal."""
    ref = results.get("marginal")
    if ref is None or label not in results:
        return "—"
    if label == "marginal":
        return "1 (the reference)"
    t_ref, t_own = step_timing(ref), step_timing(results[label])
    s = speedup(t_ref, t_own)
    if s is None or t_ref is None or t_own is None:
        return "—"
    ratio, low, high = s
    if t_ref.n == 1 or t_own.n == 1:
        return f"{fmt(ratio)} (one measurement)"
    return f"{fmt(ratio)} [{fmt(low)}–{fmt(high)}]"
