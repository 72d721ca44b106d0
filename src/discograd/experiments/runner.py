"""A run folder that survives interruption and refuses to be shared or silently damaged.

Every experiment writes into one folder::

    config.json      the configuration (a re-run with another config is refused)
    metrics.jsonl    one JSON record per line, appended and flushed as they come
    state.json       finished phases, their results and a count and digest of their records
    results.json     the final results (rewritten atomically)
    ckpt-<name>.pt   checkpoints of phases in progress (rewritten atomically), each with
                     the count and digest of the records its phase had logged
    .lock            locked (``flock``) by the process using the folder; holds its pid

Re-running with the same folder resumes: finished phases are skipped (their
results come from ``state.json``), an unfinished phase restarts from its last
checkpoint, and the metrics it had logged after that checkpoint are dropped
before it logs them again, so ``metrics.jsonl`` never holds duplicates.

Nothing is lost or mixed up silently:

* one process at a time: a second one gets :class:`~discograd.errors.RunFolderBusy`
  naming the holder's pid. The kernel drops the lock when its holder dies,
  so a crash leaves no stale lock;
* the records of every finished phase, and those a checkpoint had seen, are
  verified on opening and resuming (count and a chained SHA-256 of the
  lines). A phase whose records were lost or changed is recomputed from its
  first step, with a :class:`~discograd.errors.RunFolderWarning`; runs are
  deterministic, so the recomputed records are the lost ones;
* a record cut short by a kill mid-write (the last line, without its newline)
  is the normal trace of an interruption and is dropped; a damaged line
  elsewhere, a damaged ``config.json``, ``state.json`` or checkpoint is a
  :class:`~discograd.errors.RunFolderError` naming the file and what to do;
* temporary files of a write that was killed are removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from discograd.errors import RunFolderBusy, RunFolderError, RunFolderWarning
from discograd.experiments.common import slug

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locking
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "CHECKPOINT_FORMAT",
    "RunDir",
    "atomic_save",
    "atomic_write_text",
    "is_run_folder",
    "progress",
]

#: version of the checkpoint layout written by :meth:`RunDir.save_checkpoint`
CHECKPOINT_FORMAT = 1

# Temporary files of atomic writes (``tempfile.mkstemp`` adds 8 characters).
_TEMP_FILE = re.compile(
    r"^\.(?:config\.json|state\.json|results\.json|metrics\.jsonl|report\.md"
    r"|(?:ckpt|images)-.+\.pt)\.[a-z0-9_]{8}$"
)


_UMASK_GUARD = threading.Lock()


def _file_mode() -> int:
    """The mode ``open()`` gives a new file under the process's umask (0644 under umask 022).

    ``tempfile.mkstemp`` creates files 0600 whatever the umask; the files of a
    run are written through it and then given this mode, like every other
    file the run writes (plots, ``metrics.jsonl``).
    """
    with _UMASK_GUARD:  # reading the umask means setting it
        mask = os.umask(0o077)
        os.umask(mask)
    return 0o666 & ~mask


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and ``os.replace``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_save(path: Path, obj: Any) -> None:
    """``torch.save`` to ``path`` via a temporary file and ``os.replace``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, _file_mode())
    finally:
        os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no inf/nan; keep them readable
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    return json.dumps(_jsonable(value), **kwargs)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


# ----------------------------------------------------------------- locking
# One lock per folder and process: RunDir objects of one process share it
# (a notebook or a test may open a folder again before dropping the old
# object); other processes are refused.
_HELD: dict[str, list[int]] = {}  # lock file -> [fd, number of open RunDirs]
_HELD_GUARD = threading.Lock()


def _read_pid(fd: int) -> str:
    with contextlib.suppress(OSError):
        return os.pread(fd, 32, 0).decode(errors="replace").strip()
    return ""


def _acquire(folder: Path) -> str:
    lock = folder / ".lock"
    key = os.path.realpath(lock)
    with _HELD_GUARD:
        if key in _HELD:
            _HELD[key][1] += 1
            return key
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise RunFolderError(
                f"cannot write to output folder {folder}: {err.strerror or err}"
            ) from err
        try:
            if fcntl is not None:
                for attempt in range(20):
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        holder = _read_pid(fd)
                        # An empty file: the holder has the lock but has not
                        # written its pid yet, or is just letting go. Ask again.
                        if holder or attempt == 19:
                            raise RunFolderBusy(
                                f"run folder {folder} is in use by another process "
                                f"(pid {holder or 'unknown'}); wait for it to finish, "
                                "or use another --out folder"
                            ) from None
                        time.sleep(0.05)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        _HELD[key] = [fd, 1]
        return key


