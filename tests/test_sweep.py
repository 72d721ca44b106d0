"""``discograd sweep`` (issue 12, item 5): cells as run folders, a pool and Ray, resume, tables.

One small toy sweep (2 step sizes × 2 estimators × 2 seeds = 8 cells) is run
once without interruption (``straight``); every interrupted, resumed, extended
or Ray-run sweep must end with the same numbers in every cell (timings aside).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import discograd
import discograd.cli as cli
from discograd.errors import ConfigError
from discograd.experiments import sweep as sw
from discograd.experiments.toy import ToyTask
from model_helpers import without_timing

SWEEP = """\
task = "toy"
seeds = 2
estimators = ["rloo:n_samples=3", "reinforce_ema"]

[base]
C = 5
R = 1
steps = 200
eval_every = 10
var_every = 100
var_draws = 5
checkpoint_every = 10

[grid]
lr = [1.0, 0.5]
"""

NAMES = [
    "lr=1.0--rloo_n_samples=3--seed0",
    "lr=1.0--reinforce_ema--seed0",
    "lr=0.5--rloo_n_samples=3--seed0",
    "lr=0.5--reinforce_ema--seed0",
    "lr=1.0--rloo_n_samples=3--seed1",
    "lr=1.0--reinforce_ema--seed1",
    "lr=0.5--rloo_n_samples=3--seed1",
    "lr=0.5--reinforce_ema--seed1",
]


def _env() -> dict[str, str]:
    """The environment of a child process that imports this very discograd."""
    src = str(Path(discograd.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sweep") / "sweep.toml"
    path.write_text(SWEEP)
    return path


def run(*argv: str) -> int:
    return cli.main(["sweep", *argv])


def cell_records(out: Path) -> dict[str, list[dict]]:
    """Every cell's records, without wall times."""
    return {
        cell.name: [
            without_timing(json.loads(line))
            for line in (cell / "metrics.jsonl").read_text().splitlines()
        ]
        for cell in sorted((out / "cells").iterdir())
        if cell.is_dir()
    }


def cell_results(out: Path) -> dict[str, dict]:
    return {
        cell.name: without_timing(json.loads((cell / "state.json").read_text())["done"])
        for cell in sorted((out / "cells").iterdir())
        if cell.is_dir()
    }


def statuses(out: Path) -> dict[str, str]:
    return {c["name"]: c["status"] for c in json.loads((out / "sweep.json").read_text())["cells"]}


def assert_same_sweep(out: Path, straight: Path) -> None:
    """Bit-identical numbers in every cell and in the aggregate (wall times aside)."""
    assert cell_records(out) == cell_records(straight)
    assert cell_results(out) == cell_results(straight)
    a, b = (without_timing(json.loads((p / "results.json").read_text())) for p in (out, straight))
    assert a == b
    assert set(statuses(out).values()) == {"done"}


def wait_until_free(out: Path, timeout: float = 30.0) -> None:
    """Until no process holds a cell's lock (the workers of a killed sweep are gone)."""
    deadline = time.monotonic() + timeout
    for lock in out.glob("cells/*/.lock"):
        fd = os.open(lock, os.O_RDWR)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    assert time.monotonic() < deadline, f"{lock} is still held"
                    time.sleep(0.05)
        finally:
            os.close(fd)


def start_sweep(sweep_file: Path, out: Path) -> subprocess.Popen:
    """The sweep on two workers in a process of its own; its stderr goes to ``<out>.log``
    (a file, not a pipe: a worker that outlived the sweep would hold a pipe open)."""
    argv = [sys.executable, "-m", "discograd", "sweep", str(sweep_file), "--jobs", "2",
            "--quiet", "--out", str(out)]  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".log"), "w") as log:
        return subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL, stderr=log)


def log_of(out: Path) -> str:
    return out.with_suffix(".log").read_text()


def wait_mid_way(proc: subprocess.Popen, out: Path) -> str:
    """Until a cell is done and another has a checkpoint but is far from its end (step < 100
    of 200): an interruption now leaves finished cells and one to resume. Returns that cell."""
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, log_of(out)
        assert time.monotonic() < deadline, "the sweep did not get mid-way"
        done = list(out.glob("cells/*/results.json"))
        for ckpt in out.glob("cells/*/ckpt-*.pt"):
            cell = ckpt.parent
            lines = (cell / "metrics.jsonl").read_text().splitlines()
            last = json.loads(lines[-1]) if lines and lines[-1].endswith("}") else {}
            if done and not (cell / "results.json").exists() and last.get("step", 200) < 100:
                return cell.name
        time.sleep(0.01)


