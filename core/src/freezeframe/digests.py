"""Content digests of a snapshot view: recorded once the applications have thawed, read
back by ``verify``.

A snapshot backend whose view is a folder tree (clone, btrfs) seals its artifact after
the thaw (:meth:`freezeframe.Backend.seal`), so reading every byte costs no freeze
time: :func:`seal` reads every file below the artifact's roots and writes a *manifest*
next to the view (``<view>.manifest``), one JSON line per folder, symlink (with its
target), regular file (with its size and SHA-256) and special file, under its original
absolute path. The manifest's own SHA-256 goes into the artifact's metadata, which the
catalog keeps: the catalog is trusted, the snapshot folder is not, so a manifest edited
to match a damaged view is caught. :func:`check` reads every byte of the view again and
names, in one line, what changed, is missing or is extra.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from freezeframe.components import Artifact
from freezeframe.errors import FreezeframeError

__all__ = ["UNSEALED", "check", "manifest_path", "remove", "seal", "sealed"]

#: What ``verify`` says of an artifact made before content digests were recorded.
UNSEALED = "contents not checked: the snapshot was made before freezeframe recorded digests"
_HEADER = {"freezeframe": "manifest", "version": 1, "algorithm": "sha256"}
_CHUNK = 1 << 20
#: No line of ours comes near this (a path and a symlink target of a few KiB, which JSON
#: escapes to six times that at most); a longer one is not ours and is never parsed.
_MAX_LINE = 1 << 20
#: How many differences the error names before it counts the rest.
_NAMED = 3


def manifest_path(view: Path) -> Path:
    """Where the manifest of ``view`` is kept: beside it, ``<view>.manifest``."""
    return view.with_name(f"{view.name}.manifest")


def _partial(manifest: Path) -> Path:
    return manifest.with_name(f".{manifest.name}.partial")


def sealed(artifact: Artifact) -> bool:
    """Whether ``artifact`` has a manifest recorded (it was made since digests were)."""
    return "manifest" in artifact.metadata


def remove(view: Path) -> None:
    """Remove the manifest of ``view`` and any half-written one; what is gone is fine."""
    manifest = manifest_path(view)
    for p in (manifest, _partial(manifest)):
        p.unlink(missing_ok=True)


@dataclass(frozen=True)
class _Entry:
    """One entry of a view: its original absolute path, type and content."""

    path: str
    type: str  # "dir", "file", "symlink", "special" (a socket, FIFO or device node)
    size: int = 0
    sha256: str = ""
    target: str = ""  # of a symlink

    @property
    def key(self) -> tuple[str, ...]:
        """The walk's order: component by component, each folder before what it holds."""
        return Path(self.path).parts

    def line(self) -> bytes:
        data: dict[str, Any] = {"path": self.path, "type": self.type}
        if self.type == "file":
            data |= {"size": self.size, "sha256": self.sha256}
        elif self.type == "symlink":
            data["target"] = self.target
        # ensure_ascii keeps a name that is not UTF-8 (a lone surrogate) as \udcXX
        return json.dumps(data, sort_keys=True).encode("ascii") + b"\n"


@dataclass(frozen=True)
class _Found:
    """An entry of the view as walked, its content read only when it is needed."""

    path: str
    image: Path
    st: os.stat_result

    @property
    def key(self) -> tuple[str, ...]:
        return Path(self.path).parts


