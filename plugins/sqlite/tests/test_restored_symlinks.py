"""prepare_restored never follows a symlink inside the restored tree (a crafted backup
may hold one where a folder was)."""

from __future__ import annotations

from pathlib import Path

import pytest

from freezeframe import FreezeframeError, Table
from freezeframe_sqlite import SqlitePlugin
from freezeframe_testing.plugin import make_counter_db


def test_stale_wal_files_are_not_removed_through_a_symlinked_folder(tmp_path: Path) -> None:
    (tmp_path / "live" / "shop").mkdir(parents=True)
    db = make_counter_db(tmp_path / "live" / "shop" / "orders.db")
    plugin = SqlitePlugin("orders", Table({"path": str(db)}, base_dir=tmp_path))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "orders.db-wal").write_bytes(b"someone else's WAL")
    root = tmp_path / "restore"
    folder = root / db.parent.relative_to("/")
    folder.parent.mkdir(parents=True)
    folder.symlink_to(outside)  # the backup held a symlink where the folder was

    with pytest.raises(FreezeframeError, match=r"orders.*symlink"):
        plugin.prepare_restored(root)

    assert (outside / "orders.db-wal").read_bytes() == b"someone else's WAL"


def test_stale_wal_files_are_removed_from_the_restored_folder(tmp_path: Path) -> None:
    (tmp_path / "live").mkdir()
    db = make_counter_db(tmp_path / "live" / "orders.db")
    plugin = SqlitePlugin("orders", Table({"path": str(db)}, base_dir=tmp_path))
    root = tmp_path / "restore"
    restored = root / db.relative_to("/")
    restored.parent.mkdir(parents=True)
    restored.write_bytes(db.read_bytes())
    for suffix in ("-wal", "-shm"):
        Path(f"{restored}{suffix}").write_bytes(b"stale")

    plugin.prepare_restored(root)

    assert sorted(p.name for p in restored.parent.iterdir()) == ["orders.db"]
