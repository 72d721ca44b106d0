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
    from discograd.distributions import (  # noqa: F401
        BinaryConcrete,
        Concrete,
        ExpConcrete,
        GaussianRelaxedBernoulli,
        HardConcrete,
        HardKumaraswamy,
        InvertibleGaussian,
        LogisticNormal,
    )

    assert dg.distributions.HardConcrete is HardConcrete
    from discograd.estimators import Estimate, Estimator, Exact

    assert dg.Exact is Exact and dg.Estimate is Estimate and dg.Estimator is Estimator
    assert (ROOT / "src" / "discograd" / "py.typed").exists()


def test_readme_quick_start_runs():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python block"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


# DESIGN's dependency rule, lowest first: a module may import its own level and
# lower ones, never a higher one. data is a leaf beside functional.
LEVELS = [
    ("functional", ["functional.py", "_rng.py", "data"]),
    ("distributions", ["distributions"]),
    ("estimators", ["estimators", "baselines.py", "schedules.py"]),
    ("diagnostics", ["diagnostics.py"]),
    ("models", ["models", "experiments"]),
    ("report", ["report", "cli.py", "__main__.py"]),
]
MODULES = {
    "functional": ["functional", "_rng"],
    "distributions": ["distributions"],
    "estimators": ["estimators", "baselines", "schedules"],
    "diagnostics": ["diagnostics"],
    "models": ["models", "experiments"],
    "report": ["report", "cli"],
}


def _files(entry: str) -> list[Path]:
    path = ROOT / "src" / "discograd" / entry
    return sorted(path.glob("*.py")) if path.is_dir() else [path]


def test_dependency_rule():
    names = [level for level, _ in LEVELS]
    for i, (level, entries) in enumerate(LEVELS):
        higher = [m for h in names[i + 1 :] for m in MODULES[h]]
        for entry in entries:
            for path in _files(entry):
                text = path.read_text()
                for h in higher:
                    assert f"discograd.{h}" not in text and f"discograd import {h}" not in text, (
                        f"{path.relative_to(ROOT)} ({level}) imports {h}"
                    )
    # data is a leaf: it imports nothing else of discograd
    for path in _files("data"):
        text = path.read_text().replace("discograd.data", "")
        assert "discograd." not in text and "from discograd import" not in text, path


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
