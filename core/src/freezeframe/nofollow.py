"""Paths below a root, opened one component at a time without following a symlink.

A restored tree (and a snapshot view read into one) is not trusted: whoever can
write it may have swapped a folder for a symlink. Every function here starts
from a descriptor of the root and opens each folder below it with
``O_NOFOLLOW``, so such a swap is refused in one line naming the path, never
followed. The building blocks at the top serve :mod:`freezeframe.restore_target`
and :func:`freezeframe.copying.copy_in`; the functions after them let application
plug-ins fix up restored data (``prepare_restored``): read, replace, unlink and
test files below the restore target, and clear it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from pathlib import Path

from freezeframe.errors import FreezeframeError

__all__ = [
    "exists_below",
    "is_folder_below",
    "open_folder",
    "read_below",
    "remove_below",
    "replace_below",
    "unlink_below",
]

#: Flags of every folder opened below a root: never through a symlink.
DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: The root itself is the user's own path (``--to``): it may be a symlink to a folder.
ROOT = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
#: The setuid and setgid bits, which a restore only keeps when asked to.
SETID = stat.S_ISUID | stat.S_ISGID

#: A relative path as its components (``("srv", "shop", "orders.db")``).
Parts = tuple[str, ...]


def parts_of(name: str) -> Parts:
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


def show(parts: Parts) -> str:
    """``parts`` as the relative path a message names."""
    return "/".join(parts)


def refused(where: str, e: OSError) -> FreezeframeError:
    """The one-line error for an ``OSError`` met opening ``where`` without following links."""
    if e.errno in (errno.ELOOP, errno.ENOTDIR):
        return FreezeframeError(
            f"{where}: a symlink or a file where a folder must be; refusing to follow it"
        )
    return FreezeframeError(f"{where}: {e.strerror}")


def walk(base: int, parts: Parts, where: str) -> int:
    """A new descriptor of folder ``parts`` below the open folder ``base``, never through a
    symlink; :class:`FileNotFoundError` if a component is missing."""
    fd = os.dup(base)
    try:
        for i, part in enumerate(parts):
            try:
                new = os.open(part, DIR, dir_fd=fd)
            except FileNotFoundError:
                raise
            except OSError as e:
                raise refused(f"{where}/{show(parts[: i + 1])}", e) from None
            os.close(fd)
            fd = new
    except BaseException:
        os.close(fd)
        raise
    return fd


def lexists(folder: int, name: str) -> bool:
    """Whether ``name`` exists in the open ``folder`` (a symlink counts, dangling or not)."""
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
    return parts_of(rel.as_posix()) if rel.parts else ()


def open_folder(root: Path, path: Path) -> int:
    """A descriptor of folder ``path`` below ``root``, opened without following a symlink
    in any component below ``root``: :class:`FreezeframeError` naming the path if one is
    (or is a file), :class:`FileNotFoundError` if one is missing."""
    base = os.open(root, ROOT)
    try:
        return walk(base, _below(root, path), str(root))
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
        return lexists(fd, parts[-1])
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
    the old one's owner and mode), never writing through a symlink; durable. If the write
    or the rename fails, the file is left as it was and the new one is removed."""
    fd = open_folder(root, path.parent)
    tmp = f".{path.name}.freezeframe"
    try:
        old = os.stat(path.name, dir_fd=fd, follow_symlinks=False)
        with contextlib.suppress(FileNotFoundError):  # left by a crash
            os.unlink(tmp, dir_fd=fd)
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=fd)
        try:
            with open(out, "wb") as f:
                f.write(data)
                f.flush()
                if os.geteuid() == 0:
                    os.fchown(out, old.st_uid, old.st_gid)
                os.fchmod(out, stat.S_IMODE(old.st_mode) & ~SETID)
                os.fsync(out)
            os.replace(tmp, path.name, src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=fd)
            raise
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
        fd = os.open(root, ROOT)
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
