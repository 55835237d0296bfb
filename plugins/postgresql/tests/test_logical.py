"""``capture = "logical"``: each database's snapshot exported inside the window, ``pg_dump``
from it after the thaw, a fresh cluster built from the dump at restore.

The bank of freezeframe_testing.postgres_server (transfers keep the total; the ledger is
1, 2, 3, ... with no gap) takes commits without pause while a clone snapshot stage and an
archive made from it back it up, again and again, through the real CLI; each archive is
restored with ``restore --verify`` into a fresh folder, a server is started on the built
cluster beside the original, and the invariants are checked: nothing committed before
the run began is missing, nothing committed after the capture is there, although the
dump ran long after it. Then what a kill leaves, and what ``check`` refuses.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from freezeframe_testing.plugin import run_cli, wait_until
from freezeframe_testing.postgres_server import (
    BankWriter,
    PgServer,
    PostgresFactory,
    bank_state,
    create_bank,
)
from freezeframe_testing.procs import in_session

RUNS = 4
APP = "bank"


def profile_text(
    server: PgServer | str, tmp_path: Path, *, fields: str = "", then: str = ""
) -> str:
    """``server`` (or a DSN) in the logical capture, a clone stage, ``then``."""
    dsn = server if isinstance(server, str) else server.dsn()
    return f"""
        [profile]
        name = "logical"
        freeze_timeout = "10s"

        [[application]]
        plugin = "postgresql"
        name = "{APP}"
        dsn = "{dsn}"
        capture = "logical"
        {fields}

        [[backup]]
        backend = "clone"
        name = "snap"
        dir = "{tmp_path / "snaps"}"

        {then}
    """


ARCHIVE = """
        [[backup]]
        backend = "archive"
        name = "archive"
        dir = "{dir}"
