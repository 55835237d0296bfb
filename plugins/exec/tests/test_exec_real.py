"""exec quiescing real things: a filesystem through the fsfreeze command, a Redis server
through redis-cli; the copies consistent, the watchdog thawing when freezeframe dies."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

import freezeframe_testing.components as comps
from freezeframe import Deadline, Table
from freezeframe.engine import Engine
from freezeframe.profile import load_profile
from freezeframe.registry import Registry
from freezeframe_exec import ExecPlugin
from freezeframe_testing.plugin import (
    LoopFs,
    finishes_within,
    pairs_restored,
    require_tool,
    writer_process,
)
from freezeframe_testing.redis_server import RedisServer

PROFILE = """
    [profile]
    name = "exec-fs"
    freeze_timeout = "{timeout}"

    [[application]]
    plugin = "exec"
    name = "data"
    quiesce = {quiesce}
    unquiesce = {unquiesce}
    data_paths = ["{mount}"]
    freezes = ["{mount}"]
    consistent_on = ["atomic", "per-file"]

    [[backup]]
    backend = "{backend}"
    name = "snap"
    dir = "{snaps}"
    {extra}
"""


@pytest.fixture
def xfs(loop_fs: Callable[..., LoopFs]) -> LoopFs:
    return loop_fs("xfs", 300)


def fs_profile(xfs: LoopFs, snaps: Path, *, timeout: str, backend: str, extra: str = "") -> str:
    fsfreeze = require_tool("fsfreeze")
    return PROFILE.format(
        timeout=timeout,
        quiesce=json.dumps([fsfreeze, "--freeze", str(xfs.mountpoint)]),
        unquiesce=json.dumps([fsfreeze, "--unfreeze", str(xfs.mountpoint)]),
        mount=xfs.mountpoint,
        backend=backend,
        snaps=snaps,
        extra=extra,
    )


def test_files_copied_one_by_one_while_quiesced_are_one_instant(
    xfs: LoopFs, write_profile: Callable[[str], Path], registry: Registry, tmp_path: Path
) -> None:
    text = fs_profile(xfs, tmp_path / "snaps", timeout="10s", backend="clone")
    engine = Engine(load_profile(write_profile(text), registry), registry)

    restored = pairs_restored(engine, xfs.mountpoint, tmp_path)

    assert {gap for _, gap in restored} <= {0, 1}, restored


def test_the_core_refuses_to_write_where_the_command_freezes(
    xfs: LoopFs, write_profile: Callable[[str], Path], registry: Registry
) -> None:
    text = fs_profile(xfs, xfs.mountpoint / "snaps", timeout="5s", backend="clone")
    problems = Engine(load_profile(write_profile(text), registry), registry).check()
    assert any("freezes" in p and "stage 'snap'" in p for p in problems), problems


def test_the_watchdog_runs_the_unquiesce_command_when_freezeframe_is_killed(
    xfs: LoopFs, write_profile: Callable[[str], Path], tmp_path: Path
) -> None:
    timeout = 3.0
    marker = tmp_path / "in-stage"
    extra = f'seconds = "60s"\nmarker = "{marker}"'
    text = fs_profile(xfs, tmp_path / "snaps", timeout=f"{timeout}s", backend="slow", extra=extra)
    proc = comps.start_freezeframe("backup", write_profile(text), "-q")
    writer = None
    try:
        comps.wait_for(marker, proc)
        writer = writer_process(xfs.mountpoint / "during.txt")
        assert not finishes_within(writer, 0.3)  # frozen right now
        os.kill(proc.pid, signal.SIGKILL)
        assert finishes_within(writer, 5), "nobody ran the unquiesce command"
    finally:
        proc.kill()
        proc.wait()
        if writer is not None:
            writer.kill()
            writer.wait()
    assert (xfs.mountpoint / "during.txt").read_text() == "written"


def test_redis_paused_by_redis_cli_takes_no_writes_until_unpaused(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    server = redis_server()
    cli = [require_tool("redis-cli"), "-p", str(server.port)]
    plugin = ExecPlugin(
        "cache",
        Table(
            {
                "quiesce": [*cli, "CLIENT", "PAUSE", "60000", "WRITE"],
                "unquiesce": [*cli, "CLIENT", "UNPAUSE"],
                "check": [*cli, "PING"],
            },
            base_dir=tmp_path,
        ),
    )
    plugin.check()
    client = redis.Redis(port=server.port, socket_timeout=0.5)
    client.set("k", "before")
    plugin.prepare(frozenset())
    plugin.quiesce(Deadline.after(5))
    try:
        with pytest.raises(redis.exceptions.TimeoutError):
            client.set("k", "during")
        assert redis.Redis(port=server.port).get("k") == b"before"  # reads still answer
    finally:
        plugin.unquiesce(())
    fresh = redis.Redis(port=server.port, socket_timeout=5)
    fresh.set("k", "after")
    assert fresh.get("k") == b"after"
