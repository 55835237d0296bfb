"""PostgreSQL, MariaDB, Redis and SQLite in one profile, one writer, many backups: one instant each.

The four applications keep their data on one btrfs subvolume of a loop
filesystem. A writer process loops ``n = 1, 2, 3, ...`` and writes ``n`` to
PostgreSQL, then MariaDB, then Redis, then SQLite, each write committed or
acknowledged before the next one starts. While it runs, freezeframe backs the
four up again and again through the real engine — one profile, a btrfs
snapshot stage, then an archive made from it. Every archive is restored into
a fresh folder; PostgreSQL and MariaDB are started on the restored copies
beside the running originals, the restored Redis dump is loaded by a fresh
redis-server and the SQLite file is read directly.

The invariant. The writes form one sequence ``P1 M1 R1 S1 P2 M2 R2 S2 ...``,
each completing before the next begins. MariaDB (commits blocked), Redis
(writes paused, then ``BGSAVE``) and SQLite (write lock held) are each
captured at the instant of their own quiesce, and no write to any of them
can complete after that instant until the thaw; PostgreSQL, which blocks
nobody, is captured by the atomic snapshot, taken after all three are
quiesced. So the writer, once it reaches a write to a quiesced application,
waits there until after the snapshot, and every application's restored
value is its last write in one and the same prefix of that sequence. A
prefix ending at ``Pn``, ``Mn``, ``Rn`` or ``Sn`` gives ``(pg, maria, redis,
sqlite)`` = ``(n, n-1, n-1, n-1)``, ``(n, n, n-1, n-1)``, ``(n, n, n, n-1)`` or
``(n, n, n, n)``: exactly the tuples with

    pg >= maria >= redis >= sqlite  and  pg - sqlite <= 1

which is what "the four sequence numbers differ by at most one step" means
for this writer. Besides, ``sqlite`` (and so every value) is at least the
writer's last complete round before the backup began (read from the live
SQLite database, the last one written), and ``pg`` is at most the live
PostgreSQL value read after the backup returned.

What it catches: an application whose backed-up files are not of that
shared prefix. Without the redis application in the profile (its folder
snapshotted all the same), the restored dump is Redis's last own save, tens
of rounds behind; the negative control backs up through a Redis plug-in
whose capture is replaced by that save (freezeframe_testing.mutants), and
one of its first few backups must be rejected. A MariaDB left out would
still pass: InnoDB recovers the snapshot's instant, and the writer is then
waiting at Redis or SQLite, past its MariaDB write; the MariaDB
consistency test checks its lock (binlog position) directly.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

import freezeframe_testing.mutants as mutants
from freezeframe import RunStatus
from freezeframe.engine import Engine
from freezeframe.profile import load_profile
from freezeframe.records import RunRecord
from freezeframe.registry import Registry
from freezeframe.tools import run_tool
from freezeframe_testing.mariadb_server import MariaDB
from freezeframe_testing.plugin import (
    LoopFs,
    integrity,
    make_counter_db,
    read_counter,
    require_tool,
    restored,
)
from freezeframe_testing.postgres_server import PgServer, PostgresFactory
from freezeframe_testing.redis_server import RedisServer

RUNS = 10
#: Backups through the mutant before the checks must have rejected one.
MUTANT_TRIES = 3
FREEZE_TIMEOUT = 10  # seconds; the writer's timeouts are all longer
ORDER = ("postgresql", "mariadb", "redis", "sqlite")  # the writer's order

WRITER = textwrap.dedent("""
    import sqlite3, sys
    import psycopg, pymysql, redis

    pg_dsn, maria_socket, redis_socket, sqlite_path = sys.argv[1:5]
    pg = psycopg.connect(pg_dsn, autocommit=True)
    maria = pymysql.connect(
        unix_socket=maria_socket, user="root", autocommit=True, ssl_disabled=True
    ).cursor()
    rds = redis.Redis(unix_socket_path=redis_socket, socket_timeout=60)
    lite = sqlite3.connect(sqlite_path, timeout=60, isolation_level=None)
    n = 0
    while True:
        n += 1
        pg.execute("UPDATE seq SET n = %s WHERE id = 1", (n,))
        maria.execute("UPDATE ff.seq SET n = %s WHERE id = 1", (n,))
        rds.set("seq", n)
        lite.execute("UPDATE counter SET n = ? WHERE id = 1", (n,))
