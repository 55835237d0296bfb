"""End to end: two SQLite databases and a writer → a snapshot → restic over sftp and borg.

The writer commits +1 to database A and then +1 to database B, over and over,
so at every instant ``A - B`` is 0 or 1. Each run takes a btrfs snapshot
(a clone snapshot where btrfs cannot be had), copies it with restic into a
repository behind a real sshd and with borg into a local repository, keeps
the two newest restic snapshots, and releases the snapshot. Every backup
left is restored from each tool and must hold a pair from one instant, with
nothing committed before the backup began lost.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

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
from freezeframe_testing.sshd import Sshd

RUNS = 3
PASSWORD = "e2e throwaway passphrase"  # noqa: S105 - a test's throwaway


def btrfs_available(registry: Registry) -> bool:
    """Whether this machine can take btrfs snapshots (the backend, the tool, root)."""
    try:
        registry.backend("btrfs")
    except Exception:
        return False
    return os.geteuid() == 0 and shutil.which("btrfs") is not None


def test_sqlite_pair_through_a_snapshot_into_restic_over_sftp_and_borg(
    tmp_path: Path,
    loop_fs: Callable[..., LoopFs],
    write_profile: Callable[[str], Path],
    registry: Registry,
    sshd: Sshd,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_tool("restic")
    require_tool("borg")
    monkeypatch.setenv("FF_E2E_PASSWORD", PASSWORD)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("BORG_BASE_DIR", str(tmp_path / "borg-home"))
    if btrfs_available(registry):
        snapshot = "btrfs"
        fs = loop_fs("btrfs")
        shop = fs.mountpoint / "shop"
        run_tool([require_tool("btrfs"), "subvolume", "create", str(shop)], timeout=60)
        snaps = fs.mountpoint / "snaps"
    else:  # a clone snapshot, file by file: SQLite is consistent on it too
        snapshot = "clone"
        shop = tmp_path / "shop"
        shop.mkdir()
        snaps = tmp_path / "snaps"
    (shop / "data").mkdir()
    a, b = make_counter_db(shop / "data" / "a.db"), make_counter_db(shop / "data" / "b.db")
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
        password_env = "FF_E2E_PASSWORD"
        init = true
        keep = {{ last = 2 }}

        [[backup]]
        backend = "borg"
        name = "vault"
        source = "snap"
        repository = "{borg_repo}"
        password_env = "FF_E2E_PASSWORD"
        init = true
    """)
    engine = Engine(load_profile(profile_path, registry), registry)
    writer = PairWriter(a, b)
    writer.start()
    runs = []
    try:
        for _ in range(RUNS):
            before = writer.committed  # both counters are at least this before the quiesce
            run = engine.backup()
            assert run.status == RunStatus.SUCCEEDED, run.error
            runs.append((run, before))
    finally:
        writer.stop.set()
        writer.join(30)
    assert writer.error is None
    assert writer.committed > RUNS, "the writer must have kept committing during the backups"

    layouts = {run.stage("offsite").artifact.metadata["layout"] for run, _ in runs}
    assert layouts == {"namespace" if snapshot == "btrfs" else "view"}
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
    _, checked, problems = engine.verify("latest")
    assert problems == [] and {s.name for s in checked} == {"offsite", "vault"}

    for i, (run, before) in enumerate(runs):
        stages = ["vault"] if run.run_id == first.run_id else ["offsite", "vault"]
        for stage in stages:
            target = tmp_path / f"restore-{i}-{stage}"
            engine.restore(run.run_id, target, stage=stage, verify=True)
            ra, rb = restored(target, a), restored(target, b)
            assert integrity(ra) == ["ok"] and integrity(rb) == ["ok"]
            na, nb = read_counter(ra), read_counter(rb)
            assert na - nb in (0, 1), f"{stage} of {run.run_id}: A={na} B={nb} not one instant"
            assert nb >= before, f"{stage} of {run.run_id}: lost commits (B={nb} < {before})"
