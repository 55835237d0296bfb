"""The two component types: application plug-ins and backends (the data that crosses the
boundary between them and the core is in :mod:`freezeframe.boundary`, re-exported here).

A third party writes a plug-in exactly as we do: subclass
:class:`ApplicationPlugin` or :class:`Backend`, give it a ``kind`` name, and
register the class from a ``freezeframe_register_*`` hook. Both bases are
abstract: the core refuses to register a class that leaves one of their
abstract methods out, and names the missing ones.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from freezeframe.boundary import (
    Artifact,
    Deadline,
    ProgressCallback,
    RestoreOptions,
    StageContext,
    WindowEstimate,
)
from freezeframe.config import Table
from freezeframe.drilling import DrillContext, Running

__all__ = [
    "API_VERSION",
    "ApplicationPlugin",
    "Artifact",
    "Backend",
    "CrashSafety",
    "Deadline",
    "DrillContext",
    "ProgressCallback",
    "RestoreOptions",
    "Role",
    "Running",
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


class Component(ABC):
    """What every component type shares: its kind, its API version, its name and table."""

    kind: ClassVar[str]
    api_version: ClassVar[int] = API_VERSION

    def __init__(self, name: str, table: Table) -> None:
        self.name = name

    def check(self) -> None:
        """Preflight: reachable, permitted, version supported. Raise a FreezeframeError if not."""


class ApplicationPlugin(Component):
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
    #: The completing modes whose completion produces all of the application's data (a
    #: dump), so that they need no snapshot of its files: the only ones the dumps view of
    #: a profile without a snapshot stage can take (PostgreSQL's ``"base-backup"``, which
    #: completes a copy of the data directory, is not one).
    self_contained_modes: ClassVar[frozenset[str]] = frozenset({"logical"})
    #: Whether ``quiesce`` blocks the application's writes until ``unquiesce`` (the run
    #: records its freeze window as ``writes_blocked_ms``); ``False`` for a plug-in that
    #: fixes its point in time without blocking any write (PostgreSQL), recorded as 0.
    blocks_writes: ClassVar[bool] = True
    #: Whether a drill can run the profile's ``sql`` checks on the restored copy
    #: (:attr:`Running.query`); ``check`` refuses a ``sql`` check of a plug-in without.
    answers_sql: ClassVar[bool] = False

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

    @contextmanager
    def drill(self, ctx: DrillContext) -> Iterator[Running | None]:
        """Start the application on the copy restored under ``ctx.root`` and check it deeply.

        A context manager: before it yields, run the checks that need the copy stopped,
        start the application in isolation (its sockets and logs in ``ctx.work``, a
        private port or none, never the original's; processes through
        :meth:`DrillContext.spawn`), let it recover, and run its deep checks, each through
        :meth:`DrillContext.check`; yield how to reach it (:class:`Running`; ``None``
        when it did not start: the start is then a failed check). The profile's checks
        run while it is yielded, with every application of the run started. On leaving,
        stop it (also when the block raised), then run the checks that need it stopped
        again. Raise only for what is not a finding about the copy (an interrupt);
        a finding is a failed check.

        By default: :meth:`verify_restored` as the one check, and nothing to reach.
        """
        ctx.check("verify_restored", lambda: self.verify_restored(ctx.root))
        yield None

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


class Backend(Component):
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
        RestoreOptions()`` gets what the user asked (``--preserve-special``, and the
        original paths ``--app``/``--path`` select: restore only what
        ``options.selects``, and return ``options.within`` the artifact's paths); one
        that does not is called without it, as before, and cannot restore a part.
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

    def check_completions(self, completed: Sequence[Path]) -> None:
        """For a snapshot stage that takes completions, before anything freezes: refuse,
        with a :class:`~freezeframe.errors.FreezeframeError` naming the path, a path
        that applications will complete into its view (``completed_paths``, a logical
        capture's ``dump_path``) and that its view cannot hold (btrfs: not on the
        snapshotted filesystem). By default every path is fine."""

    def own_paths(self) -> Sequence[Path]:
        """For a snapshot stage: the paths it takes besides the applications' (its table's
        ``paths``). They must be taken while the applications are frozen; a stage with
        none, in a profile whose applications all capture in a self-contained mode, runs
        after the thaw (the window then holds only the captures)."""
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
