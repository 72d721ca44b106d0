"""Logging sinks: CSV, TensorBoard, W&B and MLflow views of ``metrics.jsonl``.

``metrics.jsonl`` (written by :class:`~discograd.experiments.runner.RunDir`)
is always on and is the source of truth: resuming truncates it to what the
last checkpoint had seen. Every sink here is a *derived view* of it, and is
kept equal to a replay of it rather than patched: when a run folder is opened
the sinks are rebuilt from the records it keeps (:func:`replay`), and from
then on each record is forwarded as it is logged (:func:`emit`). An
interrupted and resumed run therefore ends with the same CSV rows and the
same TensorBoard scalars as an uninterrupted one, without duplicates.
:class:`Logger` does all of this for a trainer: it stands in for
``RunDir.log``.

What a sink receives from a record: its ``phase`` (records without one are
not forwarded), its ``step`` (``0`` for records without one, such as the
variance study's), and every numeric value, as :func:`scalars_of` defines:
ints and floats as they are, bools as 0/1, one-element tensors as numbers,
and ``"inf"``, ``"-inf"``, ``"nan"`` (how ``metrics.jsonl`` spells non-finite
floats) as floats; strings, ``None`` and lists are left out. A record read
back from ``metrics.jsonl`` and the record as it was logged give the same
values, which is what makes a rebuilt sink equal to a live one.

Sinks (``--log csv,tensorboard``; :data:`SINKS`, :func:`make_sinks`):

``csv``
    ``<out>/metrics.csv``, one long ("tidy") table ``phase,step,key,value``,
    one row per value. ``pandas.read_csv`` loads every phase at once; seaborn
    plots it as is (``x="step", y="value", hue="phase"``), and
    ``df.pivot_table(index=["phase", "step"], columns="key", values="value")``
    gives the wide table. Records have different keys (training, validation,
    final), so a wide file would need its header rewritten as keys appear.
``tensorboard``
    ``<out>/tb/<phase>/events.out.tfevents.*``, one TensorBoard run per phase
    (the folder name is the phase with every character but letters, digits,
    ``-_.`` replaced by ``_``, as for checkpoints), one event per record with
    one scalar per value (TensorBoard stores scalars as float32). Rebuilding
    deletes the phase folders' event files and writes fresh ones, so a
    resumed run holds exactly one copy of each point for every reader, not
    only for those that honour TensorBoard's ``purge_step`` (a TensorBoard
    left running across a resumption may keep showing the discarded points
    until it is reloaded). Needs the ``tensorboard`` package (extra
    ``discograd[tensorboard]``), imported only when the sink opens.
``wandb``, ``mlflow``
    Remote trackers (extras ``discograd[wandb]``, ``discograd[mlflow]``),
    configured by their own environment variables (``WANDB_PROJECT``,
    ``WANDB_MODE=offline``, ``MLFLOW_TRACKING_URI``,
    ``MLFLOW_EXPERIMENT_NAME``...). A tracker cannot take logged points back,
    so each session of a run folder is one tracker run that receives a
    replay of the kept records first: the last one holds the complete
    history and is tagged ``resumed`` when it continues an earlier session.
    Metric names are ``<phase>/<key>``.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import importlib.util
import io
import json
import math
import os
import re
import socket
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import count
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Protocol, runtime_checkable

import torch

from discograd.errors import ConfigError
from discograd.experiments.common import slug
from discograd.experiments.runner import RunDir, atomic_write_text

__all__ = [
    "SINKS",
    "CSVSink",
    "Logger",
    "MLflowSink",
    "Scalars",
    "Sink",
    "TensorBoardSink",
    "WandbSink",
    "emit",
    "make_sinks",
    "replay",
    "scalars_of",
]

Number = int | float


class Scalars(NamedTuple):
    """The part of one ``metrics.jsonl`` record that sinks see."""

    phase: str
    step: int
    values: dict[str, Number]


@runtime_checkable
class Sink(Protocol):
    """A derived view of ``metrics.jsonl``.

    Call order: :meth:`open` once, then :meth:`rebuild` (from the records the
    run folder keeps; an empty list for a new run) and :meth:`scalars` for
    each record logged after that, in order, then :meth:`close` (also after a
    failure; idempotent). :meth:`rebuild` may be called again at any time and
    replaces everything the sink holds for this run folder.
    """

    def open(self, out: Path, config: Mapping[str, Any], *, resumed: bool) -> None:
        """Get ready to write the view of run folder ``out``.

        ``config``: the run's configuration (as in ``config.json``).
        ``resumed``: the folder already held records or finished phases.
        """

    def scalars(self, phase: str, step: int, values: Mapping[str, Number]) -> None:
        """Append one record's values (``values`` may be empty)."""

    def rebuild(self, records: Iterable[Scalars]) -> None:
        """Replace the view by ``records`` (what :meth:`scalars` would have been given)."""

    def close(self) -> None:
        """Flush and release files and connections."""


