"""A live writer, many backups through the engine, each restored and loaded: one instant each.

A separate process moves money between account keys in MULTI/EXEC
transactions (the total never changes) and counts them with INCR. While it
runs, freezeframe backs the server up again and again — a snapshot stage
(clone: per-file; btrfs: atomic, with the data on a subvolume of a loop
filesystem), then an archive copy of it — for an RDB and an AOF setup, in
each capture mode: ``snapshot`` (the files made complete inside the window)
and ``logical`` (only the fork of a BGSAVE inside the window, its dump put
into the view after the thaw). The
RDB server also saves by itself every second and the AOF server rewrites its
AOF by itself, so backups meet saves and rewrites already under way. Every
archive is restored, loaded by a fresh redis-server while the original still
runs, and must hold the full total and at least every transaction committed
before its backup began.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import freezeframe_testing.mutants as mutants
from freezeframe import RunRecord, RunStatus
from freezeframe.engine import Engine
from freezeframe.profile import load_profile
from freezeframe.registry import Registry
from freezeframe.tools import run_tool
from freezeframe_testing.plugin import LoopFs, require_tool
from freezeframe_testing.redis_server import (
    RedisServer,
    TransferWriter,
    ledger_problems,
    read_ledger,
    seed_ledger,
    start_redis,
)

RUNS = 20
#: Backups through the mutant before the checks must have rejected one.
MUTANT_TRIES = 5
PASSWORD = "consistency-Pa55"  # noqa: S105 (a test server's password)
CONFIG = {
    "rdb": ["save 1 1"],  # saves of its own, racing ours
    "aof": ["auto-aof-rewrite-min-size 64kb", "auto-aof-rewrite-percentage 50"],
}


@dataclass(frozen=True)
class Ledger:
    """A live Redis ledger and the profile that backs it up."""

    server: RedisServer
    total: int
    data_dir: Path
    snaps: Path
    engine: Engine


@pytest.fixture
def ledger(
    tmp_path: Path,
    redis_server: Callable[..., RedisServer],
    loop_fs: Callable[..., LoopFs],
    write_profile: Callable[[str], Path],
    registry_with: Callable[..., Registry],
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., Ledger]:
    """``ledger(plugin, backend, persistence, capture)``: a Redis server with that
    persistence, backed up through application plug-in ``plugin`` in capture mode
    ``capture`` and snapshot ``backend``."""

    def make(plugin: str, backend: str, persistence: str, capture: str) -> Ledger:
        if backend == "btrfs":
            btrfs = require_tool("btrfs")
            fs = loop_fs("btrfs", size_mb=256)
            run_tool([btrfs, "subvolume", "create", str(fs.mountpoint / "redis")], timeout=60)
            data_dir, snaps = fs.mountpoint / "redis" / "data", fs.mountpoint / "snaps"
        else:
            data_dir, snaps = tmp_path / "redis", tmp_path / "snaps"
        server = redis_server(
            data_dir=data_dir,
            persistence=persistence,
            password=PASSWORD,
            config=CONFIG[persistence],
        )
        total = seed_ledger(server.client())
        monkeypatch.setenv("FF_REDIS_PASSWORD", PASSWORD)
        path = write_profile(f"""
            [profile]
            name = "ledger"
            freeze_timeout = "10s"

            [[application]]
            plugin = "{plugin}"
            name = "ledger"
            url = "{server.url}"
            password_env = "FF_REDIS_PASSWORD"
            capture = "{capture}"

            [[backup]]
            backend = "{backend}"
            name = "snap"
            dir = "{snaps}"

            [[backup]]
            backend = "archive"
            name = "archive"
            dir = "{tmp_path / "archives"}"
        """)
        registry = registry_with(mutants)
        engine = Engine(load_profile(path, registry), registry)
        return Ledger(server, total, data_dir, snaps, engine)

    return make


def back_up(
    ledger: Ledger, writer: TransferWriter, restore_to: Path, runs: int
) -> list[tuple[RunRecord, int, list[str]]]:
    """Up to ``runs`` backups while ``writer`` commits, each restored into a fresh server
    and checked at once; (run, restored seq, problems); stops at the first rejected one."""
    checked = []
    for i in range(runs):
        before = writer.committed  # committed before it began
        run = ledger.engine.backup().record
        after = writer.committed
        assert run.status == RunStatus.SUCCEEDED, run.error
        target = restore_to / f"restore-{i}"
        ledger.engine.restore(run.run_id, target, verify=True)
        loaded = start_redis(
            target / ledger.data_dir.relative_to("/"), persistence=ledger.server.persistence
        )
        try:
            balance, seq = read_ledger(loaded.client())
        finally:
            loaded.stop()
        problems = ledger_problems(writer, run, (balance, seq), ledger.total, before, after)
        checked.append((run, seq, problems))
        if problems:
            break
    return checked


@pytest.mark.slow
@pytest.mark.parametrize("persistence", ["rdb", "aof"])
@pytest.mark.parametrize(
    ("backend", "capture"),
    [("clone", "snapshot"), ("btrfs", "snapshot"), ("clone", "logical"), ("btrfs", "logical")],
)
def test_every_restored_backup_is_one_instant_with_every_earlier_commit(
    ledger: Callable[..., Ledger], tmp_path: Path, backend: str, persistence: str, capture: str
) -> None:
    live = ledger("redis", backend, persistence, capture)
    with TransferWriter(live.server) as writer:
        first = writer.committed
        checked = back_up(live, writer, tmp_path, RUNS)
        assert not writer.died(), "the writer process died"
        final = writer.committed
    assert final > first + RUNS, "the writer must have kept committing during the backups"

    assert [(run.run_id, problems) for run, _, problems in checked if problems] == []
    assert len(checked) == RUNS
    for run, _, _ in checked:
        [app] = run.applications
        assert app.mode == "quiesced" and app.facts["persistence"] == persistence
        assert app.capture == capture
    seqs = [seq for _, seq, _ in checked]
    assert seqs == sorted(seqs) and len(set(seqs)) > RUNS // 2
    assert live.server.alive()
    assert list(live.snaps.iterdir()) == []  # each snapshot was released once archived


@pytest.mark.slow
@pytest.mark.parametrize("persistence", ["rdb", "aof"])
@pytest.mark.parametrize("backend", ["clone", "btrfs"])
def test_a_capture_after_the_pause_is_caught(
    ledger: Callable[..., Ledger], tmp_path: Path, backend: str, persistence: str
) -> None:
    live = ledger("redis-captured-late", backend, persistence, "snapshot")
    with TransferWriter(live.server) as writer:
        checked = back_up(live, writer, tmp_path, MUTANT_TRIES)
    assert checked[-1][2], f"{len(checked)} backups captured late all passed the checks"
