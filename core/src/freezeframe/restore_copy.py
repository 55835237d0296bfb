"""Copying a snapshot's tree into a restore target: :func:`copy_in` (clone, btrfs).

A snapshot view is read the way a restore target is written: whoever can write
the view may have swapped a folder for a symlink, so the source is opened from
a descriptor of its top folder one component at a time with ``O_NOFOLLOW``
(:mod:`freezeframe.nofollow`), and every entry goes through a
:class:`~freezeframe.restore_target.Target`. Regular files are reflinked where
the filesystem can (:func:`freezeframe.copying.copy_contents`).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from freezeframe.copying import CopyStats, copy_contents
from freezeframe.errors import FreezeframeError
from freezeframe.nofollow import DIR, Parts, lexists, parts_of, refused, show, walk
from freezeframe.restore_target import KINDS, Meta, Target

__all__ = ["copy_in"]


#: Source folders :func:`copy_in` keeps open on its way down; those above are reopened.
_SOURCE_FOLDERS = 64


def copy_in(
    target: Target,
    top: Path,
    image: str,
    name: str,
    *,
    links: dict[tuple[int, int], str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    missing_ok: bool = False,
) -> bool:
    """Copy the entry ``image`` (relative to folder ``top``) and all below it into ``target``
    as ``name``; regular files by reflink where the filesystem can. With ``missing_ok``, an
    ``image`` that does not exist makes nothing and returns ``False``. The folders above
    ``name`` get the metadata of those above ``image`` (aligned from the entry up, down
    to the first component of ``image``); any higher ones are made 0755.

    The source is read the way the target is written: ``top`` must be a folder (not a
    symlink) and every component below it is opened with ``O_NOFOLLOW``, so a snapshot
    whose folders were swapped for symlinks is refused, not followed. Pass one ``links``
    dict to several calls to keep hard links between their trees.
    """
    links = {} if links is None else links
    stats = CopyStats()

    def tick(n: int) -> None:
        if progress:
            progress(n, 0)

    def one(folder: int, entry: str, dest: str) -> os.stat_result | None:
        """Copy ``entry`` of ``folder`` to ``dest`` unless it is a folder; a folder's stat is
        returned for :func:`_copy_folder` to copy."""
        st = os.stat(entry, dir_fd=folder, follow_symlinks=False)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            return st
        if stat.S_ISREG(mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in links:
                target.hardlink(dest, links[key])
            else:
                # O_NONBLOCK: an entry swapped for a FIFO since the stat must not hang us.
                flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
                src = os.open(entry, flags, dir_fd=folder)
                try:
                    fst = os.fstat(src)
                    if not stat.S_ISREG(fst.st_mode):
                        raise FreezeframeError(f"{top}/{image}: {entry} changed while read")
                    target.file(
                        dest,
                        Meta.of(fst),
                        lambda out: copy_contents(src, out, fst.st_size, stats, tick),
                    )
                finally:
                    os.close(src)
                links[key] = dest
        elif stat.S_ISLNK(mode):
            target.symlink(dest, os.readlink(entry, dir_fd=folder), Meta.of(st))
        elif stat.S_IFMT(mode) in KINDS:
            target.special(dest, Meta.of(st), stat.S_IFMT(mode), st.st_rdev)
        else:
            return None  # a socket: its server makes it again
        if progress:
            progress(0, 1)
        return None

    image_parts, name_parts = parts_of(image), parts_of(name)
    try:
        folder = os.open(top, DIR)
    except OSError as e:
        raise refused(str(top), e) from None
    try:
        # The folders above the entry take the metadata of the folders above its image
        # (the originals' when the snapshot was taken), as far up as the image has them.
        above: list[Meta] = []
        for i, part in enumerate(image_parts[:-1]):
            try:
                above.append(Meta.of(os.stat(part, dir_fd=folder, follow_symlinks=False)))
                new = os.open(part, DIR, dir_fd=folder)
            except FileNotFoundError:
                if missing_ok:
                    return False
                raise
            except OSError as e:
                raise refused(f"{top}: {show(image_parts[: i + 1])}", e) from None
            os.close(folder)
            folder = new
        if missing_ok and not lexists(folder, image_parts[-1]):
            return False
        shift = len(image_parts) - len(name_parts)
        for k in range(1, len(name_parts)):
            if k + shift >= 1:
                target.directory(show(name_parts[:k]), above[k + shift - 1])
        st = one(folder, image_parts[-1], name)
        if st is not None:
            where = f"{top}/{show(image_parts[:-1])}" if len(image_parts) > 1 else str(top)
            _copy_folder(target, folder, where, image_parts[-1], name, st, one)
        return True
    finally:
        os.close(folder)


@dataclass
class _Folder:
    """A source folder :func:`copy_in` is inside: its components below the entry's parent,
    where it goes, its ``(st_dev, st_ino)`` (to know it again when reopened), the names
    left to copy, and its descriptor while held open."""

    parts: Parts
    dest: str
    key: tuple[int, int]
    names: Iterator[str]
    fd: int | None


def _copy_folder(
    target: Target,
    base: int,
    where: str,
    entry: str,
    dest: str,
    st: os.stat_result,
    one: Callable[[int, str, str], os.stat_result | None],
) -> None:
    """Copy folder ``entry`` of the open folder ``base`` (``where``; ``st`` its stat) and all
    below it to ``dest``, depth first in name order, ``one`` copying each entry that is not a
    folder. A stack, not recursion, so any depth goes; at most ``_SOURCE_FOLDERS`` folders
    are held open, and one closed on the way down is reopened from ``base`` (``O_NOFOLLOW``
    all the way) and must still be the same folder."""
    stack: list[_Folder] = []

    def enter(parent: int, parts: Parts, dest: str, st: os.stat_result) -> None:
        fd = os.open(parts[-1], DIR, dir_fd=parent)
        try:
            target.directory(dest, Meta.of(st))
            fst = os.fstat(fd)
            names = iter(sorted(os.listdir(fd)))
        except BaseException:
            os.close(fd)
            raise
        stack.append(_Folder(parts, dest, (fst.st_dev, fst.st_ino), names, fd))
        if len(stack) > _SOURCE_FOLDERS:
            far = stack[-_SOURCE_FOLDERS - 1]
            if far.fd is not None:
                os.close(far.fd)
                far.fd = None

    def held(f: _Folder) -> int:
        if f.fd is None:
            try:
                fd = walk(base, f.parts, where)
            except FileNotFoundError:
                raise FreezeframeError(f"{where}: {show(f.parts)} changed while read") from None
            fst = os.fstat(fd)
            if (fst.st_dev, fst.st_ino) != f.key:
                os.close(fd)
                raise FreezeframeError(f"{where}: {show(f.parts)} changed while read")
            f.fd = fd
        return f.fd

    try:
        enter(base, (entry,), dest, st)
        while stack:
            f = stack[-1]
            name = next(f.names, None)
            if name is None:
                stack.pop()
                if f.fd is not None:
                    os.close(f.fd)
                continue
            fd = held(f)
            child = f"{f.dest}/{name}"
            sub = one(fd, name, child)
            if sub is not None:
                enter(fd, (*f.parts, name), child, sub)
    finally:
        for f in stack:
            if f.fd is not None:
                os.close(f.fd)
