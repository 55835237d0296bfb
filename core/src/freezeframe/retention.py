"""Retention: what the ``keep`` rules (:mod:`freezeframe.keep`, re-exported here) no
longer keep (:func:`deletions`), the release of snapshots whose
copies are made (:func:`release_and_retain`), and the journaled delete of both
(:func:`delete_all`), which a crash cannot leave half-recorded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from freezeframe._faults import point
from freezeframe.catalog import Catalog, CatalogError
from freezeframe.components import Artifact
from freezeframe.errors import Interrupted, one_line
from freezeframe.keep import KEEP_MAX, RULES, KeepPolicy, select_keep
from freezeframe.records import Proof, RunRecord, RunStatus

if TYPE_CHECKING:
    from freezeframe.specs import Profile

__all__ = [
    "KEEP_MAX",
    "RULES",
    "Deletion",
    "KeepPolicy",
    "delete_all",
    "deletions",
    "release_and_retain",
    "select_keep",
]

log = logging.getLogger("freezeframe")


@dataclass(frozen=True)
class Deletion:
    """An artifact that retention removes (or, with ``--dry-run``, would remove)."""

    run_id: str
    stage: str
    artifact: str
    reason: str
    #: Why the delete failed (it is retried at the next command), or ``None``.
    error: str | None = None

    def to_json(self) -> dict[str, str | None]:
        """The ``prune --json`` form."""
        return {
            "run_id": self.run_id,
            "stage": self.stage,
            "artifact": self.artifact,
            "reason": self.reason,
            "error": self.error,
        }


def deletions(profile: Profile, catalog: Catalog) -> list[Deletion]:
    """Artifacts that the stages' ``keep`` rules no longer keep.

    Whatever the rules say, the newest backup of each stage, its newest verified one
    and the newest proven run (a drill passed on it) are kept. Refused
    (:class:`CatalogError`) while the catalog's history is lost: its rules would run on
    part of the runs only.
    """
    if catalog.history_lost and any(s.keep for s in profile.stages):
        raise CatalogError(
            f"retention is off: the catalog {catalog.path} was found empty and lists "
            f"only the runs since; remove {catalog.lost_marker} once that is dealt with"
        )
    found = []
    runs = catalog.runs(status=RunStatus.SUCCEEDED)
    proven = next((r.run_id for r in runs if r.proof == Proof.PROVEN), None)
    for spec in profile.stages:
        if spec.keep is None:
            continue
        live = [
            (r, s)
            for r in runs
            if (s := r.stage(spec.name)) is not None
            and s.artifact is not None
            and s.deleted_at is None
        ]
        keep = select_keep([(r.run_id, r.started_at) for r, _ in live], spec.keep)
        verified = [r for r, s in live if s.verified_at is not None]
        if verified:
            keep.add(verified[0].run_id)  # runs come newest first
        if proven is not None:
            keep.add(proven)
        for r, s in live:
            if r.run_id not in keep:
                assert s.artifact is not None
                found.append(Deletion(r.run_id, spec.name, s.artifact.id, f"keep {spec.keep}"))
    return found


def release_and_retain(profile: Profile, catalog: Catalog, record: RunRecord) -> None:
    """After a run succeeded: release its snapshots whose copies are made, then apply
    every stage's ``keep``."""
    point("retention.before")
    released = [
        Deletion(record.run_id, spec.name, st.artifact.id, "snapshot released: its copies are made")
        for spec in profile.stages
        if profile.released_after_run(spec)
        and (st := record.stage(spec.name)) is not None
        and st.artifact is not None
    ]
    # Released snapshots have no keep, so no stage is in both lists: still one
    # delete_many per stage. The release goes on when retention is refused.
    delete_all(profile, catalog, released)
    delete_all(profile, catalog, deletions(profile, catalog))


def delete_all(
    profile: Profile, catalog: Catalog, chosen: Sequence[Deletion], *, log_each: bool = True
) -> list[Deletion]:
    """Delete what retention chose, one ``delete_many`` call per stage; returns each
    deletion with its error, if it failed. ``log_each=False``: the caller prints them
    (``prune``), so the log does not say each once more.

    Each artifact is marked deleted and journaled as a pending delete *before*
    it is removed, so a crash never leaves the catalog pointing at something
    gone; the next start finishes pending deletes
    (:func:`freezeframe.recovery.finish_deletes`).
    """
    outcome = {d: d for d in chosen}
    for spec in profile.stages:
        found: list[tuple[RunRecord, Artifact, Deletion]] = []
        for d in chosen:
            rec = catalog.get(d.run_id) if d.stage == spec.name else None
            st = rec.stage(spec.name) if rec else None
            if rec is not None and st is not None and st.artifact is not None:
                found.append((rec, st.artifact, d))
        if not found:
            continue
        for rec, _, _ in found:
            catalog.mark_deleted(rec.run_id, spec.name, time.time())
        try:
            point("retention.delete")
            errors = spec.component.delete_many([a for _, a, _ in found])
        except Interrupted:
            raise  # journaled as pending: the next command finishes these deletes
        except Exception as e:
            errors = {a.id: one_line(e) for _, a, _ in found}
        for rec, artifact, d in found:
            if artifact.id in errors:
                why = f"could not delete {artifact.id} (will retry): {errors[artifact.id]}"
                catalog.add_error(rec.run_id, time.time(), f"stage {spec.name}", why)
                outcome[d] = replace(d, error=errors[artifact.id])
                if log_each:
                    log.warning("stage %s: %s", spec.name, why)
                continue
            catalog.delete_done(rec.run_id, spec.name)
            if log_each:
                log.info(
                    "stage %s: deleted %s of run %s (%s)",
                    spec.name,
                    artifact.id,
                    rec.run_id,
                    d.reason,
                )
    return list(outcome.values())
