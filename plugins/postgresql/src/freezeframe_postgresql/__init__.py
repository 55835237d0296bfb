"""freezeframe application plug-in for PostgreSQL (12 or later). It never blocks a writer.

Three capture modes:

- ``"base-backup"`` (the default on a **per-file** snapshot, ``clone``): a
  non-exclusive base backup around the snapshot. ``pg_backup_start(label,
  fast := true)`` in ``prepare`` (its immediate checkpoint before the freeze
  window), the snapshot, ``pg_backup_stop()`` in ``unquiesce``; then, after
  the thaw, :meth:`PostgresqlPlugin.complete` writes the returned
  ``backup_label`` (and ``tablespace_map``) and every WAL segment from the
  start LSN through the stop LSN into each snapshot's view, outside the
  window. A temporary replication slot, when the role may create one, keeps
  those segments from being recycled until ``release``.
- ``"snapshot"`` (the default on an **atomic** snapshot, ``btrfs``): the image
  is what a power cut would have left, which PostgreSQL recovers from by
  design: a ``CHECKPOINT`` in ``prepare`` shortens that recovery, and nothing
  happens in the window. No backup_label may go into such an image. An atomic
  snapshot of several filesystems is not one instant, so the plug-in refuses
  one when the data directory, ``pg_wal`` and the tablespaces are not on one
  filesystem.

- ``"logical"``: each database's snapshot exported inside the window, dumped by
  ``pg_dump --snapshot`` after the thaw into each view at ``dump_path``; a restore
  builds a fresh cluster from it (:mod:`freezeframe_postgresql._logical`,
  :mod:`freezeframe_postgresql._fresh`).

The backup mode and the slot live on a connection held open until ``release``
(the stop ends the backup mode in ``unquiesce``): if freezeframe dies, the
server ends the session, the backup mode and the slot with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from freezeframe.plugin import (
    ApplicationPlugin,
    Artifact,
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
    under,
)
from freezeframe_postgresql import _drill, _fresh, _restored
from freezeframe_postgresql._dump import Dumped, read_manifest
from freezeframe_postgresql._logical import LogicalCapture, Reach
from freezeframe_postgresql._restored import one_line
from freezeframe_postgresql._wal import WalRange, complete_copy, parse_lsn

if TYPE_CHECKING:
    import psycopg

__all__ = ["PostgresqlPlugin"]

log = logging.getLogger(__name__)

#: The oldest server supported (``server_version_num``).
MIN_VERSION = 120000
#: libpq's connect_timeout when the DSN gives none.
CONNECT_TIMEOUT = 10
APPLICATION_NAME = "freezeframe"
BACKUP_MODE = "backup-mode"
#: The capture mode that completes per-file views into a base backup after the thaw.
BASE_BACKUP = "base-backup"
#: The capture mode that exports each database's snapshot and dumps it after the thaw.
LOGICAL = "logical"
CRASH_CONSISTENT = "crash-consistent"


@dataclass(frozen=True)
class _Server:
    """What the server said about itself."""

    version_num: int
    version: str
    user: str
    superuser: bool
    replication: bool
    in_recovery: bool
    wal_level: str
    segment_size: int

    @property
    def major(self) -> int:
        return self.version_num // 10000


@dataclass(frozen=True)
class _Layout:
    """Where the cluster's files are on this machine."""

    data_dir: Path
    wal_dir: Path  # what pg_wal points to, or data_dir/pg_wal
    tablespaces: tuple[Path, ...]

    def paths(self) -> tuple[Path, ...]:
        """The data directory, then every folder outside it that the cluster needs."""
        out = [self.data_dir]
        for p in (self.wal_dir, *self.tablespaces):
            if not p.is_relative_to(self.data_dir) and p not in out:
                out.append(p)
        return tuple(out)


