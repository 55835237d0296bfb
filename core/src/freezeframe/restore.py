"""The ``restore`` and ``verify`` verbs: find the run, restore its newest restorable
artifact under a target, all of it or what ``--app``/``--path`` select
(:mod:`freezeframe.restore_select`), then the applications' fix-ups and checks; or verify
every live artifact of it and record the outcome."""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from freezeframe import restore_select, restoring
from freezeframe.catalog import Catalog, CatalogReadOnly
from freezeframe.components import ApplicationPlugin, Artifact, RestoreOptions
from freezeframe.errors import FreezeframeError, StageError, UsageError, one_line
from freezeframe.fsutil import under
from freezeframe.profile import Profile, StageSpec
from freezeframe.records import RunRecord, RunStatus, StageRecord
from freezeframe.session import Session

__all__ = ["Restored", "find_run", "restorable", "restore", "verify"]

log = logging.getLogger("freezeframe")


def find_run(profile: Profile, catalog: Catalog, ref: str) -> RunRecord:
    """The run ``ref`` names (an id, a unique prefix, or ``latest``)."""
    rec = catalog.get(ref)
    if rec is None:
        what = "no succeeded run yet" if ref == "latest" else f"no run {ref!r}"
        raise FreezeframeError(f"profile {profile.name!r}: {what} in {catalog.path}")
    return rec


def restorable(profile: Profile, rec: RunRecord, stage: str | None) -> tuple[StageSpec, Artifact]:
    """The stage of ``rec`` to restore from (``stage``, or the last one with an artifact
    left that the profile still has) and its artifact."""
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
            return profile.stage(st.name), st.artifact  # type: ignore[return-value]
        except FreezeframeError:
            continue
    raise FreezeframeError(
        f"run {rec.run_id}: no stage of it has an artifact left that this profile can restore"
    )


@dataclass(frozen=True)
class Restored:
    """What a restore did."""

    run: RunRecord
    #: The stage restored from.
    stage: str
    #: Where the paths restored are now (``target`` + each original path), only those there.
    paths: list[Path]
    #: The applications whose data came back (:attr:`Selection.applications`).
    applications: tuple[str, ...]
    #: The original paths selected (``--app``, ``--path``); empty: the whole run.
    selected: tuple[Path, ...]
    #: With ``verify``: the applications whose plug-in checked the restored data and
    #: found it usable (a plug-in without a restore check is not among them).
    verified: tuple[str, ...] = ()


