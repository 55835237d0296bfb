"""The ``drill`` verb: prove a backup by restoring it, starting its applications and checking them.

A drill restores a run (from its last stage left, or a named one) into a private
scratch folder, runs every application's restore fix-ups, starts each application on
the copy in isolation through its plug-in (:meth:`ApplicationPlugin.drill`, which runs
the plug-in's deep checks), runs the profile's own checks (``[[application.check]]``)
while every application is up, stops everything and records the verdict. The scratch
folder and every process the drill started go when it ends, on failure and on SIGINT
or SIGTERM too; if freezeframe is killed, the kernel kills what the plug-ins started
(:meth:`DrillContext.spawn`) and the next command of the profile
(:func:`clean_up_crashed`) kills whatever is left and removes the folder.
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import functools
import logging
import os
import secrets
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

from freezeframe import restore, restore_select
from freezeframe.catalog import Catalog
from freezeframe.copying import tree_counts
from freezeframe.drilling import CheckFailed, DrillContext, Running, env_prefix
from freezeframe.errors import FreezeframeError, Interrupted, one_line
from freezeframe.fsutil import under
from freezeframe.lock import Owner, proc_stat
from freezeframe.records import (
    ApplicationRecord,
    DrillApplication,
    DrillRecord,
    DrillStatus,
    Proof,
    RunRecord,
    RunStatus,
)
from freezeframe.running import Signals
from freezeframe.session import Session
from freezeframe.specs import ApplicationSpec, UserCheck
from freezeframe.status import summarize

__all__ = ["clean_up_crashed", "drill_run", "drill_runs", "undrilled"]

log = logging.getLogger("freezeframe")

#: How long a killed drill process may take to be gone before its folder is removed anyway.
KILL_WAIT = 10.0


def new_drill_id() -> str:
    """A sortable, unique drill id, like a run's: ``20261206T093012Z-d3fa2``."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-d" + secrets.token_hex(2)


def undrilled(catalog: Catalog) -> list[RunRecord]:
    """The succeeded runs no drill has given a verdict on, newest first."""
    return [
        r
        for r in catalog.runs(status=RunStatus.SUCCEEDED)
        if r.proof == Proof.NOT_DRILLED
        and any(s.artifact is not None and s.deleted_at is None for s in r.stages)
    ]


def drill_runs(
    session: Session,
    catalog: Catalog,
    signals: Signals,
    ref: str | None,
    *,
    stage: str | None = None,
    every: bool = False,
) -> list[DrillRecord]:
    """Drill run ``ref``; without it, the newest succeeded run not yet drilled (``every``:
    each of them, newest first). Returns the drills' records (none when nothing is left
    to drill)."""
    if ref is not None:
        runs = [restore.find_run(session.profile, catalog, ref)]
    else:
        runs = undrilled(catalog)
        runs = runs if every else runs[:1]
    return [drill_run(session, catalog, signals, r, stage=stage) for r in runs]