# ----------------------------------------------------------- the sweep itself
@pytest.fixture(scope="module")
def straight(sweep_file, tmp_path_factory) -> Path:
    """The sweep on a pool of two processes, uninterrupted."""
    out = tmp_path_factory.mktemp("straight") / "sweep"
    assert run(str(sweep_file), "--jobs", "2", "--quiet", "--out", str(out)) == 0
    return out


def test_cells_have_stable_readable_names_and_one_estimator_and_seed_each(sweep_file):
    cells = sw.expand(sw.load_sweep(sweep_file))
    assert [c.name for c in cells] == NAMES  # seeds outermost, then the grid, then estimators
    cell = cells[1]
    assert cell.point == (("lr", 1.0),) and cell.estimator == "reinforce_ema" and cell.seed == 0
    assert cell.config["estimators"] == ["reinforce_ema"] and cell.config["seeds"] == [0]
    assert cell.config["steps"] == 200 and cell.config["lr"] == 1.0
    assert cell.phases == ("toy/reinforce_ema/seed0",)
    # The same sweep from flags alone; `1` and `1.0` are one value of a float setting.
    flags = sw.load_sweep(
        None,
        task="toy",
        grid=["lr=1,0.5"],
        estimators=["rloo:n_samples=3", "reinforce_ema"],
        seeds=[2],
        sets=["C=5", "R=1", "steps=200", "eval_every=10", "var_every=100", "var_draws=5",
              "checkpoint_every=10"],
    )  # fmt: skip
    assert [(c.name, c.config) for c in sw.expand(flags)] == [(c.name, c.config) for c in cells]
    # --seed K is seed K alone (--seeds K is K seeds): the cells of one more seed.
    third = sw.expand(sw.load_sweep(sweep_file, seed=2))
    assert [c.name for c in third] == [n.replace("--seed0", "--seed2") for n in NAMES[:4]]
    assert all(c.seed == 2 and c.config["seeds"] == [2] for c in third)
    with pytest.raises(ConfigError, match="give --seed or --seeds, not both"):
        sw.load_sweep(sweep_file, seeds=[2], seed=2)
    # Names sort the grid's keys: writing them in another order renames nothing.
    two = sw.expand(sw.load_sweep(None, task="toy", grid=["R=2", "C=4"], estimators=["arsm"]))
    assert [c.name for c in two] == ["C=4,R=2--arsm--seed0"]
    assert two[0].label == "R=2, C=4"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('task = "toy"\n[grid]\nsteps = [10, 0]\n', "cell steps=0, .*steps must be"),
        ('task = "toy"\n[grid]\nstep = [10]\n', "unknown setting 'step'"),
        ('task = "toy"\n[grid]\nseeds = [[0], [1]]\n', "seeds has its own place"),
        ('task = "toy"\n[base]\nlr = 1.0\n[grid]\nlr = [1.0, 0.5]\n', "lr is both set"),
        ('task = "toy"\n[grid]\nlr = [1, 1.0]\n', "lr=1.0 appears twice"),
        ('task = "toy"\nestimators = ["nope"]\n', "unknown estimator"),
        ('task = "toy"\ngrids = {}\n', "unknown key 'grids'"),
        ('task = "bench"\n', "unknown task 'bench'"),
        ('task = "toy"\n[grid]\nlr = 1.0\n', "non-empty list of values"),
    ],
)
def test_a_bad_sweep_is_one_line_and_nothing_is_written(tmp_path, capsys, text, message):
    import re

    file = tmp_path / "bad.toml"
    file.write_text(text)
    out = tmp_path / "out"
    assert run(str(file), "--out", str(out)) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith("discograd sweep: error: ") and "\n" not in err, err
    assert re.search(message, err), err
    assert not out.exists()


