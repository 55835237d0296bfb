"""Where the server keeps its files, on btrfs: folders outside the datadir, and subvolumes.

A binary log outside the datadir is backed up with it and restored so that
the copy reads its own logs, never the original's; files on two subvolumes
(two snapshots, two instants) are refused before anything is quiesced.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from freezeframe import FreezeframeError, RunStatus
from freezeframe.engine import Engine
from freezeframe.profile import load_profile
from freezeframe.registry import Registry
from freezeframe.tools import run_tool
from freezeframe_testing.mariadb_server import MariaDB
from freezeframe_testing.plugin import LoopFs, require_tool

SECRET = "layout-Secret-5Rt1"  # noqa: S105
PASSWORD_ENV = "FF_TEST_MARIADB_LAYOUT_PASSWORD"  # noqa: S105

PROFILE = """
    [profile]
    name = "layout"
    freeze_timeout = "10s"

    [[application]]
    plugin = "mariadb"
    name = "shop"
    unix_socket = "{socket}"
    user = "backup"
    password_env = "{env}"

    [[backup]]
    backend = "btrfs"
    name = "snap"
    dir = "{snaps}"

    [[backup]]
    backend = "archive"
    name = "archive"
    dir = "{archives}"
"""


def subvolume(fs: LoopFs, name: str) -> Path:
    run_tool([require_tool("btrfs"), "subvolume", "create", str(fs.mountpoint / name)], timeout=60)
    return fs.mountpoint / name


def engine_for(
    server: MariaDB, fs: LoopFs, tmp_path: Path, write_profile: Callable[[str], Path], reg: Registry
) -> Engine:
    server.sql(
        f"CREATE USER backup@'%' IDENTIFIED BY '{SECRET}'",
        "GRANT RELOAD, BINLOG MONITOR ON *.* TO backup@'%'",
    )
    text = PROFILE.format(
        socket=server.socket,
        env=PASSWORD_ENV,
        snaps=fs.mountpoint / "snaps",
        archives=tmp_path / "archives",
    )
    return Engine(load_profile(write_profile(text), reg), reg)


def test_a_binlog_outside_the_datadir_is_backed_up_and_restored_as_the_copys_own(
    tmp_path: Path,
    loop_fs: Callable[..., LoopFs],
    mariadb_factory: Callable[..., MariaDB],
    write_profile: Callable[[str], Path],
    registry: Registry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    fs = loop_fs("btrfs")
    db = subvolume(fs, "db")
    (db / "binlogs").mkdir()
    basename = db / "binlogs" / "shop-bin"  # absolute: the index names absolute paths
    server = mariadb_factory(
        db / "data",
        binlog=False,
        args=[f"--log-bin={basename}", "--server-id=1", f"--pid-file={db / 'data' / 'shop.pid'}"],
    )
    server.sql("CREATE DATABASE shop", "CREATE TABLE shop.t (id INT PRIMARY KEY)")
    engine = engine_for(server, fs, tmp_path, write_profile, registry)
    assert engine.data_paths() == (db / "data", db / "binlogs")
    server.sql("INSERT INTO shop.t VALUES (1)")
    run = engine.backup().record
    assert run.status == RunStatus.SUCCEEDED, run.error
    server.sql("INSERT INTO shop.t VALUES (2)")  # after the backup: not in it

    target = tmp_path / "restore"
    engine.restore(run.run_id, target, verify=True)
    data, logs = target / (db / "data").relative_to("/"), target / (db / "binlogs").relative_to("/")
    assert not (data / "shop.pid").exists(), "the original's pid file came along"
    index = (logs / "shop-bin.index").read_text().splitlines()
    assert index and all(line.startswith("../binlogs/shop-bin.") for line in index), index
    facts = run.applications[0].facts
    assert (logs / facts["binlog_file"]).stat().st_size == facts["binlog_position"]
    original_index = (db / "binlogs" / "shop-bin.index").read_text()
    copy = mariadb_factory(data, init=False, binlog=False, args=["--log-bin=../binlogs/shop-bin"])
    assert copy.sql("SELECT id FROM shop.t") == [(1,)]
    copy.sql("FLUSH BINARY LOGS")  # the copy writes its own logs ...
    copy.stop()
    assert (db / "binlogs" / "shop-bin.index").read_text() == original_index  # ... only


def test_files_on_two_subvolumes_are_refused_before_the_freeze(
    tmp_path: Path,
    loop_fs: Callable[..., LoopFs],
    mariadb_factory: Callable[..., MariaDB],
    write_profile: Callable[[str], Path],
    registry: Registry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    fs = loop_fs("btrfs")
    db, logs = subvolume(fs, "db"), subvolume(fs, "logs")
    server = mariadb_factory(
        db / "data", binlog=False, args=[f"--log-bin={logs / 'shop-bin'}", "--server-id=1"]
    )
    engine = engine_for(server, fs, tmp_path, write_profile, registry)
    problems = engine.check()
    assert any(
        "application 'shop'" in p and "2 filesystems or subvolumes" in p and str(logs) in p
        for p in problems
    ), problems
    run = engine.backup().record
    assert run.status == RunStatus.FAILED
    assert run.applications[0].quiesce_start is None, "refused only after quiescing"
    with pytest.raises(FreezeframeError, match="several snapshots are not one instant"):
        engine.profile.applications[0].component.prepare(frozenset())