# ------------------------------------------------------------- record view
_NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _number(value: Any) -> Number | None:
    # Mirrors runner._jsonable, so a logged record and the same record read
    # back from metrics.jsonl give the same numbers.
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, torch.Tensor):
        return _number(value.item()) if value.numel() == 1 else None
    if isinstance(value, str):
        return _NON_FINITE.get(value)
    return None


def scalars_of(record: Mapping[str, Any]) -> Scalars | None:
    """What the sinks see of one record: ``None`` when it has no phase (module docstring)."""
    phase = record.get("phase")
    if not isinstance(phase, str):
        return None
    step = record.get("step")
    step = step if isinstance(step, int) and not isinstance(step, bool) else 0
    values: dict[str, Number] = {}
    for key, value in record.items():
        if key in ("phase", "step"):
            continue
        number = _number(value)
        if number is not None:
            values[str(key)] = number
    return Scalars(phase, step, values)


def emit(sinks: Iterable[Sink], record: Mapping[str, Any]) -> None:
    """Forward one record (as given to ``RunDir.log``) to ``sinks``."""
    item = scalars_of(record)
    if item is not None:
        for sink in sinks:
            sink.scalars(item.phase, item.step, item.values)


def replay(sinks: Iterable[Sink], records: Iterable[Mapping[str, Any]]) -> None:
    """Rebuild every sink from ``records`` (those of ``metrics.jsonl``, in order)."""
    items = [item for item in map(scalars_of, records) if item is not None]
    for sink in sinks:
        sink.rebuild(items)


def _remove_stale_temps(folder: Path, name: str) -> None:
    # runner.atomic_write_text's temporary files (".<name>." + 8 characters)
    # left by a write that was killed; the run folder's lock makes them ours.
    pattern = re.compile(rf"^\.{re.escape(name)}\.[a-z0-9_]{{8}}$")
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(folder):
            if pattern.match(entry.name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)


# --------------------------------------------------------------------- CSV
def _cell(value: Number) -> str:
    # repr is the shortest text that reads back as the same float ("inf",
    # "nan" included, both parsed by pandas); ints stay exact.
    return str(value) if isinstance(value, int) else repr(float(value))


