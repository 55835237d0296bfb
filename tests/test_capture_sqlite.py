"""``capture = "logical"`` for SQLite, end to end: what a failed completion and a kill
between the capture and the completion leave, and what ``check`` refuses.

The consistency of logical captures under a live writer is proven in
tests/test_consistency_sqlite.py.
"""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

import pytest

from freezeframe import RunStatus
from freezeframe._faults import CAPTURE_POINTS
from freezeframe.engine import Engine
from freezeframe.plugin import under
from freezeframe.profile import load_profile
from freezeframe.registry import Registry
from freezeframe.tools import run_tool
from freezeframe_testing.plugin import (
    make_counter_db,
    read_counter,
    require_tool,
    restored,
    run_cli,
    sqlite_clone_profile,
    writable_within,
)

ARCHIVE = """
[[backup]]
backend = "archive"
name = "archive"
dir = "{dir}"
"""


def bump(db: Path) -> None:
    with sqlite3.connect(db) as c:
        c.execute("UPDATE counter SET n = n + 1 WHERE id = 1")
    c.close()


def no_snapshot_held(db: Path) -> bool:
    """Whether every WAL frame can be checkpointed and the WAL truncated to 0 bytes:
    not so while any reader holds a snapshot that needs one of them."""
    bump(db)  # a frame that a held snapshot would predate
    c = sqlite3.connect(db, isolation_level=None)
    try:
        busy, _, _ = c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return busy == 0 and Path(f"{db}-wal").stat().st_size == 0
    finally:
        c.close()


@pytest.fixture
def logical(tmp_path: Path) -> tuple[Path, Path]:
    """A WAL counter database and a profile backing it up in logical mode (clone + archive)."""
    (tmp_path / "data").mkdir()
    db = make_counter_db(tmp_path / "data" / "shop.db")
    then = ARCHIVE.format(dir=tmp_path / "archives")
    return sqlite_clone_profile(tmp_path, db, name="logical", then=then, capture="logical"), db


def test_a_logical_backup_restores_the_database(tmp_path: Path, logical) -> None:
    profile, db = logical
    bump(db)
    r = run_cli("backup", profile, "--json")
    assert r.returncode == 0, r.stderr
    record = r.json()
    assert [a["capture"] for a in record["applications"]] == ["logical"]
    r = run_cli("restore", profile, "latest", "--to", tmp_path / "back", "--verify")
    assert r.returncode == 0, r.stderr
    assert read_counter(restored(tmp_path / "back", db)) == 1
    # the copy was made whole by SQLite: nothing of a journal beside it
    assert not list((tmp_path / "back").rglob("shop.db-*"))
    shown = run_cli("show", profile, "latest")
    assert "[capture logical]" in shown.stdout, shown.stdout
    assert ". complete shop (capture logical)" in run_cli("plan", profile).stdout
    plan = run_cli("plan", profile, "--json").json()
    assert plan["applications"][0]["capture"] == "logical"
    assert plan["data_paths"] == []  # nothing for the window to copy


