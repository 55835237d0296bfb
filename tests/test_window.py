"""The freeze window predicted before anything freezes: ``check`` refuses a ``clone``
stage that would copy more than ``max_copy_in_window`` inside it, and ``plan`` says what
each snapshot stage will do there. Real filesystems on loop devices: ext4 cannot
reflink, XFS can.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from freezeframe.config import format_size
from freezeframe.engine import Engine
from freezeframe.plugin import hookimpl
from freezeframe.profile import load_profile
from freezeframe.registry import Registry
from freezeframe_sqlite import SqlitePlugin
from freezeframe_testing.plugin import LoopFs, make_counter_db, run_cli, sqlite_clone_profile

#: Above the default max_copy_in_window (64 MiB).
BIG_DB_MIB = 72


def big_db(fs: LoopFs) -> Path:
    """A WAL SQLite database of a little more than 72 MiB on ``fs``."""
    (fs.mountpoint / "data").mkdir()
    db = make_counter_db(fs.mountpoint / "data" / "shop.db")
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE blobs (b BLOB)")
        c.executemany("INSERT INTO blobs VALUES (zeroblob(?))", [(1 << 20,)] * BIG_DB_MIB)
    c.close()
    with sqlite3.connect(db) as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()
    return db


def profile_on(fs: LoopFs, db: Path, *, capture: str | None = None, limit: str = "") -> Path:
    folder = fs.mountpoint / "profile"
    folder.mkdir(exist_ok=True)
    path = sqlite_clone_profile(folder, db, name="window", capture=capture)
    if limit:
        path.write_text(path.read_text().replace("[profile]\n", f"[profile]\n{limit}\n", 1))
    return path


def test_check_refuses_a_plain_copy_over_the_limit_naming_the_logical_capture(
    loop_fs: Callable[..., LoopFs],
) -> None:
    fs = loop_fs("ext4")
    db = big_db(fs)
    r = run_cli("check", profile_on(fs, db, capture="snapshot"))
    assert r.returncode == 1
    line = r.stderr.strip()
    assert "\n" not in line, line
    assert f"stage 'snap' (clone) would copy {format_size(db.stat().st_size)} inside" in line
    assert "more than max_copy_in_window = 64.0 MiB" in line
    assert "capture = \"logical\" for application 'shop'" in line
    assert "btrfs" in line  # the atomic snapshot backend installed

    # what it names works: the logical capture copies nothing inside the window
    assert run_cli("check", profile_on(fs, db, capture="logical")).returncode == 0
    # and so does a larger limit
    r = run_cli(
        "check", profile_on(fs, db, capture="snapshot", limit='max_copy_in_window = "1GiB"')
    )
    assert r.returncode == 0, r.stderr


class SnapshotFirst(SqlitePlugin):
    """SQLite listing its snapshot mode first whatever the database's journal mode."""

    kind = "sqlite-snapshot-first"
    logical_first_in_wal = False


class SnapshotFirstPlugins:
    @staticmethod
    @hookimpl
    def freezeframe_register_applications(register: Callable[[type[Any]], None]) -> None:
        register(SnapshotFirst)


def test_the_default_capture_is_the_one_that_copies_nothing_inside_the_window(
    loop_fs: Callable[..., LoopFs], registry_with: Callable[..., Registry]
) -> None:
    """Left to the default, an application the clone would copy (no reflink) is captured
    in its completing mode where that is consistent, and stays in snapshot mode where it
    is not, which check then refuses. SQLite lists its logical mode first for a database
    in WAL mode, so the settling is seen with a plug-in that lists snapshot first."""
    fs = loop_fs("ext4")
    db = big_db(fs)
    r = run_cli("backup", profile_on(fs, db), "--json")
    assert r.returncode == 0, r.stderr
    assert [a["capture"] for a in r.json()["applications"]] == ["logical"]
    snapshot_first = profile_on(fs, db)
    snapshot_first.write_text(
        snapshot_first.read_text().replace('"sqlite"', '"sqlite-snapshot-first"')
    )
    registry = registry_with(SnapshotFirstPlugins())

    def settled() -> tuple[list[str], str]:
        engine = Engine(load_profile(snapshot_first, registry), registry)
        return list(engine.check()), engine.profile.applications[0].capture

    assert settled() == ([], "logical")
    with sqlite3.connect(db) as c:
        c.execute("PRAGMA journal_mode=DELETE")
    c.close()
    problems, capture = settled()  # logical needs WAL: it stays, and the copy is refused
    assert capture == "snapshot"
    assert len(problems) == 1 and "would copy" in problems[0], problems
    r = run_cli("check", profile_on(fs, db))  # the real plug-in, as it lists its modes
    assert r.returncode == 1
    assert "would copy" in r.stderr and 'capture = "logical"' in r.stderr


def test_check_passes_where_the_same_data_reflinks(loop_fs: Callable[..., LoopFs]) -> None:
    fs = loop_fs("xfs")
    db = big_db(fs)
    r = run_cli("check", profile_on(fs, db, capture="snapshot"))
    assert r.returncode == 0, r.stderr
    r = run_cli("plan", profile_on(fs, db, capture="snapshot"), "--json")
    window = r.json()["stages"][0]["window"]
    assert (window["how"], window["bytes_copied"]) == ("reflink", 0)


def test_plan_shows_the_capture_and_what_the_window_copies(
    loop_fs: Callable[..., LoopFs],
) -> None:
    fs = loop_fs("ext4")
    db = big_db(fs)
    size = db.stat().st_size
    r = run_cli("plan", profile_on(fs, db, capture="snapshot"), "--json")
    assert r.returncode == 0, r.stderr
    plan = r.json()
    assert plan["max_copy_in_window"] == 64 << 20
    assert [a["capture"] for a in plan["applications"]] == ["snapshot"]
    window = plan["stages"][0]["window"]
    assert (window["how"], window["bytes_copied"]) == ("copy", size)
    text = run_cli("plan", profile_on(fs, db, capture="snapshot")).stdout
    assert "shop (sqlite): capture snapshot" in text
    assert f"copies {format_size(size)} inside the window (over max_copy_in_window)" in text

    plan = run_cli("plan", profile_on(fs, db), "--json").json()  # the default: logical
    assert [a["capture"] for a in plan["applications"]] == ["logical"]
    (stage,) = plan["stages"]  # the window holds only the capture: the clone comes after
    assert stage["in_freeze_window"] is False and stage["window"] is None


def test_check_refuses_a_completion_that_a_btrfs_snapshot_cannot_hold(
    loop_fs: Callable[..., LoopFs], tmp_path: Path
) -> None:
    """A logical capture completes into the snapshot at its own path: on btrfs that path
    must be on the snapshotted filesystem. Refused by check, before anything freezes,
    rather than by the stage inside the window."""
    fs = loop_fs("btrfs")
    (tmp_path / "data").mkdir()
    db = make_counter_db(tmp_path / "data" / "shop.db")  # not on the btrfs filesystem
    profile = sqlite_clone_profile(tmp_path, db, name="elsewhere", capture="logical")
    profile.write_text(
        profile.read_text()
        .replace('backend = "clone"', 'backend = "btrfs"')
        .replace(str(tmp_path / "snaps"), str(fs.mountpoint / "snaps"))
    )
    r = run_cli("check", profile)
    assert r.returncode == 1
    (line,) = [s for s in r.stderr.splitlines() if s]
    assert f"stage 'snap': {db}, which an application writes into the snapshot" in line
    assert "is not on the btrfs filesystem of dir" in line
