"""What an attacker who can write an artifact folder hands a restore, and how to catch it.

Hand-made ``.tar.zst`` archives (with their SHA-256 recorded as the archive
backend records it), a swapper that replaces a file the instant someone opens
it (inotify ``IN_OPEN``), and the checks every restore test makes: nothing
appeared outside the target, no special file or setuid/setgid bit inside it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import io
import os
import select
import stat
import struct
import tarfile
import threading
from pathlib import Path
from types import TracebackType

import zstandard

from freezeframe import Artifact

__all__ = [
    "OpenSwapper",
    "everything_below",
    "member",
    "specials_below",
    "write_tar_zst",
]


def write_tar_zst(
    path: Path,
    members: list[tuple[tarfile.TarInfo, bytes | None]],
    paths: tuple[str, ...] = ("/srv",),
) -> Artifact:
    """A hand-made archive of ``members``, with its SHA-256 recorded as run() records it."""
    with (
        open(path, "wb") as raw,
        zstandard.ZstdCompressor(level=1).stream_writer(raw, closefd=False) as zw,
        tarfile.open(fileobj=zw, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return Artifact(
        id=path.name,
        bytes=path.stat().st_size,
        files=len(members),
        metadata={
            "file": str(path),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "paths": list(paths),
        },
    )


def member(
    name: str,
    kind: bytes = tarfile.REGTYPE,
    linkname: str = "",
    *,
    mode: int | None = None,
    device: tuple[int, int] = (0, 0),
) -> tarfile.TarInfo:
    """A tar member; folders 0755 and files 0644 unless ``mode`` says otherwise."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.mode = mode if mode is not None else 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.devmajor, info.devminor = device
    return info


def everything_below(root: Path) -> set[str]:
    """Every entry below ``root`` (relative paths), listed without following a symlink."""
    found = set()
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            found.add(os.path.relpath(os.path.join(folder, name), root))
    return found


def specials_below(root: Path) -> list[str]:
    """Device nodes, FIFOs, sockets and setuid/setgid files below ``root`` (never followed)."""
    found = []
    for entry in sorted(everything_below(root)):
        st = os.lstat(root / entry)
        if (
            stat.S_ISCHR(st.st_mode)
            or stat.S_ISBLK(st.st_mode)
            or stat.S_ISFIFO(st.st_mode)
            or (not stat.S_ISDIR(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID))
        ):
            found.append(f"{entry}: {stat.filemode(st.st_mode)}")
    return found


_IN_OPEN = 0x20
_IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")


class OpenSwapper:
    """Renames ``replacement`` over ``path`` the instant a process opens ``path``.

    An inotify watch on the file reports ``IN_OPEN`` (the kernel queues it when
    the open happens); a thread blocked on the watch then renames at once, so a
    reader that opens the file again by name gets the replacement. Nothing must
    open ``path`` between entering and the open the test aims at. ``swapped``
    says whether the swap happened; waiting is bounded by ``timeout``.
    """

    def __init__(self, path: Path, replacement: Path, timeout: float = 30.0) -> None:
        self.path, self.replacement, self.timeout = path, replacement, timeout
        self.swapped = threading.Event()
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._fd = libc.inotify_init1(_IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if libc.inotify_add_watch(self._fd, os.fsencode(path), _IN_OPEN) < 0:
            os.close(self._fd)
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        ready, _, _ = select.select([self._fd, self._stop_r], [], [], self.timeout)
        if self._fd in ready:
            _, mask, _, _ = _EVENT.unpack_from(os.read(self._fd, 4096))
            if mask & _IN_OPEN:
                os.rename(self.replacement, self.path)
                self.swapped.set()

    def __enter__(self) -> OpenSwapper:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join()
        for fd in (self._fd, self._stop_r, self._stop_w):
            os.close(fd)
