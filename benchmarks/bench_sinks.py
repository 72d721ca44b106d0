"""Cost of the logging sinks per record, against writing the same JSONL line.

Run:

    python benchmarks/bench_sinks.py            # 21 repeats of 2000 records
    python benchmarks/bench_sinks.py --quick    # 7 repeats
    python benchmarks/bench_sinks.py --trackers # also W&B (offline) and MLflow (local file store)

The record is a training record of ``discograd vae`` (phase, step and four
values, one of them ``None``). What is timed, per record, in microseconds:

* ``jsonl line``: ``json.dumps`` + ``write`` + ``flush`` of the line, the
  floor for any logging;
* ``RunDir.log``: today's ``metrics.jsonl`` write (the line, plus an
  ``fsync`` so that resuming can trust it);
* each sink's ``emit`` (the record's view plus the sink's ``scalars``), with
  its ratio to the JSONL line;
* ``Logger.log`` with ``csv,tensorboard``: everything a trainer pays;
* the rebuild on resumption, per record replayed.

Contenders are interleaved round-robin, one batch of records each, and the
median over repeats reported. Trainers log once per ``log_every`` steps
(50 in ``vae``), so a cost per record is paid once per that many steps.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _machine import cpu_name

import discograd as dg
from discograd.experiments.runner import RunDir
from discograd.experiments.sinks import Logger, emit, make_sinks, replay

RECORD = {
    "phase": "vae/rloo:n_samples=4",
    "step": 0,
    "train_neg_elbo": 104.28125,
    "seconds_per_step": 0.0021337,
    "evals_per_step": 4.0,
    "tau": None,
}


def timed(fn: Callable[[int], None], n: int) -> float:
    """Microseconds per call of ``fn(step)`` over ``n`` steps."""
    t0 = time.perf_counter()
    for step in range(n):
        fn(step)
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="7 repeats instead of 21")
    parser.add_argument("--records", type=int, default=2000, help="records per repeat")
    parser.add_argument("--trackers", action="store_true", help="also time wandb and mlflow")
    args = parser.parse_args()
    repeats, n = (7 if args.quick else 21), args.records

    tmp = Path(tempfile.mkdtemp(prefix="bench-sinks-"))
    names = ["csv", "tensorboard"] + (["wandb", "mlflow"] if args.trackers else [])
    if args.trackers:
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        os.environ.setdefault("MLFLOW_TRACKING_URI", (tmp / "mlruns").as_uri())

    bare = open(tmp / "bare.jsonl", "a")  # closed at the end

    def jsonl(step: int) -> None:
        bare.write(json.dumps({**RECORD, "step": step}, sort_keys=True) + "\n")
        bare.flush()

    run = RunDir(tmp / "run", {"bench": 1})
    both = RunDir(tmp / "both", {"bench": 1})
    logger = Logger(both, make_sinks("csv,tensorboard"))
    contenders: dict[str, Callable[[int], None]] = {
        "jsonl line": jsonl,
        "RunDir.log": lambda step: run.log({**RECORD, "step": step}),
    }
    sinks: dict[str, Any] = {}
    for name in names:
        try:
            (sink,) = make_sinks(name)
        except ValueError as err:
            print(f"skipping {name}: {err}", file=sys.stderr)
            continue
        folder = tmp / name
        folder.mkdir()
        sink.open(folder, {"bench": 1}, resumed=False)
        sink.rebuild([])
        sinks[name] = sink
        contenders[name] = lambda step, s=sink: emit([s], {**RECORD, "step": step})
    contenders["Logger.log csv,tb"] = lambda step: logger.log({**RECORD, "step": step})

    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            times[name].append(timed(fn, n))
    med = {name: statistics.median(ts) for name, ts in times.items()}

    # Resumption: rebuild from the records a run folder keeps.
    records = [{**RECORD, "step": step} for step in range(20 * n)]
    rebuild: dict[str, float] = {}
    for name in ("csv", "tensorboard"):
        sink = sinks[name]
        t0 = time.perf_counter()
        replay([sink], records)
        rebuild[name] = (time.perf_counter() - t0) / len(records) * 1e6

    logger.close()
    for sink in sinks.values():
        sink.close()
    bare.close()
    run.close()
    both.close()
    shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"discograd {dg.__version__}, Python {sys.version.split()[0]}, CPU: {cpu_name()}, "
        f"{repeats} repeats of {n} records, median\n"
    )
    print("| writer | µs per record | × jsonl line |")
    print("| --- | ---: | ---: |")
    floor = med["jsonl line"]
    for name, us in med.items():
        print(f"| {name} | {us:.1f} | {us / floor:.2f} |")
    print("\n| rebuild on resumption | µs per record replayed |")
    print("| --- | ---: |")
    for name, us in rebuild.items():
        print(f"| {name} | {us:.1f} |")


if __name__ == "__main__":
    main()
