"""Two SQLite databases, one writer, many backups: every restored pair is one instant.

The writer commits +1 to database A and then +1 to database B, over and over,
so at every instant ``A - B`` is 0 or 1. A backup that caught A and B at
different moments shows another difference; one that lost committed work
shows a counter below what was committed before the backup began; one taken
while the writer was not held off shows the writer's next commit taking the
lock before the thaw (:func:`freezeframe_testing.plugin.pair_problems`).

The negative control backs up through a plug-in that releases SQLite's lock
before the snapshot (freezeframe_testing.mutants): the same checks must
reject one of its first few backups, or they could not catch the skew they
exist for.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import freezeframe_testing.mutants as mutants
from freezeframe.engine import Engine
from freezeframe.profile import load_profile
from freezeframe.registry import Registry
from freezeframe_testing.plugin import PairWriter, back_up_pairs

RUNS = 25
LOGICAL_RUNS = 10
#: Backups through the mutant before the checks must have rejected one.
MUTANT_TRIES = 10


def profile_text(
    tmp_path: Path, dbs: tuple[Path, Path], thaw: str, plugin: str, capture: str = "snapshot"
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
        backend = "clone"
        name = "snap"
        dir = "{tmp_path / "snaps"}"

        [[backup]]
        backend = "archive"
        name = "archive"
        dir = "{tmp_path / "archives"}"
    """


@pytest.mark.parametrize("thaw", ["after-snapshot", "after-backup"])
def test_every_restored_pair_is_consistent_and_complete(
    tmp_path: Path, two_dbs: tuple[Path, Path], write_profile, registry: Registry, thaw: str
) -> None:
    profile_path = write_profile(profile_text(tmp_path, two_dbs, thaw, "sqlite"))
    engine = Engine(load_profile(profile_path, registry), registry)
    with PairWriter(*two_dbs) as writer:
        checked = back_up_pairs(engine, writer, two_dbs, tmp_path, RUNS)
    assert writer.error is None
    assert writer.committed > RUNS, "the writer must have kept committing during the backups"

    assert [(c.run.run_id, c.problems) for c in checked if c.problems] == []
    assert len(checked) == RUNS
    for c in checked:
        for app in c.run.applications:
            assert app.frozen_ms is not None and app.frozen_ms >= 0
            assert app.facts["journal_mode"] == "wal"
    # The snapshot stage was released after each run (the archive copied it).
    assert not any((tmp_path / "snaps").iterdir())
    assert len(list((tmp_path / "archives").glob("pair-*.tar.zst"))) == RUNS


def test_logical_captures_are_one_instant_copied_after_the_thaw(
    tmp_path: Path, two_dbs: tuple[Path, Path], write_profile, registry: Registry
) -> None:
    """capture = "logical": each database's read snapshot is fixed under the group's
    write block, and the backup API copies it into the clone's view after the thaw."""
    text = profile_text(tmp_path, two_dbs, "after-snapshot", "sqlite", capture="logical")
    engine = Engine(load_profile(write_profile(text), registry), registry)
    with PairWriter(*two_dbs) as writer:
        checked = back_up_pairs(engine, writer, two_dbs, tmp_path, LOGICAL_RUNS)
    assert writer.error is None

    assert [(c.run.run_id, c.problems) for c in checked if c.problems] == []
    assert len(checked) == LOGICAL_RUNS
    for c in checked:
        assert c.restored_from == "archive"  # the copy stage read the completed view
        snap = c.run.stage("snap")
        assert snap is not None and snap.artifact is not None
        meta = snap.artifact.metadata
        # nothing was copied inside the window: the databases reached the view later
        assert meta["cloned_files"] == meta["copied_files"] == 0
        assert meta["completed"] == {"a": [str(two_dbs[0])], "b": [str(two_dbs[1])]}
        for app in c.run.applications:
            assert app.capture == "logical"
            assert app.thaw_end is not None and app.complete_start is not None
            assert app.complete_start >= app.thaw_end  # writers ran on during the copy
    assert not any((tmp_path / "snaps").iterdir())


@pytest.mark.parametrize("thaw", ["after-snapshot", "after-backup"])
def test_a_lock_released_before_the_snapshot_is_caught(
    tmp_path: Path,
    two_dbs: tuple[Path, Path],
    write_profile,
    registry_with: Callable[..., Registry],
    thaw: str,
) -> None:
    registry = registry_with(mutants)
    profile_path = write_profile(profile_text(tmp_path, two_dbs, thaw, "sqlite-released-early"))
    engine = Engine(load_profile(profile_path, registry), registry)
    with PairWriter(*two_dbs) as writer:
        checked = back_up_pairs(engine, writer, two_dbs, tmp_path, MUTANT_TRIES)
    assert checked[-1].problems, f"{len(checked)} skewed backups all passed the checks"
