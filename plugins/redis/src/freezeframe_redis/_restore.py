"""The restored files of one server: which they are, and what Redis must not find beside them.

A restore lays the backed-up files out under a root by their original
absolute paths; a dump of a save or a rewrite cut short (``temp-*``, only in
a whole-``dir`` backup) and AOF history files (Redis deletes them at its
next start) are removed, nothing through a symlink inside the restored tree.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from freezeframe.plugin import FreezeframeError, is_folder_below, replace_below, unlink_below
from freezeframe_redis._layout import Layout, read_manifest

__all__ = ["restored_layout", "tidy_restored"]


def restored_layout(original: Layout, root: Path) -> Layout | None:
    """The files of ``original`` restored below ``root``, as an AOF or a dump; ``None``
    when none is there."""
    layout = original.under(root)
    if not layout.dir.is_dir():
        return None
    if layout.whole_dir:
        layout = layout.find_manifest().find_dump()
    has_aof, has_rdb = layout.manifest.is_file(), layout.dump.is_file()
    if has_aof and (original.aof or not has_rdb):
        return replace(layout, aof=True)
    if has_rdb:
        return replace(layout, aof=False)
    return None


def tidy_restored(layout: Layout, root: Path) -> None:
    """Remove ``temp-*`` leftovers, and an AOF's history files and their manifest lines."""
    for folder in {layout.dir, layout.aof_dir} if layout.aof else {layout.dir}:
        is_folder_below(root, folder)
    for pattern in ("temp-*.rdb", "temp-*.aof"):
        for leftover in layout.dir.glob(pattern):  # a save or rewrite cut short
            if leftover.is_symlink() or leftover.is_file():
                unlink_below(root, leftover)
    if not layout.aof:
        return
    if layout.manifest.is_symlink():
        raise FreezeframeError(f"{layout.manifest}: a symlink; refusing to follow it")
    try:
        entries = read_manifest(layout.manifest)
    except (OSError, ValueError) as e:
        raise FreezeframeError(str(e)) from None
    history = [f for f in entries if f.type == "h"]
    if not history:
        return
    # Redis deletes them at its next start: do it now, so that it writes nothing then.
    for f in history:
        unlink_below(root, layout.aof_dir / f.name)
    kept = "".join(f"{f.line}\n" for f in entries if f.type != "h")
    replace_below(root, layout.manifest, kept.encode("utf-8", "surrogateescape"))
