"""``persistence = "rdb"``: a server that persists nothing (``save ""``, ``appendonly no``),
backed up from the dump its ``BGSAVE`` writes for the backup, in both capture modes.

Without the field such a server is refused at ``check`` (exit 2, one line
naming the field); with it, a backup under a live writer is restored with
``freezeframe restore --verify`` and a fresh server that persists nothing
either, started on the restored folder, loads every key written before the
run began.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from freezeframe import RunStatus, SnapshotKind, Table
from freezeframe.engine import Engine
from freezeframe.profile import load_profile
from freezeframe.registry import Registry
from freezeframe_redis import RedisPlugin
from freezeframe_testing.plugin import run_cli
from freezeframe_testing.redis_server import (
    RedisServer,
    TransferWriter,
    ledger_problems,
    read_ledger,
    redis_clone_profile,
    seed_ledger,
    start_redis,
)

#: Keys written before the run, each of which the restored data must hold.
KEYS = 1000


def profile_for(tmp_path: Path, server: RedisServer, fields: str) -> Path:
    """A clone snapshot stage and an archive copy stage, in ``tmp_path``."""
    archive = f'[[backup]]\nbackend = "archive"\nname = "archive"\ndir = "{tmp_path / "archives"}"'
    return redis_clone_profile(tmp_path, server, fields=fields, then=archive)


@pytest.mark.parametrize("capture", ["snapshot", "logical"])
def test_a_server_that_persists_nothing_is_backed_up_with_persistence_rdb(
    tmp_path: Path, redis_server: Callable[..., RedisServer], registry: Registry, capture: str
) -> None:
    server = redis_server(persistence="none")
    client = server.client()
    total = seed_ledger(client)
    client.mset({f"before:{i}": str(i) for i in range(KEYS)})
    fields = f'persistence = "rdb"\ncapture = "{capture}"'
    profile = profile_for(tmp_path, server, fields)
    engine = Engine(load_profile(profile, registry), registry)
    with TransferWriter(server) as writer:
        before = writer.committed
        run = engine.backup().record
        after = writer.committed
        assert run.status == RunStatus.SUCCEEDED, run.error
        [app] = run.applications
        assert app.capture == capture
        assert app.facts["persistence"] == "rdb" and app.facts["dump_for_backup"] is True
        # The server's own BGSAVE wrote the dump where Redis keeps it, and it stays there.
        assert sorted(p.name for p in server.data_dir.iterdir()) == ["dump.rdb"]

        target = tmp_path / "back"
        r = run_cli("restore", profile, run.run_id, "--to", target, "--verify")
        assert r.returncode == 0, r.stderr
        restored = target / server.data_dir.relative_to("/")
        assert sorted(p.name for p in restored.iterdir()) == ["dump.rdb"]
        loaded = start_redis(restored, persistence="none")  # save "": it loads the dump still
        try:
            c = loaded.client()
            balance, seq = read_ledger(c)
            values = c.mget([f"before:{i}" for i in range(KEYS)])
        finally:
            loaded.stop()
        assert values == [str(i) for i in range(KEYS)]
        assert ledger_problems(writer, run, (balance, seq), total, before, after) == []
        assert not writer.died()


def test_without_persistence_a_server_that_persists_nothing_is_one_line_exit_2(
    tmp_path: Path, redis_server: Callable[..., RedisServer]
) -> None:
    server = redis_server(persistence="none")
    server.client().set("k", "v")
    profile = profile_for(tmp_path, server, "")
    r = run_cli("check", profile)
    assert r.returncode == 2, r.stderr
    [line] = r.stderr.splitlines()
    assert line.startswith("freezeframe: error: application 'cache': field \"persistence\": ")
    assert 'persists nothing (save "" and appendonly no)' in line
    assert 'set persistence = "rdb"' in line
    r = run_cli("backup", profile)
    assert r.returncode == 1 and 'persistence = "rdb"' in r.stderr
    assert list(server.data_dir.iterdir()) == []  # no dump written


@pytest.mark.parametrize("value", ['"aof"', '"RDB"', '""', "true"])
def test_a_persistence_other_than_rdb_is_one_line_exit_2(tmp_path: Path, value: str) -> None:
    profile = tmp_path / "profile.toml"
    profile.write_text(f"""
[profile]
name = "cache"
state_dir = "{tmp_path / "state"}"

[[application]]
plugin = "redis"
name = "cache"
url = "redis://127.0.0.1:1/0"
persistence = {value}

[[backup]]
backend = "clone"
name = "snap"
dir = "{tmp_path / "snaps"}"
""")
    r = run_cli("check", profile)
    assert r.returncode == 2, r.stderr
    [line] = r.stderr.splitlines()
    assert "[[application]] 'cache': field \"persistence\": " in line


@pytest.mark.parametrize("persistence", ["rdb", "aof"])
def test_persistence_rdb_changes_nothing_on_a_server_that_persists(
    tmp_path: Path, redis_server: Callable[..., RedisServer], persistence: str
) -> None:
    server = redis_server(persistence=persistence)
    fields = {"url": server.url, "persistence": "rdb"}
    p = RedisPlugin("cache", Table(fields, base_dir=tmp_path))
    p.capture = "snapshot"
    p.check()
    p.prepare(frozenset(SnapshotKind))
    files = "dump.rdb" if persistence == "rdb" else "appendonlydir"
    assert p.data_paths() == (server.data_dir / files,)  # an AOF server: its AOF, as without
    assert p.describe()["persistence"] == persistence
    assert "dump_for_backup" not in p.describe()
