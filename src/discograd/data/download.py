"""Checksummed, atomic downloads into a cache directory.

A file is streamed into a temporary file in the destination folder while its
MD5 is computed; only a file whose checksum matches is moved into place, with
``os.replace`` (atomic on POSIX and Windows). A failed or corrupted download
leaves nothing behind but an error that says what to do: no partial file, and
no folder that the download itself had to create.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "ChecksumError",
    "DownloadError",
    "default_data_dir",
    "download",
    "make_dirs",
    "md5sum",
    "remove_dirs",
]

_CHUNK = 1 << 20


class DownloadError(OSError):
    """No mirror could deliver a file."""


class ChecksumError(DownloadError):
    """A file arrived, but not the file we expected."""


def default_data_dir() -> Path:
    """``$DISCOGRAD_DATA`` if set, else ``$XDG_CACHE_HOME/discograd`` (``~/.cache/discograd``)."""
    env = os.environ.get("DISCOGRAD_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "discograd"


def make_dirs(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return those created, outermost first."""
    missing = []
    p = folder
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    missing.reverse()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # e.g. no permission half way down: take back the part that was made
        remove_dirs(missing)
        raise
    return missing


def remove_dirs(created: Sequence[Path]) -> None:
    """Undo :func:`make_dirs`: remove the folders it created, innermost first, if still empty."""
    for p in reversed(created):
        try:
            p.rmdir()
        except OSError:  # not empty (someone else wrote there meanwhile) or already gone
            return


def md5sum(path: str | Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def download(
    name: str,
    dest_dir: str | Path,
    mirrors: Sequence[str],
    md5: str,
    *,
    timeout: float = 60.0,
    quiet: bool = False,
) -> Path:
    """Fetch ``name`` from the first mirror that serves it with the right MD5.

    Args:
        name: file name, appended to each mirror's base URL.
        dest_dir: the folder to put it in (created if needed, and removed again,
            with any parents this call created, when the download fails).
        mirrors: base URLs ending in ``/``, tried in order.
        md5: expected hex digest of the file as served.
        timeout: seconds per connection attempt.
        quiet: no progress line on stderr.

    Returns the path of the verified file. Raises :class:`ChecksumError` when a
    mirror served a different file, :class:`DownloadError` when none could be
    reached; in both cases no partial file and no folder made by this call remains.
    """
    dest_dir = Path(dest_dir)
    target = dest_dir / name
    if target.exists() and md5sum(target) == md5:
        return target
    created = make_dirs(dest_dir)
    try:
        return _fetch(name, dest_dir, mirrors, md5, timeout=timeout, quiet=quiet)
    except BaseException:  # also Ctrl-C: leave the file system as it was found
        remove_dirs(created)
        raise


def _fetch(
    name: str, dest_dir: Path, mirrors: Sequence[str], md5: str, *, timeout: float, quiet: bool
) -> Path:
    target = dest_dir / name
    problems: list[str] = []
    bad_checksum = False
    for base in mirrors:
        url = base + name
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=dest_dir)
        tmp = Path(tmp_name)
        try:
            digest = hashlib.md5(usedforsecurity=False)
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                if not quiet:
                    print(f"downloading {url}", flush=True, file=_stderr())
                for block in iter(lambda: resp.read(_CHUNK), b""):
                    digest.update(block)
                    out.write(block)
            got = digest.hexdigest()
            if got != md5:
                bad_checksum = True
                problems.append(f"{url}: MD5 {got}, expected {md5}")
                continue
            os.replace(tmp, target)
            return target
        except (urllib.error.URLError, OSError, ValueError) as err:
            problems.append(f"{url}: {getattr(err, 'reason', err)}")
        finally:
            tmp.unlink(missing_ok=True)
    advice = (
        f"nothing was written to {dest_dir}. Retry later, or download {name} by hand "
        f"(MD5 {md5}) into {dest_dir}, or point --dataset / DISCOGRAD_DATA at a folder "
        "that holds the IDX files"
    )
    kind = ChecksumError if bad_checksum else DownloadError
    raise kind(f"could not download {name}: " + "; ".join(problems) + f". {advice}")


def _stderr():
    import sys

    return sys.stderr
