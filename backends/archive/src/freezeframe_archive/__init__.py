"""freezeframe copy backend ``archive``: one ``<profile>-<run id>.tar.zst`` per run.

Members are named by the original absolute paths without the leading ``/``
(``srv/shop/orders.db``), so ``tar --zstd -xf X -C /`` would put them back
where they were. The file is written as ``.<name>.partial``, fsync'd, then
renamed: a crash never leaves a file that looks complete.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, cast

from freezeframe import (
    Artifact,
    Backend,
    FreezeframeError,
    Role,
    StageContext,
    Table,
    hookimpl,
)
from freezeframe.fsutil import fsync_dir

__all__ = ["ArchiveBackend"]

_CHUNK = 1 << 20


class _HashingWriter:
    """A write-only file object that hashes and counts what passes to ``raw``."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


class _ProgressReader:
    """Reads from ``raw`` and reports the bytes to the stage context (which may cancel)."""

    def __init__(self, raw: IO[bytes], context: StageContext) -> None:
        self.raw = raw
        self.context = context
        self.pending = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.pending += len(data)
        if self.pending >= _CHUNK or not data:
            self.flush()
        return data

    def flush(self) -> None:
        """Report what was read since the last report (tarfile stops at the member's size)."""
        if self.pending:
            self.context.progress(bytes=self.pending)
            self.pending = 0


def _walk(root: Path) -> Iterator[Path]:
    """``root`` and everything below it, depth first in name order: a folder's whole
    contents come right after it, as GNU tar needs to restore folder times exactly.
    A folder that cannot be listed raises (it must fail the copy, not shrink it)."""
    yield root
    if root.is_symlink() or not root.is_dir():
        return
    with os.scandir(root) as entries:
        names = sorted(e.name for e in entries)
    for name in names:
        yield from _walk(root / name)


def _members(source: Artifact) -> Iterator[tuple[Path, str]]:
    """Every file of a snapshot with its member name: the original path without "/"."""
    for original, image in source.roots():
        for path in _walk(image):
            rel = original.relative_to("/") / path.relative_to(image)
            if str(rel) != ".":
                yield path, str(rel)


def _tarinfo(tar: tarfile.TarFile, path: Path, arcname: str) -> tarfile.TarInfo | None:
    """The member for ``path`` with its exact mtime (pax, nanoseconds); None for sockets."""
    # typeshed says TarInfo, but tarfile answers None for a socket
    info = cast("tarfile.TarInfo | None", tar.gettarinfo(str(path), arcname))
    if info is None:
        return None
    ns = path.lstat().st_mtime_ns
    info.pax_headers = {**info.pax_headers, "mtime": f"{ns // 10**9}.{ns % 10**9:09d}"}
    return info


