"""The run: check, prepare, quiesce, snapshot, thaw, copy, retention — and always the thaw.

The engine talks to components only through :mod:`freezeframe.components`;
it knows no application or backup tool by name.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from freezeframe import _ordered, restoring
from freezeframe._faults import point
from freezeframe.catalog import Catalog, CatalogError, CatalogReadOnly
from freezeframe.components import (
    Artifact,
    CrashSafety,
    Deadline,
    RestoreOptions,
    Role,
    SnapshotKind,
    StageContext,
)
from freezeframe.errors import (
    BusyError,
    FreezeframeError,
    Interrupted,
    QuiesceError,
    StageError,
)
from freezeframe.fsutil import ensure_private_dir, syncfs
from freezeframe.lock import Owner, ProfileLock
from freezeframe.profile import ApplicationSpec, Profile, StageSpec
from freezeframe.records import ApplicationRecord, RunRecord, RunStatus, StageRecord
from freezeframe.registry import Registry, each_implementation
from freezeframe.retention import select_keep
from freezeframe.watchdog import Watchdog, outlive

__all__ = ["Deletion", "Engine", "ProgressFactory"]

log = logging.getLogger("freezeframe")

#: Given a stage name, returns the callback that receives (bytes, files) progress.
ProgressFactory = Callable[[str], Callable[[int, int], None] | None]
#: How long a failed run waits for a cancelled stage to clean up after itself.
CANCEL_GRACE = 60.0
#: How long the thaw may take before it is reported as hung.
THAW_TIMEOUT = 60.0


def new_run_id() -> str:
    """A sortable, unique run id: ``20261129T093012Z-3fa2``."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(2)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().replace("\n", "; ") or type(e).__name__
    return text if isinstance(e, FreezeframeError) else f"{type(e).__name__}: {text}"


@dataclass(frozen=True)
class Deletion:
    """An artifact that retention removes (or, with ``--dry-run``, would remove)."""

    run_id: str
    stage: str
    artifact: str
    reason: str

    def to_json(self) -> dict[str, str]:
        """The ``prune --json`` form."""
        return {
            "run_id": self.run_id,
            "stage": self.stage,
            "artifact": self.artifact,
            "reason": self.reason,
        }


