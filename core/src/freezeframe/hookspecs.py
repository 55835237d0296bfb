"""Every hook freezeframe calls. Each docstring here *is* the hook reference (docs/hooks.md).

Implement a hook in your plug-in module with the ``hookimpl`` marker and
register the module under the ``freezeframe`` entry-point group::

    from freezeframe.plugin import hookimpl

    @hookimpl
    def freezeframe_register_applications(register):
        register(MyPlugin)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from freezeframe.components import ApplicationPlugin, Backend
    from freezeframe.observing import Observer
    from freezeframe.records import DrillRecord, RunRecord, StageRecord
    from freezeframe.status import ProfileStatus

__all__ = ["PROJECT", "hookimpl", "hookspec"]

PROJECT = "freezeframe"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def freezeframe_register_applications(
    register: Callable[[type[ApplicationPlugin]], None],
) -> None:
    """Register application plug-in classes.

    Call ``register(cls)`` once per class. ``cls`` subclasses
    ``freezeframe.plugin.ApplicationPlugin`` and implements its abstract methods
    (``quiesce``, ``unquiesce``), names its profile ``plugin =`` value in
    ``kind`` and the plug-in API it was written for in ``api_version``. A class
    that falls short is shown as broken, with what it lacks. Name your
    distribution for the kind (``freezeframe-<kind>``): when two distributions
    register one ``kind``, a profile that pins no ``distribution`` gets the one
    so named, and ``freezeframe plugins`` reports the conflict.
    """


@hookspec
def freezeframe_register_backends(register: Callable[[type[Backend]], None]) -> None:
    """Register backend (backup application) classes.

    Call ``register(cls)`` once per class. ``cls`` subclasses
    ``freezeframe.plugin.Backend`` and implements its abstract methods (``run``,
    ``restore``, ``verify``, ``delete``), names its profile ``backend =`` value
    in ``kind``, its ``role`` (``snapshot`` or ``copy``) and ``api_version``.
    Kinds and distributions are named as for application plug-ins.
    """


@hookspec
def freezeframe_register_observers(register: Callable[[type[Observer]], None]) -> None:
    """Register observer classes: notifications, metrics, audit, configured per profile.

    Call ``register(cls)`` once per class. ``cls`` subclasses
    ``freezeframe.plugin.Observer``; its ``kind`` is the profile's top-level table that
    configures it (``kind = "notify"``: each ``[[notify]]`` table builds one instance,
    which is told of that profile's runs and drills through its methods). Kinds and
    distributions are named as for application plug-ins. The lifecycle hooks below are
    for observers that need no table (they hear of every profile).
    """


@hookspec
def freezeframe_run_started(run: RunRecord) -> None:
    """A backup run has started: the profile is locked and the run is journaled as running.

    An observer (notifications, metrics, audit). It cannot change the run; an
    exception it raises is logged and otherwise ignored.
    """


@hookspec
def freezeframe_stage_finished(run: RunRecord, stage: StageRecord) -> None:
    """A stage of ``run`` has finished; ``stage.status`` says how, ``stage.artifact`` what it made.

    An observer; called for failed stages too. Exceptions are logged and ignored.
    """


@hookspec
def freezeframe_run_finished(run: RunRecord, status: ProfileStatus) -> None:
    """A run is over and recorded: every application is thawed and ``run.status`` is final.

    ``status`` is where the profile stands now (its last success, last drill, how many
    backups it keeps), read from its catalog after retention: what metrics report.

    An observer; the place for "backup failed" alerts. Exceptions are logged and ignored.
    """


@hookspec
def freezeframe_drill_finished(run: RunRecord, drill: DrillRecord, status: ProfileStatus) -> None:
    """A drill of ``run`` is over and recorded: its scratch folder is gone and every
    application it started is stopped.

    ``drill.status`` is ``passed`` or ``failed`` (``drill.failures`` lists each failed
    check in one line); ``drill.applications`` holds every check's result; ``status`` is
    where the profile stands now. Not called for a drill cut short by a signal. An
    observer: the place for "restore drill failed" alerts. Exceptions are logged and
    ignored.
    """
