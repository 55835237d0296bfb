"""The verbs of one loaded profile, one method each, over a :class:`Session`.

Each job lives in its own module: :mod:`~freezeframe.preflight` (pairing rules,
``check``, ``plan``), :mod:`~freezeframe.backup` (the run) with
:mod:`~freezeframe.freeze` (prepare, quiesce, thaw) and :mod:`~freezeframe.stages`,
:mod:`~freezeframe.recovery` (failed and crashed runs), :mod:`~freezeframe.retention`
(keep rules, prune), :mod:`~freezeframe.restore` (restore, verify) and
:mod:`~freezeframe.drill` (restore, start and check: the proof of a backup). The engine
talks to components only through :mod:`freezeframe.components`; it knows no
application or backup tool by name.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from freezeframe import planning, preflight, recovery, restore, retention
from freezeframe.backup import BackupResult, run_backup
from freezeframe.catalog import Catalog
from freezeframe.drill import drill_runs
from freezeframe.errors import BusyError
from freezeframe.fsutil import ensure_private_dir
from freezeframe.lock import ProfileLock
from freezeframe.profile import Profile
from freezeframe.records import DrillRecord, RunRecord, StageRecord
from freezeframe.registry import Registry
from freezeframe.retention import Deletion
from freezeframe.running import Signals
from freezeframe.session import Session
from freezeframe.stages import ProgressFactory

__all__ = ["BackupResult", "Deletion", "Engine", "ProgressFactory"]


class Engine:
    """Runs the verbs of one loaded profile."""

    def __init__(self, profile: Profile, registry: Registry) -> None:
        self.session = Session(profile, registry)
        self.profile = profile
        self.registry = registry

    # -- the session: catalog and lock ----------------------------------------
    @contextmanager
    def catalog(self, *, read_only: bool | None = None) -> Iterator[Catalog]:
        """The profile's catalog (see :meth:`Session.catalog`)."""
        with self.session.catalog(read_only=read_only) as catalog:
            yield catalog

    def state_writable(self) -> bool:
        """Whether the profile's state folder can be written by this process."""
        return self.session.state_writable()

    @contextmanager
    def locked(self, command: str) -> Iterator[Catalog]:
        """Hold the profile's lock, reconcile what a crashed run left, and yield the catalog."""
        ensure_private_dir(self.profile.home)
        with (
            ProfileLock(self.profile.home / "lock", self.profile.name, command),
            self.session.catalog() as catalog,
        ):
            recovery.reconcile(self.session, catalog)
            yield catalog

    def reconcile_if_idle(self) -> None:
        """Clean up after a crashed run now, unless a run is going on (then it is not ours)."""
        if not (self.profile.home / "catalog.sqlite").exists():
            return
        try:
            with self.locked("reconcile"):
                pass
        except BusyError:
            pass

    # -- the verbs --------------------------------------------------------------
    def check(self) -> preflight.Problems:
        """Preflight every component and application/snapshot pairing; returns the problems."""
        return preflight.check(self.session)

    def plan(self) -> dict[str, Any]:
        """What a backup would do, step by step, without doing it."""
        return planning.plan(self.session)

    def data_paths(self) -> tuple[Path, ...]:
        """Every application's data paths, in profile order, without duplicates."""
        return preflight.data_paths(self.session)

    def backup(self, *, progress: ProgressFactory | None = None) -> BackupResult:
        """One backup run of the profile: its final record (succeeded or failed) and the
        signal (SIGINT, SIGTERM) that cut it short, if one did. ``progress`` gives, for a
        stage name, the callback that receives its (bytes, files) progress."""
        signals = Signals()
        with signals.installed(), self.locked("backup") as catalog:
            return run_backup(self.session, catalog, signals, progress)

    def prune(self, *, dry_run: bool) -> list[Deletion]:
        """Apply every stage's ``keep`` now (with ``dry_run``, only say what would go); the
        deletions, each with its error if it failed. They are not logged: the caller says
        each once."""
        with self.locked("prune") as catalog:
            deletions = retention.deletions(self.profile, catalog)
            if dry_run:
                return deletions
            return retention.delete_all(self.profile, catalog, deletions, log_each=False)

    def find_run(self, catalog: Catalog, ref: str) -> RunRecord:
        """The run ``ref`` names (an id, a unique prefix, or ``latest``)."""
        return restore.find_run(self.profile, catalog, ref)

    def restore(
        self,
        ref: str,
        target: Path,
        *,
        stage: str | None = None,
        verify: bool = False,
        preserve_special: bool = False,
        apps: Sequence[str] = (),
        paths: Sequence[Path | str] = (),
    ) -> restore.Restored:
        """Restore run ``ref`` under ``target``, all of it or the data of ``apps`` and the
        trees at ``paths`` (see :func:`freezeframe.restore.restore`)."""
        return restore.restore(
            self.session,
            ref,
            target,
            stage=stage,
            verify=verify,
            preserve_special=preserve_special,
            apps=apps,
            paths=paths,
        )

    def verify(
        self, ref: str, *, stage: str | None = None
    ) -> tuple[RunRecord, list[StageRecord], list[str], dict[str, str]]:
        """Verify every live artifact of run ``ref`` (see :func:`freezeframe.restore.verify`)."""
        return restore.verify(self.session, ref, stage=stage)

    def drill(
        self, ref: str | None, *, stage: str | None = None, every: bool = False
    ) -> list[DrillRecord]:
        """Drill run ``ref``, or the newest succeeded run not yet drilled (``every``: each
        of them); see :func:`freezeframe.drill.drill_runs`."""
        signals = Signals()
        with signals.installed(), self.locked("drill") as catalog:
            return drill_runs(self.session, catalog, signals, ref, stage=stage, every=every)

    def drills(self, catalog: Catalog, run_id: str) -> list[DrillRecord]:
        """The drills of ``run_id``, newest first."""
        return catalog.drills(run_id)
