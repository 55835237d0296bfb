"""Where a profile stands, from its catalog: its last run, its last success and how old it
is, its last drill, how many backups it keeps, whether a run or drill is going on or a
crashed one awaits its reconcile. What ``freezeframe status`` prints and what observers
are told with every finished run and drill (:class:`ProfileStatus`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from freezeframe.catalog import Catalog
from freezeframe.lock import Holder, holder
from freezeframe.records import DrillRecord, DrillStatus, Proof, RunRecord, RunStatus, iso

__all__ = ["ProfileStatus", "summarize"]


@dataclass(frozen=True)
class ProfileStatus:
    """One profile's standing, as its catalog says at ``at`` (a Unix time)."""

    profile: str
    at: float
    #: The newest run, whatever its status.
    last_run: RunRecord | None = None
    #: The newest succeeded run.
    last_success: RunRecord | None = None
    #: The newest drill that reached a verdict (passed or failed).
    last_drill: DrillRecord | None = None
    #: The newest run a drill proved.
    last_proven: RunRecord | None = None
    #: Succeeded runs with at least one artifact left: the backups there are to restore.
    retained: int = 0
    #: The process holding the profile's lock (a backup, drill or prune going on), when the
    #: lock was probed (``summarize(..., lock=...)``); ``None``: nobody holds it.
    busy: Holder | None = None
    #: The run going on: marked running in the catalog, and its process alive.
    running: RunRecord | None = None
    #: Runs marked running whose process is dead: the next command that takes the lock
    #: reconciles them (marks them failed and removes what they left).
    crashed_runs: tuple[str, ...] = ()
    #: Drills marked running while nobody holds the lock (judged only when it was probed).
    crashed_drills: tuple[str, ...] = ()

    @property
    def success_age(self) -> float | None:
        """Seconds since the newest success finished (``None``: there is none)."""
        run = self.last_success
        if run is None:
            return None
        return max(0.0, self.at - (run.finished_at or run.started_at))

    def stale(self, max_age: float) -> bool:
        """Whether the newest success is older than ``max_age`` seconds, or there is none."""
        age = self.success_age
        return age is None or age > max_age

    @property
    def in_progress(self) -> dict[str, Any] | None:
        """What is going on (the ``in_progress`` of ``--json``), or ``None``."""
        busy, running = self.busy, self.running
        if busy is None:  # a run whose lock file was removed, or the lock was not probed
            if running is None:
                return None
            busy = Holder(None, "backup", iso(running.started_at))
        return {
            "command": busy.command,
            "pid": busy.pid,
            "since": busy.since,
            "run_id": None if running is None else running.run_id,
        }

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form (``status``)."""
        last, ok, drill, proven = (
            self.last_run,
            self.last_success,
            self.last_drill,
            self.last_proven,
        )
        return {
            "profile": self.profile,
            "at": iso(self.at),
            "last_run": None
            if last is None
            else {
                "run_id": last.run_id,
                "status": str(last.status),
                "started_at": iso(last.started_at),
                "finished_at": iso(last.finished_at),
                "error": last.error,
            },
            "last_success": None
            if ok is None
            else {"run_id": ok.run_id, "finished_at": iso(ok.finished_at), "proof": ok.proof},
            "last_success_age_seconds": None
            if self.success_age is None
            else round(self.success_age, 3),
            "last_drill": None
            if drill is None
            else {
                "drill_id": drill.drill_id,
                "run_id": drill.run_id,
                "status": str(drill.status),
                "finished_at": iso(drill.finished_at),
            },
            "last_proven": None if proven is None else proven.run_id,
            "retained": self.retained,
            "in_progress": self.in_progress,
            "awaiting_reconcile": {
                "runs": list(self.crashed_runs),
                "drills": list(self.crashed_drills),
            },
        }


def summarize(
    catalog: Catalog, profile: str, *, at: float | None = None, lock: Path | None = None
) -> ProfileStatus:
    """Where ``profile`` stands in ``catalog`` now (or at ``at``).

    ``lock``, the profile's lock file, is probed without waiting (:func:`~freezeframe.lock.holder`)
    to say who holds it: give it when the caller does not hold the lock itself (``status``).
    A run marked running is going on while the process the catalog records for it lives
    (or, when none is recorded, while someone holds the lock); otherwise it crashed and
    awaits the next command's reconcile. A drill marked running is judged the same way by
    the lock alone, so only when ``lock`` is given.
    """
    now = time.time() if at is None else at
    busy = None if lock is None else holder(lock)
    runs = catalog.runs()  # newest first
    succeeded = [r for r in runs if r.status == RunStatus.SUCCEEDED]
    drills = catalog.drills()
    verdicts = [d for d in drills if d.status in (DrillStatus.PASSED, DrillStatus.FAILED)]
    marked = [r for r in runs if r.status == RunStatus.RUNNING]
    alive = [r for r in marked if _lives(catalog, r, busy)]
    return ProfileStatus(
        profile=profile,
        at=now,
        last_run=runs[0] if runs else None,
        last_success=succeeded[0] if succeeded else None,
        last_drill=verdicts[0] if verdicts else None,
        last_proven=next((r for r in succeeded if r.proof == Proof.PROVEN), None),
        retained=sum(
            1
            for r in succeeded
            if any(s.artifact is not None and s.deleted_at is None for s in r.stages)
        ),
        busy=busy,
        running=alive[0] if alive else None,
        crashed_runs=tuple(r.run_id for r in marked if r not in alive),
        crashed_drills=tuple(
            d.drill_id
            for d in drills
            if d.status == DrillStatus.RUNNING and lock is not None and busy is None
        ),
    )


def _lives(catalog: Catalog, run: RunRecord, busy: Holder | None) -> bool:
    """Whether the process of ``run`` (marked running) still runs it."""
    owners = catalog.owners(run.run_id)
    if "run" in owners:
        owner, _ = owners["run"]
        return owner.alive()
    return busy is not None  # died before it recorded itself, or an older freezeframe's
