"""Tables and plots of a protocol sweep, finished or still running, for docs/results.md.

    python scripts/protocol_results.py RUNS/protocol-disarm --name disarm \
        --plots docs/results [--markdown out.md | --splice docs/results.md] \
        [--export docs/results/data/protocol-disarm.csv]
    python scripts/protocol_results.py --cells-csv docs/results/data/protocol-disarm.csv \
        --name disarm ...

Reads every cell's ``metrics.jsonl`` (cells are ``<estimator>--seed<k>`` run
folders of ``discograd sweep``), so a sweep that is still running (or was cut
by the end of a session) can be reported at the steps it reached. For each
estimator the numbers are taken at the last step that *every* one of its seeds
has logged, so a mean never mixes seeds at different steps; the table says
which step that is. Means ± standard errors over seeds come from
:func:`discograd.experiments.trainer.aggregate`; each metric's line orders the
estimators and gives every gap in standard errors of the difference
√(se₁² + se₂²) (none with one seed: an order, not a ranking). Plots: the mean
over seeds with a band of ± one standard error, against training steps.

``--export FILE.csv`` writes every cell's logged series as a tidy table
(``estimator,seed,step,metric,value``; a few tens of kB per protocol) so that
the numbers behind a table and its plot can be committed: a run folder is not
committed and may not outlive the machine that ran it. ``--cells-csv`` reads
such tables back, alone or beside a sweep folder (a cell found in two places
is an error, never silently replaced).

``--splice FILE`` replaces only the text between the lines
``<!-- begin generated: protocol NAME -->`` and ``<!-- end generated: protocol
NAME -->`` of ``FILE``, so the hand-written discussion around the tables
survives a regeneration.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from discograd.experiments.trainer import aggregate
from discograd.report.markdown import pm

CELL = re.compile(r"(?P<est>.+)--seed(?P<seed>\d+)$")
# estimator -> seed -> metric -> step -> value
Cells = dict[str, dict[int, dict[str, dict[int, float]]]]
CSV_FIELDS = ("estimator", "seed", "step", "metric", "value")
# metric -> (label, lower is better)
METRICS = {
    "train_set_neg_elbo": ("train −ELBO (training set)", True),
    "valid_neg_elbo": ("validation −ELBO", True),
    "test_iw_bound": ("test −log p bound (100 samples)", True),
    "grad_var": ("encoder gradient variance", True),
}
# How each metric is shown: (scale, decimals). Nats to 0.01: the estimators of one
# protocol differ by tenths of a nat, which three significant digits of ~250 hide.
SHOWN = {"grad_var": (1e2, 3)}
NATS = (1.0, 2)


def shown(key: str) -> tuple[float, int]:
    """``(scale, decimals)`` of metric ``key`` in tables and orderings."""
    return SHOWN.get(key, NATS)


def read_cells(sweep: Path, finished: bool = False) -> Cells:
    """estimator -> seed -> metric -> step -> value (``finished``: only cells that ran to
    their end, i.e. wrote ``results.json``)."""
    out: Cells = defaultdict(dict)
    for cell in sorted((sweep / "cells").iterdir()):
        m = CELL.match(cell.name)
        path = cell / "metrics.jsonl"
        if m is None or not path.exists():
            continue
        if finished and not (cell / "results.json").exists():
            continue
        series: dict[str, dict[int, float]] = defaultdict(dict)
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by an interruption
                continue
            step = rec.get("step")
            for key in METRICS:
                v = rec.get(key)
                if isinstance(step, int) and isinstance(v, (int, float)) and math.isfinite(v):
                    series[key][step] = float(v)
        out[m["est"]][int(m["seed"])] = dict(series)
    return dict(out)


def write_csv(cells: Cells, path: Path) -> None:
    """Every cell's series as rows ``estimator,seed,step,metric,value`` (``repr`` of
    the float, so reading the file back gives the same numbers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(CSV_FIELDS)
        for est in sorted(cells):
            for seed in sorted(cells[est]):
                for key in METRICS:
                    for step, value in sorted(cells[est][seed].get(key, {}).items()):
                        out.writerow((est, seed, step, key, repr(value)))


def read_csv(path: Path) -> Cells:
    """The cells of a table written by :func:`write_csv`."""
    out: Cells = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != CSV_FIELDS:
            raise SystemExit(f"{path}: expected the columns {','.join(CSV_FIELDS)}")
        for row in reader:
            if row["metric"] not in METRICS:
                raise SystemExit(f"{path}: unknown metric {row['metric']!r}")
            seeds = out[row["estimator"]]
            seeds[int(row["seed"])][row["metric"]][int(row["step"])] = float(row["value"])
    return {e: {s: dict(m) for s, m in seeds.items()} for e, seeds in out.items()}


def merge(into: Cells, more: Cells, where: str) -> None:
    """Add the cells of ``more`` to ``into``; a cell already there is an error."""
    for est, seeds in more.items():
        for seed, series in seeds.items():
            if seed in into.get(est, {}):
                raise SystemExit(f"cell {est}--seed{seed} of {where} is already read")
            into.setdefault(est, {})[seed] = series


