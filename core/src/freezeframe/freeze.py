"""The freeze protocol: prepare every application, quiesce them in order by one
deadline, and thaw every one whose prepare or quiesce began, whatever happened.

:func:`freezeframe.backup.run_backup` calls :func:`thaw_all` from a ``finally`` with
signals shielded; nothing here may leave an application frozen.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from freezeframe import _ordered
from freezeframe._faults import point
from freezeframe.components import Deadline, Role
from freezeframe.errors import QuiesceError, one_line
from freezeframe.fsutil import syncfs
from freezeframe.preflight import data_paths, snapshot_kinds
from freezeframe.running import Run
from freezeframe.session import Session

__all__ = ["THAW_TIMEOUT", "describe_all", "prepare_all", "quiesce_all", "thaw_all"]

log = logging.getLogger("freezeframe")

#: How long the thaw may take before it is reported as hung.
THAW_TIMEOUT = 60.0


def prepare_all(session: Session, run: Run) -> tuple[Path, ...]:
    """Slow work before the window: each plug-in's prepare(), then syncfs; returns the
    applications' data paths."""
    profile = session.profile
    kinds = snapshot_kinds(profile)

    def prepare(name: str) -> None:
        point(f"prepare.{name}")
        component = session.app(name).component
        with session.alone(component):
            run.not_thawing()
            component.prepare(kinds)

    preparing = _ordered.Ordered(
        [a.name for a in profile.applications],
        {},
        prepare,
        stop_on_failure=False,
        thread_name="prepare",
    )
    run.prepare = preparing.outcome  # before starting: a signal must not lose who began
    outcome = preparing.run(None)
    for name, e in outcome.failed.items():
        raise QuiesceError(f"application {name!r}: prepare failed: {one_line(e)}") from e
    paths = data_paths(session)
    synced = syncfs(paths)
    log.info(
        "prepared %d application(s); synced %d filesystem(s)", len(profile.applications), synced
    )
    return paths


def quiesce_all(session: Session, run: Run, deadline: Deadline) -> None:
    """Quiesce every application (each after those it waits for) by ``deadline``.

    One that fails with ``on_quiesce_failure = "crash-consistent"`` is thawed again and
    backed up as it is; any other failure raises :class:`QuiesceError`.
    """
    profile = session.profile
    apps = profile.applications
    for a in apps:
        run.app(a.name, mode="quiescing")
    run.save()  # journal: what we are about to freeze

    def quiesce(name: str) -> None:
        run.app(name, quiesce_start=time.time())
        try:
            component = session.app(name).component
            with session.alone(component):
                run.not_thawing()
                point(f"quiesce.before.{name}")
                component.quiesce(deadline)
                point(f"quiesce.after.{name}")
        finally:
            run.app(name, quiesce_end=time.time())

    quiescing = _ordered.Ordered(
        [a.name for a in apps],
        {a.name: a.after for a in apps},
        quiesce,
        stop_on_failure=True,
        thread_name="quiesce",
    )
    run.quiesce = quiescing.outcome  # before starting: a signal must not lose who began
    outcome = quiescing.run(deadline.remaining())
    fatal: list[str] = []
    for a in apps:
        if a.name in outcome.done:
            run.app(a.name, mode="quiesced")
            log.info("quiesced %s", a.name)
            continue
        if a.name in outcome.failed:
            reason = f"quiesce failed: {one_line(outcome.failed[a.name])}"
        elif a.name in outcome.unfinished:
            reason = f"did not quiesce within freeze_timeout ({profile.freeze_timeout:g}s)"
        else:
            reason = "not quiesced: an application it waits for failed"
        if a.on_quiesce_failure == "crash-consistent" and not outcome.unfinished:
            run.app(a.name, mode="crash-consistent", error=reason)
            run.error(f"application {a.name}", f"{reason}; backing it up crash-consistent")
            try:
                with session.alone(a.component):
                    a.component.unquiesce(())
            except Exception as e:
                fatal.append(
                    f"application {a.name!r}: unquiesce after a failed quiesce failed: "
                    f"{one_line(e)}"
                )
            continue
        run.app(a.name, mode="failed", error=reason)
        fatal.append(f"application {a.name!r}: {reason}")
    run.save()
    if fatal:
        raise QuiesceError("; ".join(fatal))


def thaw_all(session: Session, run: Run, failure: BaseException | None) -> bool:
    """Unquiesce everything whose prepare or quiesce began; returns whether all of it thawed.

    Raises :class:`QuiesceError` when a thaw failed and nothing else had (``failure``).
    """
    profile = session.profile
    run.thawing.set()
    started = run.quiesce
    # Everything whose prepare or quiesce began is thawed, half-failed or not: unquiesce
    # is idempotent. (A crash-consistent fallback was unquiesced when its quiesce failed.)
    begun = {
        *(run.prepare.started if run.prepare else ()),
        *(started.started if started else ()),
    }
    names = [
        a.name
        for a in profile.applications
        if a.name in begun and run.mode(a.name) != "crash-consistent"
    ]
    if not names:
        return True
    artifacts = tuple(
        s.artifact
        for s in run.record.stages
        if s.role == str(Role.SNAPSHOT) and s.artifact is not None
    )
    # Reverse order: an application thaws once every application that waited for it has.
    reverse: dict[str, list[str]] = {n: [] for n in names}
    for a in profile.applications:
        for dep in a.after:
            if dep in reverse and a.name in reverse:
                reverse[dep].append(a.name)

    # A prepare or quiesce still running (past its deadline, or cut short by a signal)
    # is asked to stop, and its unquiesce waits until it has returned.
    running = {n for o in (run.prepare, started) if o is not None for n in o.unfinished}

    def thaw(name: str) -> None:
        component = session.app(name).component
        if name in running:
            try:
                component.interrupt()
            except Exception as e:
                log.warning("application %s: interrupt failed: %s", name, one_line(e))
        with session.alone(component, THAW_TIMEOUT):
            run.app(name, thaw_start=time.time())
            try:
                point(f"unquiesce.before.{name}")
                component.unquiesce(artifacts)
                point(f"unquiesce.after.{name}")
            finally:
                run.app(name, thaw_end=time.time())

    outcome = _ordered.run_ordered(
        names, reverse, thaw, timeout=THAW_TIMEOUT, stop_on_failure=False, thread_name="thaw"
    )
    problems = []
    for name in names:
        rec = next(x for x in run.record.applications if x.name == name)
        if name in outcome.failed:
            problems.append(
                f"application {name!r}: unquiesce failed: {one_line(outcome.failed[name])}"
            )
        elif name in outcome.unfinished:
            problems.append(
                f"application {name!r}: unquiesce still running after {THAW_TIMEOUT:g}s"
            )
        else:
            log.info("thawed %s (frozen %.1f ms)", name, rec.frozen_ms or 0)
    run.save()
    for p in problems:
        run.error("thaw", p)
    if problems and failure is None:
        raise QuiesceError("; ".join(problems))
    return not problems


def describe_all(session: Session, run: Run) -> None:
    """Record each application's facts (version, LSN, binlog position) once thawed."""
    for a in session.profile.applications:
        try:
            with session.alone(a.component, THAW_TIMEOUT):
                facts = dict(a.component.describe())
        except Exception as e:
            facts = {"describe_error": one_line(e)}
        run.app(a.name, facts=facts)
    run.save()
