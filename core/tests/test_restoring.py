"""freezeframe.restoring: entries are made below the target only, whatever the target
meanwhile becomes; fix-ups and clean-ups never follow a symlink inside it."""

from __future__ import annotations

import inspect
import os
import stat
import sys
from pathlib import Path

import pytest

from freezeframe import FreezeframeError
from freezeframe.restoring import (
    Meta,
    Target,
    copy_in,
    exists_below,
    remove_below,
    replace_below,
    unlink_below,
)

META = Meta(0o755, os.getuid(), os.getgid(), 10**18)


def write(data: bytes):  # type: ignore[no-untyped-def]
    def fill(fd: int) -> None:
        os.write(fd, data)

    return fill


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside"
    path.mkdir()
    return path


def test_a_folder_swapped_for_a_symlink_mid_restore_is_not_written_through(
    tmp_path: Path, outside: Path
) -> None:
    root = tmp_path / "target"
    with Target(root) as target:
        target.directory("a", META)
        target.file("a/first", META, write(b"1"))
        # Someone who can write the target swaps the folder for a link to elsewhere.
        os.rename(root / "a", root / "a.old")
        (root / "a").symlink_to(outside)
        target.file("a/second", META, write(b"2"))  # into the folder it made, held open
    assert os.listdir(outside) == []
    assert sorted(os.listdir(root / "a.old")) == ["first", "second"]


def test_a_new_folder_behind_a_symlink_is_refused(tmp_path: Path, outside: Path) -> None:
    root = tmp_path / "target"
    with Target(root) as target:
        target.symlink("a", str(outside), META)
        with pytest.raises(FreezeframeError, match="a: a symlink or a file"):
            target.directory("a/b", META)
        with pytest.raises(FreezeframeError, match="a: a symlink or a file"):
            target.file("a/x", META, write(b"x"))
    assert os.listdir(outside) == []
    assert os.readlink(root / "a") == str(outside)


def test_many_folders_keep_few_descriptors_open(tmp_path: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    with Target(tmp_path / "target") as target:
        for i in range(600):
            target.file(f"d{i % 300}/sub/f{i}", META, write(b"x"))
        held = len(os.listdir("/proc/self/fd")) - before
        target.finish()
    assert held <= 140
    assert len(list((tmp_path / "target").rglob("f*"))) == 600
    assert stat.S_IMODE((tmp_path / "target" / "d7" / "sub").stat().st_mode) == 0o755


def test_copy_in_refuses_a_source_folder_that_is_a_symlink(tmp_path: Path, outside: Path) -> None:
    (outside / "data").mkdir()
    (outside / "data" / "secret").write_bytes(b"s")
    view = tmp_path / "view"
    view.mkdir()
    (view / "srv").symlink_to(outside)
    with (
        Target(tmp_path / "target") as target,
        pytest.raises(FreezeframeError, match="srv: a symlink"),
    ):
        copy_in(target, view, "srv/data", "srv/data")
    assert not (tmp_path / "target" / "srv").exists()


def test_remove_below_removes_everything_and_follows_no_link(tmp_path: Path, outside: Path) -> None:
    (outside / "keep").write_bytes(b"k")
    root = tmp_path / "target"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_bytes(b"f")
    (root / "link").symlink_to(outside)
    (root / "a" / "dirlink").symlink_to(outside)

    assert remove_below(root) == []

    assert os.listdir(root) == []
    assert os.listdir(outside) == ["keep"]


def test_fix_ups_refuse_a_symlinked_folder(tmp_path: Path, outside: Path) -> None:
    (outside / "victim").write_bytes(b"v")
    root = tmp_path / "target"
    root.mkdir()
    (root / "srv").symlink_to(outside)

    for fix_up in (
        lambda: unlink_below(root, root / "srv" / "victim"),
        lambda: replace_below(root, root / "srv" / "victim", b"pwned"),
    ):
        with pytest.raises(FreezeframeError, match="symlink"):
            fix_up()
    assert (outside / "victim").read_bytes() == b"v"
    assert not exists_below(root, root / "srv" / "victim")
    assert exists_below(root, root / "srv")


def test_the_target_itself_may_be_a_symlink_the_user_named(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "to").symlink_to(tmp_path / "real")
    with Target(tmp_path / "to") as target:
        target.file("srv/x", META, write(b"x"))
        target.finish()
    assert (tmp_path / "real" / "srv" / "x").read_bytes() == b"x"
    assert remove_below(tmp_path / "to") == []
    assert os.listdir(tmp_path / "real") == []


@pytest.mark.skipif(os.geteuid() != 0, reason="only root makes device nodes")
def test_a_special_file_swapped_before_finish_is_not_chmodded(tmp_path: Path) -> None:
    root = tmp_path / "target"
    mine = tmp_path / "mine"
    mine.write_bytes(b"#!/bin/sh\n")
    with Target(root, preserve_special=True) as target:
        target.file("sh", Meta(0o4755, 0, 0, 0), write(b"#!/bin/sh\n"))
        os.unlink(root / "sh")
        os.link(mine, root / "sh")  # someone with access to the target swaps it
        target.special("fifo", Meta(0o666, 0, 0, 0), stat.S_IFIFO)
        with pytest.raises(FreezeframeError, match="changed while it was restored"):
            target.finish()
    assert stat.S_IMODE(mine.stat().st_mode) != 0o4755


def test_replace_below_leaves_no_new_file_behind_when_the_rename_fails(tmp_path: Path) -> None:
    root = tmp_path / "target"
    (root / "srv" / "data").mkdir(parents=True)
    (root / "srv" / "data" / "kept").write_bytes(b"k")
    with pytest.raises(IsADirectoryError):  # a file cannot be renamed over a folder
        replace_below(root, root / "srv" / "data", b"new")
    assert sorted(os.listdir(root / "srv")) == ["data"]
    assert os.listdir(root / "srv" / "data") == ["kept"]


def test_a_deep_tree_copies_in_with_no_recursion_and_few_folders_open(tmp_path: Path) -> None:
    depth = 300
    view = tmp_path / "view"
    deep = view.joinpath("top", *["d"] * depth)
    deep.mkdir(parents=True)
    for i in range(0, depth + 1, 50):
        view.joinpath("top", *["d"] * i, "f").write_bytes(b"x")
    (view / "top" / "z").write_bytes(b"z")  # copied after the deep branch is climbed out of
    held: list[int] = []

    def count(_bytes: int, _files: int) -> None:  # the view's folders this process holds open
        fds = Path("/proc/self/fd")
        held.append(sum(str(view) in os.readlink(fd) for fd in fds.iterdir() if fd.exists()))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack()) + 100)  # no frame per level, here or in Target
    try:
        with Target(tmp_path / "target") as target:
            copy_in(target, view, "top", "top", progress=count)
            target.finish()
    finally:
        sys.setrecursionlimit(limit)
    assert held and max(held) <= 64 + 4  # not one per level of the 300
    out = tmp_path / "target" / "top"
    assert out.joinpath(*["d"] * depth, "f").read_bytes() == b"x"
    assert (out / "z").read_bytes() == b"z"
    assert len(list(out.rglob("f"))) == depth // 50 + 1
