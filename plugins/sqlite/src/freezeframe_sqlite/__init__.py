"""freezeframe application plug-in for SQLite.

Quiesce takes the database's write lock (``BEGIN IMMEDIATE`` on a connection
of our own) and, in WAL mode, checkpoints every committed frame into the main
file from a second connection, so the main file alone is the complete,
consistent database. Writers wait (their busy timeout) until the thaw rolls
the empty transaction back. The lock is a POSIX lock of this process: if
freezeframe dies, the kernel releases it at once.

``capture = "logical"`` (WAL databases only) copies nothing inside the window:
under the same write lock, a second connection opens a read transaction, whose
snapshot is then fixed; the thaw releases the writers, and the completion
copies that snapshot into each view with SQLite's online backup API while
writers go on. The read transaction ends with ``release`` or with the process.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from freezeframe.plugin import (
    ApplicationPlugin,
    Artifact,
    CheckFailed,
    ConfigError,
    CrashSafety,
    Deadline,
    DrillContext,
    FreezeframeError,
    QuiesceError,
    Running,
    SnapshotKind,
    Table,
    hookimpl,
    is_folder_below,
    make_parents,
    sqlite_uri,
    under,
    unlink_below,
)

__all__ = ["SqlitePlugin"]


class SqlitePlugin(ApplicationPlugin):
    """One SQLite database file (``path``)."""

    kind = "sqlite"
    consistent_on = frozenset({SnapshotKind.ATOMIC, SnapshotKind.PER_FILE})
    crash_safety = CrashSafety.PROCESS_EXIT
    # snapshot first for a database not in WAL mode (the logical capture needs WAL); a
    # WAL database lists logical first (see __init__)
    capture_modes: tuple[str, ...] = ("snapshot", "logical")
    #: Whether a database found in WAL mode lists ``"logical"`` first.
    logical_first_in_wal: ClassVar[bool] = True
    #: A drill answers the profile's ``sql`` checks from the restored file.
    answers_sql = True

    def __init__(self, name: str, table: Table) -> None:
        super().__init__(name, table)
        self.path = table.get_path("path", must_exist=True)
        if not self.path.is_file():
            raise ConfigError("path", f"{self.path} is not a file")
        if self.logical_first_in_wal and _in_wal_mode(self.path):
            # the logical capture holds the write lock only while a read transaction
            # opens (about a millisecond); the snapshot mode checkpoints the WAL inside
            # the window (tens of milliseconds under a busy writer)
            self.capture_modes = ("logical", "snapshot")
        self._lock: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None  # logical: the held read snapshot
        self._facts: dict[str, Any] = {}
        # interrupt() comes from another thread: it may touch only these, under _guard,
        # so it never interrupts a connection that is being closed (use after free).
        self._guard = threading.Lock()
        self._interrupted = threading.Event()
        self._open: list[sqlite3.Connection] = []

    def _connect(self, timeout: float, *, read_only: bool = False) -> sqlite3.Connection:
        # Never mode=rwc: a database that has gone must fail the run, not come back empty.
        uri = sqlite_uri(self.path, mode="ro" if read_only else "rw")
        try:
            return sqlite3.connect(
                uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.OperationalError:
            if not self.path.is_file():
                raise FreezeframeError(
                    f"application {self.name!r}: {self.path} does not exist "
                    "(freezeframe never creates a database)"
                ) from None
            raise

    def check(self) -> None:
        """The file is a SQLite database we may lock."""
        try:
            with closing(self._connect(5.0, read_only=True)) as db:
                db.execute("PRAGMA schema_version").fetchone()
                self._facts["journal_mode"] = db.execute("PRAGMA journal_mode").fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise FreezeframeError(f"{self.path}: not a usable SQLite database: {e}") from None
        for p in (self.path, self.path.parent):
            if not os.access(p, os.R_OK | os.W_OK):
                raise FreezeframeError(
                    f"{p}: not readable and writable by this user; taking the write lock needs both"
                )
        mode = str(self._facts["journal_mode"]).lower()
        if self.capture == "logical" and mode != "wal":
            raise ConfigError(
                "capture",
                f'"logical" needs a database in WAL mode ({self.path} is in {mode!r} mode): '
                'use capture = "snapshot", or PRAGMA journal_mode=WAL',
            )

    def prepare(self, snapshot_kinds: frozenset[SnapshotKind]) -> None:
        """Checkpoint the WAL before the window, so the checkpoint inside it is short."""
        with closing(self._connect(5.0)) as db:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    def data_paths(self) -> Sequence[Path]:
        """The database file (complete once quiesced; the WAL is checkpointed into it);
        nothing in the logical mode, whose completion writes the copy."""
        return () if self.capture == "logical" else (self.path,)

    def completed_paths(self) -> Sequence[Path]:
        """The database file, in the logical mode."""
        return (self.path,) if self.capture == "logical" else ()

    def quiesce(self, deadline: Deadline) -> None:
        """Hold the write lock; checkpoint every committed WAL frame into the main file."""
        started = time.monotonic()
        db = self._tracked(self._connect(0))
        self._lock = db
        # SQLite's own busy handler backs off to 100 ms sleeps, and a busy writer that
        # commits back to back takes the lock again in between: it starved us for
        # seconds. Asking every 0.2 ms gets the lock in milliseconds (measured).
        while True:
            self._check_interrupted()
            try:
                db.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as e:
                self._check_interrupted()
                if "locked" not in str(e) or deadline.expired():
                    raise QuiesceError(f"{self.path}: could not take the write lock: {e}") from None
                time.sleep(0.0002)
        self._facts["lock_wait_ms"] = round((time.monotonic() - started) * 1000, 3)
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
        self._facts["journal_mode"] = mode
        self._facts["page_count"] = db.execute("PRAGMA page_count").fetchone()[0]
        if self.capture == "logical":
            self._hold_snapshot(mode)
            return
        if mode.lower() != "wal":
            return  # rollback journal: the write lock alone keeps the file complete
        # A checkpoint needs no write lock (PASSIVE); a reader on an old snapshot can hold it
        # back for a moment, so try until the deadline.
        ck = self._tracked(self._connect(max(0.001, deadline.remaining())))
        try:
            while True:
                self._check_interrupted()
                try:
                    _, log_frames, done = ck.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.OperationalError:
                    self._check_interrupted()
                    raise
                if log_frames == done:
                    self._facts["checkpointed_frames"] = done
                    return
                if deadline.expired():
                    raise QuiesceError(
                        f"{self.path}: only {done} of {log_frames} WAL frames could be "
                        "checkpointed before the deadline (a long reader holds an old snapshot)"
                    )
                time.sleep(0.002)
        finally:
            self._close(ck)

    def _hold_snapshot(self, mode: str) -> None:
        """Open a read transaction while writers are blocked: its snapshot is the capture."""
        if mode.lower() != "wal":
            raise QuiesceError(
                f'{self.path}: capture = "logical" needs WAL mode; the database is in {mode!r}'
            )
        reader = self._tracked(self._connect(0, read_only=True))
        self._reader = reader
        reader.execute("BEGIN")
        # the snapshot is fixed by the first read, not by BEGIN
        reader.execute("SELECT count(*) FROM sqlite_master").fetchone()

    def complete(self, snapshots: Sequence[Artifact]) -> None:
        """Copy the held snapshot into each view with the online backup API (logical mode)."""
        reader = self._reader
        if reader is None:
            raise FreezeframeError(f"{self.path}: no captured snapshot to complete from")

        def step(status: int, remaining: int, total: int) -> None:
            self._check_interrupted()

        for snapshot in snapshots:
            if snapshot.view is None:
                continue
            dst = snapshot.image(self.path)
            if not dst.parent.is_dir():
                dst = make_parents(self.path, snapshot.view)
            tmp = dst.with_name(f".{dst.name}.{os.getpid()}.partial")
            try:
                with closing(sqlite3.connect(tmp, isolation_level=None)) as out:
                    reader.backup(out, pages=1024, progress=step)
                # never beside the copy: neither its own nor the live database's, which a
                # snapshot of the whole filesystem holds
                for suffix in ("-journal", "-wal", "-shm"):
                    Path(f"{tmp}{suffix}").unlink(missing_ok=True)
                    Path(f"{dst}{suffix}").unlink(missing_ok=True)
                os.rename(tmp, dst)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

    def release(self) -> None:
        """End the held read transaction (idempotent)."""
        db, self._reader = self._reader, None
        try:
            if db is not None and db.in_transaction:
                db.execute("ROLLBACK")
        finally:
            if db is not None:
                self._close(db)
            self._interrupted.clear()

    def interrupt(self) -> None:
        """Stop a quiesce under way: ``sqlite3_interrupt`` on its connections, which SQLite
        documents as safe from any thread while the connection is open."""
        with self._guard:
            self._interrupted.set()
            for db in self._open:
                db.interrupt()

    def unquiesce(self, snapshots: Sequence[Artifact]) -> None:
        """Release the write lock (idempotent); a held read snapshot stays until ``release``."""
        db, self._lock = self._lock, None
        try:
            if db is not None and db.in_transaction:
                db.execute("ROLLBACK")
        finally:
            if db is not None:
                self._close(db)
            self._interrupted.clear()  # the interrupted quiesce is over

    def _tracked(self, db: sqlite3.Connection) -> sqlite3.Connection:
        with self._guard:
            self._open.append(db)
        return db

    def _close(self, db: sqlite3.Connection) -> None:
        with self._guard:
            self._open.remove(db)
            db.close()

    def _check_interrupted(self) -> None:
        if self._interrupted.is_set():
            raise QuiesceError(f"{self.path}: quiesce interrupted (the run is stopping)")

    def describe(self) -> Mapping[str, Any]:
        """SQLite library version, journal mode, pages and frames checkpointed."""
        return {"sqlite_version": sqlite3.sqlite_version, "path": str(self.path), **self._facts}

    def restored_path(self, root: Path) -> Path:
        """Where this database lands under a restore root."""
        return under(root, self.path)

    def prepare_restored(self, root: Path) -> None:
        """A restored database must not meet a stale WAL or shared-memory file beside it."""
        restored = self.restored_path(root)
        for suffix in ("-wal", "-shm"):
            try:  # never through a symlinked folder of the restored tree
                unlink_below(root, Path(f"{restored}{suffix}"))
            except FreezeframeError as e:
                raise FreezeframeError(f"application {self.name!r}: {e}") from None

    def verify_restored(self, root: Path) -> None:
        """``PRAGMA integrity_check`` on the restored file (the drill's first check)."""
        restored = self.restored_path(root)
        if (why := _unusable(root, restored)) is not None:
            raise FreezeframeError(f"application {self.name!r}: {why}")
        try:
            with closing(_connect_file(restored)) as db:
                _integrity_check(db)
        except CheckFailed as e:
            raise FreezeframeError(
                f"application {self.name!r}: {restored}: integrity_check: {e}"
            ) from None

    @contextmanager
    def drill(self, ctx: DrillContext) -> Iterator[Running | None]:
        """``PRAGMA integrity_check`` and ``PRAGMA foreign_key_check`` on the restored
        file, each its own check; then the file answers the profile's ``sql`` checks.

        Every connection is read-only and immutable: the drill writes nothing, not even a
        ``-wal`` or ``-shm`` file beside the copy. There is no server: a file that is
        missing or not a database is the failed check ``start``.
        """
        restored = self.restored_path(ctx.root)
        if (why := _unusable(ctx.root, restored)) is not None:
            ctx.check("start", lambda: _fail(why))
            yield None
            return

        def deep(check: Callable[[sqlite3.Connection], str]) -> Callable[[], str]:
            def run() -> str:
                try:
                    with closing(_connect_file(restored, stop=lambda: ctx.cancelled)) as db:
                        return check(db)
                finally:
                    ctx.stop_if_cancelled()  # interrupted by the progress handler

            return run

        ctx.check("integrity_check", deep(_integrity_check))
        ctx.check("foreign_key_check", deep(_foreign_key_check))
        yield Running(connection={"PATH": str(restored)}, query=partial(_query, restored))


def _fail(message: str) -> None:
    raise CheckFailed(message)


def _unusable(root: Path, path: Path) -> str | None:
    """Why the file ``path`` restored under ``root`` cannot be opened as a database, one
    line naming it, or ``None``. Never through a symlink: one would lead out of the copy
    (to the live database, say)."""
    try:
        if not is_folder_below(root, path.parent) or not os.path.lexists(path):
            return f"{path} was not restored"
    except FreezeframeError as e:  # a symlink among its folders
        return str(e)
    if path.is_symlink():
        return f"{path} is a symlink; a check never follows one out of the restored copy"
    if not path.is_file():
        return f"{path} is not a regular file"
    header = _header(path)
    if header and not header.startswith(_MAGIC):
        return f"{path} is not a SQLite database (its header is not SQLite's)"
    return None


def _connect_file(path: Path, *, stop: Callable[[], bool] | None = None) -> sqlite3.Connection:
    """A read-only, immutable connection to a restored file: it leaves no -wal/-shm file
    beside it. With ``stop``, SQLite interrupts a statement once ``stop()`` is true."""
    db = sqlite3.connect(sqlite_uri(path, mode="ro", immutable="1"), uri=True, isolation_level=None)
    if stop is not None:
        db.set_progress_handler(lambda: int(stop()), _PROGRESS_STEPS)
    return db


def _integrity_check(db: sqlite3.Connection) -> str:
    """``PRAGMA integrity_check``: what it saw; :class:`CheckFailed` with the first problems."""
    try:
        rows = [str(r[0]) for r in db.execute("PRAGMA integrity_check")]
        pages = db.execute("PRAGMA page_count").fetchone()[0]
    except sqlite3.DatabaseError as e:
        raise CheckFailed(str(e)) from None
    if rows == ["ok"]:
        return f"ok ({pages} pages)"
    # a row may hold several lines, under a "*** in database main ***" heading
    found = [
        line.strip()
        for row in rows
        for line in row.splitlines()
        if line.strip() and not line.startswith("***")
    ]
    count = f"{len(found)} problems" if len(found) != 1 else "1 problem"
    raise CheckFailed(f"{count}: " + "; ".join(found[:3]))


def _foreign_key_check(db: sqlite3.Connection) -> str:
    """``PRAGMA foreign_key_check``: what it saw; :class:`CheckFailed` naming the table, rowid
    and parent table of the first violations."""
    try:
        rows = db.execute("PRAGMA foreign_key_check").fetchall()
        tables = db.execute(
            "SELECT count(DISTINCT s.name) FROM sqlite_schema AS s, "
            "pragma_foreign_key_list(s.name) WHERE s.type = 'table'"
        ).fetchone()[0]
    except sqlite3.DatabaseError as e:
        raise CheckFailed(str(e)) from None
    if not rows:
        return f"no violation ({tables} tables with foreign keys)"
    first = "; ".join(
        f"{table} rowid {rowid} has no parent in {parent}"
        if rowid is not None
        else f"a row of {table} has no parent in {parent}"
        for table, rowid, parent, _ in rows[:3]
    )
    count = f"{len(rows)} violations" if len(rows) != 1 else "1 violation"
    raise CheckFailed(f"{count}: {first}")


def _query(path: Path, sql: str, timeout: float) -> Any:
    """:attr:`Running.query`: ``sql`` on a connection of its own to the restored file,
    interrupted after ``timeout`` seconds; the first column of its first row."""
    deadline = time.monotonic() + timeout
    try:
        with closing(_connect_file(path, stop=lambda: time.monotonic() > deadline)) as db:
            row = db.execute(sql).fetchone()
    except (sqlite3.Error, sqlite3.Warning) as e:
        if time.monotonic() > deadline:
            raise CheckFailed(f"the query did not finish within {timeout:g}s") from None
        raise CheckFailed(str(e)) from None
    return None if row is None else row[0]


#: The SQLite header's first 16 bytes.
_MAGIC = b"SQLite format 3\x00"
#: How many virtual machine steps SQLite runs between two looks at a drill's stop.
_PROGRESS_STEPS = 1000


def _header(path: Path) -> bytes:
    """The first 100 bytes of a file (its database header), ``b""`` if unreadable."""
    try:
        with open(path, "rb") as f:
            return f.read(100)
    except OSError:
        return b""


def _in_wal_mode(path: Path) -> bool:
    """Whether the database file's header says WAL mode (its read and write format
    versions, bytes 18 and 19, are 2): a read of 100 bytes, no connection."""
    header = _header(path)  # unreadable: check() says why
    return header.startswith(_MAGIC) and header[18:20] == b"\x02\x02"


@hookimpl
def freezeframe_register_applications(register: Callable[[type[Any]], None]) -> None:
    """Register the ``sqlite`` application plug-in."""
    register(SqlitePlugin)
