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
import fcntl
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


@contextmanager
def _staging(name: str) -> Iterator[Path]:
    """An empty private folder to lay the images out on, at the same path every run.

    A stable path keeps the paths the tool sees stable too: borg's files cache (keyed
    by absolute path) then knows unchanged files again. One left by a crash is reused
    if it is ours (a folder, not a link, owned by us, mode 0700). The folder is held
    with an flock for as long as the tool runs: its mounts live in the tool's private
    namespace, so from here a folder in use looks empty, and another run of a profile
    and stage of the same names (another profile file) must not take it, nor remove it
    under us. When it is held, or not ours, a fresh random one is taken.
    """
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    path = Path(tempfile.gettempdir()) / f"freezeframe-layout-{safe}"
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    fd = _held(path)
    if fd is None:
        path = Path(tempfile.mkdtemp(prefix=f"freezeframe-layout-{safe}-"))
        fd = _held(path)
        if fd is None:
            raise FreezeframeError(f"cannot hold the private folder {path} for the layout")
    try:
        yield path
    finally:
        # Removed while still held: whoever opened it meanwhile sees it gone and moves on.
        with contextlib.suppress(OSError):
            path.rmdir()
        os.close(fd)


def _held(path: Path) -> int | None:
    """An flock'ed descriptor of ``path`` if it is an empty private folder of ours that
    nobody holds, and the path still names it once locked; else ``None``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        st, now = os.fstat(fd), os.stat(path, follow_symlinks=False)
        if (
            (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)
            and st.st_uid == os.geteuid()
            and stat.S_IMODE(st.st_mode) == 0o700
            and not os.listdir(fd)
        ):
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


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
    with contextlib.nullcontext(None) if over else _staging(name) as staging:
        yield _in_namespace(roots, targets, staging)


def _in_namespace(
    roots: Sequence[tuple[Path, Path]], targets: tuple[str, ...], staging: Path | None
) -> Layout:
    """The layout that runs the tool through :mod:`freezeframe._namespace`."""
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
    return Layout(None, targets, prefix, "original" if staging is None else "namespace")
