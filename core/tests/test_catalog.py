"""Tests of catalog.py: the SQLite file of run records (mode 0600, one transaction per save)."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from freezeframe.catalog import Catalog, CatalogError, CatalogReadOnly
from freezeframe.catalog_file import SCHEMA_VERSION
from freezeframe.components import Artifact, Role
from freezeframe.errors import FreezeframeError
from freezeframe.records import ApplicationRecord, RunRecord, RunStatus, StageRecord, iso

T0 = 1_700_000_000.125


def a_run(run_id: str, started_at: float, status: RunStatus = RunStatus.SUCCEEDED) -> RunRecord:
    """A full record: two applications with facts, a snapshot with a view and a copy."""
    return RunRecord(
        run_id=run_id,
        profile="nightly",
        status=status,
        started_at=started_at,
        thaw="after-snapshot",
        finished_at=started_at + 4.5,
        applications=(
            ApplicationRecord(
                "orders",
                "sqlite",
                "freezeframe-sqlite",
                "0.1.0",
                quiesce_start=started_at + 0.1,
                quiesce_end=started_at + 0.2,
                thaw_start=started_at + 0.3,
                thaw_end=started_at + 0.4,
                facts={"journal_mode": "wal", "page_count": 12, "nested": {"lsn": "0/16B3748"}},
                paths=("/srv/shop/orders.db",),
            ),
            ApplicationRecord(
                "ledger",
                "sqlite",
                "freezeframe-sqlite",
                "0.1.0",
                mode="crash-consistent",
                error="could not take the write lock",
            ),
        ),
        stages=(
            StageRecord(
                "snap",
                "clone",
                str(Role.SNAPSHOT),
                status="succeeded",
                started_at=started_at + 0.2,
                finished_at=started_at + 0.25,
                artifact=Artifact(
                    f"/srv/.snapshots/{run_id}",
                    bytes=8192,
                    files=2,
                    view=Path(f"/srv/.snapshots/{run_id}"),
                    metadata={"method": "reflink", "paths": ["/srv/shop/orders.db"]},
                ),
                deleted_at=started_at + 5,
            ),
            StageRecord(
                "arch",
                "archive",
                str(Role.COPY),
                status="succeeded",
                source="snap",
                started_at=started_at + 1,
                finished_at=started_at + 4,
                artifact=Artifact(
                    f"nightly-{run_id}.tar.zst",
                    bytes=1234,
                    files=3,
                    metadata={"sha256": "ab" * 32},
                ),
                verified_at=started_at + 10,
            ),
            StageRecord("offsite", "archive", str(Role.COPY), status="skipped", source="snap"),
        ),
        error=None,
    )


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    with Catalog(tmp_path / "catalog.db") as cat:
        yield cat


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_catalog_files_are_mode_0600_even_with_a_lax_umask(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    old = os.umask(0)  # so that only the catalog's own care can make the files private
    try:
        with Catalog(path) as cat:
            cat.save(a_run("r1", T0))
            assert Path(f"{path}-wal").exists()  # WAL mode: the journal files exist now
            for suffix in ("", "-wal", "-shm"):
                assert mode_of(Path(f"{path}{suffix}")) == 0o600, suffix
    finally:
        os.umask(old)
    assert mode_of(path) == 0o600


def test_existing_catalog_readable_by_others_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    Catalog(path).close()
    path.chmod(0o644)
    with Catalog(path):
        assert mode_of(path) == 0o600


def test_save_then_get_round_trips_the_whole_record(catalog: Catalog) -> None:
    run = a_run("20240310T120000-abcd", T0)
    catalog.save(run, pid=4242)
    loaded = catalog.get(run.run_id)
    assert loaded == run
    assert loaded is not None
    assert loaded.applications[0].facts["nested"] == {"lsn": "0/16B3748"}
    snap = loaded.stage("snap")
    assert snap is not None and snap.artifact is not None
    assert snap.artifact.view == Path("/srv/.snapshots/20240310T120000-abcd")
    assert snap.artifact.metadata == {"method": "reflink", "paths": ["/srv/shop/orders.db"]}
    assert catalog.pid_of(run.run_id) == 4242


def test_saving_again_replaces_the_record(catalog: Catalog) -> None:
    running = RunRecord("r1", "nightly", RunStatus.RUNNING, T0, "after-snapshot")
    catalog.save(running, pid=7)
    assert catalog.get("r1") == running
    done = a_run("r1", T0, RunStatus.FAILED)
    catalog.save(done)
    assert catalog.get("r1") == done
    assert [r.run_id for r in catalog.runs()] == ["r1"]
    assert catalog.pid_of("r1") == 7  # a save without pid keeps the journaled one


def test_runs_are_newest_first_and_filter_by_status(catalog: Catalog) -> None:
    catalog.save(a_run("b-middle", T0 + 60))
    catalog.save(a_run("c-newest", T0 + 120, RunStatus.FAILED))
    catalog.save(a_run("a-oldest", T0))
    assert [r.run_id for r in catalog.runs()] == ["c-newest", "b-middle", "a-oldest"]
    assert [r.run_id for r in catalog.runs(status=RunStatus.SUCCEEDED)] == ["b-middle", "a-oldest"]
    assert [r.run_id for r in catalog.runs(status=RunStatus.RUNNING)] == []


def test_latest_is_the_newest_succeeded_run(catalog: Catalog) -> None:
    assert catalog.get("latest") is None
    catalog.save(a_run("r-old-ok", T0))
    catalog.save(a_run("r-mid-ok", T0 + 60))
    catalog.save(a_run("r-new-failed", T0 + 120, RunStatus.FAILED))
    catalog.save(a_run("r-newest-running", T0 + 180, RunStatus.RUNNING))
    latest = catalog.get("latest")
    assert latest is not None
    assert latest.run_id == "r-mid-ok"


def test_unique_prefix_finds_the_run_and_ambiguous_prefix_says_so(catalog: Catalog) -> None:
    catalog.save(a_run("20240310-aaaa", T0))
    catalog.save(a_run("20240310-abbb", T0 + 1))
    catalog.save(a_run("20240311-cccc", T0 + 2))
    found = catalog.get("20240311")
    assert found is not None and found.run_id == "20240311-cccc"
    found = catalog.get("20240310-aa")
    assert found is not None and found.run_id == "20240310-aaaa"
    with pytest.raises(FreezeframeError, match=r"ambiguous: 2 runs start with it"):
        catalog.get("20240310-a")
    with pytest.raises(FreezeframeError, match=r"ambiguous: 3 runs"):
        catalog.get("2024")
    assert catalog.get("nope") is None


def test_an_id_that_is_a_prefix_of_another_still_finds_itself(catalog: Catalog) -> None:
    catalog.save(a_run("run1", T0))
    catalog.save(a_run("run10", T0 + 1))
    found = catalog.get("run1")
    assert found is not None and found.run_id == "run1"


def test_errors_are_kept_oldest_first(catalog: Catalog) -> None:
    catalog.save(a_run("r1", T0, RunStatus.FAILED))
    catalog.add_error("r1", T0 + 2, "thaw", "unquiesce failed")
    catalog.add_error("r1", T0 + 1, "stage arch", "disk full")
    assert catalog.errors("r1") == [
        {"at": iso(T0 + 1), "source": "stage arch", "message": "disk full"},
        {"at": iso(T0 + 2), "source": "thaw", "message": "unquiesce failed"},
    ]
    assert catalog.errors("other") == []


def test_records_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    run = a_run("r1", T0)
    with Catalog(path) as cat:
        cat.save(run)
    with Catalog(path) as cat:
        assert cat.get("r1") == run
        cat.save(a_run("r2", T0 + 1))
    with Catalog(path) as cat:
        assert [r.run_id for r in cat.runs()] == ["r2", "r1"]


def test_a_record_written_by_another_process_is_read_back(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    script = textwrap.dedent(
        f"""
        from freezeframe.catalog import Catalog
        from freezeframe.records import RunRecord, RunStatus
        cat = Catalog(__import__("pathlib").Path({str(path)!r}))
        cat.save(RunRecord("child", "nightly", RunStatus.SUCCEEDED, {T0}, "after-backup"), pid=1)
        cat.close()
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert mode_of(path) == 0o600
    with Catalog(path) as cat:
        run = cat.get("latest")
    assert run == RunRecord("child", "nightly", RunStatus.SUCCEEDED, T0, "after-backup")


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    path.write_bytes(b"this is not sqlite " * 100)
    with pytest.raises(FreezeframeError, match="cannot open the catalog"):
        Catalog(path)


