"""What a run was: the frozen records the engine writes, the catalog keeps and the CLI prints."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from freezeframe.components import Artifact
from freezeframe.drilling import CheckResult

__all__ = [
    "ApplicationRecord",
    "DrillApplication",
    "DrillRecord",
    "DrillStatus",
    "Proof",
    "RunRecord",
    "RunStatus",
    "StageRecord",
    "group_window_ms",
    "iso",
]


class RunStatus(StrEnum):
    """A run's state in the catalog."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


def iso(ts: float | None) -> str | None:
    """A wall-clock timestamp as ISO 8601 in UTC (``None`` stays ``None``)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class ApplicationRecord:
    """One application in one run: its freeze window and the facts its plug-in recorded."""

    name: str
    plugin: str
    distribution: str
    version: str
    mode: str = "pending"  # quiescing, quiesced, crash-consistent, failed
    quiesce_start: float | None = None
    quiesce_end: float | None = None
    thaw_start: float | None = None
    thaw_end: float | None = None
    facts: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    #: The capture mode: ``"snapshot"``, or one completed after the thaw (``"logical"``).
    capture: str = "snapshot"
    #: When its completion ran (after the thaw), for a mode that completes.
    complete_start: float | None = None
    complete_end: float | None = None
    #: The instant its data is of: in a mode that completes, when its quiesce returned
    #: (the capture existed); in ``"snapshot"`` mode, when the snapshot stages ended (it
    #: was frozen from ``quiesce_end`` until then).
    captured_at: float | None = None
    #: How long its own writes were blocked: its freeze window, or 0 for a plug-in whose
    #: quiesce blocks no write (PostgreSQL); beside the group's window (``RunRecord``).
    writes_blocked_ms: float | None = None
    #: Its data paths and the paths its completion writes (absolute), as the run was
    #: about to take them: what ``restore --app`` restores of it without asking the
    #: application. ``None`` for a run recorded before they were.
    paths: tuple[str, ...] | None = None

    @property
    def frozen_ms(self) -> float | None:
        """Milliseconds from the start of quiesce to the end of unquiesce."""
        if self.quiesce_start is None or self.thaw_end is None:
            return None
        return round((self.thaw_end - self.quiesce_start) * 1000, 3)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {
            "name": self.name,
            "plugin": self.plugin,
            "distribution": self.distribution,
            "version": self.version,
            "mode": self.mode,
            "capture": self.capture,
            "frozen_ms": self.frozen_ms,
            "quiesce_start": iso(self.quiesce_start),
            "quiesce_end": iso(self.quiesce_end),
            "thaw_start": iso(self.thaw_start),
            "thaw_end": iso(self.thaw_end),
            "complete_start": iso(self.complete_start),
            "complete_end": iso(self.complete_end),
            "captured_at": iso(self.captured_at),
            "writes_blocked_ms": self.writes_blocked_ms,
            "facts": dict(self.facts),
            "paths": None if self.paths is None else list(self.paths),
            "error": self.error,
        }


def group_window_ms(apps: Sequence[ApplicationRecord]) -> float | None:
    """The freeze window of ``apps`` together: from the first quiesce to the last thaw of
    those quiesced (``None`` when none was, or a thaw is not recorded)."""
    frozen = [a for a in apps if a.quiesce_start is not None]
    starts = [a.quiesce_start for a in frozen if a.quiesce_start is not None]
    ends = [a.thaw_end for a in frozen if a.thaw_end is not None]
    if not frozen or len(ends) < len(frozen):
        return None
    return round((max(ends) - min(starts)) * 1000, 3)


@dataclass(frozen=True)
class StageRecord:
    """One stage in one run, and the artifact it made."""

    name: str
    backend: str
    role: str
    status: str = "pending"  # pending, running, succeeded, failed, skipped
    source: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    artifact: Artifact | None = None
    error: str | None = None
    deleted_at: float | None = None
    verified_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        a = self.artifact
        return {
            "name": self.name,
            "backend": self.backend,
            "role": self.role,
            "status": self.status,
            "source": self.source,
            "artifact": a.id if a else None,
            "bytes": a.bytes if a else 0,
            "files": a.files if a else 0,
            "view": str(a.view) if a and a.view else None,
            "metadata": dict(a.metadata) if a else {},
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "seconds": (
                round(self.finished_at - self.started_at, 3)
                if self.started_at is not None and self.finished_at is not None
                else None
            ),
            "deleted": self.deleted_at is not None,
            "verified_at": iso(self.verified_at),
            "error": self.error,
        }


@dataclass(frozen=True)
class RunRecord:
    """One run of one profile."""

    run_id: str
    profile: str
    status: RunStatus
    started_at: float
    thaw: str
    finished_at: float | None = None
    applications: tuple[ApplicationRecord, ...] = ()
    stages: tuple[StageRecord, ...] = ()
    error: str | None = None
    #: What its drills say of it (read from the catalog's drills, never saved with it).
    proof: str = "not drilled"

    @property
    def frozen_ms(self) -> float | None:
        """The group's freeze window (:func:`group_window_ms`)."""
        return group_window_ms(self.applications)

    def stage(self, name: str) -> StageRecord | None:
        """The stage called ``name``, if the run has one."""
        return next((s for s in self.stages if s.name == name), None)

    @property
    def pruned(self) -> bool:
        """A succeeded run whose every artifact has since been deleted (retention,
        ``prune``, released snapshots): nothing of it is left to restore."""
        made = [s for s in self.stages if s.artifact is not None]
        return (
            self.status == RunStatus.SUCCEEDED
            and bool(made)
            and all(s.deleted_at is not None for s in made)
        )

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form (``backup``, ``list``, ``show``)."""
        return {
            "run_id": self.run_id,
            "profile": self.profile,
            "status": str(self.status),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "thaw": self.thaw,
            "frozen_ms": self.frozen_ms,
            "applications": [a.to_json() for a in self.applications],
            "stages": [s.to_json() for s in self.stages],
            "error": self.error,
            "proof": self.proof,
            "pruned": self.pruned,
        }


class DrillStatus(StrEnum):
    """A drill's state in the catalog."""

    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"
    #: Cut short (a signal, or freezeframe died): no verdict, the run is as before.
    INTERRUPTED = "interrupted"


