"""freezeframe copy backend ``archive``: one ``<profile>-<run id>.tar.zst`` per run.

GNU tar writes the PAX stream (the per-file work is C, not Python: with many
small files that is four times faster); this module compresses it with
multithreaded zstd (``zstandard``), hashes what it writes and makes the file
appear atomically. Members are named by the original absolute paths without
the leading ``/`` (``srv/shop/orders.db``), so ``tar --zstd -xf X -C /`` would
put them back where they were. The file is written as ``.<name>.partial``,
fsync'd, then renamed: a crash never leaves a file that looks complete.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import grp
import hashlib
import os
import pwd
import queue
import re
import select
import shutil
import stat
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, cast

from freezeframe.plugin import (
    Artifact,
    Backend,
    FreezeframeError,
    Meta,
    RestoreOptions,
    Role,
    StageContext,
    Table,
    Target,
    ToolError,
    find_tool,
    fsync_dir,
    hookimpl,
    run_tool,
    streaming_tool,
    under,
    writable_dir,
)

__all__ = ["ArchiveBackend"]

_CHUNK = 1 << 20
#: GNU tar's options for the stream: PAX with exact mtimes (no atime/ctime records),
#: each folder's contents in name order right after it, sockets skipped quietly, the
#: paths taken as given (never unquoted), the verbose index for progress, and 64 KiB
#: records (fewer writes than the default 10 KiB; any record size reads back).
_TAR_OPTIONS = (
    "--create",
    "--file=-",
    "--blocking-factor=128",
    "--format=posix",
    "--pax-option=delete=atime,delete=ctime",
    "--sort=name",
    "--warning=no-file-ignored",
    "--no-unquote",
    "-vv",
)


class _HashingWriter:
    """A write-only file object whose writes go, in order, to a thread that hashes them
    and writes them to ``raw``: hashing overlaps reading and compressing (SHA-256 of
    incompressible data would otherwise cost a third of the run). ``close()`` waits
    for the thread and raises what writing raised (a full disk); so does the next
    ``write()``.
    """

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while (data := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self.sha.update(data)
                    self.raw.write(data)
                except BaseException as e:  # handed to the writing thread
                    self._error = e

    def write(self, data: bytes) -> int:
        if self._error is not None:
            raise self._error
        self._queue.put(bytes(data))
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        """Nothing to do: :meth:`close` hands everything on."""

    def close(self) -> None:
        """Wait until every write is hashed and written; raise what writing raised."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error


class _Listing:
    """What tar has archived so far, from its verbose index (``-vv``), fed as it comes.

    One line per member, ``ls -l`` style: ``-rw-r----- root/root 5000 2026-11-29
    09:43 srv/shop/orders.db`` (names are quoted: no newline in them). Folders
    are not counted as files; a hard link (``h``) adds no bytes, so each inode's
    size counts once.
    """

    def __init__(self) -> None:
        self.bytes = 0
        self.files = 0
        self._rest = b""

    def feed(self, chunk: bytes) -> None:
        *lines, self._rest = (self._rest + chunk).split(b"\n")
        for line in lines:
            kind = line[:1]
            if kind == b"d":
                continue
            if kind == b"-":
                self.bytes += int(line.split(None, 3)[2])
            self.files += 1


def _pump(stream: int, index: int, sink: IO[bytes], context: StageContext) -> _Listing:
    """Copy tar's ``stream`` into ``sink`` while reading its ``index``, both in this thread.

    tar writes both pipes; waiting on either alone could wait forever while tar
    waits for room in the other, so both are polled. Reports progress per MiB of
    stream read (which may cancel the run), and once more at the end.
    """
    listing = _Listing()
    poller = select.poll()
    for fd in (stream, index):
        poller.register(fd, select.POLLIN)
    reported = (0, 0)
    unreported = 0

    def report() -> None:
        nonlocal reported, unreported
        now = (listing.bytes, listing.files)
        context.progress(bytes=now[0] - reported[0], files=now[1] - reported[1])
        reported, unreported = now, 0

    open_fds = {stream, index}
    while open_fds:
        for fd, _ in poller.poll(200):  # ms: a cancel is seen even while tar is stuck
            data = os.read(fd, _CHUNK)
            if not data:
                poller.unregister(fd)
                open_fds.discard(fd)
            elif fd == index:
                listing.feed(data)
            else:
                sink.write(data)
                unreported += len(data)
        if unreported >= _CHUNK:
            report()
        else:
            context.check()
    report()
    return listing


_MARK = "\x01"  # no path holds it: marks an image renamed by the first step
_DELIM = "\x02"  # no path holds it: delimits the parts of a --transform expression


