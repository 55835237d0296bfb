"""The mariadb plug-in's drill: a private server on a restored copy, checked deeply.

The copies are what a backup holds. In the snapshot capture: the image of a
datadir at the instant of the freeze, made by killing the server (-9) while the
plug-in holds its lock, as an atomic snapshot would see it: InnoDB recovers it,
and the binary log ends at the position the quiesce recorded. The original
was restarted once after its tables were made, so that their files predate the
redo log the copy recovers from, as in any server that has run a while. In
the logical capture: a real ``freezeframe backup`` and ``restore``. Each drill
runs in a folder under /tmp that the datadir's owner can reach (as root the
copy belongs to ``mysql``, whom the server then runs as).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from freezeframe.drilling import CheckResult
from freezeframe.plugin import (
    CheckFailed,
    Deadline,
    DrillContext,
    QuiesceError,
    SnapshotKind,
    Table,
)
from freezeframe_mariadb import MariadbPlugin
from freezeframe_testing.mariadb_server import MariaDB
from freezeframe_testing.plugin import clone_profile, require_tool, restored, run_cli

#: Rows of shop.t committed before the freeze.
ROWS = 20


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A folder under /tmp that every user may enter (pytest's tmp_path is root's only)."""
    folder = Path(tempfile.mkdtemp(prefix="ffdrill-", dir="/tmp"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def plugin(server: MariaDB, base: Path) -> MariadbPlugin:
    table = {"unix_socket": str(server.socket), "user": "root"}
    return MariadbPlugin("shop", Table(table, base_dir=base))


def settled(start: Callable[..., MariaDB], *, binlog: bool = True) -> MariaDB:
    """A server with ``shop.t`` (InnoDB, ROWS rows) and ``shop.a`` (Aria), restarted once
    since, with commits after the restart (redo the copy must recover)."""
    first = start(binlog=binlog)
    first.sql(
        "CREATE DATABASE shop",
        "CREATE TABLE shop.t (id INT PRIMARY KEY, v INT NOT NULL) ENGINE=InnoDB",
        "CREATE TABLE shop.a (id INT PRIMARY KEY) ENGINE=Aria",
        "INSERT INTO shop.a VALUES (1)",
        "INSERT INTO shop.t VALUES (1, 0)",
    )
    first.stop()
    server = start(first.datadir, init=False, binlog=binlog)
    for i in range(2, ROWS + 1):
        server.sql(f"INSERT INTO shop.t VALUES ({i}, {i})")
    return server


def frozen_copy(
    server: MariaDB, p: MariadbPlugin, root: Path, *, after_freeze: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Quiesce, then kill the server and copy its datadir under ``root`` (an atomic
    snapshot's image at the freeze), and prepare it as a restore does; the facts the
    quiesce recorded. ``after_freeze``: statements committed after the thaw, before the
    kill: the copy is then not of the freeze's instant."""
    p.check()
    p.prepare(frozenset({SnapshotKind.ATOMIC}))
    p.quiesce(Deadline.after(10))
    facts = dict(p.describe())
    if after_freeze:
        p.unquiesce(())
        server.sql(*after_freeze)
    server.kill()
    with contextlib.suppress(QuiesceError):  # the lock went with the server
        p.unquiesce(())
    p.release()
    image = restored(root, server.datadir)
    shutil.copytree(server.datadir, image, symlinks=True)
    p.prepare_restored(root)
    return facts


def owned_by_mysql(datadir: Path) -> None:
    """As root: the copy belongs to ``mysql`` (if there is one), as a real datadir does."""
    if os.geteuid() != 0:
        return
    try:
        mysql = pwd.getpwnam("mysql")
    except KeyError:
        return
    for folder, _dirs, files in os.walk(datadir):
        for name in [folder, *(os.path.join(folder, f) for f in files)]:
            os.chown(name, mysql.pw_uid, mysql.pw_gid)


def context(scratch: Path, root: Path, facts: Any, capture: str = "snapshot") -> DrillContext:
    work = scratch / "work"
    work.mkdir(mode=0o711)
    work.chmod(0o711)  # as the core makes it: root's, enterable
    return DrillContext("shop", root, work, facts=facts, capture=capture)


@dataclass
class Drill:
    """A frozen copy (:func:`frozen_copy`) of a :func:`settled` server, ready to drill."""

    server: MariaDB
    plugin: MariadbPlugin
    ctx: DrillContext

    @property
    def facts(self) -> Mapping[str, Any]:
        return self.ctx.facts

    def image(self, original: Path) -> Path:
        """Where ``original`` lies in the copy."""
        return restored(self.ctx.root, original)


def frozen_drill(
    start: Callable[..., MariaDB],
    scratch: Path,
    *,
    binlog: bool = True,
    after_freeze: tuple[str, ...] = (),
    work_in: Path | None = None,
) -> Drill:
    """A settled server's frozen copy in ``scratch/root``, its drill's folder in
    ``work_in`` (default: ``scratch``)."""
    server = settled(start, binlog=binlog)
    p = plugin(server, scratch)
    facts = frozen_copy(server, p, scratch / "root", after_freeze=after_freeze)
    return Drill(server, p, context(work_in or scratch, scratch / "root", facts))


def results(ctx: DrillContext) -> dict[str, CheckResult]:
    return {r.name: r for r in ctx.results}


def gone(ctx: DrillContext) -> bool:
    """Whether every process the drill started has exited (and was reaped)."""
    procs = ctx.spawned()
    return bool(procs) and all(p.poll() is not None for p in procs)


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid in /proc/{pid}/status")


def test_a_good_copy_passes_every_check_and_answers_sql(
    mariadb_factory: Callable[..., MariaDB], scratch: Path
) -> None:
    d = frozen_drill(mariadb_factory, scratch)
    server, p, ctx, facts = d.server, d.plugin, d.ctx, d.facts
    assert facts["log_bin"] and facts["gtid_binlog_pos"]
    datadir = d.image(server.datadir)
    owned_by_mysql(datadir)
    with p.drill(ctx) as running:
        assert running is not None and running.query is not None
        checks = results(ctx)
        assert [c.status for c in checks.values()] == ["passed"] * 3, ctx.results
        assert "after InnoDB crash recovery" in checks["start"].detail
        assert facts["gtid_binlog_pos"] in checks["binlog_position"].detail
        assert f"{facts['binlog_file']} holds" in checks["binlog_position"].detail
        assert checks["check_table"].detail.endswith("tables OK")
        assert running.query("SELECT COUNT(*) FROM shop.t", 10) == ROWS
        assert running.query("SELECT id FROM shop.t WHERE id > 1000", 10) is None
        sock = Path(running.connection["SOCKET"])
        assert sock.is_socket() and sock != server.socket
        assert running.connection["USER"] == "root"
        assert "unix_socket=" in running.connection["URL"]
        [proc] = ctx.spawned()
        assert uid_of(proc.pid) == datadir.stat().st_uid  # the datadir's owner
        client = subprocess.run(  # the client reaches the copy by client_env alone
            [require_tool("mariadb"), "--no-defaults", "-N", "-e", "SELECT COUNT(*) FROM shop.t"],
            env={**os.environ, **running.client_env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert client.stdout.strip() == str(ROWS), client.stderr
        with pytest.raises(CheckFailed, match=r"no answer within 0\.5 s"):
            running.query("SELECT SLEEP(30)", 0.5)
        with pytest.raises(CheckFailed, match="doesn't exist"):
            running.query("SELECT * FROM shop.nothing", 10)
    assert gone(ctx)
    assert not sock.exists()
    assert results(ctx)["stop"].status == "passed"


@pytest.mark.parametrize("image", ["frozen", "stopped"])
def test_a_copy_without_a_tables_ibd_fails_naming_it(
    mariadb_factory: Callable[..., MariaDB], scratch: Path, image: str
) -> None:
    server = settled(mariadb_factory)
    p = plugin(server, scratch)
    root = scratch / "root"
    if image == "frozen":  # redo to recover into the lost file: the server refuses to start
        facts = frozen_copy(server, p, root)
    else:  # a clean shutdown's image: it starts, and the table is not there
        p.check()
        server.stop()
        shutil.copytree(server.datadir, restored(root, server.datadir), symlinks=True)
        p.prepare_restored(root)
        facts = {}  # a run that recorded nothing: the binlog check has nothing to compare
        restored(root, server.datadir / "shop" / "a.MAD").unlink()  # and an Aria table's data
    restored(root, server.datadir / "shop" / "t.ibd").unlink()
    ctx = context(scratch, root, facts)
    with p.drill(ctx) as running:
        checks = results(ctx)
        if image == "frozen":
            assert running is None
            assert list(checks) == ["start"] and checks["start"].failed
            assert "did not start" in checks["start"].detail
            assert "t.ibd" in checks["start"].detail, checks["start"].detail
        else:
            assert running is not None
            assert checks["start"].status == "passed"
            assert checks["binlog_position"].status == "skipped"
            assert "recorded no binary log position" in checks["binlog_position"].detail
            failed = checks["check_table"]  # each damaged table named, with what was found
            assert failed.failed and "found 2 of" in failed.detail, failed.detail
            assert "shop.a (" in failed.detail and "a.MAD" in failed.detail
            assert "shop.t (Tablespace is missing" in failed.detail
    assert all("\n" not in r.detail for r in ctx.results)
    assert gone(ctx)


@pytest.mark.parametrize("damage", ["removed", "damaged"])
def test_a_copy_without_a_sound_ibdata1_does_not_start(
    mariadb_factory: Callable[..., MariaDB], scratch: Path, damage: str
) -> None:
    d = frozen_drill(mariadb_factory, scratch)
    p, ctx = d.plugin, d.ctx
    ibdata1 = d.image(d.server.datadir / "ibdata1")
    if damage == "removed":
        ibdata1.unlink()
    else:
        with open(ibdata1, "r+b") as f:
            f.seek(34)  # the first page's space id, then its header
            f.write(b"\xa5" * 64)
    with p.drill(ctx) as running:
        assert running is None
    [start] = ctx.results
    assert start.name == "start" and start.failed
    assert "ibdata1" in start.detail and "\n" not in start.detail, start.detail
    if damage == "removed":  # said before a server could make a new, empty one
        assert "system tablespace ibdata1 is missing" in start.detail
        assert ctx.spawned() == [] and not ibdata1.exists()
    else:
        assert "did not start" in start.detail
        assert gone(ctx)


def test_a_copy_taken_after_the_freeze_fails_the_binlog_check(
    mariadb_factory: Callable[..., MariaDB], scratch: Path
) -> None:
    late = ("INSERT INTO shop.t VALUES (1001, 1)", "INSERT INTO shop.t VALUES (1002, 2)")
    d = frozen_drill(mariadb_factory, scratch, after_freeze=late)
    p, ctx, facts = d.plugin, d.ctx, d.facts
    with p.drill(ctx) as running:
        assert running is not None and running.query is not None
        assert running.query("SELECT COUNT(*) FROM shop.t", 10) == ROWS + 2
    checks = results(ctx)
    failed = checks["binlog_position"]
    assert failed.failed, failed
    assert f"not {facts['gtid_binlog_pos']} as at the freeze" in failed.detail, failed.detail
    assert "InnoDB's last commit was logged at" in failed.detail or "GTID" in failed.detail
    assert checks["check_table"].status == "passed"  # the copy is sound, of another instant
    assert gone(ctx)


def test_without_a_binary_log_the_binlog_check_is_skipped(
    mariadb_factory: Callable[..., MariaDB], scratch: Path
) -> None:
    d = frozen_drill(mariadb_factory, scratch, binlog=False)
    p, ctx = d.plugin, d.ctx
    assert d.facts["log_bin"] is False
    with p.drill(ctx) as running:
        assert running is not None
    checks = results(ctx)
    assert checks["binlog_position"].status == "skipped"
    assert checks["binlog_position"].detail == "the original had no binary log"
    assert [checks[n].status for n in ("start", "check_table", "stop")] == ["passed"] * 3
    assert gone(ctx)


def test_a_logical_backup_restored_passes_and_skips_the_binlog_check(
    mariadb: MariaDB, scratch: Path
) -> None:
    mariadb.sql(
        "CREATE DATABASE shop",
        "CREATE TABLE shop.t (id INT PRIMARY KEY, v INT NOT NULL) ENGINE=InnoDB",
        f"INSERT INTO shop.t SELECT seq, seq FROM shop.seq_1_to_{ROWS}",
    )
    application = f"""plugin = "mariadb"
name = "shop"
unix_socket = {json.dumps(str(mariadb.socket))}
user = "root"
capture = "logical"
"""
    profile = clone_profile(scratch, application, name="logical")
    r = run_cli("backup", profile, "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    [app] = r.json()["applications"]
    root = scratch / "root"
    r = run_cli("restore", profile, r.json()["run_id"], "--to", root, timeout=300)
    assert r.returncode == 0, r.stderr
    p = plugin(mariadb, scratch)
    ctx = context(scratch, root, app["facts"], capture="logical")
    with p.drill(ctx) as running:
        assert running is not None and running.query is not None
        assert running.query("SELECT SUM(v) FROM shop.t", 10) == ROWS * (ROWS + 1) // 2
    checks = results(ctx)
    assert checks["binlog_position"].status == "skipped"
    assert "logical capture" in checks["binlog_position"].detail
    assert [checks[n].status for n in ("start", "check_table", "stop")] == ["passed"] * 3
    assert gone(ctx)


def test_the_server_stops_when_the_block_raises_and_a_long_folder_is_no_trouble(
    mariadb_factory: Callable[..., MariaDB], scratch: Path
) -> None:
    deep = scratch / ("w" * 60) / ("x" * 60)  # a socket path there would not fit in 108 bytes
    deep.mkdir(parents=True)
    d = frozen_drill(mariadb_factory, scratch, work_in=deep)
    p, ctx = d.plugin, d.ctx
    with pytest.raises(RuntimeError, match="a user check broke"), p.drill(ctx) as running:
        assert running is not None and running.query is not None
        sock = Path(running.connection["SOCKET"])
        assert len(os.fsencode(sock)) <= 107 and sock.parent.parent == Path(tempfile.gettempdir())
        assert running.query("SELECT COUNT(*) FROM shop.t", 10) == ROWS
        raise RuntimeError("a user check broke")
    assert gone(ctx)
    assert not sock.parent.exists()
    assert "stop" not in results(ctx)  # the block did not end: no check after it
