"""freezeframe snapshot backend ``clone``: a per-run copy of every data path, reflinked.

The view is ``<dir>/<run id>/`` with each path at its original absolute
location below it (``<dir>/<run id>/srv/shop/orders.db``). The copy is made
in ``<dir>/.<run id>.partial`` and renamed when complete, so a view never
holds half a snapshot.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from freezeframe import (
    Artifact,
    Backend,
    ConfigError,
    FreezeframeError,
    Role,
    SnapshotKind,
    StageContext,
    Table,
    hookimpl,
)

__all__ = ["CloneBackend", "copy_tree"]

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
        try:
            fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
            stats.cloned += 1
        except OSError as e:
            if e.errno not in _NO_REFLINK:
                raise
            stats.copied += 1
            _copy_data(fin.fileno(), fout.fileno(), st.st_size, tick)
            return
    tick(st.st_size)


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


def _copy_meta(src_st: os.stat_result, dst: Path) -> None:
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
        _copy_meta(st, d)
        stats.files += 1
        if progress:
            progress(0, 1)

    one(src, dst, top=True)
    for st, d in reversed(dirs):  # after their contents, so times stick
        _copy_meta(st, d)
    return stats


def _make_parents(original: Path, dst_root: Path, src_root: Path = Path("/")) -> Path:
    """Create ``dst_root/<parents of original>`` with the modes and owners of the same
    parents under ``src_root`` (the live system, or a view); returns where ``original``
    itself goes."""
    rel = original.relative_to(original.anchor)
    cur_src, cur_dst = src_root, dst_root
    dst_root.mkdir(parents=True, exist_ok=True)
    for part in rel.parts[:-1]:
        cur_src, cur_dst = cur_src / part, cur_dst / part
        if not cur_dst.exists():
            cur_dst.mkdir()
            _copy_meta(cur_src.stat(), cur_dst)
    return dst_root / rel


def roots(paths: Iterable[Path]) -> list[Path]:
    """``paths`` without duplicates and without any path inside another one listed."""
    unique = sorted({Path(os.path.abspath(p)) for p in paths})
    out: list[Path] = []
    for p in unique:
        if not any(p.is_relative_to(r) for r in out):
            out.append(p)
    return out


class CloneBackend(Backend):
    """Snapshot by copying each path into ``dir/<run id>``, by reflink where possible."""

    kind = "clone"
    role = Role.SNAPSHOT
    snapshot_kind = SnapshotKind.PER_FILE

    def __init__(self, name: str, table: Table) -> None:
        super().__init__(name, table)
        self.dir: Path = table.get_path("dir")
        self.paths: list[Path] = table.get_paths("paths", must_exist=True)
        for p in self.paths:
            if p.is_relative_to(self.dir) or self.dir.is_relative_to(p):
                raise ConfigError("paths", f"{p} and dir {self.dir} contain one another")

    def writes_to(self) -> list[Path]:
        """The snapshot or archive folder."""
        return [self.dir]

    def check(self) -> None:
        """``dir`` exists (it is created) and is writable."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise FreezeframeError(f"dir {self.dir}: cannot create it: {e.strerror}") from None
        if not os.access(self.dir, os.W_OK | os.X_OK):
            raise FreezeframeError(f"dir {self.dir}: not writable by this user")

    def _partial(self, run_id: str) -> Path:
        return self.dir / f".{run_id}.partial"

    def run(self, context: StageContext) -> Artifact:
        """Copy every data path and extra path into the run's view."""
        sources = roots([*context.data_paths, *self.paths])
        for src in sources:
            if self.dir.is_relative_to(src):
                raise FreezeframeError(
                    f"dir {self.dir} lies inside data path {src}; put snapshots somewhere else"
                )
        view, partial = self.dir / context.run_id, self._partial(context.run_id)
        partial.mkdir(mode=0o700)
        total = CopyStats()
        links: dict[tuple[int, int], Path] = {}  # one table: links between paths survive
        try:
            for src in sources:
                if not src.exists() and not src.is_symlink():
                    raise FreezeframeError(f"{src} does not exist")
                stats = copy_tree(
                    src,
                    _make_parents(src, partial),
                    progress=lambda b, f: context.progress(bytes=b, files=f),
                    links=links,
                )
                total.files += stats.files
                total.bytes += stats.bytes
                total.cloned += stats.cloned
                total.copied += stats.copied
                total.vanished += stats.vanished
            partial.chmod(0o755)
            partial.rename(view)  # made durable by the engine's syncfs after the thaw
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return Artifact(
            id=context.run_id,
            bytes=total.bytes,
            files=total.files,
            view=view,
            metadata={
                "method": total.method,
                "cloned_files": total.cloned,
                "copied_files": total.copied,
                "vanished_files": total.vanished,
                "paths": [str(p) for p in sources],
            },
        )

    def restore(self, artifact: Artifact, target: Path) -> list[Path]:
        """Copy the view's paths to ``target`` + their original absolute paths."""
        view = self._view(artifact)
        restored = []
        links: dict[tuple[int, int], Path] = {}  # one table: links between paths survive
        for original in (Path(p) for p in artifact.metadata.get("paths", [])):
            src = view / original.relative_to(original.anchor)
            dst = _make_parents(original, target, src_root=view)
            copy_tree(src, dst, links=links)
            restored.append(dst)
        return restored

    def _view(self, artifact: Artifact) -> Path:
        view = artifact.view or self.dir / artifact.id
        if not view.is_dir():
            raise FreezeframeError(f"snapshot {view} is gone")
        return view

    def verify(self, artifact: Artifact) -> None:
        """Every recorded path is there, with as many files and bytes as were copied."""
        view = self._view(artifact)
        files = size = 0
        inodes: set[tuple[int, int]] = set()
        for original in (Path(p) for p in artifact.metadata.get("paths", [])):
            top = view / original.relative_to(original.anchor)
            if not top.exists() and not top.is_symlink():
                raise FreezeframeError(f"{top} is missing")
            walk = top.is_dir() and not top.is_symlink()  # a linked folder is kept as a link
            for p in [top, *(top.rglob("*") if walk else [])]:
                st = p.lstat()
                if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                    files += 1
                if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in inodes:
                    inodes.add((st.st_dev, st.st_ino))
                    size += st.st_size
        if (files, size) != (artifact.files, artifact.bytes):
            raise FreezeframeError(
                f"{view} holds {files} files, {size} bytes; the snapshot "
                f"recorded {artifact.files} files, {artifact.bytes} bytes"
            )

    def delete(self, artifact: Artifact) -> None:
        """Remove the view."""
        _rmtree(artifact.view or self.dir / artifact.id)

    def discard(self, run_id: str) -> None:
        """Remove the half-made copy (and the view) of ``run_id``."""
        for p in (self._partial(run_id), self.dir / run_id):
            _rmtree(p)


def _rmtree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)


@hookimpl
def freezeframe_register_backends(register: Callable[[type[Any]], None]) -> None:
    """Register the ``clone`` backend."""
    register(CloneBackend)
