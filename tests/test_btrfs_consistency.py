"""Two SQLite databases on a btrfs subvolume, one writer, many btrfs-then-archive backups.

The writer commits +1 to database A and then +1 to database B, over and
over, so at every instant ``A - B`` is 0 or 1. Each backup is a read-only
btrfs snapshot, archived, then released; each archive is restored and must
hold a pair from one instant, with nothing committed before the backup lost.
"""

from __future__ import annotations

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

RUNS = 20


def subvolume_paths(btrfs: str, fs: LoopFs) -> set[str]:
    """Every subvolume of the filesystem, by its path from the top level."""
    out = run_tool([btrfs, "subvolume", "list", str(fs.mountpoint)], timeout=60).stdout
    return {line.split(" path ", 1)[1] for line in out.splitlines() if " path " in line}


@pytest.mark.parametrize("thaw", ["after-snapshot", "after-backup"])
def test_every_restored_pair_is_consistent_and_complete(
    tmp_path: Path,
    loop_fs: Callable[..., LoopFs],
    write_profile: Callable[[str], Path],
    registry: Registry,
    thaw: str,
) -> None:
    btrfs = require_tool("btrfs")
    fs = loop_fs("btrfs")
    shop = fs.mountpoint / "shop"
    run_tool([btrfs, "subvolume", "create", str(shop)], timeout=60)
    (shop / "data").mkdir()
    a, b = make_counter_db(shop / "data" / "a.db"), make_counter_db(shop / "data" / "b.db")
    snaps = fs.mountpoint / "snaps"
    profile_path = write_profile(f"""
        [profile]
        name = "pair"
        freeze_timeout = "10s"
        thaw = "{thaw}"

        [[application]]
        plugin = "sqlite"
        name = "a"
        path = "{a}"

        [[application]]
        plugin = "sqlite"
        name = "b"
        path = "{b}"

        [[backup]]
        backend = "btrfs"
        name = "snap"
        dir = "{snaps}"

        [[backup]]
        backend = "archive"
        name = "archive"
        dir = "{tmp_path / "archives"}"
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

    for i, (run, before) in enumerate(runs):
        snap = run.stage("snap")
        assert snap is not None and snap.artifact is not None
        assert snap.artifact.metadata["snapshots"] == {"shop": str(shop)}
        target = tmp_path / f"restore-{i}"
        _, stage, _ = engine.restore(run.run_id, target, verify=True)
        assert stage == "archive"
        ra, rb = restored(target, a), restored(target, b)
        assert integrity(ra) == ["ok"] and integrity(rb) == ["ok"]
        na, nb = read_counter(ra), read_counter(rb)
        assert na - nb in (0, 1), f"run {run.run_id}: A={na} B={nb} were not captured together"
        assert nb >= before, f"run {run.run_id}: lost commits (B={nb} < {before})"
    # Every snapshot was released once archived: no run folder, no subvolume left behind.
    assert not any(snaps.iterdir())
    assert subvolume_paths(btrfs, fs) == {"shop"}
    assert len(list((tmp_path / "archives").glob("pair-*.tar.zst"))) == RUNS
