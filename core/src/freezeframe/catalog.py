"""The catalog: one SQLite file per profile (mode 0600, WAL) holding every run's record.

:class:`Catalog` saves and queries run records, the processes working for a
run (owners), verified marks and the journal of deletes. Each
:meth:`Catalog.save` writes a whole :class:`RunRecord` in one transaction, so
a crash at any point leaves the previous complete state of that run.

The file itself (schema, creating and opening it, a truncated or damaged
catalog, SQLite's errors as one line) is :mod:`freezeframe.catalog_file`'s job.
"""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

from freezeframe._faults import point
from freezeframe.catalog_file import (
    ADDED_COLUMNS,
    CatalogError,
    CatalogReadOnly,
    catalog_error,
    columns,
    lost_marker,
    open_read_only,
    open_writable,
)
from freezeframe.components import Artifact
from freezeframe.errors import FreezeframeError
from freezeframe.lock import Owner
from freezeframe.records import (
    ApplicationRecord,
    DrillApplication,
    DrillRecord,
    DrillStatus,
    Proof,
    RunRecord,
    RunStatus,
    StageRecord,
    iso,
)

__all__ = ["Catalog", "CatalogError", "CatalogReadOnly"]

log = logging.getLogger("freezeframe")
_P = ParamSpec("_P")
_R = TypeVar("_R")


