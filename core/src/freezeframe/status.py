"""Where a profile stands, from its catalog: its last run, its last success and how old it
is, its last drill, how many backups it keeps. What ``freezeframe status`` prints and what
observers are told with every finished run and drill (:class:`ProfileStatus`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from freezeframe.catalog import Catalog
from freezeframe.records import DrillRecord, Proof, RunRecord, RunStatus, iso

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

    @property
    def success_age(self) -> float | None:
        """Seconds since the newest success finished (``None``: there is none)."""
        run = self.last_success
        if run is None:
            return None
        return max(0.0, self.at - (run.finished_at or run.started_at))

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
        }


def summarize(catalog: Catalog, profile: str, *, at: float | None = None) -> ProfileStatus:
    """Where ``profile`` stands in ``catalog`` now (or at ``at``)."""
    runs = catalog.runs()  # newest first
    succeeded = [r for r in runs if r.status == RunStatus.SUCCEEDED]
    drills = [d for d in catalog.drills() if d.status in ("passed", "failed")]
    return ProfileStatus(
        profile=profile,
        at=time.time() if at is None else at,
        last_run=runs[0] if runs else None,
        last_success=succeeded[0] if succeeded else None,
        last_drill=drills[0] if drills else None,
        last_proven=next((r for r in succeeded if r.proof == Proof.PROVEN), None),
        retained=sum(
            1
            for r in succeeded
            if any(s.artifact is not None and s.deleted_at is None for s in r.stages)
        ),
    )
