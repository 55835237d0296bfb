"""Completing a per-file copy into a base backup: backup_label, tablespace_map, WAL.

A copy taken file by file between ``pg_backup_start`` and ``pg_backup_stop``
recovers only with the ``backup_label`` that the stop returns (it names the
checkpoint to start from) and with every WAL segment from the start LSN
through the stop LSN. The segments still being written while the copy ran
are torn in it, and the backup's end record is written after it: so the
segments are copied again from the live ``pg_wal`` once the stop returned.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from freezeframe.plugin import (
    Artifact,
    FreezeframeError,
    fsync_dir,
)

__all__ = [
    "Completion",
    "WalRange",
    "complete_copy",
    "format_lsn",
    "image_of",
    "parse_lsn",
    "segment_names",
]

_TIMELINE = re.compile(r"^START TIMELINE: (\d+)$", re.MULTILINE)


def parse_lsn(text: str) -> int:
    """``"0/1A2B3C"`` as a number."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(lsn: int) -> str:
    """A number as PostgreSQL writes an LSN."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def segment_names(timeline: int, start: int, stop: int, segment_size: int) -> list[str]:
    """The WAL files holding every byte from LSN ``start`` up to (not including) ``stop``."""
    per_id = 0x1_0000_0000 // segment_size
    first, last = start // segment_size, (stop - 1) // segment_size
    return [f"{timeline:08X}{n // per_id:08X}{n % per_id:08X}" for n in range(first, last + 1)]


@dataclass(frozen=True)
class WalRange:
    """What ``pg_backup_stop`` returned, and what recovery of the copy needs because of it."""

    label: str
    tablespace_map: str
    start_lsn: int
    stop_lsn: int
    segment_size: int

    @property
    def timeline(self) -> int:
        """The timeline the backup started on (``START TIMELINE`` of the label)."""
        m = _TIMELINE.search(self.label)
        if m is None:
            raise FreezeframeError("the backup_label has no START TIMELINE line")
        return int(m.group(1))

    def segments(self) -> list[str]:
        """The segments from the start LSN through the stop LSN."""
        return segment_names(self.timeline, self.start_lsn, self.stop_lsn, self.segment_size)


@dataclass(frozen=True)
class Completion:
    """What :func:`complete_copy` added to one view."""

    data_image: Path
    segments: int
    bytes: int


def image_of(artifact: Artifact, path: Path) -> Path | None:
    """Where the image of the original absolute ``path`` is in a snapshot, if it holds it."""
    for original, image in artifact.roots():
        if path == original or path.is_relative_to(original):
            found: Path = image / path.relative_to(original)
            return found
    return None


def wal_image(artifact: Artifact, data_dir: Path, data_image: Path) -> Path:
    """The image of ``pg_wal``: in the data directory's image, or, when ``pg_wal`` is a
    symlink, the image of the folder it points to (never the live folder)."""
    link = data_image / "pg_wal"
    if not link.is_symlink():
        return link
    target = Path(os.readlink(link))
    if not target.is_absolute():
        target = Path(os.path.normpath(data_dir / target))
    image = image_of(artifact, target)
    if image is None or not image.is_dir():
        raise FreezeframeError(
            f"pg_wal points to {target}, which the snapshot {artifact.id} does not hold"
        )
    return image


def _write(path: Path, text: str, uid: int, gid: int, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.freezeframe")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, text.encode("utf-8"))
        os.fchmod(fd, mode)
        if os.geteuid() == 0:
            os.fchown(fd, uid, gid)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _copy_segment(src: Path, dst: Path, uid: int, gid: int, mode: int) -> int:
    tmp = dst.with_name(f".{dst.name}.freezeframe")
    try:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as f:
            os.fchmod(f.fileno(), mode)
            if os.geteuid() == 0:
                os.fchown(f.fileno(), uid, gid)
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dst.stat().st_size


def complete_copy(
    artifact: Artifact, data_dir: Path, live_wal: Path, wal: WalRange
) -> Completion | None:
    """Write the label, the tablespace map and the WAL through the stop LSN into the view.

    Returns ``None`` when the view cannot be written (a read-only atomic
    snapshot, which is crash-consistent without them).
    """
    data_image = image_of(artifact, data_dir)
    if data_image is None or not data_image.is_dir():
        raise FreezeframeError(f"the snapshot {artifact.id} does not hold {data_dir}")
    if not os.access(data_image, os.W_OK):
        return None
    owner = data_image.stat()
    # Files follow the data directory's own access mode (0700, or 0750 with group access).
    mode = 0o640 if owner.st_mode & 0o050 == 0o050 else 0o600
    wal_dir = wal_image(artifact, data_dir, data_image)
    copied = size = 0
    for name in wal.segments():
        src = live_wal / name
        try:
            size += _copy_segment(src, wal_dir / name, owner.st_uid, owner.st_gid, mode)
        except FileNotFoundError:
            raise FreezeframeError(
                f"WAL segment {name} was removed from {live_wal} before it could be copied "
                "(a checkpoint recycled it during the snapshot): let the role create a "
                "temporary replication slot (REPLICATION), or raise wal_keep_size"
            ) from None
        except OSError as e:
            raise FreezeframeError(f"cannot copy WAL segment {src}: {e.strerror}") from None
        copied += 1
    fsync_dir(wal_dir)
    _write(data_image / "backup_label", wal.label, owner.st_uid, owner.st_gid, mode)
    if wal.tablespace_map:
        _write(data_image / "tablespace_map", wal.tablespace_map, owner.st_uid, owner.st_gid, mode)
    fsync_dir(data_image)
    return Completion(data_image, copied, size)
