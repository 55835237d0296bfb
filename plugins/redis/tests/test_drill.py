"""The redis plug-in's drill on a real backup, restored: Redis's own checkers, a private
server that loads the copy, and its key count per database against the capture's."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from freezeframe import RunStatus
from freezeframe.drilling import CheckFailed, CheckSkipped, DrillContext
from freezeframe.engine import Engine
from freezeframe.profile import load_profile
from freezeframe.registry import Registry
from freezeframe_redis import RedisPlugin
from freezeframe_redis._keys import compare_keyspace
from freezeframe_testing.redis_server import RedisServer, redis_clone_profile

#: Keys in database 0, and in database 3 (one of which has a time to live of an hour).
DB0, DB3 = 5, 2


@dataclass
class Restored:
    """A run of the test server backed up and restored under ``root``."""

    plugin: RedisPlugin
    facts: dict[str, Any]
    capture: str
    root: Path
    data: Path  # the restored data folder

    def context(self, work: Path, **facts: Any) -> DrillContext:
        """A drill's context on the copy, the run's facts changed by ``facts``."""
        work.mkdir(mode=0o711)
        return DrillContext(
            "cache", self.root, work, facts={**self.facts, **facts}, capture=self.capture
        )


def backed_up(
    tmp_path: Path,
    redis_server: Callable[..., RedisServer],
    registry: Registry,
    persistence: str = "rdb",
    capture: str = "snapshot",
    also: Callable[[RedisServer], object] = lambda server: None,
) -> tuple[RedisServer, Restored]:
    """A server holding DB0 keys in database 0 and DB3 in database 3 (one with a time to
    live) and what ``also`` writes, backed up through a clone stage and restored under
    ``tmp_path/restored``."""
    server = redis_server(persistence=persistence)
    server.client().mset({f"k{i}": str(i) for i in range(DB0)})
    db3 = server.client(db=3)
    db3.set("kept", "1")
    db3.set("ttl", "1", ex=3600)
    also(server)
    profile = redis_clone_profile(tmp_path, server, fields=f'capture = "{capture}"')
    engine = Engine(load_profile(profile, registry), registry)
    run = engine.backup().record
    assert run.status == RunStatus.SUCCEEDED, run.error
    root = tmp_path / "restored"
    engine.restore(run.run_id, root)
    [app] = run.applications
    [component] = [a.component for a in engine.profile.applications]
    assert isinstance(component, RedisPlugin)
    data = root / server.data_dir.relative_to("/")
    return server, Restored(component, dict(app.facts), app.capture, root, data)


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def results(ctx: DrillContext) -> dict[str, tuple[str, str]]:
    return {r.name: (r.status, r.detail) for r in ctx.results}


def gone(ctx: DrillContext) -> bool:
    """Whether every process the drill started has ended."""
    return all(p.poll() is not None for p in ctx.spawned())


@pytest.mark.parametrize(
    ("persistence", "capture"),
    [("rdb", "snapshot"), ("rdb", "logical"), ("aof", "snapshot"), ("aof", "logical")],
)
def test_a_good_copy_passes_and_its_key_count_per_database_matches(
    tmp_path: Path,
    redis_server: Callable[..., RedisServer],
    registry: Registry,
    persistence: str,
    capture: str,
) -> None:
    server, restored = backed_up(tmp_path, redis_server, registry, persistence, capture)
    assert restored.facts["keyspace"] == {
        "db0": {"keys": DB0, "expires": 0},
        "db3": {"keys": DB3, "expires": 1},
    }
    before = digest(restored.data)
    ctx = restored.context(tmp_path / "work")
    checker = "redis-check-aof" if persistence == "aof" else "redis-check-rdb"
    with restored.plugin.drill(ctx) as running:
        assert running is not None
        assert running.query is None and not restored.plugin.answers_sql
        assert running.connection["SOCKET"] == str(ctx.work / "redis.sock")
        assert running.client_env["REDIS_URL"] == running.connection["URL"]
        copy = redis.from_url(running.connection["URL"], decode_responses=True)
        try:
            assert copy.mget([f"k{i}" for i in range(DB0)]) == [str(i) for i in range(DB0)]
            copy.set("written-to-the-copy", "1")  # reaches no restored file
        finally:
            copy.close()
        assert server.client().get("written-to-the-copy") is None  # the original is apart
    got = results(ctx)
    assert list(got) == [checker, "start", "keys"]
    assert all(status == "passed" for status, _ in got.values()), got
    assert got["keys"][1].startswith(f"db0: {DB0} keys, as recorded; db3: {DB3} keys, {DB3}")
    assert "1 with a time to live" in got["keys"][1]
    assert gone(ctx) and ctx.spawned()
    assert not (ctx.work / "redis.sock").exists()
    assert digest(restored.data) == before
    assert server.alive()


@pytest.mark.parametrize("persistence", ["rdb", "aof"])
def test_a_truncated_file_fails_redis_check_and_the_load(
    tmp_path: Path, redis_server: Callable[..., RedisServer], registry: Registry, persistence: str
) -> None:
    _, restored = backed_up(tmp_path, redis_server, registry, persistence)
    if persistence == "rdb":
        victim, checker = restored.data / "dump.rdb", "redis-check-rdb"
    else:
        victim, checker = (
            restored.data / "appendonlydir/appendonly.aof.1.incr.aof",
            "redis-check-aof",
        )
    os.truncate(victim, victim.stat().st_size // 2)
    ctx = restored.context(tmp_path / "work")
    with restored.plugin.drill(ctx) as running:
        assert running is None
    got = results(ctx)
    assert list(got) == [checker, "start"]
    status, detail = got[checker]
    assert status == "failed" and victim.name in detail, detail
    if persistence == "rdb":
        assert "Unexpected EOF" in detail
    status, detail = got["start"]
    assert status == "failed", detail
    assert "redis-server could not load it" in detail
    assert gone(ctx)


def test_a_key_count_other_than_the_recorded_one_fails_naming_the_database(
    tmp_path: Path, redis_server: Callable[..., RedisServer], registry: Registry
) -> None:
    _, restored = backed_up(tmp_path, redis_server, registry, "rdb")
    keyspace = dict(restored.facts["keyspace"])
    keyspace["db0"] = {"keys": DB0 + 1, "expires": 0}
    ctx = restored.context(tmp_path / "work", keyspace=keyspace)
    with restored.plugin.drill(ctx) as running:
        assert running is not None
    status, detail = results(ctx)["keys"]
    assert status == "failed"
    assert detail == f"db0: {DB0} keys restored, {DB0 + 1} recorded at the capture"
    assert [r.name for r in ctx.results if r.failed] == ["keys"]
    assert gone(ctx)

    # A run made before the count was recorded: the check cannot tell.
    old = {k: v for k, v in restored.facts.items() if k != "keyspace"}
    ctx = DrillContext("cache", restored.root, tmp_path / "work", facts=old)
    with restored.plugin.drill(ctx):
        pass
    assert results(ctx)["keys"][0] == "skipped"
    assert "predates" in results(ctx)["keys"][1]
    assert gone(ctx)


def test_keys_whose_time_to_live_ran_out_since_the_capture_are_not_missing(
    tmp_path: Path, redis_server: Callable[..., RedisServer], registry: Registry
) -> None:
    server, restored = backed_up(
        tmp_path, redis_server, registry, "rdb", also=lambda s: s.client().set("short", "1", px=200)
    )
    assert restored.facts["keyspace"]["db0"] == {"keys": DB0 + 1, "expires": 1}
    end = time.monotonic() + 30
    while server.client().exists("short"):  # it runs out on the original
        assert time.monotonic() < end, "the key did not expire"
        time.sleep(0.05)
    ctx = restored.context(tmp_path / "work")
    with restored.plugin.drill(ctx):
        pass
    status, detail = results(ctx)["keys"]
    assert status == "passed", detail
    assert detail.startswith(f"db0: {DB0} keys, {DB0 + 1} recorded (1 with a time to live")


def test_compare_keyspace_is_exact_without_a_time_to_live_and_bounded_with_one() -> None:
    recorded = {"db0": {"keys": 3, "expires": 0}, "db2": {"keys": 4, "expires": 2}}
    assert "db0: 3 keys, as recorded" in compare_keyspace(
        recorded, {"db0": {"keys": 3}, "db2": {"keys": 2}}
    )
    for db0, db2 in [(2, 4), (4, 4), (3, 1), (3, 5)]:
        with pytest.raises(CheckFailed):
            compare_keyspace(recorded, {"db0": {"keys": db0}, "db2": {"keys": db2}})
    with pytest.raises(CheckFailed, match="db5: 1 keys restored, 0 recorded"):
        compare_keyspace(recorded, {"db0": {"keys": 3}, "db2": {"keys": 4}, "db5": {"keys": 1}})
    assert compare_keyspace({}, {}) == "no keys, as recorded"
    with pytest.raises(CheckSkipped):
        compare_keyspace(None, {})


def test_a_work_folder_too_long_for_a_socket_gets_a_loopback_port(
    tmp_path: Path, redis_server: Callable[..., RedisServer], registry: Registry
) -> None:
    _, restored = backed_up(tmp_path, redis_server, registry, "rdb")
    ctx = restored.context(tmp_path / ("w" * 120))
    with restored.plugin.drill(ctx) as running:
        assert running is not None
        assert running.connection["HOST"] == "127.0.0.1" and "SOCKET" not in running.connection
        copy = redis.Redis(
            host="127.0.0.1", port=int(running.connection["PORT"]), decode_responses=True
        )
        try:
            assert copy.dbsize() == DB0
        finally:
            copy.close()
    assert all(status == "passed" for status, _ in results(ctx).values())
    assert gone(ctx)


def test_the_server_is_stopped_when_the_block_raises(
    tmp_path: Path, redis_server: Callable[..., RedisServer], registry: Registry
) -> None:
    _, restored = backed_up(tmp_path, redis_server, registry, "aof")
    ctx = restored.context(tmp_path / "work")
    with (
        pytest.raises(RuntimeError, match="a user check broke"),
        restored.plugin.drill(ctx) as running,
    ):
        assert running is not None
        raise RuntimeError("a user check broke")
    assert gone(ctx) and ctx.spawned()
