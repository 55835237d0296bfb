"""``capture = "logical"`` for MariaDB on a plain folder (no btrfs, no atomic snapshot).

A live bank (freezeframe_testing.mariadb_bank) is backed up again and again by
the real ``freezeframe backup`` with a ``clone`` snapshot stage and an
``archive`` copy, with no ``capture`` field: the core must pick "logical".
Each run is restored with ``restore --verify`` (a fresh datadir loaded from
the dump), started, and must hold the total, each writer's sequence without a
gap, everything committed before the run began, and exactly the commits
before the block: one GTID per writer commit, so the restored rows equal the
GTID sequence number recorded at the block minus the one before the writers
began. Then what a kill -9, a failing dump and bad input leave.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from freezeframe.plugin import Deadline, Table
from freezeframe_mariadb import MariadbPlugin, _logical
from freezeframe_mariadb._layout import Layout
from freezeframe_mariadb._server import Server
from freezeframe_testing.mariadb_bank import (
    ACCOUNTS,
    OPENING,
    WRITERS,
    bank_problems,
    committed,
    create_bank,
)
from freezeframe_testing.mariadb_server import MariaDB, commits_within
from freezeframe_testing.plugin import (
    CliResult,
    clone_profile,
    require_tool,
    restored,
    run_cli,
    wait_until,
)
from freezeframe_testing.procs import Proc, processes

RUNS = 4
#: Quotes, a hash, a backslash and spaces: the options file must carry it as it is.
SECRET = 'log"ical #Secret\\ 5Tq'  # noqa: S105
PASSWORD_ENV = "FF_TEST_MARIADB_LOGICAL_PASSWORD"  # noqa: S105
GRANTS = "RELOAD, BINLOG MONITOR, SELECT, SHOW VIEW, TRIGGER, EVENT"
#: Rows of padding that make a dump last a few tenths of a second.
BIG = 500_000


def add_backup_user(server: MariaDB, grants: str = GRANTS) -> None:
    conn = server.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE USER backup@'%%' IDENTIFIED BY %s", (SECRET,))
            cur.execute(f"GRANT {grants} ON *.* TO backup@'%'")
    finally:
        conn.close()


def profile_for(folder: Path, server: MariaDB, *, fields: str = "") -> Path:
    """Application ``shop`` (no capture field), a clone stage, an archive copy."""
    application = f"""plugin = "mariadb"
name = "shop"
unix_socket = {json.dumps(str(server.socket))}
user = "backup"
password_env = "{PASSWORD_ENV}"
{fields}"""
    then = f"""[[backup]]
backend = "archive"
name = "archive"
dir = {json.dumps(str(folder / "archives"))}"""
    return clone_profile(folder, application, name="logical", then=then)


def cli(*args: str | Path, env: dict[str, str] | None = None) -> CliResult:
    return run_cli(*args, env={PASSWORD_ENV: SECRET, **(env or {})}, timeout=300)


def dumps_of(server: MariaDB) -> list[Proc]:
    """The mariadb-dump processes reading this test's server (its socket is its own)."""
    return [
        p for p in processes() if p.running and p.runs("mariadb-dump", f"--socket={server.socket}")
    ]


def sessions_of(server: MariaDB, user: str = "backup") -> int:
    rows = server.sql(f"SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = '{user}'")
    return int(rows[0][0])


def status(server: MariaDB, name: str) -> int:
    return int(server.sql(f"SHOW GLOBAL STATUS LIKE '{name}'")[0][1])


def gtid_seq(position: str) -> int:
    """The sequence number of a single-domain GTID position (``0-1-42``: 42)."""
    return int(position.rsplit("-", 1)[1]) if position else 0


