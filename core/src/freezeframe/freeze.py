"""The freeze protocol: prepare every application, quiesce them in order by one
deadline, thaw every one whose prepare or quiesce began, whatever happened, then
complete what a capture mode fixed and release what it holds.

:func:`freezeframe.backup.run_backup` calls :func:`thaw_all` from a ``finally`` with
signals shielded; nothing here may leave an application frozen.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from freezeframe import _ordered
from freezeframe._faults import point
from freezeframe.components import ApplicationPlugin, Artifact, Deadline, Role
from freezeframe.copying import tree_counts
from freezeframe.errors import CompletionError, QuiesceError, one_line
from freezeframe.fsutil import syncfs
from freezeframe.preflight import data_paths, snapshot_kinds
from freezeframe.quiesce_order import quiesce_after
from freezeframe.running import Run
from freezeframe.session import Session

__all__ = [
    "THAW_TIMEOUT",
    "complete_all",
    "describe_all",
    "prepare_all",
    "quiesce_all",
    "release_all",
    "thaw_all",
]

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
                if component.completes:  # the capture exists from now on
                    run.app(name, captured_at=time.time())
                point(f"quiesce.after.{name}")
        finally:
            run.app(name, quiesce_end=time.time())

    quiescing = _ordered.Ordered(
        [a.name for a in apps],
        quiesce_after(profile),
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
    run.save(durable=False)  # inside the window; the thaw's save is durable
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
    names = [n for n in _begun(session, run) if run.mode(n) != "crash-consistent"]
    if not names:
        return True
    artifacts = _snapshots(run)
    # Reverse order: an application thaws once every application that waited for it has.
    reverse: dict[str, list[str]] = {n: [] for n in names}
    for a in profile.applications:
        for dep in a.after:
            if dep in reverse and a.name in reverse:
                reverse[dep].append(a.name)

    # A prepare or quiesce still running (past its deadline, or cut short by a signal)
    # is asked to stop, and its unquiesce waits until it has returned.
    running = {n for o in (run.prepare, started) if o is not None for n in o.unfinished}

    # A snapshot-mode application's data is of the end of the snapshot stages.
    snapped = max(
        (
            s.finished_at or 0.0
            for s in run.record.stages
            if s.role == "snapshot" and s.status == "succeeded"
        ),
        default=None,
    )

    def thaw(name: str) -> None:
        component = session.app(name).component
        if name in running:
            _interrupt(name, component)
        if snapped and run.mode(name) == "quiesced" and not component.completes:
            run.app(name, captured_at=snapped)
        with session.alone(component, THAW_TIMEOUT):
            _timed(run, name, "thaw", "unquiesce", lambda: component.unquiesce(artifacts))
        frozen = next(a for a in run.record.applications if a.name == name).frozen_ms
        if frozen is not None:
            run.app(name, writes_blocked_ms=frozen if component.blocks_writes else 0.0)

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


def _interrupt(name: str, component: ApplicationPlugin) -> None:
    try:
        component.interrupt()
    except Exception as e:
        log.warning("application %s: interrupt failed: %s", name, one_line(e))


def _timed(run: Run, name: str, field: str, step: str, call: Callable[[], None]) -> None:
    """``call()`` between the failpoints ``<step>.before/after.<name>``, its start and end
    recorded as the application's ``<field>_start`` and ``<field>_end``."""
    run.app(name, **{f"{field}_start": time.time()})
    try:
        point(f"{step}.before.{name}")
        call()
        point(f"{step}.after.{name}")
    finally:
        run.app(name, **{f"{field}_end": time.time()})


def _begun(session: Session, run: Run) -> list[str]:
    """The applications whose prepare or quiesce began, in profile order."""
    begun = {
        *(run.prepare.started if run.prepare else ()),
        *(run.quiesce.started if run.quiesce else ()),
    }
    return [a.name for a in session.profile.applications if a.name in begun]