def _release(key: str) -> None:
    with _HELD_GUARD:
        entry = _HELD.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _HELD[key]
            # An empty lock file names no holder; closing releases the lock.
            with contextlib.suppress(OSError):
                os.ftruncate(entry[0], 0)
            os.close(entry[0])


# ------------------------------------------------------------ record digests
def _chain(digest: str, line: str) -> str:
    return hashlib.sha256((digest + line).encode()).hexdigest()


def _tally(lines: Iterable[str]) -> tuple[int, str]:
    """(count, chained SHA-256) of record lines: any lost, added or changed line shows."""
    n, digest = 0, ""
    for line in lines:
        n, digest = n + 1, _chain(digest, line)
    return n, digest


def _valid_tally(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("n"), int)
        and not isinstance(entry.get("n"), bool)
        and isinstance(entry.get("sha256"), str)
    )


def _config_diff(old: dict, new: dict, volatile: frozenset[str], prefix: str = "") -> list[str]:
    """Keys (dotted paths) whose values differ, ignoring ``volatile`` keys at any depth."""
    out = []
    for k in sorted(set(old) | set(new)):
        if k in volatile:
            continue
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_diff(a, b, volatile, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


#: files whose presence makes a folder a discograd run (``results.json`` alone does not:
#: a user's own file of that name must not be taken for ours and overwritten)
_RUN_MARKERS = ("config.json", "state.json", "metrics.jsonl")


def is_run_folder(path: str | Path) -> bool:
    """Whether ``path`` holds (the remains of) a discograd run."""
    folder = Path(path)
    if any((folder / name).is_file() for name in _RUN_MARKERS):
        return True
    return any(folder.glob("ckpt-*.pt"))


def _visible_entries(folder: Path) -> list[str]:
    try:
        return sorted(n for n in os.listdir(folder) if not n.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _clear(folder: Path) -> None:
    """Delete everything in a run folder but its lock (``--fresh``)."""
    import shutil

    for name in os.listdir(folder):
        if name == ".lock":
            continue
        target = folder / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()


class RunDir:
    """The output folder of one experiment run.

    Args:
        path: the folder (created if needed). Opening it takes its lock for
            this process (released by :meth:`close`, on leaving a ``with``
            block, when the object is collected, or when the process ends
            in any way); another process holding it is a
            :class:`~discograd.errors.RunFolderBusy`.
        config: a JSON-serialisable dict describing the run. If the folder
            already holds a run, its config must be equal (keys listed in
            ``volatile`` excepted, at any depth), else
            :class:`~discograd.errors.RunFolderError`.
        volatile: config keys that may differ between a run and its
            resumption; by default the device, whose choice may change
            between runs (a phase in progress whose checkpoint was written
            on another kind of device restarts, see :meth:`resume`).
        fresh: start the run over: everything in the folder is deleted first
            (only a folder that holds a discograd run; see below).

    A folder that exists, is not empty (hidden files aside) and holds no
    discograd run is refused: writing there would overwrite a user's files of
    the same names. A folder holding the run of another command (config key
    ``command``) is refused with one line naming it. :attr:`resumed` tells
    whether the folder already held this run.

    Phases log records with :meth:`log`, call :meth:`resume` before their
    first record (it returns the checkpoint to continue from, if any),
    save checkpoints with :meth:`save_checkpoint` and end with :meth:`finish`.
    """

    def __init__(
        self,
        path: str | Path,
        config: dict[str, Any],
        volatile: Iterable[str] = ("device",),
        *,
        fresh: bool = False,
    ) -> None:
        self.path = Path(path)
        foreign = _visible_entries(self.path)
        if foreign and not is_run_folder(self.path):
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise RunFolderError(
                f"{self.path} is not empty ({shown}) and holds no discograd run; use a new or "
                "empty --out folder (nothing was written)"
            )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunFolderError(
                f"cannot write to output folder {self.path}: {err.strerror or err}"
            ) from err
        self._lock = _acquire(self.path)
        self._closer = weakref.finalize(self, _release, self._lock)
        self._t0 = time.monotonic()
        try:
            if fresh:
                _clear(self.path)
            self._open(config, frozenset(volatile))
        except BaseException:
            self.close()
            raise

    def _open(self, config: dict[str, Any], volatile: frozenset[str]) -> None:
        try:
            probe = self.path / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as err:
            raise RunFolderError(
                f"cannot write to output folder {self.path}: {err.strerror or err}"
            ) from err
        for name in os.listdir(self.path):
            if _TEMP_FILE.match(name):  # left by a write that was killed; we hold the lock
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path / name)
        self.config = json.loads(dumps(config))
        cfg_path = self.path / "config.json"
        self.resumed = cfg_path.exists()
        if cfg_path.exists():
            old = self._read_json(
                cfg_path,
                "restore it, or delete it if this command is the one that started the run, "
                "or use another --out folder",
            )
            if not isinstance(old, dict):
                raise RunFolderError(
                    f"{cfg_path} is damaged (not a JSON object); restore it, or delete it if "
                    "this command is the one that started the run, or use another --out folder"
                )
            was, now = old.get("command"), self.config.get("command")
            if was is not None and now is not None and was != now:
                raise RunFolderError(
                    f"{self.path} holds a {was} run; use another --out folder, or --fresh to "
                    f"replace it with a {now} run"
                )
            differ = _config_diff(old, self.config, volatile)
            if differ:
                raise RunFolderError(
                    f"{self.path} holds a run with a different configuration "
                    f"({', '.join(differ[:5])}); use another --out folder to start a new run, "
                    "or --fresh to start this one over"
                )
        atomic_write_text(cfg_path, dumps(self.config, indent=2, sort_keys=True) + "\n")
        self.metrics_path = self.path / "metrics.jsonl"
        self.state_path = self.path / "state.json"
        self.state = self._load_state()
        elapsed = self.state.get("elapsed", 0.0)
        self._elapsed_before = (
            float(elapsed)
            if isinstance(elapsed, (int, float)) and not isinstance(elapsed, bool)
            else 0.0
        )
        lines = self._read_metrics()
        self._tallies: dict[str, tuple[int, str]] = {}
        for phase in {p for _, p in lines if p is not None}:
            self._tallies[phase] = _tally(line for line, p in lines if p == phase)
        self._verify_finished(lines)

    def elapsed(self) -> float:
        """Seconds this run has taken, over every session that worked on it.

        Each session's time is saved with the state (after every finished
        phase and checkpoint), so an interrupted run keeps counting.
        """
        return self._elapsed_before + time.monotonic() - self._t0

    def close(self) -> None:
        """Release the folder's lock (for this object; idempotent)."""
        self._closer()

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ integrity
    def _read_json(self, path: Path, fix: str) -> Any:
        try:
            return json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise RunFolderError(f"{path} is damaged ({_first_line(err)}); {fix}") from err
        except OSError as err:
            raise RunFolderError(f"cannot read {path}: {err.strerror or err}") from err

    def _load_state(self) -> dict[str, Any]:
        if not self.state_path.exists():
            return {"done": {}, "records": {}}
        fix = "delete it to recompute the finished phases of this run, or use another --out folder"
        state = self._read_json(self.state_path, fix)
        ok = (
            isinstance(state, dict)
            and isinstance(state.get("done"), dict)
            and isinstance(state.setdefault("records", {}), dict)
            and all(_valid_tally(v) for v in state["records"].values())
        )
        if not ok:
            raise RunFolderError(
                f"{self.state_path} is damaged (not the state of a discograd run); {fix}"
            )
        return state

    def _read_metrics(self) -> list[tuple[str, str | None]]:
        """``(line, phase)`` of every record in ``metrics.jsonl``; a torn last line is dropped."""
        if not self.metrics_path.exists():
            return []
        data = self.metrics_path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            # A kill mid-write cut the last record short; it was never counted
            # by a checkpoint or a finished phase. Dropping it also makes the
            # next record start on a line of its own.
            with open(self.metrics_path, "r+b") as fh:
                fh.truncate(end)
                fh.flush()
                os.fsync(fh.fileno())
        out: list[tuple[str, str | None]] = []
        for number, raw in enumerate(data[:end].split(b"\n")[:-1], 1):
            try:
                line = raw.decode()
                rec = json.loads(line)
            except ValueError:  # also UnicodeDecodeError
                rec = None
            if not isinstance(rec, dict):
                raise RunFolderError(
                    f"{self.metrics_path} line {number} is not a record (the file was changed "
                    "outside discograd); delete that line to recompute the phases it belongs "
                    "to, or use another --out folder"
                )
            phase = rec.get("phase")
            out.append((line, phase if isinstance(phase, str) else None))
        return out

    def _rewrite_metrics(self, lines: list[tuple[str, str | None]]) -> None:
        atomic_write_text(self.metrics_path, "".join(line + "\n" for line, _ in lines))

    def _verify_finished(self, lines: list[tuple[str, str | None]]) -> None:
        """Recompute finished phases whose records are not the ones they logged."""
        done, counts = self.state["done"], self.state["records"]
        damaged = []
        for phase in list(counts):
            if phase not in done:
                del counts[phase]
                continue
            want = (counts[phase]["n"], counts[phase]["sha256"])
            have = self._tallies.get(phase, (0, ""))
            if have != want:
                damaged.append(phase)
                lost = f"{want[0] - have[0]} missing" if have[0] < want[0] else "changed"
                warnings.warn(
                    f"{self.metrics_path}: the records of finished phase {phase} are not the "
                    f"ones it logged ({have[0]} of {want[0]}, {lost}); recomputing the phase",
                    RunFolderWarning,
                    stacklevel=3,
                )
        for phase in done:
            # finish() writes the state before it removes the checkpoint.
            with contextlib.suppress(FileNotFoundError):
                self._ckpt(phase).unlink()
        if not damaged:
            return
        for phase in damaged:
            del done[phase], counts[phase]
            self._tallies.pop(phase, None)
        self._rewrite_metrics([(line, p) for line, p in lines if p not in damaged])
        self._write_state()

    # -------------------------------------------------------------- metrics
    def log(self, record: dict[str, Any]) -> None:
        """Append one record and flush it to disk."""
        line = dumps(record, sort_keys=True)
        with open(self.metrics_path, "a") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        phase = record.get("phase")
        if isinstance(phase, str):
            n, digest = self._tallies.get(phase, (0, ""))
            self._tallies[phase] = (n + 1, _chain(digest, line))

    def records(self, phase: str | None = None) -> list[dict[str, Any]]:
        """The logged records (of one phase), skipping a line cut short by a kill."""
        if not self.metrics_path.exists():
            return []
        out = []
        for line in self.metrics_path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if phase is None or (isinstance(rec, dict) and rec.get("phase") == phase):
                out.append(rec)
        return out

    def truncate(self, phase: str, after_step: int) -> None:
        """Drop ``phase``'s records with ``step > after_step`` (and any torn line)."""
        lines = self._read_metrics()
        keep = [
            (line, p)
            for line, p in lines
            if not (p == phase and json.loads(line).get("step", -1) > after_step)
        ]
        if len(keep) < len(lines) or not self.metrics_path.read_bytes().endswith(b"\n"):
            self._rewrite_metrics(keep)
        self._tallies[phase] = _tally(line for line, p in keep if p == phase)

    # --------------------------------------------------------------- phases
    def is_done(self, phase: str) -> bool:
        return phase in self.state["done"]

    def result(self, phase: str) -> Any:
        return self.state["done"][phase]

    def finish(self, phase: str, result: Any) -> None:
        """Record ``phase`` as finished with ``result`` and drop its checkpoint."""
        n, digest = self._tallies.get(phase, (0, ""))
        self.state["done"][phase] = json.loads(dumps(result))
        self.state["records"][phase] = {"n": n, "sha256": digest}
        self._write_state()
        with contextlib.suppress(FileNotFoundError):
            self._ckpt(phase).unlink()

    def _write_state(self) -> None:
        self.state["elapsed"] = round(self.elapsed(), 3)
        atomic_write_text(self.state_path, dumps(self.state, indent=2, sort_keys=True) + "\n")

    def resume(self, phase: str, device: torch.device | str | None = None) -> dict[str, Any] | None:
        """Where ``phase`` continues: its last checkpoint's state, or ``None`` to start afresh.

        ``metrics.jsonl`` is made to match: the records the checkpoint had
        seen are kept (after checking their count and digest), later ones are
        dropped, to be logged again; without a checkpoint all of the phase's
        records are dropped. If those records were lost or changed, or the
        checkpoint was written on another kind of device than ``device``
        (random streams do not move between devices), the phase restarts
        from its first step, with a :class:`~discograd.errors.RunFolderWarning`.
        """
        payload = self._load_payload(phase)
        lines = self._read_metrics()
        mine = [line for line, p in lines if p == phase]
        keep = 0
        if payload is not None:
            path = self._ckpt(phase)
            saved, now = payload.get("device"), None
            if device is not None:
                now = torch.device(device).type
            n = payload["records"]
            if saved is not None and now is not None and saved != now:
                problem = f"{path.name} was written on {saved} and this run uses {now}"
            elif _tally(mine[:n]) != (n, payload["sha256"]):
                problem = (
                    f"{self.metrics_path}: the first {n} records of phase {phase}, which "
                    f"checkpoint {path.name} had seen, were lost or changed"
                )
            else:
                problem, keep = None, n
            if problem is not None:
                warnings.warn(
                    f"{problem}; restarting phase {phase} from its first step",
                    RunFolderWarning,
                    stacklevel=2,
                )
                payload = None
                path.unlink(missing_ok=True)
        if keep < len(mine):
            seen = 0
            kept = []
            for line, p in lines:
                if p == phase:
                    seen += 1
                    if seen > keep:
                        continue
                kept.append((line, p))
            self._rewrite_metrics(kept)
        self._tallies[phase] = _tally(mine[:keep])
        return None if payload is None else payload["state"]

    @contextlib.contextmanager
    def restoring(self, phase: str) -> Iterator[None]:
        """Around code that loads a checkpoint's state: a state that does not fit names the file.

        A checkpoint of another version of the code, or a damaged one that
        still unpickles, fails with ``KeyError``, a shape mismatch and the
        like; those become a :class:`~discograd.errors.RunFolderError`.
        """
        try:
            yield
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError) as err:
            raise RunFolderError(
                f"{self._ckpt(phase)} does not fit this run ({_first_line(err)}); delete it to "
                f"restart phase {phase} from its first step"
            ) from err

    # ---------------------------------------------------------- checkpoints
    def _ckpt(self, phase: str) -> Path:
        return self.path / f"ckpt-{slug(phase)}.pt"

    def save_checkpoint(
        self, phase: str, state: dict[str, Any], device: torch.device | str | None = None
    ) -> None:
        """Save ``state`` atomically, with the count and digest of ``phase``'s records so far.

        ``device``: where the run's random streams live (checked by :meth:`resume`).
        """
        n, digest = self._tallies.get(phase, (0, ""))
        payload = {
            "format": CHECKPOINT_FORMAT,
            "phase": phase,
            "records": n,
            "sha256": digest,
            "device": None if device is None else torch.device(device).type,
            "state": state,
        }
        atomic_save(self._ckpt(phase), payload)
        self._write_state()  # keeps the time spent so far if this session is killed

    def _load_payload(self, phase: str) -> dict[str, Any] | None:
        path = self._ckpt(phase)
        if not path.exists():
            return None
        fix = f"delete it to restart phase {phase} from its first step"
        try:
            payload = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # a damaged file fails in many ways: EOFError, UnpicklingError...
            raise RunFolderError(f"{path} is damaged ({_first_line(err)}); {fix}") from err
        ok = (
            isinstance(payload, dict)
            and payload.get("format") == CHECKPOINT_FORMAT
            and isinstance(payload.get("records"), int)
            and isinstance(payload.get("sha256"), str)
            and isinstance(payload.get("state"), dict)
        )
        if not ok:
            raise RunFolderError(
                f"{path} is not a checkpoint of this version of discograd, or is damaged; {fix}"
            )
        return payload

    def load_checkpoint(self, phase: str) -> dict[str, Any] | None:
        """The state saved by the last :meth:`save_checkpoint` of ``phase`` (``None``: none).

        Only reads: :meth:`resume` is the way to continue a phase.
        """
        payload = self._load_payload(phase)
        return None if payload is None else payload["state"]

    # -------------------------------------------------------------- results
    def write_results(self, results: dict[str, Any]) -> None:
        atomic_write_text(
            self.path / "results.json", dumps(results, indent=2, sort_keys=True) + "\n"
        )


@contextlib.contextmanager
def progress(total: int, desc: str, *, quiet: bool = False, initial: int = 0) -> Iterator[Any]:
    """A tqdm progress bar on stderr (a no-op object when quiet or tqdm is absent)."""
    bar: Any
    if quiet:
        bar = _NullBar()
    else:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            bar = _NullBar()
        else:
            bar = tqdm(total=total, desc=desc, initial=initial, leave=False, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass
