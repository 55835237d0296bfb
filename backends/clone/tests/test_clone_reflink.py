"""The ``clone`` backend where the filesystem can reflink (XFS, btrfs) and where it cannot (ext4).

Real filesystems on loop devices. Sharing is checked where it is decided: the
physical extents that ``filefrag -v`` (FIEMAP) reports for a file and for its
snapshot are the same blocks, flagged shared; a plain copy on ext4 has
blocks of its own, which shows the check can fail.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from freezeframe import Artifact, StageContext, Table
from freezeframe.tools import run_tool
from freezeframe_clone import CloneBackend
from freezeframe_testing.plugin import LoopFs, require_tool

BIG = 8 << 20
#: `filefrag -v` extent lines: "0:  0.. 2047:  33024.. 35071:  2048:  [expected:]  flags"
_EXTENT = re.compile(
    r"^\s*\d+:\s*(\d+)\.\.\s*\d+:\s*(\d+)\.\.\s*\d+:\s*(\d+):(?:\s+\d+:)?\s*(\S*)\s*$"
)


def extents(path: Path) -> list[tuple[int, int, int, str]]:
    """``(logical block, physical block, length, flags)`` of every extent of ``path``."""
    out = run_tool([require_tool("filefrag"), "-v", str(path)], timeout=60).stdout
    found = []
    for line in out.splitlines():
        if m := _EXTENT.match(line):
            found.append((int(m[1]), int(m[2]), int(m[3]), m[4]))
    return found


def make_data(root: Path) -> tuple[Path, int]:
    """A big file (synced, so its blocks are allocated), small ones and a nested folder."""
    (root / "nested" / "deeper").mkdir(parents=True)
    big = root / "big.bin"
    with open(big, "wb") as f:
        f.write(os.urandom(BIG))
        os.fsync(f.fileno())
    (root / "small.txt").write_text("small\n")
    (root / "nested" / "a.conf").write_text("a = 1\n")
    (root / "nested" / "deeper" / "b.conf").write_text("b = 2\n")
    return big, 4


def snapshot(fs: LoopFs, data: Path) -> Artifact:
    dir = fs.mountpoint / "snaps"
    backend = CloneBackend("snap", Table({"dir": str(dir)}, base_dir=fs.mountpoint))
    backend.check()
    return backend.run(StageContext("r1", "test", "snap", (data,)))


@pytest.mark.parametrize("fstype", ["xfs", "btrfs"])
def test_on_a_reflink_filesystem_every_file_is_cloned_onto_the_same_blocks(
    loop_fs: Callable[..., LoopFs], fstype: str
) -> None:
    fs = loop_fs(fstype)
    data = fs.mountpoint / "data"
    big, files = make_data(data)
    assert not any("shared" in e[3] for e in extents(big)), "nothing shares it yet"

    art = snapshot(fs, data)
    assert art.metadata["method"] == "cloned"
    assert art.metadata["cloned_files"] == art.files == files
    assert art.metadata["copied_files"] == 0
    copy = art.view / big.relative_to("/")  # type: ignore[operator]
    assert copy.read_bytes() == big.read_bytes()
    original, cloned = extents(big), extents(copy)
    assert original, "filefrag must report the extents"
    assert [e[:3] for e in cloned] == [e[:3] for e in original], "the clone has blocks of its own"
    assert all("shared" in e[3] for e in cloned + extents(big))


def test_on_ext4_every_file_is_copied_onto_blocks_of_its_own(
    loop_fs: Callable[..., LoopFs],
) -> None:
    fs = loop_fs("ext4")
    data = fs.mountpoint / "data"
    big, files = make_data(data)

    art = snapshot(fs, data)
    assert art.metadata["method"] == "copied"
    assert art.metadata["copied_files"] == art.files == files
    assert art.metadata["cloned_files"] == 0
    copy = art.view / big.relative_to("/")  # type: ignore[operator]
    assert copy.read_bytes() == big.read_bytes()
    os.sync()  # give the copy its blocks (ext4 allocates them at writeback)
    blocks = (
        {(start, start + length) for _, start, length, _ in extents(big) if length},
        {(start, start + length) for _, start, length, _ in extents(copy) if length},
    )
    assert all(blocks), "filefrag must report the extents"
    assert not any(a < d and c < b for a, b in blocks[0] for c, d in blocks[1]), (
        "a plain copy must not share a block with its source"
    )
    assert not any("shared" in e[3] for e in extents(copy))


def clone_in(fs: LoopFs) -> CloneBackend:
    return CloneBackend(
        "snap", Table({"dir": str(fs.mountpoint / "snaps")}, base_dir=fs.mountpoint)
    )


def leftovers(fs: LoopFs, data: Path) -> set[Path]:
    return {p for p in fs.mountpoint.rglob("*") if not p.is_relative_to(data)}


@pytest.mark.parametrize("fstype", ["xfs", "btrfs"])
def test_the_estimate_says_reflink_where_the_run_reflinks(
    loop_fs: Callable[..., LoopFs], fstype: str
) -> None:
    fs = loop_fs(fstype)
    data = fs.mountpoint / "data"
    make_data(data)
    backend = clone_in(fs)
    backend.check()
    before = leftovers(fs, data)
    estimate = backend.window_estimate((data,))
    assert (estimate.how, estimate.bytes_copied) == ("reflink", 0)
    assert leftovers(fs, data) == before, "the probe leaves nothing behind"
    assert snapshot(fs, data).metadata["method"] == "cloned"


def test_the_estimate_counts_the_bytes_ext4_copies(loop_fs: Callable[..., LoopFs]) -> None:
    fs = loop_fs("ext4")
    data = fs.mountpoint / "data"
    make_data(data)
    os.link(data / "big.bin", data / "nested" / "big-again.bin")  # copied once
    backend = clone_in(fs)
    estimate = backend.window_estimate((data,))  # before check(): dir does not exist yet
    art = snapshot(fs, data)
    assert art.metadata["method"] == "copied"
    assert estimate.how == "copy"
    assert estimate.bytes_copied == art.bytes == BIG + 18, "every byte the run copied"
    assert str(backend.dir) in estimate.note


def test_the_estimate_says_copy_across_filesystems(loop_fs: Callable[..., LoopFs]) -> None:
    """XFS reflinks, but not from another XFS filesystem: the probe is made across them."""
    a, b = loop_fs("xfs"), loop_fs("xfs")
    data = a.mountpoint / "data"
    make_data(data)
    backend = clone_in(b)
    backend.check()
    estimate = backend.window_estimate((data,))
    assert (estimate.how, estimate.bytes_copied) == ("copy", BIG + 18)
    art = backend.run(StageContext("r1", "test", "snap", (data,)))
    assert art.metadata["method"] == "copied"
