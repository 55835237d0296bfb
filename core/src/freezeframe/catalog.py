"""The catalog: one SQLite file per profile (mode 0600, WAL) holding every run's record.

Each :meth:`Catalog.save` writes a whole :class:`RunRecord` in one transaction,
so a crash at any point leaves the previous complete state of that run.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from freezeframe._faults import point
from freezeframe.components import Artifact
from freezeframe.errors import FreezeframeError
from freezeframe.records import ApplicationRecord, RunRecord, RunStatus, StageRecord, iso

__all__ = ["Catalog"]

SCHEMA_VERSION = 1
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
    facts TEXT NOT NULL, error TEXT, PRIMARY KEY (run_id, name)
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
"""


class Catalog:
    """The run records of one profile."""

    def __init__(self, path: Path) -> None:
        self.path = path
        new = not path.exists()
        if new:
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            self._db = sqlite3.connect(
                path, isolation_level=None, timeout=30, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise FreezeframeError(
                    f"{path}: catalog schema {version} is newer than this "
                    f"freezeframe understands ({SCHEMA_VERSION}); upgrade it"
                )
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as e:
            raise FreezeframeError(f"{path}: cannot open the catalog: {e}") from None
        for suffix in ("", "-wal", "-shm"):
            p = Path(f"{path}{suffix}")
            if p.exists() and p.stat().st_mode & 0o077:
                p.chmod(0o600)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- writing -------------------------------------------------------------
    def save(self, run: RunRecord, *, pid: int | None = None) -> None:
        """Write the whole record of ``run`` in one transaction."""
        point("catalog.save")
        with self._transaction() as db:
            db.execute(
                "INSERT INTO runs(run_id, profile, status, started_at, finished_at, thaw, pid,"
                " error, manifest) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(run_id) DO UPDATE SET"
                " status=excluded.status, finished_at=excluded.finished_at,"
                " error=excluded.error, manifest=excluded.manifest,"
                " pid=COALESCE(excluded.pid, runs.pid)",
                (
                    run.run_id,
                    run.profile,
                    str(run.status),
                    run.started_at,
                    run.finished_at,
                    run.thaw,
                    pid,
                    run.error,
                    json.dumps(run.to_json()),
                ),
            )
            db.execute("DELETE FROM applications WHERE run_id=?", (run.run_id,))
            db.executemany(
                "INSERT INTO applications VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        run.run_id,
                        i,
                        a.name,
                        a.plugin,
                        a.distribution,
                        a.version,
                        a.mode,
                        a.quiesce_start,
                        a.quiesce_end,
                        a.thaw_start,
                        a.thaw_end,
                        json.dumps(dict(a.facts)),
                        a.error,
                    )
                    for i, a in enumerate(run.applications)
                ],
            )
            db.execute("DELETE FROM stages WHERE run_id=?", (run.run_id,))
            db.executemany(
                "INSERT INTO stages VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        run.run_id,
                        i,
                        s.name,
                        s.backend,
                        s.role,
                        s.source,
                        s.status,
                        s.started_at,
                        s.finished_at,
                        s.artifact.id if s.artifact else None,
                        s.artifact.bytes if s.artifact else None,
                        s.artifact.files if s.artifact else None,
                        str(s.artifact.view) if s.artifact and s.artifact.view else None,
                        json.dumps(dict(s.artifact.metadata)) if s.artifact else None,
                        s.error,
                        s.deleted_at,
                        s.verified_at,
                    )
                    for i, s in enumerate(run.stages)
                ],
            )

    def mark_deleted(self, run_id: str, stage: str, at: float) -> None:
        """Mark a stage's artifact deleted and journal the delete as pending, atomically."""
        with self._transaction() as db:
            db.execute(
                "UPDATE stages SET deleted_at=COALESCE(deleted_at, ?) WHERE run_id=? AND name=?",
                (at, run_id, stage),
            )
            db.execute("INSERT OR IGNORE INTO pending_deletes VALUES (?,?)", (run_id, stage))

    def mark_verified(self, run_id: str, stage: str, at: float | None) -> None:
        """Record a successful verify of one stage's artifact (and nothing else); ``None``
        after a failed one."""
        with self._transaction() as db:
            db.execute(
                "UPDATE stages SET verified_at=? WHERE run_id=? AND name=?", (at, run_id, stage)
            )

    def delete_done(self, run_id: str, stage: str) -> None:
        """The artifact is gone: the pending delete is over."""
        with self._transaction() as db:
            db.execute("DELETE FROM pending_deletes WHERE run_id=? AND stage=?", (run_id, stage))

    def pending_deletes(self) -> list[tuple[str, str]]:
        """``(run id, stage)`` of every delete begun and not known to be done."""
        return [(r, s) for r, s in self._db.execute("SELECT run_id, stage FROM pending_deletes")]

    def add_error(self, run_id: str, at: float, source: str, message: str) -> None:
        """Record one error of a run (a run may gather several: a stage, then a thaw)."""
        with self._transaction() as db:
            db.execute("INSERT INTO errors VALUES (?,?,?,?)", (run_id, at, source, message))

    # -- reading -------------------------------------------------------------
    def runs(self, *, status: RunStatus | None = None) -> list[RunRecord]:
        """Every run, newest first (optionally only those with ``status``)."""
        query = "SELECT * FROM runs"
        args: tuple[Any, ...] = ()
        if status is not None:
            query += " WHERE status=?"
            args = (str(status),)
        with closing(self._db.execute(query + " ORDER BY started_at DESC, run_id DESC", args)) as c:
            rows = c.fetchall()
            cols = [d[0] for d in c.description]
        return [self._load(dict(zip(cols, row, strict=True))) for row in rows]

    def get(self, ref: str) -> RunRecord | None:
        """The run ``ref`` names: an id, a unique prefix, or ``latest`` (newest succeeded)."""
        if ref == "latest":
            done = self.runs(status=RunStatus.SUCCEEDED)
            return done[0] if done else None
        matches = [r for r in self.runs() if r.run_id == ref or r.run_id.startswith(ref)]
        exact = [r for r in matches if r.run_id == ref]
        if exact:
            return exact[0]
        if len(matches) > 1:
            raise FreezeframeError(
                f"run {ref!r} is ambiguous: {len(matches)} runs start with it "
                f"({', '.join(r.run_id for r in matches[:3])}{', ...' if len(matches) > 3 else ''})"
            )
        return matches[0] if matches else None

    def errors(self, run_id: str) -> list[dict[str, Any]]:
        """Every error recorded for ``run_id``, oldest first."""
        rows = self._db.execute(
            "SELECT at, source, message FROM errors WHERE run_id=? ORDER BY at", (run_id,)
        ).fetchall()
        return [{"at": iso(at), "source": source, "message": msg} for at, source, msg in rows]

    def pid_of(self, run_id: str) -> int | None:
        """The process that ran ``run_id``."""
        row = self._db.execute("SELECT pid FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return row[0] if row else None

    def _load(self, row: dict[str, Any]) -> RunRecord:
        run_id = row["run_id"]
        apps = []
        for r in self._db.execute(
            "SELECT name, plugin, distribution, version, mode, quiesce_start, quiesce_end,"
            " thaw_start, thaw_end, facts, error FROM applications WHERE run_id=?"
            " ORDER BY position",
            (run_id,),
        ):
            apps.append(
                ApplicationRecord(
                    name=r[0],
                    plugin=r[1],
                    distribution=r[2],
                    version=r[3],
                    mode=r[4],
                    quiesce_start=r[5],
                    quiesce_end=r[6],
                    thaw_start=r[7],
                    thaw_end=r[8],
                    facts=json.loads(r[9]),
                    error=r[10],
                )
            )
        stages = []
        for r in self._db.execute(
            "SELECT name, backend, role, source, status, started_at, finished_at, artifact_id,"
            " bytes, files, view, metadata, error, deleted_at, verified_at FROM stages"
            " WHERE run_id=? ORDER BY position",
            (run_id,),
        ):
            artifact = None
            if r[7] is not None:
                artifact = Artifact(
                    r[7],
                    r[8] or 0,
                    r[9] or 0,
                    Path(r[10]) if r[10] else None,
                    json.loads(r[11] or "{}"),
                )
            stages.append(
                StageRecord(r[0], r[1], r[2], r[4], r[3], r[5], r[6], artifact, r[12], r[13], r[14])
            )
        return RunRecord(
            run_id,
            row["profile"],
            RunStatus(row["status"]),
            row["started_at"],
            row["thaw"],
            row["finished_at"],
            tuple(apps),
            tuple(stages),
            row["error"],
        )