class Proof(StrEnum):
    """What the drills of a run say of it (its newest drill with a verdict)."""

    PROVEN = "proven"
    DRILL_FAILED = "drill failed"
    NOT_DRILLED = "not drilled"

    @classmethod
    def of(cls, status: DrillStatus | None) -> Proof:
        """The proof a run's newest drill with a verdict gives (``None``: none has one)."""
        if status == DrillStatus.PASSED:
            return cls.PROVEN
        if status == DrillStatus.FAILED:
            return cls.DRILL_FAILED
        return cls.NOT_DRILLED


@dataclass(frozen=True)
class DrillApplication:
    """One application in one drill: what was restored of it and what its checks found."""

    name: str
    plugin: str
    restored_bytes: int = 0
    restored_files: int = 0
    checks: tuple[CheckResult, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {
            "name": self.name,
            "plugin": self.plugin,
            "restored_bytes": self.restored_bytes,
            "restored_files": self.restored_files,
            "checks": [c.to_json() for c in self.checks],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DrillApplication:
        """The record :meth:`to_json` wrote."""
        name = str(data["name"])
        return cls(
            name,
            str(data["plugin"]),
            int(data.get("restored_bytes") or 0),
            int(data.get("restored_files") or 0),
            tuple(CheckResult.from_json(name, c) for c in data.get("checks", ())),
        )


@dataclass(frozen=True)
class DrillRecord:
    """One drill of one run: restored into ``scratch``, checked, cleaned up."""

    drill_id: str
    run_id: str
    profile: str
    stage: str
    status: DrillStatus
    started_at: float
    scratch: str
    finished_at: float | None = None
    applications: tuple[DrillApplication, ...] = ()
    #: What stopped the drill before its checks could say (a restore that failed); the
    #: failed checks are in ``applications``.
    error: str | None = None

    @property
    def failures(self) -> list[str]:
        """Each failed check, one line: ``application 'db': check 'pg_amcheck': ...``."""
        lines = [
            f"application {a.name!r}: check {c.name!r}: {c.detail}"
            for a in self.applications
            for c in a.checks
            if c.failed
        ]
        return [*([self.error] if self.error else []), *lines]

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form (``drill``, ``show``)."""
        return {
            "drill_id": self.drill_id,
            "run_id": self.run_id,
            "profile": self.profile,
            "stage": self.stage,
            "status": str(self.status),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "seconds": (
                round(self.finished_at - self.started_at, 3)
                if self.finished_at is not None
                else None
            ),
            "scratch": self.scratch,
            "applications": [a.to_json() for a in self.applications],
            "failures": self.failures,
            "error": self.error,
        }
