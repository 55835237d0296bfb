"""make_startable() never follows a symlink inside the restored tree."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from freezeframe import FreezeframeError
from freezeframe_postgresql._restored import make_startable


def data_dir(root: Path) -> Path:
    path = root / "var" / "lib" / "postgresql" / "main"
    (path / "pg_tblspc").mkdir(parents=True)
    (path / "PG_VERSION").write_text("15\n")
    path.chmod(0o700)
    return path


def test_a_wal_folder_reached_through_a_symlink_is_refused_not_chmodded(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "outside"
    (outside / "pg_wal").mkdir(parents=True)
    outside.joinpath("pg_wal").chmod(0o755)
    root = tmp_path / "restore"
    pgdata = data_dir(root)
    (root / "wal").symlink_to(outside)  # the backup held a link where /wal was
    (pgdata / "pg_wal").symlink_to("/wal/pg_wal")

    with pytest.raises(FreezeframeError, match="symlink"):
        make_startable(pgdata, root)

    assert stat.S_IMODE((outside / "pg_wal").stat().st_mode) == 0o755


def test_a_tablespace_map_that_is_a_symlink_is_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("16384 /srv/tblspc\n")
    root = tmp_path / "restore"
    (root / "srv" / "tblspc").mkdir(parents=True)
    pgdata = data_dir(root)
    (pgdata / "tablespace_map").symlink_to(victim)

    with pytest.raises(FreezeframeError, match="tablespace_map: a symlink"):
        make_startable(pgdata, root)

    assert victim.read_text() == "16384 /srv/tblspc\n"


def test_links_and_the_map_point_at_the_restored_folders(tmp_path: Path) -> None:
    root = tmp_path / "restore"
    (root / "srv" / "tblspc").mkdir(parents=True)
    (root / "wal").mkdir(mode=0o755)
    pgdata = data_dir(root)
    (pgdata / "pg_wal").symlink_to("/wal")
    (pgdata / "pg_tblspc" / "16384").symlink_to("/srv/tblspc")
    (pgdata / "tablespace_map").write_text("16384 /srv/tblspc\n")
    (pgdata / "postmaster.pid").write_text("1\n")

    changed = make_startable(pgdata, root)

    assert os.readlink(pgdata / "pg_wal") == str(root / "wal")
    assert os.readlink(pgdata / "pg_tblspc" / "16384") == str(root / "srv" / "tblspc")
    assert (pgdata / "tablespace_map").read_text() == f"16384 {root}/srv/tblspc\n"
    assert not (pgdata / "postmaster.pid").exists()
    assert stat.S_IMODE((root / "wal").stat().st_mode) == 0o700
    assert len(changed) == 4
