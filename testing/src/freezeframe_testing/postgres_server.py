"""Fixtures that start private PostgreSQL servers for one test, and servers on restored copies.

PostgreSQL refuses to run as root, and pytest's ``tmp_path`` sits below a
folder only root may enter: so every server runs as the ``postgres`` user
(through ``runuser`` when the tests run as root) in a folder of its own
made under /tmp, on a free port, with its socket in that private folder and
no TCP listener. Settings are initdb's defaults (``fsync`` stays on: the
consistency tests need real durability), except 1 MiB WAL segments to keep
copies small.

``postgres.new()`` makes and starts a cluster; ``postgres.start_on(dir)``
starts a server on a restored data directory beside the original (own port,
own socket folder, archiving off). Every server a test started is stopped
with ``pg_ctl stop -m immediate`` at teardown, also when the test failed, and
every folder is removed. A machine without the PostgreSQL binaries skips the
test (fails it under ``CI=true``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from freezeframe_testing.plugin import need, require_tool

#: The operating-system user the servers run as (and the bootstrap superuser's name).
PG_USER = "postgres"


def pg_bindir() -> Path:
    """The folder holding initdb, pg_ctl and postgres: ``FREEZEFRAME_PG_BINDIR`` or initdb's."""
    env = os.environ.get("FREEZEFRAME_PG_BINDIR")
    folder = Path(env) if env else Path(os.path.realpath(require_tool("initdb"))).parent
    for tool in ("initdb", "pg_ctl", "postgres"):
        need((folder / tool).exists(), f"{tool} is not installed in {folder}")
    return folder


