"""One run per profile at a time: an flock(2) on a file in the profile's state folder.

The kernel drops the lock when the holder dies, so a stale lock never blocks.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from types import TracebackType

from freezeframe.errors import BusyError
from freezeframe.records import iso

__all__ = ["ProfileLock"]


class ProfileLock:
    """Hold the lock of one profile for the duration of a ``with`` block."""

    def __init__(self, path: Path, profile: str, command: str) -> None:
        self.path = path
        self.profile = profile
        self.command = command
        self._fd: int | None = None

    def __enter__(self) -> ProfileLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(fd)
            os.close(fd)
            raise BusyError(
                f"profile {self.profile!r} is busy: {holder} holds {self.path}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(
            fd,
            json.dumps(
                {"pid": os.getpid(), "command": self.command, "since": iso(time.time())}
            ).encode(),
            0,
        )
        self._fd = fd
        return self

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            info = json.loads(os.pread(fd, 4096, 0) or b"{}")
            return f"pid {info['pid']} (freezeframe {info['command']}, since {info['since']})"
        except (ValueError, KeyError, OSError):
            return "another process"

    @property
    def fd(self) -> int | None:
        """The locked file descriptor (a child given it holds the lock until it closes it)."""
        return self._fd

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None
