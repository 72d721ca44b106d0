"""scripts/protocol_results.py: tables, orderings and splicing of a protocol sweep."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pr() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "protocol_results", ROOT / "scripts" / "protocol_results.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