""")


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start the writer process (killed at teardown, before any server stops)."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(pg: PgServer, maria: MariaDB, rds: RedisServer, db: Path) -> subprocess.Popen[bytes]:
        script = tmp_path / "writer.py"
        script.write_text(WRITER)
        argv = [sys.executable, str(script), pg.dsn(), str(maria.socket), str(rds.socket), str(db)]
        with open(tmp_path / "writer.log", "wb") as log:
            procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
        return procs[-1]

    yield start
    for p in procs:
        p.kill()
        p.wait(30)


def live_sqlite(path: Path) -> int:
    """The counter of the live database (WAL included), on a short-lived connection."""
    with closing(sqlite3.connect(path, timeout=30)) as db:
        return int(db.execute("SELECT n FROM counter WHERE id = 1").fetchone()[0])


def wait_for_round(db: Path, proc: subprocess.Popen[bytes], past: int, log: Path) -> int:
    """Wait until the writer has completed a round after round ``past``; the last one done."""
    end = time.monotonic() + 30
    while (n := live_sqlite(db)) <= past:
        assert proc.poll() is None, f"the writer died:\n{log.read_text()}"
        assert time.monotonic() < end, f"the writer is stuck at round {n}"
        time.sleep(0.02)
    return n


def problems(values: dict[str, int], before: int, after: int) -> list[str]:
    """Every broken invariant of one restored backup (see the module's docstring)."""
    out = []
    seq = [values[app] for app in ORDER]
    if seq != sorted(seq, reverse=True) or seq[0] - seq[-1] > 1:
        out.append(f"not one instant of the writer: {values}")
    if min(seq) < before:
        out.append(f"lost writes: {values}, but round {before} was complete before the backup")
    if max(seq) > after:
        out.append(f"from the future: {values}, but PostgreSQL held {after} after the backup")
    return out


@dataclass
class Four:
    """The four servers of one test, on ``apps``, each holding ``seq = 0``."""

    pg: PgServer
    maria: MariaDB
    rds: RedisServer
    db: Path


def start_four(
    postgres: PostgresFactory,
    mariadb_factory: Callable[..., MariaDB],
    redis_server: Callable[..., RedisServer],
    apps: Path,
    redis_config: list[str],
    redis_keys: int = 0,
) -> Four:
    pg = postgres.new(data_dir=apps / "pg")
    pg.sql("CREATE TABLE seq (id int PRIMARY KEY, n bigint NOT NULL)")
    pg.sql("INSERT INTO seq VALUES (1, 0)")
    maria = mariadb_factory(apps / "mariadb")
    maria.sql(
        "CREATE DATABASE ff",
        "CREATE TABLE ff.seq (id INT PRIMARY KEY, n BIGINT NOT NULL) ENGINE=InnoDB",
        "INSERT INTO ff.seq VALUES (1, 0)",
    )
    rds = redis_server(data_dir=apps / "redis", persistence="rdb", config=redis_config)
    client = rds.client()
    client.set("seq", 0)
    for start in range(0, redis_keys, 50_000):  # a data set whose dump takes a second
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + 50_000, redis_keys)):
            pipe.set(f"key:{i}", i)
        pipe.execute()
    client.save()
    (apps / "sqlite").mkdir()
    return Four(pg, maria, rds, make_counter_db(apps / "sqlite" / "seq.db"))


def app_tables(
    four: Four, redis_plugin: str, captures: dict[str, str], redis_extra: str = ""
) -> str:
    """The four [[application]] tables, in the writer's order, with their captures."""

    def capture(name: str) -> str:
        return f'capture = "{captures[name]}"' if name in captures else ""

    return f"""
        [[application]]
        plugin = "postgresql"
        name = "pg"
        dsn = "{four.pg.dsn()}"
        {capture("pg")}

        [[application]]
        plugin = "mariadb"
        name = "maria"
        unix_socket = "{four.maria.socket}"
        user = "root"
        {capture("maria")}

        [[application]]
        plugin = "{redis_plugin}"
        name = "redis"
        url = "{four.rds.url}"
        {capture("redis")}
        {redis_extra}

        [[application]]
        plugin = "sqlite"
        name = "sqlite"
        path = "{four.db}"
        {capture("sqlite")}
    """


def back_up_under_the_writer(
    engine: Engine,
    four: Four,
    writer: Callable[..., subprocess.Popen[bytes]],
    runs: int,
    log: Path,
) -> tuple[list[tuple[RunRecord, int, int]], float]:
    """``runs`` backups while the writer writes: each with the round complete before it
    began and PostgreSQL's value after it returned; and how long they took."""
    proc = writer(four.pg, four.maria, four.rds, four.db)
    done = []
    started = time.monotonic()
    last = 0
    for _ in range(runs):
        # The writer is going, past the last backup, when the next one begins.
        before = wait_for_round(four.db, proc, last, log)
        run = engine.backup().record
        assert run.status == RunStatus.SUCCEEDED, run.error
        [(after,)] = four.pg.sql("SELECT n FROM seq WHERE id = 1")
        done.append((run, before, int(after)))
        last = int(after)
    took = time.monotonic() - started
    assert proc.poll() is None, log.read_text()
    proc.kill()
    proc.wait(30)
    return done, took


