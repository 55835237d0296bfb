"""fsfreeze on a filesystem mounted at a path the kernel escapes in its mount table."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from freezeframe import Deadline, Table
from freezeframe_fsfreeze import FsfreezePlugin
from freezeframe_testing.plugin import LoopFs, finishes_within, writer_process

#: /proc/self/mounts writes a space, a tab, a newline and a backslash as \040 \011 \012 \134.
ODD = "-mnt #1?%41 a\tb\nc\\d ünï"


@pytest.fixture
def odd_mount(loop_fs, tmp_path: Path) -> Iterator[Path]:
    fs: LoopFs = loop_fs("xfs", 300)
    where = tmp_path / ODD
    where.mkdir()
    r = subprocess.run(["mount", fs.device, str(where)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    try:
        yield where
    finally:
        subprocess.run(["fsfreeze", "--unfreeze", str(where)], capture_output=True)
        if subprocess.run(["umount", str(where)], capture_output=True).returncode:
            subprocess.run(["umount", "--lazy", str(where)], capture_output=True)


def test_a_mount_at_an_odd_path_is_frozen_thawed_and_described(odd_mount: Path) -> None:
    p = FsfreezePlugin("fs", Table({"mountpoint": str(odd_mount)}, base_dir=odd_mount))
    p.check()
    p.quiesce(Deadline.after(10))
    writer = writer_process(odd_mount / "late.txt")
    try:
        assert not finishes_within(writer, 0.5), "a write went through a frozen filesystem"
    finally:
        p.unquiesce(())
    assert finishes_within(writer, 5)
    assert p.describe() == {"mountpoint": str(odd_mount), "fstype": "xfs"}