def drill_run(
    session: Session,
    catalog: Catalog,
    signals: Signals,
    run: RunRecord,
    *,
    stage: str | None = None,
) -> DrillRecord:
    """Drill one run and record the verdict; the caller holds the profile's lock and has
    installed ``signals``. Raises :class:`Interrupted` (after cleaning up and recording
    the drill as interrupted) when a signal cuts it short."""
    profile = session.profile
    spec, _ = restore.restorable(profile, run, stage)
    drill_id = new_drill_id()
    record = DrillRecord(
        drill_id, run.run_id, profile.name, spec.name, DrillStatus.RUNNING, time.time(), ""
    )
    log.info("drill %s of run %s (stage %s) started", drill_id, run.run_id, spec.name)
    cancel = threading.Event()
    contexts: list[DrillContext] = []
    failure: BaseException | None = None
    scratch = _drill_dir(profile.drill_dir) / f"{profile.name}.{drill_id}"
    record = replace(record, scratch=str(scratch))
    catalog.save_drill(record)  # before the folder exists: a crash leaves nothing unknown
    try:
        _private(scratch)
        record = _drill(session, catalog, record, run, scratch, cancel, contexts)
    except Interrupted as e:
        failure = e
        record = replace(record, status=DrillStatus.INTERRUPTED, error=one_line(e))
    except FreezeframeError as e:  # before anything could be checked: the drill failed
        record = replace(record, status=DrillStatus.FAILED, error=one_line(e))
    except BaseException as e:
        failure = e
        record = replace(record, status=DrillStatus.INTERRUPTED, error=one_line(e))
    finally:
        cancel.set()
        with signals.shield():
            cleaned = _clean_up(catalog, record, contexts)
            record = replace(record, finished_at=time.time())
            catalog.save_drill(record)
            if cleaned:
                catalog.drill_cleaned(drill_id)
    log.info("drill %s of run %s %s", drill_id, run.run_id, record.status)
    if failure is not None:
        raise failure
    status = summarize(catalog, session.profile.name)
    session.notify("freezeframe_drill_finished", run=run, drill=record, status=status)
    return record


def _drill(
    session: Session,
    catalog: Catalog,
    record: DrillRecord,
    run: RunRecord,
    scratch: Path,
    cancel: threading.Event,
    contexts: list[DrillContext],
) -> DrillRecord:
    """Restore, start, check, stop: the drill's record with its verdict."""
    root = scratch / "root"
    restore.restore(session, run.run_id, root, stage=record.stage)
    facts = {a.name: a for a in run.applications}
    apps = [a for a in session.profile.applications if a.name in facts]

    def spawned(pid: int) -> None:
        # a child we have not reaped yet is ours even if it ended: its group may live on
        if (owner := Owner.of(pid, zombie=True)) is not None:
            catalog.add_drill_process(record.drill_id, owner)

    for app in apps:
        work = scratch / "work" / app.name
        work.mkdir(parents=True, mode=0o711)
        work.chmod(0o711)  # whatever the umask: a server user must reach its socket folder
        contexts.append(
            DrillContext(
                app.name,
                root,
                work,
                facts=facts[app.name].facts,
                capture=facts[app.name].capture,
                on_spawn=spawned,
                cancel_event=cancel,
            )
        )
    with ExitStack() as stack:
        running: dict[str, Running | None] = {}
        for app, ctx in zip(apps, contexts, strict=True):
            running[app.name] = stack.enter_context(_started(app, ctx))
        for app, ctx in zip(apps, contexts, strict=True):
            for check in app.checks:
                ctx.record(
                    check.name,
                    "user",
                    functools.partial(_user_check, check, app, run, running, ctx),
                )
    for ctx in contexts:
        if ctx.results and all(r.status == "skipped" for r in ctx.results):
            why = "; ".join(f"{r.name}: {r.detail}" for r in ctx.results)
            ctx.fail("checked", f"no check could run here ({why})")
    results = []
    for app, ctx in zip(apps, contexts, strict=True):
        files, size = _restored_size(session, run, facts[app.name], root)
        results.append(DrillApplication(app.name, app.info.kind, size, files, tuple(ctx.results)))
    failed = any(ctx.failed for ctx in contexts)
    return replace(
        record,
        status=DrillStatus.FAILED if failed else DrillStatus.PASSED,
        applications=tuple(results),
    )


@contextlib.contextmanager
def _started(app: ApplicationSpec, ctx: DrillContext) -> Iterator[Running | None]:
    """The plug-in's drill, where a plug-in that breaks (on entering or leaving) is a failed
    check of its application, not the end of the drill; a signal still ends it."""
    try:
        manager: AbstractContextManager[Running | None] = app.component.drill(ctx)
        running = manager.__enter__()
    except Interrupted:
        raise
    except Exception as e:
        ctx.fail("start", f"the plug-in's drill broke: {one_line(e)}")
        yield None
        return
    try:
        yield running
    except BaseException as e:
        if not manager.__exit__(type(e), e, e.__traceback__):
            raise
    else:
        try:
            manager.__exit__(None, None, None)
        except Interrupted:
            raise
        except Exception as e:
            ctx.fail("stop", f"stopping it broke: {one_line(e)}")


