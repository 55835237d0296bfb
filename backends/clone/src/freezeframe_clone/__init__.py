"""freezeframe snapshot backend ``clone``: a per-run copy of every data path, reflinked.

The view is ``<dir>/<run id>/`` with each path at its original absolute
location below it (``<dir>/<run id>/srv/shop/orders.db``). The copy is made
in ``<dir>/.<run id>.partial`` and renamed when complete, so a view never
holds half a snapshot. After the thaw the view is sealed: a SHA-256 of every
file goes into ``<dir>/<run id>.manifest`` (:mod:`freezeframe.plugin.digests`), which
``verify`` reads every byte against.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from freezeframe.plugin import (
    Artifact,
    Backend,
    ConfigError,
    CopyStats,
    FreezeframeError,
    RestoreOptions,
    Role,
    SnapshotKind,
    StageContext,
    Table,
    Target,
    WindowEstimate,
    can_reflink,
    copy_in,
    copy_tree,
    digests,
    hookimpl,
    make_parents,
    outermost,
    tree_size,
    under,
)

__all__ = ["CloneBackend"]

log = logging.getLogger(__name__)


class CloneBackend(Backend):
    """Snapshot by copying each path into ``dir/<run id>``, by reflink where possible."""

    kind = "clone"
    role = Role.SNAPSHOT
    snapshot_kind = SnapshotKind.PER_FILE
    takes_completions = True  # its view is a writable folder tree

    def __init__(self, name: str, table: Table) -> None:
        super().__init__(name, table)
        self.dir = table.get_path("dir")
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

    def window_estimate(self, data_paths: Sequence[Path]) -> WindowEstimate:
        """Probe, per filesystem, whether each path reflinks into ``dir``
        (:func:`~freezeframe.plugin.can_reflink`); what does not is copied whole inside
        the window: the sum of its files' lengths."""
        copied, reflinked, unknown = 0, 0, []
        copies = False
        probed: dict[int, bool | None] = {}
        for src in outermost([*data_paths, *self.paths]):
            try:
                dev = src.stat().st_dev
            except OSError:
                continue  # a path gone by now: the run says so
            if dev not in probed:
                probed[dev] = can_reflink(src, self.dir)
            if probed[dev] is None:
                unknown.append(src)
            elif probed[dev]:
                reflinked += 1
            else:
                copies = True
                copied += tree_size(src)
        if unknown:
            return WindowEstimate(note=f"cannot tell whether {unknown[0]} reflinks into {self.dir}")
        if copies and reflinked:
            return WindowEstimate("mixed", copied, f"some paths do not reflink into {self.dir}")
        if copies:
            return WindowEstimate("copy", copied, f"{self.dir} cannot reflink from the data")
        if not reflinked:  # every application completes after the thaw
            return WindowEstimate("copy", 0, "no path to copy")
        return WindowEstimate("reflink", 0)

    def _partial(self, run_id: str) -> Path:
        return self.dir / f".{run_id}.partial"

    def run(self, context: StageContext) -> Artifact:
        """Copy every data path and extra path into the run's view."""
        sources = outermost([*context.data_paths, *self.paths])
        for src in sources:
            if self.dir.is_relative_to(src):
                raise FreezeframeError(
                    f"dir {self.dir} lies inside data path {src}; put snapshots somewhere else"
                )
        view, partial = self.dir / context.run_id, self._partial(context.run_id)
        partial.mkdir(mode=0o700)
        total = CopyStats()
        links: dict[tuple[int, int], Path] = {}  # one table: links between paths survive
        copied: list[Path] = []
        try:
            for src in sources:
                if not src.exists() and not src.is_symlink():
                    raise FreezeframeError(f"{src} does not exist")
                dst = make_parents(src, partial)
                stats = copy_tree(
                    src,
                    dst,
                    progress=lambda b, f: context.progress(bytes=b, files=f),
                    links=links,
                )
                if os.path.lexists(dst):
                    copied.append(src)
                else:  # a socket, FIFO or device named as a path holds no data to keep
                    log.warning("%s is not a file, folder or symlink: not copied", src)
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
                # only what the view holds: the copies and the seal read every path
                "paths": [str(p) for p in copied],
            },
        )

    def restore(
        self, artifact: Artifact, target: Path, *, options: RestoreOptions = RestoreOptions()
    ) -> list[Path]:
        """Copy the view's paths to ``target`` + their original absolute paths.

        The view is read and ``target`` written without following a symlink
        (:func:`freezeframe.plugin.copy_in`); with ``options.preserve_special``
        the snapshot is verified first.
        """
        view = self._view(artifact)
        if options.preserve_special and (note := self.verify(artifact)):
            raise FreezeframeError(
                f"--preserve-special restores special files only from a verified snapshot: {note}"
            )
        restored = []
        links: dict[tuple[int, int], str] = {}  # one table: links between paths survive
        with Target(target, preserve_special=options.preserve_special) as out:
            for original in (Path(p) for p in artifact.metadata.get("paths", [])):
                rel = original.relative_to(original.anchor).as_posix()
                if not copy_in(out, view, rel, rel, links=links, missing_ok=True):
                    # run() records a socket given as a path, and never copies it.
                    log.warning("%s is not in snapshot %s: not restored", original, view)
                    continue
                restored.append(target / rel)
            out.finish()
        return restored

    def _view(self, artifact: Artifact) -> Path:
        view = artifact.view or self.dir / artifact.id
        if not view.is_dir():
            raise FreezeframeError(f"snapshot {view} is gone")
        return view

    def seal(self, artifact: Artifact) -> Artifact:
        """After the thaw: record a SHA-256 of every file of the view in its manifest."""
        return digests.seal(artifact)

    def verify(self, artifact: Artifact) -> str | None:
        """Every byte of every file is as the manifest sealed it, and nothing is missing
        or extra. A snapshot made before manifests were is checked as it was then (every
        recorded path is there, with as many files and bytes as were copied), with a note
        that its contents were not checked."""
        view = self._view(artifact)
        if digests.sealed(artifact):
            digests.check(replace(artifact, view=view))
            return None
        files = size = 0
        inodes: set[tuple[int, int]] = set()
        for original in (Path(p) for p in artifact.metadata.get("paths", [])):
            top = under(view, original)
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
        return digests.UNSEALED

    def delete(self, artifact: Artifact) -> None:
        """Remove the view and its manifest."""
        view = artifact.view or self.dir / artifact.id
        _rmtree(view)
        digests.remove(view)

    def discard(self, run_id: str) -> None:
        """Remove the half-made copy (and the view and manifest) of ``run_id``."""
        for p in (self._partial(run_id), self.dir / run_id):
            _rmtree(p)
        digests.remove(self.dir / run_id)


def _rmtree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)


@hookimpl
def freezeframe_register_backends(register: Callable[[type[Any]], None]) -> None:
    """Register the ``clone`` backend."""
    register(CloneBackend)