def _widen(pipe: int) -> None:
    """Let ``pipe`` hold a whole chunk (64 KiB by default): fewer, larger reads."""
    with contextlib.suppress(OSError):  # above the limit for this user: keep what it is
        fcntl.fcntl(pipe, fcntl.F_SETPIPE_SZ, _CHUNK)


def _bre(text: str) -> str:
    """``text`` as a literal in a POSIX basic regular expression."""
    return re.sub(r"([\\.\[\]*^$])", r"\\\1", text)


def _literal(text: str) -> str:
    """``text`` as a literal replacement in a sed-style ``s`` expression."""
    return re.sub(r"([\\&])", r"\\\1", text)


def _tar_names(source: Artifact) -> tuple[Path, list[str], list[str]]:
    """How tar must be run so that members carry their original paths without the "/".

    Returns the folder to run in, the paths to give tar and its ``--transform``
    options. A view with every image at its original path (``view/srv/shop``) is
    read in place. Images kept elsewhere (btrfs: inside the subvolume's snapshot)
    are read from ``/`` and renamed in two steps, so that no rule can match a
    name another rule produced: first each image's prefix becomes a marker (the
    root's index between control characters, which no path holds), then each
    marker the original path. Symlink targets are left alone (flag ``S``);
    hard-link targets are renamed as the members are.
    """
    roots = source.outer_roots()
    for original, image in roots:
        for path in (original, image):
            if {"\n", _MARK, _DELIM} & set(str(path)):
                raise FreezeframeError(f"{str(path)!r}: a control character in a path to archive")
    view = source.view
    if view is not None and all(image == under(view, o) for o, image in roots):
        return view, [str(o.relative_to("/")) for o, _ in roots], []
    images = [os.path.abspath(image)[1:] for _, image in roots]
    d, m = _DELIM, _MARK
    mark = [
        f"--transform=s{d}^{_bre(image)}\\(/\\|$\\){d}{m}{i}{m}\\1{d}S"
        for i, image in enumerate(images)
    ]
    name = [
        f"--transform=s{d}^{m}{i}{m}{d}{_literal(str(o.relative_to('/')))}{d}S"
        for i, (o, _) in enumerate(roots)
    ]
    return Path("/"), images, mark + name


@functools.cache
def _gnu_tar() -> str:
    """The path of GNU tar, 1.28 or later (``--sort``); :class:`ToolError` otherwise."""
    tar = find_tool("tar")
    first = (run_tool([tar, "--version"], timeout=30).stdout.splitlines() or [""])[0]
    found = re.fullmatch(r"tar \(GNU tar\) (\d+)\.(\d+).*", first.strip())
    if found is None or (int(found[1]), int(found[2])) < (1, 28):
        raise ToolError(f"{tar} is {first.strip() or 'unknown'}; archive needs GNU tar 1.28+")
    return tar


def _tar_trouble(error: ToolError) -> str:
    """tar's first complaint, and how many there were (its last line only sums them up)."""
    lines = [
        re.sub(r"^\S*tar: ", "", line).strip()
        for line in error.stderr.splitlines()
        if line.strip() and "Exiting with failure status" not in line
    ]
    if not lines:
        return str(error)
    more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
    return f"{lines[0]}{more}; an incomplete archive is no backup"


class _HashingReader:
    """Reads ``raw`` for the decompressor and hashes every byte it hands over, so that what
    is extracted is exactly what is hashed (a file rewritten in place since the first
    check is caught too). A thread hashes, overlapping decompression and writing (a second
    SHA-256 in line would double the time a large file takes to restore)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self._sha = hashlib.sha256()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self._thread = threading.Thread(target=self._hash, daemon=True)
        self._thread.start()

    def _hash(self) -> None:
        while (data := self._queue.get()) is not None:
            self._sha.update(data)

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        if data:
            self._queue.put(data)
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """Stop the hashing thread (idempotent)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def drain(self) -> str:
        """Hash what the decompressor left unread; the SHA-256 of the whole file."""
        while self.read(_CHUNK):
            pass
        self.close()
        return self._sha.hexdigest()


def _open_archive(path: Path) -> IO[bytes]:
    """The archive, opened once for both its checksum and its contents: never through a
    symlink, never a FIFO or device put in its place."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FreezeframeError(f"archive {path} is gone") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise FreezeframeError(f"archive {path} is a symlink; refusing to follow it") from None
        raise FreezeframeError(f"archive {path}: {e.strerror}") from None
    raw = open(fd, "rb")  # noqa: SIM115 - handed to the caller, who closes it
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raw.close()
        raise FreezeframeError(f"archive {path} is not a regular file")
    return raw


def _sha256(raw: IO[bytes]) -> str:
    h = hashlib.sha256()
    while chunk := raw.read(_CHUNK):
        h.update(chunk)
    return h.hexdigest()


@functools.cache
def _owner(uname: str, uid: int, gname: str, gid: int) -> tuple[int, int]:
    """A member's owner and group by name where this system knows them, as tar does."""
    with contextlib.suppress(KeyError):
        uid = pwd.getpwnam(uname).pw_uid if uname else uid
    with contextlib.suppress(KeyError):
        gid = grp.getgrnam(gname).gr_gid if gname else gid
    return uid, gid


