"""Before a run: which pairings of applications and snapshots are consistent, what must
not be written while frozen, each component's own check, and ``plan``.

Everything here but :func:`check` (which calls each component's ``check()``),
:func:`data_paths` / :func:`completed_paths` / :func:`application_paths` and
:func:`window_estimates` (which ask the applications and the snapshot backends) reads
the loaded profile only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from freezeframe.components import (
    ApplicationPlugin,
    CrashSafety,
    Role,
    SnapshotKind,
    WindowEstimate,
)
from freezeframe.config import format_size
from freezeframe.dumps import DUMPS, DumpsView
from freezeframe.errors import FreezeframeError, one_line
from freezeframe.profile import ApplicationSpec, Profile, StageSpec
from freezeframe.registry import Registry
from freezeframe.session import Session

__all__ = [
    "Problems",
    "application_paths",
    "captures_only",
    "check",
    "completed_paths",
    "completion_problems",
    "data_paths",
    "frozen_write_problems",
    "pairing_problems",
    "settle_captures",
    "snapshot_kinds",
    "window_estimates",
    "window_problems",
    "windowed_stages",
]


def snapshot_kinds(profile: Profile) -> frozenset[SnapshotKind]:
    """The kinds of snapshot this profile's snapshot stages take."""
    return frozenset(s.component.snapshot_kind for s in profile.stages if s.role == Role.SNAPSHOT)


def windowed_stages(profile: Profile) -> list[StageSpec]:
    """The stages that run while applications are quiesced, in the order they run:
    the snapshots (unless :func:`captures_only`), then (with ``thaw = "after-backup"``)
    the copies."""
    snapshots = [s for s in profile.stages if s.role == Role.SNAPSHOT]
    copies = [s for s in profile.stages if s.role == Role.COPY]
    if profile.thaw == "after-backup":
        return snapshots + copies
    return [] if captures_only(profile) else snapshots


def captures_only(profile: Profile) -> bool:
    """Whether the freeze window need hold only the captures: every application captures
    in a self-contained mode (its completion produces all of its data from the instant
    its quiesce fixed, whatever the snapshot holds) and no snapshot stage takes paths of
    its own. The snapshot stages then run after the thaw, before the completions."""
    snapshots = [s for s in profile.stages if s.role == Role.SNAPSHOT]
    return (
        bool(profile.applications)
        and all(a.capture in a.component.self_contained_modes for a in profile.applications)
        and not any(s.component.own_paths() for s in snapshots)
    )


log = logging.getLogger("freezeframe")


def data_paths(session: Session) -> tuple[Path, ...]:
    """Every application's data paths, in profile order, without duplicates."""
    return _paths(session, lambda c: c.data_paths())


def completed_paths(session: Session) -> tuple[Path, ...]:
    """The paths applications in a capture mode complete into the snapshot views after
    the thaw, in profile order, without duplicates."""
    return _paths(session, lambda c: c.completed_paths() if c.completes else ())


def application_paths(session: Session, app: ApplicationSpec) -> tuple[Path, ...]:
    """One application's data paths and, in a capture mode that completes, the paths its
    completion writes, without duplicates: what ``restore --app`` restores of it."""
    c = app.component
    with session.alone(c):
        paths = [*c.data_paths(), *(c.completed_paths() if c.completes else ())]
    return tuple(dict.fromkeys(Path(p) for p in paths))


def _paths(session: Session, of: Callable[[ApplicationPlugin], Sequence[Path]]) -> tuple[Path, ...]:
    seen: dict[Path, None] = {}
    for app in session.profile.applications:
        with session.alone(app.component):
            paths = of(app.component)
        for p in paths:
            seen.setdefault(Path(p), None)
    return tuple(seen)


class Problems(list[str]):
    """What ``check`` found, one line each, and the exit code they call for: 2 when a
    component found its table asking for what cannot be (an error whose ``exit_code`` is
    2, a :class:`ConfigError`: a capture mode the server is too old for, a dump tool of
    another version), else 1."""

    exit_code = 1


def check(session: Session) -> Problems:
    """Preflight every component and application/snapshot pairing; returns the problems."""
    profile = session.profile
    problems = Problems(pairing_problems(profile, session.registry))
    components: list[tuple[str, Any]] = [
        *((f"application {a.name!r}", a.component) for a in profile.applications),
        *((f"stage {s.name!r}", s.component) for s in profile.stages),
    ]
    for label, component in components:
        try:
            with session.alone(component):
                component.check()
        except FreezeframeError as e:
            problems.append(f"{label}: {one_line(e)}")
            if e.exit_code == 2:  # bad input, not a server down (a busy lock is 3)
                problems.exit_code = 2
        except Exception as e:
            problems.append(f"{label}: check failed: {one_line(e)}")
    if not problems:  # the estimate needs reachable applications and a stage's dir
        settle_captures(session)
        problems += completion_problems(session)
        problems += window_problems(session)
    return problems


