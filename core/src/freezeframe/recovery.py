"""Cleaning up: what a failed run made, what a crashed run left (its thaw, its outputs,
its record), and the deletes a crash interrupted."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace

from freezeframe.catalog import Catalog
from freezeframe.components import CrashSafety
from freezeframe.drill import clean_up_crashed
from freezeframe.errors import BusyError, FreezeframeError, one_line
from freezeframe.records import RunRecord, RunStatus
from freezeframe.retention import Deletion, delete_all
from freezeframe.running import Run
from freezeframe.session import Session
from freezeframe.watchdog import outlive

__all__ = ["CANCEL_GRACE", "discard_run", "finish_deletes", "reconcile", "remove_outputs"]

log = logging.getLogger("freezeframe")

#: How long a failed run waits for a cancelled stage to clean up after itself.
CANCEL_GRACE = 60.0


def discard_run(session: Session, run: Run) -> None:
    """A failed run keeps nothing: cancel its stages, wait for them, remove what they made."""
    for event in run.cancel_events:
        event.set()
    for worker in run.workers:
        worker.join(CANCEL_GRACE)
        if worker.is_alive():
            run.error("cleanup", f"{worker.name} still running after {CANCEL_GRACE:g}s")
    remove_outputs(
        session, run.catalog, run.record, on_update=lambda rec: setattr(run, "record", rec)
    )


def remove_outputs(
    session: Session,
    catalog: Catalog,
    record: RunRecord,
    on_update: Callable[[RunRecord], None] | None = None,
) -> RunRecord:
    """Delete each stage's artifact of ``record`` (or discard what a stage that made none
    left); records and returns the run as it is then. A failure is recorded, not raised."""
    stages = list(record.stages)
    for i, st in enumerate(stages):
        try:
            spec = session.profile.stage(st.name)
        except FreezeframeError:
            log.warning(
                "run %s: stage %s is no longer in the profile; left its output alone",
                record.run_id,
                st.name,
            )
            continue
        try:
            if st.artifact is not None and st.deleted_at is None:
                spec.component.delete(st.artifact)
                stages[i] = replace(st, deleted_at=time.time())
            elif st.artifact is None and (st.status != "pending" or st.role == "snapshot"):
                # began, made nothing whole; or a snapshot stage whose start the journal
                # may have lost (written inside the window without waiting for the disk)
                spec.component.discard(record.run_id)
        except Exception as e:
            catalog.add_error(
                record.run_id,
                time.time(),
                f"stage {st.name}",
                f"could not remove its output: {one_line(e)}",
            )
        if st.status in ("pending", "running"):
            stages[i] = replace(stages[i], status="skipped" if st.status == "pending" else "failed")
    record = replace(record, stages=tuple(stages))
    if on_update:
        on_update(record)
    catalog.save(record)
    return record


def reconcile(session: Session, catalog: Catalog) -> None:
    """Runs still marked running belong to a process that died (we hold the lock): fail them.
    Drills still marked running too: kill what they started, remove their scratch folders.

    Then finish the deletes a crash interrupted.
    """
    _reconcile_runs(session, catalog)
    clean_up_crashed(catalog)
    finish_deletes(session, catalog)


def _reconcile_runs(session: Session, catalog: Catalog) -> None:
    profile = session.profile
    for rec in catalog.runs(status=RunStatus.RUNNING):
        pid = catalog.pid_of(rec.run_id)
        owners = catalog.owners(rec.run_id)
        if "run" in owners:
            owner, _ = owners["run"]
            if owner.alive() and owner.pid != os.getpid():
                # We hold the lock and it still runs: its lock file was removed or
                # replaced under it. Its run is not ours to judge.
                raise BusyError(
                    f"profile {profile.name!r} is busy: pid {owner.pid} is running "
                    f"{rec.run_id} (its lock file {profile.home / 'lock'} was "
                    "removed or replaced)"
                )
        why = f"interrupted: the freezeframe process (pid {pid}) died during the run"
        log.warning("run %s: %s; removing what it left", rec.run_id, why)
        catalog.add_error(rec.run_id, time.time(), "reconcile", why)
        if "watchdog" in owners:
            # Its watchdog may still be thawing (a late freeze of the dead run): a
            # freeze of ours now would be thawed under us. It ends by itself soon.
            watchdog, until = owners["watchdog"]
            said = outlive(watchdog, until if until is not None else time.monotonic())
            if said:
                catalog.add_error(rec.run_id, time.time(), "reconcile", said)
        _thaw_left_frozen(session, catalog, rec)
        rec = remove_outputs(session, catalog, rec)
        catalog.save(
            replace(
                rec, status=RunStatus.FAILED, error=why, finished_at=rec.finished_at or time.time()
            )
        )


def _thaw_left_frozen(session: Session, catalog: Catalog, rec: RunRecord) -> None:
    """What never thaws by itself (the watchdog kind) is thawed again, in case the
    watchdog died too. Unquiesce is idempotent, so this is safe when it did not."""
    begun = {a.name for a in rec.applications if a.mode in ("quiescing", "quiesced")}
    for app in session.profile.applications:
        if app.name in begun and app.component.crash_safety == CrashSafety.WATCHDOG:
            try:
                with session.alone(app.component):
                    app.component.unquiesce(())
            except Exception as e:
                catalog.add_error(
                    rec.run_id,
                    time.time(),
                    f"application {app.name}",
                    f"reconcile could not thaw it: {one_line(e)}",
                )


def finish_deletes(session: Session, catalog: Catalog) -> None:
    """Deletes a crash (or a failure) interrupted are done again; delete is idempotent."""
    pending = catalog.pending_deletes()
    if pending:
        delete_all(
            session.profile,
            catalog,
            [Deletion(r, s, "?", "finishing an interrupted delete") for r, s in pending],
        )
