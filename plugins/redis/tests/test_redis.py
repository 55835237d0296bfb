"""The redis plug-in against real redis-servers: fields, check, the pause, saves, restore."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from freezeframe import (
    Artifact,
    ConfigError,
    Deadline,
    FreezeframeError,
    ProfileError,
    QuiesceError,
    RunStatus,
    SnapshotKind,
    Table,
)
from freezeframe.engine import Engine
from freezeframe.profile import load_profile
from freezeframe.registry import Registry
from freezeframe_redis import RedisPlugin
from freezeframe_testing.procs import descendants
from freezeframe_testing.redis_server import RedisServer, read_ledger, seed_ledger, start_redis

PASSWORD = "s3cret-Pa55word"  # noqa: S105 (a test server's password)
ALL_KINDS = frozenset(SnapshotKind)


def plugin(url: str, tmp_path: Path, name: str = "cache", **fields: Any) -> RedisPlugin:
    return RedisPlugin(name, Table({"url": url, **fields}, base_dir=tmp_path))


def frozen(p: RedisPlugin, seconds: float = 10) -> None:
    p.prepare(ALL_KINDS)
    p.quiesce(Deadline.after(seconds))


class PendingWrite(threading.Thread):
    """``INCR key`` from a connection of its own; ``done`` once the server answered."""

    def __init__(self, server: RedisServer, key: str = "seq") -> None:
        super().__init__(daemon=True)
        self.server, self.key = server, key
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        c = self.server.client(socket_timeout=30)
        try:
            c.incr(self.key)
            self.done.set()
        except BaseException as e:
            self.error = e
        finally:
            c.close()


def writable_within(server: RedisServer, seconds: float) -> bool:
    """Whether a write from a new connection is answered within ``seconds``."""
    return server.writable_within(seconds)


def copy_data(server: RedisServer, dst: Path) -> Path:
    """A copy of the server's data folder (what a snapshot would hold)."""
    shutil.copytree(server.data_dir, dst)
    return dst


def load_copy(data: Path, persistence: str, tmp_path: Path) -> RedisServer:
    """A fresh redis-server on a copied data folder."""
    return start_redis(data, persistence=persistence)


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def server_pid(server: RedisServer) -> int:
    return int(server.info("server")["process_id"])


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a redis-server's save process)."""
    return [p.pid for p in descendants(pid) if p.ppid == pid]


# -- fields --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({}, "url", "missing"),
        ({"url": "http://h:1"}, "url", "scheme"),
        ({"url": "redis://h:1/x"}, "url", "number"),
        ({"url": "redis://:hunter2@h:6379/0"}, "url", "password_env"),
        ({"url": "redis://h:6379/0?password=hunter2"}, "url", "unsupported"),
        ({"url": "unix://relative.sock"}, "url", "unix:///"),
        ({"url": "redis://h", "password_env": "FF_TEST_UNSET_VARIABLE"}, "password_env", "not set"),
        ({"url": "redis://h", "password_env": "A", "password_file": "p"}, "password_env", "either"),
        ({"url": "redis://h", "dir": 3}, "dir", "path"),
    ],
)
def test_bad_fields_name_the_field_and_never_echo_a_password(
    tmp_path: Path, fields: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(ConfigError) as e:
        RedisPlugin("cache", Table(fields, base_dir=tmp_path))
    assert e.value.field == field
    assert words in str(e.value)
    assert "hunter2" not in str(e.value)


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("redis://cache.internal", "redis://cache.internal:6379/0"),
        ("redis://backup@10.0.0.5:6380/3", "redis://backup@10.0.0.5:6380/3"),
        ("redis://[::1]:7000?db=2", "redis://[::1]:7000/2"),
        ("unix:///run/redis/redis.sock", "unix:///run/redis/redis.sock"),
        ("unix://backup@/run/redis.sock?db=1", "unix://backup@/run/redis.sock?db=1"),
    ],
)
def test_good_urls(tmp_path: Path, url: str, where: str) -> None:
    assert plugin(url, tmp_path).endpoint.where == where