class PostgresqlPlugin(ApplicationPlugin):
    """One PostgreSQL cluster, reached through ``dsn``; its files must be on this machine."""

    kind = "postgresql"
    # in "snapshot" mode; "base-backup" completes any view that takes completions
    consistent_on = frozenset({SnapshotKind.ATOMIC})
    crash_safety = CrashSafety.PROCESS_EXIT
    capture_modes = ("snapshot", BASE_BACKUP, LOGICAL)
    # its quiesce blocks no writer: exported snapshots, the backup mode begun in prepare, or
    # a crash-consistent atomic snapshot (the core quiesces it after those that block)
    blocks_writes = False
    # a drill's copy answers the profile's sql checks
    answers_sql = True

    def __init__(self, name: str, table: Table) -> None:
        super().__init__(name, table)
        self.dsn = table.get_str("dsn")
        self._params = self._parse_dsn(self.dsn)
        self.data_dir = table.get_path("data_dir", None)
        self.bin_dir = table.get_path("bin_dir", None)
        self._secret = table.get_secret("password")
        self._secret_env = table.get_str("password_env", None)
        reach = Reach(
            connect=lambda dbname, cls: self._connect(cls, dbname),
            conninfo=self._conninfo,
            env={"PGPASSWORD": self._secret.reveal()} if self._secret else {},
            message=self._message,
        )
        self._logical = LogicalCapture(reach, table, name, bin_dir=self.bin_dir)
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._in_backup = False
        self._stopped: WalRange | None = None  # what pg_backup_stop returned, for complete
        self._server: _Server | None = None
        self._layout: _Layout | None = None
        self._facts: dict[str, Any] = {}

    # -- connecting, and saying what went wrong without a secret ---------------
    @staticmethod
    def _parse_dsn(dsn: str) -> dict[str, Any]:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        try:
            params = conninfo_to_dict(dsn)
        except psycopg.Error as e:
            # libpq quotes the faulty part, which could be a password: only show it when
            # the string names none.
            detail = "" if "password" in dsn.lower() or "@" in dsn else f": {one_line(e)}"
            raise ConfigError("dsn", f"not a libpq connection string or URI{detail}") from None
        if "password" in params:
            raise ConfigError(
                "dsn",
                "holds a password, and secrets never sit in a profile: name it with "
                "password_env or password_file, or use libpq's ~/.pgpass",
            )
        return dict(params)

    def _target(self) -> str:
        """Where the DSN leads, for messages (it holds no password: the constructor saw to it)."""
        keys = ("host", "hostaddr", "port", "dbname", "user")
        return " ".join(f"{k}={self._params[k]}" for k in keys if k in self._params) or (
            "libpq's defaults"
        )

    def _message(self, text: str | BaseException) -> str:
        line = one_line(text)
        if self._secret is not None and self._secret.reveal():
            line = line.replace(self._secret.reveal(), "***")
        return f"postgresql {self.name!r}: {line}"

    def _error(
        self, text: str | BaseException, cls: type[FreezeframeError] = FreezeframeError
    ) -> FreezeframeError:
        return cls(self._message(text))

    def _defaults(self) -> dict[str, Any]:
        """What the DSN leaves out: libpq's wait, our session's name."""
        extra: dict[str, Any] = {}
        if "connect_timeout" not in self._params:
            extra["connect_timeout"] = CONNECT_TIMEOUT
        if "application_name" not in self._params:
            extra["application_name"] = APPLICATION_NAME
        return extra

    def _connect(
        self, cls: type[FreezeframeError] = FreezeframeError, dbname: str | None = None
    ) -> psycopg.Connection[Any]:
        import psycopg

        extra = self._defaults()
        if dbname is not None:
            extra["dbname"] = dbname
        if self._secret is not None:
            extra["password"] = self._secret.reveal()
        try:
            return psycopg.connect(self.dsn, autocommit=True, **extra)
        except psycopg.Error as e:
            where = self._target() + (f", database {dbname}" if dbname is not None else "")
            raise self._error(f"cannot connect ({where}): {e}", cls) from None

    def _conninfo(self, dbname: str) -> str:
        """A connection string to ``dbname`` for libpq's tools (the DSN holds no password)."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo(**{**self._params, **self._defaults(), "dbname": dbname})

    def _query(
        self,
        conn: psycopg.Connection[Any],
        what: str,
        sql: str,
        params: Sequence[Any] = (),
        cls: type[FreezeframeError] = FreezeframeError,
    ) -> tuple[Any, ...]:
        """The one row ``sql`` returns; a failure is one line naming ``what`` was asked."""
        import psycopg

        try:
            row = conn.execute(sql, params).fetchone()
        except psycopg.Error as e:
            raise self._error(f"{what}: {e}", cls) from None
        if row is None:
            raise self._error(f"{what}: no answer", cls)
        return tuple(row)

    # -- what the server is and where its files are ----------------------------
    def _inspect(
        self,
        conn: psycopg.Connection[Any],
        cls: type[FreezeframeError] = FreezeframeError,
        *,
        local: bool = True,
    ) -> tuple[_Server, _Layout]:
        """Version, role, settings; the data directory, pg_wal and tablespaces, found locally
        (``local``: the logical capture reads nothing of them but their names)."""
        import psycopg

        row = self._query(
            conn,
            "asking the server what it is",
            "SELECT current_setting('server_version_num')::int, current_setting('server_version'),"
            " current_user::text, r.rolsuper, r.rolreplication, pg_is_in_recovery(),"
            " current_setting('wal_level'),"
            " (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')"
            " FROM pg_roles r WHERE r.rolname = current_user",
            cls=cls,
        )
        server = _Server(*row)
        if server.version_num < MIN_VERSION:
            raise self._error(
                f"PostgreSQL {server.version} is not supported: freezeframe needs 12 or later", cls
            )
        told: Path | None = None
        try:
            told = Path(conn.execute("SELECT current_setting('data_directory')").fetchall()[0][0])
        except psycopg.errors.InsufficientPrivilege:
            if self.data_dir is None:
                raise self._error(
                    f"role {server.user!r} may not read data_directory: set data_dir in the "
                    f"profile, or GRANT pg_read_all_settings TO {server.user}",
                    cls,
                ) from None
        except psycopg.Error as e:
            raise self._error(f"data_directory: {e}", cls) from None
        data_dir = self.data_dir or told
        assert data_dir is not None
        if self.data_dir and told and told.resolve() != self.data_dir.resolve():
            raise self._error(
                f"data_dir {self.data_dir} is not this server's data directory ({told}): "
                "fix data_dir, or leave it out to use the server's",
                cls,
            )
        if not local:
            return server, _Layout(data_dir, data_dir / "pg_wal", ())
        self._check_local(conn, server, data_dir, cls)
        wal = data_dir / "pg_wal"
        wal_dir = Path(os.path.normpath(data_dir / os.readlink(wal))) if wal.is_symlink() else wal
        rows = conn.execute(
            "SELECT pg_tablespace_location(oid) FROM pg_tablespace"
            " WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY oid"
        ).fetchall()
        tablespaces = tuple(Path(r[0]) for r in rows if r[0] and Path(r[0]).is_absolute())
        for ts in tablespaces:
            if not os.access(ts, os.R_OK | os.X_OK):
                raise self._error(f"tablespace {ts} is not readable here", cls)
        return server, _Layout(data_dir, wal_dir, tablespaces)

    def _check_local(
        self,
        conn: psycopg.Connection[Any],
        server: _Server,
        data_dir: Path,
        cls: type[FreezeframeError],
    ) -> None:
        """The data directory is on this machine, readable, and the server's own."""
        if not data_dir.is_dir():
            raise self._error(
                f"data directory {data_dir} is not on this machine: freezeframe must run on "
                "the database server (or set data_dir to where its files are)",
                cls,
            )
        try:
            version = (data_dir / "PG_VERSION").read_text(encoding="ascii").strip()
            with open(data_dir / "global" / "pg_control", "rb") as f:
                local_id = int.from_bytes(f.read(8), sys.byteorder)
        except OSError as e:
            raise self._error(
                f"cannot read {e.filename}: {e.strerror} (run freezeframe as root or as the "
                "owner of the data directory)",
                cls,
            ) from None
        if version != str(server.major):
            raise self._error(
                f"{data_dir} holds a PostgreSQL {version} cluster but the server runs "
                f"{server.version}: data_dir names another cluster",
                cls,
            )
        row = conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()
        if row is not None and int(row[0]) != local_id:
            raise self._error(
                f"{data_dir} is another cluster's data directory (system identifier "
                f"{local_id}, the server's is {row[0]}): fix data_dir",
                cls,
            )

    def _privileged(self, conn: psycopg.Connection[Any], server: _Server) -> None:
        if server.superuser:
            return
        start, stop = (
            ("pg_backup_start(text, boolean)", "pg_backup_stop(boolean)")
            if server.major >= 15
            else ("pg_start_backup(text, boolean, boolean)", "pg_stop_backup(boolean, boolean)")
        )
        row = self._query(
            conn,
            "privileges",
            "SELECT has_function_privilege(%s, 'EXECUTE')"
            " AND has_function_privilege(%s, 'EXECUTE')",
            (start, stop),
        )
        if not row[0]:
            raise self._error(
                f"role {server.user!r} may not run {start.split('(')[0]}/{stop.split('(')[0]}: "
                f"GRANT EXECUTE ON FUNCTION {start}, {stop} TO {server.user} (or use a superuser)"
            )

    # -- the plug-in API -------------------------------------------------------
    def check(self) -> None:
        """Reachable, authenticated, 12 or later, allowed to back up; its files are here
        (logical: the databases are there, pg_dump is the server's version)."""
        conn = self._connect()
        try:
            server, layout = self._inspect(conn, local=self.capture != LOGICAL)
            if self.capture == LOGICAL:
                self._logical.check(conn, server.major, layout.data_dir)
            else:
                self._privileged(conn, server)
        finally:
            conn.close()
        self._server, self._layout = server, layout

    def data_paths(self) -> Sequence[Path]:
        """The data directory, what pg_wal points to if elsewhere, every tablespace; none
        in the logical capture, whose completion writes the dump."""
        if self.capture == LOGICAL:
            return ()
        if self._layout is None:
            conn = self._connect()
            try:
                self._server, self._layout = self._inspect(conn)
            finally:
                conn.close()
        return self._layout.paths()

    def prepare(self, snapshot_kinds: frozenset[SnapshotKind]) -> None:
        """Begin the backup mode ("base-backup") or checkpoint ("snapshot", atomic only);
        open a session per database to dump ("logical")."""
        with self._lock:
            self._release()  # whatever an earlier run may have left
            self._facts = {}
            if self.capture == LOGICAL:
                self._prepare_logical()
                return
            conn = self._connect(QuiesceError)
            try:
                self._server, self._layout = self._inspect(conn, QuiesceError)
                self._facts.update(
                    server_version=self._server.version,
                    data_dir=str(self._layout.data_dir),
                    tablespaces=[str(p) for p in self._layout.tablespaces],
                )
                if self.completes:
                    self._start_backup(conn, self._server)
                else:
                    if SnapshotKind.PER_FILE in snapshot_kinds:  # check() refuses it first
                        raise self._error(
                            f'a per-file snapshot needs capture = "{BASE_BACKUP}"', QuiesceError
                        )
                    if SnapshotKind.ATOMIC in snapshot_kinds:
                        self._refuse_split(self._layout)
                    self._checkpoint(conn, self._server)
            except BaseException:
                conn.close()
                self._in_backup = False
                raise
            self._conn = conn

    def _prepare_logical(self) -> None:
        conn = self._connect(QuiesceError)
        try:
            self._server, self._layout = self._inspect(conn, QuiesceError, local=False)
            self._facts.update(
                server_version=self._server.version, data_dir=str(self._layout.data_dir)
            )
            self._logical.prepare(
                conn,
                server_version=self._server.version,
                major=self._server.major,
                data_dir=self._layout.data_dir,
                segment_size=self._server.segment_size,
            )
        finally:
            conn.close()

    def _refuse_split(self, layout: _Layout) -> None:
        """An atomic snapshot of several filesystems (or btrfs subvolumes) is several instants."""
        paths = [layout.data_dir, layout.wal_dir, *layout.tablespaces]
        devices = {p: p.stat().st_dev for p in paths}
        first = devices[layout.data_dir]
        apart = [p for p in paths if devices[p] != first]
        if apart:
            raise self._error(
                f"{apart[0]} is on another filesystem (or subvolume) than the data directory "
                f"{layout.data_dir}, and an atomic snapshot of several is not one instant: "
                "move pg_wal and every tablespace onto the data directory's filesystem, or "
                f'use capture = "{BASE_BACKUP}" (PostgreSQL\'s backup mode)',
                QuiesceError,
            )

    def _start_backup(self, conn: psycopg.Connection[Any], server: _Server) -> None:
        import psycopg

        if server.in_recovery:
            raise self._error(
                "the server is a standby: freezeframe takes per-file backups of a primary "
                "only; back up the primary, or use an atomic snapshot backend (btrfs)",
                QuiesceError,
            )
        if server.wal_level == "minimal":
            raise self._error(
                "wal_level = minimal allows no online backup: set wal_level = replica "
                "(a restart), or use an atomic snapshot backend (btrfs)",
                QuiesceError,
            )
        # Our session must outlive the snapshot, however long the role's timeouts are.
        conn.execute("SET statement_timeout = 0")
        conn.execute("SET idle_in_transaction_session_timeout = 0")
        if server.major >= 14:
            conn.execute("SET idle_session_timeout = 0")
        self._facts["method"] = BACKUP_MODE
        self._facts["wal_kept_by"] = "nothing (a checkpoint during the snapshot may recycle it)"
        if server.superuser or server.replication:
            # Keeps every segment from here on until our session ends: taken before the start.
            slot = f"freezeframe_{secrets.token_hex(6)}"
            try:
                conn.execute("SELECT pg_create_physical_replication_slot(%s, true, true)", (slot,))
                self._facts["wal_kept_by"] = f"temporary replication slot {slot}"
            except psycopg.Error as e:
                log.warning("%s", self._message(f"no temporary replication slot: {e}"))
        label = f"freezeframe {self.name} {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
        started = time.monotonic()
        sql = (
            "SELECT pg_backup_start(%s, true)::text"
            if server.major >= 15
            else "SELECT pg_start_backup(%s, true, false)::text"
        )
        (lsn,) = self._query(conn, "pg_backup_start", sql, (label,), QuiesceError)
        self._in_backup = True
        self._facts.update(
            start_lsn=lsn, label=label, checkpoint_ms=round((time.monotonic() - started) * 1000, 1)
        )

    def _checkpoint(self, conn: psycopg.Connection[Any], server: _Server) -> None:
        import psycopg

        self._facts["method"] = CRASH_CONSISTENT
        started = time.monotonic()
        try:
            conn.execute("CHECKPOINT")
            self._facts["checkpoint_ms"] = round((time.monotonic() - started) * 1000, 1)
        except psycopg.errors.InsufficientPrivilege:
            self._facts["checkpoint_ms"] = None  # an optimisation only: recovery is longer
            log.info("%s", self._message("may not CHECKPOINT (pg_checkpoint); skipped"))
        except psycopg.Error as e:
            raise self._error(f"CHECKPOINT: {e}", QuiesceError) from None
        self._facts["start_lsn"] = self._current_lsn(conn, server)

    @staticmethod
    def _current_lsn(conn: psycopg.Connection[Any], server: _Server) -> str:
        fn = "pg_last_wal_replay_lsn()" if server.in_recovery else "pg_current_wal_lsn()"
        row = conn.execute(f"SELECT {fn}::text").fetchone()
        return str(row[0]) if row else ""

    def quiesce(self, deadline: Deadline) -> None:
        """Nothing to do: writers go on; the backup mode (or the checkpoint) began in prepare.
        Logical: export each database's snapshot (the capture), back to back."""
        if self.capture == LOGICAL:
            assert self._server is not None, "prepare did not run"
            self._logical.capture(deadline, self._server.in_recovery)
            return
        if self._conn is None:
            raise self._error("prepare did not run: nothing to quiesce", QuiesceError)

    def unquiesce(self, snapshots: Sequence[Artifact]) -> None:
        """End the backup mode (its results kept for :meth:`complete`); the session and
        its slot stay until :meth:`release`. Idempotent."""
        with self._lock:
            conn = self._conn
            if conn is None or self._stopped is not None:
                return
            if self._in_backup:
                try:
                    self._stop_backup(conn)
                except BaseException:
                    self._release()  # ends the backup mode with the session
                    raise
                return  # the slot keeps the WAL through the stop LSN for complete()
            self._conn = None
            try:
                assert self._server is not None
                self._facts["stop_lsn"] = self._current_lsn(conn, self._server)
            except Exception as e:  # the atomic image does not depend on it
                log.warning("%s", self._message(f"cannot read the stop LSN: {e}"))
            finally:
                conn.close()

    def _stop_backup(self, conn: psycopg.Connection[Any]) -> None:
        assert self._server is not None
        sql = (
            "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)"
            if self._server.major >= 15
            else "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, false)"
        )
        stop_lsn, label, spcmap = self._query(conn, "pg_backup_stop", sql, (), QuiesceError)
        self._in_backup = False
        self._facts["stop_lsn"] = stop_lsn
        self._stopped = WalRange(
            label=label,
            tablespace_map=spcmap or "",
            start_lsn=parse_lsn(self._facts["start_lsn"]),
            stop_lsn=parse_lsn(stop_lsn),
            segment_size=self._server.segment_size,
        )

    def completed_paths(self) -> Sequence[Path]:
        """backup_label, tablespace_map (with tablespaces) and the WAL folder; logical:
        the dump path."""
        if self.capture == LOGICAL:
            return (self._logical.dump_path,)
        if not self.completes:
            return ()
        layout = self._layout
        if layout is None:
            self.data_paths()
            layout = self._layout
        assert layout is not None
        out = [layout.data_dir / "backup_label"]
        if layout.tablespaces:
            out.append(layout.data_dir / "tablespace_map")
        return (*out, layout.wal_dir)

    def complete(self, snapshots: Sequence[Artifact]) -> None:
        """Write backup_label, tablespace_map and the WAL from the start LSN through the
        stop LSN into each view (after the thaw: the window holds none of this copy).
        Logical: pg_dump each database from its snapshot, and the globals, into each view."""
        with self._lock:
            if self.capture == LOGICAL:
                self._logical.complete(snapshots)
                return
            wal, layout = self._stopped, self._layout
            if wal is None or layout is None:
                raise self._error("the backup mode did not end: nothing to complete")
            completed = []
            for artifact in snapshots:
                try:
                    done = complete_copy(artifact, layout.data_dir, layout.wal_dir, wal)
                except FreezeframeError as e:
                    raise self._error(
                        f"snapshot {artifact.id} is not a usable backup: {e}"
                    ) from None
                except OSError as e:
                    raise self._error(f"snapshot {artifact.id}: cannot complete it: {e}") from None
                if done is None:
                    raise self._error(
                        f"snapshot {artifact.id} cannot be written, so its backup_label and "
                        "WAL cannot be added: it would not recover"
                    )
                completed.append(artifact.id)
                self._facts["wal_segments"] = done.segments
                self._facts["wal_bytes"] = done.bytes
            segments = wal.segments()
            self._facts["wal_files"] = f"{segments[0]}..{segments[-1]}" if segments else ""
            self._facts["completed_snapshots"] = completed

    def release(self) -> None:
        """Close the session: ends a backup mode still running and drops the slot. Idempotent."""
        with self._lock:
            self._release()

    def interrupt(self) -> None:
        """Stop a logical capture or its dump under way (the other modes wait for nothing)."""
        self._logical.interrupt()

    def _release(self) -> None:
        self._logical.release()
        conn, self._conn = self._conn, None
        self._in_backup = False
        self._stopped = None
        if conn is not None:
            conn.close()

    def describe(self) -> Mapping[str, Any]:
        """Server version, method (backup-mode, crash-consistent, logical), start and stop
        LSNs (logical: the LSN at each database's capture)."""
        facts = {**self._facts, **(self._logical.facts if self.capture == LOGICAL else {})}
        if "start_lsn" in facts and "stop_lsn" in facts:
            with contextlib.suppress(ValueError):
                start, stop = parse_lsn(facts["start_lsn"]), parse_lsn(facts["stop_lsn"])
                facts["wal_bytes_during_backup"] = stop - start
        return facts

    # -- restore ---------------------------------------------------------------
    def _dumped(self, root: Path) -> Dumped | None:
        """The logical dump restored below ``root``, when the run captured one."""
        try:
            return read_manifest(under(root, self._logical.dump_path))
        except FreezeframeError as e:
            raise self._error(e) from None

    def _hidden(self) -> list[str]:
        """The environment variables holding our password, blanked for the servers."""
        return [n for n in (self._secret_env, "PGPASSWORD") if n and n in os.environ]

    def _restored_data_dir(self, root: Path, recorded: str | None = None) -> Path:
        """The restored data directory: the dump's (logical), else where the run
        ``recorded`` it was, the profile's data_dir, the server's."""
        dumped = self._dumped(root)
        data_dir = dumped.data_directory if dumped else None
        data_dir = data_dir or (Path(recorded) if recorded else None) or self.data_dir
        data_dir = data_dir or (self._layout.data_dir if self._layout else None)
        if data_dir is None and self.capture == LOGICAL:
            raise self._error(
                f"{root} holds no logical dump at {under(root, self._logical.dump_path)} and "
                "no data directory: was dump_path changed since the backup?"
            )
        if data_dir is None:
            try:
                data_dir = self.data_paths()[0]
            except FreezeframeError:
                found = _restored.data_dirs_below(root)
                if len(found) != 1:
                    raise self._error(
                        f"the server cannot say where its data directory is and {root} holds "
                        f"{len(found)} data directories: set data_dir in the profile"
                    ) from None
                return found[0]
        restored = under(root, data_dir)
        if not (restored / "PG_VERSION").is_file():
            raise self._error(f"{restored} was not restored (no PG_VERSION there)")
        return restored

    def prepare_restored(self, root: Path) -> None:
        """Remove the original's pid file; point pg_wal and tablespace links at the restored
        folders (never at the original's); data directory mode 0700; ownership kept.
        A logical dump: build a fresh cluster from it where the data directory was."""
        dumped = self._dumped(root)
        if dumped is not None:
            try:
                built = _fresh.build(root, dumped, bin_dir=self.bin_dir, hide=self._hidden())
            except FreezeframeError as e:
                raise self._error(e) from None
            except OSError as e:
                raise self._error(f"building a cluster from {dumped.folder}: {e}") from None
            log.info("%s", self._message(f"{built}: built from the logical dump"))
            return
        restored = self._restored_data_dir(root)
        try:
            changed = _restored.make_startable(restored, root)
        except FreezeframeError as e:
            raise self._error(e) from None
        except OSError as e:
            raise self._error(f"{restored}: {e}") from None
        for line in changed:
            log.info("%s", self._message(f"{restored}: {line}"))

    def verify_restored(self, root: Path) -> None:
        """Start a temporary server on the restored copy, let it recover, query it, stop it."""
        restored = self._restored_data_dir(root)
        dbname = self._params.get("dbname")
        dumped = self._dumped(root)
        if dumped is not None and dbname not in dumped.names():
            dbname = None  # not dumped: initdb's postgres is there
        try:
            facts = _restored.start_and_query(
                restored,
                bin_dir=self.bin_dir,
                user=self._params.get("user"),
                dbname=dbname,
            )
        except FreezeframeError as e:
            raise self._error(e) from None
        if facts["in_recovery"]:
            raise self._error(
                f"the restored copy {restored} is still in recovery (a standby.signal?): "
                "it started, but as a standby"
            )
        log.info("%s", self._message(f"{restored} recovered and answered: {facts}"))

    @contextlib.contextmanager
    def drill(self, ctx: DrillContext) -> Iterator[Running | None]:
        """Start the restored copy (the physical data directory, or the cluster a logical
        restore built) on a private socket; check that it recovered and is no standby,
        ``pg_amcheck`` every database; yield how to reach it; stop it, then
        ``pg_checksums --check`` it when it has data checksums
        (:mod:`freezeframe_postgresql._drill`)."""
        method = ctx.facts.get("method")
        reached = {BACKUP_MODE: "stop_lsn", CRASH_CONSISTENT: "start_lsn"}.get(str(method))
        wanted = _drill.Wanted(
            user=self._params.get("user"),
            dbname=self._params.get("dbname"),
            bin_dir=self.bin_dir,
            reached=str(ctx.facts[reached]) if reached and ctx.facts.get(reached) else None,
            hide=self._hidden(),
        )

        def locate() -> Path:
            try:
                return self._restored_data_dir(ctx.root, ctx.facts.get("data_dir"))
            except FreezeframeError as e:  # the core names the application
                raise FreezeframeError(str(e).removeprefix(self._message(""))) from None

        with _drill.drill(ctx, locate, wanted) as running:
            yield running


@hookimpl
def freezeframe_register_applications(register: Callable[[type[Any]], None]) -> None:
    """Register the ``postgresql`` application plug-in."""
    register(PostgresqlPlugin)
