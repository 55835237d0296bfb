"""One run per profile at a time: an flock(2) on a file in the profile's state folder.

The kernel drops the lock when the holder dies, and no child process inherits
it, so a stale lock never blocks. A lock file someone removed during a run
cannot give a second run the profile: the catalog keeps each run's
:class:`Owner` and the engine refuses to start while a running run's owner lives.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from freezeframe.errors import BusyError
from freezeframe.records import iso

__all__ = ["Holder", "Owner", "ProfileLock", "holder", "proc_stat"]

#: How often to try again when the lock file was replaced between open and flock.
_REOPEN_TRIES = 5


class ProfileLock:
    """Hold the lock of one profile for the duration of a ``with`` block."""

    def __init__(self, path: Path, profile: str, command: str) -> None:
        self.path = path
        self.profile = profile
        self.command = command
        self._fd: int | None = None

    def __enter__(self) -> ProfileLock:
        for _ in range(_REOPEN_TRIES):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                who = _read_holder(fd)
                os.close(fd)
                raise BusyError(
                    f"profile {self.profile!r} is busy: {who} holds {self.path}"
                ) from None
            if self._names(fd):
                break
            os.close(fd)  # removed or replaced while we locked it: that lock guards nothing
        else:
            raise BusyError(f"profile {self.profile!r}: {self.path} keeps being replaced")
        record = {"pid": os.getpid(), "command": self.command, "since": iso(time.time())}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
        except OSError as e:  # a full or read-only disk: say which file
            os.close(fd)
            raise OSError(e.errno, e.strerror, str(self.path)) from None
        self._fd = fd
        return self

    def _names(self, fd: int) -> bool:
        """Whether the lock file's path still names the file ``fd`` has open."""
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None


@dataclass(frozen=True)
class Holder:
    """The process holding a profile's lock, as it wrote itself into the lock file
    (``None`` where the file does not say: a holder that has not written it yet)."""

    pid: int | None = None
    #: The verb it runs: ``backup``, ``drill``, ``prune``, ``reconcile``...
    command: str | None = None
    #: When it took the lock (ISO 8601).
    since: str | None = None

    def __str__(self) -> str:
        if self.pid is None:
            return "another process"
        return f"pid {self.pid} (freezeframe {self.command}, since {self.since})"


def _read_holder(fd: int) -> Holder:
    """What the lock file open at ``fd`` says of its holder."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return Holder(int(info["pid"]), str(info["command"]), str(info["since"]))
    except (ValueError, KeyError, TypeError, OSError):
        return Holder()


def holder(path: Path) -> Holder | None:
    """Who holds the lock at ``path`` now (``None``: nobody, or there is no lock file).

    Never waits, creates nothing and needs no write access (a read-only state folder
    will do): it tries a shared ``flock`` and lets go of it at once. A command that tries
    to take the lock in those few microseconds finds the profile busy, as it does while
    ``list`` takes the lock for a moment to reconcile."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        return None  # closing the descriptor lets go of the shared lock
    finally:
        os.close(fd)


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:  # no such file in some sandboxes: the start time still tells pids apart
        return ""


def proc_stat(pid: int) -> list[bytes] | None:
    """The fields of ``/proc/PID/stat`` from the third on (state, ppid, pgrp, ...: field N
    is item N - 3), or ``None`` when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ")"
    return stat[stat.rindex(b")") + 2 :].split()


def _start_ticks(pid: int, *, zombie: bool = False) -> int | None:
    """Field 22 of ``/proc/PID/stat``: when the process started, in clock ticks since boot
    (``None`` when there is no such process, or only its zombie unless ``zombie``)."""
    fields = proc_stat(pid)
    if fields is None:
        return None
    if fields[0] in (b"Z", b"X") and not zombie:  # dead, not yet reaped by its parent
        return None
    return int(fields[22 - 3])


@dataclass(frozen=True)
class Owner:
    """One process, told apart from any later process that reuses its pid."""

    pid: int
    boot_id: str
    start_ticks: int

    @classmethod
    def of(cls, pid: int, *, zombie: bool = False) -> Owner | None:
        """The process ``pid`` now (``None`` when there is none; with ``zombie``, also one
        that has ended but that its parent has not reaped yet)."""
        ticks = _start_ticks(pid, zombie=zombie)
        return None if ticks is None else cls(pid, _boot_id(), ticks)

    @classmethod
    def me(cls) -> Owner:
        """This process."""
        owner = cls.of(os.getpid())
        assert owner is not None
        return owner

    def alive(self) -> bool:
        """Whether this very process still runs (not merely a process with its pid)."""
        return Owner.of(self.pid) == self
