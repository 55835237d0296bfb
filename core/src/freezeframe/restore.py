"""The ``restore`` and ``verify`` verbs: find the run, restore its newest restorable
artifact under a target (then the applications' fix-ups and checks), or verify every
live artifact of it and record the outcome."""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from freezeframe import restoring
from freezeframe.catalog import Catalog, CatalogReadOnly
from freezeframe.components import Artifact, RestoreOptions
from freezeframe.errors import FreezeframeError, StageError, one_line
from freezeframe.profile import Profile, StageSpec
from freezeframe.records import RunRecord, RunStatus, StageRecord
from freezeframe.session import Session

__all__ = ["find_run", "restorable", "restore", "verify"]

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


def restore(
    session: Session,
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
    profile = session.profile
    with session.catalog() as catalog:
        rec = find_run(profile, catalog, ref)
        spec, artifact = restorable(profile, rec, stage)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FreezeframeError(
            f"--to {target}: not an empty directory; restore never "
            "overwrites: give a new or empty one"
        )
    made = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    log.info("restoring %s from stage %s of run %s", artifact.id, spec.name, rec.run_id)
    options = RestoreOptions(preserve_special=preserve_special)
    # The run's applications, as the profile knows them today (one added since has
    # nothing in this backup; one removed since has no plug-in configured to ask).
    in_run = {a.name for a in rec.applications}
    apps = [a for a in profile.applications if a.name in in_run]
    try:
        try:
            backend_restore: Callable[..., list[Path]] = spec.component.restore
            if "options" in inspect.signature(backend_restore).parameters:
                restored = backend_restore(artifact, target, options=options)
            else:  # a backend written before RestoreOptions existed
                restored = backend_restore(artifact, target)
        except FreezeframeError:
            raise
        except Exception as e:
            raise StageError(f"stage {spec.name!r}: restore failed: {one_line(e)}") from e
        for app in apps:
            with session.alone(app.component):
                app.component.prepare_restored(target)
    except BaseException as e:
        _undo(target, made, e)
        raise
    if verify:
        for app in apps:
            with session.alone(app.component):
                app.component.verify_restored(target)
    return rec, spec.name, [p for p in restored if restoring.exists_below(target, p)]


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