def free_port() -> int:
    """A TCP port nobody listens on right now (it also names the socket file)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(argv: Sequence[str]) -> list[str]:
    if os.geteuid() != 0:
        return list(argv)
    return ["runuser", "-u", PG_USER, "--", *argv]


def _run(argv: Sequence[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _as_postgres(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )


def chown_to_postgres(path: Path) -> Path:
    """Give ``path`` to the postgres user (when we are root) and return it."""
    if os.geteuid() == 0:
        pw = pwd.getpwnam(PG_USER)
        os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


@dataclass
class PgServer:
    """One running (or stopped) server made for a test."""

    data_dir: Path
    socket_dir: Path
    port: int
    bindir: Path
    log: Path
    options: dict[str, str] = field(default_factory=dict)
    running: bool = False

    def dsn(self, user: str = PG_USER, dbname: str = "postgres") -> str:
        """A libpq connection string to this server, through its private socket."""
        from psycopg.conninfo import make_conninfo  # quotes what libpq would split

        return make_conninfo(host=str(self.socket_dir), port=self.port, user=user, dbname=dbname)

    def connect(self, user: str = PG_USER, dbname: str = "postgres", **kwargs: Any) -> Any:
        """A psycopg connection in autocommit mode."""
        import psycopg

        return psycopg.connect(self.dsn(user, dbname), autocommit=True, **kwargs)

    def sql(self, query: Any, params: Sequence[Any] = (), dbname: str = "postgres") -> list[Any]:
        """Run one statement as the superuser; its rows (empty for a command)."""
        with self.connect(dbname=dbname) as conn:
            cur = conn.execute(query, params)
            return list(cur.fetchall()) if cur.description else []

    def _options(self) -> str:
        settings = {
            "port": str(self.port),
            "listen_addresses": "''",
            "unix_socket_directories": f"'{self.socket_dir}'",
            **self.options,
        }
        return " ".join(f"-c {k}={v}" for k, v in settings.items())

    def start(self) -> None:
        """Start it and wait until it accepts connections; the log tail on failure."""
        argv = [str(self.bindir / "pg_ctl"), "start", "-D", str(self.data_dir), "-w", "-t", "120"]
        r = _run([*argv, "-l", str(self.log), "-o", self._options()], self.socket_dir, 180)
        self.running = r.returncode == 0
        assert self.running, f"pg_ctl start failed: {r.stdout}{r.stderr}\n{self.log_tail()}"

    def stop(self, mode: str = "fast") -> None:
        """Stop it (``fast``, ``immediate``); stopping a stopped server is not an error."""
        argv = [str(self.bindir / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", mode, "-w"]
        r = _run(argv, self.socket_dir)
        if r.returncode == 0 or not (self.data_dir / "postmaster.pid").exists():
            self.running = False
        assert not self.running, f"pg_ctl stop failed: {r.stdout}{r.stderr}"

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the server's log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class PostgresFactory:
    """Makes servers and folders for one test and removes them all at teardown."""

    def __init__(self) -> None:
        self.bindir = pg_bindir()
        self.servers: list[PgServer] = []
        self.folders: list[Path] = []
        self.mounts: list[Path] = []
        if os.geteuid() == 0:
            require_tool("runuser")
            try:
                pwd.getpwnam(PG_USER)
            except KeyError:
                need(False, f"no {PG_USER} user to run PostgreSQL as (it refuses root)")

    def folder(self, prefix: str = "ffpg-", *, owner: str = "postgres") -> Path:
        """A new folder under /tmp, removed at teardown: the postgres user's (mode 0700), or,
        with ``owner="root"``, ours and enterable by everyone (for restore targets)."""
        path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        self.folders.append(path)
        if owner == "postgres":
            chown_to_postgres(path)
        else:
            path.chmod(0o755)
        return path

    def new(
        self,
        *,
        data_dir: Path | None = None,
        settings: Mapping[str, str] | None = None,
        hba: Sequence[str] = (),
        initdb_args: Sequence[str] = (),
        start: bool = True,
        small: bool = True,
    ) -> PgServer:
        """initdb a cluster (in ``data_dir``, which must be empty or absent and reachable by
        the postgres user; else in a new folder) and start it.

        ``settings`` go into postgresql.conf; ``hba`` lines go first in pg_hba.conf.
        ``small`` keeps copies of it small (about 10 MB, so that tests that copy it dozens
        of times stay fast): it keeps only 2 MB of spare WAL and, once started, drops
        ``template0`` and ``template1`` (so ``CREATE DATABASE`` needs ``TEMPLATE postgres``).
        """
        home = self.folder()
        if data_dir is None:
            data_dir = home / "data"
        else:
            data_dir.mkdir(parents=True, exist_ok=True)
            chown_to_postgres(data_dir)
            data_dir.chmod(0o700)
        argv = [str(self.bindir / "initdb"), "-D", str(data_dir), "-U", PG_USER, "-A", "trust"]
        argv += ["-E", "UTF8", "--locale=C", "--wal-segsize=1", "--no-sync", *initdb_args]
        r = _run(argv, home)
        assert r.returncode == 0, f"initdb failed: {r.stdout}{r.stderr}"
        settings = {**({"min_wal_size": "2MB"} if small else {}), **(settings or {})}
        if settings:
            with open(data_dir / "postgresql.conf", "a", encoding="utf-8") as f:
                f.writelines(f"{k} = {v}\n" for k, v in settings.items())
        if hba:
            conf = data_dir / "pg_hba.conf"
            conf.write_text("".join(f"{line}\n" for line in hba) + conf.read_text())
        server = PgServer(data_dir, home, free_port(), self.bindir, home / "server.log")
        self.servers.append(server)
        if start:
            server.start()
            if small:
                for db in ("template0", "template1"):
                    server.sql(f"ALTER DATABASE {db} IS_TEMPLATE false")
                    server.sql(f"DROP DATABASE {db}")
                server.sql("CHECKPOINT")
        return server

    def start_on(self, data_dir: Path) -> PgServer:
        """Start a server on an existing (restored) data directory, beside the original:
        its own port and socket folder, archiving off. Fails the test if it does not start."""
        home = self.folder("ffpg-restored-")
        server = PgServer(
            data_dir,
            home,
            free_port(),
            self.bindir,
            home / "server.log",
            options={"archive_mode": "off"},
        )
        self.servers.append(server)
        server.start()
        return server

    def try_start_on(self, data_dir: Path) -> tuple[bool, str]:
        """Like :meth:`start_on`, but returns (started, the server's log) instead of failing."""
        try:
            server = self.start_on(data_dir)
        except AssertionError:
            return False, self.servers[-1].log_tail(40)
        return True, server.log_tail(40)

    def mount_again(self, device: str) -> Path:
        """Mount ``device`` (a loop device already mounted below pytest's root-only folder)
        a second time where the postgres user can reach it; unmounted at teardown."""
        mnt = self.folder("ffpg-mnt-", owner="root")
        r = subprocess.run(
            ["mount", device, str(mnt)], capture_output=True, text=True, timeout=60, check=False
        )
        assert r.returncode == 0, r.stderr
        self.mounts.append(mnt)
        return mnt

    def cleanup(self) -> None:
        """Stop every server (immediate), unmount, remove every folder."""
        for server in reversed(self.servers):
            pid_file = server.data_dir / "postmaster.pid"
            if server.running or pid_file.exists():
                argv = [str(self.bindir / "pg_ctl"), "stop", "-D", str(server.data_dir)]
                r = _run([*argv, "-m", "immediate", "-w"], server.socket_dir)
                if r.returncode != 0 and server.running and pid_file.exists():
                    # pg_ctl could not stop the postmaster we started: end it by its pid.
                    with contextlib.suppress(OSError, ValueError):
                        os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
                server.running = False
        for mnt in reversed(self.mounts):
            if subprocess.run(["umount", str(mnt)], capture_output=True, check=False).returncode:
                subprocess.run(["umount", "--lazy", str(mnt)], capture_output=True, check=False)
        for path in reversed(self.folders):
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def postgres() -> Iterator[PostgresFactory]:
    """Private PostgreSQL servers for one test: ``postgres.new()``, ``postgres.start_on(dir)``."""
    factory = PostgresFactory()
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture(scope="module")
def postgres_module() -> Iterator[PostgresFactory]:
    """The same, shared by the tests of one module (a server they only read from)."""
    factory = PostgresFactory()
    try:
        yield factory
    finally:
        factory.cleanup()


# -- a workload whose invariants a restored copy must keep -----------------------------

ACCOUNTS = 10
OPENING_BALANCE = 1000


def create_bank(server: PgServer, tablespace: Path | None = None) -> None:
    """``accounts`` (10 accounts of 1000: the total never changes) and ``ledger`` (1, 2, 3,
    ... with no gap: one row per committed transfer), in ``tablespace`` when given."""
    if tablespace is not None:
        from psycopg import sql

        server.sql(sql.SQL("CREATE TABLESPACE bank_ts LOCATION {}").format(str(tablespace)))
    where = " TABLESPACE bank_ts" if tablespace is not None else ""
    server.sql("CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL)")
    server.sql(
        "INSERT INTO accounts SELECT g, %s FROM generate_series(1, %s) g",
        (OPENING_BALANCE, ACCOUNTS),
    )
    server.sql(f"CREATE TABLE ledger (n bigint PRIMARY KEY, amount int NOT NULL){where}")


class BankWriter(threading.Thread):
    """Commits transfers until stopped: two balances and the next ledger row in one
    transaction. ``committed`` is the last ledger number whose commit returned."""

    def __init__(self, server: PgServer) -> None:
        super().__init__(name="bank-writer", daemon=True)
        self.server = server
        self.stop_event = threading.Event()
        self.committed = 0
        self.error: BaseException | None = None
        self.latencies: list[tuple[float, float]] = []  # (start, seconds), when recording
        self.record = False

    def run(self) -> None:
        import random

        rnd = random.Random(4)  # noqa: S311 - a workload, not a secret
        try:
            with self.server.connect() as conn:
                while not self.stop_event.is_set():
                    a, b = rnd.sample(range(1, ACCOUNTS + 1), 2)
                    amount = rnd.randint(1, 50)
                    started = time.monotonic()
                    with conn.transaction():
                        conn.execute(
                            "UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, a)
                        )
                        conn.execute(
                            "UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, b)
                        )
                        conn.execute(
                            "INSERT INTO ledger VALUES (%s, %s)", (self.committed + 1, amount)
                        )
                    if self.record:
                        self.latencies.append((started, time.monotonic() - started))
                    self.committed += 1
        except BaseException as e:
            self.error = e

    def stop(self) -> None:
        """Stop and wait for it; re-raise what broke it."""
        self.stop_event.set()
        self.join(60)
        if self.error is not None:
            raise self.error


@dataclass(frozen=True)
class BankState:
    """What a copy of the bank holds."""

    total: int
    ledger_rows: int
    ledger_max: int
    ledger_min: int

    def problems(self, committed_before: int) -> list[str]:
        """Every broken invariant, given what was committed before the backup began."""
        out = []
        if self.total != ACCOUNTS * OPENING_BALANCE:
            out.append(f"money changed: total {self.total} != {ACCOUNTS * OPENING_BALANCE}")
        if self.ledger_rows != self.ledger_max or (self.ledger_rows and self.ledger_min != 1):
            out.append(
                f"ledger has gaps: {self.ledger_rows} rows from {self.ledger_min} "
                f"to {self.ledger_max}"
            )
        if self.ledger_max < committed_before:
            out.append(f"lost commits: ledger ends at {self.ledger_max} < {committed_before}")
        return out


def bank_state(server: PgServer) -> BankState:
    """Read the bank from a running server."""
    [(total,)] = server.sql("SELECT sum(balance)::bigint FROM accounts")
    [(rows, top, low)] = server.sql(
        "SELECT count(*), coalesce(max(n), 0), coalesce(min(n), 0) FROM ledger"
    )
    return BankState(int(total), int(rows), int(top), int(low))
