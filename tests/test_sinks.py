"""Logging sinks (CSV, TensorBoard, W&B, MLflow) and meta.json.

The sinks are derived views of metrics.jsonl: the central checks are that a
run interrupted and resumed (once or twice, at various points) leaves the
same CSV file and the same TensorBoard scalars as an uninterrupted one, and
that TensorBoard's own reader reads them back.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import torch

import discograd
from discograd.errors import ConfigError, RunFolderWarning
from discograd.experiments import meta as meta_mod
from discograd.experiments import sinks as sinks_mod
from discograd.experiments.meta import git_info, now, write_meta
from discograd.experiments.runner import RunDir
from discograd.experiments.sinks import (
    SINKS,
    CSVSink,
    Logger,
    Scalars,
    TensorBoardSink,
    emit,
    make_sinks,
    replay,
    scalars_of,
)

SRC = Path(discograd.__file__).resolve().parent.parent


# ------------------------------------------------------------------ helpers
def tb_scalars(out: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Every scalar under ``out/tb``, read with TensorBoard's own reader: run -> tag -> points."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, dict[str, list[tuple[int, float]]]] = {}
    root = out / "tb"
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        acc.Reload()
        found[folder.name] = {
            tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]
        }
    return found


def f32(x: float) -> float:
    """What TensorBoard keeps of a float (simple_value is a float32)."""
    return float(torch.tensor(x, dtype=torch.float32))


def same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


class Killed(Exception):
    """Stands in for kill -9: nothing after it runs, not even the sinks' close."""


def value(phase: str, step: int) -> float:
    return round(math.sin(len(phase) + 0.37 * step), 6) * 10 ** (step % 3)


def fake_run(
    out: Path,
    log: str,
    *,
    kill_at: tuple[str, int] | None = None,
    steps: int = 10,
    every: int = 4,
) -> None:
    """A deterministic two-metric training loop over three phases, with RunDir's resume rules.

    Phases ``b`` and ``c`` log no final record, so a kill after their last
    checkpoint resumes them with no record left to log. ``kill_at=(phase,
    step)`` raises :class:`Killed` before that step (``step == steps``: just
    before the phase finishes), leaving the sinks unclosed; a torn line is
    then added to the CSV and to the TensorBoard files, as a kill mid-write would.
    """
    run = RunDir(out, {"task": "fake", "steps": steps})
    logger = Logger(run, make_sinks(log))
    try:
        for phase in ("a", "b", "c"):
            if run.is_done(phase):
                continue
            state = run.resume(phase)
            start = 0 if state is None else state["step"]
            for step in range(start, steps):
                if kill_at == (phase, step):
                    raise Killed
                logger.log({"phase": phase, "step": step, "loss": value(phase, step)})
                if step % 3 == 0:
                    bad = math.inf if step == 3 else math.nan
                    logger.log({"phase": phase, "step": step, "valid": bad, "note": "x"})
                if (step + 1) % every == 0:
                    run.save_checkpoint(phase, {"step": step + 1})
            if kill_at == (phase, steps):
                raise Killed
            if phase == "a":
                logger.log({"phase": phase, "step": steps, "final": value(phase, -1)})
            run.finish(phase, {"ok": True})
        run.log({"no": "phase"})  # RunDir records without a phase reach no sink
    except Killed:
        with open(out / "metrics.csv", "a") as fh:
            fh.write("b,7,lo")
        for events in (out / "tb").glob("*/events.out.tfevents.*"):
            with open(events, "ab") as fh:
                fh.write(b"\x10\x00\x00")
        run.close()
        raise
    logger.close()
    run.close()


def run_to_end(out: Path, log: str, kills: list[tuple[str, int]]) -> None:
    for kill in kills:
        with pytest.raises(Killed):
            fake_run(out, log, kill_at=kill)
    fake_run(out, log)


# --------------------------------------------------------------- the view
def test_scalars_of_keeps_numbers_and_matches_the_jsonl_spelling() -> None:
    record = {
        "phase": "vae/rloo:n_samples=4",
        "step": 7,
        "loss": 1.5,
        "evals": 3,
        "diverged": True,
        "tau": None,
        "name": "arsm",
        "hist": [1, 2],
        "up": math.inf,
        "t": torch.tensor([2.5]),
        "big": torch.zeros(3),
    }
    item = scalars_of(record)
    assert item == Scalars(
        "vae/rloo:n_samples=4",
        7,
        {"loss": 1.5, "evals": 3, "diverged": 1, "up": math.inf, "t": 2.5},
    )
    # The same record after a round trip through metrics.jsonl gives the same view.
    from discograd.experiments.runner import dumps

    assert scalars_of(json.loads(dumps(record))) == item
    nan = scalars_of(json.loads(dumps({"phase": "p", "v": math.nan})))
    assert nan is not None and nan.step == 0 and math.isnan(nan.values["v"])
    assert scalars_of({"step": 1, "loss": 2.0}) is None
    assert scalars_of({"phase": "p", "step": True, "x": 1}) == Scalars("p", 0, {"x": 1})


