"""freezeframe snapshot backend ``clone``: a per-run copy of every data path, reflinked.

The view is ``<dir>/<run id>/`` with each path at its original absolute
location below it (``<dir>/<run id>/srv/shop/orders.db``). The copy is made
in ``<dir>/.<run id>.partial`` and renamed when complete, so a view never
holds half a snapshot. After the thaw the view is sealed: a SHA-256 of every
file goes into ``<dir>/<run id>.manifest`` (:mod:`freezeframe.plugin.digests`), which
``verify`` reads every byte against. All of that but the copy is the core's
:class:`freezeframe.plugin.FolderView`.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from freezeframe.plugin import (
    Artifact,
    ConfigError,
    CopyStats,
    FolderView,
    FreezeframeError,
    StageContext,
    Table,
    WindowEstimate,
    can_reflink,
    copy_tree,
    hookimpl,
    make_parents,
    outermost,
    tree_size,
)

__all__ = ["CloneBackend"]

log = logging.getLogger(__name__)


class CloneBackend(FolderView):
    """Snapshot by copying each path into ``dir/<run id>``, by reflink where possible."""

    kind = "clone"

    def __init__(self, name: str, table: Table) -> None:
        super().__init__(name, table)
        self.paths: list[Path] = table.get_paths("paths", must_exist=True)
        for p in self.paths:
            if p.is_relative_to(self.dir) or self.dir.is_relative_to(p):
                raise ConfigError("paths", f"{p} and dir {self.dir} contain one another")

    def own_paths(self) -> list[Path]:
        """The table's ``paths``: taken while the applications are frozen."""
        return list(self.paths)

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


@hookimpl
def freezeframe_register_backends(register: Callable[[type[Any]], None]) -> None:
    """Register the ``clone`` backend."""
    register(CloneBackend)
