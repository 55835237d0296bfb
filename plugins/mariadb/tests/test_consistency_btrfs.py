"""A live bank on MariaDB on btrfs, two writers, many backups: every restored copy is one instant.

Two writer processes keep moving money between accounts (the total never
changes) and, in the same transaction, append the next number of their own
gapless sequence (freezeframe_testing.mariadb_bank). Meanwhile freezeframe
backs the server up again and again through the real engine: a btrfs
snapshot while quiesced, then an archive.
Each archive is restored and started on a server of its own beside the
original; it must pass CHECK TABLE, hold the total, hold each sequence
without a gap, hold everything committed before its backup began, and end
its binary log exactly at the position recorded for the run.

The negative control backs up through a plug-in that ends the backup lock
before the snapshot (freezeframe_testing.mutants): the same checks must
reject one of its first few backups.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import freezeframe_testing.mutants as mutants
from freezeframe import RunRecord, RunStatus
from freezeframe.engine import Engine
from freezeframe.profile import load_profile
from freezeframe.registry import Registry
from freezeframe.tools import run_tool
from freezeframe_testing.mariadb_bank import WRITERS, bank_problems, committed, create_bank
from freezeframe_testing.mariadb_server import MariaDB
from freezeframe_testing.plugin import LoopFs, require_tool

RUNS = 20
#: Backups through the mutant before the checks must have rejected one.
MUTANT_TRIES = 5
SECRET = "bank-Secret-3Jx9"  # noqa: S105
PASSWORD_ENV = "FF_TEST_MARIADB_BANK_PASSWORD"  # noqa: S105


def copy_problems(
    engine: Engine,
    mariadb_factory: Callable[..., MariaDB],
    server: MariaDB,
    run: RunRecord,
    before: dict[int, int],
    target: Path,
) -> list[str]:
    """Restore ``run`` under ``target``, start a server on it; what is wrong with it."""
    facts = run.applications[0].facts
    engine.restore(run.run_id, target, verify=True)  # starts it and runs CHECK TABLE
    datadir = target / server.datadir.relative_to("/")
    out = []
    # the binary log ends exactly where the run says: nothing committed in the window
    size = (datadir / facts["binlog_file"]).stat().st_size
    if size != facts["binlog_position"]:
        out.append(f"binary log ends at {size}, not at the run's {facts['binlog_position']}")
    copy = mariadb_factory(datadir, init=False, networking=False)
    try:
        out += bank_problems(copy, before)
        if (gtid := copy.sql("SELECT @@gtid_binlog_pos")[0][0]) != facts["gtid_binlog_pos"]:
            out.append(f"GTID position {gtid}, not the run's {facts['gtid_binlog_pos']}")
    finally:
        copy.stop()
    return out


def bank_engine(
    tmp_path: Path,
    fs: LoopFs,
    server: MariaDB,
    write_profile: Callable[[str], Path],
    registry: Registry,
    plugin: str,
) -> Engine:
    """The bank's server on a subvolume of ``fs``, and a profile backing it up."""
    server.sql(
        f"CREATE USER backup@'%' IDENTIFIED BY '{SECRET}'",
        "GRANT RELOAD, BINLOG MONITOR ON *.* TO backup@'%'",
    )
    create_bank(server)
    profile_path = write_profile(f"""
        [profile]
        name = "bank"
        freeze_timeout = "10s"

        [[application]]
        plugin = "{plugin}"
        name = "bank"
        unix_socket = "{server.socket}"
        user = "backup"
        password_env = "{PASSWORD_ENV}"

        [[backup]]
        backend = "btrfs"
        name = "snap"
        dir = "{fs.mountpoint / "snaps"}"

        [[backup]]
        backend = "archive"
        name = "archive"
        dir = "{tmp_path / "archives"}"
    """)
    return Engine(load_profile(profile_path, registry), registry)


def server_on_btrfs(
    loop_fs: Callable[..., LoopFs], mariadb_factory: Callable[..., MariaDB]
) -> tuple[LoopFs, MariaDB]:
    btrfs = require_tool("btrfs")
    fs = loop_fs("btrfs", 1024)
    run_tool([btrfs, "subvolume", "create", str(fs.mountpoint / "db")], timeout=60)
    return fs, mariadb_factory(fs.mountpoint / "db" / "data")


def test_every_restored_copy_is_one_instant_and_complete(
    tmp_path: Path,
    loop_fs: Callable[..., LoopFs],
    mariadb_factory: Callable[..., MariaDB],
    writers: Callable[[MariaDB], list[subprocess.Popen[bytes]]],
    write_profile: Callable[[str], Path],
    registry: Registry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fs, server = server_on_btrfs(loop_fs, mariadb_factory)
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    engine = bank_engine(tmp_path, fs, server, write_profile, registry, "mariadb")
    procs = writers(server)
    runs = []
    try:
        for _ in range(RUNS):
            before = committed(server)  # every one of these must be in the backup
            run = engine.backup().record
            assert run.status == RunStatus.SUCCEEDED, run.error
            runs.append((run, before))
            assert all(p.poll() is None for p in procs), "a writer died"
        after = committed(server)
    finally:
        for p in procs:
            p.kill()
    assert len(after) == WRITERS
    assert sum(after.values()) > sum(runs[0][1].values()) + RUNS, "writers must keep committing"

    for i, (run, before) in enumerate(runs):
        [app] = run.applications
        assert app.facts["method"] == "BACKUP STAGE BLOCK_COMMIT"
        assert app.frozen_ms is not None
        found = copy_problems(engine, mariadb_factory, server, run, before, tmp_path / f"r{i}")
        assert found == [], f"run {run.run_id}: {found}"
    # the password reached the driver only: nothing freezeframe keeps holds it
    kept = [p for p in (tmp_path / "state").rglob("*") if p.is_file()]
    assert kept and not any(SECRET.encode() in p.read_bytes() for p in kept)


def test_a_lock_ended_before_the_snapshot_is_caught(
    tmp_path: Path,
    loop_fs: Callable[..., LoopFs],
    mariadb_factory: Callable[..., MariaDB],
    writers: Callable[[MariaDB], list[subprocess.Popen[bytes]]],
    write_profile: Callable[[str], Path],
    registry_with: Callable[..., Registry],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fs, server = server_on_btrfs(loop_fs, mariadb_factory)
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    registry = registry_with(mutants)
    engine = bank_engine(tmp_path, fs, server, write_profile, registry, "mariadb-released-early")
    procs = writers(server)
    found: list[str] = []
    for i in range(MUTANT_TRIES):
        before = committed(server)
        run = engine.backup().record
        assert run.status == RunStatus.SUCCEEDED, run.error
        found = copy_problems(engine, mariadb_factory, server, run, before, tmp_path / f"r{i}")
        if found:
            break
    assert all(p.poll() is None for p in procs), "a writer died"
    assert found, f"{MUTANT_TRIES} backups with the lock ended early all passed the checks"
