"""``capture = "logical"``: a ``mariadb-dump`` whose snapshot begins while commits are blocked.

Inside the window, on the connection that holds ``BACKUP STAGE BLOCK_COMMIT``,
the quiesce starts ``mariadb-dump --single-transaction`` and waits until the
dump's own stderr says that its ``START TRANSACTION WITH CONSISTENT SNAPSHOT``
has returned (``--verbose``: the first progress line after ``-- Starting
transaction...``). No commit can happen between the block and that snapshot,
so the dump holds exactly what was committed at the block, where the binary
log position was read. The thaw ends the block; the dump reads on from its
snapshot into an unnamed file (``O_TMPFILE``: it vanishes with freezeframe),
and the completion copies it, once it exited 0 and ended with ``-- Dump
completed``, into each snapshot view at ``<dump_path>/all-databases.sql``.

The password reaches the dump in an options file that exists only in memory
(a ``memfd``, mode 0600, inherited as ``/dev/fd/N``): never in argv, never on
disk, gone with the process.

A restore turns the dump back into a datadir: :mod:`._reload`.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from freezeframe.plugin import (
    Artifact,
    Deadline,
    FreezeframeError,
    QuiesceError,
    ToolError,
    make_parents,
)
from freezeframe_mariadb._child import Child
from freezeframe_mariadb._layout import Layout
from freezeframe_mariadb._server import Server, program

__all__ = ["DUMP_FILE", "OPTIONS", "PRIVILEGES", "Dump", "problem"]

#: The dump's name in its folder (``dump_path``) of each view.
DUMP_FILE = "all-databases.sql"
#: What ``mariadb-dump`` is asked, after the connection's options.
OPTIONS = (
    "--single-transaction",  # one consistent-snapshot transaction: the capture
    "--skip-lock-tables",  # no LOCK TABLES, no FLUSH TABLES: they would wait on our block
    "--all-databases",
    "--routines",
    "--events",
    "--triggers",
    "--flush-privileges",  # the grants loaded from the mysql database take effect
    "--hex-blob",  # binary columns survive any client character set
    "--default-character-set=utf8mb4",
    "--max-allowed-packet=1G",  # the largest row the server can hold
    "--no-tablespaces",  # NDB only; spares a slow INFORMATION_SCHEMA.FILES query in the window
    "--verbose",  # its progress on stderr: how the quiesce sees its snapshot begin
)
#: mariadb-dump's line just before ``START TRANSACTION WITH CONSISTENT SNAPSHOT``.
_BEGINNING = "-- Starting transaction"
#: The last line of a dump that ran to its end.
_COMPLETED = b"-- Dump completed"
_ERROR = re.compile(r"\berror\b", re.IGNORECASE)
#: Lines of stderr kept for messages (its progress lines are only counted).
_KEPT = 20


#: What ``mariadb-dump`` needs besides RELOAD, to read every table, view, trigger and event.
PRIVILEGES = ("SELECT", "SHOW VIEW", "TRIGGER", "EVENT")


def problem(
    server: Server, layout: Layout, lock: str, dump_path: Path, bin_dir: Path | None
) -> str | None:
    """Why the logical mode cannot work with ``server``, ``lock``, ``dump_path`` and the
    tools here."""
    if layout.is_data(dump_path):  # a restore makes a fresh datadir where the dump would be
        return f"dump_path {dump_path} lies in the server's data folders: choose one outside"
    if not server.backup_stage:
        return (
            'capture = "logical" needs MariaDB 10.4 or later (BACKUP STAGE blocks commits '
            f'while the dump begins), not {server.product}; use capture = "snapshot" with an '
            "atomic snapshot backend"
        )
    if lock == "flush-tables":
        return (
            'capture = "logical" blocks commits with BACKUP STAGE (FLUSH TABLES WITH READ '
            'LOCK would hold the dump back): remove lock = "flush-tables"'
        )
    try:
        program("mariadb-dump", bin_dir)
    except FreezeframeError as e:
        where = f", nor in bin_dir {bin_dir}" if bin_dir else ""
        return (
            f'{e}{where}; capture = "logical" needs it: install the MariaDB client programs, '
            "or set bin_dir"
        )
    return None


def _quoted(value: str) -> str:
    """``value`` as a double-quoted option-file value (my_default.c's escapes)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    for char, escape in (("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"), ("\b", "\\b")):
        escaped = escaped.replace(char, escape)
    return f'"{escaped}"'


def _options_in_memory(password: str) -> int:
    """A descriptor of an options file that exists only in memory, mode 0600 (a client
    ignores a world-writable one, which a new memfd is)."""
    fd = os.memfd_create("freezeframe-mariadb.cnf", os.MFD_CLOEXEC)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, f"[client]\npassword={_quoted(password)}\n".encode())
    except BaseException:
        os.close(fd)
        raise
    return fd


