"""What ``restore --app`` and ``restore --path`` take of a run: the applications whose data
comes back (and whose fix-ups run) and the original paths restored.

An application's paths are those its run recorded (:attr:`ApplicationRecord.paths`), so
restoring one needs no answer from an application that may be down (the disaster a
restore is for). A run recorded before runs kept them asks the plug-in, in the run's
capture mode.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from freezeframe.errors import FreezeframeError, UsageError, one_line
from freezeframe.preflight import application_paths
from freezeframe.records import ApplicationRecord, RunRecord
from freezeframe.session import Session

__all__ = ["Selection", "recorded_paths", "select"]


@dataclass(frozen=True)
class Selection:
    """What a restore takes of a run."""

    #: The applications whose data is restored, in the run's order: every one of the run
    #: for a whole restore, those named by ``--app`` for a selection.
    applications: tuple[str, ...]
    #: The original absolute paths restored, each with everything below it; empty:
    #: everything the run holds.
    paths: tuple[Path, ...] = ()
    #: What the user named, as an error names it (``"at /srv/shop"``, ``"of application
    #: 'orders'"``), with its paths: a restore that brings back nothing of one fails.
    named: tuple[tuple[str, tuple[Path, ...]], ...] = ()

    def missing(self, has: Callable[[tuple[Path, ...]], bool]) -> str | None:
        """The first thing named of whose paths ``has`` finds nothing, or ``None``."""
        return next((what for what, paths in self.named if not has(paths)), None)


def select(
    session: Session, rec: RunRecord, apps: Sequence[str], paths: Sequence[Path | str]
) -> Selection:
    """The part of run ``rec`` that ``--app apps`` and ``--path paths`` name (the whole
    run when both are empty). A relative path, or an application the run does not
    have, is a :class:`UsageError`."""
    originals: list[Path] = []
    for p in paths:
        if not os.path.isabs(p):
            raise UsageError(
                f"--path {p}: not an absolute path (name the original path, "
                "as /srv/shop/orders.db, not where it is restored)"
            )
        originals.append(Path(os.path.normpath(p)))
    if not apps and not originals:
        return Selection(tuple(a.name for a in rec.applications))
    names = list(dict.fromkeys(apps))
    named = [(f"of application {n!r}", _paths(session, rec, n)) for n in names]
    named += [(f"at {p}", (p,)) for p in originals]
    chosen = [p for _, ps in named for p in ps]
    return Selection(
        tuple(a.name for a in rec.applications if a.name in names),
        tuple(dict.fromkeys(chosen)),
        tuple(named),
    )


def _paths(session: Session, rec: RunRecord, name: str) -> tuple[Path, ...]:
    """The paths of application ``name`` in run ``rec``: those the run recorded, or, for a
    run recorded before, those its plug-in names in the run's capture mode."""
    record = next((a for a in rec.applications if a.name == name), None)
    if record is None:
        has = ", ".join(a.name for a in rec.applications) or "none"
        added = any(a.name == name for a in session.profile.applications)
        why = " (added to the profile after it)" if added else ""
        raise UsageError(
            f"--app {name}: run {rec.run_id} has no application {name!r}{why}; it has: {has}"
        )
    found = recorded_paths(session, rec, record)
    if not found:
        raise FreezeframeError(
            f"run {rec.run_id} holds nothing of application {name!r}: it has no data paths"
        )
    return found


def recorded_paths(session: Session, rec: RunRecord, record: ApplicationRecord) -> tuple[Path, ...]:
    """The paths of application ``record`` in run ``rec``: those the run recorded, or, for
    a run recorded before, those its plug-in names in the run's capture mode
    (:class:`FreezeframeError` when it cannot say)."""
    if record.paths is not None:
        return tuple(Path(p) for p in record.paths)
    return _asked(session, rec, record)


def _asked(session: Session, rec: RunRecord, record: ApplicationRecord) -> tuple[Path, ...]:
    """What the plug-in says the paths of ``record`` are, in the capture mode of the run."""
    why = (
        f"run {rec.run_id} recorded no paths of application {record.name!r} "
        "(made before runs kept them)"
    )
    spec = next((a for a in session.profile.applications if a.name == record.name), None)
    if spec is None:
        raise FreezeframeError(f"{why}, and the profile no longer has it to ask")
    c = spec.component
    chosen = c.capture
    if record.capture in c.capture_modes:
        c.capture = record.capture
    try:
        return application_paths(session, spec)
    except Exception as e:
        raise FreezeframeError(f"{why}, and its plug-in cannot say them: {one_line(e)}") from e
    finally:
        c.capture = chosen
