"""The program :func:`freezeframe.layout.laid_out` runs inside ``unshare --mount``.

``python -m freezeframe._namespace SPEC -- TOOL ARGS...`` bind-mounts each
image read-only over its original path and changes into ``/``; or, when SPEC
names a staging folder (an original path is missing on this machine), mounts
a tmpfs on that empty folder, creates below it the folders above each
original path (with the live folders' owners, modes and times), bind-mounts
each image read-only at its original path below it and changes into it.
Then it becomes the tool.
Everything it mounts lives in the namespace ``unshare`` made for it, and goes
away with the tool's process.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import stat
import sys
from pathlib import Path

from freezeframe.copying import copy_metadata

_MS_RDONLY = 1
_MS_REMOUNT = 32
_MS_BIND = 4096
_MS_REC = 16384


def _relative(original: Path) -> str:
    return str(original.relative_to(original.anchor))


def _mount(
    source: str | None, target: Path, fstype: str | None, flags: int, data: str = ""
) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.mount.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_ulong,
        ctypes.c_char_p,
    ]
    ok = libc.mount(
        source.encode() if source else None,
        str(target).encode(),
        fstype.encode() if fstype else None,
        flags,
        data.encode() if data else None,
    )
    if ok != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(target))


def _make_parents(staging: Path, original: Path) -> list[tuple[os.stat_result, Path]]:
    """Create ``staging/<parents of original>`` like the live parents; returns what to stamp."""
    made = []
    live, here = Path(original.anchor), staging
    for part in original.relative_to(original.anchor).parts[:-1]:
        live, here = live / part, here / part
        if not here.exists():
            here.mkdir(mode=0o755)
            with contextlib.suppress(OSError):  # the live folder is gone: keep root's 0755
                made.append((live.stat(), here))
    return made


def _lay_out(staging: Path, roots: list[list[str]]) -> None:
    _mount("tmpfs", staging, "tmpfs", 0, "mode=0755")
    stamps: list[tuple[os.stat_result, Path]] = []
    for original_s, image_s in roots:
        original, image = Path(original_s), Path(image_s)
        stamps += _make_parents(staging, original)
        dst = staging / _relative(original)
        st = image.lstat()
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(image), dst)
            copy_metadata(st, dst)
            continue
        if stat.S_ISDIR(st.st_mode):
            dst.mkdir()
        else:
            dst.touch()
        _mount(str(image), dst, None, _MS_BIND | _MS_REC)
        _mount(None, dst, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY)
    for st, folder in reversed(stamps):  # after their contents, so the times stick
        copy_metadata(st, folder)


def _bind_over(roots: list[list[str]]) -> None:
    """Each image, read-only, over its original path. The images are opened first, so a
    bind cannot hide an image that lies below another path."""
    held = [(os.open(i, os.O_PATH | os.O_NOFOLLOW), Path(o)) for o, i in roots]
    for fd, original in held:
        _mount(f"/proc/self/fd/{fd}", original, None, _MS_BIND | _MS_REC)
        _mount(None, original, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY)
    for fd, _ in held:
        os.close(fd)


def main(argv: list[str]) -> int:
    """``python -m freezeframe._namespace SPEC -- TOOL ARGS...`` (inside ``unshare --mount``).

    Lays the snapshot out, then becomes the tool (its exit status is the tool's).
    """
    if len(argv) < 4 or argv[2] != "--":
        print("usage: layout SPEC -- TOOL [ARGS...]", file=sys.stderr)
        return 2
    spec = json.loads(argv[1])
    try:
        if spec["staging"] is None:
            _bind_over(spec["roots"])
            os.chdir("/")
        else:
            _lay_out(Path(spec["staging"]), spec["roots"])
            os.chdir(spec["staging"])
        os.execvp(argv[3], argv[3:])  # noqa: S606 - argv as a list, no shell
    except OSError as e:
        print(f"freezeframe: cannot lay out the snapshot: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
