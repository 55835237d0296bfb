"""A full disk during the copy stage: the run fails cleanly and earlier backups stay intact."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from freezeframe_testing.plugin import (
    integrity,
    make_counter_db,
    restored,
    run_cli,
    writable_within,
)


def test_disk_full_in_the_archive_stage(tmp_path: Path, loop_fs, write_profile) -> None:
    small = loop_fs("ext4", 24)  # the archive's disk
    db = make_counter_db(tmp_path / "db.sqlite")
    profile = write_profile(f"""
        [profile]
        name = "full"

        [[application]]
        plugin = "sqlite"
        name = "db"
        path = "{db}"

        [[backup]]
        backend = "clone"
        name = "snap"
        dir = "{tmp_path / "snaps"}"

        [[backup]]
        backend = "archive"
        name = "archive"
        dir = "{small.mountpoint / "archives"}"
        level = 1
    """)
    first = run_cli("backup", profile, "--json")
    assert first.returncode == 0, first.stderr
    good = first.json()["run_id"]

    with sqlite3.connect(db) as conn:  # 40 MiB that zstd cannot shrink
        conn.execute("CREATE TABLE blob (b BLOB)")
        conn.executemany("INSERT INTO blob VALUES (?)", [(os.urandom(1 << 20),) for _ in range(40)])
    conn.close()

    r = run_cli("backup", profile, "--json")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    out = r.json()
    assert out["status"] == "failed"
    assert "archive" in out["error"] and "No space left on device" in out["error"]
    assert writable_within(db, 1.0)  # thawed long before the copy failed
    assert [p.name for p in (small.mountpoint / "archives").iterdir()] == [
        f"full-{good}.tar.zst"
    ]  # no partial archive, the earlier one untouched
    assert not any((tmp_path / "snaps").iterdir())  # the failed run's snapshot is gone

    r = run_cli("restore", profile, good, "--to", tmp_path / "r", "--verify")
    assert r.returncode == 0, r.stderr
    assert integrity(restored(tmp_path / "r", db)) == ["ok"]
    assert run_cli("verify", profile, good).returncode == 0
