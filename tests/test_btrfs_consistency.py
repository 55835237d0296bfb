"""Two SQLite databases on a btrfs subvolume, one writer, many btrfs-then-archive backups.

The writer commits +1 to database A and then +1 to database B, over and
over, so at every instant ``A - B`` is 0 or 1. Each backup is a read-only
btrfs snapshot, archived, then released; each archive is restored and must
hold a pair from one instant, with nothing committed before the backup lost,
taken while the writer was held off
(:func:`freezeframe_testing.plugin.pair_problems`).

The negative control backs up through a plug-in that releases SQLite's lock
before the snapshot (freezeframe_testing.mutants): the same checks must
reject one of its first few backups.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import freezeframe_testing.mutants as mutants
from freezeframe.engine import Engine
from freezeframe.profile import load_profile
from freezeframe.registry import Registry
from freezeframe.tools import run_tool
from freezeframe_testing.plugin import (
    LoopFs,
    PairWriter,
    back_up_pairs,
    make_counter_db,
    require_tool,
)

RUNS = 20
#: Backups through the mutant before the checks must have rejected one.
MUTANT_TRIES = 10


def subvolume_paths(btrfs: str, fs: LoopFs) -> set[str]:
    """Every subvolume of the filesystem, by its path from the top level."""
    out = run_tool([btrfs, "subvolume", "list", str(fs.mountpoint)], timeout=60).stdout
    return {line.split(" path ", 1)[1] for line in out.splitlines() if " path " in line}


def pair_on_btrfs(
    loop_fs: Callable[..., LoopFs], btrfs: str
) -> tuple[LoopFs, Path, tuple[Path, Path]]:
    """A btrfs filesystem with a subvolume ``shop`` holding the two databases."""
    fs = loop_fs("btrfs")
    shop = fs.mountpoint / "shop"
    run_tool([btrfs, "subvolume", "create", str(shop)], timeout=60)
    (shop / "data").mkdir()
    dbs = make_counter_db(shop / "data" / "a.db"), make_counter_db(shop / "data" / "b.db")
    return fs, shop, dbs


def profile_text(tmp_path: Path, fs: LoopFs, dbs: tuple[Path, Path], thaw: str, plugin: str) -> str:
    return f"""
        [profile]
        name = "pair"
        freeze_timeout = "10s"
        thaw = "{thaw}"

        [[application]]
        plugin = "{plugin}"
        name = "a"
        path = "{dbs[0]}"

        [[application]]
        plugin = "{plugin}"
        name = "b"
        path = "{dbs[1]}"

        [[backup]]
        backend = "btrfs"
        name = "snap"
        dir = "{fs.mountpoint / "snaps"}"

        [[backup]]
        backend = "archive"
        name = "archive"
        dir = "{tmp_path / "archives"}"
    """


@pytest.mark.parametrize("thaw", ["after-snapshot", "after-backup"])
def test_every_restored_pair_is_consistent_and_complete(
    tmp_path: Path,
    loop_fs: Callable[..., LoopFs],
    write_profile: Callable[[str], Path],
    registry: Registry,
    thaw: str,
) -> None:
    btrfs = require_tool("btrfs")
    fs, shop, dbs = pair_on_btrfs(loop_fs, btrfs)
    snaps = fs.mountpoint / "snaps"
    profile_path = write_profile(profile_text(tmp_path, fs, dbs, thaw, "sqlite"))
    engine = Engine(load_profile(profile_path, registry), registry)
    with PairWriter(*dbs) as writer:
        checked = back_up_pairs(engine, writer, dbs, tmp_path, RUNS)
    assert writer.error is None
    assert writer.committed > RUNS, "the writer must have kept committing during the backups"

    assert [(c.run.run_id, c.problems) for c in checked if c.problems] == []
    assert len(checked) == RUNS
    for c in checked:
        snap = c.run.stage("snap")
        assert snap is not None and snap.artifact is not None
        assert snap.artifact.metadata["snapshots"] == {"shop": str(shop)}
        assert c.restored_from == "archive"
    # Every snapshot was released once archived: no run folder, no subvolume left behind.
    assert not any(snaps.iterdir())
    assert subvolume_paths(btrfs, fs) == {"shop"}
    assert len(list((tmp_path / "archives").glob("pair-*.tar.zst"))) == RUNS


@pytest.mark.parametrize("thaw", ["after-snapshot", "after-backup"])
def test_a_lock_released_before_the_snapshot_is_caught(
    tmp_path: Path,
    loop_fs: Callable[..., LoopFs],
    write_profile: Callable[[str], Path],
    registry_with: Callable[..., Registry],
    thaw: str,
) -> None:
    btrfs = require_tool("btrfs")
    fs, _, dbs = pair_on_btrfs(loop_fs, btrfs)
    registry = registry_with(mutants)
    profile_path = write_profile(profile_text(tmp_path, fs, dbs, thaw, "sqlite-released-early"))
    engine = Engine(load_profile(profile_path, registry), registry)
    with PairWriter(*dbs) as writer:
        checked = back_up_pairs(engine, writer, dbs, tmp_path, MUTANT_TRIES)
    assert checked[-1].problems, f"{len(checked)} skewed backups all passed the checks"