def restore(
    session: Session,
    ref: str,
    target: Path,
    *,
    stage: str | None = None,
    verify: bool = False,
    preserve_special: bool = False,
    apps: Sequence[str] = (),
    paths: Sequence[Path | str] = (),
) -> Restored:
    """Restore run ``ref`` under ``target`` (original absolute paths below it): all of it,
    or the data of the applications ``apps`` and the trees at the original ``paths``.

    The fix-ups (and with ``verify`` the checks) of every application of the run run
    after a whole restore, of those in ``apps`` after a selection. On failure, what the
    restore made under ``target`` is removed (it was empty: everything in it is ours),
    or the error says what is left.
    """
    profile = session.profile
    with session.catalog() as catalog:
        rec = find_run(profile, catalog, ref)
        spec, artifact = restorable(profile, rec, stage)
    chosen = restore_select.select(session, rec, apps, paths)
    if verify and chosen.paths and not chosen.applications:
        raise UsageError("--verify asks the applications' plug-ins: add --app to restore one")
    backend_restore: Callable[..., list[Path]] = spec.component.restore
    takes_options = "options" in inspect.signature(backend_restore).parameters
    if chosen.paths and not takes_options:  # a backend written before RestoreOptions existed
        raise FreezeframeError(
            f"stage {spec.name!r}: its backend cannot restore a part of a run; restore it whole"
        )
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FreezeframeError(
            f"--to {target}: not an empty directory; restore never "
            "overwrites: give a new or empty one"
        )
    held = artifact.metadata.get("paths")  # known before restoring: fail at once
    if held is not None and (
        what := chosen.missing(lambda ps: bool(RestoreOptions(paths=ps).within(held)))
    ):
        raise FreezeframeError(f"run {rec.run_id} holds nothing {what}")
    made = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    log.info("restoring %s from stage %s of run %s", artifact.id, spec.name, rec.run_id)
    options = RestoreOptions(preserve_special=preserve_special, paths=chosen.paths)
    apps_here = [a for a in profile.applications if a.name in chosen.applications]
    for name in sorted(set(chosen.applications) - {a.name for a in apps_here}):
        if chosen.paths:  # named by --app (a whole restore never fixed it up either)
            log.warning("application %s is not in the profile any more: no fix-ups of it", name)
    try:
        try:
            if takes_options:
                restored = backend_restore(artifact, target, options=options)
            else:
                restored = backend_restore(artifact, target)
        except FreezeframeError:
            raise
        except Exception as e:
            raise StageError(f"stage {spec.name!r}: restore failed: {one_line(e)}") from e
        if what := chosen.missing(
            lambda ps: any(restoring.exists_below(target, under(target, p)) for p in ps)
        ):
            raise FreezeframeError(f"run {rec.run_id} holds nothing {what}")
        for app in apps_here:
            with session.alone(app.component):
                app.component.prepare_restored(target)
    except BaseException as e:
        _undo(target, made, e)
        raise
    verified = []
    if verify:
        for app in apps_here:
            with session.alone(app.component):
                app.component.verify_restored(target)
            if type(app.component).verify_restored is not ApplicationPlugin.verify_restored:
                verified.append(app.name)
    return Restored(
        rec,
        spec.name,
        [p for p in restored if restoring.exists_below(target, p)],
        chosen.applications,
        chosen.paths,
        tuple(verified),
    )


def _undo(target: Path, made: bool, e: BaseException) -> None:
    """Remove what a failed restore made under ``target``; raises ``e`` with what is
    left when something could not be removed."""
    left = restoring.remove_below(target)
    if made and not left:
        with contextlib.suppress(OSError):
            target.rmdir()
    if not left:
        return
    more = f" (and {len(left) - 3} more)" if len(left) > 3 else ""
    what = f"could not remove what it made: {'; '.join(left[:3])}{more}"
    if not isinstance(e, FreezeframeError):
        log.warning("restore failed and %s", what)
        return
    error = FreezeframeError(f"{e}; {what}")
    error.exit_code = e.exit_code
    raise error from e


def verify(
    session: Session, ref: str, *, stage: str | None = None
) -> tuple[RunRecord, list[StageRecord], list[str], dict[str, str]]:
    """Verify every live artifact of run ``ref`` (or one stage's); returns the problems
    and, by stage name, the notes of stages that passed but were not fully checked.

    Only a stage that passed with no note is recorded as verified; a stage that failed
    loses any verified mark it had, so retention never keeps it as the newest verified.
    """
    profile = session.profile
    with session.catalog() as catalog:
        rec = find_run(profile, catalog, ref)
        stages = [
            s
            for s in rec.stages
            if s.artifact is not None
            and s.deleted_at is None
            and (stage is None or s.name == stage)
        ]
        if not stages:
            raise FreezeframeError(
                f"run {rec.run_id}: nothing to verify" + (f" in stage {stage!r}" if stage else "")
            )
        problems, checked, notes = [], [], {}
        for st in stages:
            assert st.artifact is not None
            try:
                note = profile.stage(st.name).component.verify(st.artifact)
            except (FreezeframeError, OSError) as e:
                problems.append(f"stage {st.name!r}: {st.artifact.id}: {one_line(e)}")
                _record_verified(catalog, rec.run_id, st.name, None)
                checked.append(replace(st, verified_at=None))
                continue
            if note:
                notes[st.name] = " ".join(str(note).split())
                checked.append(st)
                continue
            verified = replace(st, verified_at=time.time())
            _record_verified(catalog, rec.run_id, st.name, verified.verified_at)
            checked.append(verified)
        return rec, checked, problems, notes


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