class CSVSink:
    """``<out>/metrics.csv``: columns ``phase,step,key,value``, one row per value."""

    name: ClassVar[str] = "csv"
    #: the module this sink imports, and the extra that installs it (None: none needed)
    requires: ClassVar[tuple[str, str] | None] = None
    FILENAME: ClassVar[str] = "metrics.csv"
    HEADER: ClassVar[tuple[str, ...]] = ("phase", "step", "key", "value")

    def __init__(self) -> None:
        self.path: Path | None = None
        self._fh: io.TextIOWrapper | None = None
        self._writer: Any = None

    def open(self, out: Path, config: Mapping[str, Any], *, resumed: bool) -> None:
        self.path = Path(out) / self.FILENAME
        _remove_stale_temps(self.path.parent, self.FILENAME)

    def _rows(self, phase: str, step: int, values: Mapping[str, Number]) -> Iterator[list[str]]:
        for key, value in values.items():
            yield [phase, str(step), key, _cell(value)]

    def _append_handle(self) -> Any:
        if self._fh is None:
            if self.path is None:
                raise RuntimeError("CSVSink.open was not called")
            new = not self.path.exists() or self.path.stat().st_size == 0
            self._fh = open(self.path, "a", newline="")
            self._writer = csv.writer(self._fh)
            if new:
                self._writer.writerow(self.HEADER)
        return self._writer

    def rebuild(self, records: Iterable[Scalars]) -> None:
        if self.path is None:
            raise RuntimeError("CSVSink.open was not called")
        self.close()
        buf = io.StringIO(newline="")
        writer = csv.writer(buf)
        writer.writerow(self.HEADER)
        for item in records:
            writer.writerows(self._rows(*item))
        atomic_write_text(self.path, buf.getvalue())

    def scalars(self, phase: str, step: int, values: Mapping[str, Number]) -> None:
        writer = self._append_handle()
        writer.writerows(self._rows(phase, step, values))
        # Flushed (not fsynced) per record: a reader sees it at once; what a
        # kill loses is rebuilt from metrics.jsonl on resumption.
        assert self._fh is not None
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self._fh = self._writer = None


# ------------------------------------------------------------- TensorBoard
_EVENT_FILE = re.compile(r"^events\.out\.tfevents\.")
_file_number = count()


class TensorBoardSink:
    """``<out>/tb/<phase>/events.out.tfevents.*``: one TensorBoard run per phase.

    Written synchronously with TensorBoard's own record writer and protocol
    buffers (no writer thread, flushed per record), one event per record.
    One phase's file is open at a time: phases run one after another, and a
    phase that comes back gets a new file in its folder (TensorBoard reads
    them all).
    """

    name: ClassVar[str] = "tensorboard"
    requires: ClassVar[tuple[str, str] | None] = ("tensorboard", "tensorboard")
    FOLDER: ClassVar[str] = "tb"

    def __init__(self) -> None:
        self.root: Path | None = None
        self._phase: str | None = None
        self._file: Any = None
        self._records: Any = None
        self._pb: Any = None

    def open(self, out: Path, config: Mapping[str, Any], *, resumed: bool) -> None:
        self.root = Path(out) / self.FOLDER
        self._pb = (
            _import(self.name, self.requires, "tensorboard.compat.proto.event_pb2"),
            _import(self.name, self.requires, "tensorboard.compat.proto.summary_pb2"),
            _import(
                self.name, self.requires, "tensorboard.summary.writer.record_writer"
            ).RecordWriter,
        )

    def folder(self, phase: str) -> Path:
        """The TensorBoard run folder of ``phase``."""
        if self.root is None:
            raise RuntimeError("TensorBoardSink.open was not called")
        return self.root / slug(phase)

    def _writer_for(self, phase: str) -> Any:
        if self._phase != phase or self._records is None:
            self._close_file()
            event_pb2, _, record_writer = self._pb
            folder = self.folder(phase)
            folder.mkdir(parents=True, exist_ok=True)
            # TensorBoard's own naming; the zero-padded counter keeps files
            # of one process in creation order when sorted by name.
            name = (
                f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}"
                f".{os.getpid()}.{next(_file_number):06d}"
            )
            self._file = open(folder / name, "wb")
            self._records = record_writer(self._file)
            self._phase = phase
            header = event_pb2.Event(
                wall_time=time.time(),
                file_version="brain.Event:2",
                source_metadata=event_pb2.SourceMetadata(writer="discograd"),
            )
            self._records.write(header.SerializeToString())
        return self._records

    def _event(self, step: int, values: Mapping[str, Number]) -> bytes:
        event_pb2, summary_pb2, _ = self._pb
        summary = summary_pb2.Summary(
            value=[
                summary_pb2.Summary.Value(tag=key, simple_value=float(value))
                for key, value in values.items()
            ]
        )
        event = event_pb2.Event(wall_time=time.time(), step=step, summary=summary)
        data: bytes = event.SerializeToString()
        return data

    def scalars(self, phase: str, step: int, values: Mapping[str, Number]) -> None:
        if not values:
            return
        records = self._writer_for(phase)
        records.write(self._event(step, values))
        records.flush()

    def rebuild(self, records: Iterable[Scalars]) -> None:
        if self.root is None:
            raise RuntimeError("TensorBoardSink.open was not called")
        self._close_file()
        self._clear()
        by_phase: dict[str, list[Scalars]] = {}
        for item in records:
            if item.values:
                by_phase.setdefault(item.phase, []).append(item)
        for phase, items in by_phase.items():
            writer = self._writer_for(phase)  # closes the previous phase's file
            for item in items:
                writer.write(self._event(item.step, item.values))
            writer.flush()
        # The last file stays open: a resumed phase continues in it.

    def _clear(self) -> None:
        """Delete the event files under ``tb/`` (nothing else), then the folders left empty."""
        assert self.root is not None
        if not self.root.is_dir():
            return
        for folder in [self.root, *(p for p in self.root.iterdir() if p.is_dir())]:
            for path in folder.iterdir():
                if path.is_file() and _EVENT_FILE.match(path.name):
                    path.unlink()
            if folder != self.root:
                with contextlib.suppress(OSError):  # not empty: a file of the user's
                    folder.rmdir()

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = self._records = self._phase = None

    def close(self) -> None:
        self._close_file()


