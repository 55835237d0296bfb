"""The two component types and the data that crosses the boundary between them and the core.

A third party writes a plug-in exactly as we do: subclass
:class:`ApplicationPlugin` or :class:`Backend`, give it a ``kind`` name, and
register the class from a ``freezeframe_register_*`` hook. Both bases are
abstract: the core refuses to register a class that leaves one of their
abstract methods out, and names the missing ones.
"""

from __future__ import annotations

import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from freezeframe.config import Table
from freezeframe.copying import outermost
from freezeframe.errors import Cancelled, FreezeframeError
from freezeframe.fsutil import under

__all__ = [
    "API_VERSION",
    "ApplicationPlugin",
    "Artifact",
    "Backend",
    "CrashSafety",
    "Deadline",
    "RestoreOptions",
    "Role",
    "SnapshotKind",
    "StageContext",
    "WindowEstimate",
]

#: The plug-in API this core implements. A component declares the version it
#: was written for in ``api_version``; the core refuses any other.
API_VERSION = 1


class SnapshotKind(StrEnum):
    """How a snapshot backend captures files."""

    ATOMIC = "atomic"  # one instant for every file (btrfs, LVM, ZFS)
    PER_FILE = "per-file"  # file by file (clone, plain copy)


class Role(StrEnum):
    """What a backup stage does."""

    SNAPSHOT = "snapshot"  # taken while applications are quiesced
    COPY = "copy"  # made from an earlier stage's view, after the thaw


class CrashSafety(StrEnum):
    """How a plug-in's quiesce ends if the freezeframe process dies."""

    PROCESS_EXIT = "process-exit"  # a lock or connection the OS or the server releases
    SERVER_TIMEOUT = "server-timeout"  # the server resumes by itself (Redis CLIENT PAUSE <ms>)
    WATCHDOG = "watchdog"  # never thaws by itself: the core's watchdog process thaws it


@dataclass(frozen=True)
class Deadline:
    """The instant (``time.monotonic()``) by which a quiesce must be done."""

    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        """A deadline ``seconds`` from now."""
        return cls(time.monotonic() + seconds)

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        """Whether the instant has passed."""
        return time.monotonic() >= self.at


@dataclass(frozen=True)
class Artifact:
    """What one stage of one run produced, as the catalog keeps it.

    ``id`` is the backend's own name for it (a directory, a file, a restic
    snapshot id). ``view`` is, for snapshot stages, a directory where the
    consistent image can be read with every file under its original absolute
    path (``view / "srv/shop/orders.db"``). ``metadata`` must be JSON-serialisable
    and must never hold a secret.
    """

    id: str
    bytes: int = 0
    files: int = 0
    view: Path | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def roots(self) -> list[tuple[Path, Path]]:
        """``(original absolute path, where its image is)`` for each path a snapshot holds.

        Snapshot backends record the original paths in ``metadata["paths"]``;
        the image of each is :meth:`image`. Without ``paths``, the whole view is one
        root, "/".
        """
        if self.view is None:
            return []
        paths = self.metadata.get("paths")
        if not paths:
            return [(Path("/"), self.view)]
        return [(Path(p), self.image(p)) for p in paths]

    def image(self, original: Path | str) -> Path:
        """Where the image of the absolute path ``original`` is (or goes) in the view:
        ``view / <path without its leading "/">``, unless ``metadata["locations"]`` maps
        it, or a folder above it, elsewhere (btrfs: inside the subvolume snapshot). A
        completion (:meth:`ApplicationPlugin.complete`) writes its files here."""
        if self.view is None:
            raise FreezeframeError(f"artifact {self.id} has no view")
        path = Path(original)
        locations: Mapping[str, str] = self.metadata.get("locations", {})
        for above in (path, *path.parents):
            if str(above) in locations:
                return Path(locations[str(above)]) / path.relative_to(above)
        return under(self.view, path)

    def outer_roots(self) -> list[tuple[Path, Path]]:
        """:meth:`roots` in path order, less those inside another listed path: what a
        copy must read, each tree once. Raises :class:`FreezeframeError` when there is
        none or when an image is missing from the snapshot."""
        roots = sorted(self.roots())
        keep = set(outermost(o for o, _ in roots))  # each tree once
        outer: list[tuple[Path, Path]] = []
        for original, image in roots:
            key = Path(os.path.abspath(original))  # as outermost() normalises it
            if key not in keep:
                continue  # inside a path already listed, or listed twice
            keep.discard(key)
            if not os.path.lexists(image):
                raise FreezeframeError(
                    f"{image} (the image of {original}) is missing from the snapshot"
                )
            outer.append((original, image))
        if not outer:
            raise FreezeframeError("the source snapshot holds no paths")
        return outer


