"""A live PostgreSQL bank, one writer, many backups: every restored copy recovers and balances.

The writer commits transfers without pause: each moves money between two
accounts (the total never changes) and adds the next row to a ledger (1, 2,
3, ... with no gap), in one transaction. While it runs, freezeframe backs the
server up again and again through the real engine — a snapshot stage, then
an archive made from it — on a per-file snapshot (clone: the plug-in's
backup mode) and on an atomic one (a btrfs subvolume: crash-consistent).
Each archive is then restored into a fresh folder and a server is started
on it beside the original, which is still running: it must recover, keep
both invariants and hold every transfer committed before the backup began.

The negative control backs up through a plug-in whose per-file images lose
the WAL segment holding the backup's end (freezeframe_testing.mutants): the
same restore and check must refuse it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import freezeframe_testing.mutants as mutants
from freezeframe import Artifact, FreezeframeError, RunRecord, RunStatus, SnapshotKind, Table
from freezeframe.copying import copy_tree
from freezeframe.engine import Engine
from freezeframe.profile import load_profile
from freezeframe.registry import Registry
from freezeframe.tools import run_tool
from freezeframe_postgresql import PostgresqlPlugin
from freezeframe_testing.plugin import LoopFs, require_tool, wait_until
from freezeframe_testing.postgres_server import (
    BankWriter,
    PgServer,
    PostgresFactory,
    bank_state,
    chown_to_postgres,
    create_bank,
)

RUNS = 20
#: Every how many runs the restore also runs the plug-in's own check (verify_restored).
VERIFY_EVERY = 10


def profile_text(
    server: PgServer, snapshot: str, archives: Path, plugin: str = "postgresql"
) -> str:
    return f"""
        [profile]
        name = "bank"
        freeze_timeout = "30s"

        [[application]]
        plugin = "{plugin}"
        name = "bank"
        dsn = "{server.dsn()}"

        {snapshot}

        [[backup]]
        backend = "archive"
        name = "archive"
        dir = "{archives}"
        level = 1
    """


def postgres_owned(path: Path) -> Path:
    path.mkdir()
    return chown_to_postgres(path)


def restored(target: Path, original: Path) -> Path:
    return target / original.relative_to(original.anchor)


def back_up_under_load(
    engine: Engine, server: PgServer, records: list[RunRecord] | None = None
) -> list[tuple[str, int, dict[str, Any]]]:
    """RUNS backups while the writer commits; (run id, committed before it began, facts)."""
    writer = BankWriter(server)
    writer.start()
    runs = []
    try:
        for _ in range(RUNS):
            before = writer.committed
            run = engine.backup().record
            assert run.status == RunStatus.SUCCEEDED, run.error
            runs.append((run.run_id, before, dict(run.applications[0].facts)))
            if records is not None:
                records.append(run)
    finally:
        writer.stop()
    assert writer.committed > RUNS * 5, "the writer must have kept committing during the backups"
    return runs


def one_backup_under_load(engine: Engine, server: PgServer) -> tuple[RunRecord, int]:
    """One backup once the writer has committed 50 transfers; (run, committed before it)."""
    writer = BankWriter(server)
    writer.start()
    try:
        while writer.committed < 50:
            writer.join(0.01)
        before = writer.committed
        run = engine.backup().record
    finally:
        writer.stop()
    assert run.status == RunStatus.SUCCEEDED, run.error
    return run, before


def restore_and_check(
    engine: Engine,
    server: PgServer,
    postgres: PostgresFactory,
    runs: list[tuple[str, int, dict[str, Any]]],
    tablespace: Path,
) -> None:
    """Restore each run beside the running original; start it; check the bank."""
    for i, (run_id, before, facts) in enumerate(runs):
        target = postgres.folder("ffpg-restore-", owner="root") / "r"
        verify = i % VERIFY_EVERY == 0
        engine.restore(run_id, target, verify=verify)
        data = restored(target, server.data_dir)
        assert not (data / "postmaster.pid").exists()
        # A per-file copy carries its backup_label (renamed .old once a verify recovered
        # it); an atomic image must carry none, or recovery would start at the wrong place.
        label = data / ("backup_label.old" if verify else "backup_label")
        if facts["method"] == "backup-mode":
            assert f"START WAL LOCATION: {facts['start_lsn']} " in label.read_text()
        else:
            assert not label.exists() and not (data / "backup_label").exists()
        [link] = (data / "pg_tblspc").iterdir()
        assert os.readlink(link) == str(restored(target, tablespace)), "would use the original's"
        copy = postgres.start_on(data)
        try:
            problems = bank_state(copy).problems(before)
        finally:
            copy.stop("immediate")
        assert problems == [], f"run {run_id}: {problems}\n{copy.log_tail()}"
        shutil.rmtree(target.parent)
    # The original went on untouched beside its copies.
    assert bank_state(server).problems(0) == []


@pytest.mark.slow
def test_per_file_snapshots_under_load_restore_consistent_and_complete(
    postgres: PostgresFactory,
    tmp_path: Path,
    write_profile: Callable[[str], Path],
    registry: Registry,
) -> None:
    server = postgres.new()
    tablespace = postgres_owned(postgres.folder() / "ts")
    create_bank(server, tablespace)
    snapshot = f'[[backup]]\nbackend = "clone"\nname = "snap"\ndir = "{tmp_path / "snaps"}"'
    path = write_profile(profile_text(server, snapshot, tmp_path / "archives"))
    engine = Engine(load_profile(path, registry), registry)
    assert engine.data_paths() == (server.data_dir, tablespace)

    records: list[RunRecord] = []
    runs = back_up_under_load(engine, server, records)
    for (run_id, _, facts), record in zip(runs, records, strict=True):
        assert facts["method"] == "backup-mode"
        assert facts["completed_snapshots"] == [run_id]
        assert facts["wal_kept_by"].startswith("temporary replication slot")
        assert facts["wal_segments"] >= 1
        # The label and the WAL are written after the thaw: the window holds none of it.
        [app] = record.applications
        assert app.capture == "base-backup"
        assert app.thaw_end is not None and app.complete_start is not None
        assert app.thaw_end <= app.complete_start <= (app.complete_end or 0)
    restore_and_check(engine, server, postgres, runs, tablespace)


@pytest.mark.parametrize("action", ["raise@complete.before.bank", "raise@complete.after.bank"])
def test_a_failed_completion_fails_the_run_leaves_nothing_and_nothing_held(
    postgres: PostgresFactory,
    tmp_path: Path,
    write_profile: Callable[[str], Path],
    registry: Registry,
    monkeypatch: pytest.MonkeyPatch,
    action: str,
) -> None:
    server = postgres.new()
    create_bank(server)
    snapshot = f'[[backup]]\nbackend = "clone"\nname = "snap"\ndir = "{tmp_path / "snaps"}"'
    path = write_profile(profile_text(server, snapshot, tmp_path / "archives"))
    engine = Engine(load_profile(path, registry), registry)
    monkeypatch.setenv("FREEZEFRAME_FAULT", action)
    run = engine.backup().record
    assert run.status == RunStatus.FAILED
    assert "application 'bank': completion failed: InjectedFault" in (run.error or "")
    assert not any((tmp_path / "snaps").iterdir())
    archives = tmp_path / "archives"
    assert not archives.exists() or not any(archives.iterdir())
    # freezeframe's release closed its session: no backup mode, no slot is left behind ...
    held = (
        "SELECT (SELECT count(*) FROM pg_stat_activity WHERE application_name = 'freezeframe')"
        " + (SELECT count(*) FROM pg_replication_slots)"
    )
    assert wait_until(lambda: server.sql(held)[0][0] == 0, 10)
    # ... and the next run backs up as usual.
    monkeypatch.delenv("FREEZEFRAME_FAULT")
    assert engine.backup().record.status == RunStatus.SUCCEEDED


@pytest.mark.slow
def test_a_per_file_backup_without_its_last_wal_segment_is_refused(
    postgres: PostgresFactory,
    tmp_path: Path,
    write_profile: Callable[[str], Path],
    registry_with: Callable[..., Registry],
) -> None:
    server = postgres.new()
    tablespace = postgres_owned(postgres.folder() / "ts")
    create_bank(server, tablespace)
    snapshot = f'[[backup]]\nbackend = "clone"\nname = "snap"\ndir = "{tmp_path / "snaps"}"'
    path = write_profile(
        profile_text(server, snapshot, tmp_path / "archives", "postgresql-short-wal")
    )
    registry = registry_with(mutants)
    engine = Engine(load_profile(path, registry), registry)
    run, before = one_backup_under_load(engine, server)
    facts = dict(run.applications[0].facts)
    # recovery refuses it: its WAL ends before the backup's end (or its checkpoint record)
    with pytest.raises(FreezeframeError, match="did not start: FATAL: ") as e:
        restore_and_check(engine, server, postgres, [(run.run_id, before, facts)], tablespace)
    shutil.rmtree(Path(str(e.value).rsplit("(server log: ", 1)[1].rstrip(")")).parent)  # kept


@pytest.mark.slow
def test_atomic_snapshots_under_load_restore_consistent_and_complete(
    postgres: PostgresFactory,
    loop_fs: Callable[..., LoopFs],
    tmp_path: Path,
    write_profile: Callable[[str], Path],
    registry: Registry,
) -> None:
    btrfs = require_tool("btrfs")
    fs = loop_fs("btrfs", size_mb=1024)
    mnt = postgres.mount_again(fs.device)  # loop_fs mounts below a folder postgres cannot enter
    run_tool([btrfs, "subvolume", "create", str(mnt / "pg")], timeout=60)
    server = postgres.new(data_dir=mnt / "pg" / "data")
    tablespace = postgres_owned(mnt / "pg" / "ts")  # same subvolume: one instant
    create_bank(server, tablespace)
    snapshot = f'[[backup]]\nbackend = "btrfs"\nname = "snap"\ndir = "{mnt / "snaps"}"'
    path = write_profile(profile_text(server, snapshot, tmp_path / "archives"))
    engine = Engine(load_profile(path, registry), registry)

    runs = back_up_under_load(engine, server)
    for _, _, facts in runs:
        assert facts["method"] == "crash-consistent"
        assert "completed_snapshots" not in facts  # no backup_label in an atomic image
        assert facts["checkpoint_ms"] is not None
    assert not any((mnt / "snaps").iterdir()), "each snapshot is released once archived"
    restore_and_check(engine, server, postgres, runs, tablespace)


@pytest.mark.slow
def test_a_per_file_copy_without_the_wal_through_the_stop_lsn_does_not_recover(
    postgres: PostgresFactory, tmp_path: Path
) -> None:
    """Two copies taken file by file in one backup mode, under load. The plug-in completes
    one (backup_label + WAL through the stop LSN); the other gets only the backup_label:
    its WAL ends before the backup's end record, which is written after the copy, so
    recovery must refuse it — always. (A copy with neither the label nor the WAL may
    recover by luck when no checkpoint ran during the copy: not a reliable demonstration.)
    """
    server = postgres.new()
    create_bank(server)
    plugin = PostgresqlPlugin("bank", Table({"dsn": server.dsn()}, base_dir=tmp_path))
    plugin.capture = "base-backup"
    view = postgres.folder("ffpg-view-", owner="root")
    incomplete = postgres.folder("ffpg-view-", owner="root")
    writer = BankWriter(server)
    writer.start()
    try:
        while writer.committed < 50:
            writer.join(0.01)
        plugin.prepare(frozenset({SnapshotKind.PER_FILE}))
        before = writer.committed
        for root in (view, incomplete):
            dst = restored(root, server.data_dir)
            dst.parent.mkdir(parents=True)
            copy_tree(server.data_dir, dst)
        plugin.unquiesce(())
        while writer.committed < before + 50:  # the server goes on past the stop LSN
            writer.join(0.01)
        plugin.complete([Artifact("demo", view=view, metadata={"paths": [str(server.data_dir)]})])
    finally:
        writer.stop()
        plugin.release()
    assert plugin.describe()["completed_snapshots"] == ["demo"]
    complete, torn = restored(view, server.data_dir), restored(incomplete, server.data_dir)
    shutil.copy2(complete / "backup_label", torn / "backup_label")
    chown_to_postgres(torn / "backup_label")
    for data in (complete, torn):
        (data / "postmaster.pid").unlink()

    # The plug-in's own check says so, in one line naming the application ...
    with pytest.raises(FreezeframeError) as e:
        plugin.verify_restored(incomplete)
    assert "\n" not in str(e.value) and str(e.value).startswith("postgresql 'bank': ")
    assert "did not start: FATAL: WAL ends before end of online backup" in str(e.value)
    kept_log = Path(str(e.value).rsplit("(server log: ", 1)[1].rstrip(")"))
    assert "WAL ends before end of online backup" in kept_log.read_text()
    shutil.rmtree(kept_log.parent)
    # ... and so does a server started on it by hand.
    started, log = postgres.try_start_on(torn)
    assert not started
    assert "WAL ends before end of online backup" in log, log

    plugin.verify_restored(view)
    copy = postgres.start_on(complete)
    assert bank_state(copy).problems(before) == []


def test_a_symlinked_pg_wal_is_completed_in_its_image_and_restored_beside_the_original(
    postgres: PostgresFactory,
    tmp_path: Path,
    write_profile: Callable[[str], Path],
    registry: Registry,
) -> None:
    """pg_wal elsewhere (initdb --waldir): the snapshot holds that folder too, the WAL
    through the stop LSN goes into its image — never through the symlink into the live
    folder — and the restored copy's pg_wal points at the restored folder."""
    home = postgres.folder()
    wal = home / "wal"
    server = postgres.new(initdb_args=["--waldir", str(wal)])
    create_bank(server)
    snapshot = f'[[backup]]\nbackend = "clone"\nname = "snap"\ndir = "{tmp_path / "snaps"}"'
    path = write_profile(profile_text(server, snapshot, tmp_path / "archives"))
    engine = Engine(load_profile(path, registry), registry)
    assert engine.data_paths() == (server.data_dir, wal)
    live = {p.name: p.stat().st_ino for p in wal.iterdir() if p.is_file()}
    run, before = one_backup_under_load(engine, server)
    facts = run.applications[0].facts
    assert facts["wal_segments"] >= 1
    # Our copies replaced files in the image only: the live segments are the same inodes.
    still = {p.name: p.stat().st_ino for p in wal.iterdir() if p.is_file()}
    assert {n: i for n, i in still.items() if n in live} == {
        n: i for n, i in live.items() if n in still
    }
    target = postgres.folder("ffpg-restore-", owner="root") / "r"
    engine.restore(run.run_id, target, verify=True)
    data = restored(target, server.data_dir)
    assert os.readlink(data / "pg_wal") == str(restored(target, wal))
    copy = postgres.start_on(data)
    assert bank_state(copy).problems(before) == []