def completion_problems(session: Session) -> list[str]:
    """A path that applications complete into the views and a snapshot stage cannot hold."""
    completed = completed_paths(session)
    problems = []
    for stage in session.profile.stages:
        if stage.role != Role.SNAPSHOT or not completed:
            continue
        try:
            with session.alone(stage.component):
                stage.component.check_completions(completed)
        except FreezeframeError as e:
            problems.append(f"stage {stage.name!r}: {one_line(e)}")
    return problems


def settle_captures(session: Session) -> list[str]:
    """Each application left to the default capture that a snapshot stage inside the
    window would copy (it cannot reflink it) takes its plug-in's first completing mode
    instead, where the profile allows one and the plug-in's ``check()`` passes in it: the
    fastest consistent mode. Called once every component's check passed; returns the
    names switched (logged)."""
    profile = session.profile
    snapshots = [s for s in windowed_stages(profile) if s.role == Role.SNAPSHOT]
    if profile.thaw == "after-backup" or not snapshots:
        return []
    if not all(s.component.takes_completions for s in snapshots):
        return []
    switched = []
    for app in profile.applications:
        c = app.component
        completing = [m for m in c.capture_modes if m != "snapshot"]
        if app.chosen or c.completes or not completing:
            continue
        if app.on_quiesce_failure == "crash-consistent":
            continue
        with session.alone(c):
            paths = tuple(c.data_paths())
        copied = 0
        for stage in snapshots:
            with session.alone(stage.component):
                copied += stage.component.window_estimate(paths).bytes_copied or 0
        if not copied:
            continue
        c.capture = completing[0]
        try:
            with session.alone(c):
                c.check()
        except Exception as e:
            c.capture = "snapshot"  # checked in it already
            log.info("application %s: stays in capture snapshot: %s", app.name, one_line(e))
            continue
        switched.append(app.name)
        log.info(
            "application %s: capture %s by default (the window would copy %s of it)",
            app.name,
            c.capture,
            format_size(copied),
        )
    return switched


def window_estimates(session: Session) -> dict[str, WindowEstimate]:
    """What each snapshot stage inside the freeze window predicts it would copy there
    (:meth:`~freezeframe.components.Backend.window_estimate`), by stage name."""
    paths = data_paths(session)
    estimates = {}
    for stage in windowed_stages(session.profile):
        if stage.role == Role.SNAPSHOT:
            with session.alone(stage.component):
                estimates[stage.name] = stage.component.window_estimate(paths)
    return estimates


def window_problems(session: Session) -> list[str]:
    """A snapshot stage that would copy more than ``max_copy_in_window`` inside the
    window, with what to use instead."""
    profile, limit = session.profile, session.profile.max_copy_in_window
    try:
        estimates = window_estimates(session)
    except Exception as e:  # an application's data paths, or a backend's bug
        return [f"the freeze window cannot be predicted: {one_line(e)}"]
    problems = []
    for name, estimate in estimates.items():
        if estimate.bytes_copied is None or estimate.bytes_copied <= limit:
            continue
        stage = profile.stage(name)
        instead = [
            f'capture = "{m}" for application {a.name!r}'
            for a in profile.applications
            if not a.component.completes
            for m in [m for m in a.component.capture_modes if m != "snapshot"][:1]
        ]
        atomic = sorted(
            b.kind
            for b in session.registry.backends.values()
            if b.cls.role == Role.SNAPSHOT and b.cls.snapshot_kind == SnapshotKind.ATOMIC
        )
        if atomic:
            instead.append(f"an atomic snapshot backend ({', '.join(atomic)})")
        instead.append("a larger max_copy_in_window")
        problems.append(
            f"stage {name!r} ({stage.info.kind}) would copy {format_size(estimate.bytes_copied)} "
            f"inside the freeze window ({estimate.note or estimate.how}), more than "
            f"max_copy_in_window = {format_size(limit)}: use {', or '.join(instead)}"
        )
    return problems


