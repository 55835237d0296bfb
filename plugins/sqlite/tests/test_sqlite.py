"""The sqlite plug-in against real SQLite databases and real processes."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from freezeframe import ConfigError, Deadline, FreezeframeError, QuiesceError, Table
from freezeframe_sqlite import SqlitePlugin
from freezeframe_testing.plugin import integrity, make_counter_db, read_counter, writable_within


def plugin(path: Path, **fields: object) -> SqlitePlugin:
    return SqlitePlugin("db", Table({"path": str(path), **fields}, base_dir=path.parent))


def commit_increments(path: Path, n: int) -> sqlite3.Connection:
    """Commit ``n`` increments and keep the connection open (closing the last one would
    checkpoint the WAL itself, hiding what the plug-in must do)."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA wal_autocheckpoint=0")  # keep the rows in the WAL, as a busy server would
    for _ in range(n):
        db.execute("UPDATE counter SET n = n + 1")
    return db


def test_quiesce_blocks_writers_until_unquiesce(tmp_path: Path) -> None:
    db = make_counter_db(tmp_path / "a.db")
    p = plugin(db)
    p.check()
    p.quiesce(Deadline.after(5))
    try:
        assert not writable_within(db, 0.2)
        reader = sqlite3.connect(db)
        assert reader.execute("SELECT n FROM counter").fetchone() == (0,)  # readers go on
        reader.close()
    finally:
        p.unquiesce(())
    assert writable_within(db, 0.2)


def test_a_writer_waiting_in_its_busy_timeout_commits_after_the_thaw(tmp_path: Path) -> None:
    db = make_counter_db(tmp_path / "a.db")
    p = plugin(db)
    p.quiesce(Deadline.after(5))
    done = threading.Event()

    def write() -> None:
        conn = sqlite3.connect(db, timeout=10, isolation_level=None)
        conn.execute("UPDATE counter SET n = n + 1")
        conn.close()
        done.set()

    t = threading.Thread(target=write)
    t.start()
    assert not done.wait(0.3), "the write went through while the database was quiesced"
    p.unquiesce(())
    assert done.wait(5)
    t.join()
    assert read_counter(db) == 1


@pytest.mark.parametrize("wal", [True, False], ids=["wal", "rollback-journal"])
def test_main_file_alone_holds_every_commit_once_quiesced(tmp_path: Path, wal: bool) -> None:
    db = make_counter_db(tmp_path / "a.db", wal=wal)
    writer = commit_increments(db, 500)
    if wal:
        assert Path(f"{db}-wal").stat().st_size > 0
    p = plugin(db)
    p.quiesce(Deadline.after(5))
    try:
        copy = tmp_path / "copy.db"
        shutil.copyfile(db, copy)  # the main file only: no -wal beside it
    finally:
        p.unquiesce(())
        writer.close()
    assert integrity(copy) == ["ok"]
    assert read_counter(copy) == 500
    facts = p.describe()
    assert facts["journal_mode"] == ("wal" if wal else "delete")
    if wal:
        assert facts["checkpointed_frames"] > 0


def test_quiesce_gives_up_at_the_deadline_when_a_writer_holds_the_lock(tmp_path: Path) -> None:
    db = make_counter_db(tmp_path / "a.db")
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    p = plugin(db)
    started = time.monotonic()
    with pytest.raises(QuiesceError, match="write lock"):
        p.quiesce(Deadline.after(0.3))
    assert time.monotonic() - started < 3
    p.unquiesce(())  # after a failed quiesce: must not raise
    p.unquiesce(())  # and is idempotent
    holder.execute("ROLLBACK")
    holder.close()
    assert writable_within(db, 0.2)


def test_interrupt_stops_a_quiesce_waiting_for_a_writer_and_holds_until_unquiesce(
    tmp_path: Path,
) -> None:
    db = make_counter_db(tmp_path / "a.db")
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    p = plugin(db)
    with ThreadPoolExecutor(1) as pool:
        quiescing = pool.submit(p.quiesce, Deadline.after(60))
        time.sleep(0.2)  # inside its retry loop, contending with the writer
        started = time.monotonic()
        p.interrupt()  # from another thread, as the core calls it
        error = quiescing.exception(10)
    assert time.monotonic() - started < 2  # not the 60 s deadline
    assert isinstance(error, QuiesceError) and "interrupted" in str(error), error
    p.interrupt()  # before the next quiesce begins: that one gives up too
    with pytest.raises(QuiesceError, match="interrupted"):
        p.quiesce(Deadline.after(60))
    p.unquiesce(())
    holder.execute("ROLLBACK")
    holder.close()
    p.quiesce(Deadline.after(5))  # the request ended with the unquiesce
    assert not writable_within(db, 0.1)
    p.unquiesce(())
    assert writable_within(db, 0.5)


def test_lock_ends_when_the_process_holding_it_is_killed(tmp_path: Path) -> None:
    db = make_counter_db(tmp_path / "a.db")
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from freezeframe import Deadline, Table
        from freezeframe_sqlite import SqlitePlugin
        p = SqlitePlugin("db", Table({{"path": {str(db)!r}}}, base_dir=Path("/")))
        p.quiesce(Deadline.after(60))
        print("frozen", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "frozen"
        assert not writable_within(db, 0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert writable_within(db, 2.0)
    finally:
        proc.kill()
        proc.wait()


def test_constructor_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r'"path".*does not exist'):
        plugin(tmp_path / "missing.db")
    with pytest.raises(ConfigError, match=r'"path".*not a file'):
        SqlitePlugin("db", Table({"path": str(tmp_path)}, base_dir=tmp_path))
    with pytest.raises(ConfigError, match='"path": missing'):
        SqlitePlugin("db", Table({}, base_dir=tmp_path))


def test_check_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.db"
    bogus.write_text("these are not the pages you are looking for\n" * 100)
    with pytest.raises(FreezeframeError, match="not a usable SQLite database"):
        plugin(bogus).check()
