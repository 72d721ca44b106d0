"""The Trainer: hashed streams, exact resumption (kill -9, Ctrl-C), sinks, seeds, aggregation.

``CoinTask`` is a task of a few lines, as a user would write one: four
Bernoulli variables pushed towards a target by any estimator.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, Independent

import discograd
import discograd.cli as cli
from discograd.experiments import RunDir, StepResult, Task, TaskState, Trainer, aggregate
from discograd.experiments.config import TrainConfig, option
from discograd.experiments.trainer import stream_seed
from model_helpers import Interrupted, run_task, without_timing

TARGET = torch.tensor([0.1, 0.9, 0.3, 0.7], dtype=torch.float64)


@dataclass
class CoinConfig(TrainConfig):
    estimators: tuple[str, ...] = option(("reinforce_ema", "rloo:n_samples=3"), "specs")
    steps: int = option(30)
    lr: float = option(0.1)
    log_every: int = option(4)
    eval_every: int = option(5)
    checkpoint_every: int = option(6)


class CoinTask(Task[CoinConfig, TaskState]):
    name = "coin"
    Config = CoinConfig
    interrupt_at: int | None = None  # raise SIGINT during this step (Ctrl-C)

    def setup(self, config: CoinConfig, data: Any, ctx: Any, estimator: Any) -> TaskState:
        theta = torch.zeros(4, dtype=torch.float64)
        return TaskState(nn.ParameterDict({"theta": theta}), estimator)

    def step(self, state: TaskState, step: int, ctx: Any) -> StepResult:
        if step == self.interrupt_at:
            signal.raise_signal(signal.SIGINT)
        q = Independent(Bernoulli(logits=state.model["theta"].expand(8, 4)), 1)
        out = state.estimator(self.cost, q, generator=ctx.stream("train"))
        return StepResult(out.loss.mean(), out.cv_loss, out.mean_evals, {"value": out.value.mean()})

    def evaluate(self, state: TaskState, step: int, ctx: Any) -> dict[str, Any]:
        due = ctx.due(step, ctx.config.eval_every)
        return {"expected_cost": self.expected(state)} if due else {}

    def finish(self, state: TaskState, ctx: Any) -> dict[str, Any]:
        return {"final_cost": self.expected(state)}

    @staticmethod
    def cost(b: torch.Tensor) -> torch.Tensor:
        return ((b - TARGET) ** 2).sum(-1)

    @staticmethod
    def expected(state: TaskState) -> float:
        p = torch.sigmoid(state.model["theta"].detach())
        return float((p * (1 - TARGET) ** 2 + (1 - p) * TARGET**2).sum())


def records(path: Path) -> list[dict]:
    lines = (path / "metrics.jsonl").read_text().splitlines()
    return without_timing([json.loads(line) for line in lines])


# ---------------------------------------------------------------- streams
def test_streams_are_hashed_names_not_offsets():
    names = ["train", "valid", "test", "init", "train/epoch0", "train/epoch1"]
    seeds = {(s, n): stream_seed(s, n) for s in range(20) for n in names}
    assert len(set(seeds.values())) == len(seeds)  # no stream of one seed is another's
    assert all(0 <= v < 2**63 for v in seeds.values())
    # Stable across versions: a run resumed by a later discograd must draw the same.
    assert stream_seed(0, "train") == 4210860032495908260  # sha256(b"discograd/0/train")


def test_the_global_rng_is_left_as_it_was(tmp_path):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    run_task(CoinTask(), CoinConfig(steps=3), tmp_path)
    assert torch.equal(before, torch.random.get_rng_state())


# ----------------------------------------------------------------- resume
def test_learning_happens_and_every_seed_is_a_phase(tmp_path):
    res = run_task(CoinTask(), CoinConfig(seeds=(0, 1)), tmp_path)
    start = float((0.5 * (1 - TARGET) ** 2 + 0.5 * TARGET**2).sum())  # θ = 0
    for r in res.values():
        assert r["final_cost"] < 0.9 * start
        assert r["seeds"] == [0, 1] and r["n"]["final_cost"] == 2 and r["se"]["final_cost"] > 0
    state = json.loads((tmp_path / "state.json").read_text())
    assert sorted(state["done"]) == [
        f"coin/{e}/seed{s}" for e in ("reinforce_ema", "rloo:n_samples=3") for s in (0, 1)
    ]


def test_a_run_stopped_at_every_checkpoint_ends_as_an_uninterrupted_one(tmp_path):
    cfg = CoinConfig(seeds=(0, 1))
    straight = run_task(CoinTask(), cfg, tmp_path / "a")
    stops = 0
    while True:
        try:
            resumed = run_task(CoinTask(), cfg, tmp_path / "b", interrupt_at=0)
            break
        except Interrupted:
            stops += 1
    assert stops == 4 * 5  # 4 phases, checkpoints at steps 6, 12, 18, 24 and 30
    assert without_timing(resumed) == without_timing(straight)
    assert records(tmp_path / "b") == records(tmp_path / "a")


def test_ctrl_c_finishes_the_step_saves_a_checkpoint_and_resumes_exactly(tmp_path):
    cfg = CoinConfig(estimators=("rloo:n_samples=3",))
    run_task(CoinTask(), cfg, tmp_path / "a")
    task = CoinTask()
    task.interrupt_at = 8  # not a checkpoint step
    # What was installed before (SIG_IGN when the suite runs as a background job).
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        run_task(task, cfg, tmp_path / "b")
    saved = torch.load(tmp_path / "b" / "ckpt-coin_rloo_n_samples_3_seed0.pt", weights_only=False)
    assert saved["state"]["progress"]["step"] == 9  # step 8 was finished first
    assert signal.getsignal(signal.SIGINT) is handler  # restored
    run_task(CoinTask(), cfg, tmp_path / "b")
    assert records(tmp_path / "b") == records(tmp_path / "a")


def _env() -> dict[str, str]:
    src = str(Path(discograd.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_kill_dash_9_then_resume_equals_an_uninterrupted_run(tmp_path):
    argv = ["toy", "--C", "5", "--R", "1", "--steps", "400", "--eval-every", "20",
            "--var-every", "100", "--var-draws", "5", "--checkpoint-every", "20", "--quiet",
            "--estimators", "rloo:n_samples=3", "reinforce_ema", "--threads", "1"]  # fmt: skip
    assert cli.main([*argv, "--out", str(tmp_path / "a")]) == 0
    out = tmp_path / "b"
    proc = subprocess.Popen(
        [sys.executable, "-m", "discograd", *argv, "--out", str(out)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("ckpt-*.pt")):  # killed somewhere after its first checkpoint
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "no checkpoint was written"
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert cli.main([*argv, "--out", str(out)]) == 0
    assert records(out) == records(tmp_path / "a")
    a, b = (json.loads((p / "results.json").read_text()) for p in (tmp_path / "a", out))
    assert without_timing(a) == without_timing(b)


# ------------------------------------------------------------------ sinks
class Recorder:
    """A sink that keeps what it is given."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def open(self, out: Path, config: Any, *, resumed: bool) -> None:
        self.calls.append(("open", resumed))

    def scalars(self, phase: str, step: int, values: Any) -> None:
        self.calls.append((phase, step, {k: float(v) for k, v in values.items()}))

    def rebuild(self, records: Any) -> None:
        """Replace what it holds by ``records`` (the sink protocol's resume rule)."""
        self.calls = [c for c in self.calls if len(c) != 3]
        for phase, step, values in records:
            self.scalars(phase, step, values)

    def close(self) -> None:
        self.calls.append(("close",))


