"""The run in progress: its record (updated from worker threads, saved by the main
thread) and the signals that may cut it short."""

from __future__ import annotations

import logging
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from freezeframe import _ordered
from freezeframe.catalog import Catalog
from freezeframe.errors import Interrupted, QuiesceError
from freezeframe.profile import Profile
from freezeframe.records import ApplicationRecord, RunRecord, RunStatus, StageRecord

__all__ = ["Run", "Signals", "new_record", "new_run_id"]

log = logging.getLogger("freezeframe")


def new_run_id() -> str:
    """A sortable, unique run id: ``20261129T093012Z-3fa2``."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(2)


def new_record(profile: Profile) -> RunRecord:
    """The record of a run of ``profile`` that begins now."""
    return RunRecord(
        run_id=new_run_id(),
        profile=profile.name,
        status=RunStatus.RUNNING,
        started_at=time.time(),
        thaw=profile.thaw,
        applications=tuple(
            ApplicationRecord(
                a.name, a.info.kind, a.info.distribution, a.info.version, capture=a.capture
            )
            for a in profile.applications
        ),
        stages=tuple(
            StageRecord(s.name, s.info.kind, str(s.role), source=s.source) for s in profile.stages
        ),
    )


class Signals:
    """SIGINT/SIGTERM become :class:`Interrupted` in the main thread, once; the thaw is shielded."""

    def __init__(self) -> None:
        self.raised = False
        self.pending: int | None = None
        self.shielded = 0

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Handle SIGINT and SIGTERM while inside (in the main thread only)."""
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
        """A signal that arrives inside is raised only when the shielded work is done."""
        self.shielded += 1
        try:
            yield
        finally:
            self.shielded -= 1
        if self.pending is not None and not self.raised and not self.shielded:
            signum, self.pending = self.pending, None
            self.raised = True
            raise Interrupted(signum, signal.Signals(signum).name)


class Run:
    """The record of the run in progress; updated from worker threads, saved by the main thread."""

    def __init__(self, record: RunRecord, catalog: Catalog) -> None:
        self.record = record
        self.catalog = catalog
        self._lock = threading.Lock()
        #: Whose prepare and quiesce began (so whom to thaw), and threads still working.
        self.prepare: _ordered.Outcome | None = None
        self.quiesce: _ordered.Outcome | None = None
        #: Whose completion began (a signal interrupts those still running).
        self.completion: _ordered.Outcome | None = None
        self.cancel_events: list[threading.Event] = []
        self.workers: list[threading.Thread] = []
        #: Set when the thaw begins: a prepare or quiesce that gets its turn at a plug-in
        #: only after that (its thread had started, not yet begun) must not begin at all,
        #: or it would freeze after its unquiesce and nothing would thaw it again.
        self.thawing = threading.Event()

    def app(self, name: str, **changes: Any) -> None:
        """Change application ``name``'s record."""
        with self._lock:
            apps = tuple(
                replace(a, **changes) if a.name == name else a for a in self.record.applications
            )
            self.record = replace(self.record, applications=apps)

    def stage(self, name: str, **changes: Any) -> StageRecord:
        """Change stage ``name``'s record; returns it as changed."""
        with self._lock:
            stages = tuple(
                replace(s, **changes) if s.name == name else s for s in self.record.stages
            )
            self.record = replace(self.record, stages=stages)
            found = self.record.stage(name)
            assert found is not None
            return found

    def save(self, *, durable: bool = True) -> None:
        """Journal the record as it is now (``durable=False``: inside the freeze window,
        see :meth:`Catalog.save`)."""
        self.catalog.save(self.record, durable=durable)

    def mode(self, name: str) -> str:
        """Application ``name``'s mode (``quiescing``, ``quiesced``, ``crash-consistent``...)."""
        return next(a.mode for a in self.record.applications if a.name == name)

    def error(self, source: str, message: str) -> None:
        """Log an error of the run and record it in the catalog."""
        log.error("%s: %s", source, message)
        self.catalog.add_error(self.record.run_id, time.time(), source, message)

    def not_thawing(self) -> None:
        """Called holding the plug-in's turn, right before a prepare or quiesce begins."""
        if self.thawing.is_set():
            raise QuiesceError("not begun: the thaw had already begun")
