"""Add new seeds to a protocol table whose run folders are gone.

    python scripts/add_seeds_to_table.py docs/results.md --name rodeo \\
        --cells-csv docs/results/data/protocol-rodeo-seed2.csv [--markdown out.md]

A generated block of ``docs/results.md`` (``scripts/protocol_results.py``)
holds, per estimator, the mean ± standard error over its seeds at one step.
With **two** seeds those two numbers are the seeds' values exactly: the
standard error of a two-seed mean is |x₁ − x₂| / 2, so the values are m − s
and m + s (which seed was which does not matter to a mean or a standard
error); with one seed the number is its value. This script reads those values
back, adds the new seeds' values at the table's step from an exported CSV
(``protocol_results.py --export``), and prints the table and the orderings of
the whole set, in the format of ``protocol_results.py``. Rows with more seeds
are kept as they are and may not receive new ones (their seeds' values cannot
be recovered). The recovered values carry the table's rounding, half a unit of
its last decimal.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import protocol_results as pr

from discograd.experiments.trainer import aggregate

ROW = re.compile(r"^\| `(?P<est>[^`]+)` \| (?P<n>\d+) \| (?P<cols>.+) \|$")
HEAD = re.compile(r"^(?P<label>.+) at step (?P<step>[\d,]+)$")


def read_table(doc: str, name: str) -> tuple[dict[str, int], dict[str, dict[str, Any]]]:
    """``(steps, rows)`` of the protocol's generated table: the step of each metric,
    and per estimator its number of seeds and ``metric -> (mean, se)`` unscaled."""
    begin, end = pr.block(doc, name, "the document")
    lines = doc[begin:end].splitlines()
    head = next((ln for ln in lines if ln.startswith("| estimator | seeds |")), None)
    if head is None:
        raise SystemExit(f"the block of protocol {name!r} has no table")
    by_label = {label: key for key, (label, _) in pr.METRICS.items()}
    keys: list[str] = []
    steps: dict[str, int] = {}
    for cell in head.strip("|").split("|")[2:]:
        m = HEAD.match(cell.strip())
        if m is None or m["label"] not in by_label:
            raise SystemExit(f"unknown column {cell.strip()!r}")
        keys.append(by_label[m["label"]])
        steps[keys[-1]] = int(m["step"].replace(",", ""))
    rows: dict[str, dict[str, Any]] = {}
    for line in lines:
        m = ROW.match(line)
        if m is None:
            continue
        values = {}
        for key, text in zip(keys, m["cols"].split(" | "), strict=True):
            mean, _, se = text.partition(" ± ")  # one seed: no standard error
            scale = pr.shown(key)[0]
            values[key] = (float(mean) / scale, float(se) / scale if se else None)
        rows[m["est"]] = {"n": int(m["n"]), "values": values}
    return steps, rows


def combine(
    steps: dict[str, int], rows: dict[str, dict[str, Any]], cells: pr.Cells
) -> tuple[dict[str, Any], dict[str, int]]:
    """Per estimator, the aggregate over its old and new seeds (``results`` as
    :func:`protocol_results.at_common_step` gives it) and its number of seeds."""
    results: dict[str, Any] = {}
    counts: dict[str, int] = {}
    for est, row in rows.items():
        new = cells.get(est, {})
        if not new:
            mean = {k: v[0] for k, v in row["values"].items()}
            results[est] = {**mean, "se": {k: v[1] for k, v in row["values"].items()}}
            counts[est] = row["n"]
            continue
        # The table's seeds, under labels no new seed has.
        per_seed: dict[int, dict[str, float]]
        if row["n"] == 1:
            per_seed = {-1: {k: m for k, (m, _) in row["values"].items()}}
        elif row["n"] == 2:
            per_seed = {
                -2: {k: m - s for k, (m, s) in row["values"].items()},
                -1: {k: m + s for k, (m, s) in row["values"].items()},
            }
        else:
            raise SystemExit(
                f"`{est}` has {row['n']} seeds in the table: only rows of one or two seeds "
                "can be recovered"
            )
        for seed, series in new.items():
            missing = [k for k, t in steps.items() if t not in series.get(k, {})]
            if missing:
                raise SystemExit(f"`{est}` seed {seed} has no {missing} at the table's step")
            per_seed[seed] = {k: series[k][t] for k, t in steps.items()}
        results[est] = aggregate(per_seed)
        counts[est] = len(per_seed)
    extra = sorted(set(cells) - set(rows))
    if extra:
        raise SystemExit(f"estimators {extra} are not in the table")
    return results, counts


def markdown(steps: dict[str, int], results: dict[str, Any], counts: dict[str, int]) -> str:
    return "\n".join([*pr.table(results, counts, steps), "", *pr.orderings(results, steps)]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("doc", type=Path, help="the file with the generated block")
    parser.add_argument("--name", required=True, help="the protocol of the block")
    parser.add_argument("--cells-csv", type=Path, nargs="+", required=True)
    parser.add_argument("--markdown", type=Path, help="write here (default: print)")
    args = parser.parse_args()
    steps, rows = read_table(args.doc.read_text(), args.name)
    cells: pr.Cells = {}
    for path in args.cells_csv:
        pr.merge(cells, pr.read_csv(path), str(path))
    text = markdown(steps, *combine(steps, rows, cells))
    if args.markdown:
        args.markdown.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
