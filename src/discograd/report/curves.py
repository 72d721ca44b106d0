"""Curves over seeds from ``metrics.jsonl``: the mean of each seed's value and their range.

A curve of one estimator takes the steps that every one of its seeds logged
(a seed that diverged ends the curve where it stopped); at each, the mean over
the seeds and the smallest and largest seed's value (the plots' band). Values
that are zero or not finite are kept as they are: the plots mark them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from discograd.experiments.runner import RunDir

__all__ = ["Curve", "Records", "cumulative_seconds", "curve"]

XFn = Callable[[dict[str, Any]], float | None]


@dataclass(frozen=True)
class Curve:
    """``mean`` (and the range ``lo``..``hi`` across ``seeds`` seeds) against ``x``."""

    x: tuple[float, ...]
    mean: tuple[float, ...]
    lo: tuple[float, ...]
    hi: tuple[float, ...]
    seeds: int

    def __len__(self) -> int:
        return len(self.x)


class Records:
    """A run's records, grouped by phase once (reports draw many curves from them)."""

    def __init__(self, run: RunDir) -> None:
        self.by_phase: dict[str, list[dict[str, Any]]] = {}
        for r in run.records():
            self.by_phase.setdefault(r.get("phase", ""), []).append(r)

    def of(self, phase: str) -> list[dict[str, Any]]:
        return self.by_phase.get(phase, [])


def _value(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def step(r: Mapping[str, Any]) -> float | None:
    return _value(r.get("step"))


def cumulative_seconds(r: Mapping[str, Any]) -> float | None:
    """Training seconds up to a record's step: an evaluation record's ``seconds``, or a
    logged window's step × mean seconds per step so far."""
    if _value(r.get("seconds")) is not None:
        return _value(r["seconds"])
    s, per = _value(r.get("step")), _value(r.get("seconds_per_step"))
    return None if s is None or per is None else s * per


def curve(records: Records, phases: Sequence[str], key: str, x: XFn = step) -> Curve:
    """``key`` against ``x`` over the seeds' ``phases``, at the steps all of them logged."""
    by_step: dict[float, list[tuple[float, float]]] = {}
    for phase in phases:
        seen: set[float] = set()
        for r in records.of(phase):
            s, v, xv = _value(r.get("step")), _value(r.get(key)), x(r)
            if s is None or v is None or xv is None or s in seen:
                continue
            seen.add(s)
            by_step.setdefault(s, []).append((xv, v))
    xs, mean, lo, hi = [], [], [], []
    for s in sorted(by_step):
        pts = by_step[s]
        if len(pts) != len(phases):
            continue
        ys = [p[1] for p in pts]
        xs.append(sum(p[0] for p in pts) / len(pts))
        finite = all(math.isfinite(y) for y in ys)
        mean.append(sum(ys) / len(ys) if finite else math.nan)
        lo.append(min(ys) if finite else math.nan)
        hi.append(max(ys) if finite else math.nan)
    return Curve(tuple(xs), tuple(mean), tuple(lo), tuple(hi), len(phases))
