"""The sqlite plug-in on databases whose file names mean something in a URI.

SQLite opens ``file:`` URIs: pasted in unescaped, a ``#`` or ``?`` cuts the
name short (``/srv/shop#1.db`` opens, and creates, ``/srv/shop``) and a
``%41`` is decoded. Every name here must reach the very file it names, and
no other file may appear beside it.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from freezeframe import Deadline, FreezeframeError, SnapshotKind, Table
from freezeframe_sqlite import SqlitePlugin
from freezeframe_testing.plugin import make_counter_db, read_counter

#: File names that a URI, a shell or an option parser would take for something else.
NAMES = [
    "plain.db",
    "shop#1.db",
    "shop?mode=memory.db",
    "100%41.db",
    "with space.db",
    'quote\'s "q".db',
    "-leading-dash.db",
    "new\nline.db",
    "ünïcødé-数据.db",
    "all#of?them&mode=rwc%20.db",
]


def plugin(path: Path) -> SqlitePlugin:
    return SqlitePlugin("shop", Table({"path": str(path)}, base_dir=path.parent))


def commit_increments(path: Path, n: int) -> sqlite3.Connection:
    """``n`` commits left in the WAL (no autocheckpoint), on a connection kept open."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA wal_autocheckpoint=0")
    for _ in range(n):
        db.execute("UPDATE counter SET n = n + 1")
    return db


@pytest.mark.parametrize("name", NAMES, ids=ascii)
def test_quiesce_checkpoints_the_file_it_names_and_creates_none(tmp_path: Path, name: str) -> None:
    live = tmp_path / "live"
    live.mkdir()
    db = make_counter_db(live / name)
    writer = commit_increments(db, 300)
    try:
        assert Path(f"{db}-wal").stat().st_size > 0
        p = plugin(db)
        p.check()
        p.prepare(frozenset({SnapshotKind.PER_FILE}))
        writer.execute("UPDATE counter SET n = n + 1")  # one more commit in the WAL
        p.quiesce(Deadline.after(5))
        try:
            copy = tmp_path / "copy.db"
            shutil.copyfile(db, copy)  # the main file alone, as a snapshot takes it
        finally:
            p.unquiesce(())
        assert read_counter(copy) == 301
        assert p.describe()["checkpointed_frames"] > 0
    finally:
        writer.close()
    # the -wal and -shm files go when the last connection closes
    assert name in os.listdir(live)
    assert set(os.listdir(live)) <= {name, f"{name}-wal", f"{name}-shm"}


@pytest.mark.parametrize("name", NAMES, ids=ascii)
def test_verify_restored_checks_the_restored_file_itself_and_finds_damage(
    tmp_path: Path, name: str
) -> None:
    live = tmp_path / "live"
    live.mkdir()
    db = make_counter_db(live / name, wal=False)
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.executemany("INSERT INTO t VALUES (?)", [(os.urandom(200),) for _ in range(2000)])
    conn.close()
    p = plugin(db)
    root = tmp_path / "restore"
    restored = p.restored_path(root)
    restored.parent.mkdir(parents=True)
    shutil.copyfile(db, restored)
    Path(f"{restored}-wal").write_bytes(b"stale")  # a stale WAL from elsewhere must go
    p.prepare_restored(root)
    assert not Path(f"{restored}-wal").exists()
    p.verify_restored(root)
    with open(restored, "r+b") as f:  # scribble over the middle of the b-tree pages
        f.seek(restored.stat().st_size // 2)
        f.write(b"\xff" * 4096)
    with pytest.raises(FreezeframeError, match=r"(?s)application 'shop'.*integrity_check"):
        p.verify_restored(root)
    assert os.listdir(restored.parent) == [name]  # the check left nothing beside it


def test_a_database_that_vanished_is_one_line_and_is_never_created(tmp_path: Path) -> None:
    db = make_counter_db(tmp_path / "shop#1.db")
    p = plugin(db)
    p.check()
    db.unlink()
    Path(f"{db}-wal").unlink(missing_ok=True)
    Path(f"{db}-shm").unlink(missing_ok=True)
    for step in (
        p.check,
        lambda: p.prepare(frozenset({SnapshotKind.PER_FILE})),
        lambda: p.quiesce(Deadline.after(2)),
    ):
        with pytest.raises(FreezeframeError) as caught:
            step()
        message = str(caught.value)
        assert "application 'shop'" in message and str(db) in message
        assert "does not exist" in message and "\n" not in message
        p.unquiesce(())
    assert os.listdir(tmp_path) == []