def restored_values(
    engine: Engine,
    run: RunRecord,
    four: Four,
    postgres: PostgresFactory,
    mariadb_factory: Callable[..., MariaDB],
    redis_server: Callable[..., RedisServer],
    *,
    verify: bool,
) -> dict[str, int]:
    """Restore ``run`` into a fresh folder; start a server on each restored copy beside
    the running originals; each one's ``seq``."""
    target = postgres.folder("ffpg-restore-", owner="root") / "r"  # postgres can enter it
    engine.restore(run.run_id, target, verify=verify)
    values: dict[str, int] = {}
    copy = postgres.start_on(restored(target, four.pg.data_dir))
    try:
        [(n,)] = copy.sql("SELECT n FROM seq WHERE id = 1")
        values["postgresql"] = int(n)
    finally:
        copy.stop("immediate")

    maria_copy = mariadb_factory(restored(target, four.maria.datadir), init=False, networking=False)
    try:
        [(n,)] = maria_copy.sql("SELECT n FROM ff.seq WHERE id = 1")
        values["mariadb"] = int(n)
    finally:
        maria_copy.kill()

    redis_dir = restored(target, four.rds.data_dir)
    assert (redis_dir / "dump.rdb").is_file(), f"run {run.run_id}: no dump restored"
    loaded = redis_server(data_dir=redis_dir, persistence="rdb")
    try:
        values["redis"] = int(loaded.client().get("seq"))
    finally:
        loaded.stop()

    lite = restored(target, four.db)
    assert integrity(lite) == ["ok"]
    values["sqlite"] = read_counter(lite)
    shutil.rmtree(target.parent)
    return values


@pytest.mark.slow
@pytest.mark.parametrize("redis_plugin", ["redis", "redis-capture-skipped"])
def test_four_applications_on_one_subvolume_restore_one_instant(
    postgres: PostgresFactory,
    loop_fs: Callable[..., LoopFs],
    mariadb_factory: Callable[..., MariaDB],
    redis_server: Callable[..., RedisServer],
    writer: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
    write_profile: Callable[[str], Path],
    registry_with: Callable[..., Registry],
    redis_plugin: str,
) -> None:
    """With ``redis-capture-skipped`` (the negative control), a backup must be rejected.

    The control pins Redis's ``snapshot`` capture: the mutant puts an older dump back
    after the save in the window, which only that mode reads (the real plug-in's default
    here, ``logical``, copies its fork's dump after the thaw). SQLite completes into the
    writable snapshot too (``logical``)."""
    control = redis_plugin != "redis"
    registry = registry_with(mutants)
    btrfs = require_tool("btrfs")
    fs = loop_fs("btrfs", size_mb=1024)
    mnt = postgres.mount_again(fs.device)  # loop_fs mounts below a folder postgres cannot enter
    apps = mnt / "apps"
    run_tool([btrfs, "subvolume", "create", str(apps)], timeout=60)
    # Redis also saves by itself every second: backups meet saves already under way, and a
    # dump is always there (SAVE now), just not of the backup's instant unless the plug-in
    # made it.
    four = start_four(postgres, mariadb_factory, redis_server, apps, ["save 1 1"])
    captures = {"redis": "snapshot"} if control else {"sqlite": "logical"}
    path = write_profile(f"""
        [profile]
        name = "multi"
        freeze_timeout = "{FREEZE_TIMEOUT}s"
        {app_tables(four, redis_plugin, captures)}

        [[backup]]
        backend = "btrfs"
        name = "snap"
        dir = "{mnt / "snaps"}"

        [[backup]]
        backend = "archive"
        name = "archive"
        dir = "{tmp_path / "archives"}"
        level = 1
    """)
    engine = Engine(load_profile(path, registry), registry)
    assert engine.check() == []
    runs, took = back_up_under_the_writer(
        engine, four, writer, MUTANT_TRIES if control else RUNS, tmp_path / "writer.log"
    )
    assert control or runs[-1][1] > runs[0][1] + RUNS, "the writer must keep writing"
    assert not any((mnt / "snaps").iterdir()), "each snapshot is released once archived"

    seen, rejected = [], []
    for i, (run, before, after) in enumerate(runs):
        modes = {a.name: a.mode for a in run.applications}
        assert set(modes.values()) == {"quiesced"}, f"run {run.run_id}: {modes}"
        facts = {a.name: a.facts for a in run.applications}
        assert facts["pg"]["method"] == "crash-consistent"
        assert facts["maria"]["method"] == "BACKUP STAGE BLOCK_COMMIT"
        assert facts["redis"]["persistence"] == "rdb"
        assert facts["sqlite"]["journal_mode"] == "wal"
        # The first restore also runs every plug-in's own check of the restored copy.
        values = restored_values(
            engine, run, four, postgres, mariadb_factory, redis_server, verify=i == 0
        )
        found = problems(values, before, after)
        assert control or found == [], f"run {run.run_id}"
        rejected += found
        seen.append(tuple(values[a] for a in ORDER))
        if found:
            break
    if control:
        assert rejected, f"{len(seen)} backups without Redis's capture all passed: {seen}"
        return
    print(  # shown with -s: how long the backups took and what each restore held
        f"{RUNS} backups in {took:.1f}s; restored (pg, maria, redis, sqlite): {seen}"
    )
    assert len({s[0] for s in seen}) > RUNS // 2, "the backups must catch the writer at work"