def test_the_pool_sweep_writes_cells_a_table_and_a_report(straight, tmp_path, monkeypatch):
    assert statuses(straight) == dict.fromkeys(NAMES, "done")
    # Each cell is an ordinary run folder, with the numbers of the same run made directly.
    cell = straight / "cells" / "lr=0.5--reinforce_ema--seed1"
    assert json.loads((cell / "config.json").read_text())["command"] == "toy"
    assert (cell / "meta.json").exists() and (cell / "models").is_dir()
    direct = tmp_path / "direct"
    monkeypatch.setattr("discograd.report.markdown._plots_available", lambda: False)  # not here
    argv = ["toy", "--config", str(cell / "config.json"), "--out", str(direct), "--quiet"]
    assert cli.main(argv) == 0
    assert cell_records(straight)[cell.name] == [
        without_timing(json.loads(line))
        for line in (direct / "metrics.jsonl").read_text().splitlines()
    ]
    # The aggregate: per grid point and estimator, the mean ± s.e. over the two seeds.
    res = json.loads((straight / "results.json").read_text())
    assert res["cells"] == {"done": 8} and res["seeds"] == [0, 1]
    point = next(p for p in res["points"] if p["grid"] == {"lr": 0.5})
    r = point["results"]["reinforce_ema"]
    values = [cell_results(straight)[f"lr=0.5--reinforce_ema--seed{s}"] for s in (0, 1)]
    p_last = [v[f"toy/reinforce_ema/seed{s}"]["p_last"] for s, v in enumerate(values)]
    assert r["p_last"] == pytest.approx(sum(p_last) / 2)
    assert r["se"]["p_last"] == pytest.approx(abs(p_last[0] - p_last[1]) / 2)
    assert r["n"]["p_last"] == 2 and r["seeds"] == [0, 1]
    rows = (straight / "results.csv").read_text().splitlines()
    assert rows[0] == "lr,estimator,metric,mean,se,n,seeds"
    assert f"0.5,reinforce_ema,p_last,{r['p_last']!r},{r['se']['p_last']!r},2,2" in rows
    report = (straight / "report.md").read_text()
    assert "## lr=1.0" in report and "## lr=0.5" in report and "### p_last" in report
    assert "| `reinforce_ema` |" in report and " ± " in report
    # Every ranking sentence is guarded by the standard error; none compares timings.
    sentences = [line for line in report.splitlines() if line.startswith("* ")]
    assert sentences and all(
        "more than its standard error" in s or "not distinguishable at 2 seeds" in s
        for s in sentences
    )
    assert not any("seconds" in s for s in sentences)


