"""What ``group_freeze.py`` starts: PostgreSQL, MariaDB, Redis and SQLite with their data
below one folder, and a writer bumping one sequence in all four in turn (not a benchmark
itself: ``run.py`` skips modules whose name starts with ``_``).

The writer is this file run as a script, in a process group of its own: ``python
_four_apps.py PG_DSN MARIADB_SOCKET REDIS_SOCKET SQLITE_DB OUT``.
"""

from __future__ import annotations

import array
import bisect
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from freezeframe.tools import find_tool, run_tool
from freezeframe_testing.mariadb_server import SMALL, MariaDB, start_mariadb
from freezeframe_testing.plugin import make_counter_db
from freezeframe_testing.postgres_server import PostgresFactory
from freezeframe_testing.procs import descendants, processes
from freezeframe_testing.redis_server import RedisServer, start_redis

__all__ = ["VALUE_BYTES", "Servers", "live_round", "longest_writes", "servers", "writer"]

SMALL_ROWS = 10_000
VALUE_BYTES = 100


# -- the writer, a process (and process group) of its own ---------------------------------


def writer_main(pg_dsn: str, maria_socket: str, redis_socket: str, db: str, out: str) -> None:
    """Write n = 1, 2, ... to the four in turn until SIGTERM; then ``out`` holds
    (app index, start, seconds) per write, as doubles."""
    import psycopg
    import pymysql  # type: ignore[import-untyped]
    import redis

    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    pg = psycopg.connect(pg_dsn, autocommit=True)
    maria = pymysql.connect(
        unix_socket=maria_socket, user="root", autocommit=True, ssl_disabled=True
    ).cursor()
    rds = redis.Redis(unix_socket_path=redis_socket, socket_timeout=60)
    lite = sqlite3.connect(db, timeout=60, isolation_level=None)
    writes = (
        lambda n: pg.execute("UPDATE seq SET n = %s WHERE id = 1", (n,)),
        lambda n: maria.execute("UPDATE ff.seq SET n = %s WHERE id = 1", (n,)),
        lambda n: rds.set("seq", n),
        lambda n: lite.execute("UPDATE counter SET n = ? WHERE id = 1", (n,)),
    )
    log = array.array("d")
    n = 0
    while not stop:
        n += 1
        for i, write in enumerate(writes):
            t0 = time.time()
            write(n)
            log.extend((i, t0, time.time() - t0))
    with open(out, "wb") as f:
        log.tofile(f)


@contextmanager
def writer(pg_dsn: str, maria: MariaDB, rds: RedisServer, db: Path, out: Path) -> Iterator[None]:
    """The writer running; its whole process group ended afterwards."""
    argv = [sys.executable, __file__, pg_dsn, str(maria.socket), str(rds.socket)]
    proc = subprocess.Popen([*argv, str(db), str(out)], start_new_session=True)
    try:
        end = time.monotonic() + 60
        while live_round(db) < 10:
            if proc.poll() is not None or time.monotonic() > end:
                raise SystemExit(f"the writer did not start (exit {proc.poll()})")
            time.sleep(0.05)
        yield
        if proc.poll() is not None:
            raise SystemExit(f"the writer died (exit {proc.returncode})")
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def live_round(db: Path) -> int:
    """The writer's last complete round (SQLite is written last)."""
    with closing(sqlite3.connect(db, timeout=30)) as c:
        return int(c.execute("SELECT n FROM counter WHERE id = 1").fetchone()[0])


def longest_writes(out: Path, windows: list[tuple[float, float]]) -> list[float]:
    """Per window, the longest write (ms) that overlapped it."""
    log = array.array("d")
    with open(out, "rb") as f:
        log.frombytes(f.read())
    starts, seconds = log[1::3], log[2::3]
    found = []
    for lo, hi in windows:
        # no write takes 60 s (the clients' timeout): earlier ones cannot overlap
        first, last = bisect.bisect_left(starts, lo - 60), bisect.bisect_right(starts, hi)
        hits = [seconds[i] for i in range(first, last) if starts[i] + seconds[i] > lo]
        found.append(max(hits, default=0.0) * 1000)
    return found


