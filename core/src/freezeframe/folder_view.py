"""A snapshot backend whose view is a folder tree in ``dir``: each run's view is
``<dir>/<run id>/``, every path at its original absolute location below it, made in
``<dir>/.<run id>.partial`` and renamed when complete, so a view never holds half a
snapshot. Views take completions (they are plain folders), are sealed after the thaw (a
SHA-256 of every file, :mod:`freezeframe.digests`) and verified against that seal.

:class:`FolderView` is the shared part; a subclass says how its :meth:`run` fills the
view (``clone`` copies the data paths; the core's dumps view copies nothing).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

from freezeframe import digests
from freezeframe.boundary import Artifact, RestoreOptions
from freezeframe.components import Backend, Role, SnapshotKind
from freezeframe.config import Table
from freezeframe.copying import tree_counts
from freezeframe.errors import FreezeframeError
from freezeframe.fsutil import under, writable_dir
from freezeframe.restoring import Target, copy_in

__all__ = ["FolderView"]

log = logging.getLogger(__name__)


class FolderView(Backend):
    """A snapshot stage whose view is ``<dir>/<run id>/`` (see the module's text)."""

    role: ClassVar[Role] = Role.SNAPSHOT
    snapshot_kind: ClassVar[SnapshotKind] = SnapshotKind.PER_FILE
    takes_completions: ClassVar[bool] = True  # its view is a writable folder tree

    def __init__(self, name: str, table: Table) -> None:
        super().__init__(name, table)
        self.dir = table.get_path("dir")

    def _partial(self, run_id: str) -> Path:
        return self.dir / f".{run_id}.partial"

    def writes_to(self) -> list[Path]:
        """The snapshot folder."""
        return [self.dir]

    def check(self) -> None:
        """``dir`` exists (it is created) and is writable."""
        writable_dir(self.dir)

    def restore(
        self, artifact: Artifact, target: Path, *, options: RestoreOptions = RestoreOptions()
    ) -> list[Path]:
        """Copy the view's paths (or those ``options.paths`` select) to ``target`` + their
        original absolute paths.

        The view is read and ``target`` written without following a symlink
        (:func:`freezeframe.restoring.copy_in`); with ``options.preserve_special``
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
            for original in options.within(artifact.metadata.get("paths", [])):
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
        tops = [under(view, p) for p in artifact.metadata.get("paths", [])]
        for top in tops:
            if not top.exists() and not top.is_symlink():
                raise FreezeframeError(f"{top} is missing")
        files, size = tree_counts(tops)
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
        """Remove the half-made view (and the view and manifest) of ``run_id``."""
        for p in (self._partial(run_id), self.dir / run_id):
            _rmtree(p)
        digests.remove(self.dir / run_id)


def _rmtree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