def test_a_password_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "pass"
    f.write_text(PASSWORD + "\n")
    f.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600") as e:
        plugin("redis://127.0.0.1:1/0", tmp_path, password_file=str(f))
    assert PASSWORD not in str(e.value)
    f.chmod(0o600)
    p = plugin("redis://127.0.0.1:1/0", tmp_path, password_file=str(f), dir="data")
    assert p.dir == tmp_path / "data"
    assert p.endpoint.where == "redis://127.0.0.1:1/0"


def test_an_unknown_field_is_named_by_the_profile(
    tmp_path: Path, write_profile: Callable[[str], Path], registry: Registry
) -> None:
    path = write_profile(f"""
        [profile]
        name = "p"

        [[application]]
        plugin = "redis"
        name = "cache"
        url = "redis://127.0.0.1:6399/0"
        pasword_env = "X"

        [[backup]]
        backend = "clone"
        name = "snap"
        dir = "{tmp_path / "snaps"}"
    """)
    with pytest.raises(ProfileError, match='field "pasword_env": unknown field'):
        load_profile(path, registry)


# -- check ---------------------------------------------------------------------------


def profile_for(tmp_path: Path, fields: str) -> str:
    return f"""
        [profile]
        name = "check"
        freeze_timeout = "10s"

        [[application]]
        plugin = "redis"
        name = "cache"
        {fields}

        [[backup]]
        backend = "clone"
        name = "snap"
        dir = "{tmp_path / "snaps"}"
    """


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("FF_REDIS_PASSWORD", PASSWORD)
    monkeypatch.setenv("FF_REDIS_WRONG", "not-the-" + PASSWORD)
    return "FF_REDIS_PASSWORD"


