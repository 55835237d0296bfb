"""Writing restored files so that nothing a backup holds can reach outside the target.

A backup is read from places freezeframe does not trust: whoever can write an
artifact folder or a repository can craft what a restore reads. So a restore
never resolves a path it writes to: :class:`Target` creates every entry
relative to an open descriptor of its parent folder, and opens folders one
component at a time with ``O_NOFOLLOW``, from the target's own descriptor
down. No component can be a symlink or be swapped for one; symlinks are
created and never followed; a hard link may only name a file this restore
created; names with ``..`` or a leading ``/`` are refused.

Device nodes, FIFOs and setuid/setgid bits are only held back while entries
arrive; :meth:`Target.finish`, which a backend calls once the artifact is
verified, creates them when the user asked (``--preserve-special``) and
otherwise leaves them out with one warning saying what was left out.

:func:`copy_in` feeds a :class:`Target` from a snapshot's tree (clone, btrfs),
opening the source the same way. The functions at the end let application
plug-ins fix up restored data (``prepare_restored``) without following a
symlink inside the target.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from freezeframe.copying import CopyStats, copy_contents
from freezeframe.errors import FreezeframeError

__all__ = [
    "Meta",
    "Target",
    "copy_in",
    "exists_below",
    "is_folder_below",
    "open_folder",
    "read_below",
    "remove_below",
    "replace_below",
    "strip_special",
    "unlink_below",
]

log = logging.getLogger(__name__)

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: The target itself is the user's own path (``--to``): it may be a symlink to a folder.
_ROOT = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_SETID = stat.S_ISUID | stat.S_ISGID
#: Open folder descriptors kept between entries; more are reopened from their parents.
_OPEN_FOLDERS = 128
_KINDS = {stat.S_IFIFO: "FIFO", stat.S_IFCHR: "character device", stat.S_IFBLK: "block device"}


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


Parts = tuple[str, ...]


def _parts(name: str) -> Parts:
    """``name`` as path components below the target; refuses what could leave it."""
    if "\0" in name:
        raise FreezeframeError(f"{name!r}: a NUL byte in a name; refusing to restore it")
    if name.startswith("/"):
        raise FreezeframeError(f"{name!r}: an absolute path in the backup; refusing to restore it")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise FreezeframeError(f"{name!r}: a '..' in the backup's name; refusing to restore it")
    if not parts:
        raise FreezeframeError(f"{name!r}: an empty name in the backup; refusing to restore it")
    return parts


def _show(parts: Parts) -> str:
    return "/".join(parts)


def _not_followed(where: str, e: OSError) -> FreezeframeError:
    if e.errno in (errno.ELOOP, errno.ENOTDIR):
        return FreezeframeError(
            f"{where}: a symlink or a file where a folder must be; refusing to follow it"
        )
    return FreezeframeError(f"{where}: {e.strerror}")


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
            self._root = os.open(root, _ROOT)
        except OSError as e:
            raise _not_followed(str(root), e) from None
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
        """The open folder ``parts`` (never through a symlink); made (0755) if missing."""
        if not parts:
            return self._root
        fd = self._open.get(parts)
        if fd is not None:
            self._open.move_to_end(parts)
            return fd
        parent = self._folder(parts[:-1], create=create)
        try:
            fd = os.open(parts[-1], _DIR, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise FreezeframeError(f"{_show(parts)}: missing from the restored tree") from None
            fd = self._made_folder(parent, parts)
        except OSError as e:
            raise _not_followed(_show(parts), e) from None
        self._open[parts] = fd
        return fd

    def _made_folder(self, parent: int, parts: Parts) -> int:
        """Make a folder no entry of the backup named (0755 by :meth:`finish`); open it."""
        try:
            os.mkdir(parts[-1], 0o700, dir_fd=parent)
            self._dirs.setdefault(parts, None)
            return os.open(parts[-1], _DIR, dir_fd=parent)
        except OSError as e:
            raise _not_followed(_show(parts), e) from None

    def _trim(self) -> None:
        """Close the least recently used folders beyond the limit (between entries only:
        an entry may hold two folders' descriptors at once)."""
        while len(self._open) > _OPEN_FOLDERS:
            os.close(self._open.popitem(last=False)[1])

    def _parent(self, name: str) -> tuple[Parts, int]:
        self._trim()
        parts = _parts(name)
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
            setid = meta.mode & _SETID
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
        source = _parts(existing)
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
        if kind not in _KINDS:
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
                left[_KINDS[kind]] += 1
                continue
            self._trim()
            parent = self._folder(parts[:-1])
            try:
                os.mknod(parts[-1], kind | 0o600, rdev, dir_fd=parent)
            except FileExistsError:
                raise FreezeframeError(f"{_show(parts)}: the backup holds it twice") from None
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
            raise FreezeframeError(f"{_show(parts)}: changed while it was restored")
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
            if kind in _KINDS:
                os.unlink(name, dir_fd=folder)
                left[_KINDS[kind]] += 1
            elif kind == stat.S_IFREG and st.st_mode & _SETID:
                mode = stat.S_IMODE(st.st_mode) & ~_SETID
                os.chmod(name, mode, dir_fd=folder, follow_symlinks=False)
                left["setuid/setgid file"] += 1
    return _warn(root, left)


def _walk(base: int, parts: Parts, where: str) -> int:
    """A new descriptor of folder ``parts`` below the open folder ``base``, never through a
    symlink."""
    fd = os.dup(base)
    try:
        for i, part in enumerate(parts):
            try:
                new = os.open(part, _DIR, dir_fd=fd)
            except FileNotFoundError:
                raise
            except OSError as e:
                raise _not_followed(f"{where}/{_show(parts[: i + 1])}", e) from None
            os.close(fd)
            fd = new
    except BaseException:
        os.close(fd)
        raise
    return fd


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

    def one(folder: int, entry: str, dest: str) -> None:
        st = os.stat(entry, dir_fd=folder, follow_symlinks=False)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            fd = os.open(entry, _DIR, dir_fd=folder)
            try:
                target.directory(dest, Meta.of(st))
                for child in sorted(os.listdir(fd)):
                    one(fd, child, f"{dest}/{child}")
            finally:
                os.close(fd)
            return
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
        elif stat.S_IFMT(mode) in _KINDS:
            target.special(dest, Meta.of(st), stat.S_IFMT(mode), st.st_rdev)
        else:
            return  # a socket: its server makes it again
        if progress:
            progress(0, 1)

    image_parts, name_parts = _parts(image), _parts(name)
    try:
        folder = os.open(top, _DIR)
    except OSError as e:
        raise _not_followed(str(top), e) from None
    try:
        # The folders above the entry take the metadata of the folders above its image
        # (the originals' when the snapshot was taken), as far up as the image has them.
        above: list[Meta] = []
        for i, part in enumerate(image_parts[:-1]):
            try:
                above.append(Meta.of(os.stat(part, dir_fd=folder, follow_symlinks=False)))
                new = os.open(part, _DIR, dir_fd=folder)
            except FileNotFoundError:
                if missing_ok:
                    return False
                raise
            except OSError as e:
                raise _not_followed(f"{top}: {_show(image_parts[: i + 1])}", e) from None
            os.close(folder)
            folder = new
        if missing_ok and not _lexists(folder, image_parts[-1]):
            return False
        shift = len(image_parts) - len(name_parts)
        for k in range(1, len(name_parts)):
            if k + shift >= 1:
                target.directory(_show(name_parts[:k]), above[k + shift - 1])
        one(folder, image_parts[-1], name)
        return True
    finally:
        os.close(folder)


def _lexists(folder: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


# -- for fix-ups of restored data (prepare_restored) ---------------------------------------


def _below(root: Path, path: Path) -> Parts:
    """``path`` (``root`` / something) as components below ``root``."""
    if not path.is_relative_to(root):
        raise FreezeframeError(f"{path}: not inside the restored tree {root}")
    rel = path.relative_to(root)
    return _parts(rel.as_posix()) if rel.parts else ()


def open_folder(root: Path, path: Path) -> int:
    """A descriptor of folder ``path`` below ``root``, opened without following a symlink
    in any component below ``root``: :class:`FreezeframeError` naming the path if one is
    (or is a file), :class:`FileNotFoundError` if one is missing."""
    base = os.open(root, _ROOT)
    try:
        return _walk(base, _below(root, path), str(root))
    finally:
        os.close(base)


def is_folder_below(root: Path, path: Path) -> bool:
    """Whether ``path`` is a folder below ``root``; :class:`FreezeframeError` if it or a
    folder above it is a symlink."""
    try:
        os.close(open_folder(root, path))
    except FileNotFoundError:
        return False
    return True


def exists_below(root: Path, path: Path) -> bool:
    """Whether ``path`` exists below ``root`` with no symlink among its folders (the entry
    itself may be one)."""
    try:
        parts = _below(root, path)
        if not parts:
            return True
        fd = open_folder(root, root.joinpath(*parts[:-1]))
    except (FreezeframeError, OSError):
        return False
    try:
        os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def read_below(root: Path, path: Path) -> bytes:
    """The contents of regular file ``path`` below ``root``, never read through a symlink."""
    fd = open_folder(root, path.parent)
    try:
        try:
            f = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            raise FreezeframeError(f"{path}: a symlink; refusing to follow it") from None
        with open(f, "rb") as file:
            if not stat.S_ISREG(os.fstat(f).st_mode):
                raise FreezeframeError(f"{path}: not a regular file")
            return file.read()
    finally:
        os.close(fd)


def replace_below(root: Path, path: Path, data: bytes) -> None:
    """Replace file ``path`` below ``root`` with ``data`` (a new file renamed over it, with
    the old one's owner and mode), never writing through a symlink; durable."""
    fd = open_folder(root, path.parent)
    tmp = f".{path.name}.freezeframe"
    try:
        old = os.stat(path.name, dir_fd=fd, follow_symlinks=False)
        with contextlib.suppress(FileNotFoundError):  # left by a crash
            os.unlink(tmp, dir_fd=fd)
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=fd)
        with open(out, "wb") as f:
            f.write(data)
            f.flush()
            if os.geteuid() == 0:
                os.fchown(out, old.st_uid, old.st_gid)
            os.fchmod(out, stat.S_IMODE(old.st_mode) & ~_SETID)
            os.fsync(out)
        os.replace(tmp, path.name, src_dir_fd=fd, dst_dir_fd=fd)
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink_below(root: Path, path: Path) -> bool:
    """Remove ``path`` below ``root`` (a symlink itself, never what it names) if it is not a
    folder; whether it was there. No folder on the way may be a symlink."""
    try:
        fd = open_folder(root, path.parent)
    except FileNotFoundError:
        return False
    try:
        os.unlink(path.name, dir_fd=fd)
        return True
    except FileNotFoundError:
        return False
    finally:
        os.close(fd)


def remove_below(root: Path) -> list[str]:
    """Remove everything inside folder ``root`` without following a symlink; returns what is
    left (``name: why``), empty when all went."""
    left: list[str] = []
    try:
        fd = os.open(root, _ROOT)
    except FileNotFoundError:
        return []
    try:
        for entry in sorted(os.listdir(fd)):
            try:
                st = os.stat(entry, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    shutil.rmtree(entry, dir_fd=fd)
                else:
                    os.unlink(entry, dir_fd=fd)
            except OSError as e:
                left.append(f"{root / entry}: {e.strerror}")
    finally:
        os.close(fd)
    return left
