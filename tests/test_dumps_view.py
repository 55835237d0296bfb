"""A profile with no snapshot stage: its copy stages read the core's dumps view, which
holds only what applications in a logical capture complete after the thaw."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from freezeframe_testing.plugin import (
    make_counter_db,
    read_counter,
    restored,
    run_cli,
    writable_within,
)

PROFILE = """
[profile]
name = "{name}"
state_dir = "{state}"

[[application]]
name = "shop"
plugin = "sqlite"
path = "{db}"
{capture}

[[backup]]
name = "{stage}"
backend = "archive"
dir = "{archives}"
"""


def write_profile(
    tmp_path: Path, db: Path, *, capture: str | None = None, stage: str = "archive"
) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(
        PROFILE.format(
            name="dumpsonly",
            state=tmp_path / "state",
            db=db,
            capture=f'capture = "{capture}"' if capture else "",
            stage=stage,
            archives=tmp_path / "archives",
        )
    )
    return path


@pytest.fixture
def db(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    return make_counter_db(tmp_path / "data" / "shop.db")


def dumps_dir(tmp_path: Path) -> Path:
    return tmp_path / "state" / "dumpsonly" / "dumps"


def test_the_copy_stage_reads_the_dumps_and_the_view_is_released(tmp_path: Path, db: Path) -> None:
    profile = write_profile(tmp_path, db)
    plan = run_cli("plan", profile, "--json").json()
    assert plan["applications"][0]["capture"] == "logical"  # the default without a snapshot
    assert [s["name"] for s in plan["stages"]][:1] == ["dumps"]
    stop, commits = threading.Event(), [0]

    def writer() -> None:
        with sqlite3.connect(db, timeout=30, isolation_level=None) as c:
            while not stop.is_set() and commits[0] < 100_000:
                c.execute("UPDATE counter SET n = n + 1 WHERE id = 1")
                commits[0] += 1
        c.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.2)
        before = read_counter(db)
        r = run_cli("backup", profile, "--json")
    finally:
        stop.set()
        thread.join(60)
    assert r.returncode == 0, r.stderr
    record = r.json()
    assert [s["name"] for s in record["stages"]] == ["dumps", "archive"]
    dumps, archive = record["stages"]
    assert dumps["metadata"]["paths"] == [str(db)] and dumps["files"] == 1
    assert archive["files"] == 1
    (app,) = record["applications"]
    assert app["capture"] == "logical"
    assert app["complete_start"] >= app["thaw_end"]  # the copy was made after the thaw
    # the capture exists once the quiesce returned; the writer was blocked its window
    assert app["quiesce_start"] <= app["captured_at"] <= app["quiesce_end"]
    assert app["writes_blocked_ms"] == app["frozen_ms"] == record["frozen_ms"]
    assert not any(dumps_dir(tmp_path).iterdir())  # released once the archive was made
    r = run_cli("restore", profile, "latest", "--to", tmp_path / "back", "--verify")
    assert r.returncode == 0, r.stderr
    got = read_counter(restored(tmp_path / "back", db))
    assert before <= got <= read_counter(db)
    assert commits[0] > 0


def test_an_application_in_snapshot_mode_is_refused(tmp_path: Path, db: Path) -> None:
    profile = write_profile(tmp_path, db, capture="snapshot")
    r = run_cli("check", profile)
    assert r.returncode == 1
    (line,) = [s for s in r.stderr.splitlines() if s]
    assert "application 'shop' (sqlite) captures 'snapshot', which needs a snapshot" in line
    assert "use capture = 'logical' or a snapshot stage before the copies" in line
    assert run_cli("backup", profile).returncode == 1
    assert writable_within(db, 1)


def test_a_stage_cannot_take_the_name_of_the_view(tmp_path: Path, db: Path) -> None:
    profile = write_profile(tmp_path, db, stage="dumps")
    r = run_cli("check", profile)
    assert r.returncode == 2
    assert "[[backup]] 'dumps': field \"name\": 'dumps' is the name of the view" in r.stderr


def test_a_kill_between_capture_and_completion_leaves_no_view(tmp_path: Path, db: Path) -> None:
    profile = write_profile(tmp_path, db)
    fired = tmp_path / "fired"
    env = {
        "FREEZEFRAME_FAULT": "sigkill@complete.before.shop",
        "FREEZEFRAME_FAULT_FIRED": str(fired),
    }
    r = run_cli("backup", profile, env=env)
    assert r.returncode == -signal.SIGKILL
    assert any(dumps_dir(tmp_path).iterdir())  # the run's view, left by the kill
    assert writable_within(db, 1)
    listed = run_cli("list", profile, "--json")  # the next command reconciles
    assert listed.returncode == 0, listed.stderr
    assert [run["status"] for run in listed.json()] == ["failed"]
    assert not any(dumps_dir(tmp_path).iterdir())


def test_a_mode_that_completes_a_copy_of_the_files_is_not_enough(tmp_path: Path, db: Path) -> None:
    """PostgreSQL's "base-backup" completes a copy of the data directory that a snapshot
    stage made: the dumps view makes none, so only its self-contained "logical" mode fits
    there, which is the default (no server is needed to load the profile)."""
    profile = write_profile(tmp_path, db, capture="logical")
    text = profile.read_text() + (
        '\n[[application]]\nplugin = "postgresql"\nname = "pg"\n'
        'dsn = "host=/nonexistent dbname=postgres"\n'
    )
    profile.write_text(text)
    plan = run_cli("plan", profile, "--json").json()
    assert {a["name"]: a["capture"] for a in plan["applications"]} == {
        "shop": "logical",
        "pg": "logical",
    }
    profile.write_text(text + 'capture = "base-backup"\n')
    r = run_cli("check", profile)
    assert r.returncode == 1
    assert "application 'pg' (postgresql) captures 'base-backup', which needs a snapshot" in (
        r.stderr
    )
    assert "use capture = 'logical' or a snapshot stage before the copies" in r.stderr
