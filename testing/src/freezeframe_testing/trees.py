"""A test tree of every kind of file a backup must keep, and how to compare two copies of it.

Shared by the backends' tests and the contract tests (:mod:`freezeframe_testing.contract`).
"""

from __future__ import annotations

import hashlib
import os
import random
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from freezeframe.plugin import run_tool

BIG = (8 << 20) + 4097  # more than one 8 MiB copy_file_range call; several 1 MiB progress reports
SPARSE_HOLE = 4 << 20
OWNER = (12345, 23456)  # ids no account has, so nothing maps them through a name
AS_ROOT = os.geteuid() == 0
XATTR = ("user.freezeframe", b"kept")


@dataclass(frozen=True)
class Tree:
    """A data path built by :func:`build_tree`, with what a backend should count in it."""

    root: Path
    files: int  # regular files, extra hard-link names and symlinks
    bytes: int  # the size of every distinct inode, once
    inodes: int  # distinct regular files
    symlinks: int = 3
    linked_bytes: int = 0  # the size of the file with a second name (read twice by name)
    hole: int = SPARSE_HOLE  # the sparse file's hole: zeros that take no space


def walk(root: Path) -> list[Path]:
    """Every entry below ``root`` (symlinks not followed), sorted."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        out += [Path(dirpath, n) for n in (*dirnames, *filenames)]
    return sorted(out)


def set_times(root: Path, fraction_ns: int) -> None:
    """Give every entry of ``root`` and ``root`` its own mtime, ``fraction_ns`` past a second."""
    for i, p in enumerate([root, *walk(root)]):
        t = (1_600_000_000 + 1000 * i) * 10**9 + fraction_ns
        os.utime(p, ns=(t, t), follow_symlinks=False)


def build_tree(
    root: Path, *, fraction_ns: int = 0, xattrs: bool = False, hole: int = SPARSE_HOLE
) -> Tree:
    """Files of many sizes, nested dirs, symlinks, a hard-link pair, a sparse file of a
    ``hole`` of zeros and a tail, odd modes and (as root) owners, and distinct mtimes
    ``fraction_ns`` past a second; with ``xattrs``, extended attributes on a file and a folder."""
    rng = random.Random(1)  # noqa: S311 - reproducible test data, not a secret
    contents = {
        "empty.bin": b"",
        "tiny.txt": b"abc",
        "big.bin": rng.randbytes(BIG),
        "data.db": rng.randbytes(5000),
        "secret.key": b"do not share\n",
        "nested/run.sh": b"#!/bin/sh\necho hi\n",
        "nested/a/b/deep.txt": b"deep\n" * 100,
    }
    for rel, data in contents.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    with open(root / "sparse.img", "wb") as f:
        f.seek(hole)
        f.write(b"tail")
    os.link(root / "data.db", root / "nested" / "data-link.db")
    os.symlink("tiny.txt", root / "link-rel")
    os.symlink("../../tiny.txt", root / "nested/a/link-up")
    os.symlink("/nonexistent/freezeframe-target", root / "link-abs")
    if xattrs:
        os.setxattr(root / "data.db", *XATTR)
        os.setxattr(root / "nested", "user.dir", b"on a folder")
    os.chmod(root / "secret.key", 0o600)
    os.chmod(root / "nested/run.sh", 0o750)  # noqa: S103 - odd modes are what is under test
    os.chmod(root / "nested/a", 0o700)
    os.chmod(root / "nested", 0o750)  # noqa: S103 - odd modes are what is under test
    if AS_ROOT:
        os.chown(root / "secret.key", *OWNER)
        os.chown(root / "nested", *OWNER)
        os.chown(root / "link-rel", *OWNER, follow_symlinks=False)
    set_times(root, fraction_ns)
    return Tree(
        root,
        files=len(contents) + 1 + 1 + 3,  # + sparse.img, data-link.db, three symlinks
        bytes=sum(map(len, contents.values())) + hole + len(b"tail"),
        inodes=len(contents) + 1,
        linked_bytes=len(contents["data.db"]),
        hole=hole,
    )


def state(
    root: Path, *, link_times: bool = True, xattrs: bool = False
) -> dict[str, dict[str, Any]]:
    """What a faithful copy of ``root`` must reproduce, entry by entry: type, mode, owner,
    mtime (of symlinks too unless ``link_times=False``), content, link target, extended
    attributes (with ``xattrs``). ``same_file_as`` names the first entry sharing the inode,
    so a hard link that became two files shows up as a difference."""
    first: dict[tuple[int, int], str] = {}
    out: dict[str, dict[str, Any]] = {}
    for p in [root, *walk(root)]:
        st = p.lstat()
        rel = p.relative_to(root).as_posix()
        entry: dict[str, Any] = {
            "type": stat.S_IFMT(st.st_mode),
            "mode": oct(stat.S_IMODE(st.st_mode)),
            "owner": (st.st_uid, st.st_gid),
        }
        if link_times or not stat.S_ISLNK(st.st_mode):
            entry["mtime_ns"] = st.st_mtime_ns
        if stat.S_ISLNK(st.st_mode):
            entry["target"] = os.readlink(p)
        elif xattrs:
            entry["xattrs"] = {n: os.getxattr(p, n) for n in sorted(os.listxattr(p))}
        if stat.S_ISREG(st.st_mode):
            entry["size"] = st.st_size
            entry["sha256"] = _sha256(p)
            entry["same_file_as"] = first.setdefault((st.st_dev, st.st_ino), rel)
        out[rel] = entry
    return out


def contents(root: Path) -> dict[str, str]:
    """Each entry below ``root`` and what it holds (a file's SHA-256, a symlink's target,
    ``"folder"``): what any backend must restore, whatever metadata it keeps."""
    out: dict[str, str] = {}
    for p in walk(root):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_dir():
            out[rel] = "folder"
        else:
            out[rel] = _sha256(p)
    return out


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def du(folder: Path) -> int:
    """The size of every file below ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def flip_middle_byte(path: Path) -> None:
    """Invert the middle byte of ``path`` (made writable for its owner first)."""
    path.chmod(path.stat().st_mode | 0o200)
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def copy_view(src: Path, dst: Path) -> None:
    """Another snapshot of the same data, with new inodes (``cp -a``: links, xattrs, times)."""
    from freezeframe_testing.plugin import require_tool

    run_tool([require_tool("cp"), "-a", str(src), str(dst)], timeout=60)