def _meta(member: tarfile.TarInfo) -> Meta:
    # PAX keeps a fraction of a second; a whole second is only in the header.
    stamp = member.pax_headers.get("mtime") or str(int(member.mtime))
    sec, _, frac = stamp.partition(".")
    ns = int(sec) * 10**9 + int((frac + "000000000")[:9])
    owner = _owner(member.uname, member.uid, member.gname, member.gid)
    return Meta(member.mode & 0o7777, *owner, ns)


def _write(data: IO[bytes]) -> Callable[[int], None]:
    def fill(fd: int) -> None:
        with open(fd, "wb", closefd=False) as out:
            shutil.copyfileobj(data, out, _CHUNK)

    return fill


@contextlib.contextmanager
def _reading(path: Path, raw: IO[bytes], sha256: str | None) -> Iterator[tarfile.TarFile]:
    """The members of the archive ``raw`` (``path``), read from its start; its bytes are
    hashed again as they are read, and must make ``sha256`` once all are read."""
    import zstandard

    raw.seek(0)
    reader = _HashingReader(raw)
    with contextlib.closing(reader):
        try:
            with (
                zstandard.ZstdDecompressor().stream_reader(
                    cast(IO[bytes], reader), closefd=False
                ) as zr,
                tarfile.open(fileobj=zr, mode="r|") as tar,
            ):
                yield tar
        except (tarfile.TarError, zstandard.ZstdError, EOFError) as e:
            raise FreezeframeError(f"archive {path} cannot be read: {e}") from None
        if reader.drain() != sha256:
            raise FreezeframeError(
                f"archive {path} changed while it was being restored "
                "(its SHA-256 differs from the one recorded)"
            )


def _extract(
    tar: tarfile.TarFile, member: tarfile.TarInfo, out: Target, name: str | None = None
) -> None:
    """One member into ``out`` (as ``name``, or its own); tarfile only parses the stream,
    ``out`` writes."""
    name = member.name if name is None else name
    if member.isdir() and not name.startswith("/") and set(name.split("/")) <= {"", "."}:
        return  # the target itself ("./"): it is the user's folder, left as it is
    if member.isdir():
        out.directory(name, _meta(member))
    elif member.isreg():
        data = tar.extractfile(member)
        assert data is not None  # a regular member always has a data stream
        out.file(name, _meta(member), _write(data))
    elif member.issym():
        out.symlink(name, member.linkname, _meta(member))
    elif member.islnk():
        out.hardlink(name, member.linkname)
    elif member.isfifo():
        out.special(name, _meta(member), stat.S_IFIFO)
    elif member.isdev():
        kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
        out.special(name, _meta(member), kind, os.makedev(member.devmajor, member.devminor))
    else:
        raise FreezeframeError(f"{name!r}: a member of a type ({member.type!r}) never archived")