# -- the servers ----------------------------------------------------------------------------


@dataclass
class Servers:
    """The four applications, all with their data below one folder."""

    pg_dsn: str
    maria: MariaDB
    redis: RedisServer
    db: Path


def stop_redis(server: RedisServer) -> None:
    """Kill it and any save child it forked (which would keep writing to the filesystem)."""
    children = descendants(server.proc.pid)
    server.stop()
    for child in children:
        with suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)
    end = time.monotonic() + 30
    while {p.pid for p in processes() if p.running} & {c.pid for c in children}:
        if time.monotonic() > end:
            raise SystemExit(f"redis-server's children {children} did not end")
        time.sleep(0.05)


def fill_redis(server: RedisServer, keys: int) -> None:
    """``keys`` keys of VALUE_BYTES: DEBUG POPULATE where enabled, else pipelined SETs."""
    import redis

    c = server.client(socket_timeout=600)
    try:
        c.execute_command("DEBUG", "POPULATE", keys, "key", VALUE_BYTES)
    except redis.ResponseError:
        for first in range(0, keys, 10_000):
            pipe = c.pipeline(transaction=False)
            for i in range(first, min(keys, first + 10_000)):
                pipe.set(f"key:{i}", "x" * VALUE_BYTES)
            pipe.execute()
    if server.persistence != "none":
        c.bgsave()  # the files the default save points would leave
        while c.info("persistence")["rdb_bgsave_in_progress"]:
            time.sleep(0.01)


def install_mariadb(datadir: Path, run_dir: Path) -> MariaDB:
    """A new datadir (the test servers' small settings) and its server, started."""
    argv = [find_tool("mariadb-install-db"), "--no-defaults", "--user=root", f"--datadir={datadir}",
            "--auth-root-authentication-method=normal", "--skip-test-db", *SMALL]  # fmt: skip
    run_tool(argv, timeout=300)
    return start_mariadb(datadir, run_dir, networking=False)


def servers(stack: ExitStack, data: Path, run_dir: Path, persists: bool, keys: int) -> Servers:
    """Start and fill the four on ``data`` (Redis with its default save points, or with
    ``save ""`` unless ``persists``); each stopped when ``stack`` closes."""
    factory = PostgresFactory()
    stack.callback(factory.cleanup)
    pg = factory.new(data_dir=data / "pg")
    for table in ("seq", "filler"):  # filler: a small table beside the written one
        pg.sql(f"CREATE TABLE {table} (id int PRIMARY KEY, n bigint NOT NULL)")
    pg.sql(f"INSERT INTO filler SELECT g, g FROM generate_series(1, {SMALL_ROWS}) g")
    pg.sql("INSERT INTO seq VALUES (1, 0)")
    pg.sql("CHECKPOINT")
    maria = install_mariadb(data / "maria", run_dir / "maria")
    stack.callback(maria.stop)
    maria.sql(
        "CREATE DATABASE ff",
        "CREATE TABLE ff.seq (id INT PRIMARY KEY, n BIGINT NOT NULL) ENGINE=InnoDB",
        "CREATE TABLE ff.filler (id INT PRIMARY KEY, n BIGINT NOT NULL) ENGINE=InnoDB",
        "INSERT INTO ff.seq VALUES (1, 0)",
        f"INSERT INTO ff.filler SELECT seq, seq FROM ff.seq_1_to_{SMALL_ROWS}",
    )
    rds = start_redis(
        data / "redis",
        persistence="rdb" if persists else "none",
        config=["enable-debug-command local"],
    )
    stack.callback(stop_redis, rds)
    fill_redis(rds, keys)
    rds.client().set("seq", 0)
    (data / "sqlite").mkdir()
    db = make_counter_db(data / "sqlite" / "seq.db")
    return Servers(pg.dsn(), maria, rds, db)


if __name__ == "__main__":
    writer_main(*sys.argv[1:])
