"""``freezeframe verify`` reads every byte of a kept snapshot (clone on XFS, btrfs), says in
one line what was damaged, and retention never keeps a damaged snapshot as the newest
verified one. Real filesystems on loop devices, the real CLI in a subprocess.

Each damage (a flipped byte, a zeroed file, a removed one, an added one, a forged
manifest) is done to a view the real engine made and sealed; on main, verify passed them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from freezeframe.catalog import Catalog
from freezeframe.tools import run_tool
from freezeframe_testing.damage import DAMAGES, Damage, flip_byte, writable
from freezeframe_testing.plugin import LoopFs, make_counter_db, require_tool, restored, run_cli


class Shop:
    """A SQLite database on a loop filesystem, and a profile snapshotting it beside it."""

    def __init__(self, fs: LoopFs, backend: str, write_profile: Callable[..., Path]) -> None:
        if backend == "btrfs":
            run_tool([require_tool("btrfs"), "subvolume", "create", str(fs.mountpoint / "shop")])
        else:
            (fs.mountpoint / "shop").mkdir()
        self.data = fs.mountpoint / "shop"
        (self.data / "conf").mkdir()
        (self.data / "conf" / "shop.conf").write_text("[shop]\ncurrency = EUR\n")
        self.db = make_counter_db(self.data / "orders.db")
        self.snaps = fs.mountpoint / "snaps"
        self.backend = backend
        self.profile = write_profile(f"""
            [profile]
            name = "shop"
            freeze_timeout = "10s"

            [[application]]
            plugin = "sqlite"
            name = "orders"
            path = "{self.db}"

            [[backup]]
            backend = "{backend}"
            name = "snap"
            dir = "{self.snaps}"
            paths = ["{self.data}"]
            keep = {{ last = 1 }}
        """)
        self.catalog = self.profile.parent / "state" / "shop" / "catalog.sqlite"

    def backup(self) -> str:
        return str(self.backup_record()["run_id"])

    def backup_record(self) -> dict[str, Any]:
        with sqlite3.connect(self.db) as conn:
            conn.execute("UPDATE counter SET n = n + 1")
        conn.close()
        r = run_cli("backup", self.profile, "--json")
        assert r.returncode == 0, r.stderr
        record: dict[str, Any] = r.json()
        return record

    def image(self, run_id: str) -> tuple[Path, Path]:
        """The database's image in the run's view, and the folder to make writable for it."""
        view = self.snaps / run_id
        if self.backend == "btrfs":
            return view / "shop" / "orders.db", view / "shop"
        return restored(view, self.db), view

    def damage(self, run_id: str, how: Damage = flip_byte) -> str:
        image, snapshot = self.image(run_id)
        with writable(snapshot):
            return how(self.snaps / run_id, image, self.snaps / f"{run_id}.manifest")

    def verified_at(self, run_id: str) -> float | None:
        with Catalog(self.catalog) as catalog:
            rec = catalog.get(run_id)
        assert rec is not None
        return rec.stages[0].verified_at


@pytest.fixture(params=["clone", "btrfs"])
def shop(
    request: pytest.FixtureRequest,
    loop_fs: Callable[..., LoopFs],
    write_profile: Callable[..., Path],
) -> Shop:
    backend = str(request.param)
    fs = loop_fs("btrfs" if backend == "btrfs" else "xfs")  # clone on XFS: reflinks
    return Shop(fs, backend, write_profile)


def test_a_view_is_sealed_after_the_thaw_and_verifies(shop: Shop) -> None:
    record = shop.backup_record()
    run_id, stage = record["run_id"], record["stages"][0]
    if shop.backend == "clone":
        assert stage["metadata"]["method"] == "cloned"  # XFS reflinks: milliseconds frozen
    manifest = shop.snaps / f"{run_id}.manifest"
    assert stage["metadata"]["manifest"]["file"] == str(manifest)
    thawed = datetime.fromisoformat(record["applications"][0]["thaw_end"]).timestamp()
    assert manifest.stat().st_mtime >= thawed - 0.01  # written after the thaw

    r = run_cli("verify", shop.profile, run_id, "--json")

    assert r.returncode == 0, r.stderr
    out = r.json()
    assert (out["ok"], out["problems"], out["notes"]) == (True, [], {})
    assert shop.verified_at(run_id) is not None


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_a_damaged_view_fails_verify_naming_what_was_damaged(shop: Shop, damage: Damage) -> None:
    run_id = shop.backup()
    expected = shop.damage(run_id, damage)

    r = run_cli("verify", shop.profile, run_id, "--json")

    assert r.returncode == 1
    problems = r.json()["problems"]
    assert len(problems) == 1 and expected in problems[0], problems
    assert shop.verified_at(run_id) is None


def test_verify_of_a_flipped_byte_exits_1_with_one_line_naming_the_file(shop: Shop) -> None:
    """The regression of issue 10 (3): on main this exits 0 and says ok."""
    run_id = shop.backup()
    r = run_cli("verify", shop.profile, run_id)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [run_id, "stage", "snap", "ok"]

    changed = shop.damage(run_id)
    r = run_cli("verify", shop.profile, run_id)

    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("freezeframe: error: verify failed: ")
    assert changed in lines[0] and "Traceback" not in r.stderr
    assert f"{run_id}  stage snap" in r.stdout and "FAILED" in r.stdout
    assert shop.verified_at(run_id) is None


@pytest.mark.parametrize("verified_before", [False, True], ids=["never-verified", "verified"])
def test_retention_does_not_keep_a_damaged_snapshot_as_the_newest_verified(
    shop: Shop, verified_before: bool
) -> None:
    """keep = { last = 1 } plus "the newest verified": a damaged one must not be that."""
    first = shop.backup()
    if verified_before:  # verified while sound, damaged later: the next verify takes it back
        assert run_cli("verify", shop.profile, first).returncode == 0
        assert shop.verified_at(first) is not None
    shop.damage(first)
    assert run_cli("verify", shop.profile, first).returncode == 1
    assert shop.verified_at(first) is None

    second = shop.backup()

    assert not (shop.snaps / first).exists()  # retention dropped the damaged snapshot
    assert not (shop.snaps / f"{first}.manifest").exists()
    assert (shop.snaps / second).is_dir()


def test_a_snapshot_made_before_manifests_verifies_with_a_note(shop: Shop) -> None:
    run_id = shop.backup()
    with Catalog(shop.catalog) as catalog:  # as a catalog written before this release holds it
        rec = catalog.get(run_id)
        assert rec is not None and rec.stages[0].artifact is not None
        art = rec.stages[0].artifact
        old = replace(art, metadata={k: v for k, v in art.metadata.items() if k != "manifest"})
        catalog.save(replace(rec, stages=(replace(rec.stages[0], artifact=old),)))

    r = run_cli("verify", shop.profile, run_id)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        f"{run_id}  stage snap             ok, but contents not checked: the snapshot was "
        "made before freezeframe recorded digests"
    ]
    assert shop.verified_at(run_id) is None  # not read, so not kept as the newest verified

    r = run_cli("verify", shop.profile, run_id, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["notes"] == {
        "snap": "contents not checked: the snapshot was made before freezeframe recorded digests"
    }
