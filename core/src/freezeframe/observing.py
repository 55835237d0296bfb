"""Observers configured by a profile's own tables: notifications, metrics, audit.

A third component type beside application plug-ins and backends
(:mod:`freezeframe.components`): :class:`Observer`, registered through
``freezeframe_register_observers`` and built from every top-level table of a profile
named for its ``kind``.
"""

from __future__ import annotations

from freezeframe.components import Component
from freezeframe.records import DrillRecord, RunRecord, StageRecord
from freezeframe.status import ProfileStatus

__all__ = ["Observer"]


class Observer(Component):
    """Told of every run and drill of a profile: notifications, metrics, audit. One instance
    per table of the profile named for its ``kind`` (``[[notify]]`` tables build the
    observer whose kind is ``notify``; a single ``[notify]`` table is one).

    It cannot change a run: what it raises is logged with its name, and the core waits
    for each call at most :attr:`timeout` seconds (the call goes on in its thread; the run
    does not wait for it). Every method has a default that does nothing; the records it
    receives are frozen.
    """

    #: The most seconds the core waits for one call (a subclass may read it from its table).
    timeout: float = 10.0

    def run_started(self, run: RunRecord) -> None:
        """A backup run started: the profile is locked and the run journaled as running."""

    def stage_finished(self, run: RunRecord, stage: StageRecord) -> None:
        """A stage of ``run`` finished, failed ones too (``stage.status``)."""

    def run_finished(self, run: RunRecord, status: ProfileStatus) -> None:
        """A run is over and recorded: every application is thawed, ``run.status`` final;
        ``status``: where the profile stands now (last success, retained backups...)."""

    def drill_finished(self, run: RunRecord, drill: DrillRecord, status: ProfileStatus) -> None:
        """A drill of ``run`` reached its verdict (``drill.status``: passed or failed);
        ``status``: where the profile stands now."""
