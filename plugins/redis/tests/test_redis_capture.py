"""``capture = "logical"``: only the fork of a BGSAVE inside the window, its dump after it.

Each server here writes its dump slowly (``rdb-key-save-delay``), so the
dump of a capture ends well after the fork: the run's own record then shows
whether the dump was inside the window. The consistency of logical captures
under a live writer is proven in test_redis_consistency.py.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from freezeframe import RunStatus
from freezeframe.engine import Engine
from freezeframe.profile import load_profile
from freezeframe.registry import Registry
from freezeframe_testing.plugin import run_cli
from freezeframe_testing.redis_server import RedisServer, redis_clone_profile, start_redis

KEYS = 200
#: µs per key: the dump of KEYS keys takes about a second.
DELAY_US = 5000


@pytest.fixture
def slow(redis_server: Callable[..., RedisServer]) -> RedisServer:
    """A server holding KEYS keys that takes about a second to dump them; it saves by
    itself only once an hour, so every dump here is a backup's."""
    server = redis_server(config=[f"rdb-key-save-delay {DELAY_US}", "save 3600 1"])
    c = server.client()
    c.mset({f"k{i}": str(i) for i in range(KEYS)})
    return server


def profile_for(tmp_path: Path, server: RedisServer, capture: str) -> Path:
    return redis_clone_profile(tmp_path, server, fields=f'capture = "{capture}"')


def no_child(server: RedisServer) -> bool:
    return not server.client().info("persistence")["rdb_bgsave_in_progress"]


def wait_no_child(server: RedisServer) -> None:
    deadline = time.monotonic() + 30
    while not no_child(server):
        assert time.monotonic() < deadline, "the save never ended"
        time.sleep(0.05)


@pytest.mark.parametrize("capture", ["logical", "snapshot"])
def test_the_window_ends_before_the_dump_only_in_the_logical_capture(
    tmp_path: Path, slow: RedisServer, registry: Registry, capture: str
) -> None:
    engine = Engine(load_profile(profile_for(tmp_path, slow, capture), registry), registry)
    record = engine.backup().record
    assert record.status == RunStatus.SUCCEEDED, record.error
    [app] = record.applications
    assert app.capture == capture
    assert app.thaw_end is not None
    dumped = (slow.data_dir / "dump.rdb").stat().st_mtime  # the backup's BGSAVE wrote it
    if capture == "logical":
        # the fork was inside the window, the dump after it, the completion waited for it
        assert app.thaw_end < dumped, "the dump was written inside the freeze window"
        assert app.complete_end is not None and dumped <= app.complete_end
    else:
        assert dumped < app.thaw_end
    engine.restore(record.run_id, tmp_path / "back", verify=True)
    loaded = start_redis(tmp_path / "back" / slow.data_dir.relative_to("/"))
    try:
        assert loaded.client().dbsize() == KEYS
    finally:
        loaded.stop()


def children(server: RedisServer) -> list[int]:
    pid = server.proc.pid
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(c) for c in text.split()]


@contextmanager
def kill_the_first_fork(server: RedisServer) -> Iterator[list[int]]:
    """SIGKILL the first child the server forks (the BGSAVE of the capture), as the
    kernel's OOM killer might; yields the list of the pids killed."""
    killed: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set() and not killed:
            for child in children(server):
                os.kill(child, signal.SIGKILL)
                killed.append(child)
                break
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        yield killed
    finally:
        stop.set()
        watcher.join(10)


def test_a_dump_that_fails_after_the_thaw_fails_the_run_and_leaves_nothing(
    tmp_path: Path, slow: RedisServer, registry: Registry
) -> None:
    # else Redis refuses writes after any failed save (MISCONF) until one succeeds: its
    # own policy, as after a failed save of the snapshot capture; here writable = unpaused
    slow.client().config_set("stop-writes-on-bgsave-error", "no")
    engine = Engine(load_profile(profile_for(tmp_path, slow, "logical"), registry), registry)
    before = sorted(p.name for p in slow.data_dir.iterdir())
    with kill_the_first_fork(slow) as killed:
        record = engine.backup().record
    assert killed, "the capture forked no child"
    assert record.status == RunStatus.FAILED
    assert "completion failed" in (record.error or "") and "BGSAVE failed" in (record.error or "")
    [app] = record.applications
    assert app.thaw_end is not None and app.complete_start is not None
    assert app.thaw_end <= app.complete_start  # the fork was killed after the thaw
    assert slow.writable_within(1)
    wait_no_child(slow)
    assert sorted(p.name for p in slow.data_dir.iterdir()) == before  # no temp-*.rdb
    assert not any((tmp_path / "snaps").iterdir())


def test_sigterm_while_the_dump_is_written_ends_the_run_without_waiting_for_it(
    tmp_path: Path, slow: RedisServer, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow.client().mset({f"more{i}": "x" for i in range(KEYS * 4)})  # a dump of 5 s
    monkeypatch.setenv("FREEZEFRAME_FAULT", "sigterm@complete.before.cache")
    engine = Engine(load_profile(profile_for(tmp_path, slow, "logical"), registry), registry)
    began = time.monotonic()
    result = engine.backup()
    took = time.monotonic() - began
    assert result.interrupted_by == signal.SIGTERM
    assert result.record.status == RunStatus.FAILED
    assert not no_child(slow), f"the run took {took:.1f}s: it waited for the whole dump"
    assert not any((tmp_path / "snaps").iterdir())
    wait_no_child(slow)  # Redis's own save ends as any BGSAVE does


def test_sigkill_between_the_capture_and_its_completion(tmp_path: Path, slow: RedisServer) -> None:
    profile = profile_for(tmp_path, slow, "logical")
    r = run_cli("backup", profile, env={"FREEZEFRAME_FAULT": "sigkill@complete.before.cache"})
    assert r.returncode == -9, r.stderr
    assert slow.writable_within(1)  # unpaused at the thaw, before the completion
    wait_no_child(slow)
    # the fork wrote Redis's own dump and nothing else: nothing of the backup is left there
    assert sorted(p.name for p in slow.data_dir.iterdir()) == ["dump.rdb"]
    listed = run_cli("list", profile, "--json")  # the next command reconciles the run
    assert listed.returncode == 0, listed.stderr
    assert [run["status"] for run in listed.json()] == ["failed"]
    assert not any((tmp_path / "snaps").iterdir())