def check_problems(
    tmp_path: Path, write_profile: Callable[[str], Path], registry: Registry, fields: str
) -> list[str]:
    engine = Engine(load_profile(write_profile(profile_for(tmp_path, fields)), registry), registry)
    return engine.check()


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("down", "cannot reach it"),
        ("wrong-password", "authentication failed"),
        ("no-password", "authentication required"),
        ("no-persistence", "persists nothing"),
        ("config-disabled", "set the field dir"),
        ("dir-elsewhere", "does not exist on this machine"),
    ],
)
def test_check_failures_are_one_line_naming_the_application_without_the_secret(
    tmp_path: Path,
    write_profile: Callable[[str], Path],
    registry: Registry,
    redis_server: Callable[..., RedisServer],
    secret_env: str,
    caplog: pytest.LogCaptureFixture,
    case: str,
    words: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    persistence = "none" if case == "no-persistence" else "rdb"
    config = ['rename-command CONFIG ""'] if case == "config-disabled" else []
    server = redis_server(persistence=persistence, password=PASSWORD, config=config)
    url, auth = server.url, 'password_env = "FF_REDIS_PASSWORD"'
    extra = ""
    if case == "down":
        server.stop()
    elif case == "wrong-password":
        auth = 'password_env = "FF_REDIS_WRONG"'
    elif case == "no-password":
        auth = ""
    elif case == "dir-elsewhere":
        extra = f'dir = "{tmp_path / "not-here"}"'
    problems = check_problems(tmp_path, write_profile, registry, f'url = "{url}"\n{auth}\n{extra}')
    assert len(problems) == 1, problems
    [problem] = problems
    assert "\n" not in problem
    assert problem.startswith("application 'cache': ")
    assert words in problem
    assert "stage" not in problem  # the snapshot stage itself is fine
    assert PASSWORD not in problem and PASSWORD not in caplog.text
    if server.alive():
        assert writable_within(server, 2)  # a check never pauses anything


def test_check_passes_and_a_failed_check_quiesces_nothing(
    tmp_path: Path,
    write_profile: Callable[[str], Path],
    registry: Registry,
    redis_server: Callable[..., RedisServer],
    secret_env: str,
) -> None:
    server = redis_server(password=PASSWORD)
    fields = f'url = "{server.unix_url}"\npassword_env = "FF_REDIS_PASSWORD"'
    assert check_problems(tmp_path, write_profile, registry, fields) == []
    wrong = f'url = "{server.unix_url}"\npassword_env = "FF_REDIS_WRONG"'
    path = write_profile(profile_for(tmp_path, wrong))
    run = Engine(load_profile(path, registry), registry).backup().record
    assert run.status == RunStatus.FAILED
    assert "authentication failed" in (run.error or "")
    assert run.applications[0].quiesce_start is None
    assert server.info("persistence")["rdb_saves"] == 0  # no BGSAVE either


# -- the pause -----------------------------------------------------------------------


@pytest.mark.parametrize("persistence", ["rdb", "aof"])
def test_quiesce_blocks_writes_from_other_clients_until_unquiesce(
    tmp_path: Path, redis_server: Callable[..., RedisServer], persistence: str
) -> None:
    server = redis_server(persistence=persistence)
    client = server.client()
    seed_ledger(client)
    p = plugin(server.url, tmp_path)
    p.check()
    frozen(p)
    try:
        pending = PendingWrite(server)
        assert not pending.done.wait(0.5), "a write went through while quiesced"
        assert read_ledger(client) == (8000, 0)  # readers go on
        pipe = client.pipeline(transaction=True)
        pipe.incr("seq")
        tx = threading.Thread(target=pipe.execute, daemon=True)
        tx.start()
        tx.join(0.3)
        assert tx.is_alive(), "a MULTI/EXEC went through while quiesced"
    finally:
        p.unquiesce(())
    assert pending.done.wait(10) and pending.error is None
    tx.join(10)
    assert not tx.is_alive()
    assert read_ledger(client) == (8000, 2)
    facts = p.describe()
    assert facts["persistence"] == persistence and facts["keys"] == 9
    assert facts["pause_ms"] > 9000
    if persistence == "rdb":
        assert p.data_paths() == (server.data_dir / "dump.rdb",)
        assert facts["files"] == ["dump.rdb"] and facts["bgsave_ms"] >= 0
    else:
        assert p.data_paths() == (server.data_dir / "appendonlydir",)
        assert facts["files"] == ["appendonly.aof.1.base.rdb", "appendonly.aof.1.incr.aof"]
    p.unquiesce(())  # idempotent
    assert writable_within(server, 2)


def test_the_dump_holds_every_write_acknowledged_before_the_pause(
    tmp_path: Path, redis_server: Callable[..., RedisServer]
) -> None:
    server = redis_server()
    client = server.client()
    seed_ledger(client)
    client.bgsave()  # an old dump, before the write that must be in the backup
    while server.info("persistence")["rdb_bgsave_in_progress"]:
        time.sleep(0.01)
    client.set("seq", 41)
    p = plugin(server.url, tmp_path)
    frozen(p)
    try:
        copy = copy_data(server, tmp_path / "copy")
    finally:
        p.unquiesce(())
    loaded = load_copy(copy, "rdb", tmp_path)
    try:
        assert read_ledger(loaded.client()) == (8000, 41)
    finally:
        loaded.stop()


def test_a_bgsave_already_running_is_waited_for_then_ours_runs(
    tmp_path: Path, redis_server: Callable[..., RedisServer]
) -> None:
    server = redis_server()
    client = server.client()
    seed_ledger(client)
    client.config_set("rdb-key-save-delay", 50_000)  # 50 ms a key: the save takes ~0.5 s
    client.bgsave()
    client.set("seq", 7)  # after the running save forked: only a second save holds it
    assert server.info("persistence")["rdb_bgsave_in_progress"] == 1
    p = plugin(server.url, tmp_path)
    p.quiesce(Deadline.after(20))  # no prepare(): the window itself must wait
    try:
        copy = copy_data(server, tmp_path / "copy")
        saves = server.info("persistence")["rdb_saves"]
    finally:
        p.unquiesce(())
    assert saves == 2
    assert p.describe()["wait_ms"] > 0
    loaded = load_copy(copy, "rdb", tmp_path)
    try:
        assert read_ledger(loaded.client()) == (8000, 7)
    finally:
        loaded.stop()


def test_a_failed_bgsave_fails_the_quiesce_and_unpauses(
    tmp_path: Path, redis_server: Callable[..., RedisServer]
) -> None:
    # By default Redis itself refuses writes after a failed save (MISCONF): not our pause.
    server = redis_server(config=["stop-writes-on-bgsave-error no"])
    client = server.client()
    seed_ledger(client)
    client.config_set("rdb-key-save-delay", 200_000)  # ~2 s: time to kill the save process
    p = plugin(server.url, tmp_path)
    errors: list[BaseException] = []

    def quiesce() -> None:
        try:
            p.quiesce(Deadline.after(30))
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=quiesce)
    t.start()
    pid = server_pid(server)
    end = time.monotonic() + 10
    while not (kids := children_of(pid)):
        assert time.monotonic() < end, "the BGSAVE never started"
        time.sleep(0.005)
    os.kill(kids[0], signal.SIGKILL)  # what the OOM killer does
    t.join(30)
    assert len(errors) == 1 and isinstance(errors[0], QuiesceError)
    assert "BGSAVE failed (rdb_last_bgsave_status:err)" in str(errors[0])
    assert writable_within(server, 2)  # quiesce unpaused on its way out
    p.unquiesce(())