def _user_check(
    check: UserCheck,
    app: ApplicationSpec,
    run: RunRecord,
    running: dict[str, Running | None],
    ctx: DrillContext,
) -> str:
    """Run one ``[[application.check]]``; what it saw, or :class:`CheckFailed`."""
    mine = running.get(app.name)
    if check.sql is not None:
        if mine is None or mine.query is None:
            raise CheckFailed(f"not run: {app.name} did not start on the restored copy")
        value = mine.query(check.sql, check.timeout)
        if not _matches(value, check.expect):
            raise CheckFailed(f"returned {_shown(value)}, expected {_shown(check.expect)}")
        return f"returned {_shown(value)}"
    env = {
        "FREEZEFRAME_PROFILE": run.profile,
        "FREEZEFRAME_RUN_ID": run.run_id,
        "FREEZEFRAME_RESTORED_ROOT": str(ctx.root),
        "FREEZEFRAME_APPLICATIONS": " ".join(n for n, r in running.items() if r is not None),
    }
    for name, r in running.items():
        for key, value in (r.connection if r is not None else {}).items():
            env[env_prefix(name) + key.upper()] = str(value)
    if mine is not None:
        env.update(mine.client_env)
    return ctx.run_command(check.command, timeout=check.timeout, env=env) or "exit status 0"


def _matches(value: Any, expect: Any) -> bool:
    """Whether a query's ``value`` is the ``expect`` of the profile: a boolean also as 1 or
    0 (MariaDB and SQLite answer comparisons so), a number by value whatever its type
    (``Decimal``, float), anything else by equality or by its text."""
    if isinstance(expect, bool):
        if isinstance(value, bool):
            return value is expect
        return isinstance(value, int) and value in (0, 1) and bool(value) is expect
    if isinstance(expect, (int, float)) and isinstance(value, (int, float, decimal.Decimal)):
        if isinstance(value, bool):
            return False
        return decimal.Decimal(str(value)) == decimal.Decimal(str(expect))
    if isinstance(expect, (datetime.date, datetime.time)) and not isinstance(value, str):
        return bool(value == expect)
    return bool(value == expect) or (value is not None and str(value) == str(expect))


