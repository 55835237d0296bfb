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
from pathlib import Path

import pytest

import freezeframe_testing.mutants as mutants
from freezeframe import RunStatus
from freezeframe.engine import Engine
from freezeframe.profile import load_profile
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
    here, ``logical``, copies its fork's dump after the thaw)."""
    control = redis_plugin != "redis"
    registry = registry_with(mutants)
    btrfs = require_tool("btrfs")
    fs = loop_fs("btrfs", size_mb=1024)
    mnt = postgres.mount_again(fs.device)  # loop_fs mounts below a folder postgres cannot enter
    apps = mnt / "apps"
    run_tool([btrfs, "subvolume", "create", str(apps)], timeout=60)

    pg = postgres.new(data_dir=apps / "pg")
    pg.sql("CREATE TABLE seq (id int PRIMARY KEY, n bigint NOT NULL)")
    pg.sql("INSERT INTO seq VALUES (1, 0)")
    maria = mariadb_factory(apps / "mariadb")
    maria.sql(
        "CREATE DATABASE ff",
        "CREATE TABLE ff.seq (id INT PRIMARY KEY, n BIGINT NOT NULL) ENGINE=InnoDB",
        "INSERT INTO ff.seq VALUES (1, 0)",
    )
    # It also saves by itself every second: backups meet saves already under way, and a
    # dump is always there (SAVE now), just not of the backup's instant unless the plug-in
    # made it.
    rds = redis_server(data_dir=apps / "redis", persistence="rdb", config=["save 1 1"])
    rds.client().set("seq", 0)
    rds.client().save()
    (apps / "sqlite").mkdir()
    db = make_counter_db(apps / "sqlite" / "seq.db")

    path = write_profile(f"""
        [profile]
        name = "multi"
        freeze_timeout = "{FREEZE_TIMEOUT}s"

        [[application]]
        plugin = "postgresql"
        name = "pg"
        dsn = "{pg.dsn()}"

        [[application]]
        plugin = "mariadb"
        name = "maria"
        unix_socket = "{maria.socket}"
        user = "root"

        [[application]]
        plugin = "{redis_plugin}"
        name = "redis"
        url = "{rds.url}"
        {'capture = "snapshot"' if control else ""}

        [[application]]
        plugin = "sqlite"
        name = "sqlite"
        path = "{db}"

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

    proc = writer(pg, maria, rds, db)
    runs = []
    started = time.monotonic()
    last = 0
    for _ in range(MUTANT_TRIES if control else RUNS):
        # The writer is going, past the last backup, when the next one begins.
        before = wait_for_round(db, proc, last, tmp_path / "writer.log")
        run = engine.backup().record
        assert run.status == RunStatus.SUCCEEDED, run.error
        [(after,)] = pg.sql("SELECT n FROM seq WHERE id = 1")
        runs.append((run, before, int(after)))
        last = int(after)
    backups_s = time.monotonic() - started
    assert proc.poll() is None, (tmp_path / "writer.log").read_text()
    proc.kill()
    proc.wait(30)
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

        target = postgres.folder("ffpg-restore-", owner="root") / "r"  # postgres can enter it
        # The first restore also runs every plug-in's own check of the restored copy.
        engine.restore(run.run_id, target, verify=i == 0)
        values: dict[str, int] = {}

        copy = postgres.start_on(restored(target, pg.data_dir))
        try:
            [(n,)] = copy.sql("SELECT n FROM seq WHERE id = 1")
            values["postgresql"] = int(n)
        finally:
            copy.stop("immediate")

        maria_copy = mariadb_factory(restored(target, maria.datadir), init=False, networking=False)
        try:
            [(n,)] = maria_copy.sql("SELECT n FROM ff.seq WHERE id = 1")
            values["mariadb"] = int(n)
        finally:
            maria_copy.kill()

        redis_dir = restored(target, rds.data_dir)
        assert (redis_dir / "dump.rdb").is_file(), f"run {run.run_id}: no dump restored"
        loaded = redis_server(data_dir=redis_dir, persistence="rdb")
        try:
            values["redis"] = int(loaded.client().get("seq"))
        finally:
            loaded.stop()

        lite = restored(target, db)
        assert integrity(lite) == ["ok"]
        values["sqlite"] = read_counter(lite)

        found = problems(values, before, after)
        assert control or found == [], f"run {run.run_id}"
        rejected += found
        seen.append(tuple(values[a] for a in ORDER))
        shutil.rmtree(target.parent)
        if found:
            break
    if control:
        assert rejected, f"{len(seen)} backups without Redis's capture all passed: {seen}"
        return
    print(  # shown with -s: how long the backups took and what each restore held
        f"{RUNS} backups in {backups_s:.1f}s; restored (pg, maria, redis, sqlite): {seen}"
    )
    assert len({s[0] for s in seen}) > RUNS // 2, "the backups must catch the writer at work"
