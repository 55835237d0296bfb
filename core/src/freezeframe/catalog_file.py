"""The catalog's SQLite file: its schema, how it is created and opened, and its errors.

A new catalog is built under a temporary name and linked into place, so a
catalog of 0 bytes is never one of ours being born: it is one that held runs
and was truncated. Such a catalog is used again (backups go on), but a marker
beside it (``catalog.sqlite.lost``) turns retention and ``prune`` off until a
person removes it, so the artifacts of the runs it no longer lists are not
lost track of. A damaged catalog is refused as it is, never rebuilt: a
writable open checks it (``PRAGMA quick_check``) before anything is written.

A read-only open writes nothing, not even the WAL's index, so that a
read-only copy of the state folder can be read (disaster recovery); a missing
catalog then reads as an empty one. What to do with the records is
:class:`freezeframe.catalog.Catalog`'s job.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path

from freezeframe.errors import FreezeframeError
from freezeframe.fsutil import fsync_dir, sqlite_uri
from freezeframe.records import iso

__all__ = [
    "ADDED_COLUMNS",
    "SCHEMA_VERSION",
    "CatalogError",
    "CatalogReadOnly",
    "catalog_error",
    "columns",
    "lost_marker",
    "open_read_only",
    "open_writable",
]


class CatalogError(FreezeframeError):
    """The catalog cannot be read or written as asked: damaged, read-only, or its history lost."""


class CatalogReadOnly(CatalogError):
    """A write to a catalog opened read-only (its folder cannot be written)."""


SCHEMA_VERSION = 4  # 2: applications gained capture, complete_start, complete_end;
# 3: captured_at, writes_blocked_ms; 4: drills, drill_processes, applications.paths (a JSON
# list, what restore --app restores)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, profile TEXT NOT NULL, status TEXT NOT NULL,
    started_at REAL NOT NULL, finished_at REAL, thaw TEXT NOT NULL,
    pid INTEGER, error TEXT, manifest TEXT
);
CREATE TABLE IF NOT EXISTS applications (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE, position INTEGER NOT NULL,
    name TEXT NOT NULL, plugin TEXT NOT NULL, distribution TEXT NOT NULL, version TEXT NOT NULL,
    mode TEXT NOT NULL, quiesce_start REAL, quiesce_end REAL, thaw_start REAL, thaw_end REAL,
    facts TEXT NOT NULL, error TEXT, capture TEXT, complete_start REAL, complete_end REAL,
    captured_at REAL, writes_blocked_ms REAL, paths TEXT,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS stages (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE, position INTEGER NOT NULL,
    name TEXT NOT NULL, backend TEXT NOT NULL, role TEXT NOT NULL, source TEXT,
    status TEXT NOT NULL, started_at REAL, finished_at REAL,
    artifact_id TEXT, bytes INTEGER, files INTEGER, view TEXT, metadata TEXT,
    error TEXT, deleted_at REAL, verified_at REAL, PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS errors (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    at REAL NOT NULL, source TEXT NOT NULL, message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_started ON runs(started_at);
CREATE TABLE IF NOT EXISTS pending_deletes (
    run_id TEXT NOT NULL, stage TEXT NOT NULL, PRIMARY KEY (run_id, stage)
);
CREATE TABLE IF NOT EXISTS drills (
    drill_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    status TEXT NOT NULL, started_at REAL NOT NULL, finished_at REAL,
    scratch TEXT NOT NULL, cleaned INTEGER NOT NULL DEFAULT 0, record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS drills_run ON drills(run_id, started_at);
CREATE TABLE IF NOT EXISTS drill_processes (
    drill_id TEXT NOT NULL REFERENCES drills(drill_id) ON DELETE CASCADE,
    pid INTEGER NOT NULL, boot_id TEXT NOT NULL, start_ticks INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS owners (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE, role TEXT NOT NULL,
    pid INTEGER NOT NULL, boot_id TEXT NOT NULL, start_ticks INTEGER NOT NULL, until REAL,
    PRIMARY KEY (run_id, role)
);
"""


def lost_marker(path: Path) -> Path:
    """The file whose presence says the catalog at ``path`` was found empty."""
    return path.with_name(path.name + ".lost")


def open_writable(path: Path) -> tuple[sqlite3.Connection, str | None]:
    """The catalog at ``path``, created if missing, checked and brought to this schema;
    with what its lost-history marker says (``None`` without one)."""
    if not path.exists():
        _create(path)
    elif path.stat().st_size == 0:
        _mark_history_lost(path)
    history_lost = _read_lost_marker(path)
    db = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        _check_version(path, db)
        problem = db.execute("PRAGMA quick_check(1)").fetchone()[0]
        if problem != "ok":  # refuse before anything is written into it
            where = " ".join(str(problem).replace("*** in database main ***", "").split())
            raise sqlite3.DatabaseError(f"database disk image is malformed ({where})")
        _add_columns(db)
        db.executescript(_SCHEMA)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        db.close()
        raise
    for suffix in ("", "-wal", "-shm"):
        p = Path(f"{path}{suffix}")
        if p.exists() and p.stat().st_mode & 0o077:
            p.chmod(0o600)
    return db, history_lost


