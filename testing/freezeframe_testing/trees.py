"""A test tree of every kind of file a backup must keep, shared by the backends' tests."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

BIG = (8 << 20) + 4097  # more than one 8 MiB copy_file_range call; several 1 MiB progress reports
SPARSE_HOLE = 4 << 20
OWNER = (12345, 23456)  # ids no account has, so nothing maps them through a name
AS_ROOT = os.geteuid() == 0


@dataclass(frozen=True)
class Tree:
    """A data path built by :func:`build_tree`, with what a backend should count in it."""

    root: Path
    files: int  # regular files, extra hard-link names and symlinks
    bytes: int  # the size of every distinct inode, once
    inodes: int  # distinct regular files


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


def build_tree(root: Path, *, fraction_ns: int = 0) -> Tree:
    """Files of many sizes, nested dirs, symlinks, a hard-link pair, a sparse file, odd modes."""
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
        f.seek(SPARSE_HOLE)
        f.write(b"tail")
    os.link(root / "data.db", root / "nested" / "data-link.db")
    os.symlink("tiny.txt", root / "link-rel")
    os.symlink("../../tiny.txt", root / "nested/a/link-up")
    os.symlink("/nonexistent/freezeframe-target", root / "link-abs")
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
        bytes=sum(map(len, contents.values())) + SPARSE_HOLE + len(b"tail"),
        inodes=len(contents) + 1,
    )
