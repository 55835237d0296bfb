"""If freezeframe dies while PostgreSQL is quiesced, the server ends the backup mode itself.

The backup mode is observed directly: the test servers run with
``full_page_writes = off``, which a running backup overrides, so the first
change to a full page after a checkpoint writes an ~8 kB page image into the
WAL exactly while some backup mode is on, and ~100 bytes otherwise.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import freezeframe_testing.components as comps
from freezeframe import RunStatus
from freezeframe.engine import Engine
from freezeframe.profile import load_profile
from freezeframe.registry import Registry
from freezeframe_testing.plugin import wait_until
from freezeframe_testing.postgres_server import (
    BankWriter,
    PgServer,
    PostgresFactory,
    create_bank,
)

FREEZE_TIMEOUT = 5.0


def make_server(postgres: PostgresFactory) -> PgServer:
    # No autovacuum: nothing but the probe may write WAL while it measures.
    server = postgres.new(settings={"full_page_writes": "off", "autovacuum": "off"})
    create_bank(server)
    server.sql("CREATE TABLE probe (id int PRIMARY KEY, x int, pad text)")
    server.sql("INSERT INTO probe SELECT g, 0, repeat('x', 40) FROM generate_series(1, 100) g")
    return server


def backup_mode_on(server: PgServer) -> bool:
    """Whether a backup forces full-page writes: WAL of one update after a checkpoint."""
    with server.connect() as conn:
        conn.execute("CHECKPOINT")
        [(before,)] = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchall()
        conn.execute("UPDATE probe SET x = x + 1 WHERE id = 1")
        [(written,)] = conn.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s::pg_lsn)", (before,)
        ).fetchall()
    return int(written) > 4000


def freezeframe_sessions(server: PgServer) -> int:
    [(n,)] = server.sql(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'freezeframe'"
    )
    return int(n)


def backup_mode_ended(server: PgServer, within: float) -> bool:
    def gone() -> bool:
        return (
            freezeframe_sessions(server) == 0
            and server.sql("SELECT count(*) FROM pg_replication_slots")[0][0] == 0
        )

    return wait_until(gone, within) and not backup_mode_on(server)


def profile_text(server: PgServer, tmp_path: Path, stage: str) -> str:
    return f"""
        [profile]
        name = "crash"
        freeze_timeout = "{FREEZE_TIMEOUT:g}s"

        [[application]]
        plugin = "postgresql"
        name = "bank"
        dsn = "{server.dsn()}"

        [[backup]]
        name = "snap"
        dir = "{tmp_path / "snaps"}"
        {stage}
    """


def test_kill_9_while_quiesced_ends_the_backup_mode(
    postgres: PostgresFactory, tmp_path: Path, write_profile: Callable[[str], Path]
) -> None:
    server = make_server(postgres)
    assert not backup_mode_on(server)
    marker = tmp_path / "in-stage"
    stage = f'backend = "slow"\nseconds = "60s"\nmarker = "{marker}"'
    profile = write_profile(profile_text(server, tmp_path, stage))
    writer = BankWriter(server)
    writer.start()
    proc = subprocess.Popen(
        [sys.executable, "-m", "freezeframe_testing.components", "backup", str(profile), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_until(lambda: marker.exists() or proc.poll() is not None, 60)
        assert proc.poll() is None, proc.communicate()
        # Quiesced: the backup mode is on, on freezeframe's session, and writers go on.
        assert wait_until(lambda: freezeframe_sessions(server) == 1, 10)  # check()'s is gone
        committed = writer.committed
        assert wait_until(lambda: writer.committed > committed + 20, 30)
        writer.stop()
        assert backup_mode_on(server)
        proc.kill()
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
        if writer.is_alive():
            writer.stop()
    # The server ended the session, its slot and the backup mode with it ...
    assert backup_mode_ended(server, within=FREEZE_TIMEOUT + 2)
    # ... takes writes ...
    with server.connect(options=f"-c statement_timeout={int((FREEZE_TIMEOUT + 2) * 1000)}") as c:
        c.execute("UPDATE accounts SET balance = balance WHERE id = 1")
    # ... and a new backup mode begins and ends.
    with server.connect() as conn:
        conn.execute("SELECT pg_backup_start('after the crash', true)")
        conn.execute("SELECT pg_backup_stop(false)")
    assert not backup_mode_on(server)


def test_a_failing_snapshot_ends_the_backup_mode(
    postgres: PostgresFactory,
    tmp_path: Path,
    write_profile: Callable[[str], Path],
    registry_with: Callable[..., Registry],
) -> None:
    server = make_server(postgres)
    registry = registry_with(comps)
    profile = write_profile(profile_text(server, tmp_path, 'backend = "failing"'))
    run = Engine(load_profile(profile, registry), registry).backup()
    assert run.status == RunStatus.FAILED and "disk on fire" in (run.error or "")
    [app] = run.applications
    assert app.facts["method"] == "backup-mode" and app.facts["stop_lsn"]
    assert app.thaw_end is not None
    assert backup_mode_ended(server, within=5)