def pairing_problems(profile: Profile, registry: Registry) -> list[str]:
    """The profile's rules that need no component to answer: each application consistent
    on each snapshot (or, in a capture mode that completes, snapshots that take
    completions), no write to a frozen filesystem, a thaw or a completion that finishes
    views not moved after copies, a thaw command for what only the watchdog can thaw."""
    problems = []
    for stage in profile.stages:
        for app in profile.applications:
            kind = stage.component.snapshot_kind
            if stage.role != Role.SNAPSHOT:
                continue
            if isinstance(stage.component, DumpsView):
                if app.capture not in app.component.self_contained_modes:
                    problems.append(_no_snapshot_problem(app))
                continue
            if app.component.completes:
                if not stage.component.takes_completions:
                    problems.append(_completion_problem(app, stage, registry))
                continue  # its data is produced into the view, not copied by the snapshot
            if kind not in app.component.consistent_on:
                fits = sorted(
                    b.kind
                    for b in registry.backends.values()
                    if b.cls.role == Role.SNAPSHOT
                    and b.cls.snapshot_kind in app.component.consistent_on
                )
                wanted = " or ".join(sorted(str(k) for k in app.component.consistent_on))
                completing = [m for m in app.component.capture_modes if m != "snapshot"]
                instead = (
                    f"capture = {completing[0]!r} or "
                    if completing and stage.component.takes_completions
                    else ""
                )
                problems.append(
                    f"application {app.name!r} ({app.info.kind}) is not consistent on {kind} "
                    f"snapshots such as stage {stage.name!r} ({stage.info.kind}); use "
                    f"{instead}a snapshot backend that is {wanted}"
                    + (f" ({', '.join(fits)})" if fits else " (none is installed)")
                )
    problems += frozen_write_problems(profile)
    for app in profile.applications:
        if not app.component.completes:
            continue
        if profile.thaw == "after-backup":
            problems.append(
                f"application {app.name!r} ({app.info.kind}) captures {app.capture!r}, "
                "completed after the thaw, so copies cannot be made before it: use "
                'thaw = "after-snapshot" or capture = "snapshot"'
            )
        if app.on_quiesce_failure == "crash-consistent":
            problems.append(
                f"application {app.name!r} ({app.info.kind}) captures {app.capture!r}: a "
                'failed capture has nothing to complete, so on_quiesce_failure = "crash-'
                'consistent" needs capture = "snapshot"'
            )
    for app in profile.applications:
        c = app.component
        if c.crash_safety == CrashSafety.WATCHDOG and not c.watchdog_thaw_command():
            problems.append(
                f"application {app.name!r} ({app.info.kind}) needs the watchdog "
                "but gives no thaw command (a bug of its plug-in)"
            )
    return problems


def _no_snapshot_problem(app: ApplicationSpec) -> str:
    whole = [m for m in app.component.capture_modes if m in app.component.self_contained_modes]
    instead = f"capture = {whole[0]!r} or " if whole else ""
    return (
        f"application {app.name!r} ({app.info.kind}) captures {app.capture!r}, which needs a "
        "snapshot stage to copy its files, and the profile has none (its copy stages read "
        f"the {DUMPS!r} view, which holds only what applications dump after the thaw): use "
        f"{instead}a snapshot stage before the copies"
    )


def _completion_problem(app: ApplicationSpec, stage: StageSpec, registry: Registry) -> str:
    takers = sorted(
        b.kind
        for b in registry.backends.values()
        if b.cls.role == Role.SNAPSHOT and b.cls.takes_completions
    )
    other = [m for m in app.component.capture_modes if m != app.capture]
    instead = [f"capture = {m!r}" for m in other[:1]]
    if takers:
        instead.append(f"a snapshot backend that takes completions ({', '.join(takers)})")
    return (
        f"application {app.name!r} ({app.info.kind}) captures {app.capture!r}, completed into "
        f"the snapshot views after the thaw, but stage {stage.name!r} ({stage.info.kind}) "
        f"cannot take completions: use {' or '.join(instead) or 'another snapshot backend'}"
    )


def frozen_write_problems(profile: Profile) -> list[str]:
    """A filesystem frozen whole must not be one we write to inside the window."""
    places = [("the state dir", profile.home)]
    places += [
        (f"the output of stage {s.name!r}", p)
        for s in windowed_stages(profile)
        for p in s.component.writes_to()
    ]
    problems = []
    for app in profile.applications:
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


def _device(path: Path) -> int | None:
    """The device of ``path`` or of its nearest existing parent."""
    for p in (path, *path.parents):
        try:
            return p.stat().st_dev
        except OSError:
            continue
    return None