def at(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


def nothing_kept(folder: Path) -> bool:
    snaps, archives = folder / "snaps", folder / "archives"
    return not any(snaps.iterdir()) and (not archives.exists() or not any(archives.iterdir()))


def test_logical_backups_under_writers_restore_the_instant_of_the_block(
    tmp_path: Path,
    mariadb_factory: Callable[..., MariaDB],
    writers: Callable[[MariaDB], list[Any]],
) -> None:
    server = mariadb_factory()
    add_backup_user(server)
    create_bank(server)
    server.sql(
        "CREATE TABLE bank.filler (id INT PRIMARY KEY, pad VARCHAR(100))",
        "INSERT INTO bank.filler SELECT seq, REPEAT('f', 100) FROM bank.seq_1_to_20000",
        "CREATE VIEW bank.total AS SELECT SUM(balance) AS total FROM bank.accounts",
        "CREATE PROCEDURE bank.audit() SELECT COUNT(*) FROM bank.seq",
        "CREATE EVENT bank.nightly ON SCHEDULE EVERY 1 DAY DO DELETE FROM bank.seq WHERE 0",
        "CREATE TRIGGER bank.kept BEFORE UPDATE ON bank.accounts FOR EACH ROW "
        "SET NEW.balance = NEW.balance",
    )
    base = gtid_seq(server.sql("SELECT @@gtid_binlog_pos")[0][0])  # before any writer commit
    profile = profile_for(tmp_path, server)
    plan = cli("plan", profile, "--json")
    assert plan.returncode == 0, plan.stderr
    assert plan.json()["applications"][0]["capture"] == "logical"  # clone: not atomic
    procs = writers(server)
    runs = []
    for _ in range(RUNS):
        before = committed(server)  # every one of these must be in the backup
        r = cli("backup", profile, "--json")
        assert r.returncode == 0, r.stderr
        runs.append((r.json(), before))
        assert all(p.poll() is None for p in procs), "a writer died"
    after = committed(server)
    assert len(after) == WRITERS
    assert sum(after.values()) > sum(runs[0][1].values()) + RUNS, "writers must keep committing"

    for i, (record, before) in enumerate(runs):
        [app] = record["applications"]
        facts = app["facts"]
        assert app["capture"] == "logical" and facts["method"] == "BACKUP STAGE BLOCK_COMMIT"
        assert at(app["complete_start"]) >= at(app["thaw_end"])
        assert facts["dump_ms"] > app["frozen_ms"], "the dump did not outlive the window"
        assert facts["dump_snapshot_ms"] < app["frozen_ms"]
        assert SECRET not in json.dumps(record)
        target = tmp_path / f"r{i}"
        r = cli("restore", profile, record["run_id"], "--to", target, "--verify")
        assert r.returncode == 0, r.stderr
        dump = restored(target, Path("/freezeframe-dumps/shop/all-databases.sql"))
        assert dump.stat().st_size == facts["dump_bytes"]
        copy = mariadb_factory(restored(target, server.datadir), init=False, networking=False)
        try:
            assert bank_problems(copy, before) == [], record["run_id"]
            rows = copy.sql("SELECT COUNT(*) FROM bank.seq")[0][0]
            assert rows == gtid_seq(facts["gtid_binlog_pos"]) - base, "not the block's instant"
            assert copy.sql("SELECT total FROM bank.total") == [(OPENING * ACCOUNTS,)]
            assert copy.sql("SHOW PROCEDURE STATUS WHERE Db = 'bank'")[0][1] == "audit"
            assert copy.sql("SHOW EVENTS FROM bank")[0][1] == "nightly"
            assert copy.sql("SHOW TRIGGERS FROM bank")[0][0] == "kept"
            assert copy.sql("SELECT COUNT(*) FROM mysql.user WHERE User = 'backup'") == [(1,)]
        finally:
            copy.stop()
    assert not dumps_of(server)
    assert sessions_of(server) == 0
    kept = [p for p in (tmp_path / "state").rglob("*") if p.is_file()]
    assert kept and not any(SECRET.encode() in p.read_bytes() for p in kept)


#: Where freezeframe is killed, and how many of its sessions the server then sees vanish
#: (Aborted_clients): in the window, the block's and the dump's; after the thaw, the dump's.
KILLS = [("quiesce.after.shop", 2), ("complete.before.shop", 1)]


@pytest.mark.parametrize(("where", "vanished"), KILLS)
def test_kill_9_between_the_capture_and_the_completion(
    tmp_path: Path, mariadb_factory: Callable[..., MariaDB], where: str, vanished: int
) -> None:
    """In the window (the block held, the dump just begun) and after the thaw (the dump
    still running): commits go on at once, the dump dies with freezeframe (mid-dump: a
    dump that finished would have said goodbye), and no session of ours is left."""
    server = mariadb_factory()
    add_backup_user(server)
    server.sql(
        "CREATE DATABASE shop",
        "CREATE TABLE shop.t (id INT PRIMARY KEY, v INT NOT NULL)",
        "INSERT INTO shop.t VALUES (1, 0)",
        "CREATE TABLE shop.big (id INT PRIMARY KEY, pad VARCHAR(100))",
        f"INSERT INTO shop.big SELECT seq, REPEAT('x', 100) FROM shop.seq_1_to_{BIG}",
    )
    profile = profile_for(tmp_path, server)
    aborted = status(server, "Aborted_clients")
    fired = tmp_path / "fired"
    env = {"FREEZEFRAME_FAULT": f"sigkill@{where}", "FREEZEFRAME_FAULT_FIRED": str(fired)}
    r = cli("backup", profile, env=env)
    assert fired.read_text().split() == [f"sigkill@{where}#1"]
    assert r.returncode == -9, r.stderr
    assert commits_within(server, "UPDATE shop.t SET v = v + 1 WHERE id = 1", 1)
    assert wait_until(lambda: not dumps_of(server), 2), dumps_of(server)
    assert status(server, "Aborted_clients") == aborted + vanished, "the dump outlived us"
    listed = cli("list", profile, "--json")  # the next command reconciles the killed run
    assert listed.returncode == 0, listed.stderr
    assert [run["status"] for run in listed.json()] == ["failed"]
    assert wait_until(lambda: sessions_of(server) == 0, 5)
    assert nothing_kept(tmp_path)


def test_the_password_reaches_the_dump_in_memory_only_and_release_kills_it(
    tmp_path: Path, mariadb_factory: Callable[..., MariaDB], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = mariadb_factory()
    add_backup_user(server)
    server.sql(
        "CREATE DATABASE shop",
        "CREATE TABLE shop.big (id INT PRIMARY KEY, pad VARCHAR(100))",
        f"INSERT INTO shop.big SELECT seq, REPEAT('x', 100) FROM shop.seq_1_to_{BIG}",
    )
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    table = {"unix_socket": str(server.socket), "user": "backup", "password_env": PASSWORD_ENV}
    p = MariadbPlugin("shop", Table(table, base_dir=tmp_path))
    p.capture = "logical"
    p.check()
    p.quiesce(Deadline.after(10))
    try:
        [dump] = dumps_of(server)  # still reading its snapshot
        assert dump.argv[1].startswith("--defaults-extra-file=/dev/fd/"), dump.argv
        assert not any(SECRET in a for a in dump.argv)
        environ = Path(f"/proc/{dump.pid}/environ").read_bytes()
        assert PASSWORD_ENV.encode() not in environ and SECRET.encode() not in environ
    finally:
        p.unquiesce(())
        p.release()
    assert not dumps_of(server)  # release killed and reaped it
    assert wait_until(lambda: sessions_of(server) == 0, 5)


def test_a_failing_dump_fails_the_run_and_leaves_nothing(
    tmp_path: Path, mariadb_factory: Callable[..., MariaDB]
) -> None:
    server = mariadb_factory()
    add_backup_user(server)
    server.sql(  # a view whose table is gone: mariadb-dump stops on it (exit 2)
        "CREATE DATABASE shop",
        "CREATE TABLE shop.t (id INT PRIMARY KEY, v INT NOT NULL)",
        "INSERT INTO shop.t VALUES (1, 0)",
        "CREATE TABLE shop.gone (id INT)",
        "CREATE VIEW shop.broken AS SELECT * FROM shop.gone",
        "DROP TABLE shop.gone",
    )
    profile = profile_for(tmp_path, server)
    r = cli("backup", profile, "--json")
    assert r.returncode == 1
    error = r.json()["error"]
    assert "application 'shop': completion failed:" in error and "\n" not in error
    assert "mariadb-dump failed (exit 2)" in error and "shop.broken" in error, error
    assert nothing_kept(tmp_path)
    assert not dumps_of(server) and sessions_of(server) == 0
    assert commits_within(server, "UPDATE shop.t SET v = v + 1 WHERE id = 1", 1)


# -- bad input: one line each ----------------------------------------------------------------


def problem_lines(r: CliResult) -> list[str]:
    """``check``'s problems with application ``shop``."""
    return [
        line for line in r.stdout.splitlines() if line.startswith("problem: application 'shop'")
    ]


def test_check_names_what_the_logical_mode_lacks(
    tmp_path: Path, mariadb_factory: Callable[..., MariaDB]
) -> None:
    server = mariadb_factory()
    add_backup_user(server, "RELOAD, BINLOG MONITOR")
    profile = profile_for(tmp_path, server)
    r = cli("check", profile)
    assert r.returncode == 1  # privileges can be granted: not a bad profile
    [line] = problem_lines(r)
    assert "application 'shop':" in line
    assert (
        "lacks the SELECT, SHOW VIEW, TRIGGER, EVENT privileges, which mariadb-dump needs" in line
    )
    server.sql(f"GRANT {GRANTS} ON *.* TO backup@'%'")
    assert cli("check", profile).returncode == 0

    # no mariadb-dump on PATH (it is in /usr/bin; find_tool also looks in the sbin folders)
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli("check", profile, env={"PATH": str(empty)})
    assert r.returncode == 2  # the profile asks for a mode this machine cannot give
    [line] = problem_lines(r)
    assert "mariadb-dump is not installed" in line and 'capture = "logical" needs it' in line
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mariadb-dump").symlink_to(os.path.realpath(require_tool("mariadb-dump")))
    with_bin = profile_for(tmp_path, server, fields=f"bin_dir = {json.dumps(str(bin_dir))}")
    r = cli("check", with_bin, env={"PATH": str(empty)})
    assert problem_lines(r) == [], r.stdout  # (the archive stage misses tar there)

    locked = profile_for(tmp_path, server, fields='lock = "flush-tables"')
    [line] = problem_lines(cli("check", locked))
    assert 'remove lock = "flush-tables"' in line, line

    relative = profile_for(tmp_path, server, fields='dump_path = "dumps/shop"')
    r = cli("check", relative)
    assert r.returncode == 2
    assert "field \"dump_path\": 'dumps/shop' is not an absolute path" in r.stderr, r.stderr


def test_a_server_too_old_or_a_dump_path_in_the_datadir_is_one_line() -> None:
    """No MariaDB 10.3 or MySQL on this machine: the refusal, from what VERSION() said."""
    layout = Layout(Path("/var/lib/mysql"))
    dumps = Path("/freezeframe-dumps/shop")
    for version in ("10.3.39-MariaDB-log", "8.0.36"):
        problem = _logical.problem(Server.parse(version), layout, "auto", dumps, None)
        assert problem is not None and "\n" not in problem
        assert problem.startswith('capture = "logical" needs MariaDB 10.4 or later'), problem
    inside = _logical.problem(
        Server.parse("10.11.6-MariaDB"), layout, "auto", layout.datadir / "d", None
    )
    assert inside == (
        "dump_path /var/lib/mysql/d lies in the server's data folders: choose one outside"
    )
