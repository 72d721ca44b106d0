"""The report of a sweep: tables of mean ± s.e. over seeds per grid point, guarded sentences.

Made from the sweep's ``results.json`` data (see
:func:`discograd.experiments.sweep.write_results`): per grid point, per
estimator, the :func:`~discograd.experiments.trainer.aggregate` of its seeds.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from discograd.report.markdown import compare, divergence, machine, pm

__all__ = ["render"]

# The metric names whose highest value a sentence names (for all others: the lowest).
HIGHER = frozenset({"expected_reward", "p_last", "p_first", "test_accuracy", "snr", "cosine"})
# Wall-clock numbers: cells that ran side by side shared the cores, so no sentence compares them.
TIMING = ("seconds", "speedup")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def _n_seeds(r: Mapping[str, Any]) -> int:
    return len(r.get("seeds") or [])


def _seeds(r: Mapping[str, Any]) -> str:
    n = _n_seeds(r)
    return f"{n} seed{'s' * (n != 1)}"


def _groups(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Results that may be compared with each other: the variance study's units are
    ``problem/estimator``, and estimators are compared on one problem at a time."""
    groups: dict[str, dict[str, Any]] = {}
    for unit, r in results.items():
        prefix = unit.split("/", 1)[0] if "/" in unit else ""
        groups.setdefault(prefix, {})[unit] = r
    return list(groups.values())


def printed(data: Mapping[str, Any]) -> list[str]:
    """What the command prints: per grid point, one line per estimator, mean ± s.e."""
    metrics = data["metrics"]
    lines = ["", "sweep results (mean ± s.e. over seeds)"]
    for p in data["points"]:
        lines += ["", p["label"]]
        rows = []
        for unit, r in p["results"].items():
            where = divergence(r)
            text = (
                f"diverged at {where}"
                if where is not None
                else "  ".join(f"{k} {pm(r, k)}" for k in metrics if k in r)
            )
            rows.append((unit, f"{text}  ({_seeds(r)})"))
        if not rows:
            lines.append("  (no finished cell)")
        width = max((len(u) for u, _ in rows), default=0)
        lines += [f"  {u:<{width}}  {t}" for u, t in rows]
    found = {k for p in data["points"] for r in p["results"].values() for k in r}
    missing = [k for k in metrics if k not in found]
    if found and missing:  # a misspelt --metrics name shows, rather than an empty column
        lines += ["", f"no result has {', '.join(missing)}"]
    return lines


def render(data: Mapping[str, Any], command: str, how: str) -> tuple[str, list[str]]:
    """``report.md``'s text and the printed lines, from the sweep's results."""
    metrics, points, counts = data["metrics"], data["points"], data["cells"]
    total = sum(counts.values())
    lines = [
        f"# discograd sweep: {data['task']}",
        "",
        f"`{command}` — {time.strftime('%Y-%m-%d %H:%M')}, {machine()}.",
        "",
        f"{total} cells (grid point × estimator × seed): "
        + ", ".join(f"{v} {k}" for k, v in counts.items())
        + f"; {how}. Each cell is a run folder in `cells/`. Numbers are the mean ± standard "
        "error over the seeds of a grid point and estimator (the seeds column says how many; "
        "a mean over fewer seeds says so). Times per step were measured with other cells "
        "running beside them: no sentence compares them.",
        "",
    ]
    for p in points:
        lines += [f"## {p['label']}", ""]
        results = p["results"]
        if not results:
            lines += ["(no finished cell)", ""]
            continue
        shown = [k for k in metrics if any(k in r for r in results.values())]
        rows = [
            [f"`{u}`", *(pm(r, k) for k in shown), str(_n_seeds(r))] for u, r in results.items()
        ]
        lines += [*_table(["estimator", *shown, "seeds"], rows), ""]
        for group in _groups(results):
            for k in shown:
                if any(t in k for t in TIMING):
                    continue
                sentence = compare(group, k, k, lower=k not in HIGHER)
                if sentence is not None:
                    lines.append(f"* {sentence}")
        lines.append("")
    if len(points) > 1:
        units = list(dict.fromkeys(u for p in points for u in p["results"]))
        lines += ["## Across the grid", ""]
        for k in metrics:
            rows = [
                [p["label"], *(pm(p["results"][u], k) if u in p["results"] else "—" for u in units)]
                for p in points
            ]
            lines += [f"### {k}", "", *_table(["setting", *(f"`{u}`" for u in units)], rows), ""]
    return "\n".join(lines).rstrip() + "\n", printed(data)
