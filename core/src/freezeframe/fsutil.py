"""Small filesystem facilities every package needs once: private dirs, fsync, syncfs,
and where an original path lives below another root."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlencode

from freezeframe.errors import FreezeframeError

__all__ = ["ensure_private_dir", "fsync_dir", "sqlite_uri", "syncfs", "under", "writable_dir"]

log = logging.getLogger(__name__)
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def ensure_private_dir(path: Path) -> Path:
    """Make ``path`` a folder of mode 0700; every missing folder above it is created 0700
    too (the state dir, and ``freezeframe`` under ``$XDG_STATE_HOME``); folders that
    already exist above it are left as they are."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile: tightened below if ours
            folder.mkdir(mode=0o700)
            folder.chmod(0o700)  # whatever the umask
    if path.stat().st_mode & 0o777 != 0o700:
        path.chmod(0o700)
    return path


def writable_dir(path: Path, what: str = "dir") -> Path:
    """Make the folder ``path`` (mode 0700, with its parents) if it is missing, and make
    sure this user may write in it; a one-line :class:`FreezeframeError` naming ``what``
    (a backend's ``dir``) if not."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise FreezeframeError(f"{what} {path}: cannot create it: {e.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise FreezeframeError(f"{what} {path}: not writable by this user")
    return path


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def syncfs(paths: Iterable[Path]) -> int:
    """``syncfs(2)`` once per filesystem holding any of ``paths``; returns how many were synced.

    Done before the freeze window opens so that a snapshot inside it has
    little dirty data left to write.
    """
    done: set[int] = set()
    for path in paths:
        probe = path if path.is_dir() else path.parent
        try:
            dev = probe.stat().st_dev
        except OSError:
            continue
        if dev in done:
            continue
        fd = os.open(probe, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _libc.syncfs(fd) != 0:
                err = ctypes.get_errno()
                log.warning("syncfs(%s) failed: %s", probe, os.strerror(err))
        finally:
            os.close(fd)
        done.add(dev)
    return len(done)


def sqlite_uri(path: Path, **params: str) -> str:
    """A SQLite ``file:`` URI that names ``path`` and nothing else, with ``params``.

    Unescaped, SQLite would end the name at a ``#`` or ``?`` (opening, and
    creating, ``/srv/shop`` for ``/srv/shop#1.db``) and decode a ``%41``:
    ``as_uri`` percent-escapes every such byte.
    """
    return f"{Path(path).absolute().as_uri()}?{urlencode(params)}"


def under(root: Path, original: Path | str) -> Path:
    """Where the absolute path ``original`` is below ``root``: a restore target or a
    snapshot view holds every file at ``root`` + its original absolute path
    (``under(Path("/restore"), "/srv/shop/orders.db")`` is ``/restore/srv/shop/orders.db``).
    Raises :class:`ValueError` for a relative ``original``."""
    path = Path(original)
    if not path.is_absolute():
        raise ValueError(f"{original!s} is not an absolute path")
    return root / path.relative_to("/")