def test_a_deadline_that_passes_during_the_save_fails_and_unpauses(
    tmp_path: Path, redis_server: Callable[..., RedisServer]
) -> None:
    server = redis_server()
    client = server.client()
    seed_ledger(client)
    client.config_set("rdb-key-save-delay", 200_000)
    p = plugin(server.url, tmp_path)
    with pytest.raises(QuiesceError, match="at the deadline"):
        p.quiesce(Deadline.after(0.3))
    assert writable_within(server, 1)
    with pytest.raises(QuiesceError, match="no time left"):
        p.quiesce(Deadline(time.monotonic() - 1))
    assert writable_within(server, 1)


def test_unquiesce_ends_only_a_pause_of_its_own(
    tmp_path: Path, redis_server: Callable[..., RedisServer]
) -> None:
    server = redis_server()
    operator = server.client()
    p = plugin(server.url, tmp_path)
    p.prepare(ALL_KINDS)
    operator.execute_command("CLIENT", "PAUSE", 20_000, "WRITE")
    try:
        p.unquiesce(())  # prepare() ran, quiesce() did not: nothing of ours to end
        assert not writable_within(server, 0.3)
    finally:
        operator.execute_command("CLIENT", "UNPAUSE")
    assert writable_within(server, 2)


def test_a_pause_ended_by_someone_else_fails_the_thaw(
    tmp_path: Path, redis_server: Callable[..., RedisServer]
) -> None:
    server = redis_server()
    seed_ledger(server.client())
    p = plugin(server.url, tmp_path)
    frozen(p)
    other = server.client()
    other.execute_command("CLIENT", "UNPAUSE")
    other.incr("seq")
    with pytest.raises(QuiesceError, match=r"1 write\(s\) reached the data during the pause"):
        p.unquiesce(())
    assert writable_within(server, 2)


def test_a_pause_that_ran_out_before_the_thaw_fails_it(
    tmp_path: Path, redis_server: Callable[..., RedisServer]
) -> None:
    server = redis_server(persistence="aof")  # its quiesce takes milliseconds
    p = plugin(server.url, tmp_path)
    p.quiesce(Deadline.after(0.5))
    time.sleep(0.6)
    with pytest.raises(QuiesceError, match="the pause ran out"):
        p.unquiesce(())
    assert writable_within(server, 2)