def _shown(value: Any) -> str:
    """A value as the check's result says it: TOML's spelling for booleans."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _restored_size(
    session: Session, run: RunRecord, record: ApplicationRecord, root: Path
) -> tuple[int, int]:
    """Files and bytes restored of an application: its paths in the run
    (:func:`restore_select.recorded_paths`) below the drill's root; zeros when a run
    recorded before runs kept them has a plug-in that cannot say without its server."""
    try:
        paths = restore_select.recorded_paths(session, run, record)
    except FreezeframeError:
        return 0, 0
    return tree_counts(under(root, p) for p in paths)


# -- the scratch folder and what runs in it -------------------------------------
def _drill_dir(parent: Path) -> Path:
    """``drill_dir``, made (mode 0711) if missing: it must be a real folder of ours that
    nobody else can write (it may be in a shared ``/var/tmp``), or no drill is made."""
    try:
        parent.mkdir(mode=0o711, parents=True)
        parent.chmod(0o711)
    except FileExistsError:
        pass
    except OSError as e:
        raise FreezeframeError(f"drill_dir {parent}: cannot make it: {e.strerror}") from None
    st = os.lstat(parent)
    if not stat.S_ISDIR(st.st_mode):
        raise FreezeframeError(f"drill_dir {parent}: not a folder (a symlink is not taken)")
    if st.st_uid != os.geteuid():
        raise FreezeframeError(
            f"drill_dir {parent}: belongs to uid {st.st_uid}, not to this user: "
            "name a folder of your own"
        )
    if st.st_mode & 0o022:
        raise FreezeframeError(
            f"drill_dir {parent}: others can write it (mode {stat.S_IMODE(st.st_mode):o}): "
            "chmod go-w it"
        )
    return parent


def _private(scratch: Path) -> None:
    """Make one drill's folder, mode 0711: the servers a drill starts as their own users
    reach their files through it; nobody lists it."""
    try:
        scratch.mkdir(mode=0o711)
        scratch.chmod(0o711)
    except OSError as e:
        raise FreezeframeError(f"drill_dir: cannot make {scratch}: {e.strerror}") from None


def _clean_up(catalog: Catalog, record: DrillRecord, contexts: Sequence[DrillContext]) -> bool:
    """Kill every process the drill started and whatever they left in their process groups,
    reap them, then remove its scratch folder; returns whether both are done (else the
    next command tries again)."""
    return clean_up(catalog, record, [p for ctx in contexts for p in ctx.spawned()])


def clean_up(
    catalog: Catalog, record: DrillRecord, children: Sequence[subprocess.Popen[bytes]] = ()
) -> bool:
    """Kill the process groups recorded for ``record`` (``children``: those of them that are
    this process's, reaped here) and remove its scratch folder; returns whether both are
    done."""
    owners = catalog.drill_processes(record.drill_id)
    for owner in owners:
        _kill_group(owner)
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(KILL_WAIT)  # reaped: no zombie of ours is left
    deadline = time.monotonic() + KILL_WAIT
    while _left(owners) and time.monotonic() < deadline:
        time.sleep(0.05)
    if left := _left(owners):
        log.warning("drill %s: process group(s) %s did not die", record.drill_id, left)
    if not record.scratch:
        return not left
    scratch = Path(record.scratch)
    try:
        shutil.rmtree(scratch)  # by descriptors: a symlink inside is removed, never followed
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("drill %s: could not remove %s: %s", record.drill_id, scratch, e)
        return False
    return not left


def _ours(owner: Owner) -> bool:
    """Whether the process group ``owner`` leads is still the drill's: the kernel gives no
    new process the id of a group that has members, so the group is someone else's only
    when another process now holds the leader's pid."""
    now = Owner.of(owner.pid, zombie=True)
    return now is None or now == owner


def _kill_group(owner: Owner) -> None:
    """SIGKILL the process group ``owner`` leads (every process the drill spawns leads one):
    the process, and what it left there (a server's children, a command's background job),
    even once the leader is gone. A tracked process that leads no group is killed alone."""
    if not _ours(owner):
        return
    try:
        os.killpg(owner.pid, signal.SIGKILL)
    except ProcessLookupError:
        if owner.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(owner.pid, signal.SIGKILL)


def _left(owners: Sequence[Owner]) -> list[int]:
    """The groups of ``owners`` that still have a live member (a zombie is not one)."""
    groups = {o.pid for o in owners if _ours(o)}
    if not groups:
        return []
    alive = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (pgid := _pgid(int(entry.name))) in groups:
            alive.add(pgid)
    return sorted(alive)


def _pgid(pid: int) -> int | None:
    """The process group of ``pid`` (``None`` when it is gone or a zombie)."""
    fields = proc_stat(pid)
    return None if fields is None or fields[0] in (b"Z", b"X") else int(fields[5 - 3])


def clean_up_crashed(catalog: Catalog) -> None:
    """A drill still marked running belongs to a process that died (the caller holds the
    lock): kill what it started, remove its folder, record it as interrupted. A drill whose
    cleanup failed before is cleaned up again."""
    for record in catalog.drills(uncleaned=True):
        if record.status == DrillStatus.RUNNING:
            why = "interrupted: the freezeframe process died during the drill"
            log.warning(
                "drill %s of run %s: %s; removing what it left", record.drill_id, record.run_id, why
            )
            record = replace(
                record, status=DrillStatus.INTERRUPTED, error=why, finished_at=time.time()
            )
            catalog.save_drill(record)
        if clean_up(catalog, record):
            catalog.drill_cleaned(record.drill_id)
