"""Running a backup tool so that it records a snapshot's files under their original paths.

restic and borg record each path the way they are given it. Run from a
folder below which every original path exists (``srv/shop/orders.db``), and
given those relative paths, they record exactly what they would record
backing up the live files (restic: ``/srv/shop/orders.db``; borg:
``srv/shop/orders.db``), so a user restoring with the tool alone finds every
file where it was.

A snapshot that lays its images out that way already (``view/<original path>``,
as the clone backend does) is read in place. One that does not (btrfs: each
path inside its subvolume's snapshot, see :meth:`freezeframe.Artifact.roots`)
is laid out in a private mount namespace: ``unshare --mount`` runs
:mod:`freezeframe_restic._namespace`, a small program that mounts a tmpfs on
an empty folder, bind-mounts each image read-only at its original path below
it, changes into it and replaces itself with the tool. The mounts exist only
in that namespace and vanish with the tool's process, even if freezeframe is
killed: nothing is ever mounted where another process could see it. This
needs root (``CAP_SYS_ADMIN``), as taking btrfs snapshots does.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from freezeframe import Artifact, FreezeframeError
from freezeframe.tools import find_tool

__all__ = ["Layout", "laid_out"]


@dataclass(frozen=True)
class Layout:
    """How to run a tool on a snapshot: ``[*prefix, *tool argv, *targets]`` in ``cwd``."""

    #: Where to run the tool (``None``: the prefix changes into the laid-out folder itself).
    cwd: Path | None
    #: The original absolute paths without their leading ``/``, as the tool's arguments.
    targets: tuple[str, ...]
    #: What to put before the tool's argv (``unshare`` and this module), or nothing.
    prefix: tuple[str, ...]
    #: ``"view"`` (read in place) or ``"namespace"`` (laid out in a private mount namespace).
    method: str

    def argv(self, tool: Sequence[str]) -> list[str]:
        """The full argv: the prefix, the tool's argv, then the targets."""
        return [*self.prefix, *tool, *self.targets]


def _relative(original: Path) -> str:
    return str(original.relative_to(original.anchor))


def _staging(name: str) -> Path:
    """An empty private folder to lay the images out on, at the same path every run.

    A stable path keeps the paths the tool sees stable too: borg's files cache (keyed
    by absolute path) then knows unchanged files again. One left by a crash is reused
    if it is ours (a folder, not a link, owned by us, mode 0700); otherwise, or when
    another run holds it, a fresh random one is taken.
    """
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    path = Path(tempfile.gettempdir()) / f"freezeframe-layout-{safe}"
    try:
        path.mkdir(mode=0o700)
        return path
    except FileExistsError:
        st = path.lstat()
        if (
            stat.S_ISDIR(st.st_mode)
            and st.st_uid == os.geteuid()
            and stat.S_IMODE(st.st_mode) == 0o700
            and not any(path.iterdir())
        ):
            return path
    return Path(tempfile.mkdtemp(prefix=f"freezeframe-layout-{safe}-"))


@contextmanager
def laid_out(source: Artifact, name: str = "run") -> Iterator[Layout]:
    """The way to run a tool on ``source`` with relative original paths (see the module doc).

    ``name`` (the profile and stage) names the folder the images are laid out on,
    the same every run. Raises :class:`FreezeframeError` when a path's image is
    missing or when the images must be laid out and this process is not root.
    """
    roots = source.outer_roots()
    targets = tuple(_relative(o) for o, _ in roots)
    view = source.view
    if view is not None and all(image == view / _relative(o) for o, image in roots):
        yield Layout(view, targets, (), "view")
        return
    if os.geteuid() != 0:
        raise FreezeframeError(
            "the snapshot keeps its images away from their original paths (btrfs does); "
            "laying them out takes a private mount namespace, which needs root"
        )
    staging = _staging(name)
    spec = {"staging": str(staging), "roots": [[str(o), str(i)] for o, i in roots]}
    prefix = (
        find_tool("unshare"),
        "--mount",
        "--propagation",
        "private",
        "--",
        sys.executable,
        "-m",
        "freezeframe_restic._namespace",
        json.dumps(spec),
        "--",
    )
    try:
        yield Layout(None, targets, prefix, "namespace")
    finally:
        # Only the tool's namespace ever had anything mounted here: it is an empty folder.
        with contextlib.suppress(OSError):
            staging.rmdir()
