"""Fixtures that start a private MariaDB server for one test, from the system's binaries.

Each server has its own datadir, socket, pid file, error log and free TCP port
on 127.0.0.1, so it never meets the system's server (3306, /run/mysqld). The
datadir is a copy of one ``mariadb-install-db`` made once per session (a copy
takes milliseconds, an install a second). Durability is the server's default
(``innodb_flush_log_at_trx_commit=1``, ``sync_binlog`` as shipped): consistency
tests must see what a production server would leave on disk. Every server a
test started is stopped at teardown, also when the test failed: a clean
``SHUTDOWN`` first, SIGKILL if it does not stop in time.

A test that needs ``mariadbd`` on a machine without it is skipped (fails in CI).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

#: Small enough to start in a fraction of a second, big enough for a busy test writer.
SMALL = (
    "--innodb-buffer-pool-size=32M",
    "--innodb-log-file-size=8M",
    "--skip-name-resolve",
    "--max-connections=50",
    "--performance-schema=OFF",
)
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mariadb_tools() -> tuple[str, str]:
    """``(mariadbd, mariadb-install-db)``; skips the test (fails in CI) when either is missing."""
    from freezeframe_testing.plugin import require_tool

    return require_tool("mariadbd"), require_tool("mariadb-install-db")


def last_lines(path: Path, n: int = 8) -> str:
    """The last ``n`` lines of a log, for a failure message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"({path} unreadable)"


@dataclass
class MariaDB:
    """A running private server; ``root`` connects without a password over the socket."""

    datadir: Path
    run_dir: Path
    port: int
    process: subprocess.Popen[bytes]
    args: tuple[str, ...]
    binlog: bool
    connections: list[Any] = field(default_factory=list)

    @property
    def socket(self) -> Path:
        """The server's unix socket."""
        return self.run_dir / "mysqld.sock"

    @property
    def pid_file(self) -> Path:
        """The server's pid file."""
        return self.run_dir / "mysqld.pid"

    @property
    def error_log(self) -> Path:
        """The server's error log."""
        return self.run_dir / "error.log"

    def connect(self, user: str = "root", password: str = "", **kwargs: Any) -> Any:
        """A PyMySQL connection over the socket (autocommit on unless told otherwise)."""
        import pymysql  # type: ignore[import-untyped]

        kwargs.setdefault("autocommit", True)
        kwargs.setdefault("connect_timeout", 10)
        kwargs.setdefault("ssl_disabled", True)  # PyMySQL loads the CA store for TLS: 50 ms
        conn = pymysql.connect(unix_socket=str(self.socket), user=user, password=password, **kwargs)
        self.connections.append(conn)
        return conn

    def sql(self, *statements: str) -> list[tuple[Any, ...]]:
        """Run statements as root on a fresh connection; returns the last one's rows."""
        conn = self.connect()
        try:
            rows: list[tuple[Any, ...]] = []
            with conn.cursor() as cur:
                for s in statements:
                    cur.execute(s)
                    rows = list(cur.fetchall())
            return rows
        finally:
            conn.close()

    def alive(self) -> bool:
        """Whether the server process still runs."""
        return self.process.poll() is None

    def stop(self) -> None:
        """A clean shutdown (SIGKILL after STOP_TIMEOUT); stopping twice is fine."""
        for conn in self.connections:
            with contextlib.suppress(Exception):  # already closed
                conn.close()
        self.connections.clear()
        if not self.alive():
            return
        try:
            self.process.send_signal(signal.SIGTERM)  # mariadbd shuts down cleanly on SIGTERM
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: what a power cut leaves, as far as the server's files go."""
        if self.alive():
            self.process.kill()
        self.process.wait(STOP_TIMEOUT)


def commits_within(server: MariaDB, statement: str, seconds: float) -> bool:
    """Whether the write ``statement`` (autocommitted) goes through within ``seconds``: not
    while a backup lock blocks commits, nor when the server cannot be reached."""
    import pymysql

    try:
        conn = server.connect(read_timeout=seconds, write_timeout=seconds)
    except pymysql.MySQLError:
        return False
    try:
        with conn.cursor() as cur:
            cur.execute(f"SET SESSION lock_wait_timeout = {max(1, int(seconds))}")
            cur.execute(statement)
        return True
    except pymysql.MySQLError:
        return False
    finally:
        conn.close()


def init_datadir(datadir: Path, template: Path) -> Path:
    """A fresh datadir at ``datadir`` (a copy of the session's installed template)."""
    shutil.copytree(template, datadir, symlinks=True)
    return datadir