def _unnamed_file() -> int:
    """A file in the temp folder with no name: nothing to remove, whatever happens."""
    folder = tempfile.gettempdir()
    try:
        return os.open(folder, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
    fd, name = tempfile.mkstemp(prefix="freezeframe-mariadb-", suffix=".sql")
    os.unlink(name)  # a filesystem without O_TMPFILE: unnamed at once
    return fd


class Dump:
    """One run's ``mariadb-dump``: started in the window, finished and placed after the thaw."""

    def __init__(
        self, who: str, argv: Sequence[str], password: str | None, env: Mapping[str, str]
    ) -> None:
        """``argv``: the tool and its connection options (no password: ``password`` goes
        in the options file); ``env``: its environment."""
        self.who = who
        self._argv = list(argv)
        self._password = password
        self._env = dict(env)
        self._out = -1
        self._options = -1
        self._child: Child | None = None
        self._begun = self._snapshot = False
        self._said: list[str] = []  # stderr lines other than progress, the last _KEPT
        self._started = 0.0
        #: Facts for describe(): snapshot and dump times, the dump's size, warnings.
        self.facts: dict[str, Any] = {}

    def _line(self, line: str) -> None:
        if line.startswith("-- "):
            if self._begun:
                self._snapshot = True
            elif line.startswith(_BEGINNING):
                self._begun = True
            return
        self._said = [*self._said[-(_KEPT - 1) :], line]

    def _why(self, child: Child) -> str:
        errors = [s for s in self._said if _ERROR.search(s)]
        last = (errors or self._said or ["no message"])[-1]
        return f"{child.tool} failed (exit {child.returncode}): {last}"

    def start(self, deadline: Deadline, stop: Callable[[], bool]) -> None:
        """Start the dump and return once its consistent snapshot exists (the caller holds
        the commit block); :class:`QuiesceError` if it does not by the deadline."""
        self._out = _unnamed_file()
        argv = list(self._argv)
        fds: tuple[int, ...] = ()
        if self._password is not None:
            self._options = _options_in_memory(self._password)
            fds = (self._options,)
            # must be the first option; the files of /etc and ~/.my.cnf are still read
            argv.insert(1, f"--defaults-extra-file=/dev/fd/{self._options}")
        child = Child([*argv, *OPTIONS], stdout=self._out, pass_fds=fds, env=self._env,
                      on_line=self._line)  # fmt: skip
        self._child = child
        self._started = time.monotonic()
        try:
            child.start()
        except ToolError as e:
            raise QuiesceError(f"{self.who}: {e}") from None
        if child.wait_for(lambda: self._snapshot, deadline.remaining(), stop):
            self.facts["dump_snapshot_ms"] = round((time.monotonic() - self._started) * 1000, 3)
            return
        if child.returncode == 0 and self._begun:  # a small dump, finished already
            return
        child.kill()
        if child.returncode is not None:
            why = self._why(child)
        elif stop():
            why = "interrupted (the run is stopping)"
        else:
            why = "gave up at the deadline"
        raise QuiesceError(f"{self.who}: the dump's snapshot did not begin: {why}")

    def finish(self, stop: Callable[[], bool]) -> None:
        """Wait for the dump to end (``stop()``: kill it); :class:`FreezeframeError` unless
        it exited 0, said no error and wrote its last line."""
        child = self._child
        if child is None:
            raise FreezeframeError(f"{self.who}: no dump was started to complete")
        child.wait_for(lambda: False, None, stop)
        if child.returncode is None:
            child.kill()
            raise FreezeframeError(f"{self.who}: the dump was stopped (the run is stopping)")
        child.close()  # the keeper has read the last of stderr
        if child.returncode != 0 or any(_ERROR.search(s) for s in self._said):
            raise FreezeframeError(f"{self.who}: {self._why(child)}")
        size = os.fstat(self._out).st_size
        if _COMPLETED not in os.pread(self._out, 256, max(0, size - 256)):
            raise FreezeframeError(
                f"{self.who}: {child.tool} exited 0 but its dump does not end with "
                "'-- Dump completed': it is incomplete"
            )
        self.facts["dump_ms"] = round((time.monotonic() - self._started) * 1000, 3)
        self.facts["dump_bytes"] = size
        if self._said:
            self.facts["dump_warnings"] = self._said[-5:]

    def place(self, snapshots: Sequence[Artifact], dump_path: Path) -> None:
        """Copy the finished dump into each view at ``<dump_path>/all-databases.sql``,
        each copy whole (a temporary name, then a rename)."""
        size = os.fstat(self._out).st_size
        for snapshot in snapshots:
            if snapshot.view is None:
                continue
            folder = _folder_in(snapshot, dump_path)
            tmp = folder / f".{DUMP_FILE}.{os.getpid()}.partial"
            try:
                out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                try:
                    done = 0
                    while done < size:
                        n = os.sendfile(out, self._out, done, min(size - done, 8 << 20))
                        if n == 0:
                            raise FreezeframeError(f"{self.who}: the dump shrank while copied")
                        done += n
                    os.fsync(out)
                finally:
                    os.close(out)
                os.rename(tmp, folder / DUMP_FILE)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

    def kill(self) -> None:
        """Kill the dump if it runs (from any thread; never blocks)."""
        if self._child is not None:
            self._child.kill()

    def close(self) -> None:
        """Kill the dump if it still runs, reap it, drop its file and options. Idempotent."""
        if self._child is not None:
            self._child.close()
        for fd in (self._out, self._options):
            if fd >= 0:
                os.close(fd)
        self._out = self._options = -1


def _folder_in(snapshot: Artifact, dump_path: Path) -> Path:
    """The dump's folder in ``snapshot``'s view, made if missing: folders above it that
    exist on this machine as they are here (``make_parents``), the others plain, the
    folder itself private (a dump holds the grant tables' password hashes)."""
    folder = snapshot.image(dump_path)
    assert snapshot.view is not None
    if not folder.parent.is_dir():
        here = next(p for p in dump_path.parents if p.is_dir())
        if here != Path("/"):
            make_parents(here / "x", snapshot.view)
        folder.parent.mkdir(parents=True, exist_ok=True)
    if not folder.is_dir():
        folder.mkdir(mode=0o700)
    return folder
