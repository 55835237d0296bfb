"""The drill of a restored cluster (:meth:`PostgresqlPlugin.drill`): started, recovered,
checked by PostgreSQL's own tools.

The copy is started by :func:`~freezeframe_postgresql._restored.temporary_server`, as
``restore --verify`` starts it, but with its socket, configuration and log in the drill's
private folder and its postmaster started by the drill (so it never outlives it). The
checks, in order:

- ``start``: the server came up on the copy (else the server's last FATAL line);
- ``recovery``: it finished recovery and is not a standby, and, for a physical capture,
  its WAL reached the point the backup recorded (the backup's end, or the checkpoint
  before an atomic snapshot);
- ``amcheck``: ``pg_amcheck --all --heapallindexed`` (every table and btree index of
  every database, each heap tuple looked up in its indexes), the ``amcheck`` extension
  installed into the copy where it is missing;
- once stopped, ``checksums``: ``pg_checksums --check`` over the stopped copy, when the
  cluster has data checksums (and ``stop``, failed, when it did not shut down cleanly).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from freezeframe.plugin import (
    CheckFailed,
    CheckSkipped,
    DrillContext,
    FreezeframeError,
    Running,
    ToolError,
    run_tool,
)
from freezeframe_postgresql._programs import find_pg_tool
from freezeframe_postgresql._restored import (
    STOP_TIMEOUT,
    Temporary,
    as_owner,
    one_line,
    owner_of,
    temporary_server,
)
from freezeframe_postgresql._wal import parse_lsn

if TYPE_CHECKING:
    import psycopg

__all__ = ["Wanted", "drill"]

#: How long pg_amcheck or pg_checksums may take over a large cluster.
CHECK_TIMEOUT = 24 * 3600
#: How many findings a failed check names before it counts the rest.
SHOWN = 3
#: The bootstrap superuser's oid (initdb's ``-U``).
BOOTSTRAP_OID = 10


@dataclass(frozen=True)
class Wanted:
    """What the profile and the run say about the copy."""

    #: The profile's role and database (the DSN's); ``None``: the copy's superuser, postgres.
    user: str | None
    dbname: str | None
    bin_dir: Path | None
    #: The LSN the recovered copy must have reached (``None``: nothing recorded to compare).
    reached: str | None
    #: The environment variables holding the profile's password, blanked for the tools.
    hide: Sequence[str] = ()


class _Copy:
    """The running copy: who to connect as, what it said, its checks."""

    def __init__(self, ctx: DrillContext, data_dir: Path, server: Temporary, wanted: Wanted):
        self.ctx = ctx
        self.data_dir = data_dir
        self.server = server
        self.wanted = wanted
        self.user = wanted.user or server.owner
        self.dbname = wanted.dbname or "postgres"
        self.superuser: str | None = None  # once a session was had
        self.databases: list[str] = []
        self.data_checksums: str | None = None
        self.env = {name: "" for name in wanted.hide}

    # -- reaching it -----------------------------------------------------------
    def conninfo(self, user: str, dbname: str, **extra: Any) -> str:
        from psycopg.conninfo import make_conninfo

        host, port = str(self.server.socket_dir), self.server.port
        return make_conninfo(host=host, port=port, user=user, dbname=dbname, **extra)

    def _session(self) -> psycopg.Connection[Any]:
        """A session as the profile's role (else the owner's name, else postgres) to the
        profile's database (else postgres, else template1): the first that lets us in."""
        import psycopg

        users = [u for u in (self.wanted.user, self.server.owner, "postgres") if u]
        dbs = [d for d in (self.wanted.dbname, "postgres", "template1") if d]
        last = ""
        for user in dict.fromkeys(users):
            for dbname in dict.fromkeys(dbs):
                try:
                    conninfo = self.conninfo(user, dbname, connect_timeout=30)
                    return psycopg.connect(conninfo, autocommit=True)
                except psycopg.OperationalError as e:
                    last = one_line(e)
        raise CheckFailed(f"it let no role of {', '.join(dict.fromkeys(users))} in: {last}")

    def query(self, sql: str, timeout: float) -> Any:
        """:attr:`Running.query`: the first column of the first row, within ``timeout``."""
        import psycopg

        options = f"-c statement_timeout={max(1, round(timeout * 1000))}"
        conninfo = self.conninfo(
            self.user, self.dbname, connect_timeout=max(2, math.ceil(timeout)), options=options
        )
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                cur = conn.execute(sql)
                row = cur.fetchone() if cur.description else None
        except psycopg.Error as e:
            raise CheckFailed(one_line(e)) from None
        return None if row is None else row[0]

    def running(self) -> Running:
        sock, port = str(self.server.socket_dir), str(self.server.port)
        url = (
            f"postgresql://{quote(self.user, safe='')}@{quote(sock, safe='')}:{port}"
            f"/{quote(self.dbname, safe='')}"
        )
        return Running(
            connection={
                "HOST": sock,
                "PORT": port,
                "USER": self.user,
                "DBNAME": self.dbname,
                "URL": url,
            },
            client_env={
                "PGHOST": sock,
                "PGPORT": port,
                "PGUSER": self.user,
                "PGDATABASE": self.dbname,
            },
            query=self.query,
        )

    # -- the checks ------------------------------------------------------------
    def recovery(self) -> str:
        """Out of recovery, not a standby, past what the backup recorded."""
        import psycopg

        with self._session() as conn:
            try:
                row = conn.execute(
                    "SELECT pg_is_in_recovery(), current_setting('server_version'),"
                    " (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()"
                    " ELSE pg_current_wal_lsn() END)::text, current_setting('data_checksums'),"
                    " (SELECT rolname FROM pg_roles WHERE oid = %s)::text,"
                    " array(SELECT datname::text FROM pg_database WHERE datallowconn"
                    " ORDER BY datname), %s IN (SELECT rolname FROM pg_roles WHERE rolcanlogin)",
                    (BOOTSTRAP_OID, self.wanted.user or ""),
                ).fetchone()
            except psycopg.Error as e:
                raise CheckFailed(f"it refused a query: {one_line(e)}") from None
        assert row is not None
        in_recovery, version, lsn, checksums, superuser, databases, may_log_in = row
        self.superuser, self.databases, self.data_checksums = superuser, databases, checksums
        self.user = self.wanted.user if may_log_in and self.wanted.user else superuser
        if self.wanted.dbname not in databases:
            self.dbname = "postgres" if "postgres" in databases else databases[0]
        if in_recovery:
            raise CheckFailed(
                f"still in recovery at LSN {lsn}: the copy started as a standby "
                "(it holds a standby.signal?)"
            )
        seen = f"recovered to LSN {lsn}, not a standby (PostgreSQL {version})"
        if self.wanted.reached is None:
            return seen
        if parse_lsn(lsn) < parse_lsn(self.wanted.reached):
            raise CheckFailed(
                f"recovered only to LSN {lsn}, before {self.wanted.reached}, which the backup "
                "recorded: its WAL is incomplete"
            )
        return f"{seen}; the backup recorded {self.wanted.reached}"

    def amcheck(self) -> str:
        """pg_amcheck over every database: heap and btree, each heap tuple in its indexes."""
        if self.superuser is None:
            raise CheckSkipped("no session on the copy (see the recovery check)")
        tool = _tool("pg_amcheck", self.server.major, self.wanted.bin_dir)
        have = self.query("SELECT count(*) FROM pg_available_extensions WHERE name = 'amcheck'", 60)
        if not have:
            raise CheckSkipped(
                "the amcheck extension is not installed on this machine "
                "(it comes with PostgreSQL's contrib package)"
            )
        jobs = str(max(1, min(4, os.cpu_count() or 1)))
        argv = [tool, "--all", "--heapallindexed", "--install-missing", f"--jobs={jobs}", "-w"]
        argv += ["-h", str(self.server.socket_dir), "-p", str(self.server.port)]
        result = self._run([*argv, "-U", self.superuser])
        found = _findings(result.stdout)
        if result.returncode != 0 or found:
            if not found:
                raise CheckFailed(f"pg_amcheck failed (exit {result.returncode}): {_last(result)}")
            raise CheckFailed(_counted(found, "problem"))
        count = len(self.databases)
        return (
            f"{count} database{'s' if count != 1 else ''}: every table and btree index "
            "sound, each heap tuple found in its indexes"
        )

    def checksums(self) -> str:
        """pg_checksums --check over the stopped copy, when it has data checksums."""
        if self.data_checksums is None:
            raise CheckSkipped("no session on the copy said whether it has data checksums")
        if self.data_checksums != "on":
            raise CheckSkipped(
                "the cluster has no data checksums (initdb --data-checksums, or "
                "pg_checksums --enable on a stopped cluster, adds them)"
            )
        if self.server.stopped != "fast":
            raise CheckSkipped(
                "the server did not shut down cleanly, and pg_checksums reads only a cluster "
                "that did"
            )
        tool = _tool("pg_checksums", self.server.major, self.wanted.bin_dir)
        argv = as_owner(
            owner_of(self.data_dir), [tool, "--check", "-D", str(self.data_dir)], self.data_dir
        )
        result = self._run(argv)
        bad = re.findall(
            r'checksum verification failed in file "([^"]+)", block (\d+): (.+)', result.stderr
        )
        if bad:
            total = re.search(r"^Bad checksums:\s*(\d+)", result.stdout, re.M)
            found = [f"{self._relative(path)} block {block} ({what})" for path, block, what in bad]
            raise CheckFailed(_counted(found, "bad checksum", int(total[1]) if total else None))
        if result.returncode != 0:
            raise CheckFailed(f"pg_checksums failed (exit {result.returncode}): {_last(result)}")
        files = re.search(r"^Files scanned:\s*(\d+)", result.stdout, re.M)
        blocks = re.search(r"^Blocks scanned:\s*(\d+)", result.stdout, re.M)
        if files and blocks:
            return f"{blocks[1]} blocks in {files[1]} files: every checksum right"
        return "every checksum right"

    def _relative(self, path: str) -> str:
        """A file pg_checksums names, relative to the data directory when it is in it."""
        with contextlib.suppress(ValueError):
            return str(Path(path).relative_to(self.data_dir))
        return path

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        """Run a check's tool, bounded, stopped when the drill is interrupted."""
        try:
            return run_tool(
                argv,
                timeout=CHECK_TIMEOUT,
                env=self.env,
                cwd="/",
                check=False,
                watch=lambda: "the drill was interrupted" if self.ctx.cancelled else None,
            )
        except ToolError:
            self.ctx.stop_if_cancelled()
            raise


