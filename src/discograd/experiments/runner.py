"""A run folder that survives interruption: config, streamed metrics, checkpoints, results.

Every experiment writes into one folder::

    config.json      the configuration (a re-run with another config is refused)
    metrics.jsonl    one JSON record per line, appended and flushed as they come
    state.json       finished phases and their results (rewritten atomically)
    results.json     the final results (rewritten atomically)
    ckpt-<name>.pt   checkpoints of phases in progress (rewritten atomically)

Re-running with the same folder resumes: finished phases are skipped (their
results come from ``state.json``), an unfinished phase restarts from its last
checkpoint, and the metrics it had logged after that checkpoint are dropped
before it logs them again, so ``metrics.jsonl`` never holds duplicates. A
record cut short by a kill mid-write is ignored.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from discograd.experiments.common import slug

__all__ = ["RunDir", "atomic_write_text", "progress"]


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and ``os.replace``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
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


class RunDir:
    """The output folder of one experiment run.

    Args:
        path: the folder (created if needed).
        config: a JSON-serialisable dict describing the run. If the folder
            already holds a run, its config must be equal (keys listed in
            ``volatile`` excepted: output, verbosity and device choices), else
            ``ValueError``.
        volatile: config keys that may differ between a run and its resumption.
    """

    def __init__(
        self, path: str | Path, config: dict[str, Any], volatile: Iterable[str] = ()
    ) -> None:
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as err:
            raise OSError(
                f"cannot write to output folder {self.path}: {err.strerror or err}"
            ) from err
        self.config = json.loads(dumps(config))
        volatile = set(volatile)
        cfg_path = self.path / "config.json"
        if cfg_path.exists():
            old = json.loads(cfg_path.read_text())
            differ = sorted(
                k
                for k in set(old) | set(self.config)
                if k not in volatile and old.get(k) != self.config.get(k)
            )
            if differ:
                details = ", ".join(
                    f"{k}: {old.get(k)!r} -> {self.config.get(k)!r}" for k in differ[:5]
                )
                raise ValueError(
                    f"{self.path} holds a run with a different configuration ({details}); "
                    "use another --out folder to start a new run"
                )
        atomic_write_text(cfg_path, dumps(self.config, indent=2, sort_keys=True) + "\n")
        self.metrics_path = self.path / "metrics.jsonl"
        self.state_path = self.path / "state.json"
        self.state: dict[str, Any] = (
            json.loads(self.state_path.read_text()) if self.state_path.exists() else {"done": {}}
        )

    # -------------------------------------------------------------- metrics
    def log(self, record: dict[str, Any]) -> None:
        """Append one record and flush it to disk."""
        with open(self.metrics_path, "a") as fh:
            fh.write(dumps(record, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def records(self, phase: str | None = None) -> list[dict[str, Any]]:
        """The logged records (of one phase), skipping a line cut short by a kill."""
        if not self.metrics_path.exists():
            return []
        out = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if phase is None or rec.get("phase") == phase:
                out.append(rec)
        return out

    def truncate(self, phase: str, after_step: int) -> None:
        """Drop ``phase``'s records with ``step > after_step`` (and any torn line)."""
        if not self.metrics_path.exists():
            return
        keep = [
            r
            for r in self.records()
            if not (r.get("phase") == phase and r.get("step", -1) > after_step)
        ]
        atomic_write_text(self.metrics_path, "".join(dumps(r, sort_keys=True) + "\n" for r in keep))

    # --------------------------------------------------------------- phases
    def is_done(self, phase: str) -> bool:
        return phase in self.state["done"]

    def result(self, phase: str) -> Any:
        return self.state["done"][phase]

    def finish(self, phase: str, result: Any) -> None:
        """Record ``phase`` as finished with ``result`` and drop its checkpoint."""
        self.state["done"][phase] = json.loads(dumps(result))
        atomic_write_text(self.state_path, dumps(self.state, indent=2, sort_keys=True) + "\n")
        with contextlib.suppress(FileNotFoundError):
            self._ckpt(phase).unlink()

    # ---------------------------------------------------------- checkpoints
    def _ckpt(self, phase: str) -> Path:
        return self.path / f"ckpt-{slug(phase)}.pt"

    def save_checkpoint(self, phase: str, state: dict[str, Any]) -> None:
        target = self._ckpt(phase)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=self.path)
        os.close(fd)
        try:
            torch.save(state, tmp)
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def load_checkpoint(self, phase: str) -> dict[str, Any] | None:
        path = self._ckpt(phase)
        if not path.exists():
            return None
        return torch.load(path, map_location="cpu", weights_only=False)

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