def test_a_second_run_skips_every_finished_cell(straight, sweep_file, tmp_path, capsys):
    out = tmp_path / "again"
    shutil.copytree(straight, out)
    before = {p: p.read_bytes() for p in out.glob("cells/*/*") if p.is_file()}
    assert run(str(sweep_file), "--jobs", "2", "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert "8 cells (toy: 2 grid points × 2 estimators × 2 seeds)" in printed
    assert "8 done, 0 to resume, 0 new" in printed
    assert "p_last" in printed and " ± " in printed  # the table, printed again
    after = {p: p.read_bytes() for p in out.glob("cells/*/*") if p.is_file()}
    assert after == before  # no cell was opened


@pytest.fixture(scope="module")
def killed(sweep_file, tmp_path_factory) -> Path:
    """The sweep (two worker processes) killed with SIGKILL mid-way: cells done, one part-way."""
    out = tmp_path_factory.mktemp("killed") / "sweep"
    proc = start_sweep(sweep_file, out)
    try:
        cell = wait_mid_way(proc, out)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    wait_until_free(out)
    # Its workers died with it: the cell that was half-way did not go on to its end.
    assert not (out / "cells" / cell / "results.json").exists()
    assert list((out / "cells" / cell).glob("ckpt-*.pt"))
    return out


def found(out: Path, sweep_file: Path) -> dict[str, str]:
    """What each cell's folder says: done, started or new."""
    cells = sw.expand(sw.load_sweep(sweep_file))
    return {c.name: sw.cell_status(out / "cells" / c.name, c) for c in cells}


def test_kill_dash_9_mid_sweep_then_the_rerun_resumes_to_the_same_numbers(
    straight, killed, sweep_file, tmp_path, capsys
):
    out = tmp_path / "killed"
    shutil.copytree(killed, out)
    state = found(out, sweep_file)
    assert "done" in state.values() and "started" in state.values(), state
    assert set(statuses(out)) == set(NAMES)  # sweep.json was written whole before the kill

    # --report on the partial sweep: the finished cells' numbers, n seeds behind each mean.
    assert run(str(sweep_file), "--report", "--out", str(out)) == 0
    partial = json.loads((out / "results.json").read_text())
    assert partial["cells"]["done"] == sum(s == "done" for s in state.values())
    assert "sweep results (mean ± s.e. over seeds)" in capsys.readouterr().out

    # Resumed in this process (--jobs 1; the pool's cells run the same function).
    assert run(str(sweep_file), "--quiet", "--out", str(out)) == 0
    printed = capsys.readouterr().out
    resume = [name for name, s in state.items() if s == "started"]
    assert f"{len(resume)} to resume" in printed
    assert f"resumed {len(resume)} interrupted cell" in printed
    assert_same_sweep(out, straight)
    for name in resume:  # the same folder, continued: the killed session and this one
        sessions = json.loads((out / "cells" / name / "meta.json").read_text())["sessions"]
        assert [s["ended"] is None for s in sessions] == [True, False]


def test_ctrl_c_checkpoints_running_cells_starts_no_new_one_and_exits_130(
    straight, sweep_file, tmp_path, capsys
):
    out = tmp_path / "interrupted"
    proc = start_sweep(sweep_file, out)
    try:
        cell = wait_mid_way(proc, out)
        proc.send_signal(signal.SIGINT)  # to the sweep's process only, as `kill -INT` would
        proc.wait(timeout=60)
    finally:
        proc.kill()
    stderr = log_of(out)
    assert proc.returncode == cli.EXIT_INTERRUPTED, stderr
    assert "interrupted; run the same command again to resume" in stderr
    states = statuses(out)
    assert states[cell] == "interrupted"
    assert list((out / "cells" / cell).glob("ckpt-*.pt"))  # saved on the way out
    assert "pending" in states.values()  # cells not started stay so
    # Resumed in this process (--jobs 1): the same numbers.
    assert run(str(sweep_file), "--quiet", "--out", str(out)) == 0
    assert_same_sweep(out, straight)


def test_ray_resumes_a_killed_sweep_to_the_same_numbers(
    straight, killed, sweep_file, tmp_path, monkeypatch, capsys
):
    pytest.importorskip("ray")
    monkeypatch.setenv("PYTHONPATH", _env()["PYTHONPATH"])  # Ray's workers import this code
    out = tmp_path / "ray"
    shutil.copytree(killed, out)
    rc = run(str(sweep_file), "--ray", "--jobs", "2", "--quiet", "--out", str(out))
    assert rc == 0, capsys.readouterr().err
    assert "on a local Ray instance" in capsys.readouterr().out
    assert_same_sweep(out, straight)


def test_without_ray_the_error_names_the_extra(sweep_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    assert run(str(sweep_file), "--ray", "--out", str(tmp_path / "o")) == cli.EXIT_USAGE
    assert "pip install 'discograd[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------- failures, changes
TINY = """\
task = "toy"
seeds = [0]
estimators = ["exact", "reinforce"]
[base]
C = 3
R = 1
steps = 6
eval_every = 3
var_every = 3
var_draws = 2
checkpoint_every = 3
[grid]
lr = [1.0]
"""


def test_a_failing_cell_is_recorded_with_its_traceback_and_the_others_run(
    tmp_path, monkeypatch, capsys
):
    file = tmp_path / "tiny.toml"
    file.write_text(TINY)
    out = tmp_path / "out"
    step = ToyTask.step

    def broken(self, state, i, ctx):
        if ctx.unit.key == "exact" and i == 4:
            raise RuntimeError("a bug in a cell")
        return step(self, state, i, ctx)

    monkeypatch.setattr(ToyTask, "step", broken)
    assert run(str(file), "--quiet", "--out", str(out)) == sw.EXIT_FAILED
    captured = capsys.readouterr()
    bad, good = "lr=1.0--exact--seed0", "lr=1.0--reinforce--seed0"
    assert statuses(out) == {bad: "failed", good: "done"}
    assert "2 cells: 1 done, 1 failed" in captured.out
    assert f"1 cell failed:\n  {bad}: RuntimeError: a bug in a cell" in captured.err
    entry = next(
        c for c in json.loads((out / "sweep.json").read_text())["cells"] if c["name"] == bad
    )
    assert entry["error"].startswith("RuntimeError: a bug in a cell (traceback: ")
    assert "raise RuntimeError" in (out / "cells" / bad / "error.txt").read_text()
    # Fixed, the sweep is re-run: the failed cell resumes from its checkpoint (step 3).
    monkeypatch.setattr(ToyTask, "step", step)
    assert run(str(file), "--quiet", "--out", str(out)) == 0
    assert "1 done, 1 to resume, 0 new" in capsys.readouterr().out
    assert statuses(out) == {bad: "done", good: "done"}
    assert not (out / "cells" / bad / "error.txt").exists()


def test_a_changed_sweep_adds_new_cells_and_refuses_changed_ones(tmp_path, capsys):
    file = tmp_path / "tiny.toml"
    file.write_text(TINY)
    out = tmp_path / "out"
    assert run(str(file), "--quiet", "--out", str(out)) == 0
    first = cell_records(out)
    capsys.readouterr()
    # More values and seeds: only the new cells run.
    assert run(str(file), "--grid", "lr=1.0,0.5", "--seeds", "0", "1", "--quiet",
               "--out", str(out)) == 0  # fmt: skip
    assert "8 cells" in capsys.readouterr().out and len(statuses(out)) == 8
    assert {k: v for k, v in cell_records(out).items() if k in first} == first
    # A setting of every cell changed: refused before anything runs, naming the cells.
    files = [p for p in out.rglob("*") if p.is_file() and p.name != ".lock"]
    before = {p: p.stat().st_mtime_ns for p in files}
    assert run(str(file), "--set", "steps=7", "--out", str(out)) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "2 cells in" in err and "hold runs of another configuration" in err, err
    assert "lr=1.0--exact--seed0 (steps: 6 -> 7)" in err
    assert {p: p.stat().st_mtime_ns for p in files} == before


def test_one_sweep_per_folder_and_never_in_a_run_or_a_users_folder(tmp_path, capsys):
    file = tmp_path / "tiny.toml"
    file.write_text(TINY)
    out = tmp_path / "out"
    out.mkdir()
    (out / "sweep.json").write_text('{"task": "toy", "cells": []}')
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"4242\n")
        assert run(str(file), "--out", str(out)) == cli.EXIT_USAGE
        err = capsys.readouterr().err
        assert "in use by another process (pid 4242)" in err and str(out) in err
    finally:
        os.close(fd)
    assert not (out / "cells").exists()

    toy = tmp_path / "toy-run"
    assert cli.main(["toy", "--C", "3", "--steps", "2", "--estimators", "exact", "--quiet",
                     "--out", str(toy)]) == 0  # fmt: skip
    assert run(str(file), "--out", str(toy)) == cli.EXIT_USAGE
    assert "holds a toy run, not a sweep" in capsys.readouterr().err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.json").write_text("{}")
    assert run(str(file), "--out", str(mine)) == cli.EXIT_USAGE
    assert "holds no sweep" in capsys.readouterr().err
    assert os.listdir(mine) == ["results.json"]


def test_dry_run_lists_the_cells_and_writes_nothing(tmp_path, capsys):
    file = tmp_path / "tiny.toml"
    file.write_text(TINY)
    out = tmp_path / "out"
    assert run(str(file), "--dry-run", "--jobs", "2", "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert "2 cells (toy: 1 grid point × 2 estimators × 1 seed)" in printed
    assert "lr=1.0--exact--seed0      new" in printed
    assert not out.exists()


def test_sweep_options_are_checked(tmp_path, capsys):
    file = tmp_path / "tiny.toml"
    file.write_text(TINY)
    for flags, message in [
        (["--jobs", "0"], "--jobs must be >= 1"),
        (["--threads-per-job", "0"], "--threads-per-job must be >= 1"),
        (["--log", "nope"], "unknown log sink 'nope'"),
    ]:
        assert run(str(file), *flags, "--out", str(tmp_path / "o")) == cli.EXIT_USAGE
        assert message in capsys.readouterr().err
    with pytest.raises(ConfigError, match="give a sweep file"):
        sw.command(cli.build_parser().parse_args(["sweep"]))


def test_the_report_compares_estimators_on_one_problem_at_a_time():
    from discograd.experiments.trainer import aggregate
    from discograd.report.sweep import render

    def unit(values: list[float]) -> dict:
        return aggregate({s: {"variance": v, "seconds_per_step": v} for s, v in enumerate(values)})

    data = {
        "task": "variance",
        "metrics": ["variance", "seconds_per_step", "snr"],
        "cells": {"done": 6},
        "points": [
            {
                "grid": {},
                "label": "(no grid)",
                "results": {
                    "toy/a": unit([1.0, 1.1, 0.9]),
                    "toy/b": unit([5.0, 5.1, 4.9]),
                    "bernoulli/a": unit([0.001, 0.002, 0.0015]),
                },
            }
        ],
    }
    text, printed = render(data, "discograd sweep x.toml", "1 job at a time")
    sentences = [line for line in text.splitlines() if line.startswith("* ")]
    # toy/a against toy/b only: the Bernoulli problem's much lower variance is no rival.
    assert len(sentences) == 1 and "`toy/a` had the lowest variance" in sentences[0]
    assert "against 5 ± 0.0577 for `toy/b`" in sentences[0]
    assert "| `bernoulli/a` | 0.0015 ± 2.89e-04 | 0.0015 ± 2.89e-04 | 3 |" in text
    assert printed[-1] == "no result has snr"  # a misspelt or absent metric is said


GATES_SWEEP = """\
task = "gates"
seeds = 2
families = ["hard_concrete", "straight_through"]
[base]
steps = 4
batch_size = 20
eval_every = 2
log_every = 2
checkpoint_every = 2
[grid]
lambdas = [[0.001], [0.01]]
"""

TOPK_SWEEP = """\
task = "topk"
seeds = 1
methods = ["relaxed_subset", "simple"]
[base]
steps = 4
batch_size = 20
masks = 4
eval_every = 2
log_every = 2
checkpoint_every = 2
[grid]
ks = [[3], [3, 8]]
"""


def test_gates_and_topk_sweep_one_cell_per_family_or_method(tmp_path, capsys):
    gates, topk = tmp_path / "gates.toml", tmp_path / "topk.toml"
    gates.write_text(GATES_SWEEP)
    topk.write_text(TOPK_SWEEP)
    assert run(str(gates), "--jobs", "1", "--out", str(tmp_path / "g"), "--quiet") == 0
    names = set(statuses(tmp_path / "g"))
    assert names == {
        f"lambdas={lam}--{fam}--seed{s}"
        for lam in (0.001, 0.01)
        for fam in ("hard_concrete", "straight_through")
        for s in (0, 1)
    }
    res = json.loads((tmp_path / "g" / "results.json").read_text())
    assert res["metrics"] == ["test_accuracy", "fraction_open"]
    first = res["points"][0]["results"]
    assert set(first) == {"hard_concrete@0.001", "straight_through@0.001"}
    assert first["hard_concrete@0.001"]["n"]["test_accuracy"] == 2
    capsys.readouterr()
    assert run(str(gates), "--jobs", "1", "--out", str(tmp_path / "g"), "--quiet") == 0
    assert "8 done, 0 to resume, 0 new" in capsys.readouterr().out

    assert run(str(topk), "--jobs", "1", "--out", str(tmp_path / "t"), "--quiet") == 0
    res = json.loads((tmp_path / "t" / "results.json").read_text())
    # the columns follow each cell's ks: the union over the grid, in order
    assert res["metrics"] == ["test_accuracy_k3", "test_accuracy_k8"]
    assert len(statuses(tmp_path / "t")) == 4
    assert set(res["points"][1]["results"]) == {"relaxed_subset", "simple"}
    assert "test_accuracy_k8" in capsys.readouterr().out


def test_a_sweep_file_names_one_axis(tmp_path, capsys):
    path = tmp_path / "both.toml"
    path.write_text('task = "gates"\nfamilies = ["gaussian"]\nmethods = ["simple"]\n')
    assert run(str(path), "--out", str(tmp_path / "x"), "--quiet") == 2
    assert "give one of estimators, methods, families" in capsys.readouterr().err
