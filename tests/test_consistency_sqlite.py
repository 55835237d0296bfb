"""Two SQLite databases, one writer, many backups: every restored pair is one instant.

The writer commits +1 to database A and then +1 to database B, over and over,
so at every instant ``A - B`` is 0 or 1. A backup that caught A and B at
different moments shows another difference; one that lost committed work
shows a counter below what was committed before the backup began.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from freezeframe import RunStatus
from freezeframe.engine import Engine
from freezeframe.profile import load_profile
from freezeframe.registry import Registry
from freezeframe_testing.plugin import PairWriter, integrity, read_counter, restored

RUNS = 25


@pytest.mark.parametrize("thaw", ["after-snapshot", "after-backup"])
def test_every_restored_pair_is_consistent_and_complete(
    tmp_path: Path, two_dbs: tuple[Path, Path], write_profile, registry: Registry, thaw: str
) -> None:
    a, b = two_dbs
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
        backend = "clone"
        name = "snap"
        dir = "{tmp_path / "snaps"}"

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
        target = tmp_path / f"restore-{i}"
        engine.restore(run.run_id, target, verify=True)
        ra, rb = restored(target, a), restored(target, b)
        assert integrity(ra) == ["ok"] and integrity(rb) == ["ok"]
        na, nb = read_counter(ra), read_counter(rb)
        assert na - nb in (0, 1), f"run {run.run_id}: A={na} B={nb} were not captured together"
        assert nb >= before, f"run {run.run_id}: lost commits (B={nb} < {before})"
        for app in run.applications:
            assert app.frozen_ms is not None and app.frozen_ms >= 0
            assert app.facts["journal_mode"] == "wal"
    # The snapshot stage was released after each run (the archive copied it).
    assert not any((tmp_path / "snaps").iterdir())
    assert len(list((tmp_path / "archives").glob("pair-*.tar.zst"))) == RUNS