class ArchiveBackend(Backend):
    """Copy a snapshot's view into one zstd-compressed tar file per run."""

    kind = "archive"
    role = Role.COPY

    def __init__(self, name: str, table: Table) -> None:
        super().__init__(name, table)
        self.dir = table.get_path("dir")
        self.level = table.get_int("level", 3, minimum=1, maximum=22)
        #: zstd worker threads; 0 means one per CPU. zstd uses at most 256.
        self.threads = table.get_int("threads", 0, minimum=0, maximum=256)
        self._tar: str | None = None  # GNU tar, found by check()

    def writes_to(self) -> list[Path]:
        """The snapshot or archive folder."""
        return [self.dir]

    def check(self) -> None:
        """``dir`` exists (it is created) and is writable; GNU tar 1.28+ is there (``--sort``);
        zstandard imports."""
        writable_dir(self.dir)
        self._tar = _gnu_tar()
        import zstandard  # noqa: F401 - fail here, not mid-run

    def _name(self, profile: str, run_id: str) -> str:
        return f"{profile}-{run_id}.tar.zst"

    def run(self, context: StageContext) -> Artifact:
        """GNU tar of the source view, compressed here; fsync; rename into place."""
        import zstandard

        source = context.source
        if source is None or source.view is None:
            raise FreezeframeError("archive needs a source stage with a view")
        cwd, paths, transforms = _tar_names(source)
        tar = self._tar or _gnu_tar()
        context.check()
        name = self._name(context.profile, context.run_id)
        final, partial = self.dir / name, self.dir / f".{name}.partial"
        index, index_w = os.pipe()
        argv = [tar, *_TAR_OPTIONS, f"--index-file=/dev/fd/{index_w}", *transforms, "--", *paths]
        try:
            with open(partial, "xb") as raw:
                os.fchmod(raw.fileno(), 0o600)
                out = _HashingWriter(raw)
                try:
                    # TZ: the index's times are ignored; without TZ, glibc looks at
                    # /etc/localtime again for every line (a fifth of tar's time).
                    tool = streaming_tool(argv, cwd=cwd, env={"TZ": "UTC"}, pass_fds=[index_w])
                    with tool as proc:
                        os.close(index_w)  # tar holds the only writer: its exit ends the index
                        index_w = -1
                        stream = cast(IO[bytes], proc.stdout).fileno()
                        _widen(stream)
                        compressor = zstandard.ZstdCompressor(
                            level=self.level, threads=self.threads or -1, write_checksum=True
                        )
                        with compressor.stream_writer(
                            cast(IO[bytes], out), closefd=False, write_size=_CHUNK
                        ) as zw:
                            listing = _pump(stream, index, cast(IO[bytes], zw), context)
                finally:
                    out.close()
                raw.flush()
                os.fsync(raw.fileno())
            partial.rename(final)
            fsync_dir(self.dir)
        except ToolError as e:
            partial.unlink(missing_ok=True)
            raise FreezeframeError(f"archive: tar failed: {_tar_trouble(e)}") from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        finally:
            for fd in (index, index_w):
                if fd >= 0:
                    os.close(fd)
        return Artifact(
            id=name,
            bytes=out.size,
            files=listing.files,
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

    def restore(
        self, artifact: Artifact, target: Path, *, options: RestoreOptions = RestoreOptions()
    ) -> list[Path]:
        """Check the checksum, then extract under ``target`` (every member, or those
        ``options.paths`` select and the folders above them), both from one open descriptor.

        Entries are written by :class:`freezeframe.plugin.Target` (nothing outside
        ``target``, no symlink followed); the bytes extracted are hashed again as they
        are read, and special files (with ``options.preserve_special``) are made only
        once that second hash matches too. A hard link selected whose file is not (its
        data is in that file's member, read past already) is filled by a second read.
        """
        path = Path(artifact.metadata.get("file") or self.dir / artifact.id)
        sha256 = artifact.metadata.get("sha256")
        with _open_archive(path) as raw:
            self._check_sum(artifact, path, _sha256(raw))
            with Target(target, preserve_special=options.preserve_special) as out:
                pending: dict[str, list[str]] = {}  # file not selected: its links selected
                with _reading(path, raw, sha256) as tar:
                    for member in tar:
                        original = "/" + member.name
                        if not options.selects(original):
                            if member.isdir() and options.leads_to(original):
                                _extract(tar, member, out)  # the folder, for its metadata
                        elif member.islnk() and not options.selects("/" + member.linkname):
                            pending.setdefault(member.linkname, []).append(member.name)
                        else:
                            _extract(tar, member, out)
                if pending:
                    with _reading(path, raw, sha256) as tar:
                        for member in tar:
                            if links := pending.pop(member.name, None):
                                _extract(tar, member, out, links[0])
                                for name in links[1:]:
                                    out.hardlink(name, links[0])
                    for linkname, links in pending.items():  # no such file: refused
                        out.hardlink(links[0], linkname)
                out.finish()
        return [under(target, p) for p in options.within(artifact.metadata.get("paths", []))]

    def _check_sum(self, artifact: Artifact, path: Path, digest: str) -> None:
        if digest != artifact.metadata.get("sha256"):
            raise FreezeframeError(
                f"archive {path} is corrupt: its SHA-256 {digest[:16]}… "
                "differs from the one recorded when it was written"
            )

    def verify_checksum(self, artifact: Artifact) -> None:
        """The file's SHA-256 is the one recorded when it was written."""
        path = self._file(artifact)
        with _open_archive(path) as raw:
            self._check_sum(artifact, path, _sha256(raw))

    def verify(self, artifact: Artifact) -> None:
        """Checksum, then decompress and read every member to the end (one open file)."""
        import zstandard

        path = self._file(artifact)
        with _open_archive(path) as raw:
            self._check_sum(artifact, path, _sha256(raw))
            raw.seek(0)
            try:
                with (
                    zstandard.ZstdDecompressor().stream_reader(raw, closefd=False) as zr,
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