def test_a_catalog_from_a_newer_freezeframe_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    Catalog(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(FreezeframeError, match="catalog schema 99 is newer"):
        Catalog(path)


def test_a_catalog_of_schema_1_is_read_as_it_is_and_upgraded_when_written(
    tmp_path: Path,
) -> None:
    """Schema 1 had no capture or completion columns: its runs read as "snapshot" (and
    schema 2 had no captured_at or writes_blocked_ms, schema 3 no paths: read as None)."""
    path = tmp_path / "catalog.db"
    with Catalog(path) as cat:
        cat.save(a_run("r1", T0))
    with sqlite3.connect(path) as db:  # back to what schema 1 was
        for column in (
            "capture",
            "complete_start",
            "complete_end",
            "captured_at",
            "writes_blocked_ms",
            "paths",
        ):
            db.execute(f"ALTER TABLE applications DROP COLUMN {column}")
        db.execute("PRAGMA user_version=1")
    db.close()
    with Catalog(path, read_only=True) as cat:
        old = cat.get("r1")
    assert old is not None and [a.capture for a in old.applications] == ["snapshot"] * 2
    assert [a.paths for a in old.applications] == [None, None]  # restore --app asks the plug-in
    logical = ApplicationRecord(
        "orders",
        "sqlite",
        "freezeframe-sqlite",
        "0.1.0",
        capture="logical",
        complete_start=T0 + 1,
        complete_end=T0 + 2,
        captured_at=T0 + 0.5,
        writes_blocked_ms=3.25,
        paths=("/srv/shop/orders.db", "/srv/shop/orders.db-copy"),
    )
    with Catalog(path) as cat:
        cat.save(replace(a_run("r2", T0 + 10), applications=(logical,)))
        new = cat.get("r2")
        assert cat.get("r1") == old
    assert new is not None and new.applications == (logical,)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()


# -- read-only, damaged, truncated ----------------------------------------------------


def test_a_new_catalog_is_linked_into_place_whole(tmp_path: Path) -> None:
    with Catalog(tmp_path / "catalog.db") as cat:
        assert cat.history_lost is None
    # built under another name: a 0-byte catalog is never one of ours being born
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog.db"]
    assert (tmp_path / "catalog.db").stat().st_size > 0


@pytest.mark.parametrize("name", ["shop#1", "a?b", "100%", "sp ace"])
def test_read_only_reads_the_file_named_even_with_uri_characters(tmp_path: Path, name: str) -> None:
    folder = tmp_path / name
    folder.mkdir()
    with Catalog(folder / "catalog.db") as cat:
        cat.save(a_run("r1", T0))
    (tmp_path / "shop").mkdir()  # what an unescaped "file:.../shop#1/..." would name instead
    with Catalog(folder / "catalog.db", read_only=True) as cat:
        assert [r.run_id for r in cat.runs()] == ["r1"]


def test_read_only_creates_nothing_and_refuses_writes(tmp_path: Path) -> None:
    with Catalog(tmp_path / "absent.db", read_only=True) as cat:
        assert cat.runs() == [] and cat.get("latest") is None
        with pytest.raises(CatalogReadOnly, match="read-only"):
            cat.save(a_run("r1", T0))
    assert list(tmp_path.iterdir()) == []
    with Catalog(tmp_path / "c.db") as cat:
        cat.save(a_run("r1", T0))
    with Catalog(tmp_path / "c.db", read_only=True) as cat:
        with pytest.raises(CatalogReadOnly):
            cat.mark_verified("r1", "arch", T0)
        assert cat.get("r1") == a_run("r1", T0)


def test_a_damaged_catalog_is_refused_in_one_line_and_never_written(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    with Catalog(path) as cat:
        for i in range(40):  # a few pages of runs
            cat.save(a_run(f"r{i:02}", T0 + i))
    with open(path, "r+b") as f:
        f.seek(2 * 4096)
        f.write(b"\xa5" * 4096)
    damaged = path.read_bytes()
    with pytest.raises(CatalogError) as info:
        Catalog(path)
    assert str(path) in str(info.value) and "damaged" in str(info.value)
    assert "\n" not in str(info.value)
    assert path.read_bytes() == damaged
    with open(path, "r+b") as f:  # every page but the header: no table can be read
        f.seek(4096)
        f.write(b"\xa5" * (len(damaged) - 4096))
    damaged = path.read_bytes()
    with Catalog(path, read_only=True) as cat, pytest.raises(CatalogError) as info:
        cat.runs()  # what a damaged page holds cannot be read either: one line, not a traceback
    assert "damaged" in str(info.value) and "\n" not in str(info.value)
    assert path.read_bytes() == damaged


def test_a_truncated_catalog_is_marked_until_the_marker_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    with Catalog(path) as cat:
        cat.save(a_run("r1", T0))
    path.write_bytes(b"")
    with Catalog(path, read_only=True) as cat:  # read-only: said, not written
        assert cat.history_lost == f"{path} is empty (0 bytes)" and cat.runs() == []
    assert not cat.lost_marker.exists()
    with Catalog(path) as cat:
        assert cat.history_lost is not None and str(path) in cat.history_lost
        cat.save(a_run("r2", T0 + 1))
    marker = tmp_path / "catalog.db.lost"
    assert cat.lost_marker == marker and marker.exists()
    with Catalog(path) as cat:  # no longer 0 bytes, but still missing its history
        assert cat.history_lost is not None and [r.run_id for r in cat.runs()] == ["r2"]
    marker.unlink()
    with Catalog(path) as cat:
        assert cat.history_lost is None


def test_read_only_in_a_read_only_folder(tmp_path: Path, read_only_mount) -> None:
    folder = tmp_path / "state"
    folder.mkdir()
    path = folder / "catalog.db"
    with Catalog(path) as cat:
        cat.save(a_run("r1", T0))
    # a writer still open: r2 is only in the write-ahead log
    writer = Catalog(path)
    writer._db.execute("PRAGMA wal_autocheckpoint=0")
    writer.save(a_run("r2", T0 + 1))
    copy = tmp_path / "copy"
    copy.mkdir()
    for suffix in ("", "-wal", "-shm"):
        (copy / f"catalog.db{suffix}").write_bytes(Path(f"{path}{suffix}").read_bytes())
    writer.close()
    read_only_mount(copy)
    with Catalog(copy / "catalog.db", read_only=True) as cat:  # the WAL's index is there
        assert [r.run_id for r in cat.runs()] == ["r2", "r1"]
    with pytest.raises(FreezeframeError, match=r"Read-only file system|readonly|read-only"):
        Catalog(copy / "catalog.db")

    # a copy without the index: the write-ahead log cannot be read; said in one line
    bare = tmp_path / "bare"
    bare.mkdir()
    for suffix in ("", "-wal"):
        (bare / f"catalog.db{suffix}").write_bytes((copy / f"catalog.db{suffix}").read_bytes())
    read_only_mount(bare)
    with pytest.raises(CatalogError, match=r"write-ahead log .* holds recent runs"):
        Catalog(bare / "catalog.db", read_only=True)

    # a copy of a cleanly closed catalog: the main file is all there is (immutable)
    clean = tmp_path / "clean"
    clean.mkdir()
    with Catalog(path) as cat:
        pass
    assert not Path(f"{path}-wal").exists()
    (clean / "catalog.db").write_bytes(path.read_bytes())
    read_only_mount(clean)
    with Catalog(clean / "catalog.db", read_only=True) as cat:
        assert [r.run_id for r in cat.runs()] == ["r2", "r1"]
    assert sorted(p.name for p in clean.iterdir()) == ["catalog.db"]