@dataclass(frozen=True)
class RestoreOptions:
    """What the user asked of a restore, beyond where to put it.

    A backend receives it as the ``options`` keyword of :meth:`Backend.restore`
    when its ``restore`` declares that parameter; one that does not is called
    as before, without it.
    """

    #: Make device nodes and FIFOs, and keep setuid/setgid bits (``--preserve-special``),
    #: and then only from an artifact verified genuine. Without it they are left out,
    #: with one warning saying what was.
    preserve_special: bool = False


ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class WindowEstimate:
    """What a snapshot stage predicts, before the run, it will do inside the freeze window
    (:meth:`Backend.window_estimate`)."""

    #: ``"reflink"`` (every file shared, no data copied), ``"copy"`` (``bytes_copied``
    #: bytes copied), ``"mixed"`` (some paths reflinked, ``bytes_copied`` copied), or
    #: ``"unknown"`` (the backend cannot tell: nothing is bounded).
    how: str = "unknown"
    #: The bytes of file data copied inside the window; ``None`` when unknown.
    bytes_copied: int | None = None
    #: Why, in a few words (``"dir /snap is on another filesystem than /srv/db"``).
    note: str = ""


@dataclass
class StageContext:
    """What the core hands a backend's :meth:`Backend.run`."""

    run_id: str
    profile: str
    stage: str
    #: Every application's data paths (absolute), in profile order, without duplicates.
    data_paths: tuple[Path, ...]
    #: For copy stages: the artifact of the stage named by ``source``.
    source: Artifact | None = None
    #: For snapshot stages: the original paths that applications in a capture mode
    #: complete into the view after the thaw (:meth:`ApplicationPlugin.completed_paths`).
    #: A backend that takes completions keeps them writable in its view until
    #: :meth:`Backend.seal`; empty when no application of the profile completes.
    completed_paths: tuple[Path, ...] = ()
    cancel_event: threading.Event = field(default_factory=threading.Event)
    on_progress: ProgressCallback | None = None
    bytes_done: int = 0
    files_done: int = 0

    def check(self) -> None:
        """Raise :class:`Cancelled` if the run was cancelled; call it often in long work."""
        if self.cancel_event.is_set():
            raise Cancelled(f"stage {self.stage} cancelled")

    @property
    def cancelled(self) -> bool:
        """Whether the run was cancelled."""
        return self.cancel_event.is_set()

    def progress(self, *, bytes: int = 0, files: int = 0) -> None:
        """Report work done since the last call (bytes, files); also checks for cancellation."""
        self.bytes_done += bytes
        self.files_done += files
        if self.on_progress is not None:
            self.on_progress(self.bytes_done, self.files_done)
        self.check()


class _Component(ABC):
    kind: ClassVar[str]
    api_version: ClassVar[int] = API_VERSION

    def __init__(self, name: str, table: Table) -> None:
        self.name = name

    def check(self) -> None:
        """Preflight: reachable, permitted, version supported. Raise a FreezeframeError if not."""


