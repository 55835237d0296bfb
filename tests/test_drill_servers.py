"""Drills of real servers through the command line: damage found and said in one line, and
a drill killed while its server runs leaves nothing behind once the next command ran."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from freezeframe.engine import Engine
from freezeframe.profile import load_profile
from freezeframe_testing.mariadb_bank import ACCOUNTS as MARIADB_ACCOUNTS
from freezeframe_testing.mariadb_bank import OPENING as MARIADB_OPENING
from freezeframe_testing.mariadb_bank import committed
from freezeframe_testing.mariadb_bank import create_bank as create_mariadb_bank
from freezeframe_testing.mariadb_server import MariaDB
from freezeframe_testing.plugin import clone_profile, make_counter_db, run_cli, wait_until
from freezeframe_testing.postgres_server import (
    ACCOUNTS,
    OPENING_BALANCE,
    BankWriter,
    PgServer,
    PostgresFactory,
    create_bank,
)
from freezeframe_testing.redis_server import RedisServer, redis_clone_profile


def with_drill_dir(profile: Path, drills: Path, checks: str = "") -> Path:
    """``profile`` with its drills in ``drills`` and ``checks`` after its one application."""
    text = profile.read_text().replace(
        "[profile]\n", f"[profile]\ndrill_dir = {json.dumps(str(drills))}\n", 1
    )
    if checks:
        text = text.replace("\n[[backup]]", f"\n{checks}\n[[backup]]", 1)
    profile.write_text(text)
    return profile


def processes_below(folder: Path) -> list[int]:
    """The live processes working inside ``folder`` (their current folder or a path on their
    command line): the servers and commands a drill started in its scratch folder, which
    only this test uses."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
            state = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[0]
            cwd = os.readlink(Path(entry.path, "cwd"))
        except OSError:
            continue
        inside = Path(cwd).is_relative_to(folder) or any(str(folder).encode() in a for a in argv)
        if state != "Z" and inside:
            found.append(int(entry.name))
    return found