# ------------------------------------------------------- remote trackers
def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class WandbSink:
    """Weights & Biases: one W&B run per session of the run folder (module docstring).

    Metrics ``<phase>/<key>`` are plotted against ``<phase>/step``. The W&B
    files go to ``<out>/wandb/``; project, entity and mode come from W&B's
    environment variables (project ``discograd`` by default).
    """

    name: ClassVar[str] = "wandb"
    requires: ClassVar[tuple[str, str] | None] = ("wandb", "wandb")

    def __init__(self) -> None:
        self.run: Any = None
        self._out: Path | None = None
        self._config: dict[str, Any] = {}
        self._resumed = False
        self._phases: set[str] = set()
        self._wandb: Any = None

    def open(self, out: Path, config: Mapping[str, Any], *, resumed: bool) -> None:
        self._wandb = _import(self.name, self.requires)
        self._out, self._config, self._resumed = Path(out), dict(config), resumed

    def _start(self) -> Any:
        if self.run is None:
            if self._out is None:
                raise RuntimeError("WandbSink.open was not called")
            self.run = self._wandb.init(
                project=os.environ.get("WANDB_PROJECT") or "discograd",
                name=self._out.name,
                dir=str(self._out),
                config=self._config,
                tags=["resumed"] if self._resumed else None,
            )
            self._phases = set()
        return self.run

    def scalars(self, phase: str, step: int, values: Mapping[str, Number]) -> None:
        run = self._start()
        if phase not in self._phases:
            run.define_metric(f"{phase}/step")
            run.define_metric(f"{phase}/*", step_metric=f"{phase}/step")
            self._phases.add(phase)
        run.log({f"{phase}/step": step, **{f"{phase}/{k}": v for k, v in values.items()}})

    def rebuild(self, records: Iterable[Scalars]) -> None:
        # Points cannot be taken back: a run of this sink that has logged
        # anything is finished and a new one receives the replay.
        if self.run is not None:
            self.close()
            self._resumed = True
        self._start()
        for item in records:
            self.scalars(*item)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


_MLFLOW_NAME = re.compile(r"[^\w./\- ]")


