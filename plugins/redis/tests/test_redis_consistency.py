"""A live writer, many backups through the engine, each restored and loaded: one instant each.

A separate process moves money between account keys in MULTI/EXEC
transactions (the total never changes) and counts them with INCR. While it
runs, freezeframe backs the server up again and again — a snapshot stage
(clone: per-file; btrfs: atomic, with the data on a subvolume of a loop
filesystem), then an archive copy of it — for an RDB and an AOF setup. The
RDB server also saves by itself every second and the AOF server rewrites its
AOF by itself, so backups meet saves and rewrites already under way. Every
archive is restored, loaded by a fresh redis-server while the original still
runs, and must hold the full total and at least every transaction committed
before its backup began.
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
from freezeframe_testing.plugin import LoopFs, require_tool
from freezeframe_testing.redis_server import (
    RedisServer,
    TransferWriter,
    read_ledger,
    seed_ledger,
    start_redis,
)

RUNS = 20
PASSWORD = "consistency-Pa55"  # noqa: S105 (a test server's password)
CONFIG = {
    "rdb": ["save 1 1"],  # saves of its own, racing ours
    "aof": ["auto-aof-rewrite-min-size 64kb", "auto-aof-rewrite-percentage 50"],
}


@pytest.mark.slow
@pytest.mark.parametrize("persistence", ["rdb", "aof"])
@pytest.mark.parametrize("backend", ["clone", "btrfs"])
def test_every_restored_backup_is_one_instant_with_every_earlier_commit(
    tmp_path: Path,
    redis_server: Callable[..., RedisServer],
    loop_fs: Callable[..., LoopFs],
    write_profile: Callable[[str], Path],
    registry: Registry,
    monkeypatch: pytest.MonkeyPatch,
    backend: str,
    persistence: str,
) -> None:
    if backend == "btrfs":
        btrfs = require_tool("btrfs")
        fs = loop_fs("btrfs", size_mb=256)
        run_tool([btrfs, "subvolume", "create", str(fs.mountpoint / "redis")], timeout=60)
        data_dir, snaps = fs.mountpoint / "redis" / "data", fs.mountpoint / "snaps"
    else:
        data_dir, snaps = tmp_path / "redis", tmp_path / "snaps"
    server = redis_server(
        data_dir=data_dir, persistence=persistence, password=PASSWORD, config=CONFIG[persistence]
    )
    total = seed_ledger(server.client())
    monkeypatch.setenv("FF_REDIS_PASSWORD", PASSWORD)
    path = write_profile(f"""
        [profile]
        name = "ledger"
        freeze_timeout = "10s"

        [[application]]
        plugin = "redis"
        name = "ledger"
        url = "{server.url}"
        password_env = "FF_REDIS_PASSWORD"

        [[backup]]
        backend = "{backend}"
        name = "snap"
        dir = "{snaps}"

        [[backup]]
        backend = "archive"
        name = "archive"
        dir = "{tmp_path / "archives"}"
    """)
    engine = Engine(load_profile(path, registry), registry)
    runs = []
    with TransferWriter(server) as writer:
        for _ in range(RUNS):
            before = writer.committed  # committed before this backup began
            run = engine.backup()
            assert run.status == RunStatus.SUCCEEDED, run.error
            runs.append((run, before))
        assert not writer.died(), "the writer process died"
        final = writer.committed
    assert final > runs[0][1] + RUNS, "the writer must have kept committing during the backups"

    seqs = []
    for i, (run, before) in enumerate(runs):
        [app] = run.applications
        assert app.mode == "quiesced" and app.facts["persistence"] == persistence
        target = tmp_path / f"restore-{i}"
        engine.restore(run.run_id, target, verify=True)
        loaded = start_redis(target / data_dir.relative_to("/"), persistence=persistence)
        try:
            balance, seq = read_ledger(loaded.client())
        finally:
            loaded.stop()
        assert balance == total, f"run {run.run_id}: a transfer was cut in half ({balance})"
        assert before <= seq <= final, f"run {run.run_id}: seq {seq} not in [{before}, {final}]"
        seqs.append(seq)
    assert seqs == sorted(seqs) and len(set(seqs)) > RUNS // 2
    assert server.alive()
    assert list(snaps.iterdir()) == []  # each snapshot was released once archived
