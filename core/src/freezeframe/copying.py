"""Copying trees the way a backup must: modes, owners, times, symlinks, hard links, holes.

:func:`copy_tree` reflinks regular files where the filesystem can (FICLONE)
and otherwise copies only their data extents, so a sparse file stays sparse.
The clone backend snapshots with it; a third-party backend may use it too.
Restores copy with :func:`freezeframe.restore_copy.copy_in`, which reads and
writes the way an untrusted snapshot must be read (no symlink followed).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "FICLONE",
    "CopyStats",
    "can_reflink",
    "copy_contents",
    "copy_metadata",
    "copy_tree",
    "make_parents",
    "outermost",
    "tree_counts",
    "tree_size",
]

FICLONE = 0x40049409  # _IOW(0x94, 9, int)
_NO_REFLINK = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS}


@dataclass
class CopyStats:
    """What :func:`copy_tree` did."""

    files: int = 0
    bytes: int = 0
    cloned: int = 0
    copied: int = 0
    #: Entries listed but gone before they were copied (a live PostgreSQL recycling WAL
    #: in backup mode; never a quiesced application).
    vanished: int = 0

    @property
    def method(self) -> str:
        """``cloned`` (all reflinks), ``copied`` (no reflink) or ``mixed``."""
        if self.copied and self.cloned:
            return "mixed"
        return "copied" if self.copied else "cloned"


def _copy_file(
    src: Path, dst: Path, st: os.stat_result, stats: CopyStats, tick: Callable[[int], None]
) -> None:
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        copy_contents(fin.fileno(), fout.fileno(), st.st_size, stats, tick)


def copy_contents(
    src: int, dst: int, size: int, stats: CopyStats, tick: Callable[[int], None]
) -> None:
    """Give the empty file open as ``dst`` the ``size`` bytes of ``src``: a reflink where the
    filesystem can, else only the data extents (holes stay holes); counted in ``stats``."""
    try:
        fcntl.ioctl(dst, FICLONE, src)
        stats.cloned += 1
    except OSError as e:
        if e.errno not in _NO_REFLINK:
            raise
        stats.copied += 1
        _copy_data(src, dst, size, tick)
        return
    tick(size)


def _copy_data(src: int, dst: int, size: int, tick: Callable[[int], None]) -> None:
    """Copy only the data extents (holes stay holes: a sparse file stays sparse), by
    copy_file_range, or sendfile where the kernel refuses to cross filesystems."""
    pos = done = 0
    kernel_copy = True
    while pos < size:
        try:
            start = os.lseek(src, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole is left
                break
            raise
        end = os.lseek(src, start, os.SEEK_HOLE)
        while start < end:
            count = min(end - start, 8 << 20)
            if kernel_copy:
                try:
                    n = os.copy_file_range(src, dst, count, start, start)
                except OSError as e:
                    if e.errno not in _NO_REFLINK:
                        raise
                    kernel_copy = False
                    continue
            else:
                os.lseek(dst, start, os.SEEK_SET)
                n = os.sendfile(dst, src, start, count)
            if n == 0:  # the file shrank under us: copy what there is
                end = start
                break
            start += n
            done += n
            tick(n)
        pos = end
    os.ftruncate(dst, size)
    if size > done:
        tick(size - done)  # the holes: progress and sizes count a file's length


def copy_metadata(src_st: os.stat_result, dst: Path) -> None:
    """Give ``dst`` the owner (as root), mode and times of ``src_st``; a symlink keeps its
    own mode."""
    if os.geteuid() == 0:
        os.chown(dst, src_st.st_uid, src_st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(src_st.st_mode):
        os.chmod(dst, stat.S_IMODE(src_st.st_mode))
    os.utime(dst, ns=(src_st.st_atime_ns, src_st.st_mtime_ns), follow_symlinks=False)


def copy_tree(
    src: Path,
    dst: Path,
    *,
    progress: Callable[[int, int], None] | None = None,
    links: dict[tuple[int, int], Path] | None = None,
) -> CopyStats:
    """Copy file or tree ``src`` to ``dst`` (which must not exist), keeping modes, owners,
    times, symlinks, hard links and holes; reflink regular files where the filesystem allows.

    ``progress(bytes, files)`` is called with increments and may raise to stop the copy.
    Pass one ``links`` dict to several calls to keep hard links between their trees.
    """
    stats = CopyStats()
    links = {} if links is None else links
    dirs: list[tuple[os.stat_result, Path]] = []

    def tick(n: int) -> None:
        stats.bytes += n
        if progress:
            progress(n, 0)

    def one(s: Path, d: Path, top: bool = False) -> None:
        try:
            st = s.lstat()
            children = sorted(s.iterdir()) if stat.S_ISDIR(st.st_mode) else []
        except FileNotFoundError:
            if top:
                raise
            stats.vanished += 1  # gone since its folder was listed, as tar and pg_basebackup
            return
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            d.mkdir()
            dirs.append((st, d))
            for child in children:
                one(child, d / child.name)
            return
        if stat.S_ISLNK(mode):
            os.symlink(os.readlink(s), d)
        elif stat.S_ISREG(mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in links:
                os.link(links[key], d)
                stats.files += 1
                if progress:
                    progress(0, 1)
                return
            try:
                _copy_file(s, d, st, stats, tick)
            except FileNotFoundError:
                if top or d.exists():
                    raise
                stats.vanished += 1
                return
            links[key] = d
        else:
            return  # sockets, fifos, devices hold no data worth a backup
        copy_metadata(st, d)
        stats.files += 1
        if progress:
            progress(0, 1)

    one(src, dst, top=True)
    for st, d in reversed(dirs):  # after their contents, so times stick
        copy_metadata(st, d)
    return stats


def make_parents(original: Path, dst_root: Path, src_root: Path = Path("/")) -> Path:
    """Create ``dst_root/<parents of original>`` with the modes and owners of the same
    parents under ``src_root`` (the live system, or a view); a parent that is not there
    (a dump's folder, made only in the view) gets the default mode. Returns where
    ``original`` itself goes. Several threads may make the same parents at once."""
    rel = original.relative_to(original.anchor)
    cur_src, cur_dst = src_root, dst_root
    dst_root.mkdir(parents=True, exist_ok=True)
    for part in rel.parts[:-1]:
        cur_src, cur_dst = cur_src / part, cur_dst / part
        if not cur_dst.exists():
            try:
                cur_dst.mkdir()
            except FileExistsError:  # made meanwhile by a completion running beside us
                if not cur_dst.is_dir():
                    raise
                continue
            try:
                copy_metadata(cur_src.stat(), cur_dst)
            except FileNotFoundError:
                if cur_src.exists() or not cur_dst.is_dir():
                    raise
    return dst_root / rel


def outermost(paths: Iterable[Path]) -> list[Path]:
    """``paths`` without duplicates and without any path inside another one listed."""
    unique = sorted({Path(os.path.abspath(p)) for p in paths})
    out: list[Path] = []
    for p in unique:
        if not any(p.is_relative_to(r) for r in out):
            out.append(p)
    return out


def can_reflink(src: Path, dst_dir: Path) -> bool | None:
    """Whether a file of ``src``'s filesystem (``src`` a folder or a file) reflinks into
    ``dst_dir`` (or its nearest existing parent): ``None`` when it cannot be told.

    Probed with one 4 KiB nameless temporary file on each side (``O_TMPFILE``, gone
    when closed); where ``src``'s folder is not writable, with ``src`` itself if it is a
    regular file. Nothing is left behind and nothing of ``src`` is written.
    """
    dst_dir = next((p for p in (dst_dir, *dst_dir.parents) if p.is_dir()), dst_dir)
    source = _probe_source(src)
    if source is None:
        return None
    try:
        with tempfile.TemporaryFile(dir=dst_dir) as dst:
            fcntl.ioctl(dst.fileno(), FICLONE, source)
    except OSError as e:
        return False if e.errno in _NO_REFLINK else None
    finally:
        os.close(source)
    return True


def _probe_source(src: Path) -> int | None:
    """A descriptor of a file on ``src``'s filesystem holding data: a new nameless one, or
    ``src`` itself read-only."""
    try:
        fd = os.open(src if src.is_dir() else src.parent, os.O_TMPFILE | os.O_RDWR, 0o600)
    except OSError:
        try:
            return os.open(src, os.O_RDONLY | os.O_NOFOLLOW) if src.is_file() else None
        except OSError:
            return None
    try:
        os.write(fd, bytes(4096))
    except OSError:
        os.close(fd)
        return None
    return fd


def tree_size(path: Path) -> int:
    """The bytes :func:`copy_tree` would copy from file or tree ``path``: the lengths of its
    regular files, each hard-linked file once, symlinks not followed; 0 if it is gone."""
    return tree_counts([path])[1]


def tree_counts(paths: Iterable[Path]) -> tuple[int, int]:
    """The files (regular files and symlinks, each name) and bytes (regular files, each
    hard-linked file once) below ``paths``, symlinks not followed; what is gone counts 0."""
    files = total = 0
    seen: set[tuple[int, int]] = set()
    todo = list(paths)
    while todo:
        p = todo.pop()
        try:
            st = p.lstat()
            if stat.S_ISDIR(st.st_mode):
                todo.extend(p.iterdir())
        except OSError:
            continue  # vanished or unreadable: the copy will say so
        if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
            files += 1
        if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return files, total