class MLflowSink:
    """MLflow: one MLflow run per session of the run folder (module docstring).

    Tracking URI and experiment come from ``MLFLOW_TRACKING_URI`` and
    ``MLFLOW_EXPERIMENT_NAME`` (experiment ``discograd`` by default); the run
    is named after the run folder, its parameters are the flattened config,
    metrics ``<phase>/<key>`` (characters MLflow refuses become ``_``) are
    logged at the record's step, batched and sent at least once a second.
    """

    name: ClassVar[str] = "mlflow"
    requires: ClassVar[tuple[str, str] | None] = ("mlflow", "mlflow")
    FLUSH_SECONDS: ClassVar[float] = 1.0
    FLUSH_METRICS: ClassVar[int] = 1000  # MLflow's log_batch limit

    def __init__(self) -> None:
        self.run_id: str | None = None
        self._client: Any = None
        self._out: Path | None = None
        self._config: Mapping[str, Any] = {}
        self._resumed = False
        self._pending: list[Any] = []
        self._last_flush = 0.0
        self._metric: Any = None
        self._param: Any = None

    def open(self, out: Path, config: Mapping[str, Any], *, resumed: bool) -> None:
        entities = _import(self.name, self.requires, "mlflow.entities")
        self._metric, self._param = entities.Metric, entities.Param
        self._client = _import(self.name, self.requires, "mlflow.tracking").MlflowClient()
        self._out, self._config, self._resumed = Path(out), config, resumed

    def _start(self) -> str:
        if self.run_id is None:
            if self._out is None:
                raise RuntimeError("MLflowSink.open was not called")
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "discograd"
            experiment = self._client.get_experiment_by_name(name)
            experiment_id = (
                experiment.experiment_id
                if experiment is not None
                else self._client.create_experiment(name)
            )
            tags = {"discograd.run_dir": str(self._out.resolve())}
            if self._resumed:
                tags["resumed"] = "true"
            run = self._client.create_run(experiment_id, run_name=self._out.name, tags=tags)
            self.run_id = run.info.run_id
            params = [
                self._param(
                    _MLFLOW_NAME.sub("_", key),
                    (value if isinstance(value, str) else json.dumps(value))[:500],
                )
                for key, value in sorted(_flatten(self._config).items())
            ]
            for i in range(0, len(params), 100):  # MLflow's limit per batch
                self._client.log_batch(self.run_id, params=params[i : i + 100])
            self._last_flush = time.monotonic()
        return self.run_id

    def scalars(self, phase: str, step: int, values: Mapping[str, Number]) -> None:
        self._start()
        stamp = int(time.time() * 1000)
        prefix = _MLFLOW_NAME.sub("_", phase)
        self._pending += [
            self._metric(f"{prefix}/{_MLFLOW_NAME.sub('_', key)}", float(value), stamp, step)
            for key, value in values.items()
        ]
        if (
            len(self._pending) >= self.FLUSH_METRICS
            or time.monotonic() - self._last_flush >= self.FLUSH_SECONDS
        ):
            self.flush()

    def flush(self) -> None:
        """Send the metrics logged so far."""
        while self._pending:
            batch, self._pending = (
                self._pending[: self.FLUSH_METRICS],
                self._pending[self.FLUSH_METRICS :],
            )
            self._client.log_batch(self.run_id, metrics=batch)
        self._last_flush = time.monotonic()

    def rebuild(self, records: Iterable[Scalars]) -> None:
        if self.run_id is not None:
            self.close()
            self._resumed = True
        self._start()
        for item in records:
            self.scalars(*item)
        self.flush()

    def close(self) -> None:
        if self.run_id is not None:
            self.flush()
            self._client.set_terminated(self.run_id)
            self.run_id = None


# ---------------------------------------------------------------- registry
#: sink name -> class; ``--log`` takes these names (``metrics.jsonl`` is always written)
SINKS: dict[str, type[Sink]] = {
    "csv": CSVSink,
    "tensorboard": TensorBoardSink,
    "wandb": WandbSink,
    "mlflow": MLflowSink,
}


def _missing(name: str, requires: tuple[str, str] | None) -> str:
    module, extra = requires or (name, name)
    return (
        f"the {name} log sink needs the {module!r} package, which is not installed: "
        f"pip install 'discograd[{extra}]'"
    )


def _import(name: str, requires: tuple[str, str] | None, module: str | None = None) -> Any:
    """Import ``module`` (default: the sink's package); a ConfigError naming the extra if absent."""
    try:
        return importlib.import_module(module or (requires or (name, name))[0])
    except ImportError as err:
        raise ConfigError(_missing(name, requires)) from err