#: Keys in the ext4 test's Redis besides the sequence: its dump takes about a second,
#: all of it after the thaw.
MILLION = 1_000_000


@pytest.mark.slow
def test_four_logical_captures_on_ext4_restore_one_instant(
    postgres: PostgresFactory,
    loop_fs: Callable[..., LoopFs],
    mariadb_factory: Callable[..., MariaDB],
    redis_server: Callable[..., RedisServer],
    writer: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
    write_profile: Callable[[str], Path],
    registry: Registry,
) -> None:
    """On ext4 (no snapshot, no reflink) with no snapshot stage: every application is
    captured at an instant inside the window and dumped after it into the dumps view,
    which the archive reads. PostgreSQL's exported snapshot, which blocks no writer, is
    taken once the three others hold theirs, so the writer waits at one of them, and the
    same invariant holds as with one atomic snapshot. Redis holds a million keys and
    persists nothing by itself (``persistence = "rdb"``)."""
    fs = loop_fs("ext4", size_mb=1024)
    mnt = postgres.mount_again(fs.device)
    apps = mnt / "apps"
    apps.mkdir()
    four = start_four(
        postgres, mariadb_factory, redis_server, apps, ['save ""'], redis_keys=MILLION
    )
    logical = {n: "logical" for n in ("pg", "maria", "redis", "sqlite")}
    path = write_profile(f"""
        [profile]
        name = "multi-ext4"
        freeze_timeout = "{FREEZE_TIMEOUT}s"
        {app_tables(four, "redis", logical, 'persistence = "rdb"')}

        [[backup]]
        backend = "archive"
        name = "archive"
        dir = "{tmp_path / "archives"}"
        level = 1
    """)
    engine = Engine(load_profile(path, registry), registry)
    assert engine.check() == []
    plan = engine.plan()
    assert plan["quiesce_order"] == [["maria", "redis", "sqlite"], ["pg"]]
    runs, took = back_up_under_the_writer(engine, four, writer, RUNS, tmp_path / "writer.log")
    assert runs[-1][1] > runs[0][1] + RUNS, "the writer must keep writing"

    seen = []
    for i, (run, before, after) in enumerate(runs):
        assert [s.name for s in run.stages] == ["dumps", "archive"]
        assert {a.capture for a in run.applications} == {"logical"}
        for a in run.applications:
            assert a.mode == "quiesced", f"run {run.run_id}: {a.name} {a.mode}"
            assert a.complete_start is not None and a.thaw_end is not None
            assert a.complete_start >= a.thaw_end, f"{a.name} completed inside the window"
        pg = next(a for a in run.applications if a.name == "pg")
        assert pg.writes_blocked_ms == 0
        values = restored_values(
            engine, run, four, postgres, mariadb_factory, redis_server, verify=i == 0
        )
        assert problems(values, before, after) == [], f"run {run.run_id}"
        seen.append(tuple(values[a] for a in ORDER))
    windows = sorted(r.frozen_ms or 0 for r, _, _ in runs)
    print(  # shown with -s
        f"{RUNS} backups in {took:.1f}s; group windows {windows} ms; restored: {seen}"
    )
    assert len({s[0] for s in seen}) > RUNS // 2, "the backups must catch the writer at work"
    assert not any((mnt / "apps" / "redis").glob("temp-*.rdb")), "no fork's dump left"