def _scalar_records(path: Path) -> list[tuple]:
    out = []
    for line in (path / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        values = {
            k: float(v)
            for k, v in rec.items()
            if k not in ("phase", "step") and type(v) in (int, float)
        }
        if isinstance(rec.get("step"), int) and values:
            out.append((rec["phase"], rec["step"], values))
    return out


def test_sinks_see_every_record_once_and_are_rebuilt_on_resume(tmp_path):
    cfg = CoinConfig(seeds=(0, 1))
    first = Recorder()
    with RunDir(tmp_path, dataclasses.asdict(cfg)) as run:
        save = run.save_checkpoint
        calls = {"n": 0}

        def stop_at_the_third(*args: Any) -> None:
            save(*args)
            calls["n"] += 1
            if calls["n"] == 8:  # mid-way through the second phase
                raise Interrupted

        run.save_checkpoint = stop_at_the_third  # type: ignore[method-assign]
        with pytest.raises(Interrupted), Trainer(run, quiet=True, sinks=[first]) as trainer:
            trainer.run(CoinTask(), cfg)
    assert first.calls[0] == ("open", False) and first.calls[-1] == ("close",)
    second = Recorder()  # a fresh sink, as after a restart: rebuilt from metrics.jsonl
    with RunDir(tmp_path, dataclasses.asdict(cfg)) as run:
        with Trainer(run, quiet=True, sinks=[second]) as trainer:
            trainer.run(CoinTask(), cfg)
    assert second.calls[0] == ("open", True) and second.calls[-1] == ("close",)
    got = [c for c in second.calls if len(c) == 3]
    assert sorted(got, key=repr) == sorted(_scalar_records(tmp_path), key=repr)


# ------------------------------------------------------------- aggregate
def test_aggregate_means_standard_errors_and_divergence():
    where = {"estimator": "e", "step": 3, "quantity": "loss"}
    agg = aggregate(
        {
            0: {"x": 1.0, "k": 5, "name": "a", "flag": True, "test": 2.0, "diverged": None},
            1: {"x": 3.0, "k": 5, "name": "a", "flag": True, "test": None, "diverged": where},
            2: {"x": 5.0, "k": 5, "name": "a", "flag": True, "test": 4.0, "diverged": None},
        }
    )
    assert agg["x"] == 3.0 and agg["se"]["x"] == pytest.approx(2 / math.sqrt(3))
    assert agg["k"] == 5 and isinstance(agg["k"], int) and agg["se"]["k"] == 0.0
    assert (agg["name"], agg["flag"]) == ("a", True)
    assert agg["test"] == 3.0 and agg["n"]["test"] == 2  # the diverged seed has no test number
    assert agg["diverged"] == {**where, "seeds": [1]}
    assert agg["seeds"] == [0, 1, 2] and agg["per_seed"]["1"]["x"] == 3.0
    one = aggregate({4: {"x": 2.0, "diverged": None}})
    assert one["x"] == 2.0 and one["se"]["x"] is None and one["n"]["x"] == 1


def test_check_finite_is_exact_when_the_fast_sum_overflows():
    from discograd.experiments.trainer import Diverged, check_finite

    big = torch.full((4,), torch.finfo(torch.float32).max)  # finite; the sum overflows
    check_finite("gradient", big, torch.ones(3))  # not a divergence
    for bad in (torch.tensor([1.0, math.nan]), torch.tensor([math.inf, -math.inf])):
        with pytest.raises(Diverged, match="gradient"):
            check_finite("gradient", torch.ones(2), bad)
    check_finite("loss", None)  # nothing to check


def test_declared_evaluation_periods_skip_undue_steps_with_the_same_records(tmp_path):
    """Task.evaluations: evaluate runs only where a period is due; the run is unchanged."""

    class Counting(CoinTask):
        calls: list[int]

        def evaluate(self, state: TaskState, step: int, ctx: Any) -> dict[str, Any]:
            self.calls.append(step)
            return super().evaluate(state, step, ctx)

    cfg = CoinConfig(estimators=("rloo:n_samples=3",), steps=12)
    seen = []
    for periods in (None, ("eval_every",)):
        task = Counting()
        task.calls, task.evaluations = [], periods
        out = tmp_path / str(periods)
        with RunDir(out, dataclasses.asdict(cfg)) as run, Trainer(run, quiet=True) as trainer:
            trainer.run(task, cfg)
        seen.append(records(out))
        if periods is not None:
            assert task.calls == [0, 5, 10, 12]  # eval_every=5, and the last step
        else:
            assert task.calls == list(range(13))
    assert seen[0] == seen[1]
