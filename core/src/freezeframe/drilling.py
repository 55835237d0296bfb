"""What a plug-in's drill is given and gives back (:meth:`ApplicationPlugin.drill`).

A drill restores a run into a private scratch folder, then asks each application's
plug-in to start the application on the restored copy, in isolation, and to run its
deep checks: what that application's own experts use (``pg_amcheck``, ``CHECK TABLE``,
``redis-check-rdb``, ``PRAGMA integrity_check``). The plug-in is handed a
:class:`DrillContext`: where the copy is, a private folder for its sockets and logs,
what its plug-in recorded at the backup, and how to record a check
(:meth:`DrillContext.check`) and start a process that never outlives the drill
(:meth:`DrillContext.spawn`). While the application runs, the plug-in yields a
:class:`Running`: how to reach it, for the profile's own checks.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from freezeframe.errors import Cancelled, FreezeframeError, Interrupted, one_line
from freezeframe.tools import die_with_us

__all__ = [
    "CheckFailed",
    "CheckResult",
    "CheckSkipped",
    "DrillContext",
    "Running",
    "env_prefix",
]


class CheckFailed(FreezeframeError):
    """A check found the restored copy damaged or unusable; the message says what it found."""


class CheckSkipped(FreezeframeError):
    """A check that cannot run here (its tool is missing, the copy has no checksums); the
    message says why. It does not fail the drill."""


@dataclass(frozen=True)
class CheckResult:
    """One check of one application in one drill."""

    application: str
    name: str
    #: ``"deep"`` (the plug-in's own) or ``"user"`` (the profile's ``[[application.check]]``).
    kind: str
    #: ``"passed"``, ``"failed"`` or ``"skipped"``.
    status: str
    #: What it found (a failure), what it saw (a pass), or why it did not run.
    detail: str = ""
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        """Whether the check failed."""
        return self.status == "failed"

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {
            "name": self.name,
            "kind": self.kind,
            "status": self.status,
            "detail": self.detail,
            "seconds": round(self.seconds, 3),
        }

    @classmethod
    def from_json(cls, application: str, data: Mapping[str, Any]) -> CheckResult:
        """The record :meth:`to_json` wrote."""
        return cls(
            application,
            str(data["name"]),
            str(data["kind"]),
            str(data["status"]),
            str(data.get("detail") or ""),
            float(data.get("seconds") or 0.0),
        )


@dataclass(frozen=True)
class Running:
    """How to reach an application that a drill started on the restored copy."""

    #: Connection details, exported to every command check of the drill as
    #: ``FREEZEFRAME_<APPLICATION>_<KEY>`` (keys in upper case: ``HOST``, ``PORT``,
    #: ``SOCKET``, ``USER``, ``DBNAME``, ``URL``, ``PATH``). Never a secret: the copy is
    #: reachable only through the drill's private folder or loopback port.
    connection: Mapping[str, str] = field(default_factory=dict)
    #: The variables the application's own clients read (``PGHOST``, ``PGPORT``...), set
    #: for the command checks of this application only.
    client_env: Mapping[str, str] = field(default_factory=dict)
    #: Runs one SQL query on the copy within ``timeout`` seconds and returns the first
    #: column of its first row (``None`` without a row); a :class:`CheckFailed` says why
    #: it could not. ``None`` for an application without SQL (the plug-in class then has
    #: ``answers_sql = False``, and ``check`` refuses a ``sql`` check of it).
    query: Callable[[str, float], Any] | None = None


def env_prefix(application: str) -> str:
    """``FREEZEFRAME_<NAME>_``: an application's name in upper case, every character that
    is not a letter or digit as ``_`` (``ledger-db`` → ``FREEZEFRAME_LEDGER_DB_``)."""
    return "FREEZEFRAME_" + re.sub(r"[^A-Za-z0-9]", "_", application).upper() + "_"


class DrillContext:
    """What the core hands an application plug-in's :meth:`~ApplicationPlugin.drill`.

    ``root`` holds the restored files at their original absolute paths, after every
    plug-in's ``prepare_restored``; ``work`` is a private, empty folder of this
    application's (sockets, logs, configuration), removed with the drill; ``facts`` are
    what the plug-in's ``describe`` recorded at the backup; ``capture`` the run's
    capture mode of the application.
    """

    def __init__(
        self,
        application: str,
        root: Path,
        work: Path,
        *,
        facts: Mapping[str, Any] | None = None,
        capture: str = "snapshot",
        on_spawn: Callable[[int], None] | None = None,
        cancel_event: threading.Event | None = None,
    ) -> None:
        self.application = application
        self.root = root
        self.work = work
        self.facts: Mapping[str, Any] = dict(facts or {})
        self.capture = capture
        self.results: list[CheckResult] = []
        self._on_spawn = on_spawn
        self._cancel = cancel_event or threading.Event()
        self._spawned: list[subprocess.Popen[bytes]] = []

    # -- checks ----------------------------------------------------------------
    def check(self, name: str, run: Callable[[], str | None]) -> bool:
        """Run one deep check and record it; returns whether it passed (or was skipped).

        ``run`` returns what it saw (``"12 tables"``) or ``None``, raises
        :class:`CheckFailed` (or any :class:`FreezeframeError`) when it finds damage, and
        :class:`CheckSkipped` when it cannot run here. Anything else it raises is recorded
        as a failure too: a drill never stops halfway because a check broke.
        """
        return self.record(name, "deep", run)

    def record(self, name: str, kind: str, run: Callable[[], str | None]) -> bool:
        """:meth:`check` for a check of ``kind`` (``"deep"`` or ``"user"``)."""
        self.stop_if_cancelled()
        start = time.monotonic()
        try:
            detail, status = run() or "", "passed"
        except CheckSkipped as e:
            detail, status = one_line(e), "skipped"
        except (Cancelled, Interrupted):
            raise
        except Exception as e:  # a check that broke is a check that failed, recorded as one
            detail, status = one_line(e), "failed"
        result = CheckResult(self.application, name, kind, status, detail, time.monotonic() - start)
        self.results.append(result)
        return not result.failed

    @property
    def failed(self) -> bool:
        """Whether a check of this application has failed so far."""
        return any(r.failed for r in self.results)

    # -- processes -------------------------------------------------------------
    def spawn(self, argv: Sequence[str], **popen: Any) -> subprocess.Popen[bytes]:
        """Start ``argv`` (a server on the copy) so that it never outlives the drill.

        It runs in a session of its own, the kernel kills it if freezeframe dies (even
        ``kill -9``: it must then be started from the drill's own thread, as the plug-in's
        ``drill`` is), and the core records it, so the next command kills it if that
        failed too. The keywords are :class:`subprocess.Popen`'s (``preexec_fn`` and
        ``start_new_session`` are the core's). Stop it yourself when the drill's block
        ends; whatever is left is killed after it.
        """
        popen.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(
            list(argv), start_new_session=True, preexec_fn=die_with_us(), **popen
        )
        self._spawned.append(proc)
        self.track(proc.pid)
        return proc

    def track(self, pid: int) -> None:
        """Record a process the plug-in started otherwise (a daemon's pid from its pid
        file): if freezeframe dies, the next command kills it and its process group."""
        if self._on_spawn is not None:
            self._on_spawn(pid)

    def spawned(self) -> list[subprocess.Popen[bytes]]:
        """The processes :meth:`spawn` started (the core kills what is left of them)."""
        return list(self._spawned)

    # -- cancellation ----------------------------------------------------------
    @property
    def cancelled(self) -> bool:
        """Whether the drill was interrupted (SIGINT, SIGTERM): stop soon."""
        return self._cancel.is_set()

    def stop_if_cancelled(self) -> None:
        """Raise :class:`Cancelled` if the drill was interrupted."""
        if self._cancel.is_set():
            raise Cancelled(f"the drill of {self.application} was interrupted")
