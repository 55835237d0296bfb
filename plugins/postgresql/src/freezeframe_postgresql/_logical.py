"""``capture = "logical"``: each database's exported snapshot inside the window, its
``pg_dump`` after the thaw.

PostgreSQL has no write block, and needs none: a ``REPEATABLE READ`` transaction's
snapshot is fixed by its first statement, and ``pg_export_snapshot()`` lets another
session (``pg_dump --snapshot``) read exactly that snapshot for as long as the exporting
transaction stays open. So the sessions are opened before the window (``prepare``), the
window only begins one transaction per database and exports its snapshot (a round trip
each, back to back), and the dumps run after the thaw, while writers go on.

What lands at the dump path (``dump_path``, in each snapshot's view) is described in
:mod:`freezeframe_postgresql._dump`.

Every session and every dump child ends in :meth:`LogicalCapture.release`, on every
path; if freezeframe dies, the server ends the sessions (and the snapshots with them)
and the kernel kills the dump child (:func:`run_tool`'s ``dies_with_us``).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from freezeframe.plugin import (
    Artifact,
    ConfigError,
    Deadline,
    FreezeframeError,
    QuiesceError,
    Table,
    copy_tree,
    fsync_dir,
    make_parents,
    run_tool,
    syncfs,
)
from freezeframe_postgresql._dump import (
    DATABASES,
    GLOBALS,
    Cluster,
    dump_folder,
    read_cluster,
    write_manifest,
)
from freezeframe_postgresql._programs import find_pg_tool

if TYPE_CHECKING:
    import psycopg

__all__ = ["BadInput", "LogicalCapture", "Reach"]

#: The dump tools every logical capture needs, of the server's major version.
DUMP_TOOLS = ("pg_dump", "pg_dumpall")


class BadInput(FreezeframeError):
    """What ``check`` finds that the profile or the installation must fix (a database the
    server lacks, a dump tool missing or of another version): ``check`` exits 2."""

    exit_code = 2


@dataclass(frozen=True)
class Reach:
    """How the plug-in reaches the server, for this module."""

    #: A session to database ``name`` (``None``: the DSN's), autocommit; failures raise
    #: the given error class, one line.
    connect: Callable[[str | None, type[FreezeframeError]], psycopg.Connection[Any]]
    #: A libpq connection string to database ``name`` for the dump tools (no secret).
    conninfo: Callable[[str], str]
    #: The environment the dump tools get: the password, if the profile names one.
    env: Mapping[str, str]
    #: A message naming the application, any secret blanked.
    message: Callable[[str | BaseException], str]


@dataclass
class _Session:
    """One database's session and, once captured, its exported snapshot."""

    conn: psycopg.Connection[Any]
    snapshot: str | None = None
    lsn: str | None = None