def _guarded(
    method: Callable[Concatenate[Catalog, _P], _R],
) -> Callable[Concatenate[Catalog, _P], _R]:
    """SQLite's errors become one line naming the catalog (a damaged page is the user's
    problem to fix, not our traceback)."""

    def guarded(self: Catalog, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as e:
            raise catalog_error(self.path, e) from None

    functools.update_wrapper(guarded, method)
    return guarded


class Catalog:
    """The run records of one profile.

    ``read_only`` opens it without writing anything, not even the WAL's index, so
    that it can be read from a read-only copy (disaster recovery); a missing
    catalog then reads as an empty one and nothing is created.
    """

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        #: When this catalog was found empty (so the runs before then are not in it), or None.
        self.history_lost: str | None = None
        try:
            opened = open_read_only(path) if read_only else open_writable(path)
        except sqlite3.DatabaseError as e:
            raise catalog_error(path, e, "open") from None
        self._db, self.history_lost = opened
        # a read-only catalog made by an older freezeframe lacks the newer columns
        have = columns(self._db, "applications")
        self._added = ", ".join(
            c if c in have else f"NULL AS {c}" for t, c, _ in ADDED_COLUMNS if t == "applications"
        )
        # a read-only catalog made before drills were has no drills table: none were made
        self._drills = bool(columns(self._db, "drills"))

    @property
    def lost_marker(self) -> Path:
        """The file whose presence says the catalog was found empty (see the module's doc)."""
        return lost_marker(self.path)

    def _writable(self) -> None:
        if self.read_only:
            raise CatalogReadOnly(
                f"{self.path}: the catalog is open read-only (its folder cannot be written)"
            )

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
        self._writable()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- writing -------------------------------------------------------------
    @_guarded
    def save(self, run: RunRecord, *, pid: int | None = None, durable: bool = True) -> None:
        """Write the whole record of ``run`` in one transaction; with ``durable=False``,
        without waiting for the disk (``synchronous=NORMAL``: in WAL mode the commit
        survives the process, and reaches the disk with the next durable one), for the
        journal written while applications are frozen."""
        point("catalog.save", sqlite3.OperationalError)
        if not durable:
            self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            self._save(run, pid)
        finally:
            if not durable:
                self._db.execute("PRAGMA synchronous=FULL")

    def _save(self, run: RunRecord, pid: int | None) -> None:
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
                "INSERT INTO applications(run_id, position, name, plugin, distribution,"
                " version, mode, quiesce_start, quiesce_end, thaw_start, thaw_end, facts,"
                " error, capture, complete_start, complete_end, captured_at, writes_blocked_ms,"
                " paths) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
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
                        a.capture,
                        a.complete_start,
                        a.complete_end,
                        a.captured_at,
                        a.writes_blocked_ms,
                        None if a.paths is None else json.dumps(list(a.paths)),
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

    @_guarded
    def set_owner(self, run_id: str, role: str, owner: Owner, until: float | None = None) -> None:
        """Record a process working for ``run_id``: ``"run"`` (the freezeframe process) or
        ``"watchdog"``, whose work ends at ``until`` (a ``time.monotonic()``) at the latest."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO owners VALUES (?,?,?,?,?,?)",
                (run_id, role, owner.pid, owner.boot_id, owner.start_ticks, until),
            )

    @_guarded
    def owners(self, run_id: str) -> dict[str, tuple[Owner, float | None]]:
        """The processes recorded for ``run_id``, by role, each with its ``until``."""
        rows = self._db.execute(
            "SELECT role, pid, boot_id, start_ticks, until FROM owners WHERE run_id=?", (run_id,)
        ).fetchall()
        return {r[0]: (Owner(r[1], r[2], r[3]), r[4]) for r in rows}

    @_guarded
    def mark_deleted(self, run_id: str, stage: str, at: float) -> None:
        """Mark a stage's artifact deleted and journal the delete as pending, atomically."""
        with self._transaction() as db:
            db.execute(
                "UPDATE stages SET deleted_at=COALESCE(deleted_at, ?) WHERE run_id=? AND name=?",
                (at, run_id, stage),
            )
            db.execute("INSERT OR IGNORE INTO pending_deletes VALUES (?,?)", (run_id, stage))

    @_guarded
    def mark_verified(self, run_id: str, stage: str, at: float | None) -> None:
        """Record a successful verify of one stage's artifact (and nothing else); ``None``
        after a failed one."""
        with self._transaction() as db:
            db.execute(
                "UPDATE stages SET verified_at=? WHERE run_id=? AND name=?", (at, run_id, stage)
            )

    @_guarded
    def delete_done(self, run_id: str, stage: str) -> None:
        """The artifact is gone: the pending delete is over."""
        with self._transaction() as db:
            db.execute("DELETE FROM pending_deletes WHERE run_id=? AND stage=?", (run_id, stage))

    @_guarded
    def pending_deletes(self) -> list[tuple[str, str]]:
        """``(run id, stage)`` of every delete begun and not known to be done."""
        return [(r, s) for r, s in self._db.execute("SELECT run_id, stage FROM pending_deletes")]

    @_guarded
    def add_error(self, run_id: str, at: float, source: str, message: str) -> None:
        """Record one error of a run (a run may gather several: a stage, then a thaw)."""
        with self._transaction() as db:
            db.execute("INSERT INTO errors VALUES (?,?,?,?)", (run_id, at, source, message))

    # -- drills --------------------------------------------------------------
    @_guarded
    def save_drill(self, drill: DrillRecord) -> None:
        """Write the whole record of ``drill`` in one transaction."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO drills(drill_id, run_id, status, started_at, finished_at, scratch,"
                " record) VALUES (?,?,?,?,?,?,?) ON CONFLICT(drill_id) DO UPDATE SET"
                " status=excluded.status, finished_at=excluded.finished_at,"
                " record=excluded.record",
                (
                    drill.drill_id,
                    drill.run_id,
                    str(drill.status),
                    drill.started_at,
                    drill.finished_at,
                    drill.scratch,
                    # the times as numbers: the JSON form has them as text
                    json.dumps(
                        {
                            **drill.to_json(),
                            "started_at": drill.started_at,
                            "finished_at": drill.finished_at,
                        }
                    ),
                ),
            )

    @_guarded
    def add_drill_process(self, drill_id: str, owner: Owner) -> None:
        """Record a process a drill started, for the next command to kill if the drill dies."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO drill_processes VALUES (?,?,?,?)",
                (drill_id, owner.pid, owner.boot_id, owner.start_ticks),
            )

    @_guarded
    def drill_processes(self, drill_id: str) -> list[Owner]:
        """The processes recorded for ``drill_id``."""
        rows = self._db.execute(
            "SELECT pid, boot_id, start_ticks FROM drill_processes WHERE drill_id=?", (drill_id,)
        ).fetchall()
        return [Owner(*r) for r in rows]

    @_guarded
    def drill_cleaned(self, drill_id: str) -> None:
        """The drill's processes are gone and its scratch folder removed."""
        with self._transaction() as db:
            db.execute("UPDATE drills SET cleaned=1 WHERE drill_id=?", (drill_id,))
            db.execute("DELETE FROM drill_processes WHERE drill_id=?", (drill_id,))

    @_guarded
    def drills(self, run_id: str | None = None, *, uncleaned: bool = False) -> list[DrillRecord]:
        """The drills (of ``run_id``; only those whose scratch is not known removed), newest
        first."""
        if not self._drills:
            return []
        where, args = [], []
        if run_id is not None:
            where.append("run_id=?")
            args.append(run_id)
        if uncleaned:
            where.append("cleaned=0")
        query = "SELECT record FROM drills" + (f" WHERE {' AND '.join(where)}" if where else "")
        rows = self._db.execute(query + " ORDER BY started_at DESC, drill_id DESC", args)
        return [_drill(json.loads(r[0])) for r in rows.fetchall()]

    @_guarded
    def verdicts(self) -> dict[str, DrillStatus]:
        """For each run drilled to a verdict, its newest drill's (passed or failed)."""
        if not self._drills:
            return {}
        rows = self._db.execute(
            "SELECT run_id, status FROM drills WHERE status IN ('passed', 'failed')"
            " ORDER BY started_at, drill_id"
        ).fetchall()
        return {run_id: DrillStatus(status) for run_id, status in rows}  # the newest wins

    # -- reading -------------------------------------------------------------
    @_guarded
    def runs(self, *, status: RunStatus | None = None) -> list[RunRecord]:
        """Every run, newest first (optionally only those with ``status``), each with what
        its drills say (:attr:`RunRecord.proof`)."""
        query = "SELECT * FROM runs"
        args: tuple[Any, ...] = ()
        if status is not None:
            query += " WHERE status=?"
            args = (str(status),)
        with closing(self._db.execute(query + " ORDER BY started_at DESC, run_id DESC", args)) as c:
            rows = c.fetchall()
            cols = [d[0] for d in c.description]
        verdicts = self.verdicts()
        loaded = [dict(zip(cols, row, strict=True)) for row in rows]
        return [self._load(r, verdicts.get(r["run_id"])) for r in loaded]

    @_guarded
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

    @_guarded
    def errors(self, run_id: str) -> list[dict[str, Any]]:
        """Every error recorded for ``run_id``, oldest first."""
        rows = self._db.execute(
            "SELECT at, source, message FROM errors WHERE run_id=? ORDER BY at", (run_id,)
        ).fetchall()
        return [{"at": iso(at), "source": source, "message": msg} for at, source, msg in rows]

    @_guarded
    def pid_of(self, run_id: str) -> int | None:
        """The process that ran ``run_id``."""
        row = self._db.execute("SELECT pid FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return row[0] if row else None

    def _load(self, row: dict[str, Any], verdict: DrillStatus | None) -> RunRecord:
        run_id = row["run_id"]
        apps = []
        for r in self._db.execute(
            "SELECT name, plugin, distribution, version, mode, quiesce_start, quiesce_end,"
            f" thaw_start, thaw_end, facts, error, {self._added} FROM applications"
            " WHERE run_id=?"
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
                    capture=r[11] or "snapshot",  # runs recorded before modes were
                    complete_start=r[12],
                    complete_end=r[13],
                    captured_at=r[14],
                    writes_blocked_ms=r[15],
                    paths=None if r[16] is None else tuple(json.loads(r[16])),
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
            str(Proof.of(verdict)),
        )


def _drill(data: dict[str, Any]) -> DrillRecord:
    """A drill's record as :meth:`DrillRecord.to_json` wrote it."""
    return DrillRecord(
        drill_id=data["drill_id"],
        run_id=data["run_id"],
        profile=data["profile"],
        stage=data["stage"],
        status=DrillStatus(data["status"]),
        started_at=float(data["started_at"]),
        scratch=str(data.get("scratch") or ""),
        finished_at=data.get("finished_at"),
        applications=tuple(DrillApplication.from_json(a) for a in data.get("applications", ())),
        error=data.get("error"),
    )
