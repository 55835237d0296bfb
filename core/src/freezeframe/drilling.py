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

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar

from freezeframe.config import Table
from freezeframe.errors import Cancelled, ConfigError, FreezeframeError, Interrupted, one_line
from freezeframe.tools import _environment, die_with_us

__all__ = [
    "CheckFailed",
    "CheckResult",
    "CheckSkipped",
    "DrillCommand",
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

    def fail(self, name: str, detail: str) -> None:
        """Record a deep check that failed with ``detail`` without running anything (the
        core's own findings: a plug-in whose drill broke, nothing that could be checked)."""
        self.results.append(CheckResult(self.application, name, "deep", "failed", detail))

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
        ``start_new_session`` are the core's); without ``env`` it gets freezeframe's
        environment less the profile's secrets. Stop it yourself when the drill's block
        ends; whatever is left is killed after it.
        """
        popen.setdefault("stdin", subprocess.DEVNULL)
        # the profile's secrets stay ours unless the plug-in hands a process an environment
        popen.setdefault("env", _environment(None))
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

    # -- commands --------------------------------------------------------------
    def run_command(
        self, argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None
    ) -> str:
        """Run ``argv`` as a check (no shell) and return the tail of its output.

        It runs in :attr:`work` through :meth:`spawn` (so it never outlives the drill),
        with freezeframe's environment less the profile's secrets, plus ``env``; stdout
        and stderr together are kept in an unnamed file. When it exits, whatever it left
        running in its process group is killed. :class:`CheckFailed` when it exits non-zero,
        is killed by a signal, cannot be run, or is still running after ``timeout``
        seconds (it is killed); the message ends with the tail of its output.
        """
        program = os.path.basename(argv[0])
        with tempfile.TemporaryFile() as out:
            try:
                proc = self.spawn(
                    argv,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self.work,
                    env=_environment(env),
                )
            except OSError as e:
                raise CheckFailed(f"{program}: cannot run it: {e.strerror}") from None
            try:
                finished = _exited_within(proc.pid, timeout, self._cancel)
            finally:
                # it stays a zombie until reaped, so its process group's id cannot be
                # reused meanwhile: the kill reaches only what it started
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            tail = _tail(out)
        self.stop_if_cancelled()
        said = f": {tail}" if tail else ": no output"
        if not finished:
            raise CheckFailed(f"{program} did not finish within {timeout:g}s (killed){said}")
        if proc.returncode < 0:
            raise CheckFailed(f"{program} was killed by {_signal_name(-proc.returncode)}{said}")
        if proc.returncode != 0:
            raise CheckFailed(f"{program} failed (exit {proc.returncode}){said}")
        return tail


#: The most of a command's output a check's detail keeps: its last lines, this many
#: characters at most.
OUTPUT_TAIL = 400


def _exited_within(pid: int, timeout: float, cancel: threading.Event) -> bool:
    """Whether process ``pid`` exits within ``timeout`` seconds (or before ``cancel`` is
    set); it is left unreaped."""
    deadline = time.monotonic() + timeout
    while True:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        left = deadline - time.monotonic()
        if left <= 0 or cancel.is_set():
            return False
        time.sleep(min(0.05, left))


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # a real-time signal
        return f"signal {number}"


def _tail(out: IO[bytes]) -> str:
    """The last lines of a command's output in ``out``, as one line."""
    size = out.seek(0, os.SEEK_END)
    out.seek(max(0, size - 4 * OUTPUT_TAIL))
    text = out.read().decode(errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    tail = " | ".join(lines[-3:])
    return tail if len(tail) <= OUTPUT_TAIL else "..." + tail[-OUTPUT_TAIL:]


@dataclass(frozen=True)
class DrillCommand:
    """A command the profile gives an application to check its restored copy (``drill``),
    for a plug-in that has no deep check of its own (``exec``, ``fsfreeze``).

    It runs with ``FREEZEFRAME_RESTORED_ROOT`` set to the drill's restore root (the
    application's files are below it at their original absolute paths), in the
    application's private folder of the drill, for at most ``timeout`` seconds.
    """

    argv: tuple[str, ...]
    timeout: float

    #: The default of ``drill_timeout``.
    DEFAULT_TIMEOUT: ClassVar[float] = 300.0

    @classmethod
    def from_table(cls, table: Table) -> DrillCommand | None:
        """The table's ``drill`` (an argv; a relative program with a ``/`` is taken from
        the profile's folder) and ``drill_timeout``; ``None`` without ``drill``."""
        argv = table.get_argv("drill", None)
        timeout = table.get_duration("drill_timeout", None)
        if argv is None:
            if timeout is not None:
                raise ConfigError("drill_timeout", 'given without a "drill" command')
            return None
        if "/" in argv[0] and not os.path.isabs(argv[0]):
            argv[0] = str((table.base_dir / argv[0]).resolve())
        return cls(tuple(argv), cls.DEFAULT_TIMEOUT if timeout is None else timeout)

    @staticmethod
    def check(command: DrillCommand | None, ctx: DrillContext) -> None:
        """Run ``command`` as the application's deep check ``drill``; without a command,
        record nothing (there is no check to run)."""
        if command is None:
            return

        def run() -> str:
            env = {"FREEZEFRAME_RESTORED_ROOT": str(ctx.root)}
            tail = ctx.run_command(command.argv, timeout=command.timeout, env=env)
            program = os.path.basename(command.argv[0])
            return f"{program} exited 0" + (f": {tail}" if tail else "")

        ctx.check("drill", run)