class _Signals:
    """SIGINT/SIGTERM become :class:`Interrupted` in the main thread, once; the thaw is shielded."""

    def __init__(self) -> None:
        self.raised = False
        self.pending: int | None = None
        self.shielded = 0

    @contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _handler(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.raised or self.shielded:
            log.warning("%s received: finishing what must not be cut short first", name)
            self.pending = self.pending or signum
            return
        self.raised = True
        raise Interrupted(signum, name)

    @contextmanager
    def shield(self) -> Iterator[None]:
        self.shielded += 1
        try:
            yield
        finally:
            self.shielded -= 1
        if self.pending is not None and not self.raised and not self.shielded:
            signum, self.pending = self.pending, None
            self.raised = True
            raise Interrupted(signum, signal.Signals(signum).name)


class _Run:
    """The record of the run in progress; updated from worker threads, saved by the main thread."""

    def __init__(self, record: RunRecord, catalog: Catalog, registry: Registry) -> None:
        self.record = record
        self.catalog = catalog
        self.registry = registry
        self._lock = threading.Lock()
        #: Whose quiesce began (so whom to thaw), and threads still working.
        self.prepare: _ordered.Outcome | None = None
        self.quiesce: _ordered.Outcome | None = None
        self.cancel_events: list[threading.Event] = []
        self.workers: list[threading.Thread] = []
        #: Set when the thaw begins: a prepare or quiesce that gets its turn at a plug-in
        #: only after that (its thread had started, not yet begun) must not begin at all,
        #: or it would freeze after its unquiesce and nothing would thaw it again.
        self.thawing = threading.Event()

    def app(self, name: str, **changes: Any) -> None:
        with self._lock:
            apps = tuple(
                replace(a, **changes) if a.name == name else a for a in self.record.applications
            )
            self.record = replace(self.record, applications=apps)

    def stage(self, name: str, **changes: Any) -> StageRecord:
        with self._lock:
            stages = tuple(
                replace(s, **changes) if s.name == name else s for s in self.record.stages
            )
            self.record = replace(self.record, stages=stages)
            found = self.record.stage(name)
            assert found is not None
            return found

    def save(self) -> None:
        self.catalog.save(self.record)

    def mode(self, name: str) -> str:
        return next(a.mode for a in self.record.applications if a.name == name)

    def error(self, source: str, message: str) -> None:
        log.error("%s: %s", source, message)
        self.catalog.add_error(self.record.run_id, time.time(), source, message)


class Engine:
    """Runs the verbs of one loaded profile."""

    def __init__(
        self, profile: Profile, registry: Registry, progress: ProgressFactory | None = None
    ) -> None:
        self.profile = profile
        self.registry = registry
        self.progress = progress or (lambda stage: None)
        #: The signal that interrupted the last backup, if one did.
        self.interrupted_by: int | None = None
        self._serial: dict[int, threading.Lock] = {}
        self._warned_history_lost = False

    @contextmanager
    def _alone(self, component: object, timeout: float = -1) -> Iterator[None]:
        """One call at a time into one component instance: plug-ins need not be thread-safe.

        A signal or a deadline makes the thaw start while a quiesce thread may still be
        inside the plug-in; unquiesce closing a connection under a running query crashed
        the interpreter (SIGSEGV). Only ``interrupt()`` is called outside this lock.
        """
        lock = self._serial.setdefault(id(component), threading.Lock())
        if not lock.acquire(timeout=timeout):
            raise QuiesceError(f"its quiesce is still running after {timeout:g}s")
        try:
            yield
        finally:
            lock.release()

    # -- shared pieces -------------------------------------------------------
    @contextmanager
    def catalog(self, *, read_only: bool | None = None) -> Iterator[Catalog]:
        """The profile's catalog, creating the private state folder on first use.

        ``read_only`` opens it without writing anything (``list``, ``show``); by
        default it is read-only only when the state folder cannot be written, so
        ``restore`` and ``verify`` work from a read-only copy of it.
        """
        if read_only is None:
            read_only = not self.state_writable()
        if not read_only:
            ensure_private_dir(self.profile.home)
        with Catalog(self.profile.home / "catalog.sqlite", read_only=read_only) as catalog:
            if catalog.history_lost and not self._warned_history_lost:
                self._warned_history_lost = True
                log.warning(
                    "the catalog's history is lost: %s; the runs before then are not in it, "
                    "and retention and prune are off until %s is removed",
                    catalog.history_lost,
                    catalog.lost_marker,
                )
            yield catalog

    def state_writable(self) -> bool:
        """Whether the profile's state folder (or the nearest folder above it that
        exists, before the first run) can be written by this process."""
        for folder in (self.profile.home, *self.profile.home.parents):
            if folder.exists():
                return os.access(folder, os.W_OK | os.X_OK)
        return False

    @contextmanager
    def locked(self, command: str) -> Iterator[Catalog]:
        """Hold the profile's lock, reconcile what a crashed run left, and yield the catalog."""
        ensure_private_dir(self.profile.home)
        with (
            ProfileLock(self.profile.home / "lock", self.profile.name, command),
            self.catalog() as catalog,
        ):
            self._reconcile(catalog)
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

    def _notify(self, hook: str, **kwargs: Any) -> None:
        for impl, call in each_implementation(self.registry.pm, hook):
            try:
                call(**kwargs)
            except Exception as e:  # observers never change the run
                log.warning("hook %s of %s failed: %s", hook, impl.plugin_name, _one_line(e))

    def snapshot_kinds(self) -> frozenset[SnapshotKind]:
        """The kinds of snapshot this profile's snapshot stages take."""
        return frozenset(
            s.component.snapshot_kind for s in self.profile.stages if s.role == Role.SNAPSHOT
        )

    def data_paths(self) -> tuple[Path, ...]:
        """Every application's data paths, in profile order, without duplicates."""
        seen: dict[Path, None] = {}
        for app in self.profile.applications:
            with self._alone(app.component):
                paths = app.component.data_paths()
            for p in paths:
                seen.setdefault(Path(p), None)
        return tuple(seen)

    # -- check ---------------------------------------------------------------
    def check(self) -> list[str]:
        """Preflight every component and application/snapshot pairing; returns the problems."""
        problems = []
        for stage in self.profile.stages:
            for app in self.profile.applications:
                kind = stage.component.snapshot_kind
                if stage.role == Role.SNAPSHOT and kind not in app.component.consistent_on:
                    fits = sorted(
                        b.kind
                        for b in self.registry.backends.values()
                        if b.cls.role == Role.SNAPSHOT
                        and b.cls.snapshot_kind in app.component.consistent_on
                    )
                    wanted = " or ".join(sorted(str(k) for k in app.component.consistent_on))
                    problems.append(
                        f"application {app.name!r} ({app.info.kind}) is not consistent on {kind} "
                        f"snapshots such as stage {stage.name!r} ({stage.info.kind}); use a "
                        f"snapshot backend that is {wanted}"
                        + (f" ({', '.join(fits)})" if fits else " (none is installed)")
                    )
        problems += self._frozen_write_problems()
        per_file = [
            s.name
            for s in self.profile.stages
            if s.role == Role.SNAPSHOT and s.component.snapshot_kind == SnapshotKind.PER_FILE
        ]
        if self.profile.thaw == "after-backup" and per_file:
            for app in self.profile.applications:
                if app.component.completes_view_on_thaw:
                    problems.append(
                        f"application {app.name!r} ({app.info.kind}) completes per-file "
                        f"snapshots (stage {per_file[0]!r}) when it thaws, so copies cannot "
                        'be made before the thaw: use thaw = "after-snapshot"'
                    )
        for app in self.profile.applications:
            c = app.component
            if c.crash_safety == CrashSafety.WATCHDOG and not c.watchdog_thaw_command():
                problems.append(
                    f"application {app.name!r} ({app.info.kind}) needs the watchdog "
                    "but gives no thaw command (a bug of its plug-in)"
                )
        components: list[tuple[str, Any]] = [
            *((f"application {a.name!r}", a.component) for a in self.profile.applications),
            *((f"stage {s.name!r}", s.component) for s in self.profile.stages),
        ]
        for label, component in components:
            try:
                with self._alone(component):
                    component.check()
            except FreezeframeError as e:
                problems.append(f"{label}: {_one_line(e)}")
            except Exception as e:
                problems.append(f"{label}: check failed: {_one_line(e)}")
        return problems

    def windowed_stages(self) -> list[StageSpec]:
        """The stages that run while applications are quiesced, in the order they run:
        the snapshots, then (with ``thaw = "after-backup"``) the copies."""
        snapshots = [s for s in self.profile.stages if s.role == Role.SNAPSHOT]
        copies = [s for s in self.profile.stages if s.role == Role.COPY]
        return snapshots + (copies if self.profile.thaw == "after-backup" else [])

    def _frozen_write_problems(self) -> list[str]:
        """A filesystem frozen whole must not be one we write to inside the window."""
        places = [("the state dir", self.profile.home)]
        places += [
            (f"the output of stage {s.name!r}", p)
            for s in self.windowed_stages()
            for p in s.component.writes_to()
        ]
        problems = []
        for app in self.profile.applications:
            for mount in app.component.frozen_mounts():
                dev = _device(Path(mount))
                for what, place in places:
                    if dev is not None and _device(place) == dev:
                        problems.append(
                            f"application {app.name!r} freezes {mount}, which holds {what} "
                            f"({place}); freezeframe must write there while it is frozen: "
                            "move it to another filesystem"
                        )
        return problems

    # -- plan ----------------------------------------------------------------
    def plan(self) -> dict[str, Any]:
        """What a backup would do, step by step, without doing it."""
        apps = self.profile.applications
        try:
            paths: list[str] | str = [str(p) for p in self.data_paths()]
        except Exception as e:
            paths = f"unknown until the applications are reachable: {_one_line(e)}"
        windowed = self.windowed_stages()
        return {
            "profile": self.profile.name,
            "freeze_timeout_s": self.profile.freeze_timeout,
            "thaw": self.profile.thaw,
            "state_dir": str(self.profile.home),
            "data_paths": paths,
            "quiesce_order": _levels({a.name: a.after for a in apps}),
            "applications": [
                {
                    "name": a.name,
                    "plugin": a.info.kind,
                    "on_quiesce_failure": a.on_quiesce_failure,
                    "crash_safety": str(a.component.crash_safety),
                }
                for a in apps
            ],
            "stages": [
                {
                    "name": s.name,
                    "backend": s.info.kind,
                    "role": str(s.role),
                    "source": s.source,
                    "in_freeze_window": s in windowed,
                    "keep": s.keep.to_json() if s.keep else None,
                    "released_after_run": self.profile.released_after_run(s),
                }
                for s in self.profile.stages
            ],
        }

    # -- backup --------------------------------------------------------------
    def backup(self) -> RunRecord:
        """One backup run of the profile; returns its final record (succeeded or failed)."""
        sig = _Signals()
        with sig.installed(), self.locked("backup") as catalog:
            run = _Run(self._new_record(), catalog, self.registry)
            run.catalog.save(run.record, pid=os.getpid())
            run.catalog.set_owner(run.record.run_id, "run", Owner.me())
            log.info("run %s of profile %s started", run.record.run_id, self.profile.name)
            self._notify("freezeframe_run_started", run=run.record)
            status, error = RunStatus.FAILED, None
            try:
                self._backup(run, sig)
                self._make_durable()
                status = RunStatus.SUCCEEDED
            except BaseException as e:
                error = _one_line(e)
                if isinstance(e, Interrupted):
                    self.interrupted_by = e.signum
                run.error("run", error)
                with sig.shield():
                    self._discard_run(run, catalog)
                if not isinstance(e, Exception):
                    raise
            finally:
                run.record = replace(
                    run.record, status=status, error=error, finished_at=time.time()
                )
                try:
                    run.save()
                except CatalogError as e:  # left "running": the next command reconciles it
                    raise CatalogError(f"run {run.record.run_id}: {e}") from e
                log.info("run %s %s", run.record.run_id, status)
            if status == RunStatus.SUCCEEDED:
                try:
                    self._after_success(run, catalog)
                except Interrupted as e:  # the backup stays good; deletes journaled finish later
                    self.interrupted_by = e.signum
                    run.error("retention", f"{_one_line(e)}: it finishes at the next command")
                except Exception as e:  # the backup is good; say loudly that retention is not
                    run.error("retention", _one_line(e))
                run.record = catalog.get(run.record.run_id) or run.record  # what retention did
            self._notify("freezeframe_run_finished", run=run.record)
            return run.record

    def _make_durable(self) -> None:
        """Every stage's output reaches the disk before the run may say it succeeded.

        Done after the thaw (a snapshot's copy need not be synced inside the window).
        """
        point("run.durable")
        synced = syncfs(p for s in self.profile.stages for p in s.component.writes_to())
        log.debug("synced %d filesystem(s) holding the stages' output", synced)

    def _new_record(self) -> RunRecord:
        return RunRecord(
            run_id=new_run_id(),
            profile=self.profile.name,
            status=RunStatus.RUNNING,
            started_at=time.time(),
            thaw=self.profile.thaw,
            applications=tuple(
                ApplicationRecord(a.name, a.info.kind, a.info.distribution, a.info.version)
                for a in self.profile.applications
            ),
            stages=tuple(
                StageRecord(s.name, s.info.kind, str(s.role), source=s.source)
                for s in self.profile.stages
            ),
        )

    def _backup(self, run: _Run, sig: _Signals) -> None:
        problems = self.check()
        if problems:
            raise FreezeframeError("; ".join(problems))
        windowed = self.windowed_stages()
        later = [s for s in self.profile.stages if s not in windowed]

        thaw_commands = [
            list(cmd)
            for a in self.profile.applications
            if a.component.crash_safety == CrashSafety.WATCHDOG
            and (cmd := a.component.watchdog_thaw_command())
        ]
        watchdog: Watchdog | None = None
        failure: BaseException | None = None
        try:
            paths = self._prepare_all(run)
            deadline = Deadline.after(self.profile.freeze_timeout)
            if thaw_commands:
                watchdog = Watchdog.start(thaw_commands, deadline.at)
                # if we die, the next command waits for it: no new run may freeze what it
                # may still be thawing (see _reconcile_runs)
                if (owner := watchdog.owner()) is not None:
                    run.catalog.set_owner(
                        run.record.run_id, "watchdog", owner, Watchdog.until(deadline.at)
                    )
            self._quiesce_all(run, deadline)
            for stage in windowed:
                self._run_stage(run, stage, paths, deadline)
        except BaseException as e:
            failure = e
            raise
        finally:
            with sig.shield():
                thawed = False
                try:
                    point("thaw.before")
                    thawed = self._thaw_all(run, failure)
                    point("thaw.after")
                finally:
                    if watchdog is not None and thawed:
                        watchdog.disarm()
                    elif watchdog is not None:  # our thaw failed: the watchdog tries too
                        watchdog.fire()
                self._describe_all(run)
        self._seal_all(run, windowed)
        for stage in later:
            self._run_stage(run, stage, paths, None)

    def _seal_all(self, run: _Run, stages: Sequence[StageSpec]) -> None:
        """After the thaw, each stage that ran in the window finishes its artifact (the
        snapshot backends read every file for content digests: no freeze time).

        A snapshot released once its copies are made is not sealed: nothing would ever
        verify it, and reading it all would only double the run's reads.
        """
        for spec in stages:
            st = run.record.stage(spec.name)
            if st is None or st.artifact is None or self.profile.released_after_run(spec):
                continue
            started = time.monotonic()
            try:
                sealed = spec.component.seal(st.artifact)
            except BaseException as e:
                run.stage(spec.name, status="failed", error=f"seal failed: {_one_line(e)}")
                run.save()
                if isinstance(e, Interrupted) or not isinstance(e, Exception):
                    raise
                raise StageError(
                    f"stage {spec.name!r} ({spec.info.kind}): seal failed: {_one_line(e)}"
                ) from e
            if sealed is not st.artifact:
                run.stage(spec.name, artifact=sealed)
                run.save()
                log.info("stage %s sealed in %.1f s", spec.name, time.monotonic() - started)

    def _prepare_all(self, run: _Run) -> tuple[Path, ...]:
        """Slow work before the window: each plug-in's prepare(), then syncfs."""
        kinds = self.snapshot_kinds()
        preparing = _ordered.Ordered(
            [a.name for a in self.profile.applications],
            {},
            lambda name: self._prepare_one(run, name, kinds),
            stop_on_failure=False,
            thread_name="prepare",
        )
        run.prepare = preparing.outcome  # before starting: a signal must not lose who began
        outcome = preparing.run(None)
        for name, e in outcome.failed.items():
            raise QuiesceError(f"application {name!r}: prepare failed: {_one_line(e)}") from e
        paths = self.data_paths()
        synced = syncfs(paths)
        log.info(
            "prepared %d application(s); synced %d filesystem(s)",
            len(self.profile.applications),
            synced,
        )
        return paths

    def _prepare_one(self, run: _Run, name: str, kinds: frozenset[SnapshotKind]) -> None:
        point(f"prepare.{name}")
        component = self._app(name).component
        with self._alone(component):
            _not_thawing(run)
            component.prepare(kinds)

    def _app(self, name: str) -> ApplicationSpec:
        return next(a for a in self.profile.applications if a.name == name)

    def _quiesce_all(self, run: _Run, deadline: Deadline) -> None:
        apps = self.profile.applications
        for a in apps:
            run.app(a.name, mode="quiescing")
        run.save()  # journal: what we are about to freeze

        def quiesce(name: str) -> None:
            run.app(name, quiesce_start=time.time())
            try:
                component = self._app(name).component
                with self._alone(component):
                    _not_thawing(run)
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
                reason = f"quiesce failed: {_one_line(outcome.failed[a.name])}"
            elif a.name in outcome.unfinished:
                reason = f"did not quiesce within freeze_timeout ({self.profile.freeze_timeout:g}s)"
            else:
                reason = "not quiesced: an application it waits for failed"
            if a.on_quiesce_failure == "crash-consistent" and not outcome.unfinished:
                run.app(a.name, mode="crash-consistent", error=reason)
                run.error(f"application {a.name}", f"{reason}; backing it up crash-consistent")
                try:
                    with self._alone(a.component):
                        a.component.unquiesce(())
                except Exception as e:
                    fatal.append(
                        f"application {a.name!r}: unquiesce after a failed quiesce "
                        f"failed: {_one_line(e)}"
                    )
                continue
            run.app(a.name, mode="failed", error=reason)
            fatal.append(f"application {a.name!r}: {reason}")
        run.save()
        if fatal:
            raise QuiesceError("; ".join(fatal))

    def _thaw_all(self, run: _Run, failure: BaseException | None) -> bool:
        """Unquiesce everything whose quiesce began; returns whether all of it thawed."""
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
            for a in self.profile.applications
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
        for a in self.profile.applications:
            for dep in a.after:
                if dep in reverse and a.name in reverse:
                    reverse[dep].append(a.name)

        # A prepare or quiesce still running (past its deadline, or cut short by a signal)
        # is asked to stop, and its unquiesce waits until it has returned.
        running = {n for o in (run.prepare, started) if o is not None for n in o.unfinished}

        def thaw(name: str) -> None:
            component = self._app(name).component
            if name in running:
                try:
                    component.interrupt()
                except Exception as e:
                    log.warning("application %s: interrupt failed: %s", name, _one_line(e))
            with self._alone(component, THAW_TIMEOUT):
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
                    f"application {name!r}: unquiesce failed: {_one_line(outcome.failed[name])}"
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

    def _progress_of(self, stage: str) -> Callable[[int, int], None]:
        shown = self.progress(stage)

        def report(done: int, files: int) -> None:
            point(f"stage.progress.{stage}")
            if shown is not None:
                shown(done, files)

        return report

    def _describe_all(self, run: _Run) -> None:
        for a in self.profile.applications:
            try:
                with self._alone(a.component, THAW_TIMEOUT):
                    facts = dict(a.component.describe())
            except Exception as e:
                facts = {"describe_error": _one_line(e)}
            run.app(a.name, facts=facts)
        run.save()

    def _run_stage(
        self, run: _Run, spec: StageSpec, paths: tuple[Path, ...], deadline: Deadline | None
    ) -> Artifact:
        source = None
        if spec.source is not None:
            rec = run.record.stage(spec.source)
            source = rec.artifact if rec else None
            if source is None or source.view is None:
                raise StageError(f"stage {spec.name!r}: its source {spec.source!r} made no view")
        ctx = StageContext(
            run.record.run_id,
            self.profile.name,
            spec.name,
            paths,
            source,
            on_progress=self._progress_of(spec.name),
        )
        run.cancel_events.append(ctx.cancel_event)
        run.stage(spec.name, status="running", started_at=time.time())
        run.save()  # journal: this stage may leave output behind
        result: list[Artifact] = []
        errors: list[BaseException] = []

        def work() -> None:
            try:
                artifact = spec.component.run(ctx)
                result.append(artifact)
                point(f"stage.end.{spec.name}")
            except BaseException as e:
                errors.append(e)

        point(f"stage.start.{spec.name}")
        worker = threading.Thread(target=work, name=f"stage-{spec.name}", daemon=True)
        run.workers.append(worker)
        worker.start()
        try:
            while worker.is_alive():
                wait = 0.5 if deadline is None else min(0.5, deadline.remaining())
                worker.join(wait)
                if deadline is not None and deadline.expired() and worker.is_alive():
                    raise StageError(
                        f"stage {spec.name!r}: freeze_timeout ({self.profile.freeze_timeout:g}s) "
                        "passed before it finished; applications thawed, stage cancelled"
                    )
            if errors:
                e = errors[0]
                raise StageError(f"stage {spec.name!r} ({spec.info.kind}): {_one_line(e)}") from e
            artifact = result[0]
        except BaseException as e:
            ctx.cancel_event.set()
            stage = run.stage(
                spec.name, status="failed", finished_at=time.time(), error=_one_line(e)
            )
            run.save()
            self._notify("freezeframe_stage_finished", run=run.record, stage=stage)
            raise
        stage = run.stage(spec.name, status="succeeded", finished_at=time.time(), artifact=artifact)
        run.save()
        log.info(
            "stage %s made %s (%d files, %d bytes)",
            spec.name,
            artifact.id,
            artifact.files,
            artifact.bytes,
        )
        self._notify("freezeframe_stage_finished", run=run.record, stage=stage)
        return artifact

    def _discard_run(self, run: _Run, catalog: Catalog) -> None:
        """A failed run keeps nothing: cancel its stages, wait for them, remove what they made."""
        for event in run.cancel_events:
            event.set()
        for worker in run.workers:
            worker.join(CANCEL_GRACE)
            if worker.is_alive():
                run.error("cleanup", f"{worker.name} still running after {CANCEL_GRACE:g}s")
        self._remove_outputs(catalog, run.record, on_update=lambda rec: setattr(run, "record", rec))

    def _remove_outputs(
        self,
        catalog: Catalog,
        record: RunRecord,
        on_update: Callable[[RunRecord], None] | None = None,
    ) -> RunRecord:
        stages = list(record.stages)
        for i, st in enumerate(stages):
            try:
                spec = self.profile.stage(st.name)
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
                elif st.artifact is None and st.status != "pending":  # began, made nothing whole
                    spec.component.discard(record.run_id)
            except Exception as e:
                catalog.add_error(
                    record.run_id,
                    time.time(),
                    f"stage {st.name}",
                    f"could not remove its output: {_one_line(e)}",
                )
            if st.status in ("pending", "running"):
                stages[i] = replace(
                    stages[i], status="skipped" if st.status == "pending" else "failed"
                )
        record = replace(record, stages=tuple(stages))
        if on_update:
            on_update(record)
        catalog.save(record)
        return record

    def _reconcile(self, catalog: Catalog) -> None:
        """Runs still marked running belong to a process that died (we hold the lock): fail them.

        Then finish the deletes a crash interrupted.
        """
        self._reconcile_runs(catalog)
        self._finish_deletes(catalog)

    def _reconcile_runs(self, catalog: Catalog) -> None:
        for rec in catalog.runs(status=RunStatus.RUNNING):
            pid = catalog.pid_of(rec.run_id)
            owners = catalog.owners(rec.run_id)
            if "run" in owners:
                owner, _ = owners["run"]
                if owner.alive() and owner.pid != os.getpid():
                    # We hold the lock and it still runs: its lock file was removed or
                    # replaced under it. Its run is not ours to judge.
                    raise BusyError(
                        f"profile {self.profile.name!r} is busy: pid {owner.pid} is running "
                        f"{rec.run_id} (its lock file {self.profile.home / 'lock'} was "
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
            self._thaw_left_frozen(catalog, rec)
            rec = self._remove_outputs(catalog, rec)
            catalog.save(
                replace(
                    rec,
                    status=RunStatus.FAILED,
                    error=why,
                    finished_at=rec.finished_at or time.time(),
                )
            )

    def _thaw_left_frozen(self, catalog: Catalog, rec: RunRecord) -> None:
        """What never thaws by itself (the watchdog kind) is thawed again, in case the
        watchdog died too. Unquiesce is idempotent, so this is safe when it did not."""
        begun = {a.name for a in rec.applications if a.mode in ("quiescing", "quiesced")}
        for app in self.profile.applications:
            if app.name in begun and app.component.crash_safety == CrashSafety.WATCHDOG:
                try:
                    with self._alone(app.component):
                        app.component.unquiesce(())
                except Exception as e:
                    catalog.add_error(
                        rec.run_id,
                        time.time(),
                        f"application {app.name}",
                        f"reconcile could not thaw it: {_one_line(e)}",
                    )

    # -- after a success: release and retention ------------------------------
    def _after_success(self, run: _Run, catalog: Catalog) -> None:
        point("retention.before")
        released = [
            Deletion(
                run.record.run_id,
                spec.name,
                st.artifact.id,
                "snapshot released: its copies are made",
            )
            for spec in self.profile.stages
            if self.profile.released_after_run(spec)
            and (st := run.record.stage(spec.name)) is not None
            and st.artifact is not None
        ]
        # Released snapshots have no keep, so no stage is in both lists: still one
        # delete_many per stage. The release goes on when retention is refused.
        self._delete_all(catalog, released)
        self._delete_all(catalog, self.retention(catalog))

    def retention(self, catalog: Catalog) -> list[Deletion]:
        """Artifacts that the stages' ``keep`` rules no longer keep.

        Whatever the rules say, the newest backup of each stage and its newest
        verified one are kept. Refused (:class:`CatalogError`) while the catalog's
        history is lost: its rules would run on part of the runs only.
        """
        if catalog.history_lost and any(s.keep for s in self.profile.stages):
            raise CatalogError(
                f"retention is off: the catalog {catalog.path} was found empty and lists "
                f"only the runs since; remove {catalog.lost_marker} once that is dealt with"
            )
        deletions = []
        runs = catalog.runs(status=RunStatus.SUCCEEDED)
        for spec in self.profile.stages:
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
            for r, s in live:
                if r.run_id not in keep:
                    assert s.artifact is not None
                    deletions.append(
                        Deletion(r.run_id, spec.name, s.artifact.id, f"keep {spec.keep}")
                    )
        return deletions

    def _delete_all(self, catalog: Catalog, deletions: Sequence[Deletion]) -> None:
        """Delete what retention chose, one ``delete_many`` call per stage.

        Each artifact is marked deleted and journaled as a pending delete *before*
        it is removed, so a crash never leaves the catalog pointing at something
        gone; the next start finishes pending deletes (:meth:`_finish_deletes`).
        """
        for spec in self.profile.stages:
            found: list[tuple[RunRecord, Artifact, Deletion]] = []
            for d in deletions:
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
                errors = {a.id: _one_line(e) for _, a, _ in found}
            for rec, artifact, d in found:
                if artifact.id in errors:
                    why = f"could not delete {artifact.id} (will retry): {errors[artifact.id]}"
                    catalog.add_error(rec.run_id, time.time(), f"stage {spec.name}", why)
                    log.warning("stage %s: %s", spec.name, why)
                    continue
                catalog.delete_done(rec.run_id, spec.name)
                log.info(
                    "stage %s: deleted %s of run %s (%s)",
                    spec.name,
                    artifact.id,
                    rec.run_id,
                    d.reason,
                )

    def _finish_deletes(self, catalog: Catalog) -> None:
        """Deletes a crash (or a failure) interrupted are done again; delete is idempotent."""
        pending = catalog.pending_deletes()
        if pending:
            self._delete_all(
                catalog,
                [Deletion(r, s, "?", "finishing an interrupted delete") for r, s in pending],
            )

    def prune(self, *, dry_run: bool) -> list[Deletion]:
        """Apply every stage's ``keep`` now (with ``dry_run``, only say what would go)."""
        with self.locked("prune") as catalog:
            deletions = self.retention(catalog)
            if not dry_run:
                self._delete_all(catalog, deletions)
            return deletions

    # -- restore and verify --------------------------------------------------
    def find_run(self, catalog: Catalog, ref: str) -> RunRecord:
        """The run ``ref`` names (an id, a unique prefix, or ``latest``)."""
        rec = catalog.get(ref)
        if rec is None:
            what = "no succeeded run yet" if ref == "latest" else f"no run {ref!r}"
            raise FreezeframeError(f"profile {self.profile.name!r}: {what} in {catalog.path}")
        return rec

    def _restorable(self, rec: RunRecord, stage: str | None) -> tuple[StageSpec, Artifact]:
        if rec.status != RunStatus.SUCCEEDED:
            raise FreezeframeError(
                f"run {rec.run_id} {rec.status}; only a succeeded run is a consistent backup"
            )
        candidates = [s for s in rec.stages if s.artifact is not None and s.deleted_at is None]
        if stage is not None:
            named = [s for s in rec.stages if s.name == stage]
            if not named:
                raise FreezeframeError(f"run {rec.run_id} has no stage {stage!r}")
            if named[0] not in candidates:
                raise FreezeframeError(
                    f"run {rec.run_id}: stage {stage!r} has no artifact left "
                    "(released or deleted by retention)"
                )
            candidates = named
        for st in reversed(candidates):
            try:
                return self.profile.stage(st.name), st.artifact  # type: ignore[return-value]
            except FreezeframeError:
                continue
        raise FreezeframeError(
            f"run {rec.run_id}: no stage of it has an artifact left that this profile can restore"
        )

    def restore(
        self,
        ref: str,
        target: Path,
        *,
        stage: str | None = None,
        verify: bool = False,
        preserve_special: bool = False,
    ) -> tuple[RunRecord, str, list[Path]]:
        """Restore run ``ref`` under ``target`` (original absolute paths below it).

        Returns the paths that were restored. On failure, what the restore made under
        ``target`` is removed (it was empty: everything in it is ours), or the error
        says what is left.
        """
        with self.catalog() as catalog:
            rec = self.find_run(catalog, ref)
            spec, artifact = self._restorable(rec, stage)
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise FreezeframeError(
                f"--to {target}: not an empty directory; restore never "
                "overwrites: give a new or empty one"
            )
        made = not target.exists()
        target.mkdir(parents=True, exist_ok=True)
        log.info("restoring %s from stage %s of run %s", artifact.id, spec.name, rec.run_id)
        options = RestoreOptions(preserve_special=preserve_special)
        try:
            try:
                restore: Callable[..., list[Path]] = spec.component.restore
                if "options" in inspect.signature(restore).parameters:
                    restored = restore(artifact, target, options=options)
                else:  # a backend written before RestoreOptions existed
                    restored = restore(artifact, target)
            except FreezeframeError:
                raise
            except Exception as e:
                raise StageError(f"stage {spec.name!r}: restore failed: {_one_line(e)}") from e
            # The run's applications, as the profile knows them today (one added since has
            # nothing in this backup; one removed since has no plug-in configured to ask).
            in_run = {a.name for a in rec.applications}
            for app in self.profile.applications:
                if app.name in in_run:
                    with self._alone(app.component):
                        app.component.prepare_restored(target)
        except BaseException as e:
            left = restoring.remove_below(target)
            if made and not left:
                with contextlib.suppress(OSError):
                    target.rmdir()
            if not left:
                raise
            more = f" (and {len(left) - 3} more)" if len(left) > 3 else ""
            what = f"could not remove what it made: {'; '.join(left[:3])}{more}"
            if not isinstance(e, FreezeframeError):
                log.warning("restore failed and %s", what)
                raise
            error = FreezeframeError(f"{e}; {what}")
            error.exit_code = e.exit_code
            raise error from e
        for app in self.profile.applications:
            if verify and app.name in in_run:
                with self._alone(app.component):
                    app.component.verify_restored(target)
        return rec, spec.name, [p for p in restored if restoring.exists_below(target, p)]

    def verify(
        self, ref: str, *, stage: str | None = None
    ) -> tuple[RunRecord, list[StageRecord], list[str], dict[str, str]]:
        """Verify every live artifact of run ``ref`` (or one stage's); returns the problems
        and, by stage name, the notes of stages that passed but were not fully checked.

        Only a stage that passed with no note is recorded as verified; a stage that failed
        loses any verified mark it had, so retention never keeps it as the newest verified.
        """
        with self.catalog() as catalog:
            rec = self.find_run(catalog, ref)
            stages = [
                s
                for s in rec.stages
                if s.artifact is not None
                and s.deleted_at is None
                and (stage is None or s.name == stage)
            ]
            if not stages:
                raise FreezeframeError(
                    f"run {rec.run_id}: nothing to verify"
                    + (f" in stage {stage!r}" if stage else "")
                )
            problems, checked, notes = [], [], {}
            for st in stages:
                assert st.artifact is not None
                try:
                    note = self.profile.stage(st.name).component.verify(st.artifact)
                except (FreezeframeError, OSError) as e:
                    problems.append(f"stage {st.name!r}: {st.artifact.id}: {_one_line(e)}")
                    self._record_verified(catalog, rec.run_id, st.name, None)
                    checked.append(replace(st, verified_at=None))
                    continue
                if note:
                    notes[st.name] = " ".join(str(note).split())
                    checked.append(st)
                    continue
                verified = replace(st, verified_at=time.time())
                self._record_verified(catalog, rec.run_id, st.name, verified.verified_at)
                checked.append(verified)
            return rec, checked, problems, notes

    @staticmethod
    def _record_verified(catalog: Catalog, run_id: str, stage: str, at: float | None) -> None:
        """Record a verify's outcome (``None``: it failed), or say that a read-only
        catalog cannot take it; the verify itself stands either way."""
        try:
            catalog.mark_verified(run_id, stage, at)
        except CatalogReadOnly:
            log.warning(
                "stage %s %s, but the result could not be recorded: the catalog %s is read-only",
                stage,
                "verified" if at is not None else "failed to verify",
                catalog.path,
            )


def _not_thawing(run: _Run) -> None:
    """Called holding the plug-in's turn, right before a prepare or quiesce begins."""
    if run.thawing.is_set():
        raise QuiesceError("not begun: the thaw had already begun")


def _device(path: Path) -> int | None:
    """The device of ``path`` or of its nearest existing parent."""
    for p in (path, *path.parents):
        try:
            return p.stat().st_dev
        except OSError:
            continue
    return None


def _levels(after: dict[str, tuple[str, ...]]) -> list[list[str]]:
    """Applications grouped by when they may quiesce: each group after the ones before it."""
    levels: list[list[str]] = []
    placed: set[str] = set()
    while len(placed) < len(after):
        level = [
            n for n, deps in after.items() if n not in placed and all(d in placed for d in deps)
        ]
        if not level:
            break
        levels.append(level)
        placed.update(level)
    return levels
