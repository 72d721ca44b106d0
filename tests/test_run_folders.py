"""Run folders: nothing lost, nothing corrupted (issue 11, items 14-17).

One process at a time (a lock that a crash cannot leave behind), records
verified against the state file and the checkpoints, damaged files named in
one line with what to do, leftovers of killed writes removed, and the device
free to change between a run and its resumption.
"""

from __future__ import annotations

import dataclasses
import fcntl
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import discograd
import discograd.cli as cli
from discograd.experiments import RunDir, Trainer
from model_helpers import tiny_data, without_timing

TOY = [
    "toy", "--C", "5", "--R", "1", "--steps", "40", "--eval-every", "5", "--var-every", "20",
    "--var-draws", "5", "--checkpoint-every", "10", "--quiet",
    "--estimators", "exact", "rloo:n_samples=3", "reinforce_ema",
]  # fmt: skip


def run_cli(*argv: str) -> int:
    return cli.main(list(argv))


def records(out: Path) -> dict[str, list[dict]]:
    """The records of each phase in ``out``, in order, without wall times (they vary).

    Grouped by phase: a recomputed phase logs its records after the others'.
    """
    by_phase: dict[str, list[dict]] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        rec = without_timing(json.loads(line))
        by_phase.setdefault(rec["phase"], []).append(rec)
    return by_phase


def results(out: Path) -> dict:
    return without_timing(json.loads((out / "results.json").read_text())["toy"])


