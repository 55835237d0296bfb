"""Putting the dump of a logical capture into a snapshot's view.

The dump is read from a descriptor opened once its save ended (no later
save can rename another file under it), copied under a temporary name and
renamed into place: at ``dir/dbfilename``, or with the AOF on as the base
of an AOF folder of its own, which is what a server with ``appendonly yes``
loads.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from freezeframe.plugin import Artifact, FreezeframeError, make_parents
from freezeframe_redis._layout import Layout, manifest_line

__all__ = ["CHUNK", "put_dump"]

#: How much of the dump is copied between two looks at ``stop()``.
CHUNK = 4 << 20


def put_dump(
    fd: int, layout: Layout, snapshot: Artifact, stop: Callable[[], bool], where: str
) -> None:
    """The dump open as ``fd`` put whole into ``snapshot``'s view; ``stop()`` true makes
    the copy give up (a :class:`~freezeframe.FreezeframeError` naming ``where``)."""
    if layout.aof:
        _put_aof(fd, layout, _image(snapshot, layout.aof_dir), stop, where)
    else:
        _copy_dump(fd, _image(snapshot, layout.dump), stop, where)


def _image(snapshot: Artifact, original: Path) -> Path:
    """Where ``original`` goes in the snapshot's view (its parents made if the
    snapshot does not hold them)."""
    assert snapshot.view is not None
    dst = snapshot.image(original)
    return dst if dst.parent.is_dir() else make_parents(original, snapshot.view)


def _put_aof(fd: int, layout: Layout, dst: Path, stop: Callable[[], bool], where: str) -> None:
    """At ``dst``, an AOF folder whose manifest lists the dump open as ``fd`` as its
    base and an empty incremental file (what Redis itself lists once it has loaded a
    dump as its AOF), replacing whatever the snapshot holds there (a snapshot of the
    whole filesystem holds the live AOF of another instant)."""
    base, incr = (f"{layout.appendfilename}.1.{t}" for t in ("base.rdb", "incr.aof"))
    listing = manifest_line(base, 1, "b") + manifest_line(incr, 1, "i")
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.partial")
    old = dst.with_name(f".{dst.name}.{os.getpid()}.old")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        with suppress(OSError):
            os.chmod(tmp, layout.aof_dir.stat().st_mode & 0o7777)
        _copy_dump(fd, tmp / base, stop, where)
        (tmp / incr).write_bytes(b"")
        (tmp / layout.manifest.name).write_bytes(listing.encode("utf-8", "surrogateescape"))
        with suppress(FileNotFoundError):
            os.rename(dst, old)
        os.rename(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _copy_dump(fd: int, dst: Path, stop: Callable[[], bool], where: str) -> None:
    """The file open as ``fd`` put whole at ``dst`` (a temporary name, then a rename),
    with its mode, owner and times."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.partial")
    st = os.fstat(fd)
    try:
        with open(tmp, "wb") as out:
            offset = 0
            while chunk := os.pread(fd, CHUNK, offset):
                if stop():
                    raise FreezeframeError(f"{where}: interrupted while copying its dump")
                out.write(chunk)
                offset += len(chunk)
            os.fchmod(out.fileno(), st.st_mode & 0o7777)
            with suppress(PermissionError):  # not root: the copy stays ours
                os.fchown(out.fileno(), st.st_uid, st.st_gid)
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.rename(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