def make_sinks(spec: str | Sequence[str] | None) -> list[Sink]:
    """Sinks from ``"csv,tensorboard"`` or ``["csv", "tensorboard"]`` (commas or spaces).

    ``""``, ``"none"`` and ``"jsonl"`` (always written) add nothing; a name
    given twice counts once. An unknown name, or a sink whose package is not
    installed, is a :class:`~discograd.errors.ConfigError` saying which extra
    to install. Checks without importing the packages (they are imported when
    a sink opens).
    """
    if spec is None:
        return []
    parts = [spec] if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for part in parts:
        for name in re.split(r"[\s,]+", str(part).strip().lower()):
            if name and name not in ("none", "jsonl") and name not in names:
                names.append(name)
    sinks: list[Sink] = []
    for name in names:
        cls = SINKS.get(name)
        if cls is None:
            raise ConfigError(
                f"unknown log sink {name!r}; choose from {', '.join(SINKS)} "
                "(metrics.jsonl is always written)"
            )
        requires = getattr(cls, "requires", None)
        if requires is not None and importlib.util.find_spec(requires[0]) is None:
            raise ConfigError(_missing(name, requires))
        sinks.append(cls())
    return sinks


# ------------------------------------------------------------------ Logger
class Logger:
    """``metrics.jsonl`` plus derived sinks: use :meth:`log` where ``RunDir.log`` was used.

    Opening rebuilds the sinks from the records of the phases the folder has
    finished. The records an unfinished phase kept (those its checkpoint had
    seen) are forwarded when that phase logs its first record, by which time
    ``RunDir.resume`` has dropped the ones after the checkpoint (the runner's
    rule: resume a phase before logging to it), or at :meth:`close` if the
    phase finished without logging again. So the sinks always hold what an
    uninterrupted run would have written up to the same record, however often
    the run was interrupted.

    Args:
        run: the open run folder.
        sinks: from :func:`make_sinks`; opened here, closed by :meth:`close`.
    """

    def __init__(self, run: RunDir, sinks: Sequence[Sink] = ()) -> None:
        self.run = run
        self.sinks = list(sinks)
        self._pending: set[str] = set()
        if not self.sinks:
            return
        records = self.run.records()
        resumed = bool(records) or bool(run.state["done"])
        keep = []
        for record in records:
            phase = record.get("phase")
            if isinstance(phase, str) and not run.is_done(phase):
                self._pending.add(phase)
            else:
                keep.append(record)
        opened: list[Sink] = []
        try:
            for sink in self.sinks:
                sink.open(run.path, run.config, resumed=resumed)
                opened.append(sink)
            replay(self.sinks, keep)
        except BaseException:
            for sink in opened:
                with contextlib.suppress(Exception):
                    sink.close()
            self.sinks = []
            raise

    def _catch_up(self, phase: str) -> None:
        self._pending.discard(phase)
        for record in self.run.records(phase):
            emit(self.sinks, record)

    def log(self, record: dict[str, Any]) -> None:
        """``RunDir.log(record)``, then forward it to the sinks."""
        if self._pending:
            # Before this record, in metrics.jsonl's order: the kept records
            # of its phase, and of a resumed phase that finished silently.
            for phase in sorted(self._pending):
                if phase == record.get("phase") or self.run.is_done(phase):
                    self._catch_up(phase)
        self.run.log(record)
        if self.sinks:
            emit(self.sinks, record)

    def close(self) -> None:
        """Close the sinks (idempotent). Does not close the run folder."""
        try:
            for phase in sorted(self._pending):
                if self.run.is_done(phase):
                    self._catch_up(phase)
        finally:
            sinks, self.sinks = self.sinks, []
            errors = []
            for sink in sinks:
                try:
                    sink.close()
                except Exception as err:  # close the others; report the first
                    errors.append(err)
            if errors:
                raise errors[0]

    def __enter__(self) -> Logger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
