"""Tests of fsutil.py: private directories, directory fsync, syncfs once per filesystem."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from freezeframe.fsutil import ensure_private_dir, fsync_dir, syncfs


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ensure_private_dir_creates_parents_with_mode_0700(tmp_path: Path) -> None:
    target = tmp_path / "state" / "freezeframe" / "nightly"
    old = os.umask(0)
    try:
        assert ensure_private_dir(target) == target
    finally:
        os.umask(old)
    assert target.is_dir()
    assert mode_of(target) == 0o700
    assert mode_of(target.parent) == mode_of(target.parent.parent) == 0o700  # made here too


def test_ensure_private_dir_leaves_existing_parents_alone(tmp_path: Path) -> None:
    shared = tmp_path / "var-lib"
    shared.mkdir()
    shared.chmod(0o755)
    ensure_private_dir(shared / "freezeframe" / "nightly")
    assert mode_of(shared) == 0o755
    assert mode_of(shared / "freezeframe") == 0o700


def test_ensure_private_dir_tightens_an_existing_dir(tmp_path: Path) -> None:
    target = tmp_path / "shared"
    target.mkdir(mode=0o755)
    target.chmod(0o755)
    ensure_private_dir(target)
    assert mode_of(target) == 0o700


def test_fsync_dir_works_on_a_directory_and_refuses_a_file(tmp_path: Path) -> None:
    fsync_dir(tmp_path)
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(NotADirectoryError):
        fsync_dir(f)


def test_syncfs_once_per_filesystem_and_skips_missing_paths(tmp_path: Path) -> None:
    f = tmp_path / "a.db"
    f.write_text("x")
    sub = tmp_path / "sub"
    sub.mkdir()
    # All on one filesystem: one syncfs; a path that does not exist is skipped.
    assert syncfs([f, sub, tmp_path, tmp_path / "gone" / "x.db"]) == 1
    assert syncfs([]) == 0
    assert syncfs([tmp_path / "gone" / "x.db"]) == 0


def test_syncfs_counts_distinct_filesystems(tmp_path: Path) -> None:
    other = Path("/proc/self")  # procfs: always a filesystem of its own on Linux
    assert other.stat().st_dev != tmp_path.stat().st_dev
    assert syncfs([tmp_path, other, tmp_path / "x"]) == 2
