"""RunDir: config guard, streamed metrics, resume bookkeeping, atomic files."""

from __future__ import annotations

import json
import os

import pytest
import torch

from discograd.errors import ConfigError
from discograd.experiments import RunDir, progress


def test_config_is_written_and_guarded(tmp_path):
    run = RunDir(tmp_path / "r", {"seed": 1, "steps": 10, "quiet": True}, volatile=["quiet"])
    assert json.loads((tmp_path / "r" / "config.json").read_text())["steps"] == 10
    RunDir(tmp_path / "r", {"seed": 1, "steps": 10, "quiet": False}, volatile=["quiet"])  # ok
    with pytest.raises(ConfigError, match=r"different configuration \(steps: 10 -> 20\)"):
        RunDir(tmp_path / "r", {"seed": 1, "steps": 20, "quiet": True}, volatile=["quiet"])
    assert run.path.is_dir()


def test_unwritable_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot write to output folder"):
        RunDir(blocker / "sub", {})


def test_metrics_stream_resume_and_torn_lines(tmp_path):
    run = RunDir(tmp_path, {"a": 1})
    for step in range(5):
        run.log({"phase": "train", "step": step, "loss": 1.0 / (step + 1), "t": torch.tensor(2.0)})
    run.log({"phase": "other", "step": 9, "x": float("inf")})
    with open(run.metrics_path, "a") as fh:
        fh.write('{"phase": "train", "step": 5, "lo')  # a kill mid-write
    assert [r["step"] for r in run.records("train")] == [0, 1, 2, 3, 4]
    assert run.records("other")[0]["x"] == "inf" and run.records("train")[0]["t"] == 2.0
    run.truncate("train", after_step=2)
    assert [r["step"] for r in run.records("train")] == [0, 1, 2]
    assert len(run.records("other")) == 1
    assert run.metrics_path.read_text().endswith("\n")


def test_phases_and_checkpoints(tmp_path):
    run = RunDir(tmp_path, {"a": 1})
    assert not run.is_done("p") and run.load_checkpoint("p") is None
    run.save_checkpoint("p", {"step": 3, "w": torch.ones(2)})
    ck = run.load_checkpoint("p")
    assert ck["step"] == 3 and torch.equal(ck["w"], torch.ones(2))
    run.finish("p", {"score": 0.5})
    assert run.is_done("p") and run.load_checkpoint("p") is None
    again = RunDir(tmp_path, {"a": 1})  # a fresh process sees the finished phase
    assert again.is_done("p") and again.result("p") == {"score": 0.5}
    again.write_results({"p": again.result("p")})
    assert json.loads((tmp_path / "results.json").read_text()) == {"p": {"score": 0.5}}
    leftovers = [n for n in os.listdir(tmp_path) if n.startswith(".")]
    assert leftovers == [".lock"]


def test_progress_quiet_and_loud():
    with progress(3, "work", quiet=True) as bar:
        bar.update()
        bar.set_postfix(loss=1.0)
    with progress(3, "work", quiet=False) as bar:
        bar.update(3)


def test_the_time_of_a_run_adds_up_over_its_sessions(tmp_path):
    with RunDir(tmp_path, {"a": 1}) as run:
        run.finish("p", {})
        first = json.loads((tmp_path / "state.json").read_text())["elapsed"]
    assert first >= 0
    with RunDir(tmp_path, {"a": 1}) as run:
        assert run.resumed and run.elapsed() >= first  # counts on from the last session
        run.save_checkpoint("q", {"step": 1})  # a checkpoint keeps the time too
        second = json.loads((tmp_path / "state.json").read_text())["elapsed"]
    assert second >= first