def _type(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "special"


_A = {"dir": "a folder", "file": "a file", "symlink": "a symlink", "special": "a special file"}


def _walk(roots: Sequence[tuple[Path, Path]]) -> Iterator[_Found]:
    """Every entry below ``roots``, in key order; symlinks are not followed."""
    for original, image in sorted(roots, key=lambda r: r[0].parts):
        stack = [(str(original), image)]
        while stack:
            path, img = stack.pop()
            st = img.lstat()
            yield _Found(path, img, st)
            if stat.S_ISDIR(st.st_mode):
                names = sorted(os.listdir(img), reverse=True)  # popped in sorted order
                stack += [(os.path.join(path, n), img / n) for n in names]


class _Reader:
    """Reads the content of the view's files, each inode once (hard links share one)."""

    def __init__(self) -> None:
        self.bytes = 0
        self._seen: dict[tuple[int, int], tuple[int, str]] = {}

    def entry(self, found: _Found) -> _Entry:
        kind = _type(found.st.st_mode)
        if kind == "symlink":
            return _Entry(found.path, kind, target=os.readlink(found.image))
        if kind != "file":
            return _Entry(found.path, kind)
        size, digest = self._content(found)
        return _Entry(found.path, kind, size=size, sha256=digest)

    def _content(self, found: _Found) -> tuple[int, str]:
        st = found.st
        inode = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and inode in self._seen:
            return self._seen[inode]
        # O_NONBLOCK: a file swapped for a FIFO since it was listed must not hang us
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fd = os.open(found.image, flags)
        with open(fd, "rb", buffering=0) as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return -1, "not a regular file"
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            h, size = hashlib.sha256(), 0
            buf = bytearray(_CHUNK)
            view = memoryview(buf)
            while n := f.readinto(buf):
                h.update(view[:n])
                size += n
            # A backup read once must not push the applications' own data out of the cache.
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        self.bytes += size
        if st.st_nlink > 1:
            self._seen[inode] = (size, h.hexdigest())
        return size, h.hexdigest()


def seal(artifact: Artifact) -> Artifact:
    """Read every file of ``artifact``'s view and write its manifest beside the view;
    returns the artifact with ``metadata["manifest"]`` recording it.

    Call it after the thaw: it reads every byte of the snapshot.
    """
    if artifact.view is None:
        raise FreezeframeError(f"{artifact.id} has no view to seal")
    manifest = manifest_path(artifact.view)
    partial = _partial(manifest)
    reader = _Reader()
    h, entries, files = hashlib.sha256(), 0, 0
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        with open(fd, "wb") as out:
            header = json.dumps(_HEADER, sort_keys=True).encode() + b"\n"
            out.write(header)
            h.update(header)
            for found in _walk(artifact.outer_roots()):
                entry = reader.entry(found)
                line = entry.line()
                out.write(line)
                h.update(line)
                entries += 1
                files += entry.type == "file"
        os.replace(partial, manifest)  # made durable by the engine's syncfs of the stage's dir
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    recorded = {
        "file": str(manifest),
        "sha256": h.hexdigest(),
        "entries": entries,
        "files": files,
        "bytes": reader.bytes,
    }
    return replace(artifact, metadata={**artifact.metadata, "manifest": recorded})


class _Manifest:
    """The entries of a manifest file, hashed as they are read: what is compared is
    exactly what is hashed, so a manifest swapped while it is read is caught too."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.hash = hashlib.sha256()
        self.malformed = False

    def __iter__(self) -> Iterator[_Entry]:
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - closed below, after the last line
        except FileNotFoundError:
            raise FreezeframeError(f"manifest {self.path} is missing") from None
        with f:
            first = True
            while line := f.readline(_MAX_LINE):
                self.hash.update(line)
                entry = self._parse(line, header=first)
                first = False
                if entry is not None:
                    yield entry
            if first:
                self.malformed = True  # empty

    def _parse(self, line: bytes, *, header: bool) -> _Entry | None:
        if self.malformed or not line.endswith(b"\n"):
            self.malformed = True
            return None
        try:
            data = json.loads(line)
            if header:
                if data != _HEADER:
                    self.malformed = True
                return None
            kind, path = data["type"], data["path"]
            if kind == "file":
                return _Entry(path, kind, size=int(data["size"]), sha256=str(data["sha256"]))
            if kind == "symlink":
                return _Entry(path, kind, target=str(data["target"]))
            return _Entry(str(path), str(kind))
        except (ValueError, KeyError, TypeError):
            self.malformed = True
            return None


def check(artifact: Artifact) -> None:
    """Read every byte of ``artifact``'s view and compare it with its manifest; raise a
    :class:`FreezeframeError` naming the first entries that differ, are missing or are
    extra, and how many more do, or naming the manifest when it is not the one recorded.
    """
    recorded: Mapping[str, Any] = artifact.metadata["manifest"]
    manifest = _Manifest(Path(recorded["file"]))
    roots = artifact.outer_roots()
    reader = _Reader()
    named: list[str] = []  # the first differences, in walk order
    count = 0

    def differs(what: str) -> None:
        nonlocal count
        count += 1
        if len(named) < _NAMED:
            named.append(what)

    def name(image: Path) -> str:
        """The image's path inside the view: the view is named once, at the front."""
        view = artifact.view
        return str(image.relative_to(view)) if view and image.is_relative_to(view) else str(image)

    def image(path: str) -> Path:
        p = Path(path)
        for original, img in roots:
            if p.is_relative_to(original):
                return img / p.relative_to(original)
        return p  # outside every root: named as the manifest gives it

    expected, found = iter(manifest), _walk(roots)
    exp, act = next(expected, None), next(found, None)
    while exp is not None or act is not None:
        if act is None or (exp is not None and exp.key < act.key):
            assert exp is not None
            differs(f"{name(image(exp.path))} missing")
            exp = next(expected, None)
        elif exp is None or act.key < exp.key:
            differs(f"{name(act.image)} extra")
            act = next(found, None)
        else:
            what = _compare(exp, act, reader)
            if what:
                differs(f"{name(act.image)} {what}")
            exp, act = next(expected, None), next(found, None)
    if manifest.hash.hexdigest() != recorded["sha256"]:
        raise FreezeframeError(
            f"manifest {manifest.path} is not the one recorded when the snapshot was sealed "
            "(its SHA-256 differs from the catalog's): it was changed or replaced"
        )
    if manifest.malformed:
        raise FreezeframeError(f"manifest {manifest.path} cannot be read")
    if count:
        more = f" (and {count - len(named)} more)" if count > len(named) else ""
        raise FreezeframeError(
            f"{artifact.view} does not match its manifest: {', '.join(named)}{more}"
        )


def _compare(expected: _Entry, found: _Found, reader: _Reader) -> str | None:
    """How ``found`` differs from ``expected``, or ``None``; reads a file only if its
    type and size match (otherwise it differs already)."""
    kind = _type(found.st.st_mode)
    if kind != expected.type:
        return f"is {_A.get(kind, kind)}, was {_A.get(expected.type, expected.type)}"
    if kind == "file" and found.st.st_size != expected.size:
        return f"changed ({found.st.st_size} bytes, was {expected.size})"
    try:
        actual = reader.entry(found)
    except OSError as e:  # a bad sector: name the file and go on with the others
        return f"unreadable ({e.strerror})"
    if actual == expected:
        return None
    if kind == "symlink":
        return f"changed (points to {actual.target!r}, pointed to {expected.target!r})"
    return "changed"