def test_a_kept_logical_snapshot_is_sealed_with_its_copy_and_verifies(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    db = make_counter_db(tmp_path / "data" / "shop.db")
    profile = sqlite_clone_profile(tmp_path, db, name="kept", capture="logical")
    r = run_cli("backup", profile, "--json")
    assert r.returncode == 0, r.stderr
    (snap,) = r.json()["stages"]
    assert snap["metadata"]["paths"] == [str(db)] and snap["files"] == 1
    view = Path(snap["view"])
    assert sorted(p.name for p in under(view, db).parent.iterdir()) == ["shop.db"]
    assert run_cli("verify", profile).returncode == 0
    under(view, db).write_bytes(under(view, db).read_bytes()[:-1] + b"x")
    r = run_cli("verify", profile)  # the seal covered the completed copy
    assert r.returncode == 1 and "shop.db changed" in r.stderr, r.stderr


def test_a_failed_completion_fails_the_run_and_leaves_nothing(
    tmp_path: Path, logical, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    profile, db = logical
    monkeypatch.setenv("FREEZEFRAME_FAULT", "raise@complete.after.shop")
    result = Engine(load_profile(profile, registry), registry).backup()
    assert result.record.status == RunStatus.FAILED
    assert "application 'shop': completion failed: InjectedFault" in (result.record.error or "")
    assert not any((tmp_path / "snaps").iterdir())
    assert not (tmp_path / "archives").exists() or not any((tmp_path / "archives").iterdir())
    assert writable_within(db, 1)
    assert no_snapshot_held(db)


def test_sigterm_during_the_completion_releases_the_snapshot_before_the_run_ends(
    tmp_path: Path, logical, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In this very process, so the snapshot is seen released by freezeframe itself, not
    by the end of its process."""
    profile, db = logical
    monkeypatch.setenv("FREEZEFRAME_FAULT", "sigterm@complete.before.shop")
    result = Engine(load_profile(profile, registry), registry).backup()
    assert result.interrupted_by == signal.SIGTERM
    assert result.record.status == RunStatus.FAILED
    assert no_snapshot_held(db)
    assert not any((tmp_path / "snaps").iterdir())


EXIT = {"raise": 1, "sigterm": 128 + signal.SIGTERM, "sigkill": -signal.SIGKILL}


@pytest.mark.parametrize("action", sorted(EXIT))
@pytest.mark.parametrize("where", [p.format(app="shop") for p in CAPTURE_POINTS])
def test_a_real_backup_stopped_around_the_completion(
    tmp_path: Path, logical, action: str, where: str
) -> None:
    """Each failpoint of the completion, each way: between the capture and the completion
    (``complete.before``) the kill leaves the read snapshot to the process's end."""
    profile, db = logical
    fired = tmp_path / "fired"
    env = {"FREEZEFRAME_FAULT": f"{action}@{where}", "FREEZEFRAME_FAULT_FIRED": str(fired)}
    r = run_cli("backup", profile, env=env)
    assert fired.read_text().split() == [f"{action}@{where}#1"]
    assert r.returncode == EXIT[action], r.stderr
    # the write lock and the read snapshot are gone, with freezeframe or by its release
    assert writable_within(db, 1)
    assert no_snapshot_held(db)
    listed = run_cli("list", profile, "--json")  # the next command reconciles a killed run
    assert listed.returncode == 0, listed.stderr
    assert [run["status"] for run in listed.json()] == ["failed"]
    assert not any((tmp_path / "snaps").iterdir())
    assert not (tmp_path / "archives").exists() or not any((tmp_path / "archives").iterdir())


def test_check_refuses_logical_on_a_database_not_in_wal_mode(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    db = make_counter_db(tmp_path / "data" / "shop.db", wal=False)
    profile = sqlite_clone_profile(tmp_path, db, name="rollback", capture="logical")
    r = run_cli("check", profile)
    assert r.returncode == 2  # the profile asks for what the database cannot do
    lines = [line for line in r.stderr.splitlines() if "WAL" in line]
    assert len(lines) == 1 and 'use capture = "snapshot"' in lines[0], r.stderr


def test_a_capture_mode_the_plugin_lacks_is_one_line(tmp_path: Path, logical) -> None:
    profile, _ = logical
    profile.write_text(profile.read_text().replace('"logical"', '"instant"'))
    r = run_cli("check", profile)
    assert r.returncode == 2
    assert "field \"capture\": 'instant' is not a capture mode of plug-in" in r.stderr
    assert "(it has: logical, snapshot)" in r.stderr  # a WAL database lists logical first
    kinds = {c["kind"]: c for c in run_cli("plugins", "--json").json()["components"]}
    assert kinds["sqlite"]["capture_modes"] == ["snapshot", "logical"]
    assert kinds["clone"]["takes_completions"] is True
    assert kinds["btrfs"]["takes_completions"] is True


# -- btrfs: snapshots taken writable, completed, sealed read-only ----------------------------


@pytest.fixture
def logical_btrfs(tmp_path: Path, loop_fs) -> tuple[Path, Path, Path]:
    """A WAL counter database on a btrfs subvolume, and a profile backing it up in logical
    mode into btrfs snapshots (kept: no copy stage); returns the profile, the database
    and the snapshots' folder."""
    btrfs = require_tool("btrfs")
    fs = loop_fs("btrfs")
    shop = fs.mountpoint / "shop"
    run_tool([btrfs, "subvolume", "create", str(shop)], timeout=60)
    db = make_counter_db(shop / "shop.db")
    profile = sqlite_clone_profile(tmp_path, db, name="logical", capture="logical")
    snaps = fs.mountpoint / "snaps"
    text = profile.read_text().replace('backend = "clone"', 'backend = "btrfs"')
    profile.write_text(text.replace(json.dumps(str(tmp_path / "snaps")), json.dumps(str(snaps))))
    return profile, db, snaps


def read_only(snapshot: Path) -> str:
    out = run_tool(
        [require_tool("btrfs"), "property", "get", "-ts", str(snapshot), "ro"], timeout=60
    )
    return out.stdout.strip()


def test_a_logical_btrfs_snapshot_is_completed_then_sealed_read_only(
    tmp_path: Path, logical_btrfs
) -> None:
    profile, db, snaps = logical_btrfs
    bump(db)
    r = run_cli("backup", profile, "--json")
    assert r.returncode == 0, r.stderr
    (snap,) = r.json()["stages"]
    image = snaps / r.json()["run_id"] / "shop"
    assert read_only(image) == "ro=true"
    # the completed copy replaced the live file's image; no journal of the live one beside it
    assert sorted(p.name for p in image.iterdir()) == ["shop.db"]
    assert snap["metadata"]["completed"] == {"shop": [str(db)]}
    assert run_cli("verify", profile).returncode == 0
    r = run_cli("restore", profile, "latest", "--to", tmp_path / "back", "--verify")
    assert r.returncode == 0, r.stderr
    assert read_counter(restored(tmp_path / "back", db)) == 1

    run_tool(
        [require_tool("btrfs"), "property", "set", "-ts", str(image), "ro", "false"], timeout=60
    )
    r = run_cli("verify", profile)
    assert r.returncode == 1
    lines = [line for line in r.stderr.splitlines() if "sealed" in line]
    assert len(lines) == 1 and "shop is not sealed read-only (ro=false)" in lines[0], r.stderr


def test_a_failed_completion_leaves_no_btrfs_snapshot(
    logical_btrfs, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    profile, db, snaps = logical_btrfs
    monkeypatch.setenv("FREEZEFRAME_FAULT", "raise@complete.after.shop")
    result = Engine(load_profile(profile, registry), registry).backup()
    assert result.record.status == RunStatus.FAILED
    assert "application 'shop': completion failed: InjectedFault" in (result.record.error or "")
    assert not any(snaps.iterdir())
    assert writable_within(db, 1)
    assert no_snapshot_held(db)


def test_sigkill_before_a_btrfs_completion_leaves_nothing_after_the_next_command(
    logical_btrfs,
) -> None:
    profile, db, snaps = logical_btrfs
    r = run_cli("backup", profile, env={"FREEZEFRAME_FAULT": "sigkill@complete.before.shop"})
    assert r.returncode == -9, r.stderr
    assert [p.name for p in snaps.iterdir()]  # the writable snapshot the run left
    listed = run_cli("list", profile, "--json")  # the next command reconciles the run
    assert listed.returncode == 0, listed.stderr
    assert [run["status"] for run in listed.json()] == ["failed"]
    assert not any(snaps.iterdir())
    assert no_snapshot_held(db)


def test_the_record_says_when_each_capture_is_of_and_how_long_writes_were_blocked(
    tmp_path: Path,
) -> None:
    """In snapshot mode the data is of the end of the snapshot stage (frozen until then);
    in logical mode, of the end of the quiesce. The group's window spans both."""
    (tmp_path / "data").mkdir()
    db = make_counter_db(tmp_path / "data" / "shop.db")
    other = make_counter_db(tmp_path / "data" / "ledger.db")
    profile = sqlite_clone_profile(tmp_path, db, name="both", capture="snapshot")
    profile.write_text(
        profile.read_text()
        + f'\n[[application]]\nplugin = "sqlite"\nname = "ledger"\npath = "{other}"\n'
        + 'capture = "logical"\n'
    )
    r = run_cli("backup", profile, "--json")
    assert r.returncode == 0, r.stderr
    record = r.json()
    shop, ledger = record["applications"]
    (snap,) = record["stages"]
    assert shop["capture"] == "snapshot" and ledger["capture"] == "logical"
    assert shop["captured_at"] == snap["finished_at"]
    assert shop["quiesce_end"] <= shop["captured_at"] <= shop["thaw_start"]
    assert ledger["quiesce_start"] <= ledger["captured_at"] <= ledger["quiesce_end"]
    for app in (shop, ledger):
        assert app["writes_blocked_ms"] == app["frozen_ms"] > 0
        assert app["frozen_ms"] <= record["frozen_ms"]
    shown = run_cli("show", profile, "latest").stdout
    assert f"group frozen {record['frozen_ms']:.1f} ms" in shown, shown
