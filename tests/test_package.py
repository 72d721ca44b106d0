"""The public surface: names, the README's quick start, the command line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import discograd as dg
from discograd.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_public_names():
    for name in ("sample_gumbel", "gumbel_max", "gumbel_softmax", "straight_through"):
        assert getattr(dg, name) is getattr(dg.functional, name)
    from discograd.distributions import BinaryConcrete, Concrete, ExpConcrete  # noqa: F401
    from discograd.estimators import Estimate, Estimator, Exact

    assert dg.Exact is Exact and dg.Estimate is Estimate and dg.Estimator is Estimator
    assert (ROOT / "src" / "discograd" / "py.typed").exists()


def test_readme_quick_start_runs():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python block"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_dependency_rule():
    # functional <- distributions <- estimators <- diagnostics: nothing lower imports higher.
    order = ["functional", "distributions", "estimators", "diagnostics", "cli"]
    src = ROOT / "src" / "discograd"
    files = {
        "functional": [src / "functional.py"],
        "distributions": list((src / "distributions").glob("*.py")),
        # baselines and schedules sit beside the estimators (same level).
        "estimators": [
            *(src / "estimators").glob("*.py"),
            src / "baselines.py",
            src / "schedules.py",
        ],
        "diagnostics": [src / "diagnostics.py"],
    }
    for level, paths in files.items():
        higher = order[order.index(level) + 1 :]
        for path in paths:
            text = path.read_text()
            for h in higher:
                assert f"discograd.{h}" not in text and f"discograd import {h}" not in text, (
                    f"{path.name} ({level}) imports {h}"
                )


def test_cli_demo(capsys):
    assert main(["demo", "--draws", "5"]) == 0
    out = capsys.readouterr().out
    assert "Exact" in out and "dE[f]/dtheta" in out and "gradient_stats" in out


def test_cli_errors_are_one_line(capsys):
    assert main(["demo", "--draws", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("discograd demo: error:") and "n_draws" in err
    assert "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["no-such-command"])