def test_aof_quiesce_waits_for_a_running_rewrite_and_fsyncs_what_the_manifest_lists(
    tmp_path: Path, redis_server: Callable[..., RedisServer]
) -> None:
    server = redis_server(persistence="aof")
    client = server.client()
    seed_ledger(client)
    client.config_set("rdb-key-save-delay", 50_000)  # the rewrite's base is an RDB: slow
    client.bgrewriteaof()
    client.set("seq", 5)
    assert server.info("persistence")["aof_rewrite_in_progress"] == 1
    p = plugin(server.url, tmp_path)
    p.quiesce(Deadline.after(20))
    try:
        assert server.info("persistence")["aof_rewrite_in_progress"] == 0
        copy = copy_data(server, tmp_path / "copy")
    finally:
        p.unquiesce(())
    facts = p.describe()
    assert facts["files"] == ["appendonly.aof.2.base.rdb", "appendonly.aof.2.incr.aof"]
    loaded = load_copy(copy, "aof", tmp_path)
    try:
        assert read_ledger(loaded.client()) == (8000, 5)
    finally:
        loaded.stop()


def test_a_replica_is_quiesced_with_its_replication_stream(
    tmp_path: Path, redis_server: Callable[..., RedisServer]
) -> None:
    master = redis_server(config=["repl-diskless-sync-delay 0"])
    replica = redis_server(config=[f"replicaof 127.0.0.1 {master.port}"])
    seed_ledger(master.client())
    end = time.monotonic() + 20
    while replica.client().get("seq") != "0":
        assert time.monotonic() < end, "the replica never synchronised"
        time.sleep(0.02)
    p = plugin(replica.url, tmp_path)
    p.check()
    frozen(p)
    try:
        master.client().set("seq", 99)
        time.sleep(0.3)
        assert replica.client().get("seq") == "0"  # the master's write waits on the link
        copy = copy_data(replica, tmp_path / "copy")
    finally:
        p.unquiesce(())  # must not mistake the waiting stream for a write
    assert p.describe()["role"] == "slave"
    end = time.monotonic() + 20
    while replica.client().get("seq") != "99":
        assert time.monotonic() < end, "the replica did not resume"
        time.sleep(0.02)
    loaded = load_copy(copy, "rdb", tmp_path)
    try:
        assert read_ledger(loaded.client()) == (8000, 0)
    finally:
        loaded.stop()


def test_with_config_disabled_dir_names_the_data_folder(
    tmp_path: Path, redis_server: Callable[..., RedisServer]
) -> None:
    server = redis_server(config=['rename-command CONFIG ""'])
    seed_ledger(server.client())
    p = plugin(server.url, tmp_path, dir=str(server.data_dir))
    p.check()
    assert p.data_paths() == (server.data_dir,)
    frozen(p)
    try:
        copy = copy_data(server, tmp_path / "copy")
    finally:
        p.unquiesce(())
    assert p.describe()["files"] == ["dump.rdb"]
    (copy / "temp-4242.rdb").write_bytes(b"half a dump")
    root = tmp_path / "restore"
    (root / server.data_dir.relative_to("/")).parent.mkdir(parents=True)
    shutil.copytree(copy, root / server.data_dir.relative_to("/"))
    p.prepare_restored(root)
    assert not (root / server.data_dir.relative_to("/") / "temp-4242.rdb").exists()
    p.verify_restored(root)


def test_a_dir_that_is_not_the_servers_folder_fails_the_quiesce(
    tmp_path: Path, redis_server: Callable[..., RedisServer]
) -> None:
    server = redis_server()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "dump.rdb").write_bytes(b"an old dump")
    os.utime(elsewhere / "dump.rdb", (1, 1))
    p = plugin(server.url, tmp_path, dir=str(elsewhere))
    p.check()
    with pytest.raises(QuiesceError, match="is not its dump"):
        frozen(p)
    assert writable_within(server, 2)


# -- restore ---------------------------------------------------------------------------


def restore_root(server: RedisServer, root: Path, what: Path) -> Path:
    """Copy ``what`` (a data path) below ``root`` as a restore would."""
    dst = root / what.relative_to("/")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if what.is_dir():
        shutil.copytree(what, dst)
    else:
        shutil.copy2(what, dst)
    return dst


