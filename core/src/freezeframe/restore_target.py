"""The folder a restore writes into: :class:`Target`, which makes every entry below it only.

A backup is read from places freezeframe does not trust: whoever can write an
artifact folder or a repository can craft what a restore reads. So a restore
never resolves a path it writes to: :class:`Target` creates every entry
relative to an open descriptor of its parent folder, and opens folders one
component at a time with ``O_NOFOLLOW`` (:mod:`freezeframe.nofollow`), from
the target's own descriptor down. No component can be a symlink or be swapped
for one; symlinks are created and never followed; a hard link may only name a
file this restore created; names with ``..`` or a leading ``/`` are refused.

Device nodes, FIFOs and setuid/setgid bits are only held back while entries
arrive; :meth:`Target.finish`, which a backend calls once the artifact is
verified, creates them when the user asked (``--preserve-special``) and
otherwise leaves them out with one warning saying what was left out.
:func:`strip_special` does the same for a tree a backup tool restored itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from freezeframe.errors import FreezeframeError
from freezeframe.nofollow import DIR, ROOT, SETID, Parts, parts_of, refused, show

__all__ = ["KINDS", "Meta", "Target", "strip_special"]

log = logging.getLogger(__name__)

#: Open folder descriptors kept between entries; more are reopened from their parents.
_OPEN_FOLDERS = 128
#: The special files a restore makes only when asked, by ``S_IFMT``, as a warning names them.
KINDS = {stat.S_IFIFO: "FIFO", stat.S_IFCHR: "character device", stat.S_IFBLK: "block device"}


@dataclass(frozen=True)
class Meta:
    """What an entry gets besides its contents: permission bits, owner (as root), times."""

    mode: int
    uid: int
    gid: int
    mtime_ns: int
    atime_ns: int | None = None

    @classmethod
    def of(cls, st: os.stat_result) -> Meta:
        """The metadata of an ``lstat`` result."""
        return cls(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns, st.st_atime_ns)

    def times(self) -> tuple[int, int]:
        return (self.mtime_ns if self.atime_ns is None else self.atime_ns, self.mtime_ns)


class Target:
    """The folder a restore writes into, held open; entries are created below it only.

    ``root`` is made if missing (it may be a symlink to a folder: the user named
    it). Names are relative POSIX paths (``srv/shop/orders.db``); a missing
    parent is created (0755). Owners are set when running as root. Use it as
    a context manager, and call :meth:`finish` once the artifact is known to
    be genuine.
    """

    def __init__(self, root: Path, *, preserve_special: bool = False) -> None:
        self.root = root
        self.preserve_special = preserve_special
        try:
            root.mkdir(parents=True, exist_ok=True)  # the user's own path: trusted
            self._root = os.open(root, ROOT)
        except OSError as e:
            raise refused(str(root), e) from None
        self._open: OrderedDict[Parts, int] = OrderedDict()
        self._dirs: dict[Parts, Meta | None] = {}  # made here: metadata set by finish()
        self._linkable: set[Parts] = set()  # files and symlinks made here: hard-link sources
        self._special: list[tuple[Parts, Meta, int, int]] = []  # (name, meta, S_IFMT, rdev)
        self._setid: list[tuple[Parts, int, int]] = []  # (name, mode, inode)
        self._as_root = os.geteuid() == 0
        #: What :meth:`finish` left out (one line), or ``None``.
        self.left_out: str | None = None

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every descriptor held."""
        while self._open:
            os.close(self._open.popitem()[1])
        if self._root >= 0:
            os.close(self._root)
            self._root = -1

    # -- folders ---------------------------------------------------------------------
    def _folder(self, parts: Parts, *, create: bool = False) -> int:
        """The open folder ``parts`` (never through a symlink); made (0755) if missing. Opened
        level by level from the nearest folder above it that is held open (a loop, not
        recursion: a tree of any depth)."""
        held = len(parts)
        while held and parts[:held] not in self._open:
            held -= 1
        fd = self._root
        if held:
            fd = self._open[parts[:held]]
            self._open.move_to_end(parts[:held])
        for k in range(held + 1, len(parts) + 1):
            sub = parts[:k]
            try:
                new = os.open(sub[-1], DIR, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise FreezeframeError(f"{show(sub)}: missing from the restored tree") from None
                new = self._made_folder(fd, sub)
            except OSError as e:
                raise refused(show(sub), e) from None
            self._open[sub] = fd = new
        return fd

    def _made_folder(self, parent: int, parts: Parts) -> int:
        """Make a folder no entry of the backup named (0755 by :meth:`finish`); open it."""
        try:
            os.mkdir(parts[-1], 0o700, dir_fd=parent)
            self._dirs.setdefault(parts, None)
            return os.open(parts[-1], DIR, dir_fd=parent)
        except OSError as e:
            raise refused(show(parts), e) from None

    def _trim(self) -> None:
        """Close the least recently used folders beyond the limit (between entries only:
        an entry may hold two folders' descriptors at once)."""
        while len(self._open) > _OPEN_FOLDERS:
            os.close(self._open.popitem(last=False)[1])

    def _parent(self, name: str) -> tuple[Parts, int]:
        self._trim()
        parts = parts_of(name)
        return parts, self._folder(parts[:-1], create=True)

    # -- entries ---------------------------------------------------------------------
    def directory(self, name: str, meta: Meta) -> None:
        """A folder; its owner, mode and times are set by :meth:`finish`, after its contents."""
        parts, parent = self._parent(name)
        try:
            os.mkdir(parts[-1], 0o700, dir_fd=parent)
        except FileExistsError:
            st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                raise FreezeframeError(
                    f"{name}: the backup holds it twice, as a folder and not"
                ) from None
        self._dirs[parts] = meta

    def file(self, name: str, meta: Meta, fill: Callable[[int], None]) -> None:
        """A regular file, made new (never opened through a link), filled by ``fill(fd)``."""
        parts, parent = self._parent(name)
        try:
            fd = os.open(
                parts[-1],
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=parent,
            )
        except FileExistsError:
            raise FreezeframeError(f"{name}: the backup holds it twice") from None
        try:
            fill(fd)
            if self._as_root:
                os.fchown(fd, meta.uid, meta.gid)
            setid = meta.mode & SETID
            if setid:
                self._setid.append((parts, meta.mode, os.fstat(fd).st_ino))
            os.fchmod(fd, meta.mode & ~setid)
            os.utime(fd, ns=meta.times())
        finally:
            os.close(fd)
        self._linkable.add(parts)

    def symlink(self, name: str, points_to: str, meta: Meta) -> None:
        """A symlink (created, never followed)."""
        parts, parent = self._parent(name)
        try:
            os.symlink(points_to, parts[-1], dir_fd=parent)
        except FileExistsError:
            raise FreezeframeError(f"{name}: the backup holds it twice") from None
        if self._as_root:
            os.chown(parts[-1], meta.uid, meta.gid, dir_fd=parent, follow_symlinks=False)
        with contextlib.suppress(OSError):  # a symlink's time where the fs cannot keep it
            os.utime(parts[-1], ns=meta.times(), dir_fd=parent, follow_symlinks=False)
        self._linkable.add(parts)

    def hardlink(self, name: str, existing: str) -> None:
        """A hard link to ``existing``, which this restore must have created already."""
        source = parts_of(existing)
        if source not in self._linkable:
            raise FreezeframeError(
                f"{name}: a hard link to {existing!r}, which this restore did not create "
                "before it; refusing to link to anything else"
            )
        parts, parent = self._parent(name)
        try:
            os.link(
                source[-1],
                parts[-1],
                src_dir_fd=self._folder(source[:-1]),
                dst_dir_fd=parent,
                follow_symlinks=False,
            )
        except FileExistsError:
            raise FreezeframeError(f"{name}: the backup holds it twice") from None
        self._linkable.add(parts)

    def special(self, name: str, meta: Meta, kind: int, rdev: int = 0) -> None:
        """A FIFO or device node (``kind``: ``stat.S_IFIFO``/``S_IFCHR``/``S_IFBLK``): held back
        until :meth:`finish`, which makes it only with ``preserve_special``."""
        if kind not in KINDS:
            raise FreezeframeError(f"{name}: not a kind of file a restore makes")
        parts, _ = self._parent(name)
        self._special.append((parts, meta, kind, rdev))

    # -- the end ---------------------------------------------------------------------
    def finish(self) -> None:
        """Call once the artifact is verified: make the held-back special files and setid
        bits (with ``preserve_special``; otherwise warn once what was left out), then give
        folders their metadata, deepest first, so that their times stick."""
        left: Counter[str] = Counter()
        for parts, meta, kind, rdev in self._special:
            if not self.preserve_special:
                left[KINDS[kind]] += 1
                continue
            self._trim()
            parent = self._folder(parts[:-1])
            try:
                os.mknod(parts[-1], kind | 0o600, rdev, dir_fd=parent)
            except FileExistsError:
                raise FreezeframeError(f"{show(parts)}: the backup holds it twice") from None
            with _made(parent, parts, kind) as path:
                if self._as_root:
                    os.chown(path, meta.uid, meta.gid)
                os.chmod(path, meta.mode)
                os.utime(path, ns=meta.times())
        for parts, mode, inode in self._setid:
            if not self.preserve_special:
                left["setuid/setgid file"] += 1
                continue
            self._trim()
            with _made(self._folder(parts[:-1]), parts, stat.S_IFREG, inode) as path:
                os.chmod(path, mode)
        for parts in sorted(self._dirs, key=len, reverse=True):
            self._trim()
            fd = self._folder(parts)
            given = self._dirs[parts]
            if given is None:
                os.fchmod(fd, 0o755)
                continue
            if self._as_root:
                os.fchown(fd, given.uid, given.gid)
            os.fchmod(fd, given.mode)
            os.utime(fd, ns=given.times())
        self.left_out = _warn(self.root, left)


@contextlib.contextmanager
def _made(parent: int, parts: Parts, kind: int, inode: int | None = None) -> Iterator[str]:
    """A path to the inode named ``parts`` that cannot be swapped under us (an ``O_PATH``
    descriptor's ``/proc/self/fd`` link), checked to be of ``kind``: the file this
    restore made, not what someone with access to the target put in its place."""
    fd = os.open(parts[-1], os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    try:
        st = os.fstat(fd)
        if stat.S_IFMT(st.st_mode) != kind or inode not in (None, st.st_ino):
            raise FreezeframeError(f"{show(parts)}: changed while it was restored")
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _warn(root: Path, left: Counter[str]) -> str | None:
    """The one warning of a restore that left special files out; the line, or ``None``."""
    if not left:
        return None
    what = ", ".join(f"{n} {k}{'s' if n > 1 else ''}" for k, n in sorted(left.items()))
    line = (
        f"left out {what} (setuid/setgid bits dropped, special files not made): "
        "restore with --preserve-special to keep them"
    )
    log.warning("%s: %s", root, line)
    return line


def strip_special(root: Path) -> str | None:
    """Remove device nodes and FIFOs below ``root`` and drop setuid/setgid bits, without
    following a symlink; for backends whose tool restores them itself (restic, borg).
    Warns once what went; returns that line, or ``None``."""
    left: Counter[str] = Counter()
    for _, dirs, files, folder in os.fwalk(root, follow_symlinks=False):
        for name in dirs + files:
            st = os.stat(name, dir_fd=folder, follow_symlinks=False)
            kind = stat.S_IFMT(st.st_mode)
            if kind in KINDS:
                os.unlink(name, dir_fd=folder)
                left[KINDS[kind]] += 1
            elif kind == stat.S_IFREG and st.st_mode & SETID:
                mode = stat.S_IMODE(st.st_mode) & ~SETID
                os.chmod(name, mode, dir_fd=folder, follow_symlinks=False)
                left["setuid/setgid file"] += 1
    return _warn(root, left)
