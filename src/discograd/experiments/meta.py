"""``meta.json``: what produced a run — code version, environment, command line, times.

A run folder's ``meta.json`` (rewritten atomically)::

    {
      "format": 1,
      "discograd": "0.1.0",            # discograd.__version__
      "git_commit": "3f2c...",         # HEAD of the checkout discograd was imported from;
                                       #   null when it is not a git checkout (an installed wheel)
      "git_dirty": false,              # the package's source differs from that commit
                                       #   (changed, staged or new files); null without a commit
      "torch": "2.5.1", "cuda": null,  # torch.__version__, torch.version.cuda
      "python": "3.11.7", "platform": "Linux-6.1-x86_64-with-glibc2.36", "hostname": "...",
      "device": "cpu", "device_name": null,   # device_name: the GPU's name on CUDA
      "threads": 2,                    # torch.get_num_threads()
      "argv": ["discograd", "vae", "--steps", "300"],       # sys.argv
      "started": "2025-06-01T10:00:00.000+02:00",  # the first session's start (ISO 8601)
      "ended": "2025-06-01T10:05:00.000+02:00",    # the last session's end; null while it runs
                                                   #   or when it was killed
      "wall_seconds": 300.0,           # summed over the sessions that ended
      "sessions": [ {...}, ... ]       # one per start of the command on this folder
    }

Each session holds ``started``, ``ended``, ``wall_seconds``, ``pid`` and every
field above from ``discograd`` to ``argv``, as they were in that session; the
top-level fields are those of the latest session (a run resumed with other
code or on another device shows both). A session without an end was killed.
Reading the git commit never fails: no git, no checkout or a slow ``git``
give ``null``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import re
import socket
import subprocess
import sys
import warnings
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from discograd.errors import RunFolderWarning
from discograd.experiments.runner import atomic_write_text

__all__ = ["META_FORMAT", "git_info", "now", "write_meta"]

#: version of the layout of meta.json
META_FORMAT = 1

_PACKAGE_DIR = Path(__file__).resolve().parent.parent
_TEMP = re.compile(r"^\.meta\.json\.[a-z0-9_]{8}$")


def now() -> datetime:
    """The current time with the local time zone (what ``write_meta`` expects)."""
    return datetime.now().astimezone()


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def _git(folder: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=folder,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return done.stdout if done.returncode == 0 else None


@functools.lru_cache(maxsize=8)
def git_info(folder: Path = _PACKAGE_DIR) -> dict[str, Any]:
    """``{"commit": sha | None, "dirty": bool | None}`` of the git checkout holding ``folder``.

    ``folder`` (by default the ``discograd`` package) counts as a checkout
    only if its ``__init__.py`` is tracked there: an installed copy inside an
    unrelated repository (a ``.venv`` in a project) has no commit. Cached per
    process: the code that runs is the code that was imported.
    """
    none: dict[str, Any] = {"commit": None, "dirty": None}
    if (
        not folder.is_dir()
        or _git(folder, "ls-files", "--error-unmatch", "--", "__init__.py") is None
    ):
        return none
    commit = _git(folder, "rev-parse", "--verify", "HEAD")
    if not commit:
        return none
    status = _git(folder, "status", "--porcelain", "--", ".")
    return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}


def _environment(device: torch.device | str, argv: Sequence[str]) -> dict[str, Any]:
    from discograd import __version__

    dev = torch.device(device)
    device_name = None
    if dev.type == "cuda":
        with contextlib.suppress(Exception):  # metadata must never stop a run
            device_name = torch.cuda.get_device_name(dev)
    git = git_info()
    return {
        "discograd": __version__,
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "device": str(dev),
        "device_name": device_name,
        "threads": torch.get_num_threads(),
        "argv": [str(a) for a in argv],
    }


def _read(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        meta = None
    if not isinstance(meta, dict) or not isinstance(meta.get("sessions"), list):
        # Metadata must not stop a run: start it over, and say so.
        warnings.warn(
            f"{path} is damaged; writing it again with this session only",
            RunFolderWarning,
            stacklevel=3,
        )
        return None
    return meta


def write_meta(
    out: str | Path,
    *,
    device: torch.device | str,
    argv: Sequence[str] | None = None,
    started: datetime,
    ended: datetime | None = None,
) -> dict[str, Any]:
    """Write ``out/meta.json`` for the session that started at ``started``; return its content.

    Call it when a command starts (``ended=None``) and again when it ends,
    with the same ``started`` (from :func:`now`). A folder that already has
    a ``meta.json`` keeps its earlier sessions, so the run's ``started`` is
    the first session's. ``argv`` defaults to ``sys.argv``.
    """
    out = Path(out)
    path = out / "meta.json"
    started = started.astimezone()  # naive times are local time
    ended = None if ended is None else ended.astimezone()
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(out):
            if _TEMP.match(entry.name):  # left by a write that was killed
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
    old = _read(path)
    sessions: list[dict[str, Any]] = [
        s for s in (old or {}).get("sessions", []) if isinstance(s, dict)
    ]
    start = _iso(started)
    session: dict[str, Any] = {
        "started": start,
        "ended": None if ended is None else _iso(ended),
        "wall_seconds": None if ended is None else round((ended - started).total_seconds(), 3),
        "pid": os.getpid(),
        **_environment(device, sys.argv if argv is None else argv),
    }
    for i, s in enumerate(sessions):
        if s.get("started") == start and s.get("pid") == session["pid"]:
            sessions[i] = session
            break
    else:
        sessions.append(session)
    walls = [s["wall_seconds"] for s in sessions if isinstance(s.get("wall_seconds"), (int, float))]
    latest = sessions[-1]
    meta = {
        "format": META_FORMAT,
        **{k: v for k, v in latest.items() if k not in ("started", "ended", "wall_seconds", "pid")},
        "started": sessions[0].get("started", start),
        "ended": latest["ended"],
        "wall_seconds": round(sum(walls), 3) if walls else None,
        "sessions": sessions,
    }
    atomic_write_text(path, json.dumps(meta, indent=2) + "\n")
    return meta
