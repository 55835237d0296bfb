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
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any, ClassVar

from freezeframe.plugin import (
    ApplicationPlugin,
    Artifact,
    ConfigError,
    CrashSafety,
    Deadline,
    FreezeframeError,
    QuiesceError,
    SnapshotKind,
    Table,
    hookimpl,
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
        """``PRAGMA integrity_check`` on the restored file."""
        restored = self.restored_path(root)
        if not restored.is_file():
            raise FreezeframeError(f"application {self.name!r}: {restored} was not restored")
        try:
            with closing(self._connect_file(restored)) as db:
                result = [r[0] for r in db.execute("PRAGMA integrity_check")]
        except sqlite3.DatabaseError as e:
            raise FreezeframeError(f"application {self.name!r}: {restored}: {e}") from None
        if result != ["ok"]:
            raise FreezeframeError(
                f"application {self.name!r}: {restored}: integrity_check: " + "; ".join(result[:3])
            )

    @staticmethod
    def _connect_file(path: Path) -> sqlite3.Connection:
        # immutable: a check must not leave -wal/-shm files beside the restored copy
        return sqlite3.connect(
            sqlite_uri(path, mode="ro", immutable="1"), uri=True, isolation_level=None
        )


def _in_wal_mode(path: Path) -> bool:
    """Whether the database file's header says WAL mode (its read and write format
    versions, bytes 18 and 19, are 2): a read of 100 bytes, no connection."""
    try:
        with open(path, "rb") as f:
            header = f.read(100)
    except OSError:
        return False  # check() says why
    return header[:16] == b"SQLite format 3\x00" and header[18:20] == b"\x02\x02"


@hookimpl
def freezeframe_register_applications(register: Callable[[type[Any]], None]) -> None:
    """Register the ``sqlite`` application plug-in."""
    register(SqlitePlugin)