def _tool(name: str, major: str, bin_dir: Path | None) -> str:
    try:
        return find_pg_tool(name, major, bin_dir)
    except FreezeframeError as e:
        raise CheckSkipped(str(e)) from None


def _last(result: subprocess.CompletedProcess[str]) -> str:
    for text in (result.stderr, result.stdout):
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if lines:
            return lines[-1]
    return "no message"


def _findings(stdout: str) -> list[str]:
    """pg_amcheck's report, one line per finding: what it checked (a line of its own,
    ``heap table "db.schema.t", block 0, offset 1:``), what it found (the first indented
    line below it)."""
    found: list[str] = []
    head: str | None = None
    for line in stdout.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            head = line.strip().removesuffix(":")
            found.append(head)
        elif head is not None:
            what = " ".join(line.split()).removeprefix("ERROR: ")
            found[-1] = f"{head}: {what}"
            head = None  # the first line says it; DETAIL and HINT lines follow
    return found


def _counted(found: list[str], what: str, total: int | None = None) -> str:
    """``2 problems: a; b`` (the first few, then how many more)."""
    total = max(total or 0, len(found))
    shown = "; ".join(found[:SHOWN])
    more = f"; and {total - SHOWN} more" if total > SHOWN else ""
    return f"{total} {what}{'s' if total != 1 else ''}: {shown}{more}"


