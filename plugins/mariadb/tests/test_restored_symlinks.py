"""prepare() of a restored datadir never follows a symlink inside the restored tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from freezeframe import FreezeframeError
from freezeframe_mariadb._layout import Layout
from freezeframe_mariadb._restored import prepare

DATADIR = Path("/var/lib/mysql")


def restored_datadir(root: Path) -> Path:
    datadir = root / DATADIR.relative_to("/")
    datadir.mkdir(parents=True)
    return datadir


def test_a_binlog_index_that_is_a_symlink_is_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("/var/lib/mysql/binlog.000001\n")
    root = tmp_path / "restore"
    (restored_datadir(root) / "binlog.index").symlink_to(victim)
    layout = Layout(DATADIR, log_bin_basename=DATADIR / "binlog")

    with pytest.raises(FreezeframeError, match=r"app.*binlog\.index: a symlink"):
        prepare(layout, root, "app")

    assert victim.read_text() == "/var/lib/mysql/binlog.000001\n"


def test_a_pid_file_is_not_removed_through_a_symlinked_folder(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "mysqld.pid").write_text("1\n")
    root = tmp_path / "restore"
    restored_datadir(root)
    (root / "var" / "lib" / "mysql" / "run").symlink_to(outside)
    layout = Layout(DATADIR, runtime_files=(DATADIR / "run" / "mysqld.pid",))

    with pytest.raises(FreezeframeError, match="symlink"):
        prepare(layout, root, "app")

    assert (outside / "mysqld.pid").exists()


def test_the_binlog_index_is_made_relative(tmp_path: Path) -> None:
    root = tmp_path / "restore"
    index = restored_datadir(root) / "binlog.index"
    index.write_text("/var/lib/mysql/binlog.000001\n")
    index.chmod(0o640)

    prepare(Layout(DATADIR, log_bin_basename=DATADIR / "binlog"), root, "app")

    assert index.read_text() == "./binlog.000001\n"
    assert index.stat().st_mode & 0o777 == 0o640
