"""End to end: PostgreSQL and two SQLite databases under load → a snapshot → restic and borg.

One writer commits +1 to database A and then +1 to database B, over and over,
so at every instant ``A - B`` is 0 or 1; another commits bank transfers to a
PostgreSQL server whose data directory sits beside them (the total never
changes, the ledger has no gap). Each run takes a btrfs snapshot
(a clone snapshot where btrfs cannot be had), copies it with restic into a
repository behind a real sshd and with borg into a local repository, keeps
the two newest restic snapshots, and releases the snapshot. Every backup
left is restored from each tool and must hold a pair from one instant and a
bank a server started on the restored copy finds balanced, with nothing
committed before the backup began lost.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from freezeframe import RunStatus
from freezeframe.engine import Engine
from freezeframe.profile import load_profile
from freezeframe.registry import Registry
from freezeframe.tools import run_tool
from freezeframe_testing.plugin import (
    LoopFs,
    PairWriter,
    integrity,
    make_counter_db,
    read_counter,
    require_tool,
    restored,
)
from freezeframe_testing.postgres_server import (
    BankWriter,
    PostgresFactory,
    bank_state,
    create_bank,
)
from freezeframe_testing.repositories import BORG_PASSPHRASE_ENV, RESTIC_PASSWORD_ENV
from freezeframe_testing.sshd import Sshd

RUNS = 3


def btrfs_available(registry: Registry) -> bool:
    """Whether this machine can take btrfs snapshots (the backend, the tool, root)."""
    try:
        registry.backend("btrfs")
    except Exception:
        return False
    return os.geteuid() == 0 and shutil.which("btrfs") is not None


STAGES = ("offsite", "vault")


def test_postgres_and_sqlite_through_a_snapshot_into_restic_over_sftp_and_borg(
    tmp_path: Path,
    postgres: PostgresFactory,
    loop_fs: Callable[..., LoopFs],
    write_profile: Callable[[str], Path],
    registry: Registry,
    sshd: Sshd,
    restic_env: None,
    borg_env: None,
) -> None:
    if btrfs_available(registry):
        snapshot = "btrfs"
        fs = loop_fs("btrfs")
        mnt = postgres.mount_again(fs.device)  # loop_fs mounts below a folder postgres cannot enter
        shop = mnt / "shop"
        run_tool([require_tool("btrfs"), "subvolume", "create", str(shop)], timeout=60)
        snaps = mnt / "snaps"
    else:  # a clone snapshot, file by file: SQLite is consistent on it, PostgreSQL in backup mode
        snapshot = "clone"
        shop = postgres.folder("ffpg-shop-", owner="root")
        snaps = tmp_path / "snaps"
    (shop / "data").mkdir()
    a, b = make_counter_db(shop / "data" / "a.db"), make_counter_db(shop / "data" / "b.db")
    server = postgres.new(data_dir=shop / "pg")  # the same subvolume: one instant
    create_bank(server)
    restic_repo = tmp_path / "sftp-server" / "restic"
    borg_repo = tmp_path / "borg"
    profile_path = write_profile(f"""
        [profile]
        name = "pair"
        freeze_timeout = "10s"

        [[application]]
        plugin = "sqlite"
        name = "a"
        path = "{a}"

        [[application]]
        plugin = "sqlite"
        name = "b"
        path = "{b}"

        [[application]]
        plugin = "postgresql"
        name = "bank"
        dsn = "{server.dsn()}"
        data_dir = "{server.data_dir}"

        [[backup]]
        backend = "{snapshot}"
        name = "snap"
        dir = "{snaps}"

        [[backup]]
        backend = "restic"
        name = "offsite"
        source = "snap"
        repository = "{sshd.sftp_url(restic_repo)}"
        ssh_command = {json.dumps(sshd.ssh_command)}
        password_env = "{RESTIC_PASSWORD_ENV}"
        init = true
        keep = {{ last = 2 }}

        [[backup]]
        backend = "borg"
        name = "vault"
        source = "snap"
        repository = "{borg_repo}"
        password_env = "{BORG_PASSPHRASE_ENV}"
        init = true
    """)
    engine = Engine(load_profile(profile_path, registry), registry)
    writer, bank = PairWriter(a, b), BankWriter(server)
    writer.start()
    bank.start()
    runs = []
    try:
        for _ in range(RUNS):
            # Both counters are at least this before the quiesce; so is the bank's ledger.
            before = writer.committed, bank.committed
            run = engine.backup().record
            assert run.status == RunStatus.SUCCEEDED, run.error
            runs.append((run, before))
    finally:
        writer.stop.set()
        writer.join(30)
        bank.stop()
    assert writer.error is None
    assert writer.committed > RUNS, "the writer must have kept committing during the backups"
    assert bank.committed > RUNS, "the bank writer must have kept committing during the backups"

    layouts = {run.stage(s).artifact.metadata["layout"] for run, _ in runs for s in STAGES}
    assert layouts == {"original"}  # mounted over the live paths in the tools' own namespace
    assert not any(snaps.iterdir())  # every snapshot was released once copied
    first = runs[0][0]
    with engine.catalog() as catalog:
        kept = {
            (r.run_id, s.name): s.deleted_at is None
            for run, _ in runs
            if (r := catalog.get(run.run_id)) is not None
            for s in r.stages
        }
    assert kept == {
        **{(run.run_id, "snap"): False for run, _ in runs},  # released once copied
        **{(run.run_id, "offsite"): run is not first for run, _ in runs},  # keep = { last = 2 }
        **{(run.run_id, "vault"): True for run, _ in runs},  # no keep: every archive kept
    }
    _, checked, problems, _ = engine.verify("latest")
    assert problems == [] and {s.name for s in checked} == {"offsite", "vault"}

    for run, (before, bank_before) in runs:
        stages = ["vault"] if run.run_id == first.run_id else ["offsite", "vault"]
        for stage in stages:
            # Where the postgres user can reach the restored data directory.
            target = postgres.folder("ffpg-restore-", owner="root") / "r"
            # verify: each plug-in checks its restored data (PostgreSQL starts a server)
            engine.restore(run.run_id, target, stage=stage, verify=True)
            data = restored(target, server.data_dir)
            ra, rb = restored(target, a), restored(target, b)
            assert integrity(ra) == ["ok"] and integrity(rb) == ["ok"]
            na, nb = read_counter(ra), read_counter(rb)
            assert na - nb in (0, 1), f"{stage} of {run.run_id}: A={na} B={nb} not one instant"
            assert nb >= before, f"{stage} of {run.run_id}: lost commits (B={nb} < {before})"
            assert not (data / "postmaster.pid").exists()
            copy = postgres.start_on(data)  # beside the original, which is still running
            try:
                problems = bank_state(copy).problems(bank_before)
            finally:
                copy.stop("immediate")
            assert problems == [], f"{stage} of {run.run_id}: {problems}\n{copy.log_tail()}"
            shutil.rmtree(target.parent)
    assert bank_state(server).problems(0) == []  # the original went on untouched