@pytest.mark.parametrize("persistence", ["rdb", "aof"])
def test_verify_restored_loads_the_data_and_changes_no_file(
    tmp_path: Path, redis_server: Callable[..., RedisServer], persistence: str
) -> None:
    server = redis_server(persistence=persistence)
    seed_ledger(server.client())
    p = plugin(server.url, tmp_path)
    frozen(p)
    try:
        restored = [restore_root(server, tmp_path / "root", d) for d in p.data_paths()]
    finally:
        p.unquiesce(())
    p.prepare_restored(tmp_path / "root")
    before = digest(tmp_path / "root")
    p.verify_restored(tmp_path / "root")
    assert digest(tmp_path / "root") == before
    assert server.alive()  # the temporary server never met the original
    # A truncated data file is caught.
    victim = restored[0] if persistence == "rdb" else restored[0] / "appendonly.aof.1.incr.aof"
    victim.write_bytes(victim.read_bytes()[:-20])
    with pytest.raises(FreezeframeError) as e:
        p.verify_restored(tmp_path / "root")
    assert str(e.value).startswith("application 'cache': ")
    assert "could not load it" in str(e.value)


def test_verify_restored_says_when_nothing_was_restored(
    tmp_path: Path, redis_server: Callable[..., RedisServer]
) -> None:
    server = redis_server()
    p = plugin(server.url, tmp_path)
    (tmp_path / "root").mkdir()
    with pytest.raises(FreezeframeError, match="application 'cache': no Redis data restored"):
        p.verify_restored(tmp_path / "root")


def test_prepare_restored_drops_aof_history_so_that_redis_writes_nothing_at_start(
    tmp_path: Path, redis_server: Callable[..., RedisServer]
) -> None:
    server = redis_server(persistence="aof", config=["aof-disable-auto-gc yes"])
    client = server.client()
    seed_ledger(client)
    client.bgrewriteaof()
    while server.info("persistence")["aof_rewrite_in_progress"]:
        time.sleep(0.01)
    client.set("seq", 3)
    p = plugin(server.url, tmp_path)
    frozen(p)
    try:
        [aof_dir] = [restore_root(server, tmp_path / "root", d) for d in p.data_paths()]
    finally:
        p.unquiesce(())
    manifest = aof_dir / "appendonly.aof.manifest"
    assert "type h" in manifest.read_text()
    p.prepare_restored(tmp_path / "root")
    assert "type h" not in manifest.read_text()
    assert sorted(f.name for f in aof_dir.iterdir()) == [
        "appendonly.aof.2.base.rdb",
        "appendonly.aof.2.incr.aof",
        "appendonly.aof.manifest",
    ]
    p.verify_restored(tmp_path / "root")
    loaded = start_redis(aof_dir.parent, persistence="aof")
    try:
        assert read_ledger(loaded.client()) == (8000, 3)
    finally:
        loaded.stop()


# -- secrets ---------------------------------------------------------------------------