class ApplicationPlugin(_Component):
    """An application that freezeframe can quiesce. One instance per ``[[application]]`` table.

    The constructor reads its fields from ``table`` (raising
    :class:`~freezeframe.errors.ConfigError`, which names the field) and does no I/O
    beyond cheap checks such as "does this path exist". ``quiesce`` and ``unquiesce``
    are abstract; every other method has a default that does nothing.
    """

    #: Snapshot kinds this plug-in is consistent on; ``check`` refuses other pairings.
    #: A class attribute; a plug-in whose table decides it sets it per instance (exec).
    consistent_on: frozenset[SnapshotKind] = frozenset(SnapshotKind)
    #: What ends the quiesce if freezeframe dies (documented on the plug-in's page).
    crash_safety: ClassVar[CrashSafety] = CrashSafety.PROCESS_EXIT
    #: The capture modes this plug-in has, the default first. ``"snapshot"``: the snapshot
    #: stage copies the application's files while it is quiesced. Any other mode is a
    #: *capture* that fixes the point in time inside the window and is completed after
    #: the thaw (:meth:`complete`) into writable snapshot views. The core picks the first
    #: mode consistent with the profile's stages unless the profile names one
    #: (``capture = "..."``). A plug-in whose table decides it sets it per instance.
    capture_modes: tuple[str, ...] = ("snapshot",)
    #: The mode the profile chose: the core sets it on the instance once the profile is
    #: loaded, before it calls any other method.
    capture: str = "snapshot"

    @property
    def completes(self) -> bool:
        """Whether the chosen capture mode is completed after the thaw (:meth:`complete`)."""
        return self.capture != "snapshot"

    def prepare(self, snapshot_kinds: frozenset[SnapshotKind]) -> None:
        """Slow work before the freeze window opens (a checkpoint). Blocks nobody.

        Once ``prepare`` has been called, ``unquiesce`` will be called too,
        whatever happens (so a backup mode begun here is always ended).
        """

    def data_paths(self) -> Sequence[Path]:
        """Absolute paths of the files and trees that hold the application's data."""
        return ()

    @abstractmethod
    def quiesce(self, deadline: Deadline) -> None:
        """Put the application in a state ready for backup, by ``deadline``."""

    @abstractmethod
    def unquiesce(self, snapshots: Sequence[Artifact]) -> None:
        """Let the application go on. Idempotent; safe after a quiesce that half-failed.

        ``snapshots`` are the snapshot stages' artifacts (empty when none was
        taken). What a view still needs after the thaw (PostgreSQL's backup_label
        and WAL) is written by :meth:`complete`, in a capture mode that completes.
        """

    def complete(self, snapshots: Sequence[Artifact]) -> None:
        """Produce, after the thaw, the data that a capture mode fixed inside the window.

        Called once per run, after ``unquiesce`` and ``describe`` (which the core calls
        again once every completion succeeded, so facts found here are recorded), only when
        :attr:`capture` is not ``"snapshot"`` and the quiesce succeeded. Writes into
        each snapshot's view, at the image of each original path
        (``snapshot.image(path)``: :meth:`Artifact.image`), what a restore must find
        there, each file whole (a temporary name, then a rename), replacing what the
        snapshot holds there. A failure fails the run, which then deletes the snapshots.
        Completions of several applications run in parallel.
        """

    def completed_paths(self) -> Sequence[Path]:
        """The original absolute paths :meth:`complete` writes into each view, known from
        the table (the snapshot stages receive them before the window,
        :attr:`StageContext.completed_paths`); the core adds them to the snapshot's
        paths, so its seal, the copies and restore read them."""
        return ()

    def release(self) -> None:
        """Let go of whatever the capture holds (a read transaction, an exported snapshot).

        Idempotent. The core calls it for every application whose prepare or quiesce
        began, after :meth:`complete` or on any failure (exception, deadline, signal),
        always after ``unquiesce``. If freezeframe dies instead, what the capture holds
        must end with the process (a connection the server or the file lock drops).
        """

    def interrupt(self) -> None:
        """Make a ``prepare``, ``quiesce`` or ``complete`` under way (or about to begin)
        give up soon, with an error.

        The one method the core calls while another method of the same instance
        may be running (the core calls every other method of an instance one at
        a time): when a signal or the deadline cuts a quiesce short, the core
        calls ``interrupt`` from another thread, waits for ``quiesce`` to
        return, then calls ``unquiesce``. It must therefore be thread-safe and
        must not block; the request holds until ``unquiesce`` returns. The
        default does nothing, and the core then waits for the quiesce to end by
        itself (at most its deadline).
        """

    def describe(self) -> Mapping[str, Any]:
        """Facts worth recording in the run's manifest (version, LSN, binlog position)."""
        return {}

    def prepare_restored(self, root: Path) -> None:
        """Make data restored under ``root`` (original paths below it) ready to start on."""

    def verify_restored(self, root: Path) -> None:
        """Check data restored under ``root``; raise a FreezeframeError when it is unusable."""

    def watchdog_thaw_command(self) -> Sequence[str] | None:
        """For ``crash_safety = WATCHDOG``: the argv that thaws the application from outside.

        The core's watchdog process runs it if freezeframe dies or hangs past the
        deadline while the application is quiesced. It must hold no secret.
        """
        return None

    def frozen_mounts(self) -> Sequence[Path]:
        """Mount points whose whole filesystem this plug-in freezes (fsfreeze).

        The core refuses a profile that would have to write to one of them while
        it is frozen (the state dir, a snapshot stage's output).
        """
        return ()