def test_a_truncated_rdb_fails_the_drill_in_one_line(
    tmp_path: Path, redis_server: Callable[..., RedisServer]
) -> None:
    server = redis_server()
    server.client().mset({f"k{i}": "x" * 100 for i in range(200)})
    profile = with_drill_dir(redis_clone_profile(tmp_path, server), tmp_path / "drills")
    r = run_cli("backup", profile, "--json")
    assert r.returncode == 0, r.stderr
    run_id = r.json()["run_id"]

    passed = run_cli("drill", profile, run_id, "--json")
    assert passed.returncode == 0, passed.stderr
    checks = {c["name"]: c for c in passed.json()["drills"][0]["applications"][0]["checks"]}
    assert {checks[n]["status"] for n in ("redis-check-rdb", "start", "keys")} == {"passed"}

    view = tmp_path / "snaps" / run_id
    (dump,) = view.rglob("dump.rdb")
    dump.chmod(0o600)
    with open(dump, "r+b") as f:
        f.truncate(dump.stat().st_size // 2)
    failed = run_cli("drill", profile, run_id)
    assert failed.returncode == 1
    errors = [line for line in failed.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, failed.stderr
    assert "application 'cache': check 'redis-check-rdb': " in errors[0]
    assert "dump.rdb" in errors[0]
    listed = {r["run_id"]: r for r in run_cli("list", profile, "--json").json()}
    assert listed[run_id]["proof"] == "drill failed"
    assert server.client().dbsize() == 200  # the original never noticed
    assert not (tmp_path / "drills").exists() or not any((tmp_path / "drills").iterdir())


def test_kill_9_mid_drill_leaves_no_server_nor_folder_after_the_next_command(
    tmp_path: Path, redis_server: Callable[..., RedisServer]
) -> None:
    server = redis_server()
    server.client().set("k", "v")
    drills = tmp_path / "drills"
    profile = with_drill_dir(redis_clone_profile(tmp_path, server), drills, hold(tmp_path))
    r = run_cli("backup", profile)
    assert r.returncode == 0, r.stderr
    kill_9_mid_drill(profile, drills, tmp_path)
    assert server.client().get("k") == "v"  # the original runs on, untouched
    shown = run_cli("show", profile, "latest", "--json").json()
    assert [d["status"] for d in shown["drills"]] == ["interrupted"]


def hold(folder: Path) -> str:
    """A check that says it runs (``folder/checking``), then holds the drill."""
    return f"""
[[application.check]]
name = "holds"
command = ["sh", "-c", "touch {folder / "checking"}; sleep 600"]
"""


def kill_9_mid_drill(profile: Path, drills: Path, folder: Path) -> None:
    """Start a drill of ``profile`` whose check holds it (:func:`hold`), kill -9 it while
    its server and check run, then run the next command: nothing of the drill may be left
    in ``drills``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "freezeframe", "drill", str(profile)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        marker = folder / "checking"
        assert wait_until(lambda: marker.exists() or proc.poll() is not None, 300)
        assert proc.poll() is None, proc.communicate()
        assert len(processes_below(drills)) >= 2, "the drill's server and its check run"
        proc.kill()
        proc.communicate(timeout=30)
        # the server dies with freezeframe; what a check left behind waits for the next command
        assert run_cli("list", profile).returncode == 0
        assert wait_until(lambda: not processes_below(drills), 15), processes_below(drills)
        assert list(drills.iterdir()) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for pid in processes_below(drills):
            os.kill(pid, signal.SIGKILL)


#: The check across the two applications, in Python (redis-py reads a unix:// URL): the
#: writer bumps the SQLite counter first, then the Redis one, so one instant has a - b of
#: 0 or 1.
ONE_INSTANT = """
import os, sqlite3, sys
import redis
db = sqlite3.connect("file:" + os.environ["FREEZEFRAME_ORDERS_PATH"] + "?mode=ro", uri=True)
a = db.execute("SELECT n FROM counter").fetchone()[0]
b = int(redis.Redis.from_url(os.environ["FREEZEFRAME_CACHE_URL"]).get("n") or 0)
print(f"orders {a} cache {b}")
sys.exit(0 if 0 <= a - b <= 1 else 1)
"""


class CounterWriter(threading.Thread):
    """Bumps the SQLite counter, then the Redis one, until stopped."""

    def __init__(self, db: Path, server: RedisServer) -> None:
        super().__init__(daemon=True)
        self.db, self.server = db, server
        self.stop = threading.Event()
        self.pairs = 0

    def run(self) -> None:
        conn = sqlite3.connect(self.db, timeout=30, isolation_level=None)
        client = self.server.client()
        while not self.stop.is_set():
            conn.execute("UPDATE counter SET n = n + 1")
            client.incr("n")
            self.pairs += 1
        conn.close()


def group_profile(tmp_path: Path, db: Path, server: RedisServer, redis_kind: str) -> Path:
    folder = tmp_path / f"profile-{redis_kind}"
    folder.mkdir()
    check = f"""
[[application.check]]
name = "one-instant"
command = [{json.dumps(sys.executable)}, "-c", {json.dumps(ONE_INSTANT)}]
"""
    path = folder / "profile.toml"
    path.write_text(
        f"""
[profile]
name = "group"
state_dir = {json.dumps(str(folder / "state"))}
drill_dir = {json.dumps(str(tmp_path / "drills"))}

[[application]]
plugin = "sqlite"
name = "orders"
path = {json.dumps(str(db))}
{check}
[[application]]
plugin = "{redis_kind}"
name = "cache"
url = "{server.url}"
capture = "snapshot"  # saved under the pause: the writer's own saves cannot interfere

[[backup]]
backend = "clone"
name = "snap"
dir = {json.dumps(str(folder / "snaps"))}
keep = {{ last = 3 }}
"""
    )
    return path


def test_a_check_across_applications_passes_for_the_group_and_fails_for_two_instants(
    tmp_path: Path, redis_server: Callable[..., RedisServer], registry_with
) -> None:
    """While a writer bumps SQLite then Redis, every drilled backup of the group passes the
    check across them; one whose Redis data is of an older instant than the group's (its
    last save before the writer started: freezeframe_testing.mutants) fails it."""
    import freezeframe_testing.mutants as mutants

    server = redis_server()
    db = make_counter_db(tmp_path / "orders.db")
    registry = registry_with(mutants)
    engines = {
        kind: Engine(load_profile(group_profile(tmp_path, db, server, kind), registry), registry)
        for kind in ("redis", "redis-capture-skipped")
    }
    server.client().save()  # the older instant the mutant's backups hold
    drills = {}
    writer = CounterWriter(db, server)
    writer.start()
    try:
        assert wait_until(lambda: writer.pairs > 10, 30)
        for kind, engine in engines.items():
            drills[kind] = []
            for _ in range(3):
                run = engine.backup().record
                assert run.status == "succeeded", run.error
                drills[kind].extend(engine.drill(run.run_id))
    finally:
        writer.stop.set()
        writer.join(30)
    assert [d.status for d in drills["redis"]] == ["passed"] * 3, [
        d.failures for d in drills["redis"]
    ]
    late = drills["redis-capture-skipped"]
    assert [d.status for d in late] == ["failed"] * 3, [
        (d.status, [c.detail for a in d.applications for c in a.checks]) for d in late
    ]
    for d in late:
        (failure,) = d.failures
        assert failure.startswith("application 'orders': check 'one-instant': ")
        assert "failed (exit 1): orders " in failure
    assert list((tmp_path / "drills").iterdir()) == []


def pg_profile(folder: Path, server: PgServer, drills: Path, checks: str) -> Path:
    """The bank's PostgreSQL through a clone snapshot and an archive, drilled in ``drills``."""
    text = f"""
[profile]
name = "bank"
state_dir = {json.dumps(str(folder / "state"))}
drill_dir = {json.dumps(str(drills))}

[[application]]
plugin = "postgresql"
name = "ledger-db"
dsn = "{server.dsn()}"
{checks}
[[backup]]
backend = "clone"
name = "snap"
dir = {json.dumps(str(folder / "snaps"))}

[[backup]]
backend = "archive"
name = "archive"
dir = {json.dumps(str(folder / "archives"))}
"""
    path = folder / "profile.toml"
    path.write_text(text)
    return path


#: The bank's invariants, as the issue's example checks them: the money never changes,
#: and the ledger has one row per committed transfer, without a gap.
BANK_CHECKS = f"""
[[application.check]]
name = "money"
sql = "SELECT sum(balance) FROM accounts"
expect = {ACCOUNTS * OPENING_BALANCE}

[[application.check]]
name = "ledger-without-gaps"
sql = "SELECT count(*) = coalesce(max(n), 0) FROM ledger"
expect = true

[[application.check]]
name = "psql-sees-the-copy"
command = ["sh", "-c", '''
psql -XAtc 'SELECT count(*) FROM accounts' && test "$PGPORT" = "$FREEZEFRAME_LEDGER_DB_PORT"
''']
"""


def test_postgresql_is_drilled_while_writers_commit_and_its_invariants_hold(
    tmp_path: Path, postgres: PostgresFactory
) -> None:
    server = postgres.new(initdb_args=["--data-checksums"])
    create_bank(server)
    drills = postgres.folder("ffpg-drills-", owner="root")
    profile = pg_profile(tmp_path, server, drills, BANK_CHECKS)
    writer = BankWriter(server)
    writer.start()
    try:
        assert wait_until(lambda: writer.committed > 20, 60)
        r = run_cli("backup", profile, "--json", timeout=300)
        assert r.returncode == 0, r.stderr
    finally:
        writer.stop()
    d = run_cli("drill", profile, "--json", timeout=600)
    assert d.returncode == 0, d.stderr
    (drill,) = d.json()["drills"]
    checks = {c["name"]: c for c in drill["applications"][0]["checks"]}
    assert {n: c["status"] for n, c in checks.items()} == {
        "start": "passed",
        "recovery": "passed",
        "amcheck": "passed",
        "money": "passed",
        "ledger-without-gaps": "passed",
        "psql-sees-the-copy": "passed",
        "checksums": "passed",
    }, checks
    assert checks["psql-sees-the-copy"]["detail"] == str(ACCOUNTS)
    assert list(drills.iterdir()) == []
    assert server.sql("SELECT count(*) FROM accounts") == [(ACCOUNTS,)]  # the original runs on


def test_kill_9_mid_drill_leaves_no_postgresql_behind(
    tmp_path: Path, postgres: PostgresFactory
) -> None:
    server = postgres.new()
    create_bank(server)
    drills = postgres.folder("ffpg-drills-", owner="root")
    profile = pg_profile(tmp_path, server, drills, hold(tmp_path))
    assert run_cli("backup", profile, timeout=300).returncode == 0
    kill_9_mid_drill(profile, drills, tmp_path)
    assert server.sql("SELECT count(*) FROM accounts") == [(ACCOUNTS,)]


#: The live bank's invariants: the money never changes; each writer's sequence has no gap.
MARIADB_BANK_CHECKS = f"""
[[application.check]]
name = "money"
sql = "SELECT SUM(balance) FROM bank.accounts"
expect = {MARIADB_ACCOUNTS * MARIADB_OPENING}

[[application.check]]
name = "sequences-without-gaps"
sql = '''SELECT SUM(c) = SUM(m + 1)
FROM (SELECT COUNT(*) c, MAX(n) m FROM bank.seq GROUP BY writer) t'''
expect = true
"""


def test_mariadb_is_drilled_while_writers_commit_and_its_invariants_hold(
    tmp_path: Path, mariadb: MariaDB, writers
) -> None:
    create_mariadb_bank(mariadb)
    application = f"""plugin = "mariadb"
name = "bank"
unix_socket = {json.dumps(str(mariadb.socket))}
user = "root"
capture = "logical"
{MARIADB_BANK_CHECKS}"""
    drills = tmp_path / "drills"
    profile = with_drill_dir(clone_profile(tmp_path, application, name="bank"), drills)
    writers(mariadb)
    assert wait_until(lambda: sum(committed(mariadb).values()) > 20, 60)
    r = run_cli("backup", profile, "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    d = run_cli("drill", profile, "--json", timeout=600)
    assert d.returncode == 0, d.stderr
    (drill,) = d.json()["drills"]
    checks = {c["name"]: c["status"] for c in drill["applications"][0]["checks"]}
    assert checks == {
        "start": "passed",
        "binlog_position": "skipped",  # a logical capture's restore starts a new binary log
        "check_table": "passed",
        "money": "passed",
        "sequences-without-gaps": "passed",
        "stop": "passed",
    }, drill["applications"][0]["checks"]
    assert list(drills.iterdir()) == []