def _restore_filter(
    times: list[tuple[str, str]],
) -> Callable[[tarfile.TarInfo, str], tarfile.TarInfo]:
    """tarfile's "tar" filter (no absolute paths, nothing outside the target), plus: hard
    links must stay inside too, and modes come back as they were (setuid and group write
    included: these are our own checksummed archives). Exact mtimes are collected in
    ``times`` and set after extraction."""

    def check(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
        safe = tarfile.tar_filter(member, dest)
        if member.islnk():
            target = os.path.realpath(os.path.join(dest, member.linkname))
            if os.path.commonpath([target, os.path.realpath(dest)]) != os.path.realpath(dest):
                raise tarfile.LinkOutsideDestinationError(member, target)
        if "mtime" in member.pax_headers:
            times.append((safe.name, member.pax_headers["mtime"]))
        return safe.replace(mode=member.mode, deep=False)

    return check


def _set_times(root: Path, times: list[tuple[str, str]]) -> None:
    """Exact mtimes, deepest first so a folder's own time is set after its contents."""
    for name, stamp in sorted(times, key=lambda t: t[0].count("/"), reverse=True):
        sec, _, frac = stamp.partition(".")
        ns = int(sec) * 10**9 + int((frac + "000000000")[:9])
        path = root / name
        try:
            st = path.lstat()
            os.utime(path, ns=(st.st_atime_ns, ns), follow_symlinks=False)
        except OSError:
            pass  # a symlink's time where the platform cannot set it


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class ArchiveBackend(Backend):
    """Copy a snapshot's view into one zstd-compressed tar file per run."""

    kind = "archive"
    role = Role.COPY

    def __init__(self, name: str, table: Table) -> None:
        super().__init__(name, table)
        self.dir: Path = table.get_path("dir")
        self.level: int = table.get_int("level", 3, minimum=1)
        if self.level > 22:
            from freezeframe import ConfigError

            raise ConfigError("level", f"zstd levels go up to 22, got {self.level}")
        #: zstd worker threads; 0 means one per CPU.
        self.threads: int = table.get_int("threads", 0, minimum=0)

    def writes_to(self) -> list[Path]:
        """The snapshot or archive folder."""
        return [self.dir]

    def check(self) -> None:
        """``dir`` exists (it is created) and is writable; zstandard imports."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise FreezeframeError(f"dir {self.dir}: cannot create it: {e.strerror}") from None
        if not os.access(self.dir, os.W_OK | os.X_OK):
            raise FreezeframeError(f"dir {self.dir}: not writable by this user")
        import zstandard  # noqa: F401 - fail here, not mid-run

    def _name(self, profile: str, run_id: str) -> str:
        return f"{profile}-{run_id}.tar.zst"

    def run(self, context: StageContext) -> Artifact:
        """Tar and compress the source view; fsync; rename into place."""
        import zstandard

        source = context.source
        if source is None or source.view is None:
            raise FreezeframeError("archive needs a source stage with a view")
        name = self._name(context.profile, context.run_id)
        final, partial = self.dir / name, self.dir / f".{name}.partial"
        files = 0
        try:
            with open(partial, "xb") as raw:
                os.fchmod(raw.fileno(), 0o600)
                out = _HashingWriter(raw)
                compressor = zstandard.ZstdCompressor(
                    level=self.level, threads=self.threads or -1, write_checksum=True
                )
                with (
                    compressor.stream_writer(
                        cast(IO[bytes], out), closefd=False, write_size=_CHUNK
                    ) as zw,
                    # "w", not the stream mode "w|": the stream mode re-buffers every
                    # write in 10 KiB slices of a growing bytes object (2x slower here)
                    tarfile.TarFile(
                        fileobj=cast(IO[bytes], zw),
                        mode="w",
                        format=tarfile.PAX_FORMAT,
                        copybufsize=_CHUNK,
                    ) as tar,
                ):
                    for path, arcname in _members(source):
                        info = _tarinfo(tar, path, arcname)
                        if info is None:
                            continue  # a socket holds no data
                        if info.isreg():
                            with open(path, "rb") as f:
                                reader = _ProgressReader(f, context)
                                tar.addfile(info, cast(IO[bytes], reader))
                                reader.flush()
                        else:
                            tar.addfile(info)
                        if not info.isdir():
                            files += 1
                            context.progress(files=1)
                raw.flush()
                os.fsync(raw.fileno())
            context.check()
            partial.rename(final)
            fsync_dir(self.dir)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return Artifact(
            id=name,
            bytes=out.size,
            files=files,
            metadata={
                "file": str(final),
                "sha256": out.sha.hexdigest(),
                "level": self.level,
                "paths": list(source.metadata.get("paths", [])),
            },
        )

    def _file(self, artifact: Artifact) -> Path:
        path = Path(artifact.metadata.get("file") or self.dir / artifact.id)
        if not path.is_file():
            raise FreezeframeError(f"archive {path} is gone")
        return path

    def restore(self, artifact: Artifact, target: Path) -> list[Path]:
        """Check the checksum, then extract under ``target`` (no member may escape it)."""
        import zstandard

        self.verify_checksum(artifact)
        path = self._file(artifact)
        with (
            open(path, "rb") as raw,
            zstandard.ZstdDecompressor().stream_reader(raw) as zr,
            tarfile.open(fileobj=zr, mode="r|") as tar,
        ):
            times: list[tuple[str, str]] = []
            tar.extractall(target, filter=_restore_filter(times))  # noqa: S202 - filtered
        _set_times(target, times)
        return [
            target / Path(p).relative_to(Path(p).anchor) for p in artifact.metadata.get("paths", [])
        ]

    def verify_checksum(self, artifact: Artifact) -> None:
        """The file's SHA-256 is the one recorded when it was written."""
        path = self._file(artifact)
        digest = _sha256(path)
        if digest != artifact.metadata.get("sha256"):
            raise FreezeframeError(
                f"archive {path} is corrupt: its SHA-256 {digest[:16]}… "
                "differs from the one recorded when it was written"
            )

    def verify(self, artifact: Artifact) -> None:
        """Checksum, then decompress and read every member to the end."""
        import zstandard

        self.verify_checksum(artifact)
        path = self._file(artifact)
        try:
            with (
                open(path, "rb") as raw,
                zstandard.ZstdDecompressor().stream_reader(raw) as zr,
                tarfile.open(fileobj=zr, mode="r|") as tar,
            ):
                for member in tar:
                    if not member.isreg():
                        continue  # links and folders have no data to read
                    f = tar.extractfile(member)
                    if f is not None:
                        while f.read(_CHUNK):
                            pass
        except (tarfile.TarError, zstandard.ZstdError, EOFError) as e:
            raise FreezeframeError(f"archive {path} cannot be read: {e}") from None

    def delete(self, artifact: Artifact) -> None:
        """Remove the archive file."""
        path = Path(artifact.metadata.get("file") or self.dir / artifact.id)
        path.unlink(missing_ok=True)
        if self.dir.is_dir():
            fsync_dir(self.dir)

    def discard(self, run_id: str) -> None:
        """Remove a half-written (or finished but never recorded) archive of ``run_id``."""
        if self.dir.is_dir():
            for pattern in (f".*-{run_id}.tar.zst.partial", f"*-{run_id}.tar.zst"):
                for p in self.dir.glob(pattern):
                    p.unlink(missing_ok=True)


@hookimpl
def freezeframe_register_backends(register: Callable[[type[Any]], None]) -> None:
    """Register the ``archive`` backend."""
    register(ArchiveBackend)
