"""Where a Redis server keeps its data, and which of those files a backup needs.

RDB: one file, ``dir/dbfilename``, always replaced whole (written to
``temp-<pid>.rdb``, fsync'd, renamed, folder fsync'd). AOF (Redis 7,
multi-part): the folder ``dir/appenddirname`` holding a manifest
(``<appendfilename>.manifest``) that lists one base file (type ``b``), the
incremental files written since (type ``i``) and, until Redis deletes them,
history files of earlier rewrites (type ``h``, not needed to load).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from freezeframe.plugin import under

__all__ = ["AofFile", "Layout", "fsync_path", "manifest_line", "read_manifest", "split_args"]


@dataclass(frozen=True)
class AofFile:
    """One line of an AOF manifest."""

    name: str
    seq: int
    type: str  # "b" base, "i" incremental, "h" history
    line: str


_ESCAPES = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("b"): b"\b", ord("a"): b"\a"}
_HEX = re.compile(rb"[0-9a-fA-F]{2}")
_SPACE = b" \n\r\t\0"


def split_args(line: bytes) -> list[bytes]:
    """``line`` split as Redis splits its config and manifest lines (``sdssplitargs``).

    Redis quotes a file name that holds a space, a quote or a byte outside
    printable ASCII, escaping such bytes as ``\\xHH``: ``"my aof \\xc3\\xa9.aof"``.
    ``shlex`` knows no ``\\x``. ``ValueError`` for an unbalanced quote.
    """
    out: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in _SPACE:
            i += 1
        if i == n:
            return out
        token = bytearray()
        quote = 0
        while i < n:
            c = line[i]
            if quote and c == quote:
                quote = 0
                if i + 1 < n and line[i + 1] not in _SPACE:
                    raise ValueError("a closing quote must be followed by a space")
            elif quote == ord('"') and c == ord("\\") and i + 1 < n:
                if line[i + 1] == ord("x") and _HEX.fullmatch(line[i + 2 : i + 4]):
                    token.append(int(line[i + 2 : i + 4], 16))
                    i += 3
                else:
                    i += 1
                    token += _ESCAPES.get(line[i], bytes([line[i]]))
            elif quote == ord("'") and c == ord("\\") and line[i + 1 : i + 2] == b"'":
                token.append(line[i + 1])
                i += 1
            elif quote:
                token.append(c)
            elif c in _SPACE:
                break
            elif c in b"\"'":
                quote = c
            else:
                token.append(c)
            i += 1
        if quote:
            raise ValueError("unbalanced quotes")
        out.append(bytes(token))


_REPR = {ord("\\"): "\\\\", ord('"'): '\\"', 10: "\\n", 13: "\\r", 9: "\\t", 7: "\\a", 8: "\\b"}


def manifest_line(name: str, seq: int, kind: str) -> str:
    """One line of an AOF manifest, the file name quoted as Redis quotes it (``sdscatrepr``)
    when it holds a space, a quote, a backslash or a byte outside printable ASCII."""
    raw = os.fsencode(name)
    if all(0x21 <= b <= 0x7E and b not in b'"\\' for b in raw):
        quoted = name
    else:
        quoted = (
            '"'
            + "".join(_REPR.get(b) or (chr(b) if 0x20 <= b <= 0x7E else f"\\x{b:02x}") for b in raw)
            + '"'
        )
    return f"file {quoted} seq {seq} type {kind}\n"


def read_manifest(path: Path) -> list[AofFile]:
    """The files an AOF manifest lists; ``ValueError`` if it is not one Redis 7 wrote."""
    files = []
    for raw_bytes in path.read_bytes().splitlines():
        raw = raw_bytes.decode("utf-8", "surrogateescape")
        if not raw.strip() or raw.startswith("#"):
            continue
        try:
            tokens = [os.fsdecode(t) for t in split_args(raw_bytes)]
        except ValueError:
            raise ValueError(f"{path}: unreadable line {raw!r}") from None
        if len(tokens) % 2:
            raise ValueError(f"{path}: unreadable line {raw!r}")
        fields = dict(zip(tokens[::2], tokens[1::2], strict=True))
        name, kind = fields.get("file", ""), fields.get("type", "")
        if not name or "/" in name or name in (".", "..") or kind not in ("b", "i", "h"):
            raise ValueError(f"{path}: unexpected line {raw!r}")
        try:
            seq = int(fields.get("seq", ""))
        except ValueError:
            raise ValueError(f"{path}: unexpected line {raw!r}") from None
        files.append(AofFile(name, seq, kind, raw))
    if sum(1 for f in files if f.type == "b") > 1:
        raise ValueError(f"{path}: lists more than one base file")
    return files


def fsync_path(path: Path) -> None:
    """fsync a file or folder we did not write (a read-only descriptor is enough on Linux)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Layout:
    """The data files of one server, as this machine sees them."""

    dir: Path
    aof: bool
    dbfilename: str = "dump.rdb"
    appenddirname: str = "appendonlydir"
    appendfilename: str = "appendonly.aof"
    #: The file names are unknown (CONFIG is disabled): the whole folder is the data.
    whole_dir: bool = False

    @property
    def mode(self) -> str:
        """``"aof"`` or ``"rdb"``: what Redis loads at start."""
        return "aof" if self.aof else "rdb"

    @property
    def dump(self) -> Path:
        """The RDB file."""
        return self.dir / self.dbfilename

    @property
    def aof_dir(self) -> Path:
        """The multi-part AOF folder."""
        return self.dir / self.appenddirname

    @property
    def manifest(self) -> Path:
        """The AOF manifest."""
        return self.aof_dir / f"{self.appendfilename}.manifest"

    def data_paths(self) -> tuple[Path, ...]:
        """What a backup holds: the AOF folder, or the RDB file, or (names unknown) ``dir``."""
        if self.whole_dir:
            return (self.dir,)
        return (self.aof_dir,) if self.aof else (self.dump,)

    def aof_files(self) -> list[AofFile]:
        """The base and incremental files the manifest lists (what loading needs)."""
        return [f for f in read_manifest(self.manifest) if f.type in ("b", "i")]

    def under(self, root: Path) -> Layout:
        """The same layout restored below ``root`` (original absolute paths under it)."""
        return replace(self, dir=under(root, self.dir))

    def find_manifest(self) -> Layout:
        """With unknown names: the layout that points at the one AOF manifest found in ``dir``."""
        found = sorted(self.dir.glob("*/*.manifest"))
        if len(found) != 1:
            return self
        m = found[0]
        return replace(
            self, appenddirname=m.parent.name, appendfilename=m.name.removesuffix(".manifest")
        )

    def find_dump(self) -> Layout:
        """With unknown names: the layout that points at the one RDB file found in ``dir``."""
        dumps = sorted(
            p for p in self.dir.glob("*.rdb") if p.is_file() and not p.name.startswith("temp-")
        )
        if self.dump in dumps or len(dumps) != 1:
            return self
        return replace(self, dbfilename=dumps[0].name)
