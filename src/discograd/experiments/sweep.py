"""``discograd sweep``: a grid of runs, each an ordinary run folder, on a pool or a Ray cluster.

A sweep names a task, a grid over its config fields, estimators and seeds.
Every combination (grid point, estimator, seed) is a *cell*: one run of the
task with one estimator and one seed, in a run folder of its own,
``<out>/cells/<name>/``, opened as the command line opens one
(:func:`~discograd.experiments.trainer.open_run`) and trained by the
:class:`~discograd.experiments.trainer.Trainer`. So everything run folders
do holds per cell: the lock, verification, ``meta.json``, the sinks, and
exact resumption after Ctrl-C or ``kill -9``. One estimator and one seed per
cell because that is the unit that parallelises best; the numbers of a cell
are those of the same seed in a ``discograd <task> --seeds ...`` run (random
streams are hashed from the seed, never shared between seeds).

The sweep folder::

    sweep.json     the expanded cells and their status (rewritten atomically as they finish)
    cells/<name>/  one run folder per cell (config.json, metrics.jsonl, state.json, ...)
    results.json   per grid point and estimator: mean ± s.e. over seeds (``aggregate``)
    results.csv    the same, tidy: grid fields, estimator, metric, mean, se, n, seeds
    report.md      one table per grid point, one per metric across the grid
    meta.json      versions, command line and times of every session of the sweep
    .lock          held by the sweep running in the folder

Cells run in this process (``jobs=1``), in a pool of ``jobs`` processes
(``spawn``: torch and ``fork`` do not mix), or as Ray tasks. Re-running a
sweep skips finished cells (their run folders say so), resumes interrupted
ones and runs new ones; a cell whose folder holds another configuration is
refused before anything runs.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import importlib
import io
import itertools
import json
import logging
import math
import multiprocessing as mp
import os
import signal
import socket
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from discograd.errors import ConfigError, RunFolderError

__all__ = [
    "Cell",
    "CellJob",
    "Outcome",
    "Sweep",
    "expand",
    "load_sweep",
    "run_cell",
    "run_sweep",
]

#: version of the layout of ``sweep.json`` and the sweep's ``results.json``
SWEEP_FORMAT = 1

#: the tasks a sweep can run, by command name (imported when used)
TASKS = {
    "toy": "discograd.experiments.toy:ToyTask",
    "variance": "discograd.experiments.variance:VarianceTask",
    "vae": "discograd.experiments.vae:VAETask",
    "sbn": "discograd.experiments.sbn:SBNTask",
    "ssl": "discograd.experiments.ssl:SSLTask",
    "gates": "discograd.experiments.gates:GatesTask",
    "topk": "discograd.experiments.topk:TopKTask",
}

#: keys a sweep file may hold
FILE_KEYS = (
    "task",
    "config",
    "base",
    "grid",
    "estimators",
    "methods",
    "families",
    "seeds",
    "metrics",
)
#: the config fields that can list what a task trains, one cell per entry
AXES = ("estimators", "methods", "families")

# The variance study declares no headline numbers; these are its table's columns.
_VARIANCE_METRICS = ("bias", "variance", "snr", "cosine")

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _task_class(name: str) -> Any:
    path = TASKS.get(name)
    if path is None:
        raise ConfigError(f"unknown task {name!r} for a sweep; choose from {', '.join(TASKS)}")
    module, cls = path.split(":")
    return getattr(importlib.import_module(module), cls)


# ------------------------------------------------------------------ the sweep
@dataclasses.dataclass
class Sweep:
    """A sweep as written (file and flags merged), before expansion into cells.

    Every cell's settings are, in order: the task's defaults, the config files
    (``files``: the sweep file's ``config``, then ``--config``), ``base`` (the
    sweep file's ``[base]`` table, then ``--set``), its grid point, its
    estimator and seed. ``grid`` maps a config field to the values it takes
    (it overrides a config file, which names every setting, but may not
    repeat a ``base`` setting); ``estimators`` and ``seeds`` are ``None`` to
    take them from the other layers (or the task's defaults).
    """

    task: str
    files: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    base: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    grid: dict[str, list[Any]] = dataclasses.field(default_factory=dict)
    estimators: list[str] | None = None
    seeds: list[int] | int | None = None
    metrics: list[str] | None = None
    source: str | None = None


def _seeds_value(value: Any, where: str) -> list[int] | int:
    """``3`` (seeds 0, 1, 2) or a list of seeds."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: seeds must be a number or a list of seeds, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, (list, tuple)) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return list(value)
    raise ConfigError(f"{where}: seeds must be a number or a list of seeds, got {value!r}")


def _str_list(value: Any, key: str, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: {key} must be a list of strings, got {value!r}")
    return list(value)


def _config_layer(path: str | Path, task: str) -> dict[str, Any]:
    """A config file (a run's ``config.json`` works), checked to be the task's."""
    from discograd.experiments.config import read_file

    values = read_file(path)
    held = values.pop("command", None)
    if held is not None and held != task:
        raise ConfigError(f"{path} holds a {held} config, not a {task} one")
    return values


def load_sweep(
    file: str | Path | None,
    *,
    task: str | None = None,
    config: str | None = None,
    sets: Sequence[str] = (),
    grid: Sequence[str] = (),
    estimators: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    seed: int | None = None,
    metrics: Sequence[str] | None = None,
) -> Sweep:
    """The sweep of ``file`` (TOML, YAML or JSON; may be ``None``) with the flags' changes.

    Flags replace the file's values (``--grid KEY=...`` replaces that key's
    values); ``config`` and ``sets`` are added on top of the file's base.
    ``seeds`` is a count (one value) or a list; ``seed`` is that one seed alone.
    """
    if seeds is not None and seed is not None:
        raise ConfigError("give --seed or --seeds, not both")
    from discograd.experiments.config import parse_sets, read_file

    data: dict[str, Any] = {}
    where = "the command line"
    if file is not None:
        data = read_file(file)
        where = str(file)
        unknown = [k for k in data if k not in FILE_KEYS]
        if unknown:
            raise ConfigError(
                f"{file}: unknown key {unknown[0]!r}; a sweep file holds "
                + ", ".join(k for k in FILE_KEYS if k not in AXES[1:])
            )
    name = task or data.get("task")
    if not isinstance(name, str):
        raise ConfigError(f'{where}: name the task to sweep (task = "toy" or --task toy)')
    _task_class(name)  # known?
    sweep = Sweep(task=name, source=None if file is None else str(Path(file).resolve()))

    def relative(path: str) -> Path:
        # A config file named in a sweep file is found next to the sweep file.
        p = Path(path).expanduser()
        return p if p.is_absolute() or file is None else Path(file).parent / p

    if "config" in data:
        if not isinstance(data["config"], str):
            raise ConfigError(f"{where}: config must be the path of a config file")
        sweep.files.append(_config_layer(relative(data["config"]), name))
    if "base" in data:
        if not isinstance(data["base"], dict):
            raise ConfigError(f"{where}: base must be a table of settings")
        sweep.base.append(dict(data["base"]))
    if config is not None:
        sweep.files.append(_config_layer(config, name))
    if sets:
        sweep.base.append(parse_sets(sets))

    table = data.get("grid", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: grid must be a table of settings and their values")
    for key, values in table.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(
                f"{where}: grid.{key} must be a non-empty list of values, got {values!r}"
            )
    sweep.grid = {str(k).replace("-", "_"): list(v) for k, v in table.items()}
    for item in grid:
        key, eq, text = item.partition("=")
        if not eq or not key.strip() or not text.strip():
            raise ConfigError(f"--grid {item!r}: use key=value1,value2, e.g. --grid lr=1e-3,3e-4")
        sweep.grid[key.strip().replace("-", "_")] = _grid_values(text.strip(), item)

    axis = [k for k in AXES if k in data]
    if len(axis) > 1:
        raise ConfigError(f"{where}: give one of {', '.join(AXES)}, got {', '.join(axis)}")
    if axis:
        sweep.estimators = _str_list(data[axis[0]], axis[0], where)
    if estimators is not None:
        sweep.estimators = list(estimators)
    if "seeds" in data:
        sweep.seeds = _seeds_value(data["seeds"], where)
    if seeds is not None:
        sweep.seeds = seeds[0] if len(seeds) == 1 else list(seeds)
    if seed is not None:
        sweep.seeds = [seed]
    if "metrics" in data:
        sweep.metrics = _str_list(data["metrics"], "metrics", where)
    if metrics is not None:
        sweep.metrics = list(metrics)
    return sweep


def _grid_values(text: str, item: str) -> list[Any]:
    """``1e-3,3e-4`` or a JSON list (``[[128, 64], [256]]`` for list-valued settings)."""
    if text.startswith("["):
        try:
            values = json.loads(text)
        except json.JSONDecodeError:
            raise ConfigError(f"--grid {item!r}: the values are not a valid JSON list") from None
        if not isinstance(values, list) or not values:
            raise ConfigError(f"--grid {item!r}: give a non-empty list of values")
        return values
    return [v.strip() for v in text.split(",")]


# ------------------------------------------------------------------- cells
@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of a sweep: a grid point, an estimator and a seed.

    ``point`` holds the grid values as the config has them (``lr=1`` and
    ``lr=1.0`` are one cell); ``config`` is the cell's full config as JSON
    data (what its ``config.json`` holds, less the command).
    """

    name: str
    point: tuple[tuple[str, Any], ...]
    estimator: str
    seed: int
    config: dict[str, Any]
    phases: tuple[str, ...]

    @property
    def label(self) -> str:
        return point_label(self.point)


def point_label(point: Sequence[tuple[str, Any]]) -> str:
    """``lr=0.001, R=10``: a grid point as people read it (``(no grid)`` for none)."""
    return ", ".join(f"{k}={_shown(v)}" for k, v in point) or "(no grid)"


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "+".join(_shown(v) for v in value)
    return str(value)


def _safe(text: str) -> str:
    """Characters that are safe in a folder name on every system and in a shell, unquoted."""
    return "".join(c if c.isalnum() or c in "-_.=,+" else "_" for c in text)


def cell_name(point: Sequence[tuple[str, Any]], estimator: str, seed: int) -> str:
    """``R=10,lr=0.3--rloo_n_samples=4--seed0``: the grid values (keys sorted, so that
    reordering the file renames nothing), the estimator and the seed."""
    parts = [",".join(f"{k}={_shown(v)}" for k, v in sorted(point))] if point else []
    name = _safe("--".join([*parts, estimator.replace(":", "_"), f"seed{seed}"]))
    if len(name) > 200:  # file systems allow 255 bytes; keep it readable and unique
        import hashlib

        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        name = f"{name[:180]}--{digest}"
    return name


def _axis_field(config_class: type) -> str:
    """The config field that lists what a task trains: ``estimators`` (``methods`` for ssl
    and topk, ``families`` for gates)."""
    names = {f.name for f in dataclasses.fields(config_class)}
    for name in AXES:
        if name in names:
            return name
    raise ConfigError(f"{config_class.__name__} has no estimators to sweep")  # pragma: no cover


def expand(sweep: Sweep) -> list[Cell]:
    """Every cell of ``sweep``, each config built and validated as the task's command would.

    Seeds outermost (a partial sweep has every setting at its first seeds),
    then the grid in the order written, then the estimators. A bad value in any
    cell is a :class:`~discograd.errors.ConfigError` naming the cell, raised
    before anything runs.
    """
    from discograd.estimators.registry import canonical
    from discograd.experiments.config import build, config_fields, to_dict

    task = _task_class(sweep.task)()
    cls = task.Config
    axis = _axis_field(cls)
    fields = {f.name: f for f in config_fields(cls)}
    for key in sweep.grid:
        if key in ("seeds", axis, "estimators"):
            raise ConfigError(f"grid: {key} has its own place in a sweep ({key} = [...]), not grid")
        if key not in fields:
            raise ConfigError(
                f"grid: unknown setting {key!r} of {sweep.task}; known: " + ", ".join(fields)
            )
        if fields[key].nested:
            raise ConfigError(f"grid: {key} is a table of settings; sweep its fields instead")
    layers = [*sweep.files, *sweep.base]
    base = build(cls, *layers)  # the settings every cell shares must make sense alone too
    for layer in sweep.base:
        swept = [k for k in sweep.grid if k in {str(n).replace("-", "_") for n in layer}]
        if swept:
            raise ConfigError(
                f"{swept[0]} is both set for every cell and swept by the grid; give it once"
            )
    specs = sweep.estimators if sweep.estimators is not None else list(getattr(base, axis))
    if not specs:
        raise ConfigError(f"the sweep names no {axis}")
    if len({canonical(s) for s in specs}) != len(specs):
        raise ConfigError(f"{axis} must not repeat an estimator, got {specs}")
    seeds_value: Any = sweep.seeds if sweep.seeds is not None else list(base.seeds)
    seeds = build(cls, *layers, {"seeds": seeds_value}).seeds
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must name at least one seed, none twice; got {seeds_value!r}")

    keys = list(sweep.grid)
    cells: list[Cell] = []
    names: dict[str, Cell] = {}
    for seed in seeds:
        for values in itertools.product(*(sweep.grid[k] for k in keys)):
            raw_point = dict(zip(keys, values, strict=True))
            for spec in specs:
                axes = {axis: [spec], "seeds": [seed]}
                try:
                    config = build(cls, *layers, raw_point, axes)
                    config.validate()
                except ConfigError as err:
                    where = point_label(list(raw_point.items()))
                    raise ConfigError(f"cell {where}, {spec}, seed {seed}: {err}") from None
                data = to_dict(config)
                point = tuple((k, _frozen(data[k])) for k in keys)
                name = cell_name(point, canonical(spec), seed)
                cell = Cell(
                    name=name,
                    point=point,
                    estimator=canonical(spec),
                    seed=seed,
                    config=data,
                    phases=tuple(f"{task.name}/{u.key}/seed{seed}" for u in task.units(config)),
                )
                other = names.get(name)
                if other is not None:
                    if other.config == cell.config:
                        raise ConfigError(
                            f"grid: {point_label(point)} appears twice (values that are equal "
                            "as settings, such as 1 and 1.0)"
                        )
                    raise ConfigError(
                        f"cells {point_label(other.point)} and {point_label(point)} would share "
                        f"the folder name {name}; use values that differ in letters or digits"
                    )
                names[name] = cell
                cells.append(cell)
    return cells


def _frozen(value: Any) -> Any:
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


# ----------------------------------------------------------- running a cell
@dataclasses.dataclass(frozen=True)
class CellJob:
    """What a worker needs to run a cell (picklable, small)."""

    task: str
    name: str
    path: str  # absolute: Ray workers have a working directory of their own
    config: dict[str, Any]
    threads: int
    log: str
    argv: tuple[str, ...]


@dataclasses.dataclass
class Outcome:
    """How a cell's run ended: ``done``, ``failed``, ``interrupted`` or ``pending`` (not run)."""

    name: str
    status: str
    error: str | None = None
    seconds: float = 0.0
    resumed: bool = False
    warnings: list[str] = dataclasses.field(default_factory=list)
    host: str = ""


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def run_cell(job: CellJob) -> Outcome:
    """Run (or resume) one cell in its run folder; never raises.

    A :class:`~discograd.errors.ConfigError` (a folder in use, missing data)
    becomes its one-line message; any other exception is a bug or a crash of
    the run: its traceback goes to ``error.txt`` in the cell's folder.
    Ctrl-C (``KeyboardInterrupt``, after the Trainer saved a checkpoint)
    gives ``interrupted``. This function is what a pool worker, a Ray task
    and the sweep's own process run.
    """
    import torch

    from discograd.experiments.common import resolve_device
    from discograd.experiments.config import build
    from discograd.experiments.meta import now, write_meta
    from discograd.experiments.sinks import make_sinks
    from discograd.experiments.trainer import Trainer, open_run

    t0 = time.monotonic()
    out = Outcome(job.name, "failed", host=socket.gethostname())
    path = Path(job.path)
    torch.set_num_threads(job.threads)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            task = _task_class(job.task)()
            config = build(task.Config, job.config)
            config.validate()
            sinks = make_sinks(job.log)
            started = now()
            device = str(resolve_device(config.device))
            with open_run(path, config, command=task.name) as run:
                out.resumed = run.resumed
                write_meta(path, device=device, argv=job.argv, started=started)
                with Trainer(run, quiet=True, sinks=sinks) as trainer:
                    results = trainer.run(task, config)
                run.write_results({task.name: results})
                write_meta(path, device=device, argv=job.argv, started=started, ended=now())
            with contextlib.suppress(FileNotFoundError):
                (path / "error.txt").unlink()  # of an earlier, failed attempt
            out.status = "done"
        except KeyboardInterrupt:
            out.status = "interrupted"
        except ConfigError as err:
            out.error = " ".join(str(err).split())
        except Exception as err:
            out.error = _one_line(err)
            out.error += f" (traceback: {_save_traceback(path)})"
    out.warnings = [f"{w.category.__name__}: {w.message}" for w in caught]
    out.seconds = round(time.monotonic() - t0, 3)
    return out


def _save_traceback(path: Path) -> str:
    """The traceback in the cell's folder (beside it if the folder is not a run folder)."""
    from discograd.experiments.runner import atomic_write_text, is_run_folder

    target = path / "error.txt" if is_run_folder(path) else path.with_name(path.name + ".error.txt")
    try:
        atomic_write_text(target, traceback.format_exc())
    except OSError:
        return "not saved"
    return str(target)


def _guarded(job: CellJob) -> Outcome:
    """:func:`run_cell` with Ctrl-C enabled while it runs (a pool worker ignores it between
    cells: a signal there would kill the worker and break the whole pool)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return run_cell(job)
    except KeyboardInterrupt:  # a second Ctrl-C while the first was being handled
        return Outcome(job.name, "interrupted")
    finally:
        signal.signal(signal.SIGINT, previous)


# Set in each pool worker by _init_worker: the parent's "stop" event.
_STOP: Any = None


def _init_worker(stop: Any, threads: int, parent: int) -> None:
    """A pool worker: its own process group, Ctrl-C off between cells, dies with the sweep.

    Its own process group: a Ctrl-C in the terminal reaches the sweep alone,
    which passes exactly one SIGINT to each busy worker (two would stop it
    before its checkpoint). It dies with the sweep's process (``kill -9``):
    an orphan would keep its cell's folder locked, and go on writing into it,
    while the sweep is run again.
    """
    import torch

    global _STOP
    _STOP = stop
    _die_with(parent)
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)


def _die_with(parent: int) -> None:
    """End this process when ``parent`` ends: at once on Linux (the kernel sends SIGKILL),
    within 0.1 s elsewhere (a thread watches the parent's pid)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            pr_set_pdeathsig = 1
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)

    def watchdog() -> None:
        while os.getppid() == parent:  # the parent may have gone before prctl
            time.sleep(0.1)
        os._exit(70)

    threading.Thread(target=watchdog, name="sweep-watchdog", daemon=True).start()


def _pool_cell(job: CellJob) -> Outcome:
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        # Checked after enabling Ctrl-C: a stop asked before that point is seen here,
        # one asked after it interrupts the cell.
        if _STOP is not None and _STOP.is_set():
            return Outcome(job.name, "pending")
        return run_cell(job)
    except KeyboardInterrupt:
        return Outcome(job.name, "interrupted")
    finally:
        signal.signal(signal.SIGINT, previous)


# --------------------------------------------------------------- backends
class _Stop:
    """Ctrl-C in the sweep's process: counted, and passed on by ``forward``."""

    def __init__(self) -> None:
        self.count = 0
        self.forward: Callable[[int], None] = lambda count: None
        self._previous: Any = None

    def __enter__(self) -> _Stop:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count == 1:
            print(
                "\ninterrupted: running cells save a checkpoint and stop; no new cell starts "
                "(Ctrl-C again to stop them at once)",
                file=sys.stderr,
                flush=True,
            )
        self.forward(self.count)

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


Report = Callable[[Outcome], None]


def _run_here(jobs: list[CellJob], stop: _Stop, report: Report) -> None:
    for job in jobs:
        if stop.count:
            report(Outcome(job.name, "pending"))
            continue
        outcome = _guarded(job)
        if outcome.status == "interrupted":
            stop.count = max(stop.count, 1)
        report(outcome)


def _run_pool(jobs: list[CellJob], n: int, threads: int, stop: _Stop, report: Report) -> None:
    ctx = mp.get_context("spawn")
    event = ctx.Event()

    def forward(count: int) -> None:
        event.set()
        for child in mp.active_children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid or 0, signal.SIGINT)

    stop.forward = forward
    with ProcessPoolExecutor(
        max_workers=min(n, len(jobs)),
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(event, threads, os.getpid()),
    ) as pool:
        futures: dict[Future[Outcome], CellJob] = {pool.submit(_pool_cell, j): j for j in jobs}
        waiting = set(futures)
        while waiting:
            if stop.count:
                for fut in waiting:
                    fut.cancel()  # the ones no worker has taken yet
            finished, waiting = wait(waiting, timeout=0.2, return_when=FIRST_COMPLETED)
            for fut in finished:
                job = futures[fut]
                if fut.cancelled():
                    report(Outcome(job.name, "pending"))
                    continue
                try:
                    report(fut.result())
                except BrokenProcessPool:
                    report(
                        Outcome(
                            job.name,
                            "failed",
                            "a worker process died (killed, or out of memory); run the sweep "
                            "again to resume",
                        )
                    )
                except BaseException as err:  # a KeyboardInterrupt that escaped the cell
                    status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
                    report(Outcome(job.name, status, None if status != "failed" else str(err)))


def _import_ray() -> Any:
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise ConfigError(
            "--ray needs Ray: pip install 'discograd[ray]' (or pip install 'ray>=2.9')"
        ) from None


def _check_reachable(address: str) -> None:
    """A ``host:port`` that refuses connections is an error now, not after Ray's minutes
    of retrying."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # "auto", "ray://...": Ray's to resolve
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except OSError as err:
        raise ConfigError(
            f"cannot reach the Ray cluster at {address}: {err.strerror or err}"
        ) from None


@contextlib.contextmanager
def ray_session(address: str | None, n: int | None, threads: int) -> Iterator[Any]:
    """The ``ray`` module, initialised: connected to ``address``, else to ``RAY_ADDRESS``,
    else a local instance of ``n`` × ``threads`` CPUs (all of them without ``n``) that is
    shut down at the end. An instance already initialised in this process is used as is."""
    ray = _import_ray()
    if ray.is_initialized():
        yield ray
        return
    options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address is not None:
        _check_reachable(address)
        options["address"] = address
    elif not os.environ.get("RAY_ADDRESS"):  # else ray.init() joins that cluster
        # "local": a new instance, even where an earlier `ray start` left its address behind.
        options.update(address="local", include_dashboard=False)
        if n is not None:
            options["num_cpus"] = n * threads
    try:
        ray.init(**options)
    except Exception as err:  # a cluster that refuses us (a token, versions): not a bug here
        where = f" at {address}" if address is not None else ""
        first = str(err).strip().splitlines()[0] if str(err).strip() else _one_line(err)
        raise ConfigError(f"cannot start or reach Ray{where}: {first}") from err
    try:
        yield ray
    finally:
        ray.shutdown()


def _run_ray(
    ray: Any,
    jobs: list[CellJob],
    n: int | None,
    threads: int,
    stop: _Stop,
    report: Report,
) -> None:
    """Each cell a Ray task (``num_cpus=threads``), at most ``n`` at a time if given.

    The cells write their run folders themselves: ``--out`` must be on a file
    system that every node of the cluster sees at the same path.
    """
    remote = ray.remote(num_cpus=threads, max_retries=0)(run_cell)
    queue = list(jobs)
    running: dict[Any, CellJob] = {}
    window = n or len(jobs)
    cancelled = 0
    while queue or running:
        while queue and not stop.count and len(running) < window:
            job = queue.pop(0)
            running[remote.remote(job)] = job
        if stop.count > cancelled:  # acted on here: Ray's calls are not for signal handlers
            cancelled = stop.count
            # force=False raises KeyboardInterrupt in the task: the Trainer saves a
            # checkpoint first; the second Ctrl-C kills the workers.
            for ref in running:
                ray.cancel(ref, force=cancelled > 1)
            for job in queue:
                report(Outcome(job.name, "pending"))
            queue = []
        if not running:
            break
        ready, _ = ray.wait(list(running), num_returns=1, timeout=0.2)
        for ref in ready:
            job = running.pop(ref)
            try:
                outcome = ray.get(ref)
            except ray.exceptions.TaskCancelledError:
                outcome = Outcome(job.name, "interrupted")
            except ray.exceptions.RayError as err:
                outcome = Outcome(job.name, "failed", _one_line(err).splitlines()[0])
            if outcome.status == "done" and not (Path(job.path) / "state.json").exists():
                outcome.status, outcome.error = (
                    "failed",
                    f"finished on {outcome.host}, but its folder is not visible here: "
                    "--out must be on a file system that every node shares",
                )
            report(outcome)


# ---------------------------------------------------------- sweep folder
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunFolderError(f"{path} is damaged ({_one_line(err)})") from err


def cell_status(path: Path, cell: Cell) -> str:
    """``done`` (every phase finished, results written), ``started`` or ``new``."""
    state = _read_json(path / "state.json") if (path / "state.json").exists() else None
    done = state.get("done", {}) if isinstance(state, dict) else {}
    if all(p in done for p in cell.phases) and (path / "results.json").exists():
        return "done"
    return "started" if (path / "config.json").exists() else "new"


def _check_folder(out: Path, task: str) -> None:
    """``--out`` is new, empty, or a sweep of ``task``: never a run folder or a user's folder."""
    from discograd.experiments.runner import is_run_folder

    if not out.exists():
        return
    if not out.is_dir():
        raise RunFolderError(f"{out} is not a folder; use another --out")
    if is_run_folder(out):
        held = _read_json(out / "config.json") if (out / "config.json").exists() else None
        what = held.get("command") if isinstance(held, dict) else None
        raise RunFolderError(
            f"{out} holds a {what or 'discograd'} run, not a sweep; use another --out folder"
        )
    sweep = _read_json(out / "sweep.json")
    if sweep is None:
        visible = sorted(n for n in os.listdir(out) if not n.startswith("."))
        if visible:
            shown = ", ".join(visible[:3]) + (", ..." if len(visible) > 3 else "")
            raise RunFolderError(
                f"{out} is not empty ({shown}) and holds no sweep; use a new or empty --out "
                "folder (nothing was written)"
            )
    elif not isinstance(sweep, dict) or sweep.get("task") != task:
        held = sweep.get("task") if isinstance(sweep, dict) else None
        raise RunFolderError(
            f"{out} holds a sweep of {held or 'something else'}, not {task}; use another --out"
        )


def _conflicts(out: Path, cells: Sequence[Cell], task: str) -> list[str]:
    """Cells whose folder holds a run of another configuration (the run folder would refuse it)."""
    from discograd.experiments.config import volatile_keys
    from discograd.experiments.runner import _config_diff, dumps

    cls = _task_class(task).Config
    volatile = frozenset(volatile_keys(cls))
    found = []
    for cell in cells:
        old = _read_json(out / "cells" / cell.name / "config.json")
        if old is None:
            continue
        new = json.loads(dumps({"command": task, **cell.config}))
        diff = _config_diff(old if isinstance(old, dict) else {}, new, volatile)
        if diff:
            found.append(f"{cell.name} ({', '.join(diff[:3])})")
    return found


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """The sweep folder's lock (the run folders' ``flock``): one sweep per folder."""
    from discograd.experiments.runner import _acquire, _release

    key = _acquire(out)
    try:
        yield
    finally:
        _release(key)


def grid_values(cells: Sequence[Cell]) -> dict[str, list[Any]]:
    """Each grid setting's values as the cells' configs have them (``"1"`` from a flag is
    ``1.0`` for a float setting), in order."""
    out: dict[str, list[Any]] = {}
    for cell in cells:
        for key, value in cell.point:
            if value not in out.setdefault(key, []):
                out[key].append(value)
    return out


def _write_sweep_json(
    out: Path,
    sweep: Sweep,
    cells: Sequence[Cell],
    status: dict[str, dict[str, Any]],
    argv: Sequence[str],
) -> None:
    from discograd.experiments.meta import now
    from discograd.experiments.runner import atomic_write_text, dumps

    counts: dict[str, int] = {}
    for s in status.values():
        counts[s["status"]] = counts.get(s["status"], 0) + 1
    data = {
        "format": SWEEP_FORMAT,
        "task": sweep.task,
        "file": sweep.source,
        "argv": list(argv),
        "updated": now().isoformat(timespec="milliseconds"),
        "grid": grid_values(cells),
        "counts": counts,
        "cells": [
            {
                "name": c.name,
                "grid": dict(c.point),
                "estimator": c.estimator,
                "seed": c.seed,
                **status[c.name],
            }
            for c in cells
        ],
    }
    atomic_write_text(out / "sweep.json", dumps(data, indent=2) + "\n")


# ------------------------------------------------------------- aggregation
def collect(out: Path, cells: Sequence[Cell], task: str) -> list[dict[str, Any]]:
    """Per grid point, per estimator: :func:`aggregate` of the finished cells' seeds.

    Reads each cell's ``state.json`` (the results of its finished phases): a
    cell interrupted part-way contributes the phases it finished.
    """
    from discograd.experiments.trainer import aggregate

    points: dict[tuple[Any, ...], dict[str, dict[int, dict[str, Any]]]] = {}
    order: list[tuple[Any, ...]] = []
    for cell in cells:
        if cell.point not in points:
            points[cell.point] = {}
            order.append(cell.point)
        state = _read_json(out / "cells" / cell.name / "state.json")
        done = state.get("done", {}) if isinstance(state, dict) else {}
        suffix = f"/seed{cell.seed}"
        for phase in cell.phases:
            if phase in done:
                unit = phase[len(task) + 1 : -len(suffix)]
                points[cell.point].setdefault(unit, {})[cell.seed] = done[phase]
    return [
        {
            "grid": dict(point),
            "label": point_label(point),
            "results": {unit: aggregate(seeds) for unit, seeds in points[point].items()},
        }
        for point in order
    ]


def _metrics(sweep: Sweep, cells: Sequence[Cell]) -> list[str]:
    """The table's columns: ``--metrics``, else the task's headline numbers for the
    cells' settings (``headlines(config)``: topk's depend on its ``ks``), in order."""
    from discograd.experiments.config import build

    if sweep.metrics:
        return list(sweep.metrics)
    task = _task_class(sweep.task)()
    keys = dict.fromkeys(task.headline)
    for cell in cells:
        keys.update(dict.fromkeys(task.headlines(build(task.Config, cell.config))))
    return list(keys or (_VARIANCE_METRICS if sweep.task == "variance" else ()))


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _csv(points: Sequence[dict[str, Any]], keys: Sequence[str]) -> str:
    """Tidy rows: grid fields, estimator, metric, mean, se, n, seeds (every numeric metric)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*keys, "estimator", "metric", "mean", "se", "n", "seeds"])
    for p in points:
        grid = [_shown(p["grid"][k]) for k in keys]
        for unit, r in p["results"].items():
            for metric, value in r.items():
                if metric in ("se", "n", "seeds", "per_seed") or not _numeric(value):
                    continue
                se = (r.get("se") or {}).get(metric)
                n = (r.get("n") or {}).get(metric, 1)
                writer.writerow(
                    [*grid, unit, metric, repr(value) if isinstance(value, float) else value,
                     "" if se is None else repr(se), n, len(r.get("seeds") or [])]
                )  # fmt: skip
    return buf.getvalue()


#: makes the report of a sweep from its ``results.json`` data, the command line and how it
#: ran: returns ``report.md``'s text and the lines to print. The command line passes the
#: report package's ``sweep.render``: reports sit above the experiments in the layering.
Render = Callable[[Mapping[str, Any], str, str], tuple[str, list[str]]]


def write_results(
    out: Path,
    sweep: Sweep,
    cells: Sequence[Cell],
    counts: Mapping[str, int],
    render: Render | None = None,
    command: str = "",
    how: str = "",
) -> tuple[dict[str, Any], list[str]]:
    """``results.json`` and ``results.csv`` of the finished cells, and ``report.md`` if
    ``render`` is given; returns the results and the lines to print."""
    from discograd.experiments.runner import atomic_write_text, dumps

    points = collect(out, cells, sweep.task)
    data = {
        "format": SWEEP_FORMAT,
        "task": sweep.task,
        "grid": grid_values(cells),
        "seeds": sorted({c.seed for c in cells}),
        "metrics": _metrics(sweep, cells),
        "cells": dict(counts),
        "points": points,
    }
    atomic_write_text(out / "results.json", dumps(data, indent=2, sort_keys=True) + "\n")
    atomic_write_text(out / "results.csv", _csv(points, list(sweep.grid)))
    if render is None:
        return data, []
    text, lines = render(json.loads(dumps(data)), command, how)
    atomic_write_text(out / "report.md", text)
    return data, lines


# ------------------------------------------------------------------- driver
@dataclasses.dataclass
class Options:
    """How to run a sweep (the command's flags)."""

    out: Path
    jobs: int | None = None
    ray: bool = False
    ray_address: str | None = None
    threads: int = 1
    dry_run: bool = False
    report_only: bool = False
    quiet: bool = False
    log: str = ""
    argv: tuple[str, ...] = ()
    command: str = "discograd sweep"
    render: Render | None = None


def _say(bar: Any, text: str) -> None:
    """A line on stderr that does not tear the progress bar."""
    write = getattr(bar, "write", None)
    if write is not None:
        write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr, flush=True)


def run_sweep(sweep: Sweep, opts: Options) -> int:
    """Expand, check, run the cells that are not done, aggregate; returns the exit status."""
    from discograd.experiments.sinks import make_sinks

    if opts.jobs is not None and opts.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {opts.jobs}")
    if opts.threads < 1:
        raise ConfigError(f"--threads-per-job must be >= 1, got {opts.threads}")
    use_ray = opts.ray or opts.ray_address is not None
    if use_ray and not (opts.dry_run or opts.report_only):
        _import_ray()
    make_sinks(opts.log)  # a bad sink name is an error before anything runs
    cells = expand(sweep)
    out = opts.out
    _check_folder(out, sweep.task)
    running = not (opts.dry_run or opts.report_only)
    with contextlib.ExitStack() as stack:
        ray = None
        if (
            use_ray
            and running
            and any(cell_status(out / "cells" / c.name, c) != "done" for c in cells)
        ):
            # Before the folder is made: a cluster that cannot be reached is bad input.
            ray = stack.enter_context(ray_session(opts.ray_address, opts.jobs, opts.threads))
        if running:
            # Locked before reading the cells' state: another sweep may be writing it.
            out.mkdir(parents=True, exist_ok=True)
            stack.enter_context(_locked(out))
        return _run_locked(sweep, opts, cells, use_ray, ray)


def _run_locked(sweep: Sweep, opts: Options, cells: list[Cell], use_ray: bool, ray: Any) -> int:
    from discograd.experiments.meta import now, write_meta
    from discograd.experiments.runner import progress

    out = opts.out
    conflicts = _conflicts(out, cells, sweep.task)
    if conflicts:
        raise RunFolderError(
            f"{len(conflicts)} cell{'s' * (len(conflicts) != 1)} in {out} hold runs of another "
            f"configuration: {'; '.join(conflicts[:3])}{'; ...' if len(conflicts) > 3 else ''}; "
            "use another --out for the changed sweep (or delete those cells to redo them)"
        )
    status = {c.name: cell_status(out / "cells" / c.name, c) for c in cells}
    jobs_text = (
        (f"on Ray at {opts.ray_address}" if opts.ray_address else "on a local Ray instance")
        if use_ray
        else f"{opts.jobs or 1} job{'s' * ((opts.jobs or 1) != 1)} at a time"
    ) + f", {opts.threads} thread{'s' * (opts.threads != 1)} each"
    shape = " × ".join(
        _plural(len(set(values)), word)
        for values, word in (
            ([c.point for c in cells], "grid point"),
            ([c.estimator for c in cells], "estimator"),
            ([c.seed for c in cells], "seed"),
        )
    )
    done0 = sum(s == "done" for s in status.values())
    resume0 = sum(s == "started" for s in status.values())
    todo = [c for c in cells if status[c.name] != "done"]
    print(
        f"discograd sweep: {len(cells)} cells ({sweep.task}: {shape}) in {out}: {done0} done, "
        f"{resume0} to resume, {len(todo) - resume0} new"
        + ("" if opts.report_only or opts.dry_run or not todo else f"; {jobs_text}"),
        flush=True,  # before the cells' progress on stderr
    )
    if opts.dry_run:
        width = max(len(c.name) for c in cells)
        for c in cells:
            print(f"  {c.name:<{width}}  {status[c.name]}")
        return 0
    if opts.report_only:
        if not out.exists():
            raise ConfigError(f"{out} holds no sweep yet: nothing to report")
        counts = _counts({c.name: {"status": _plain(status[c.name])} for c in cells})
        return _finish(out, sweep, cells, counts, opts, jobs_text, interrupted=False)

    started = now()
    write_meta(out, device="cpu", argv=opts.argv, started=started)
    table = {c.name: {"status": _plain(status[c.name])} for c in cells}
    _write_sweep_json(out, sweep, cells, table, opts.argv)
    job_list = [
        CellJob(
            task=sweep.task,
            name=c.name,
            path=str((out / "cells" / c.name).resolve()),
            config=c.config,
            threads=opts.threads,
            log=opts.log,
            argv=tuple(opts.argv),
        )
        for c in todo
    ]
    (out / "cells").mkdir(exist_ok=True)
    failed: list[str] = []
    resumed = 0
    live = sys.stderr.isatty() and not opts.quiet
    with progress(len(cells), "sweep", quiet=not live, initial=done0) as bar, _Stop() as stop:

        def report(outcome: Outcome) -> None:
            nonlocal resumed
            entry: dict[str, Any] = {"status": outcome.status}
            if outcome.status == "pending":
                entry["status"] = _plain(status[outcome.name])
            else:
                entry.update(seconds=outcome.seconds, host=outcome.host)
            if outcome.error:
                entry["error"] = outcome.error
                failed.append(f"{outcome.name}: {outcome.error}")
            table[outcome.name] = entry
            resumed += outcome.resumed and outcome.status == "done"
            _write_sweep_json(out, sweep, cells, table, opts.argv)
            for w in outcome.warnings:
                _say(bar, f"discograd sweep: {outcome.name}: warning: {w}")
            if outcome.status == "failed":
                _say(bar, f"discograd sweep: {outcome.name} failed: {outcome.error}")
            elif outcome.status == "done":
                bar.update()
                if not live and not opts.quiet:
                    n = sum(e["status"] == "done" for e in table.values())
                    _say(bar, f"[{n}/{len(cells)}] {outcome.name} done ({outcome.seconds:.1f} s)")

        if job_list:
            if use_ray:
                with contextlib.ExitStack() as late:
                    if ray is None:  # all was done a moment ago, before the lock
                        ray = late.enter_context(
                            ray_session(opts.ray_address, opts.jobs, opts.threads)
                        )
                    _run_ray(ray, job_list, opts.jobs, opts.threads, stop, report)
            elif (opts.jobs or 1) > 1:
                _run_pool(job_list, opts.jobs or 1, opts.threads, stop, report)
            else:
                _run_here(job_list, stop, report)
        interrupted = stop.count > 0 or any(e["status"] == "interrupted" for e in table.values())
    write_meta(out, device="cpu", argv=opts.argv, started=started, ended=now())
    counts = _counts(table)
    if resumed:
        print(f"discograd sweep: resumed {resumed} interrupted cell{'s' * (resumed != 1)}")
    code = _finish(out, sweep, cells, counts, opts, jobs_text, interrupted=interrupted)
    if failed:
        print(
            f"discograd sweep: {len(failed)} cell{'s' * (len(failed) != 1)} failed:",
            file=sys.stderr,
        )
        for line in failed:
            print(f"  {line}", file=sys.stderr)
    return code


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def _plain(state: str) -> str:
    """A cell's status in ``sweep.json`` from what its folder says."""
    return {"done": "done", "started": "interrupted", "new": "pending"}[state]


def _counts(table: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for order in ("done", "failed", "interrupted", "pending"):
        n = sum(e["status"] == order for e in table.values())
        if n:
            counts[order] = n
    return counts


def _finish(
    out: Path,
    sweep: Sweep,
    cells: Sequence[Cell],
    counts: Mapping[str, int],
    opts: Options,
    jobs_text: str,
    *,
    interrupted: bool,
) -> int:
    _, lines = write_results(out, sweep, cells, counts, opts.render, opts.command, jobs_text)
    for line in lines:
        print(line)
    report = f"report: {out / 'report.md'}, " if opts.render is not None else ""
    print(f"\n{report}tables: {out / 'results.csv'}, {out / 'results.json'}")
    summary = ", ".join(f"{v} {k}" for k, v in counts.items())
    print(f"discograd sweep: {len(cells)} cells: {summary}")
    if interrupted:
        print("discograd sweep: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    if counts.get("failed"):
        return EXIT_FAILED
    return 0


# -------------------------------------------------------------- command line
def add_parser(sub: Any, func: Callable[[Any], int]) -> Any:
    """The ``sweep`` subcommand of ``discograd``, run by ``func`` (the command line's: it
    passes :func:`command` the report's renderer)."""
    p = sub.add_parser(
        "sweep",
        help="a grid of runs (settings × estimators × seeds), in parallel or on Ray",
        description="Run every cell of a sweep (grid point × estimator × seed) as a run folder "
        "of its own under --out/cells/, skipping finished cells and resuming interrupted ones, "
        "locally (--jobs N processes) or on Ray (--ray, --ray-address); then one table and "
        "report of mean ± s.e. over seeds. The sweep file (TOML, YAML or JSON) holds task, "
        "base (settings of every cell), config (a config file), grid (setting -> list of "
        "values), estimators, seeds and metrics; the flags below override it.",
        epilog="example: discograd sweep examples/toy-lr.toml --jobs 2",
        allow_abbrev=False,
    )
    p.add_argument("file", nargs="?", metavar="SWEEP_FILE", help="the sweep (.toml, .yaml, .json)")
    what = p.add_argument_group("the sweep (each replaces the file's)")
    what.add_argument("--task", choices=tuple(TASKS), help="the task to sweep")
    what.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a setting and its values (repeatable; a JSON list for list values: "
        "--grid 'hidden=[[128,64],[256]]')",
    )
    what.add_argument("--estimators", nargs="+", metavar="SPEC", help="estimator specs")
    seeds = what.add_mutually_exclusive_group()
    seeds.add_argument(
        "--seeds", nargs="+", type=int, metavar="N", help="seeds: N means 0 .. N-1, or a list"
    )
    seeds.add_argument(
        "--seed",
        type=int,
        metavar="K",
        help="seed K alone (--seeds K means seeds 0 .. K-1): to add one seed to a sweep",
    )
    what.add_argument(
        "--metrics",
        nargs="+",
        metavar="KEY",
        help="result keys in the tables (default: the task's headline numbers)",
    )
    what.add_argument(
        "--config", metavar="FILE", help="settings for every cell, from a config file"
    )
    what.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for every cell (repeatable), applied after the file's",
    )
    how = p.add_argument_group("how to run it")
    how.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        default=None,
        help="the sweep folder; re-running with it resumes (default: runs/sweep-<file name>)",
    )
    how.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="cells at a time: N worker processes (default 1, in this process); with --ray, "
        "at most N Ray tasks at a time",
    )
    ray = how.add_mutually_exclusive_group()
    ray.add_argument(
        "--ray", action="store_true", help="run each cell as a task on a local Ray instance"
    )
    ray.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="run the cells on the Ray cluster at ADDR ('auto': the one this machine is part "
        "of); --out must be on a file system every node shares",
    )
    how.add_argument(
        "--threads-per-job",
        type=int,
        default=1,
        metavar="N",
        help="torch threads of each cell (Ray: CPUs per task) (default: 1)",
    )
    how.add_argument(
        "--dry-run", action="store_true", help="list the cells and their status; run nothing"
    )
    how.add_argument(
        "--report",
        action="store_true",
        help="only aggregate the finished cells into the tables and report (also while the "
        "sweep runs)",
    )
    how.add_argument("--quiet", action="store_true", help="no progress bar or per-cell lines")
    how.add_argument(
        "--log",
        default="",
        metavar="SINKS",
        help="more views of each cell's metrics: csv, tensorboard, wandb, mlflow",
    )
    how.add_argument(
        "--debug", action="store_true", help="print the traceback of errors in the input too"
    )
    p.set_defaults(func=func)
    return p


def command(args: Any, render: Render | None = None) -> int:
    """``discograd sweep``: the parsed flags to :func:`run_sweep`."""
    if args.file is None and args.task is None:
        raise ConfigError("give a sweep file, or --task with --grid/--estimators/--seeds")
    sweep = load_sweep(
        args.file,
        task=args.task,
        config=args.config,
        sets=args.set,
        grid=args.grid,
        estimators=args.estimators,
        seeds=args.seeds,
        seed=args.seed,
        metrics=args.metrics,
    )
    out = args.out
    if out is None:
        out = Path("runs") / f"sweep-{Path(args.file).stem if args.file else sweep.task}"
        args.out = out
    opts = Options(
        out=out,
        jobs=args.jobs,
        ray=args.ray,
        ray_address=args.ray_address,
        threads=args.threads_per_job,
        dry_run=args.dry_run,
        report_only=args.report,
        quiet=args.quiet,
        log=args.log,
        argv=tuple(args.argv),
        command=args.command_line,
        render=render,
    )
    return run_sweep(sweep, opts)