class LogicalCapture:
    """The logical capture of one cluster, from ``prepare`` to ``release``."""

    def __init__(self, reach: Reach, table: Table, name: str, *, bin_dir: Path | None) -> None:
        """Reads the fields ``dump_path`` and ``databases`` of the application's table."""
        self.reach = reach
        self.bin_dir = bin_dir
        text = table.get_str("dump_path", f"/freezeframe-dumps/{name}")
        if not Path(text).is_absolute() or Path(text) == Path("/"):
            raise ConfigError(
                "dump_path", f"{text!r}: give an absolute folder (where the dump lies in a backup)"
            )
        self.dump_path = Path(os.path.normpath(text))
        self.wanted = tuple(table.get_str_list("databases"))  # empty: every database
        if "databases" in table and not self.wanted:
            raise ConfigError("databases", "an empty list dumps nothing: leave it out for all")
        if len(set(self.wanted)) != len(self.wanted):
            raise ConfigError("databases", "names a database twice")
        self._sessions: dict[str, _Session] = {}
        self._cluster: Cluster | None = None
        self._tools: dict[str, str] = {}
        self._interrupted = threading.Event()
        self.facts: dict[str, Any] = {}

    def _error(
        self, text: str | BaseException, cls: type[FreezeframeError] = FreezeframeError
    ) -> FreezeframeError:
        return cls(self.reach.message(text))

    # -- check and prepare ------------------------------------------------------------
    def databases(
        self, conn: psycopg.Connection[Any], cls: type[FreezeframeError] = BadInput
    ) -> list[str]:
        """The databases to dump: ``databases``, each of which must exist and accept
        connections, or every one that does, templates left out."""
        import psycopg

        try:
            rows = conn.execute(
                "SELECT datname, datallowconn, datistemplate FROM pg_database ORDER BY datname"
            ).fetchall()
        except psycopg.Error as e:
            raise self._error(f"listing the databases: {e}", QuiesceError) from None
        if not self.wanted:
            return [name for name, allow, template in rows if allow and not template]
        known = {name: (allow, template) for name, allow, template in rows}
        for name in self.wanted:
            if name not in known:
                have = ", ".join(n for n, a, t in rows if a and not t)
                raise self._error(f"databases: no database {name!r} (the server has: {have})", cls)
            allow, template = known[name]
            if template or not allow:
                why = "is a template" if template else "does not accept connections"
                raise self._error(f"databases: {name!r} {why}: leave it out", cls)
        return list(self.wanted)

    def tools(self, major: int, cls: type[FreezeframeError] = BadInput) -> dict[str, str]:
        """pg_dump and pg_dumpall of the server's major version."""
        try:
            return {tool: find_pg_tool(tool, str(major), self.bin_dir) for tool in DUMP_TOOLS}
        except FreezeframeError as e:
            raise self._error(
                f'capture = "logical" runs pg_dump and pg_dumpall of the server\'s version: {e}',
                cls,
            ) from None

    def check(self, conn: psycopg.Connection[Any], major: int, data_dir: Path) -> None:
        """The databases to dump are there; pg_dump and pg_dumpall match the server; the
        dump path is apart from the data directory (a restore builds a cluster there)."""
        if self.dump_path.is_relative_to(data_dir) or data_dir.is_relative_to(self.dump_path):
            raise self._error(
                f"dump_path {self.dump_path} and the data directory {data_dir} overlap: a "
                "restore builds a fresh cluster at the data directory's path; move dump_path",
                BadInput,
            )
        self.databases(conn)
        self.tools(major)

    def prepare(
        self,
        conn: psycopg.Connection[Any],
        *,
        server_version: str,
        major: int,
        data_dir: Path,
        segment_size: int,
    ) -> None:
        """Read what a restore needs to know, and open one session per database (before the
        window: the window only begins their transactions)."""
        self.release()
        self._interrupted.clear()
        self.facts = {"method": "logical"}
        self._tools = self.tools(major, QuiesceError)
        import psycopg

        try:
            self._cluster = read_cluster(conn, server_version, major, data_dir, segment_size)
        except psycopg.Error as e:
            raise self._error(f"reading what a restore needs: {e}", QuiesceError) from None
        names = self.databases(conn, QuiesceError)
        try:
            for name in names:
                session = _Session(self.reach.connect(name, QuiesceError))
                self._sessions[name] = session
                # our transactions must outlive the dump, whatever the role's timeouts are
                session.conn.execute(
                    "SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0"
                    + ("; SET idle_session_timeout = 0" if major >= 14 else "")
                )
        except BaseException:
            self.release()
            raise
        self.facts.update(databases=names, dump_path=str(self.dump_path))

    # -- the capture, inside the window -----------------------------------------------
    def capture(self, deadline: Deadline, in_recovery: bool) -> None:
        """Begin a read-only repeatable-read transaction in each database and export its
        snapshot, back to back; note the WAL position of each."""
        import psycopg

        if not self._sessions:
            raise self._error("prepare did not run: nothing to capture", QuiesceError)
        lsn = "pg_last_wal_replay_lsn()" if in_recovery else "pg_current_wal_lsn()"
        started = time.monotonic()
        for name, session in self._sessions.items():
            if self._interrupted.is_set() or deadline.expired():
                why = "interrupted" if self._interrupted.is_set() else "past the deadline"
                raise self._error(f"capture {why} before database {name!r}", QuiesceError)
            try:
                session.conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                row = session.conn.execute(f"SELECT pg_export_snapshot(), {lsn}::text").fetchone()
            except psycopg.Error as e:
                raise self._error(
                    f"database {name!r}: exporting a snapshot: {e}", QuiesceError
                ) from None
            assert row is not None
            session.snapshot, session.lsn = str(row[0]), str(row[1])
        lsns = {name: s.lsn for name, s in self._sessions.items()}
        self.facts.update(
            capture_lsn=next(iter(lsns.values()), None),
            capture_lsns=lsns,
            capture_ms=round((time.monotonic() - started) * 1000, 3),
        )

    # -- the completion, after the thaw -----------------------------------------------
    def complete(self, snapshots: Sequence[Artifact]) -> None:
        """Dump every database from its exported snapshot, and the globals, once; put the
        result at the dump path's image in each view (copied into every further view)."""
        cluster = self._cluster
        if cluster is None or any(s.snapshot is None for s in self._sessions.values()):
            raise self._error("no captured snapshot to dump from")
        views = [s for s in snapshots if s.view is not None]
        if not views:
            return
        tools = self._tools
        first = self._target(views[0])
        tmp = first.with_name(f".{first.name}.{os.getpid()}.partial")
        started = time.monotonic()
        try:
            tmp.mkdir(mode=0o700)
            (tmp / DATABASES).mkdir(mode=0o700)
            for name, session in self._sessions.items():
                assert session.snapshot is not None
                self._run(
                    tools["pg_dump"],
                    f"--dbname={self.reach.conninfo(name)}",
                    f"--snapshot={session.snapshot}",
                    "--format=directory",
                    f"--file={tmp / DATABASES / dump_folder(name)}",
                )
            globals_argv = [
                tools["pg_dumpall"],
                f"--dbname={self.reach.conninfo(cluster.home_database)}",
                f"--database={cluster.home_database}",
                "--globals-only",
                f"--file={tmp / GLOBALS}",
            ]
            if not cluster.role_passwords:
                globals_argv.append("--no-role-passwords")
            self._run(*globals_argv)
            lsns = {name: s.lsn or "" for name, s in self._sessions.items()}
            write_manifest(tmp, cluster, lsns)
            _replace(tmp, first)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        dumped = time.monotonic()
        for view in views[1:]:
            self._copy(first, self._target(view))
        self.facts.update(
            dump_ms=round((dumped - started) * 1000, 1),
            dump_bytes=sum(f.stat().st_size for f in first.rglob("*") if f.is_file()),
            role_passwords=cluster.role_passwords,
        )

    def _target(self, snapshot: Artifact) -> Path:
        dst = snapshot.image(self.dump_path)
        if not dst.parent.is_dir():
            assert snapshot.view is not None
            dst = make_parents(self.dump_path, snapshot.view)
        return dst

    def _run(self, *argv: str) -> None:
        """A dump tool, without a timeout (a dump takes what it takes), stopped by
        :meth:`interrupt`, and killed by the kernel if freezeframe dies."""

        def interrupted() -> str | None:
            return "the run is stopping" if self._interrupted.is_set() else None

        tool = os.path.basename(argv[0])
        env = dict(self.reach.env)
        if self._cluster is not None and self._cluster.major >= 14:
            # a killed dump's session ends even while it waits for a lock or sends rows
            given = os.environ.get("PGOPTIONS", "")
            env["PGOPTIONS"] = f"{given} -c client_connection_check_interval=1000".strip()
        try:
            run_tool(argv, env=env, watch=interrupted, dies_with_us=True)
        except FreezeframeError as e:
            raise self._error(f"{tool}: {e}") from None

    def _copy(self, src: Path, dst: Path) -> None:
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.partial")

        def check(bytes: int, files: int) -> None:
            if self._interrupted.is_set():
                raise self._error("interrupted while copying the dump")

        try:
            copy_tree(src, tmp, progress=check)
            syncfs([tmp])
            _replace(tmp, dst)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    # -- the end ----------------------------------------------------------------------
    def interrupt(self) -> None:
        """Stop a capture or a dump under way (thread-safe, does not block)."""
        self._interrupted.set()

    def release(self) -> None:
        """Close every session: the server ends its transaction and its exported snapshot.
        Idempotent. A dump still running was stopped by :meth:`interrupt` first."""
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            session.conn.close()


def _replace(tmp: Path, dst: Path) -> None:
    """Put the folder ``tmp`` at ``dst``, replacing what the snapshot holds there."""
    if os.path.lexists(dst):
        old = dst.with_name(f".{dst.name}.{os.getpid()}.old")
        os.rename(dst, old)
        os.rename(tmp, dst)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()
    else:
        os.rename(tmp, dst)
    fsync_dir(dst.parent)