"""


def wall(stamp: str | None) -> float:
    assert stamp is not None
    return datetime.fromisoformat(stamp).timestamp()


def make_bank(postgres: PostgresFactory) -> tuple[PgServer, Path]:
    """The bank, its ledger in a tablespace, and a second database that only reads."""
    server = postgres.new()
    tablespace = postgres.folder("ffpg-ts-")
    create_bank(server, tablespace)
    server.sql("CREATE DATABASE shop TEMPLATE postgres")
    server.sql("CREATE TABLE items (id int PRIMARY KEY, name text)", dbname="shop")
    items = "INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 500) g"
    server.sql(items, dbname="shop")
    return server, tablespace


def start_restored(postgres: PostgresFactory, target: Path, original: Path) -> PgServer:
    """A server on the cluster the restore built; the test reaches it as root through its
    socket (the built cluster's own pg_hba.conf says peer)."""
    data_dir = target / original.relative_to("/")
    hba = data_dir / "pg_hba.conf"
    hba.write_text("local all all trust\n" + hba.read_text())
    return postgres.start_on(data_dir)


def test_logical_backups_under_a_writer_restore_consistent(
    postgres: PostgresFactory, tmp_path: Path, write_profile: Callable[[str], Path]
) -> None:
    server, tablespace = make_bank(postgres)
    then = ARCHIVE.format(dir=tmp_path / "archives")
    profile = write_profile(profile_text(server, tmp_path, then=then))
    assert run_cli("check", profile).returncode == 0
    offset = time.time() - time.monotonic()
    writer = BankWriter(server)
    writer.record = True
    writer.start()
    runs = []
    try:
        while writer.committed < 20:
            writer.join(0.01)
        for _ in range(RUNS):
            before = writer.committed
            r = run_cli("backup", profile, "--json")
            assert r.returncode == 0, r.stderr
            runs.append((r.json(), before))
    finally:
        writer.stop()
    started = [offset + at for at, _ in writer.latencies]  # when each commit began
    dumped_late = 0
    for i, (record, before) in enumerate(runs):
        [app] = record["applications"]
        assert app["capture"] == "logical" and app["facts"]["method"] == "logical"
        assert app["facts"]["databases"] == ["postgres", "shop"]
        assert app["facts"]["capture_lsn"]
        # the window held the capture only; the dump ran after the thaw
        assert app["frozen_ms"] < 1000, app["frozen_ms"]
        assert wall(app["complete_start"]) >= wall(app["thaw_end"])
        target = postgres.folder("ffpg-restore-", owner="root") / f"r{i}"
        r = run_cli("restore", profile, record["run_id"], "--to", target, "--verify", timeout=600)
        assert r.returncode == 0, r.stderr
        dump = target / "freezeframe-dumps" / APP
        manifest = json.loads((dump / "freezeframe-postgresql.json").read_text())
        assert [d["name"] for d in manifest["databases"]] == ["postgres", "shop"]
        for f in dump.rglob("*"):  # the archive keeps the dump's times: written after the thaw
            assert f.stat().st_mtime >= int(wall(app["thaw_end"])), f
        copy = start_restored(postgres, target, server.data_dir)
        state = bank_state(copy)
        assert state.problems(before) == [], (i, state)
        # every commit the copy holds began before the capture ended
        captured = sum(1 for t in started if t < wall(app["quiesce_end"]))
        assert state.ledger_max <= captured, (state.ledger_max, captured)
        dumped_late += sum(1 for t in started if t < wall(app["complete_end"])) > captured
        assert copy.sql("SELECT count(*) FROM items", dbname="shop") == [(500,)]
        [(location,)] = copy.sql(
            "SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'bank_ts'"
        )
        assert location == str(target / tablespace.relative_to("/"))
        copy.stop()
    assert dumped_late, "the writer committed nothing while any dump ran: the test proves nothing"
    assert bank_state(server).problems(writer.committed) == []


def test_a_role_of_its_own_dumps_the_databases_it_names(
    postgres: PostgresFactory, tmp_path: Path, write_profile: Callable[[str], Path]
) -> None:
    """Not a superuser, the owner of what it dumps (pg_read_all_data would do too): it may
    not read pg_authid, so the roles are dumped without their passwords; ``databases``
    and ``dump_path``."""
    server = postgres.new()
    server.sql("CREATE DATABASE shop TEMPLATE postgres")
    server.sql("CREATE DATABASE other TEMPLATE postgres")
    server.sql("CREATE TABLE items (id int)", dbname="shop")
    server.sql("CREATE ROLE clerk LOGIN PASSWORD 'a-clerk-s-password'")
    server.sql("GRANT SELECT ON items TO clerk", dbname="shop")
    server.sql("CREATE ROLE dumper LOGIN IN ROLE pg_read_all_settings")
    server.sql("ALTER DATABASE shop OWNER TO dumper")
    server.sql("ALTER TABLE items OWNER TO dumper", dbname="shop")
    fields = 'databases = ["shop"]\ndump_path = "/srv/dumps/bank"'
    profile = write_profile(profile_text(server.dsn(user="dumper"), tmp_path, fields=fields))
    r = run_cli("backup", profile, "--json")
    assert r.returncode == 0, r.stderr
    facts = r.json()["applications"][0]["facts"]
    assert facts["databases"] == ["shop"] and facts["role_passwords"] is False
    target = postgres.folder("ffpg-restore-", owner="root") / "back"
    r = run_cli("restore", profile, "latest", "--to", target, "--verify", timeout=600)
    assert r.returncode == 0, r.stderr
    assert (target / "srv" / "dumps" / "bank" / "databases" / "shop").is_dir()
    copy = start_restored(postgres, target, server.data_dir)
    names = {row[0] for row in copy.sql("SELECT datname FROM pg_database")}
    assert "shop" in names and "other" not in names
    granted = "SELECT has_table_privilege('clerk', 'items', 'SELECT')"
    assert copy.sql(granted, dbname="shop") == [(True,)]
    assert copy.sql("SELECT rolpassword FROM pg_authid WHERE rolname = 'clerk'") == [(None,)]


# -- a kill between the capture and the completion ------------------------------------------


def ours(server: PgServer) -> list[tuple[str, str]]:
    """freezeframe's sessions on the server (its own, and its pg_dump's)."""
    rows = server.sql(
        "SELECT state, backend_type FROM pg_stat_activity WHERE application_name = 'freezeframe'"
    )
    return [(str(a), str(b)) for a, b in rows]


def dumps_in(session: int) -> list[int]:
    """The pg_dump processes of a session that dump from an exported snapshot (not the
    ``pg_dump --version`` that finds the tool)."""
    return [
        p.pid
        for p in in_session(session)
        if p.runs("pg_dump") and any(a.startswith("--snapshot=") for a in p.argv)
    ]


def after_the_kill(server: PgServer, profile: Path, tmp_path: Path) -> None:
    """Nothing of ours on the server; the next command reconciles, the next backup works."""
    assert wait_until(lambda: ours(server) == [], 10), ours(server)
    assert run_cli("check", profile).returncode == 0
    listed = run_cli("list", profile, "--json")
    assert [run["status"] for run in listed.json()] == ["failed"]
    assert not any((tmp_path / "snaps").iterdir())  # the half-made snapshot went with it
    r = run_cli("backup", profile)
    assert r.returncode == 0, r.stderr
    assert wait_until(lambda: ours(server) == [], 10), ours(server)


def test_kill_9_between_the_capture_and_its_completion(
    postgres: PostgresFactory, tmp_path: Path, write_profile: Callable[[str], Path]
) -> None:
    server = postgres.new()
    create_bank(server)
    profile = write_profile(profile_text(server, tmp_path))
    fired = tmp_path / "fired"
    env = {
        "FREEZEFRAME_FAULT": f"sigkill@complete.before.{APP}",
        "FREEZEFRAME_FAULT_FIRED": str(fired),
    }
    r = run_cli("backup", profile, env=env)
    assert fired.read_text().split() == [f"sigkill@complete.before.{APP}#1"]
    assert r.returncode == -signal.SIGKILL, r.stderr
    after_the_kill(server, profile, tmp_path)


def test_kill_9_while_pg_dump_runs_kills_pg_dump_too(
    postgres: PostgresFactory, tmp_path: Path, write_profile: Callable[[str], Path]
) -> None:
    """pg_dump waits for a lock the test holds (taken before the backup: the capture needs
    no lock), so it is surely running when freezeframe is killed."""
    server = postgres.new()
    create_bank(server)
    profile = write_profile(profile_text(server, tmp_path))
    with server.connect() as locker:
        locker.execute("BEGIN")
        locker.execute("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")
        proc = subprocess.Popen(
            [sys.executable, "-m", "freezeframe", "backup", str(profile)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its session holds its children, orphaned or not
        )
        try:
            found: list[int] = []

            def dumping() -> bool:
                found[:] = dumps_in(proc.pid)
                return bool(found) or proc.poll() is not None

            assert wait_until(dumping, 60, interval=0.01) and found, proc.communicate()
            assert wait_until(lambda: len(ours(server)) >= 2, 10)  # the export and pg_dump's
        finally:
            proc.kill()
            proc.communicate(timeout=60)
        assert wait_until(lambda: not dumps_in(proc.pid), 5), "pg_dump outlived freezeframe"
        # its session ends although it still waits for the lock
        assert wait_until(lambda: ours(server) == [], 10), ours(server)
        locker.execute("ROLLBACK")
    after_the_kill(server, profile, tmp_path)


# -- what check refuses -------------------------------------------------------------------


def refused(profile: Path, *words: str) -> str:
    r = run_cli("check", profile)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"'{APP}'" in lines[0] and all(w in lines[0] for w in words), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def idle_server(postgres_module: PostgresFactory) -> PgServer:
    return postgres_module.new()


def test_check_refuses_a_pg_dump_of_another_major_version(
    idle_server: PgServer, tmp_path: Path, write_profile: Callable[[str], Path]
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("pg_dump", "pg_dumpall"):
        fake = bin_dir / tool
        fake.write_text(f"#!/bin/sh\necho '{tool} (PostgreSQL) 11.22'\n")
        fake.chmod(0o755)
    fields = f'bin_dir = "{bin_dir}"'
    profile = write_profile(profile_text(idle_server, tmp_path, fields=fields))
    refused(profile, 'capture = "logical" runs pg_dump', "PostgreSQL 11, not 15", "set bin_dir")


def test_check_refuses_a_missing_pg_dump(
    idle_server: PgServer, tmp_path: Path, write_profile: Callable[[str], Path]
) -> None:
    (tmp_path / "bin").mkdir()
    fields = f'bin_dir = "{tmp_path / "bin"}"'
    profile = write_profile(profile_text(idle_server, tmp_path, fields=fields))
    refused(profile, "no pg_dump in bin_dir")


def test_check_refuses_a_dump_path_inside_the_data_directory(
    idle_server: PgServer, tmp_path: Path, write_profile: Callable[[str], Path]
) -> None:
    fields = f'dump_path = "{idle_server.data_dir / "dumps"}"'
    profile = write_profile(profile_text(idle_server, tmp_path, fields=fields))
    refused(profile, "dump_path", "overlap")


def test_check_refuses_a_database_the_server_lacks(
    idle_server: PgServer, tmp_path: Path, write_profile: Callable[[str], Path]
) -> None:
    fields = 'databases = ["postgres", "nosuch"]'
    profile = write_profile(profile_text(idle_server, tmp_path, fields=fields))
    refused(profile, "databases: no database 'nosuch'")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ('dump_path = "relative/dumps"', "dump_path"),
        ('dump_path = "/"', "dump_path"),
        ("databases = []", "databases"),
        ('databases = ["a", "a"]', "databases"),
    ],
)
def test_bad_fields_are_one_line(
    tmp_path: Path, write_profile: Callable[[str], Path], fields: str, field: str
) -> None:
    text = profile_text("host=/nonexistent", tmp_path, fields=fields)
    r = run_cli("check", write_profile(text))
    assert r.returncode == 2 and f'field "{field}"' in r.stderr, r.stderr
    assert len([line for line in r.stderr.splitlines() if line.strip()]) == 1, r.stderr


def test_capture_modes_keep_the_default_first() -> None:
    kinds = {c["kind"]: c for c in run_cli("plugins", "--json").json()["components"]}
    assert kinds["postgresql"]["capture_modes"] == ["snapshot", "base-backup", "logical"]