def common_steps(seeds: dict[int, dict[str, dict[int, float]]], key: str) -> list[int]:
    sets = [set(s.get(key, {})) for s in seeds.values()]
    return sorted(set.intersection(*sets)) if sets else []


def at_common_step(cells: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    """Per estimator, the aggregate over seeds of each metric at the metric's common
    step: the last step that every seed of every estimator has logged."""
    steps: dict[str, int] = {}
    for key in METRICS:
        sets = [set(common_steps(seeds, key)) for seeds in cells.values()]
        both = set.intersection(*sets) if sets else set()
        if both:
            steps[key] = max(both)
    results: dict[str, Any] = {}
    for est, seeds in cells.items():
        per_seed = {s: {k: seeds[s][k][t] for k, t in steps.items()} for s in seeds}
        results[est] = aggregate(per_seed)
    return results, steps


def table(results: dict[str, Any], counts: dict[str, int], steps: dict[str, int]) -> list[str]:
    """The markdown table: per estimator its seeds and each metric's mean ± s.e."""
    keys = [k for k in METRICS if k in steps]
    head = [f"{METRICS[k][0]} at step {steps[k]:,}" for k in keys]
    lines = [f"| estimator | seeds | {' | '.join(head)} |", "|---|--:|" + "--:|" * len(keys)]
    for est, r in results.items():
        cols = [pm(r, k, scale=shown(k)[0], decimals=shown(k)[1]) for k in keys]
        lines.append(f"| `{est}` | {counts[est]} | {' | '.join(cols)} |")
    return lines


def orderings(results: dict[str, Any], steps: dict[str, int]) -> list[str]:
    """One bullet per metric: :func:`ordering`."""
    lines = (ordering(results, k) for k in METRICS if k in steps)
    return [f"* {line}" for line in lines if line]


def markdown(name: str, cells: dict[str, Any], plot: str | None) -> str:
    results, steps = at_common_step(cells)
    lines = table(results, {e: len(seeds) for e, seeds in cells.items()}, steps)
    reached = ", ".join(
        f"`{e}` {max(max(s.get('train_set_neg_elbo', {0: 0})) for s in seeds.values()):,}"
        for e, seeds in cells.items()
    )
    lines += [
        "",
        "Mean ± standard error over the seeds, every estimator at the same step (the last "
        "one every seed of every estimator has logged); the gradient variance ×10⁻². Lower "
        f"is better in every column. Steps reached so far (most advanced seed): {reached}.",
        "",
        *orderings(results, steps),
    ]
    if plot:
        lines += ["", f"![{name}]({plot})"]
    return "\n".join(lines) + "\n"


def ordering(results: dict[str, Any], key: str) -> str | None:
    """Every estimator in order of ``key``, each step annotated with the difference to
    the next in standard errors of the difference (with one seed: the order alone)."""
    have = {e: r for e, r in results.items() if isinstance(r.get(key), (int, float))}
    if len(have) < 2:
        return None
    label, lower = METRICS[key]
    scale, decimals = shown(key)
    order = sorted(have, key=lambda e: have[e][key], reverse=not lower)
    parts = [f"`{order[0]}` {have[order[0]][key] * scale:.{decimals}f}"]
    multi = True
    for a, b in itertools.pairwise(order):
        sa, sb = (have[e].get("se", {}).get(key) for e in (a, b))
        gap = ""
        if sa is None or sb is None:
            multi = False
        else:
            se = math.hypot(sa, sb)
            diff = abs(have[b][key] - have[a][key])
            gap = f" ({diff / se:.1f} s.e.)" if se > 0 else " (equal in every seed)"
        sign = "<" if lower else ">"
        parts.append(f"{sign}{gap} `{b}` {have[b][key] * scale:.{decimals}f}")
    note = (
        "each gap in standard errors of the difference; a gap under about 2 is not a ranking"
        if multi
        else "one seed for some: an order, not a ranking"
    )
    return f"Order by {label}: " + " ".join(parts) + f" ({note})."


def cell_status(sweep: Path) -> str | None:
    """A line on how many cells of the sweep finished, and where the others are."""
    try:
        cells = json.loads((sweep / "sweep.json").read_text())["cells"]
    except (FileNotFoundError, KeyError, json.JSONDecodeError):
        return None
    done = sum(c.get("status") == "done" for c in cells)
    if done == len(cells):
        return f"**Complete**: {done} of {len(cells)} cells ran to their last step."
    parts = []
    for c in cells:
        if c.get("status") == "done":
            continue
        step = 0
        path = sweep / "cells" / c["name"] / "metrics.jsonl"
        if path.exists():
            for line in path.read_text().splitlines():
                found = re.search(r'"step": (\d+)', line)
                if found:
                    step = max(step, int(found[1]))
        parts.append(f"`{c['name']}` at step {step:,}" if step else f"`{c['name']}` not started")
    return (
        f"**Not finished**: {done} of {len(cells)} cells ran to their last step; "
        + ", ".join(parts)
        + "."
    )


def block(doc: str, name: str, where: str) -> tuple[int, int]:
    """Where the protocol's generated block of ``doc`` starts and ends: the offsets
    just after its begin marker and at its end marker."""
    begin = f"<!-- begin generated: protocol {name} -->"
    end = f"<!-- end generated: protocol {name} -->"
    i, j = doc.find(begin), doc.find(end)
    if i < 0 or j < i:
        raise SystemExit(f"{where}: no '{begin}' ... '{end}' markers")
    return i + len(begin), j


def splice(path: Path, name: str, text: str) -> None:
    """Put ``text`` between the protocol's begin/end markers in ``path``."""
    doc = path.read_text()
    i, j = block(doc, name, str(path))
    path.write_text(doc[:i] + "\n" + text.rstrip("\n") + "\n" + doc[j:])


def plots(name: str, cells: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = ("train_set_neg_elbo", "test_iw_bound", "grad_var")
    for ax, key in zip(axes, panels, strict=True):
        tail: list[float] = []  # the nats panels zoom to the last 80 % of training
        last = max((max(common_steps(s, key), default=0) for s in cells.values()), default=0)
        for est, seeds in cells.items():
            steps = common_steps(seeds, key)
            if not steps:
                continue
            vals = [[seeds[s][key][t] for s in seeds] for t in steps]
            n = len(seeds)
            mean = [sum(v) / n for v in vals]
            tail += [m for t, m in zip(steps, mean, strict=True) if t >= 0.2 * last]
            se = [
                math.sqrt(sum((x - m) ** 2 for x in v) / (n - 1) / n) if n > 1 else 0.0
                for v, m in zip(vals, mean, strict=True)
            ]
            line = ax.plot(
                steps,
                mean,
                label=f"{est} ({n} seed{'s' * (n != 1)})",
                marker="." if len(steps) < 15 else None,
            )
            ax.fill_between(
                steps,
                [m - e for m, e in zip(mean, se, strict=True)],
                [m + e for m, e in zip(mean, se, strict=True)],
                color=line[0].get_color(),
                alpha=0.2,
            )
        ax.set_title(METRICS[key][0])
        ax.set_xlabel("training step")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:g}k" if x else "0"))
        if key == "grad_var":
            ax.set_yscale("log")
        elif len(tail) > 1 and max(tail) > min(tail):
            # Estimators differ by tenths of a nat against a fall of hundreds early on.
            pad = 0.15 * (max(tail) - min(tail))
            ax.set_xlim(0.2 * last, last * 1.02)
            ax.set_ylim(min(tail) - pad, max(tail) + pad)
            ax.set_title(f"{METRICS[key][0]}, from step {round(0.2 * last):,}")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), frameon=False)
    fig.suptitle(f"protocol {name}: mean ± s.e. over seeds")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, nargs="?", help="the sweep folder (with cells/)")
    parser.add_argument(
        "--cells-csv", type=Path, nargs="+", default=[], help="tables written by --export"
    )
    parser.add_argument("--export", type=Path, help="write every cell's series here (CSV)")
    parser.add_argument("--name", required=True, help="protocol name, for titles and files")
    parser.add_argument("--plots", type=Path, help="folder for <name>.png")
    parser.add_argument("--markdown", type=Path, help="write the table here (default: print)")
    parser.add_argument(
        "--splice", type=Path, help="replace the protocol's generated block of this file"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="only these seeds (default: every seed found)"
    )
    parser.add_argument(
        "--finished", action="store_true", help="only the cells that ran to their last step"
    )
    args = parser.parse_args()
    if args.sweep is None and not args.cells_csv:
        parser.error("give a sweep folder, --cells-csv, or both")
    cells: Cells = {}
    if args.sweep is not None:
        merge(cells, read_cells(args.sweep, finished=args.finished), str(args.sweep))
    for path in args.cells_csv:
        merge(cells, read_csv(path), str(path))
    if args.seeds is not None:
        keep = set(args.seeds)
        cells = {e: {s: v for s, v in seeds.items() if s in keep} for e, seeds in cells.items()}
        cells = {e: seeds for e, seeds in cells.items() if seeds}
    if not cells:
        parser.error("no cells with metrics found")
    if args.export is not None:
        write_csv(cells, args.export)
    rel = None
    if args.plots is not None:
        png = args.plots / f"protocol-{args.name}.png"
        plots(args.name, cells, png)
        rel = f"results/{png.name}"
    text = markdown(args.name, cells, rel)
    status = cell_status(args.sweep) if args.sweep is not None else None
    if status:
        text = f"{status}\n\n{text}"
    if args.splice:
        splice(args.splice, args.name, text)
    if args.markdown:
        args.markdown.write_text(text)
    elif not args.splice:
        print(text)


if __name__ == "__main__":
    main()
