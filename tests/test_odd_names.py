"""Backups of files whose names mean something to a URI, a shell or an option parser.

A live SQLite database at ``shop#1?x.db``, written to while the backup runs,
is backed up through the CLI (clone snapshot, archive copy), restored and
checked: the restored database holds what was committed before the backup,
and no file appeared that nobody asked for (an unescaped ``file:`` URI made
SQLite create and lock an empty ``shop`` beside it and back up a database
without its WAL).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from freezeframe_testing.plugin import (
    integrity,
    make_counter_db,
    read_counter,
    restored,
    run_cli,
    sqlite_clone_profile,
)

#: Commits +1 forever, leaving every frame in the WAL (as a busy server between checkpoints).
WRITER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute("PRAGMA wal_autocheckpoint=0")
while True:
    db.execute("UPDATE counter SET n = n + 1")
"""


def live_counter(path: Path) -> int:
    db = sqlite3.connect(path, timeout=30)  # a plain file name, no URI
    try:
        return int(db.execute("SELECT n FROM counter WHERE id = 1").fetchone()[0])
    finally:
        db.close()


def wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_a_live_sqlite_database_named_with_hash_and_question_mark_is_backed_up_whole(
    tmp_path: Path,
) -> None:
    live = tmp_path / "live #dir? x"
    live.mkdir()
    db = make_counter_db(live / "shop#1?x=%41.db")
    archive = f"""
[[backup]]
backend = "archive"
name = "archive"
dir = {json.dumps(str(tmp_path / "archives"))}
"""
    profile = sqlite_clone_profile(tmp_path, db, name="odd", then=archive)
    made = ["profile.toml", "state", "snaps", "archives"]
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db)])
    try:
        wait_for(lambda: live_counter(db) >= 200)
        assert Path(f"{db}-wal").stat().st_size > 0  # the commits are in the WAL
        before = live_counter(db)
        backup = run_cli("backup", profile, "--json", timeout=300)
        after = live_counter(db)
    finally:
        writer.kill()
        writer.wait()
    assert backup.returncode == 0, backup.stderr
    # Nothing but the database and SQLite's own files beside it, nor anywhere above it.
    assert set(os.listdir(live)) <= {db.name, f"{db.name}-wal", f"{db.name}-shm"}
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, *made])

    target = tmp_path / "restore #to? here"
    r = run_cli("restore", profile, "latest", "--to", target, "--verify", "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    copy = restored(target, db)
    assert os.listdir(copy.parent) == [db.name]
    assert integrity(copy) == ["ok"]
    n = read_counter(copy)
    assert before <= n <= after, f"restored {n}, committed {before} before the backup"