class Backend(_Component):
    """A backup application. One instance per ``[[backup]]`` table.

    ``run``, ``restore``, ``verify`` and ``delete`` are abstract; the others have defaults.
    """

    role: ClassVar[Role]
    #: For snapshot backends: which kind of snapshot this is.
    snapshot_kind: ClassVar[SnapshotKind] = SnapshotKind.PER_FILE
    #: For snapshot backends: whether the view may be written after the thaw, so that
    #: applications in a capture mode complete their data into it
    #: (:meth:`ApplicationPlugin.complete`).
    takes_completions: ClassVar[bool] = False

    @abstractmethod
    def run(self, context: StageContext) -> Artifact:
        """Do the stage's work and return what it made.

        On any failure, and on :class:`~freezeframe.errors.Cancelled`, leave
        nothing half-written behind.
        """

    @abstractmethod
    def restore(self, artifact: Artifact, target: Path) -> list[Path]:
        """Put every file of ``artifact`` at ``target`` + its original absolute path.

        Returns the restored top-level paths (below ``target``). ``target`` is an
        empty folder; what the artifact holds is not to be trusted (whoever can write
        the artifact's folder or repository may have crafted it): write with
        :class:`freezeframe.restoring.Target`, which follows no symlink and makes
        special files only when asked.

        A backend that declares a keyword argument ``options: RestoreOptions =
        RestoreOptions()`` gets what the user asked (``--preserve-special``); one
        that does not is called without it, as before.
        """

    def seal(self, artifact: Artifact) -> Artifact:
        """Finish ``artifact`` once the applications have thawed; returns it as the catalog
        should keep it (by default, unchanged).

        Called once per run, after the thaw, for each stage that ran inside the freeze
        window, before any later stage reads its view: slow work that needs no frozen
        application belongs here, not in :meth:`run` (the clone and btrfs backends read
        every file to record content digests for :meth:`verify`). Not called for a
        snapshot that the run releases once its copies are made. A failure fails the run,
        which then deletes the artifact.
        """
        return artifact

    @abstractmethod
    def verify(self, artifact: Artifact) -> str | None:
        """Check that ``artifact`` is complete and readable; raise a FreezeframeError if not.

        Returns ``None``, or a one-line note of what could not be checked (an artifact
        made before the backend recorded what it needs): the check passes, but the
        artifact is not recorded as verified.
        """

    @abstractmethod
    def delete(self, artifact: Artifact) -> None:
        """Remove ``artifact``. Deleting what is already gone is not an error."""

    def delete_many(self, artifacts: Sequence[Artifact]) -> dict[str, str]:
        """Remove several artifacts (retention); returns ``{artifact id: error}`` for those
        that could not be removed. Override it when one call does it better (restic's
        ``forget --prune``); by default each is deleted on its own."""
        errors: dict[str, str] = {}
        for artifact in artifacts:
            try:
                self.delete(artifact)
            except Exception as e:  # one stuck artifact must not keep the others
                errors[artifact.id] = str(e) or type(e).__name__
        return errors

    def discard(self, run_id: str) -> None:
        """Remove whatever a run with this id may have left half-made (after a crash)."""

    def writes_to(self) -> Sequence[Path]:
        """Local folders this backend writes into while it runs (its ``dir``)."""
        return ()

    def window_estimate(self, data_paths: Sequence[Path]) -> WindowEstimate:
        """For a snapshot stage, before anything freezes: how it would take ``data_paths``
        (the applications' paths it copies inside the window, those completed after the
        thaw left out) and how many bytes it would copy there.

        Cheap and side-effect free (``check`` and ``plan`` call it); by default
        ``WindowEstimate()``, unknown, which no limit applies to. ``check`` refuses a
        stage that would copy more than the profile's ``max_copy_in_window``.
        """
        return WindowEstimate()