def _unclean(stopped: str) -> str:
    if stopped == "exited":
        raise CheckFailed("the server had ended by itself before the drill stopped it")
    how = "by an immediate shutdown" if stopped == "immediate" else "by a kill"
    raise CheckFailed(f"a fast shutdown did not finish within {STOP_TIMEOUT} s: stopped {how}")


@contextlib.contextmanager
def drill(
    ctx: DrillContext, locate: Callable[[], Path], wanted: Wanted
) -> Iterator[Running | None]:
    """Start the copy whose data directory ``locate`` finds, check it, yield how to reach
    it; stop it after the block and check the stopped copy."""
    found: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:

        def start() -> str:
            data_dir = found["data_dir"] = locate()
            server = found["server"] = stack.enter_context(
                temporary_server(
                    data_dir,
                    bin_dir=wanted.bin_dir,
                    folder=ctx.work / "server",
                    spawn=ctx.spawn,
                    waiting=ctx.stop_if_cancelled,
                )
            )
            return f"PostgreSQL {server.major}, as {server.owner}, on {data_dir}"

        if not ctx.check("start", start):
            yield None
            return
        copy = _Copy(ctx, found["data_dir"], found["server"], wanted)
        ctx.check("recovery", copy.recovery)
        ctx.check("amcheck", copy.amcheck)
        yield copy.running()
    # stopped (on leaving the block normally: an exception stops it and goes on up)
    if copy.server.stopped != "fast":
        ctx.check("stop", lambda: _unclean(copy.server.stopped))
    ctx.check("checksums", copy.checksums)