def test_make_sinks_parses_names_and_refuses_unknown_ones() -> None:
    assert set(SINKS) == {"csv", "tensorboard", "wandb", "mlflow"}
    kinds = [type(s) for s in make_sinks("csv, tensorboard")]
    assert kinds == [CSVSink, TensorBoardSink]
    assert [type(s) for s in make_sinks(["TensorBoard", "csv,csv"])] == [TensorBoardSink, CSVSink]
    assert make_sinks("") == make_sinks("none") == make_sinks("jsonl") == make_sinks(None) == []
    with pytest.raises(
        ConfigError, match=r"unknown log sink 'tb'.*csv, tensorboard, wandb, mlflow"
    ):
        make_sinks("csv,tb")


@pytest.mark.parametrize("name", ["tensorboard", "wandb", "mlflow"])
def test_a_missing_package_names_its_extra(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = sinks_mod.importlib.util.find_spec
    monkeypatch.setattr(
        sinks_mod.importlib.util,
        "find_spec",
        lambda mod, *a: None if mod == name else real(mod, *a),
    )
    with pytest.raises(ConfigError, match=rf"pip install 'discograd\[{name}\]'"):
        make_sinks(f"csv,{name}")


def test_uninstalled_trackers_are_refused_for_real() -> None:
    import importlib.util

    for name in ("wandb", "mlflow"):
        if importlib.util.find_spec(name) is None:
            with pytest.raises(ConfigError, match=rf"discograd\[{name}\]"):
                make_sinks(name)


def test_importing_discograd_and_the_sinks_does_not_import_tensorboard() -> None:
    code = (
        "import sys, discograd, discograd.experiments.sinks, discograd.experiments.meta\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorboard', 'wandb', 'mlflow', 'tensorflow'))\n"
        "assert not bad, bad\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# -------------------------------------------------------------------- CSV
def read_csv(out: Path) -> list[list[str]]:
    with open(out / "metrics.csv", newline="") as fh:
        return list(csv.reader(fh))


def test_csv_is_one_long_table(tmp_path: Path) -> None:
    sink = CSVSink()
    sink.open(tmp_path, {}, resumed=False)
    replay([sink], [{"phase": "toy/rebar:eta=1.0,tau=0.5", "step": 0, "loss": 0.1, "n": 3}])
    emit([sink], {"phase": "toy/rebar:eta=1.0,tau=0.5", "step": 1, "loss": math.inf})
    emit([sink], {"phase": "variance/toy/arsm", "variance": 1e-300, "snr": math.nan})
    assert read_csv(tmp_path) == [  # read while open: each record is flushed
        ["phase", "step", "key", "value"],
        ["toy/rebar:eta=1.0,tau=0.5", "0", "loss", "0.1"],
        ["toy/rebar:eta=1.0,tau=0.5", "0", "n", "3"],
        ["toy/rebar:eta=1.0,tau=0.5", "1", "loss", "inf"],
        ["variance/toy/arsm", "0", "variance", "1e-300"],
        ["variance/toy/arsm", "0", "snr", "nan"],
    ]
    sink.close()
    sink.close()
    rows = read_csv(tmp_path)[1:]
    assert [float(r[3]) for r in rows][:4] == [0.1, 3.0, math.inf, 1e-300]


def test_csv_rebuild_replaces_the_file_and_drops_stale_temporaries(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_text("phase,step,key,value\nold,1,x,1\nold,2,x,")
    (tmp_path / ".metrics.csv.abcd1234").write_text("left by a killed write")
    sink = CSVSink()
    sink.open(tmp_path, {}, resumed=True)
    assert not (tmp_path / ".metrics.csv.abcd1234").exists()
    sink.rebuild([Scalars("new", 5, {"x": 2.0})])
    sink.scalars("new", 6, {"x": 3.0})
    sink.close()
    assert read_csv(tmp_path) == [
        ["phase", "step", "key", "value"],
        ["new", "5", "x", "2.0"],
        ["new", "6", "x", "3.0"],
    ]


# ------------------------------------------------------------ TensorBoard
def test_tensorboard_event_files_are_read_back_by_tensorboard(tmp_path: Path) -> None:
    sink = TensorBoardSink()
    sink.open(tmp_path, {"a": 1}, resumed=False)
    sink.rebuild([Scalars("vae/rloo:n_samples=4", 0, {"loss": 0.1})])
    for step in (1, 2):
        sink.scalars("vae/rloo:n_samples=4", step, {"loss": 0.1 * step + 1, "evals": 4})
    sink.scalars("vae/arsm", 3, {"loss": -math.inf, "nan": math.nan})
    sink.scalars("vae/arsm", 4, {})  # nothing to write: no event
    sink.scalars("vae/rloo:n_samples=4", 9, {"loss": 7.0})  # a phase that comes back
    sink.close()
    got = tb_scalars(tmp_path)
    assert set(got) == {"vae_rloo_n_samples_4", "vae_arsm"}
    assert got["vae_rloo_n_samples_4"] == {
        "loss": [(0, f32(0.1)), (1, f32(1.1)), (2, f32(1.2)), (9, 7.0)],
        "evals": [(1, 4.0), (2, 4.0)],
    }
    arsm = got["vae_arsm"]
    assert arsm["loss"] == [(3, -math.inf)] and math.isnan(arsm["nan"][0][1])
    assert sink.folder("vae/arsm") == tmp_path / "tb" / "vae_arsm"


def test_tensorboard_rebuild_removes_old_events_but_not_other_files(tmp_path: Path) -> None:
    sink = TensorBoardSink()
    sink.open(tmp_path, {}, resumed=False)
    sink.rebuild([])
    sink.scalars("gone", 1, {"x": 1.0})
    sink.scalars("kept", 1, {"x": 1.0})
    sink.scalars("kept", 2, {"x": 2.0})
    sink.close()
    (tmp_path / "tb" / "kept" / "notes.txt").write_text("mine")
    sink = TensorBoardSink()
    sink.open(tmp_path, {}, resumed=True)
    sink.rebuild([Scalars("kept", 1, {"x": 1.5})])
    sink.scalars("kept", 2, {"x": 2.5})
    sink.close()
    assert tb_scalars(tmp_path) == {"kept": {"x": [(1, 1.5), (2, 2.5)]}}
    assert (tmp_path / "tb" / "kept" / "notes.txt").read_text() == "mine"
    # The rebuilt phase continued in the file the rebuild wrote.
    assert len(list((tmp_path / "tb" / "kept").glob("events.out.tfevents.*"))) == 1


# ------------------------------------------------- resume = uninterrupted
KILLS = [
    pytest.param([("a", 6)], id="mid-first-phase"),
    pytest.param([("b", 0)], id="start-of-second-phase"),
    pytest.param([("b", 4)], id="right-after-a-checkpoint"),
    pytest.param([("b", 9), ("c", 1)], id="twice"),
    pytest.param([("c", 3), ("c", 2)], id="twice-in-one-phase"),
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    fake_run(out, "csv,tensorboard")
    return out


def assert_same_tb(
    got: dict[str, dict[str, list[tuple[int, float]]]],
    want: dict[str, dict[str, list[tuple[int, float]]]],
) -> None:
    assert {r: sorted(tags) for r, tags in got.items()} == {
        r: sorted(tags) for r, tags in want.items()
    }
    for run, tags in want.items():
        for tag, points in tags.items():
            mine = got[run][tag]
            assert [s for s, _ in mine] == [s for s, _ in points], (run, tag)
            assert all(same(a, b) for (_, a), (_, b) in zip(mine, points, strict=True)), (run, tag)


def test_the_uninterrupted_run_writes_what_metrics_jsonl_holds(uninterrupted: Path) -> None:
    records = [json.loads(line) for line in (uninterrupted / "metrics.jsonl").open()]
    rows = read_csv(uninterrupted)[1:]
    expected = [
        [r["phase"], str(r.get("step", 0)), k, str(v)]
        for r in records
        if "phase" in r
        for k, v in r.items()
        if k not in ("phase", "step", "note")
    ]
    assert rows == expected and len(rows) == 3 * 10 + 3 * 4 + 1
    got = tb_scalars(uninterrupted)
    assert set(got) == {"a", "b", "c"}
    assert got["b"]["loss"] == [(s, f32(value("b", s))) for s in range(10)]
    assert got["a"]["final"] == [(10, f32(value("a", -1)))]
    assert [s for s, _ in got["c"]["valid"]] == [0, 3, 6, 9] and got["c"]["valid"][1][1] == math.inf


@pytest.mark.parametrize("kills", KILLS)
def test_a_resumed_run_ends_with_the_same_sinks(
    tmp_path: Path, uninterrupted: Path, kills: list[tuple[str, int]]
) -> None:
    run_to_end(tmp_path, "csv,tensorboard", kills)
    assert (tmp_path / "metrics.jsonl").read_bytes() == (
        uninterrupted / "metrics.jsonl"
    ).read_bytes()
    assert (tmp_path / "metrics.csv").read_bytes() == (uninterrupted / "metrics.csv").read_bytes()
    assert_same_tb(tb_scalars(tmp_path), tb_scalars(uninterrupted))


@pytest.mark.parametrize("phase", ["b", "c"])
def test_a_phase_resumed_with_nothing_left_to_log_keeps_its_records(
    tmp_path: Path, phase: str
) -> None:
    # With every=5, phases b and c checkpoint after their last record; killed
    # before finishing, they resume, log nothing and finish. Their kept
    # records reach the sinks before the next phase's (b) or at close (c).
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    fake_run(whole, "csv,tensorboard", every=5)
    with pytest.raises(Killed):
        fake_run(killed, "csv,tensorboard", every=5, kill_at=(phase, 10))
    fake_run(killed, "csv,tensorboard", every=5)
    assert (killed / "metrics.jsonl").read_bytes() == (whole / "metrics.jsonl").read_bytes()
    assert (killed / "metrics.csv").read_bytes() == (whole / "metrics.csv").read_bytes()
    assert_same_tb(tb_scalars(killed), tb_scalars(whole))


def test_sinks_follow_metrics_jsonl_when_a_damaged_phase_is_recomputed(tmp_path: Path) -> None:
    out = tmp_path / "run"
    fake_run(out, "csv,tensorboard")
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    (out / "metrics.jsonl").write_text("".join(lines[:3] + lines[4:]))  # a record of phase a
    with pytest.warns(RunFolderWarning, match="recomputing the phase"):
        fake_run(out, "csv,tensorboard")
    # Phase a's records now come last in metrics.jsonl, and so in the sinks.
    records = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    assert [r.get("phase") for r in records][-2:] == ["a", None]
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    sinks = make_sinks("csv,tensorboard")
    for sink in sinks:
        sink.open(fresh, {}, resumed=False)
    replay(sinks, records)
    for sink in sinks:
        sink.close()
    assert (out / "metrics.csv").read_bytes() == (fresh / "metrics.csv").read_bytes()
    assert_same_tb(tb_scalars(out), tb_scalars(fresh))


def test_logger_without_sinks_is_run_log(tmp_path: Path) -> None:
    with RunDir(tmp_path, {}) as run:
        logger = Logger(run)
        logger.log({"phase": "p", "step": 1, "x": 1.0})
        logger.close()
        assert run.records() == [{"phase": "p", "step": 1, "x": 1.0}]
    assert not (tmp_path / "metrics.csv").exists() and not (tmp_path / "tb").exists()


class Broken(CSVSink):
    def rebuild(self, records: Any) -> None:
        raise OSError("disk full")


def test_a_sink_that_fails_to_open_leaves_none_open(tmp_path: Path) -> None:
    first = TensorBoardSink()
    with RunDir(tmp_path, {}) as run:
        run.log({"phase": "p", "step": 1, "x": 1.0})
        run.finish("p", {})
        with pytest.raises(OSError, match="disk full"):
            Logger(run, [first, Broken()])
    assert first._file is None  # rebuilt (its last file left open), then closed


# --------------------------------------------------------- W&B and MLflow
def test_mlflow_sink_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    # A local file store (MLflow 3 asks for an opt-in; older versions ignore it).
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "discograd-test")
    out = tmp_path / "run"
    with pytest.raises(Killed):
        fake_run(out, "mlflow", kill_at=("b", 5))
    fake_run(out, "mlflow")
    client = MlflowClient()
    exp = client.get_experiment_by_name("discograd-test")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    assert len(runs) == 2 and runs[1].data.tags.get("resumed") == "true"
    last = runs[1].info.run_id
    assert runs[1].data.params["steps"] == "10" and runs[1].data.params["task"] == "fake"
    history = client.get_metric_history(last, "b/loss")
    assert [(m.step, m.value) for m in history] == [(s, value("b", s)) for s in range(10)]


def test_wandb_sink_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    out.mkdir()
    sink = make_sinks("wandb")[0]
    sink.open(out, {"steps": 3}, resumed=False)
    sink.rebuild([Scalars("vae/arsm", 0, {"loss": 2.0})])
    sink.scalars("vae/arsm", 1, {"loss": 1.0})
    run = sink.run  # type: ignore[attr-defined]
    assert run.summary["vae/arsm/loss"] == 1.0 and run.summary["vae/arsm/step"] == 1
    assert dict(run.config) == {"steps": 3}
    sink.close()
    assert list((out / "wandb").glob("offline-run-*"))


# ---------------------------------------------------------------- meta.json
def test_meta_json_records_the_run_and_its_sessions(tmp_path: Path) -> None:
    t0 = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
    meta = write_meta(tmp_path, device="cpu", argv=["discograd", "vae"], started=t0)
    on_disk = json.loads((tmp_path / "meta.json").read_text())
    assert on_disk == meta
    assert meta["discograd"] == discograd.__version__ and meta["torch"] == torch.__version__
    assert meta["python"] == ".".join(map(str, sys.version_info[:3]))
    assert meta["device"] == "cpu" and meta["threads"] == torch.get_num_threads()
    assert meta["argv"] == ["discograd", "vae"]
    assert meta["started"] == "2025-01-02T03:04:05.678+00:00" and meta["ended"] is None
    assert meta["wall_seconds"] is None and len(meta["sessions"]) == 1
    assert set(meta) >= {"git_commit", "git_dirty", "hostname", "platform", "cuda", "format"}

    meta = write_meta(
        tmp_path, device="cpu", argv=["x"], started=t0, ended=t0 + timedelta(seconds=90)
    )
    assert meta["ended"] == "2025-01-02T03:05:35.678+00:00" and meta["wall_seconds"] == 90.0
    assert len(meta["sessions"]) == 1 and meta["argv"] == ["x"]

    # A resumption killed before its end, then one that finishes.
    t1, t2 = t0 + timedelta(hours=1), t0 + timedelta(hours=2)
    write_meta(tmp_path, device="cpu", argv=["discograd"], started=t1)
    write_meta(tmp_path, device=torch.device("cpu"), started=t2)
    meta = write_meta(tmp_path, device="cpu", started=t2, ended=t2 + timedelta(seconds=10.5))
    assert meta["started"] == "2025-01-02T03:04:05.678+00:00"
    assert [s["ended"] is None for s in meta["sessions"]] == [False, True, False]
    assert meta["wall_seconds"] == 100.5 and meta["argv"] == sys.argv
    assert all(s["pid"] == os.getpid() for s in meta["sessions"])


def test_meta_times_carry_a_time_zone(tmp_path: Path) -> None:
    naive = datetime(2025, 1, 2, 3, 4, 5)
    meta = write_meta(tmp_path, device="cpu", argv=[], started=naive, ended=now())
    assert datetime.fromisoformat(meta["started"]).tzinfo is not None
    assert datetime.fromisoformat(meta["ended"]).tzinfo is not None
    assert meta["wall_seconds"] > 0


def test_damaged_meta_json_is_rewritten_with_a_warning(tmp_path: Path) -> None:
    (tmp_path / "meta.json").write_text('{"sessions": [')
    (tmp_path / ".meta.json.x1y2z3w4").write_text("{")
    with pytest.warns(RunFolderWarning, match="meta.json is damaged"):
        meta = write_meta(tmp_path, device="cpu", argv=[], started=now())
    assert len(meta["sessions"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]


def git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout


def test_git_info_of_a_checkout_an_untracked_copy_and_no_git(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = git_info.__wrapped__  # uncached
    repo = tmp_path / "repo"
    pkg = repo / "src" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("x = 1\n")
    (repo / "README").write_text("r\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "one")
    head = git(repo, "rev-parse", "HEAD").strip()
    assert info(pkg) == {"commit": head, "dirty": False}
    (repo / "README").write_text("changed outside the package\n")
    assert info(pkg) == {"commit": head, "dirty": False}
    (pkg / "new.py").write_text("y = 2\n")
    assert info(pkg) == {"commit": head, "dirty": True}
    # A copy that git does not track (a virtual environment inside a project).
    venv = repo / ".venv" / "pkg"
    venv.mkdir(parents=True)
    (venv / "__init__.py").write_text("x = 1\n")
    (repo / ".gitignore").write_text(".venv/\n")
    assert info(venv) == {"commit": None, "dirty": None}
    assert info(tmp_path / "nowhere") == {"commit": None, "dirty": None}
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no git at all
    assert info(pkg) == {"commit": None, "dirty": None}


def test_git_info_of_this_package_never_fails() -> None:
    info = git_info()
    assert info["commit"] is None or len(info["commit"]) == 40
    assert info["dirty"] in (None, True, False)
    assert meta_mod.git_info() is info  # cached
