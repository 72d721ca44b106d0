"""scripts/protocol_results.py: tables, orderings and splicing of a protocol sweep."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pr() -> ModuleType:
    return _load("protocol_results")


@pytest.fixture(scope="module")
def add_seeds() -> ModuleType:
    return _load("add_seeds_to_table")


def _cell(sweep: Path, name: str, rows: list[dict], finished: bool) -> None:
    cell = sweep / "cells" / name
    cell.mkdir(parents=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (cell / "metrics.jsonl").write_text(text + '{"step": 9')  # a line cut by a kill
    if finished:
        (cell / "results.json").write_text("{}")


def _sweep(tmp_path: Path) -> Path:
    sweep = tmp_path / "sweep"
    # a: variance 1.0 / 1.2 at step 2000; b: 3.0 / 3.4; b's seed 1 also logged step 3000
    # (not common to every seed, so never shown); c's only cell is unfinished.
    for est, seed, v, extra in [
        ("a", 0, 1.0, 0),
        ("a", 1, 1.2, 0),
        ("b", 0, 3.0, 0),
        ("b", 1, 3.4, 1),
    ]:
        rows = [
            {"step": s, "grad_var": v * s / 2000 * 1e-2, "train_set_neg_elbo": 250.0 + v}
            for s in range(1000, 3001 if extra else 2001, 1000)
        ]
        _cell(sweep, f"{est}--seed{seed}", rows, finished=True)
    _cell(sweep, "c--seed0", [{"step": 1000, "grad_var": 0.2e-2}], finished=False)
    cells = [
        {"name": "a--seed0", "status": "done"},
        {"name": "a--seed1", "status": "done"},
        {"name": "b--seed0", "status": "done"},
        {"name": "b--seed1", "status": "done"},
        {"name": "c--seed0", "status": "interrupted"},
        {"name": "c--seed1", "status": "pending"},
    ]
    (sweep / "sweep.json").write_text(json.dumps({"cells": cells}))
    return sweep


def test_means_at_the_common_step_and_ordering_in_standard_errors(pr: ModuleType, tmp_path):
    sweep = _sweep(tmp_path)
    cells = pr.read_cells(sweep, finished=True)
    assert sorted(cells) == ["a", "b"]
    results, steps = pr.at_common_step(cells)
    assert steps["grad_var"] == 2000
    assert results["a"]["grad_var"] == pytest.approx(1.1e-2)
    assert results["b"]["grad_var"] == pytest.approx(3.2e-2)
    line = pr.ordering(results, "grad_var")
    gap = (3.2 - 1.1) / math.hypot(0.1, 0.2)  # s.e. of a two-seed mean: |x1 - x2| / 2
    assert line.startswith("Order by encoder gradient variance: `a` 1.100 <")
    assert f"({gap:.1f} s.e.) `b` 3.200" in line
    text = pr.markdown("toy", cells, None)
    assert "| `a` | 2 |" in text and "1.100 ± 0.100" in text and "251.10 ± 0.10" in text


def test_one_seed_gives_an_order_not_a_ranking(pr: ModuleType, tmp_path):
    cells = pr.read_cells(_sweep(tmp_path))
    one = {e: {0: seeds[0]} for e, seeds in cells.items()}
    results, _ = pr.at_common_step(one)
    line = pr.ordering(results, "grad_var")
    assert "s.e." not in line and "an order, not a ranking" in line
    assert line.index("`c`") < line.index("`a`") < line.index("`b`")


def test_status_names_the_unfinished_cells_and_their_steps(pr: ModuleType, tmp_path):
    status = pr.cell_status(_sweep(tmp_path))
    assert status.startswith("**Not finished**: 4 of 6 cells")
    assert "`c--seed0` at step 1,000" in status and "`c--seed1` not started" in status


def test_splice_keeps_the_text_around_the_markers(pr: ModuleType, tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text(
        "intro\n<!-- begin generated: protocol toy -->\nold\n"
        "<!-- end generated: protocol toy -->\nhand-written\n"
    )
    pr.splice(doc, "toy", "new table\n")
    assert doc.read_text() == (
        "intro\n<!-- begin generated: protocol toy -->\nnew table\n"
        "<!-- end generated: protocol toy -->\nhand-written\n"
    )
    with pytest.raises(SystemExit, match="no '<!-- begin generated: protocol other"):
        pr.splice(doc, "other", "x")


def test_export_reads_back_the_same_cells_and_tables(pr: ModuleType, tmp_path):
    cells = pr.read_cells(_sweep(tmp_path))
    path = tmp_path / "data" / "toy.csv"
    pr.write_csv(cells, path)
    again = pr.read_csv(path)
    assert again == cells
    assert pr.markdown("toy", again, None) == pr.markdown("toy", cells, None)
    # A cell read twice (a table and the sweep it came from) is refused, not replaced.
    merged: dict = {}
    pr.merge(merged, cells, "the sweep")
    with pytest.raises(SystemExit, match=r"cell a--seed0 of toy\.csv is already read"):
        pr.merge(merged, again, "toy.csv")
    path.write_text("estimator,seed,step,metric,value\na,0,1000,elbo,1.0\n")
    with pytest.raises(SystemExit, match="unknown metric 'elbo'"):
        pr.read_csv(path)


def test_a_third_seed_added_to_a_two_seed_table_equals_the_three_seed_table(
    pr: ModuleType, add_seeds: ModuleType, tmp_path
):
    # Three seeds of "a" and "b" with values that the table's decimals show exactly.
    sweep = tmp_path / "sweep"
    values = {"a": [1.01, 1.23, 0.98], "b": [3.05, 3.41, 2.9]}
    for est, seeds in values.items():
        for seed, v in enumerate(seeds):
            rows = [
                {"step": s, "grad_var": v * 1e-2, "train_set_neg_elbo": 250.0 + v + s / 1e3}
                for s in (1000, 2000)
            ]
            _cell(sweep, f"{est}--seed{seed}", rows, finished=True)
    cells = pr.read_cells(sweep)
    two = {e: {s: v for s, v in seeds.items() if s < 2} for e, seeds in cells.items()}
    third = {"a": {2: cells["a"][2]}}
    doc = tmp_path / "results.md"
    doc.write_text(
        "<!-- begin generated: protocol toy -->\n"
        + pr.markdown("toy", two, None)
        + "<!-- end generated: protocol toy -->\n"
    )
    steps, rows = add_seeds.read_table(doc.read_text(), "toy")
    assert steps == {"train_set_neg_elbo": 2000, "grad_var": 2000}
    assert rows["a"]["n"] == 2
    results, counts = add_seeds.combine(steps, rows, third)
    assert counts == {"a": 3, "b": 2}
    want, _ = pr.at_common_step({"a": cells["a"], "b": two["b"]})
    for key in steps:
        for est in ("a", "b"):
            assert results[est][key] == pytest.approx(want[est][key], rel=1e-12)
            assert results[est]["se"][key] == pytest.approx(want[est]["se"][key], rel=1e-9)
    text = add_seeds.markdown(steps, results, counts)
    assert "| `a` | 3 |" in text and "| `b` | 2 |" in text
    # A one-seed row is its seed's value.
    one = {e: {0: seeds[0]} for e, seeds in cells.items()}
    doc.write_text(
        "<!-- begin generated: protocol toy -->\n"
        + pr.markdown("toy", one, None)
        + "<!-- end generated: protocol toy -->\n"
    )
    steps, rows1 = add_seeds.read_table(doc.read_text(), "toy")
    results, counts = add_seeds.combine(steps, rows1, {"b": {1: cells["b"][1]}})
    assert counts == {"a": 1, "b": 2}
    assert results["b"]["grad_var"] == pytest.approx(want["b"]["grad_var"], rel=1e-12)
    assert results["b"]["se"]["grad_var"] == pytest.approx(want["b"]["se"]["grad_var"])
    # A row whose seeds cannot be recovered refuses new seeds.
    rows["b"]["n"] = 3
    with pytest.raises(SystemExit, match="`b` has 3 seeds in the table"):
        add_seeds.combine(steps, rows, {"b": {2: cells["b"][2]}})
