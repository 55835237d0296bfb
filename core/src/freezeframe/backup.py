"""A backup run: journal it, prepare and quiesce, run the snapshot stages, thaw (always),
complete the captures and release them (always), seal, run the copy stages, make it
durable, record it, then release and retain, and drill it if the profile says so.

The try/finally that thaws is :func:`_window`, the one that releases :func:`_stages`;
:mod:`freezeframe.freeze` holds the protocol they call.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from freezeframe._faults import point
from freezeframe.catalog import Catalog, CatalogError
from freezeframe.components import CrashSafety, Deadline, Role
from freezeframe.drill import drill_run
from freezeframe.errors import FreezeframeError, Interrupted, one_line
from freezeframe.freeze import (
    complete_all,
    describe_all,
    prepare_all,
    quiesce_all,
    release_all,
    thaw_all,
)
from freezeframe.fsutil import syncfs
from freezeframe.lock import Owner
from freezeframe.preflight import application_paths, check, windowed_stages
from freezeframe.profile import StageSpec
from freezeframe.records import DrillRecord, RunRecord, RunStatus
from freezeframe.recovery import discard_run
from freezeframe.retention import release_and_retain
from freezeframe.running import Run, Signals, new_record
from freezeframe.session import Session
from freezeframe.stages import ProgressFactory, run_stage, seal_all
from freezeframe.status import summarize
from freezeframe.watchdog import Watchdog

__all__ = ["BackupResult", "run_backup"]

log = logging.getLogger("freezeframe")


@dataclass(frozen=True)
class BackupResult:
    """How a backup ended: the run's final record, and the signal that cut it short
    (during the run, which then failed, or during retention, after it succeeded)."""

    record: RunRecord
    interrupted_by: int | None = None
    #: The drill of the new run, when the profile asks for one (``drill = "after-backup"``).
    drill: DrillRecord | None = None


def run_backup(
    session: Session, catalog: Catalog, signals: Signals, progress: ProgressFactory | None = None
) -> BackupResult:
    """One backup run; the caller holds the profile's lock and has installed ``signals``."""
    interrupted_by: int | None = None
    run = Run(new_record(session.profile), catalog)
    catalog.save(run.record, pid=os.getpid())
    catalog.set_owner(run.record.run_id, "run", Owner.me())
    log.info("run %s of profile %s started", run.record.run_id, session.profile.name)
    session.notify("freezeframe_run_started", run=run.record)
    status, error = RunStatus.FAILED, None
    try:
        _stages(session, run, signals, progress)
        _make_durable(session)
        status = RunStatus.SUCCEEDED
    except BaseException as e:
        error = one_line(e)
        if isinstance(e, Interrupted):
            interrupted_by = e.signum
        run.error("run", error)
        with signals.shield():
            discard_run(session, run)
        if not isinstance(e, Exception):
            raise
    finally:
        run.record = replace(run.record, status=status, error=error, finished_at=time.time())
        try:
            run.save()
        except CatalogError as e:  # left "running": the next command reconciles it
            raise CatalogError(f"run {run.record.run_id}: {e}") from e
        log.info("run %s %s", run.record.run_id, status)
    if status == RunStatus.SUCCEEDED:
        try:
            release_and_retain(session.profile, catalog, run.record)
        except Interrupted as e:  # the backup stays good; deletes journaled finish later
            interrupted_by = e.signum
            run.error("retention", f"{one_line(e)}: it finishes at the next command")
        except Exception as e:  # the backup is good; say loudly that retention is not
            run.error("retention", one_line(e))
        run.record = catalog.get(run.record.run_id) or run.record  # what retention did
    session.notify(
        "freezeframe_run_finished",
        run=run.record,
        status=summarize(catalog, session.profile.name),
    )
    drill: DrillRecord | None = None
    if status == RunStatus.SUCCEEDED and not interrupted_by and session.profile.drill != "none":
        try:  # outside the window, after the copies and retention: a failure keeps the run
            drill = drill_run(session, catalog, signals, run.record)
        except Interrupted as e:
            interrupted_by = e.signum
        except FreezeframeError as e:  # nothing of the run left to restore
            run.error("drill", one_line(e))
        run.record = catalog.get(run.record.run_id) or run.record  # its proof
    return BackupResult(run.record, interrupted_by, drill)


def _stages(session: Session, run: Run, signals: Signals, progress: ProgressFactory | None) -> None:
    profile = session.profile
    problems = check(session)
    if problems:
        raise FreezeframeError("; ".join(problems))
    for a in profile.applications:  # check may have settled a default capture mode
        own = tuple(str(p) for p in application_paths(session, a))
        run.app(a.name, capture=a.capture, paths=own)
    windowed = windowed_stages(profile)
    # the window holds only the captures (captures_only): the snapshots after the thaw
    views = [s for s in profile.stages if s.role == Role.SNAPSHOT and s not in windowed]
    later = [s for s in profile.stages if s not in windowed and s not in views]

    failure: BaseException | None = None
    try:
        paths = _window(session, run, signals, progress, windowed)
        for stage in views:
            run_stage(session, run, stage, paths, None, progress)
        complete_all(session, run)
    except BaseException as e:
        failure = e
        raise
    finally:
        with signals.shield():  # a held read snapshot never outlives the run
            release_all(session, run, failure)
    seal_all(session, run, [*windowed, *views])
    for stage in later:
        run_stage(session, run, stage, paths, None, progress)


def _window(
    session: Session,
    run: Run,
    signals: Signals,
    progress: ProgressFactory | None,
    windowed: list[StageSpec],
) -> tuple[Path, ...]:
    """Prepare, quiesce, run the windowed stages, and thaw whatever happened; returns the
    applications' data paths."""
    profile = session.profile
    thaw_commands = [
        list(cmd)
        for a in profile.applications
        if a.component.crash_safety == CrashSafety.WATCHDOG
        and (cmd := a.component.watchdog_thaw_command())
    ]
    watchdog: Watchdog | None = None
    failure: BaseException | None = None
    try:
        paths = prepare_all(session, run)
        deadline = Deadline.after(profile.freeze_timeout)
        if thaw_commands:
            watchdog = Watchdog.start(thaw_commands, deadline.at)
            # if we die, the next command waits for it: no new run may freeze what it
            # may still be thawing (see freezeframe.recovery)
            if (owner := watchdog.owner()) is not None:
                run.catalog.set_owner(
                    run.record.run_id, "watchdog", owner, Watchdog.until(deadline.at)
                )
        quiesce_all(session, run, deadline)
        for stage in windowed:
            run_stage(session, run, stage, paths, deadline, progress)
    except BaseException as e:
        failure = e
        raise
    finally:
        with signals.shield():
            thawed = False
            try:
                point("thaw.before")
                thawed = thaw_all(session, run, failure)
                point("thaw.after")
            finally:
                if watchdog is not None and thawed:
                    watchdog.disarm()
                elif watchdog is not None:  # our thaw failed: the watchdog tries too
                    watchdog.fire()
            describe_all(session, run)
    return paths


def _make_durable(session: Session) -> None:
    """Every stage's output reaches the disk before the run may say it succeeded.

    Done after the thaw (a snapshot's copy need not be synced inside the window).
    """
    point("run.durable")
    synced = syncfs(p for s in session.profile.stages for p in s.component.writes_to())
    log.debug("synced %d filesystem(s) holding the stages' output", synced)