#: Columns added since a table was first made: ``(table, column, type)``. A catalog made
#: before gets them when opened writable; one opened read-only reads them as NULL.
ADDED_COLUMNS = (
    ("applications", "capture", "TEXT"),
    ("applications", "complete_start", "REAL"),
    ("applications", "complete_end", "REAL"),
    ("applications", "captured_at", "REAL"),
    ("applications", "writes_blocked_ms", "REAL"),
    ("applications", "paths", "TEXT"),
)


def columns(db: sqlite3.Connection, table: str) -> set[str]:
    """The column names of ``table``."""
    return {r[1] for r in db.execute(f"PRAGMA table_info({table})")}


def _add_columns(db: sqlite3.Connection) -> None:
    for table, column, kind in ADDED_COLUMNS:
        have = columns(db, table)
        if have and column not in have:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


def _create(path: Path) -> None:
    """Build the empty catalog under another name, then link it into place whole."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # left by a crashed process that had our pid
    os.close(os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        with closing(sqlite3.connect(tmp, isolation_level=None)) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile
            os.link(tmp, path)
    finally:
        tmp.unlink()
    fsync_dir(path.parent)


def _mark_history_lost(path: Path) -> None:
    marker = lost_marker(path)
    text = (
        f"{path} was found empty (0 bytes) at {iso(time.time())}\n"
        "The runs recorded before then are not in it. Retention and prune are off while\n"
        "this file exists, so the artifacts of those runs are not lost track of. Put the\n"
        "catalog back from a copy if you have one, or deal with the old artifacts (their\n"
        "names carry their run ids), then remove this file.\n"
    )
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # found empty before: the first finding stands
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(marker.parent)


def _read_lost_marker(path: Path) -> str | None:
    try:
        text = lost_marker(path).read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError:
        return None
    return text.splitlines()[0] if text else f"{path} was found empty"


def open_read_only(path: Path) -> tuple[sqlite3.Connection, str | None]:
    """The catalog at ``path`` opened without writing anything (an empty one in memory if it
    is missing or empty); with what says its history is lost (``None`` if nothing does)."""
    if not path.exists() or path.stat().st_size == 0:
        return _empty(), f"{path} is empty (0 bytes)" if path.exists() else None
    history_lost = _read_lost_marker(path)
    uri = sqlite_uri(path, mode="ro")
    db = sqlite3.connect(uri, uri=True, check_same_thread=False)
    try:
        _check_version(path, db)
    except sqlite3.OperationalError as e:
        db.close()
        if e.sqlite_errorname != "SQLITE_CANTOPEN":
            raise
        # WAL mode wants an index (-shm) it cannot make in a read-only folder;
        # without one only the main file can be read, which is all there is
        # unless a write-ahead log holds runs not yet copied into it.
        wal = Path(f"{path}-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise CatalogError(
                f"{path}: cannot read the catalog in a read-only folder: its write-ahead "
                f"log {wal} holds recent runs; copy the state folder somewhere writable"
            ) from None
        db = sqlite3.connect(f"{uri}&immutable=1", uri=True, check_same_thread=False)
        _check_version(path, db)
    if not db.execute("SELECT 1 FROM sqlite_master WHERE name='runs'").fetchone():
        db.close()
        return _empty(), history_lost
    return db, history_lost


def _empty() -> sqlite3.Connection:
    """An empty catalog in memory: the answer of a read-only catalog with nothing in it."""
    db = sqlite3.connect(":memory:", check_same_thread=False)
    db.executescript(_SCHEMA)
    return db


def _check_version(path: Path, db: sqlite3.Connection) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise CatalogError(
            f"{path}: catalog schema {version} is newer than this "
            f"freezeframe understands ({SCHEMA_VERSION}); upgrade it"
        )


def catalog_error(path: Path, e: sqlite3.DatabaseError, doing: str = "use") -> CatalogError:
    """One line naming the catalog at ``path``, what failed and what to do about it."""
    name = getattr(e, "sqlite_errorname", "")
    text = f"{path}: cannot {doing} the catalog: {' '.join(str(e).split())}"
    if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or "malformed" in str(e):
        return CatalogError(
            f"{text} (it is damaged and was left as it is: put it back from a copy, "
            "or move it aside and its folder's catalog starts anew)"
        )
    if name == "SQLITE_READONLY":
        return CatalogReadOnly(f"{text} (it is read-only here)")
    return CatalogError(text)