@pytest.fixture(autouse=True, scope="module")
def no_plots():
    """Plots are not what these tests are about, and drawing them is most of a toy run's time."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("discograd.report.markdown._plots_available", lambda: False)
        yield


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The toy run without interruption: what every repaired run must end with."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert run_cli(*TOY, "--out", str(out)) == 0
    return out


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """The toy run stopped at its 6th checkpoint: exact finished, rloo part-way, checkpointed."""
    out = tmp_path_factory.mktemp("interrupted") / "run"
    calls = {"n": 0}
    original = RunDir.save_checkpoint

    def flaky(self, phase, state, *args):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return original(self, phase, state, *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RunDir, "save_checkpoint", flaky)
        assert run_cli(*TOY, "--out", str(out)) == cli.EXIT_INTERRUPTED
    assert list(json.loads((out / "state.json").read_text())["done"]) == ["toy/exact/seed0"]
    assert (out / CKPT).exists()
    return out


def copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------- 14: one process at a time
def _env() -> dict[str, str]:
    """The environment of a child process that imports this very discograd."""
    src = str(Path(discograd.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_a_second_process_on_the_same_out_is_refused_and_a_killed_holder_frees_it(tmp_path):
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "discograd", *TOY[:-4], "--steps", "1000000",
            "--eval-every", "1000", "--var-every", "1000000", "--checkpoint-every", "1000000",
            "--estimators", "exact", "--threads", "1", "--out", str(out)]  # fmt: skip
    holder = subprocess.Popen(argv, env=_env(), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (out / "metrics.jsonl").exists():  # the holder is running
            assert holder.poll() is None, holder.stderr.read() if holder.stderr else ""
            assert time.monotonic() < deadline, "the first run did not start"
            time.sleep(0.05)
        second = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=60)
        assert second.returncode == cli.EXIT_USAGE, second.stderr
        err = second.stderr.strip()
        assert "\n" not in err and "Traceback" not in err, err
        assert str(out) in err and f"pid {holder.pid}" in err, err
        assert holder.poll() is None  # the first run goes on undisturbed
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The kernel released the dead holder's lock: the next run takes the folder.
    with RunDir(out, json.loads((out / "config.json").read_text())) as run:
        assert (out / ".lock").read_text().strip() == str(os.getpid())
        assert run.is_done("toy/exact/seed0") is False


def test_the_lock_is_shared_within_a_process_and_released_by_the_last_close(tmp_path):
    def locked_by_someone() -> bool:
        fd = os.open(tmp_path / ".lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another open file: conflicts
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # also drops the probe's own lock
        return False

    a = RunDir(tmp_path, {"a": 1})
    b = RunDir(tmp_path, {"a": 1})  # one process may open its folder twice
    a.close()
    assert locked_by_someone()
    b.close()
    assert not locked_by_someone() and (tmp_path / ".lock").read_text() == ""
    with RunDir(tmp_path, {"a": 1}):
        assert locked_by_someone()
    assert not locked_by_someone()


# --------------------------------------- 15: records verified on resume, never lost
def _cut_in_half(out: Path) -> None:
    data = (out / "metrics.jsonl").read_bytes()
    (out / "metrics.jsonl").write_bytes(data[: len(data) // 2])


def _edit_one(out: Path) -> None:
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    i = next(i for i, line in enumerate(lines) if "expected_reward" in line and "rloo" in line)
    rec = json.loads(lines[i])
    rec["expected_reward"] = 0.99
    lines[i] = json.dumps(rec, sort_keys=True) + "\n"
    (out / "metrics.jsonl").write_text("".join(lines))


def _delete_one(out: Path) -> None:
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    del lines[3]
    (out / "metrics.jsonl").write_text("".join(lines))


@pytest.mark.parametrize("damage", [_cut_in_half, _edit_one, _delete_one])
def test_a_finished_run_with_damaged_records_recomputes_those_phases(
    damage, straight, tmp_path, capsys
):
    out = copy(straight, tmp_path)
    damage(out)
    assert run_cli(*TOY, "--out", str(out)) == 0
    err = capsys.readouterr().err
    assert "metrics.jsonl" in err and "recomputing the phase" in err, err
    assert records(out) == records(straight)
    assert results(out) == results(straight)
    capsys.readouterr()
    assert run_cli(*TOY, "--out", str(out)) == 0  # now intact: nothing is redone
    assert capsys.readouterr().err == ""


def test_an_interrupted_run_that_lost_records_restarts_the_damaged_phase(
    straight, interrupted, tmp_path, capsys
):
    out = copy(interrupted, tmp_path)
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    rloo = [i for i, line in enumerate(lines) if '"toy/rloo:n_samples=3/seed0"' in line]
    del lines[rloo[1]]  # a record the checkpoint had seen
    (out / "metrics.jsonl").write_text("".join(lines))
    assert run_cli(*TOY, "--out", str(out)) == 0
    err = capsys.readouterr().err
    assert "restarting phase toy/rloo:n_samples=3/seed0" in err and "metrics.jsonl" in err, err
    assert records(out) == records(straight)
    assert results(out) == results(straight)


def test_a_record_torn_by_a_kill_is_dropped_and_the_run_resumes_from_its_checkpoint(
    straight, interrupted, tmp_path, capsys
):
    out = copy(interrupted, tmp_path)
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write('{"phase": "toy/rloo:n_samples=3/seed0", "step": 3')  # the trace of a kill
    assert run_cli(*TOY, "--out", str(out)) == 0
    assert capsys.readouterr().err == ""  # nothing to repair, nothing restarted
    assert records(out) == records(straight)


@pytest.mark.parametrize("experiment", ["sbn", "ssl"])
def test_a_run_killed_before_its_first_checkpoint_logs_nothing_twice(
    experiment, tmp_path, monkeypatch
):
    module = importlib.import_module(f"discograd.experiments.{experiment}")
    common = dict(batch_size=10, steps=8, log_every=2, eval_every=4, checkpoint_every=6)
    if experiment == "sbn":
        task, cfg = (
            module.SBNTask(),
            module.SBNConfig(
                units=(6, 4),
                estimators=("st_gumbel_softmax:tau=1.0",),
                valid_samples=5,
                eval_samples=10,
                iw_examples=10,
                **common,
            ),
        )
    else:
        task, cfg = (
            module.SSLTask(),
            module.SSLConfig(
                n_classes=3,
                n_labels=6,
                z_dim=2,
                hidden=(8,),
                methods=("gumbel_softmax:tau=1.0",),
                labelled_batch=4,
                timing_classes=0,
                **common,
            ),
        )
    data = tiny_data()

    def train(path: Path) -> None:
        with RunDir(path, dataclasses.asdict(cfg)) as run:
            Trainer(run, quiet=True).run(task, cfg, data=data)

    train(tmp_path / "full")
    original, calls = module.training_batch, {"n": 0}

    def killed(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # in step 2 or 4, before the checkpoint of step 6
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    with monkeypatch.context() as mp, pytest.raises(KeyboardInterrupt):
        mp.setattr(module, "training_batch", killed)
        train(tmp_path / "part")
    train(tmp_path / "part")
    assert records(tmp_path / "part") == records(tmp_path / "full")


# ------------------------------- 16: damaged files: one line naming the file and the fix
def _write(name: str, content: bytes):
    def damage(out: Path) -> None:
        (out / name).write_bytes(content)

    return damage


CKPT = "ckpt-toy_rloo_n_samples_3_seed0.pt"


def _half_checkpoint(out: Path) -> None:
    ckpt = out / CKPT
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])


def _old_layout_checkpoint(out: Path) -> None:
    torch.save({"step": 10, "theta": torch.zeros(5)}, out / CKPT)


def _unfit_checkpoint(out: Path) -> None:
    # A well-formed checkpoint whose state is not the toy's (another version's code).
    ckpt = out / CKPT
    payload = torch.load(ckpt, weights_only=False)
    fields = {k: payload.get(k) for k in ("format", "phase", "records", "sha256", "device")}
    torch.save({**fields, "state": {"step": 10}}, ckpt)


def _garbled_middle_line(out: Path) -> None:
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[2] = lines[2][:20] + "\n"
    (out / "metrics.jsonl").write_text("".join(lines))


DAMAGE = {
    "state.json not JSON": (_write("state.json", b"garbage"), "state.json"),
    "state.json without phases": (_write("state.json", b"{}"), "state.json"),
    "state.json wrong types": (_write("state.json", b'{"done": []}'), "state.json"),
    "config.json empty": (_write("config.json", b""), "config.json"),
    "config.json not an object": (_write("config.json", b"[1, 2]"), "config.json"),
    "checkpoint empty": (_write(CKPT, b""), CKPT),
    "checkpoint not a pickle": (_write(CKPT, b"\x80\x02garbage-bytes"), CKPT),
    "checkpoint cut in half": (_half_checkpoint, CKPT),
    "checkpoint of an older layout": (_old_layout_checkpoint, CKPT),
    "checkpoint whose state does not fit": (_unfit_checkpoint, CKPT),
    "metrics.jsonl garbled line": (_garbled_middle_line, "metrics.jsonl"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_file_is_one_line_naming_it_and_the_fix_works(
    case, straight, interrupted, tmp_path, capsys
):
    damage, name = DAMAGE[case]
    out = copy(interrupted, tmp_path)
    damage(out)
    assert run_cli(*TOY, "--out", str(out)) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("discograd toy: error: ") and str(out / name) in err, err
    assert "delete" in err, err
    # Do what the message says: the run then ends as an uninterrupted one.
    if name == "metrics.jsonl":
        number = int(err.split(" line ")[1].split()[0])
        lines = (out / name).read_text().splitlines(keepends=True)
        del lines[number - 1]
        (out / name).write_text("".join(lines))
    else:
        (out / name).unlink()
    assert run_cli(*TOY, "--out", str(out)) == 0
    assert records(out) == records(straight)
    assert results(out) == results(straight)


def test_leftovers_of_killed_writes_are_removed(interrupted, tmp_path):
    out = copy(interrupted, tmp_path)
    orphans = [f".{CKPT}.k3x9_q2a", ".state.json.abcd1234", ".metrics.jsonl.zz00yy11"]
    for name in orphans:
        (out / name).write_bytes(b"half a write")
    keep = out / ".my-notes"  # not ours: left alone
    keep.write_text("x")
    run = RunDir(out, json.loads((out / "config.json").read_text()))
    assert [name for name in orphans if (out / name).exists()] == []
    assert keep.exists()
    run.close()


def test_a_checkpoint_is_written_atomically(tmp_path, monkeypatch):
    run = RunDir(tmp_path, {"a": 1})

    def killed(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        run.save_checkpoint("p", {"step": 1})
    assert sorted(set(os.listdir(tmp_path)) - {".lock"}) == ["config.json"]


# ------------------------------------------- 17: the device may change between runs
def test_resuming_with_another_device_choice_is_allowed(straight, interrupted, tmp_path):
    out = copy(interrupted, tmp_path)
    assert run_cli(*TOY, "--device", "auto", "--out", str(out)) == 0
    assert json.loads((out / "config.json").read_text())["device"] == "auto"
    if not torch.cuda.is_available():  # auto is the CPU: the very same numbers
        assert records(out) == records(straight)
        assert results(out) == results(straight)


def test_device_keys_are_volatile_at_any_depth_and_other_keys_are_not(tmp_path):
    RunDir(tmp_path, {"toy": {"device": "cpu", "steps": 2}, "device": "cpu"})
    RunDir(tmp_path, {"toy": {"device": "auto", "steps": 2}, "device": "cuda"})
    with pytest.raises(ValueError, match=r"different configuration \(toy.steps: 2 -> 3\)"):
        RunDir(tmp_path, {"toy": {"device": "cpu", "steps": 3}, "device": "cpu"})


def test_a_checkpoint_from_another_kind_of_device_restarts_its_phase(tmp_path):
    from discograd.errors import RunFolderWarning

    run = RunDir(tmp_path, {"a": 1})
    assert run.resume("p") is None
    run.log({"phase": "p", "step": 0})
    run.save_checkpoint("p", {"step": 1}, "cuda")  # random streams on the GPU
    run.log({"phase": "p", "step": 1})
    assert run.resume("p", "cuda") == {"step": 1}
    assert [r["step"] for r in run.records("p")] == [0]
    with pytest.warns(RunFolderWarning, match="written on cuda and this run uses cpu"):
        assert run.resume("p", "cpu") is None
    assert run.records("p") == [] and run.load_checkpoint("p") is None