def test_the_password_reaches_no_record_log_or_message(
    tmp_path: Path,
    write_profile: Callable[[str], Path],
    registry: Registry,
    redis_server: Callable[..., RedisServer],
    secret_env: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    server = redis_server(password=PASSWORD)
    seed_ledger(server.client())
    fields = f'url = "{server.url}"\npassword_env = "FF_REDIS_PASSWORD"'
    path = write_profile(profile_for(tmp_path, fields))
    engine = Engine(load_profile(path, registry), registry)
    run = engine.backup().record
    assert run.status == RunStatus.SUCCEEDED, run.error
    engine.restore(run.run_id, tmp_path / "restored", verify=True)
    bad = plugin(server.url, tmp_path, password_env="FF_REDIS_WRONG")  # noqa: S106
    with pytest.raises(FreezeframeError) as e:
        bad.check()
    facts = run.applications[0].facts
    assert facts["redis_version"] and facts["keys"] == 9
    assert PASSWORD not in repr(facts) and PASSWORD not in str(e.value)
    assert PASSWORD not in caplog.text
    assert PASSWORD not in repr(bad.describe()) and PASSWORD not in repr(vars(bad))
    for f in (tmp_path / "state").rglob("*"):
        if f.is_file():
            assert PASSWORD.encode() not in f.read_bytes(), f


def test_unquiesce_checks_each_per_file_image_when_an_aof_rewrite_ran(
    tmp_path: Path, redis_server: Callable[..., RedisServer]
) -> None:
    server = redis_server(persistence="aof", config=["aof-disable-auto-gc yes"])
    seed_ledger(server.client())
    p = plugin(server.url, tmp_path)
    frozen(p)
    view = tmp_path / "view"
    [aof_dir] = p.data_paths()
    image = restore_root(server, view, aof_dir)  # a per-file copy taken before the rewrite
    server.client().bgrewriteaof()  # the same data, new files
    while server.info("persistence")["aof_rewrite_in_progress"]:
        time.sleep(0.01)
    (image / "appendonly.aof.1.incr.aof").unlink()  # a copy that caught half of the swap
    artifact = Artifact("run-1", view=view, metadata={"paths": [str(aof_dir)]})
    with pytest.raises(QuiesceError, match=r"its copy lacks appendonly\.aof\.1\.incr\.aof"):
        p.unquiesce([artifact])
    assert writable_within(server, 2)


# -- the least a backup user needs ----------------------------------------------------

LEAST_ACL = "-@all +info +config|get +client|pause +client|unpause +bgsave +bgrewriteaof"


@pytest.mark.parametrize(
    ("persistence", "acl"),
    [("rdb", LEAST_ACL), ("aof", LEAST_ACL), ("rdb", LEAST_ACL.replace(" +config|get", ""))],
)
def test_the_documented_acl_is_enough(
    tmp_path: Path,
    redis_server: Callable[..., RedisServer],
    monkeypatch: pytest.MonkeyPatch,
    persistence: str,
    acl: str,
) -> None:
    server = redis_server(persistence=persistence, config=[f"user ffbackup on >{PASSWORD} {acl}"])
    seed_ledger(server.client())
    monkeypatch.setenv("FF_REDIS_PASSWORD", PASSWORD)
    url = server.url.replace("redis://", "redis://ffbackup@")
    fields: dict[str, Any] = {"password_env": "FF_REDIS_PASSWORD"}
    if "config|get" not in acl:
        with pytest.raises(FreezeframeError, match="set the field dir"):
            plugin(url, tmp_path, **fields).check()
        fields["dir"] = str(server.data_dir)
    p = plugin(url, tmp_path, **fields)
    p.check()
    frozen(p)
    try:
        assert not writable_within(server, 0.3)
    finally:
        p.unquiesce(())
    assert writable_within(server, 2)
    assert p.describe()["keys"] == 9
    ffbackup = server.client(username="ffbackup", password=PASSWORD)
    with pytest.raises(redis.exceptions.NoPermissionError):
        ffbackup.get("seq")  # and nothing more: no data


@pytest.mark.parametrize("persistence", ["rdb", "aof"])
def test_a_restore_elsewhere_needs_no_server_when_dir_is_set(
    tmp_path: Path, redis_server: Callable[..., RedisServer], persistence: str
) -> None:
    server = redis_server(persistence=persistence)
    seed_ledger(server.client())
    p = plugin(server.url, tmp_path)
    frozen(p)
    try:
        for d in p.data_paths():
            restore_root(server, tmp_path / "root", d)
    finally:
        p.unquiesce(())
    server.stop()  # the restore happens where the server is gone
    with_dir = plugin(server.url, tmp_path, dir=str(server.data_dir))
    with_dir.prepare_restored(tmp_path / "root")
    with_dir.verify_restored(tmp_path / "root")
    without = plugin(server.url, tmp_path)
    without.prepare_restored(tmp_path / "root")  # nothing it must do: a warning only
    with pytest.raises(FreezeframeError, match="cannot tell where its data was restored") as e:
        without.verify_restored(tmp_path / "root")
    assert "set the field dir" in str(e.value)
