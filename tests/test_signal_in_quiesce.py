"""A signal while a SQLite quiesce is still waiting for a writer's lock: no crash, a clean thaw.

The quiesce thread is inside ``execute`` on its connection when SIGTERM/SIGINT
makes the main thread thaw; the thaw must not close that connection under it
(it did: SIGSEGV in about one try in four). The race is timing-dependent, so
it is tried many times against a real ``freezeframe backup`` process.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import freezeframe_testing.components as comps
from freezeframe.catalog import Catalog
from freezeframe_testing.plugin import make_counter_db, writable_within

TRIES = 20

#: Holds the write lock of a database (BEGIN IMMEDIATE) until its stdin closes.
LOCK_HOLDER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
db.execute("UPDATE counter SET n = n + 1 WHERE id = 1")
print("locked", flush=True)
sys.stdin.read()
db.execute("ROLLBACK")
"""


@pytest.fixture
def db(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    return make_counter_db(tmp_path / "data" / "a.db")


@pytest.fixture
def writer(db: Path) -> Iterator[subprocess.Popen[str]]:
    """A real writer holding ``BEGIN IMMEDIATE`` on the database for the whole test."""
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _quiescing(catalog: Path) -> bool:
    """Whether the run going on has journaled that its quiesce begins (earlier tries
    are recorded failed)."""
    if not catalog.exists():
        return False
    try:
        with sqlite3.connect(f"file:{catalog}?mode=ro", uri=True) as db:
            row = db.execute(
                "SELECT count(*) FROM applications JOIN runs USING (run_id)"
                " WHERE runs.status = 'running' AND applications.mode = 'quiescing'"
            ).fetchone()
        return bool(row[0])
    except sqlite3.OperationalError:  # not created yet
        return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_contended_sqlite_quiesce_thaws_without_crashing(
    tmp_path, db, writer, write_profile, signum
):
    profile = write_profile(
        f"""
        [profile]
        name = "contended"
        freeze_timeout = "30s"

        [[application]]
        plugin = "sqlite"
        name = "db"
        path = "{db}"

        [[backup]]
        backend = "slow"
        name = "snap"
        dir = "{tmp_path / "snaps"}"
        """
    )
    catalog = tmp_path / "state" / "contended" / "catalog.sqlite"
    rng = random.Random(signum)
    codes = []
    for _ in range(TRIES):
        proc = comps.start_freezeframe("backup", profile, "--json")
        try:
            end = time.monotonic() + 60
            while not _quiescing(catalog):
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < end, "the quiesce never began"
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.03))  # somewhere in the quiesce's retry loop
            proc.send_signal(signum)
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
            proc.wait()
        codes.append(proc.returncode)
        assert proc.returncode == 128 + signum, (codes, err)
        assert "Traceback" not in err
        result = json.loads(out)
        assert result["status"] == "failed"
        assert f"interrupted by {signal.Signals(signum).name}" in result["error"]
        with Catalog(catalog) as cat:
            recorded = cat.get(result["run_id"])
        assert recorded is not None and recorded.status == "failed"
    assert writer.stdin is not None
    writer.stdin.close()  # the writer lets go: the database is free, nothing of ours holds it
    assert writer.wait(10) == 0
    assert writable_within(db, 2.0)
