"""What the btrfs backend asks the kernel directly: which filesystem and subvolume hold a path.

A few ``stat``/``statfs`` calls and one ioctl per path: cheap enough for the
freeze window.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path

from freezeframe.plugin import (
    FreezeframeError,
)

__all__ = ["SUBVOLUME_ROOT_INO", "Location", "foreign_below", "fs_type", "fs_uuid", "locate"]

#: The inode number of the root folder of every btrfs subvolume (BTRFS_FIRST_FREE_OBJECTID).
SUBVOLUME_ROOT_INO = 256
_BTRFS_MAGIC = 0x9123683E
#: _IOR(0x94, 31, struct btrfs_ioctl_fs_info_args): 1024 bytes, the filesystem UUID at 16..32.
_BTRFS_IOC_FS_INFO = 0x8400941F
_FS_NAMES = {
    _BTRFS_MAGIC: "btrfs",
    0xEF53: "ext4",
    0x58465342: "xfs",
    0x01021994: "tmpfs",
    0x858458F6: "ramfs",
    0x794C7630: "overlayfs",
    0x2FC12FC1: "zfs",
    0x6969: "nfs",
    0xFF534D42: "cifs",
    0x65735546: "fuse",
    0x4D44: "vfat",
}
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def fs_type(path: Path) -> str:
    """The name of the filesystem type that holds ``path`` (``statfs(2)``): "btrfs", "xfs", …"""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    if _libc.statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))
    # f_type is the first field, a long
    magic = ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF
    return _FS_NAMES.get(magic, f"a filesystem of type {magic:#x}")


def fs_uuid(folder: Path) -> str:
    """The UUID of the btrfs filesystem that holds ``folder`` (the same for all its subvolumes)."""
    fd = os.open(folder, os.O_RDONLY | os.O_CLOEXEC)
    try:
        args = bytearray(1024)
        fcntl.ioctl(fd, _BTRFS_IOC_FS_INFO, args, True)
    finally:
        os.close(fd)
    return str(uuid.UUID(bytes=bytes(args[16:32])))


@dataclass(frozen=True)
class Location:
    """Where a path lives on btrfs."""

    path: Path  # as the profile or the application gave it
    real: Path  # the same with every folder above it resolved (the path itself is kept)
    is_dir: bool  # a folder, not a symlink to one
    subvolume: Path  # the root folder of the subvolume that holds it
    relative: Path  # ``real`` inside that subvolume (``.`` when it is the root itself)
    filesystem: str  # the btrfs filesystem's UUID


def locate(path: Path) -> Location:
    """Find the subvolume that holds ``path``; :class:`FreezeframeError` when it is not on btrfs.

    The subvolume's root is the nearest folder at or above the path whose
    inode number is 256. A symlink is kept as a symlink (not followed), like
    every snapshot backend does.
    """
    try:
        st = path.lstat()
    except FileNotFoundError:
        raise FreezeframeError(f"{path} does not exist") from None
    real = path if path == Path(path.anchor) else path.parent.resolve() / path.name
    is_dir = stat.S_ISDIR(st.st_mode)
    start = real if is_dir else real.parent
    kind = fs_type(start)
    if kind != "btrfs":
        raise FreezeframeError(
            f"{path} is on {kind}, not btrfs: a btrfs snapshot cannot hold it "
            "(the clone backend copies from any filesystem)"
        )
    cur, cur_st = start, start.stat()
    while cur_st.st_ino != SUBVOLUME_ROOT_INO:
        parent = cur.parent
        parent_st = parent.stat()
        if parent == cur or parent_st.st_dev != cur_st.st_dev:
            # Inside one subvolume st_dev never changes; a change below inode 256 is a mount.
            raise FreezeframeError(
                f"{path}: {cur} is a mount of a folder inside a btrfs subvolume, not of a "
                "subvolume; btrfs snapshots whole subvolumes: mount the subvolume itself"
            )
        cur, cur_st = parent, parent_st
    return Location(path, real, is_dir, cur, real.relative_to(cur), fs_uuid(cur))


def foreign_below(top: Path) -> Path | None:
    """The first folder below ``top`` that is another subvolume or filesystem, or ``None``.

    A snapshot of ``top``'s subvolume would hold an empty folder there: btrfs
    snapshots do not descend into nested subvolumes, nor into mounts. Only
    folders are looked at (one ``lstat`` each), never files.
    """
    dev = top.stat().st_dev
    for dirpath, dirnames, _ in os.walk(top):
        keep = []
        for name in sorted(dirnames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if not stat.S_ISDIR(st.st_mode):
                continue  # a symlink to a folder: kept as a link, not followed
            if st.st_dev != dev:
                return Path(p)
            keep.append(name)
        dirnames[:] = keep
    return None
