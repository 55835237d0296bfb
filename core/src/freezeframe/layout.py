"""Running a backup tool so that it records a snapshot's files under their original paths.

restic and borg record each path the way they are given it, so a snapshot's
files must be handed to them as if they were the live files. As root (which
taking btrfs snapshots needs anyway), ``unshare --mount`` runs
:mod:`freezeframe._namespace`, a small program that, in a private mount
namespace, bind-mounts each image read-only **over its original path**,
changes into ``/`` and replaces itself with the tool, given the original
paths without their "/" (``srv/shop``). The tool then records exactly what
it would record backing up the live files (restic: ``/srv/shop/orders.db``,
and ``/srv/shop`` as the snapshot's path; borg: ``srv/shop/orders.db``), so
a user restoring with the tool alone finds every file where it was, and
restic's own ``--path`` filters and grouping by paths work. The mounts exist
only in that namespace and vanish with the tool's process, even if
freezeframe is killed: no other process ever sees them (method
``"original"``).

When an original path is missing on this machine (or is a symlink, or a
file where the image is a folder), nothing can be mounted over it: the
images are laid out below a private tmpfs instead, at their original paths
below it, and the tool runs there with relative paths (method
``"namespace"``): the files are recorded under their original paths, but
restic records the tmpfs folder as the snapshot's path. Without root, a
snapshot that lays its images out under their original paths already
(``view/srv/shop``, the clone backend) is read in place the same way
(method ``"view"``); one that keeps them elsewhere (btrfs) is refused.
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
    #: ``"original"`` (mounted over the original paths), ``"namespace"`` (laid out below a
    #: private tmpfs) or ``"view"`` (read in place); see the module's documentation.
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


def _can_bind_over(original: Path, image: Path) -> bool:
    """Whether ``image`` can be mounted over ``original`` on this machine: the original
    exists, as the same kind of entry (a folder, a file), and neither is a symlink."""
    if original == Path(original.anchor) or image.is_symlink() or original.is_symlink():
        return False
    return original.exists() and original.is_dir() == image.is_dir()


@contextmanager
def laid_out(
    source: Artifact, name: str = "run", keep_visible: Sequence[Path] = ()
) -> Iterator[Layout]:
    """The way to run a tool on ``source`` with relative original paths (see the module doc).

    ``name`` (the profile and stage) names the folder the images are laid out on
    below a tmpfs, the same every run. Nothing is mounted over a path that holds
    one of ``keep_visible`` (where the tool writes: a local repository, a cache),
    the home folder or the temporary folder: then the images are laid out below
    the tmpfs instead. Raises :class:`FreezeframeError` when a path's image is
    missing, or when the images are kept elsewhere and this process is not root.
    """
    roots = source.outer_roots()
    targets = tuple(_relative(o) for o, _ in roots)
    view = source.view
    in_view = view is not None and all(image == view / _relative(o) for o, image in roots)
    if os.geteuid() != 0:
        if in_view:
            assert view is not None
            yield Layout(view, targets, (), "view")
            return
        raise FreezeframeError(
            "the snapshot keeps its images away from their original paths (btrfs does); "
            "laying them out takes a private mount namespace, which needs root"
        )
    # The tool's own files (a local repository, its cache and keys under the home folder,
    # temporary files) must not vanish under a read-only image.
    visible = [*keep_visible, Path.home(), Path(tempfile.gettempdir())]
    over = all(_can_bind_over(o, i) for o, i in roots) and not any(
        Path(os.path.abspath(v)).is_relative_to(o) for v in visible for o, _ in roots
    )
    staging = None if over else _staging(name)
    spec = {
        "staging": None if staging is None else str(staging),
        "roots": [[str(o), str(i)] for o, i in roots],
    }
    prefix = (
        find_tool("unshare"),
        "--mount",
        "--propagation",
        "private",
        "--",
        sys.executable,
        "-m",
        "freezeframe._namespace",
        json.dumps(spec),
        "--",
    )
    try:
        yield Layout(None, targets, prefix, "original" if staging is None else "namespace")
    finally:
        # Only the tool's namespace ever had anything mounted here: it is an empty folder.
        if staging is not None:
            with contextlib.suppress(OSError):
                staging.rmdir()