def _snapshots(run: Run) -> tuple[Artifact, ...]:
    return tuple(
        s.artifact
        for s in run.record.stages
        if s.role == str(Role.SNAPSHOT) and s.artifact is not None
    )


def complete_all(session: Session, run: Run) -> None:
    """After the thaw, each application quiesced in a mode that completes produces its
    data into the snapshot views (in parallel); each view then lists those paths, so the
    seal, the copies and restore read them.

    Raises :class:`CompletionError` naming each application whose completion failed.
    """
    names = [
        a.name
        for a in session.profile.applications
        if a.component.completes and run.mode(a.name) == "quiesced"
    ]
    if not names:
        return
    snapshots = _snapshots(run)

    def complete(name: str) -> None:
        component = session.app(name).component
        with session.alone(component):
            _timed(run, name, "complete", "complete", lambda: component.complete(snapshots))

    completing = _ordered.Ordered(
        names, {}, complete, stop_on_failure=False, thread_name="complete"
    )
    run.completion = completing.outcome  # before starting: release_all interrupts these
    outcome = completing.run(None)
    run.save()
    if outcome.failed:
        raise CompletionError(
            "; ".join(
                f"application {n!r}: completion failed: {one_line(e)}"
                for n, e in outcome.failed.items()
            )
        )
    completed = {n: [str(p) for p in session.app(n).component.completed_paths()] for n in names}
    for st in run.record.stages:
        if st.role == str(Role.SNAPSHOT) and st.artifact is not None:
            run.stage(st.name, artifact=_with_completions(st.artifact, completed))
    describe_all(session, run, names)  # what the completion found (WAL copied, sizes)
    log.info("completed %s", ", ".join(names))


def _with_completions(artifact: Artifact, completed: dict[str, list[str]]) -> Artifact:
    """``artifact`` listing the paths completed into its view, with their files and bytes."""
    meta = dict(artifact.metadata)
    paths = list(meta.get("paths", []))
    files, size = artifact.files, artifact.bytes
    assert artifact.view is not None  # a snapshot stage makes a view
    inside = False
    for path in (p for ps in completed.values() for p in ps):
        if any(Path(path).is_relative_to(p) for p in paths):
            inside = True  # in a path the snapshot holds (pg_wal): restored with it
            continue
        paths.append(path)
        added_files, added_bytes = tree_counts([artifact.image(path)])
        files += added_files
        size += added_bytes
    meta["paths"] = paths
    meta["completed"] = completed
    done = replace(artifact, metadata=meta)
    if inside and artifact.files:  # what it counted changed (SQLite removes its -wal)
        files, size = tree_counts(image for _, image in done.roots())
    return replace(done, files=files, bytes=size)


def release_all(session: Session, run: Run, failure: BaseException | None) -> None:
    """Every application whose prepare or quiesce began lets go of what its capture holds
    (a completion still running is interrupted first, then waited for).

    Raises :class:`CompletionError` when a release failed and nothing else had
    (``failure``); otherwise the failure is only recorded.
    """
    unfinished = set(run.completion.unfinished) if run.completion is not None else set()
    problems = []
    for name in _begun(session, run):
        component = session.app(name).component
        if name in unfinished:
            _interrupt(name, component)
        try:
            with session.alone(component, THAW_TIMEOUT):
                component.release()
        except Exception as e:
            problems.append(f"application {name!r}: release failed: {one_line(e)}")
    for p in problems:
        run.error("release", p)
    if problems and failure is None:
        raise CompletionError("; ".join(problems))


def describe_all(session: Session, run: Run, names: Sequence[str] | None = None) -> None:
    """Record each application's facts (version, LSN, binlog position) once thawed, and
    those of ``names`` again once completed."""
    for a in session.profile.applications:
        if names is not None and a.name not in names:
            continue
        try:
            with session.alone(a.component, THAW_TIMEOUT):
                facts = dict(a.component.describe())
        except Exception as e:
            facts = {"describe_error": one_line(e)}
        run.app(a.name, facts=facts)
    run.save()