def start_mariadb(
    datadir: Path,
    run_dir: Path,
    *,
    binlog: bool = True,
    args: Sequence[str] = (),
    networking: bool = True,
) -> MariaDB:
    """Start ``mariadbd`` on ``datadir`` (which must hold a datadir) and wait until it answers.

    ``run_dir`` receives the socket, pid file and error log. With ``binlog``
    the binary log is on (``mysql-bin`` in the datadir). Raises AssertionError
    with the error log's last lines when the server does not come up.
    """
    mariadbd, _ = mariadb_tools()
    run_dir.mkdir(parents=True, exist_ok=True)
    port = free_port() if networking else 0
    argv = [
        mariadbd,
        "--no-defaults",  # never the system's my.cnf: its port, socket and datadir are not ours
        f"--datadir={datadir}",
        f"--socket={run_dir / 'mysqld.sock'}",
        f"--pid-file={run_dir / 'mysqld.pid'}",
        f"--log-error={run_dir / 'error.log'}",
        f"--tmpdir={run_dir}",
        *SMALL,
        *(["--bind-address=127.0.0.1", f"--port={port}"] if networking else ["--skip-networking"]),
        *(["--log-bin=mysql-bin", "--server-id=1"] if binlog else []),
        *args,
    ]
    if os.geteuid() == 0:
        argv.insert(2, "--user=root")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = MariaDB(datadir, run_dir, port, proc, tuple(argv), binlog)
    deadline = time.monotonic() + START_TIMEOUT
    import pymysql

    while True:
        if not server.alive():
            raise AssertionError(
                f"mariadbd exited ({proc.returncode}) on {datadir}:\n{last_lines(server.error_log)}"
            )
        try:
            pymysql.connect(
                unix_socket=str(server.socket), user="root", connect_timeout=2, ssl_disabled=True
            ).close()
            return server
        except pymysql.err.OperationalError:
            if time.monotonic() > deadline:
                server.kill()
                raise AssertionError(
                    f"mariadbd did not answer within {START_TIMEOUT:g}s:\n"
                    f"{last_lines(server.error_log)}"
                ) from None
            time.sleep(0.05)


@pytest.fixture(scope="session")
def mariadb_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ``mariadb-install-db`` datadir per session, copied by every server fixture."""
    _, install_db = mariadb_tools()
    datadir = tmp_path_factory.mktemp("mariadb-template") / "data"
    argv = [
        install_db,
        "--no-defaults",
        f"--datadir={datadir}",
        "--auth-root-authentication-method=normal",  # root@localhost, no password
        "--skip-test-db",
        *SMALL,
    ]
    if os.geteuid() == 0:
        argv.insert(2, "--user=root")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"mariadb-install-db failed:\n{proc.stdout}\n{proc.stderr}"
    return datadir


@pytest.fixture
def mariadb_factory(
    mariadb_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., MariaDB]]:
    """Start private servers: ``start(datadir=None, *, binlog, args, init, networking)``.

    Without ``datadir`` the server gets a new one in a temp folder; with one,
    ``init=True`` (default) fills it from the template first and ``init=False``
    starts on what is there (a restored copy). ``binlog`` (default on) turns on
    the binary log; ``args`` are more mariadbd options (the last of a repeated
    option wins); ``networking=False`` listens on the socket only. Every server
    is stopped at teardown.
    """
    started: list[MariaDB] = []

    def start(
        datadir: Path | None = None,
        *,
        binlog: bool = True,
        args: Sequence[str] = (),
        init: bool = True,
        networking: bool = True,
    ) -> MariaDB:
        # /tmp keeps the socket path short (108 bytes at most)
        run_dir = Path(tmp_path_factory.mktemp("mariadb-run", numbered=True))
        if datadir is None:
            datadir = run_dir / "data"
        if init:
            init_datadir(datadir, mariadb_template)
        server = start_mariadb(datadir, run_dir, binlog=binlog, args=args, networking=networking)
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture(scope="module")
def mariadb_module(
    mariadb_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MariaDB]:
    """A private server (binary log on) shared by the tests of one module: started once,
    stopped after the module's last test."""
    run_dir = tmp_path_factory.mktemp("mariadb-module")
    server = start_mariadb(init_datadir(run_dir / "data", mariadb_template), run_dir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mariadb(mariadb_factory: Callable[..., MariaDB]) -> MariaDB:
    """A private server with the binary log on, its datadir in a temp folder."""
    return mariadb_factory()
