"""freezeframe snapshot backend ``btrfs``: read-only subvolume snapshots, one instant each.

Each subvolume that holds a data path (or a path of ``paths``) is snapshotted
once, read-only, into ``<dir>/<run id>/<name>``; several paths on one
subvolume share its snapshot. The snapshots are made in
``<dir>/.<run id>.partial`` and the folder is renamed when all exist, so a
view never holds half a run. A btrfs snapshot is one instant of its whole
subvolume (what a power cut at that instant would have left on disk), and
takes milliseconds whatever the size of the data.

The view is ``<dir>/<run id>``; a path's image is inside its subvolume's
snapshot, which ``metadata["locations"]`` records (see
:meth:`freezeframe.Artifact.image`). After the thaw the run is sealed: a
SHA-256 of every file of every path goes into ``<dir>/<run id>.manifest``
(:mod:`freezeframe.plugin.digests`), which ``verify`` reads every byte against.

When an application of the profile completes into the view after the thaw
(a capture mode, :attr:`freezeframe.plugin.StageContext.completed_paths`), the
snapshots are taken writable instead, and the seal, which the core calls once
every completion is in, first makes each read-only
(``btrfs property set -ts SNAP ro true``). ``verify`` refuses a snapshot that is
not read-only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from freezeframe.plugin import (
    Artifact,
    Backend,
    ConfigError,
    FreezeframeError,
    RestoreOptions,
    Role,
    SnapshotKind,
    StageContext,
    Table,
    Target,
    copy_in,
    digests,
    find_tool,
    fsync_dir,
    hookimpl,
    outermost,
    run_tool,
    writable_dir,
)
from freezeframe_btrfs._fs import (
    SUBVOLUME_ROOT_INO,
    Location,
    foreign_below,
    fs_type,
    fs_uuid,
    locate,
)

__all__ = ["BtrfsBackend"]

log = logging.getLogger(__name__)

#: A snapshot of a synced filesystem takes milliseconds; the freeze deadline cancels sooner.
SNAPSHOT_TIMEOUT = 120.0
#: ``subvolume delete --commit-after`` waits for one transaction commit.
DELETE_TIMEOUT = 300.0
NOT_COUNTED = "files and bytes are not counted: a snapshot shares every extent with the live data"


@dataclass(frozen=True)
class _Snapshot:
    """One subvolume to snapshot, the name of its snapshot, and the paths it holds."""

    name: str
    subvolume: Path
    members: tuple[Location, ...]


class BtrfsBackend(Backend):
    """Snapshot every subvolume holding a data path, read-only, into ``dir/<run id>``."""

    kind = "btrfs"
    role = Role.SNAPSHOT
    snapshot_kind = SnapshotKind.ATOMIC
    takes_completions = True  # taken writable when one does, sealed read-only after

    def __init__(self, name: str, table: Table) -> None:
        super().__init__(name, table)
        self.dir = table.get_path("dir")
        self.paths: list[Path] = table.get_paths("paths", must_exist=True)
        for p in self.paths:
            if p.is_relative_to(self.dir) or self.dir.is_relative_to(p):
                raise ConfigError("paths", f"{p} and dir {self.dir} contain one another")

    # -- check ---------------------------------------------------------------
    def check_completions(self, completed: Sequence[Path]) -> None:
        """Each path an application completes into the snapshot (or the nearest folder
        above it that exists) must be on this btrfs filesystem, outside ``dir``."""
        filesystem = self._filesystem()
        for path in completed:
            anchor = path
            while not os.path.lexists(anchor) and anchor != anchor.parent:
                anchor = anchor.parent
            try:
                self._locate(anchor, filesystem)
            except FreezeframeError:
                raise FreezeframeError(
                    f"{path}, which an application writes into the snapshot after the thaw "
                    f"(a logical capture's file or dump_path), is not on the btrfs filesystem "
                    f"of dir {self.dir} (or overlaps dir): put it on that filesystem"
                ) from None

    def own_paths(self) -> list[Path]:
        """The table's ``paths``: taken while the applications are frozen."""
        return list(self.paths)

    def check(self) -> None:
        """``btrfs`` is installed; ``dir`` is on btrfs (created if missing) and writable;
        every path of ``paths`` can be snapshotted into it."""
        find_tool("btrfs")
        existing = self.dir
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        kind = fs_type(existing)
        if kind != "btrfs":
            raise FreezeframeError(
                f"dir {self.dir} is on {kind}, not btrfs; btrfs snapshots stay on the "
                "filesystem they snapshot: put dir on the btrfs filesystem of the data"
            )
        writable_dir(self.dir)
        self._plan(outermost(self.paths))

    # -- run -----------------------------------------------------------------
    def _partial(self, run_id: str) -> Path:
        return self.dir / f".{run_id}.partial"

    def _filesystem(self) -> str:
        """The UUID of the btrfs filesystem that holds ``dir``."""
        if not self.dir.is_dir():
            raise FreezeframeError(f"dir {self.dir} does not exist (check creates it)")
        kind = fs_type(self.dir)
        if kind != "btrfs":
            raise FreezeframeError(f"dir {self.dir} is on {kind}, not btrfs")
        return fs_uuid(self.dir)

    def _plan(
        self, sources: list[Path], completed: Sequence[Path] = ()
    ) -> tuple[str, list[_Snapshot], dict[Path, Location]]:
        """The filesystem's UUID, the subvolumes to snapshot for ``sources`` and
        ``completed`` (the paths completions will write), and where each completed path
        (or the nearest folder above it that exists) is.

        Every refusal happens here, before any snapshot is taken.
        """
        filesystem = self._filesystem()
        groups: dict[Path, list[Location]] = {}
        for src in sources:
            loc = self._locate(src, filesystem)
            nested = foreign_below(loc.real) if loc.is_dir else None
            if nested is not None:
                raise FreezeframeError(
                    f"{src} contains {nested}, another subvolume or mount, which a snapshot of "
                    f"subvolume {loc.subvolume} would hold as an empty folder; keep the data "
                    "on one subvolume (make it a plain folder) or back it up separately"
                )
            groups.setdefault(loc.subvolume, []).append(loc)
        anchors = {}
        for path in completed:
            anchor = path
            while not os.path.lexists(anchor) and anchor != anchor.parent:
                anchor = anchor.parent
            anchors[path] = loc = self._locate(anchor, filesystem)
            groups.setdefault(loc.subvolume, [])
        plan, taken = [], set()
        for subvolume, members in groups.items():
            base = subvolume.name or "root"
            name, n = base, 1
            while name in taken:
                n += 1
                name = f"{base}-{n}"
            taken.add(name)
            plan.append(_Snapshot(name, subvolume, tuple(members)))
        return filesystem, plan, anchors

    def _locate(self, src: Path, filesystem: str) -> Location:
        """Where ``src`` is; refused when it and ``dir`` overlap or it is on another
        filesystem."""
        if self.dir.is_relative_to(src) or src.is_relative_to(self.dir):
            raise FreezeframeError(
                f"dir {self.dir} and data path {src} contain one another; "
                "put snapshots somewhere else"
            )
        loc = locate(src)
        if self.dir.resolve().is_relative_to(loc.real):
            raise FreezeframeError(
                f"dir {self.dir} lies inside data path {src}; put snapshots somewhere else"
            )
        if loc.filesystem != filesystem:
            raise FreezeframeError(
                f"{src} is on another btrfs filesystem than dir {self.dir}; a snapshot "
                "stays on the filesystem it snapshots: put dir on the one that holds it"
            )
        return loc

    def run(self, context: StageContext) -> Artifact:
        """Snapshot each subvolume that holds a data path, a path of ``paths`` or a path
        an application completes into the view: read-only, or writable when an
        application completes (:meth:`seal` makes them read-only once it has)."""
        btrfs = find_tool("btrfs")
        sources = outermost([*context.data_paths, *self.paths])
        completed = context.completed_paths
        if not sources and not completed:
            raise FreezeframeError(
                "nothing to snapshot: no application has a data path and `paths` is empty"
            )
        filesystem, plan, anchors = self._plan(sources, completed)
        view, partial = self.dir / context.run_id, self._partial(context.run_id)
        flags = [] if completed else ["-r"]
        partial.mkdir(mode=0o700)
        try:
            for snap in plan:
                context.check()
                source, target = str(snap.subvolume), str(partial / snap.name)
                run_tool(
                    [btrfs, "subvolume", "snapshot", *flags, source, target],
                    context=context,
                    timeout=SNAPSHOT_TIMEOUT,
                )
            context.check()
            partial.chmod(0o755)
            # Each snapshot committed itself; the engine syncs dir (writes_to) after the thaw,
            # which makes the rename durable without an fsync inside the freeze window.
            partial.rename(view)
        except BaseException:
            try:
                self.discard(context.run_id)
            except Exception as e:  # the run's own error matters more; the engine discards again
                log.warning("could not remove the snapshots of run %s: %s", context.run_id, e)
            raise
        name_of = {s.subvolume: s.name for s in plan}
        locations = {str(m.path): str(view / s.name / m.relative) for s in plan for m in s.members}
        for path, loc in anchors.items():
            image = view / name_of[loc.subvolume] / loc.relative / path.relative_to(loc.path)
            locations[str(path)] = str(image)
        metadata: dict[str, Any] = {
            "method": "snapshot",
            "paths": [str(p) for p in sources],
            "locations": locations,
            "snapshots": {s.name: str(s.subvolume) for s in plan},
            "filesystem": filesystem,
            "note": NOT_COUNTED,
        }
        if completed:
            metadata["writable"] = True  # until seal(): completions write into it
        return Artifact(id=context.run_id, view=view, metadata=metadata)

    # -- restore, verify -----------------------------------------------------
    def _view(self, artifact: Artifact) -> Path:
        view = artifact.view or self.dir / artifact.id
        if not view.is_dir():
            raise FreezeframeError(f"snapshot {view} is gone")
        return view

    def restore(
        self, artifact: Artifact, target: Path, *, options: RestoreOptions = RestoreOptions()
    ) -> list[Path]:
        """Copy every path out of the snapshots (or those ``options.paths`` select) to
        ``target`` + its original absolute path.

        Read and written without following a symlink (:func:`freezeframe.plugin.copy_in`);
        folders above a path inside its snapshot get the snapshot's owner and mode, those
        above the subvolume 0755. With ``options.preserve_special`` the snapshots are
        verified first.
        """
        view = self._view(artifact)
        if options.preserve_special and (note := self.verify(artifact)):
            raise FreezeframeError(
                f"--preserve-special restores special files only from a verified snapshot: {note}"
            )
        restored = []
        links: dict[tuple[int, int], str] = {}
        roots = dict.fromkeys(original for original, _ in artifact.roots())
        with Target(target, preserve_special=options.preserve_special) as out:
            for original in options.within(roots):
                image = artifact.image(original)
                whole = original in roots  # a path the snapshot took must be in it
                if not image.is_relative_to(view) or (whole and not os.path.lexists(image)):
                    raise FreezeframeError(f"{image} is missing from the snapshot")
                rel = original.relative_to(original.anchor).as_posix()
                image_rel = image.relative_to(view).as_posix()
                if copy_in(out, view, image_rel, rel, links=links, missing_ok=not whole):
                    restored.append(target / rel)
            out.finish()
        return restored

    def seal(self, artifact: Artifact) -> Artifact:
        """After the thaw and the completions: make snapshots taken writable read-only,
        then record a SHA-256 of every file of every path in the manifest."""
        if artifact.metadata.get("writable"):
            view, btrfs = self._view(artifact), find_tool("btrfs")
            for name in artifact.metadata.get("snapshots", {}):
                run_tool(
                    [btrfs, "property", "set", "-ts", str(view / name), "ro", "true"], timeout=60
                )
            metadata = {k: v for k, v in artifact.metadata.items() if k != "writable"}
            artifact = replace(artifact, metadata=metadata)
        return digests.seal(artifact)

    def verify(self, artifact: Artifact) -> str | None:
        """Every snapshot is there and is a read-only subvolume, and every byte of every
        path is as the manifest sealed it. For a snapshot made before manifests were, only
        that every path is there, with a note that its contents were not checked."""
        view = self._view(artifact)
        btrfs = find_tool("btrfs")
        for name in artifact.metadata.get("snapshots", {}):
            snap = view / name
            if not snap.is_dir() or snap.stat().st_ino != SUBVOLUME_ROOT_INO:
                raise FreezeframeError(f"snapshot {snap} is missing (not a subvolume)")
            out = run_tool([btrfs, "property", "get", "-ts", str(snap), "ro"], timeout=60).stdout
            if out.strip() == "ro=true":
                continue
            if artifact.metadata.get("writable"):
                raise FreezeframeError(
                    f"snapshot {snap} was never sealed: it is still writable, as taken for "
                    "the completions of its run"
                )
            raise FreezeframeError(f"snapshot {snap} is not sealed read-only ({out.strip()})")
        if digests.sealed(artifact):
            digests.check(replace(artifact, view=view))
            return None
        for _, image in artifact.roots():
            if not os.path.lexists(image):
                raise FreezeframeError(f"{image} is missing from the snapshot")
        return digests.UNSEALED

    def writes_to(self) -> Sequence[Path]:
        """``dir``: the snapshots are made there."""
        return [self.dir]

    # -- delete, discard -----------------------------------------------------
    def delete(self, artifact: Artifact) -> None:
        """Delete the run's snapshots, its folder and its manifest."""
        view = artifact.view or self.dir / artifact.id
        self._remove(view)
        digests.remove(view)

    def delete_many(self, artifacts: Sequence[Artifact]) -> dict[str, str]:
        """Delete the snapshots of several runs with one ``btrfs subvolume delete`` (one
        commit), then their folders; ``{artifact id: error}`` for what could not go."""
        folders = {a.id: a.view or self.dir / a.id for a in artifacts}
        snapshots = [s for folder in folders.values() for s in _snapshots_in(folder)]
        if snapshots:
            try:
                _delete_subvolumes(snapshots)
            except FreezeframeError:
                return super().delete_many(artifacts)  # one by one, to know which failed
        errors = {}
        for artifact_id, folder in folders.items():
            try:
                self._remove(folder)
                digests.remove(folder)
            except Exception as e:
                errors[artifact_id] = str(e) or type(e).__name__
        return errors

    def discard(self, run_id: str) -> None:
        """Delete whatever snapshots run ``run_id`` left, made or half-made."""
        for folder in (self._partial(run_id), self.dir / run_id):
            self._remove(folder)
        digests.remove(self.dir / run_id)

    def _remove(self, folder: Path) -> None:
        """Delete the snapshots in ``folder`` (one commit), then the folder; gone is fine."""
        if folder.is_symlink() or not folder.is_dir():
            return
        snapshots = _snapshots_in(folder)
        if snapshots:
            _delete_subvolumes(snapshots)
        try:
            folder.rmdir()
        except OSError as e:
            raise FreezeframeError(
                f"{folder}: cannot remove it: {e.strerror} "
                "(it holds something that is not a snapshot of freezeframe's)"
            ) from None
        fsync_dir(folder.parent)


def _snapshots_in(folder: Path) -> list[Path]:
    """The subvolumes directly in ``folder`` (none when it is gone)."""
    if folder.is_symlink() or not folder.is_dir():
        return []
    return [
        p
        for p in sorted(folder.iterdir())
        if p.is_dir() and not p.is_symlink() and p.stat().st_ino == SUBVOLUME_ROOT_INO
    ]


def _delete_subvolumes(subvolumes: Sequence[Path]) -> None:
    """``btrfs subvolume delete --commit-after``: gone, and still gone after a power cut."""
    run_tool(
        [find_tool("btrfs"), "subvolume", "delete", "--commit-after", *map(str, subvolumes)],
        timeout=DELETE_TIMEOUT,
    )


@hookimpl
def freezeframe_register_backends(register: Callable[[type[Any]], None]) -> None:
    """Register the ``btrfs`` backend."""
    register(BtrfsBackend)
