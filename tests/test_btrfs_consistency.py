"""Two SQLite databases on a btrfs subvolume, one writer, many btrfs-then-archive backups.

The writer commits +1 to database A and then +1 to database B, over and
over, so at every instant ``A - B`` is 0 or 1. Each backup is a read-only
btrfs snapshot (or, with ``capture = "logical"``, a writable one that the
databases' copies complete and the seal makes read-only), archived, then
released; each archive is restored and must hold a pair from one instant,
with nothing committed before the backup lost, taken while the writer was
held off (:func:`freezeframe_testing.plugin.pair_problems`).

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
LOGICAL_RUNS = 8
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


def profile_text(
    tmp_path: Path,
    fs: LoopFs,
    dbs: tuple[Path, Path],
    thaw: str,
    plugin: str,
    capture: str = "snapshot",
    keep: str = "",
) -> str:
    return f"""
        [profile]
        name = "pair"
        freeze_timeout = "10s"
        thaw = "{thaw}"

        [[application]]
        plugin = "{plugin}"
        name = "a"
        path = "{dbs[0]}"
        capture = "{capture}"

        [[application]]
        plugin = "{plugin}"
        name = "b"
        path = "{dbs[1]}"
        capture = "{capture}"

        [[backup]]
        backend = "btrfs"
        name = "snap"
        dir = "{fs.mountpoint / "snaps"}"
        {keep}

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


@pytest.mark.parametrize("kept", [True, False], ids=["kept", "released"])
def test_logical_captures_are_completed_into_writable_snapshots_then_sealed(
    tmp_path: Path,
    loop_fs: Callable[..., LoopFs],
    write_profile: Callable[[str], Path],
    registry: Registry,
    kept: bool,
) -> None:
    """capture = "logical": each database's read snapshot is fixed under the group's write
    block, the btrfs snapshot is taken writable, the backup API copies each database into
    it after the thaw, and the seal makes it read-only (a kept snapshot: verified, every
    byte as sealed; a released one is deleted once archived)."""
    btrfs = require_tool("btrfs")
    fs, shop, dbs = pair_on_btrfs(loop_fs, btrfs)
    snaps = fs.mountpoint / "snaps"
    keep = "keep = { last = 100 }" if kept else ""
    text = profile_text(tmp_path, fs, dbs, "after-snapshot", "sqlite", "logical", keep)
    profile = load_profile(write_profile(text), registry)
    engine = Engine(profile, registry)
    with PairWriter(*dbs) as writer:
        checked = back_up_pairs(engine, writer, dbs, tmp_path, LOGICAL_RUNS)
    assert writer.error is None

    assert [(c.run.run_id, c.problems) for c in checked if c.problems] == []
    assert len(checked) == LOGICAL_RUNS
    for c in checked:
        assert c.restored_from == "archive"
        snap = c.run.stage("snap")
        assert snap is not None and snap.artifact is not None
        meta = snap.artifact.metadata
        assert meta["completed"] == {"a": [str(dbs[0])], "b": [str(dbs[1])]}
        assert meta["snapshots"] == {"shop": str(shop)}
        for app in c.run.applications:
            assert app.capture == "logical"
            assert app.thaw_end is not None and app.complete_start is not None
            assert app.complete_start >= app.thaw_end  # writers ran on during the copy
        if kept:
            assert "writable" not in meta
            assert profile.stages[0].component.verify(snap.artifact) is None
            image = snaps / c.run.run_id / "shop"
            ro = run_tool([btrfs, "property", "get", "-ts", str(image), "ro"], timeout=60)
            assert ro.stdout.strip() == "ro=true"
            # the completed copies, whole, with no journal of the live databases beside them
            assert sorted(p.name for p in (image / "data").iterdir()) == ["a.db", "b.db"]
    if not kept:
        assert not any(snaps.iterdir())
        assert subvolume_paths(btrfs, fs) == {"shop"}


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
