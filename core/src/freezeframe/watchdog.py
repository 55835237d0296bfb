"""The watchdog: a separate process that thaws what never thaws by itself.

Some quiesces end only when someone undoes them (``fsfreeze``, an exec
plug-in's unfreeze command). Before the freeze window opens the engine starts
this process in its own session, hands it the thaw commands and the
deadline, and waits until it says it is armed. It runs every thaw command

- when the deadline passes (the freezeframe process hangs), or
- when its stdin reaches end-of-file without a ``disarm`` line (the
  freezeframe process died: the kernel closed the pipe),

and exits quietly when it reads ``disarm`` (the engine thawed in time).
Once it has fired, it runs the thaw commands again every quarter second
until the deadline has passed by :data:`SETTLE` seconds: a freeze command
the dead process had started may complete after the first thaw. It reports
its first thaw, then only a late freeze it thawed (a command that failed
and now succeeds), not every poll.

It inherits no descriptor of the engine (not the profile's lock: a crashed
run must not keep its profile locked). What the shared lock used to ensure,
that no new run freezes what this process may still be thawing, the engine
ensures from the catalog instead: it records this process (pid, boot, start
time) and the instant its work ends, and the next command's reconcile waits
for it (:func:`outlive`) before it thaws and lets a new run begin.
The deadline is an instant of CLOCK_MONOTONIC, which all processes share.
Thaw commands must hold no secret: they are argv.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import TracebackType

from freezeframe.errors import QuiesceError
from freezeframe.lock import Owner

__all__ = ["Watchdog", "outlive"]

log = logging.getLogger("freezeframe")
ARM_TIMEOUT = 10.0
THAW_COMMAND_TIMEOUT = 30.0
#: After firing, keep thawing until this long past the deadline.
SETTLE = 2.0


class Watchdog:
    """The engine's handle on a running watchdog process."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    @classmethod
    def start(cls, commands: Sequence[Sequence[str]], deadline: float) -> Watchdog:
        """Start and arm a watchdog for ``commands``; ``deadline`` is a ``time.monotonic()``.

        Its work is over by :meth:`until`; record :meth:`owner` so that the next
        command can wait for it if we die.
        """
        proc = subprocess.Popen(
            [sys.executable, "-m", "freezeframe.watchdog"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
            text=True,
            start_new_session=True,  # a Ctrl-C to our process group must not reach it
            close_fds=True,  # above all not the profile's lock
        )
        assert proc.stdin is not None and proc.stdout is not None
        spec = {"deadline": deadline, "commands": [list(c) for c in commands]}
        try:
            proc.stdin.write(json.dumps(spec) + "\n")
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], ARM_TIMEOUT)
            line = proc.stdout.readline() if ready else ""
        except OSError as e:
            line = f"error: {e}"
        if line.strip() != "armed":
            proc.kill()
            proc.wait()
            raise QuiesceError(
                f"the watchdog did not start ({line.strip() or 'no answer'}); nothing was frozen"
            )
        log.debug("watchdog %d armed for %d command(s)", proc.pid, len(commands))
        return cls(proc)

    def owner(self) -> Owner | None:
        """The watchdog process as the catalog records it (``None`` if it is gone already)."""
        return Owner.of(self.proc.pid)

    @staticmethod
    def until(deadline: float) -> float:
        """When a watchdog armed with ``deadline`` has stopped thawing, at the latest
        (its last thaw commands may still run for :data:`THAW_COMMAND_TIMEOUT` each)."""
        return deadline + SETTLE

    def disarm(self) -> None:
        """Tell the watchdog the thaw is done; it exits without running anything."""
        self._close("disarm\n")

    def fire(self) -> None:
        """Make the watchdog run its thaw commands now (our own thaw failed)."""
        self._close("fire\n")

    def _close(self, last_words: str) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(last_words)
            self.proc.stdin.close()
        except OSError:
            pass  # it already fired and exited: its thaw commands ran
        try:
            self.proc.wait(THAW_COMMAND_TIMEOUT + 5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Watchdog:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.disarm()


def outlive(owner: Owner, until: float, grace: float = THAW_COMMAND_TIMEOUT) -> str | None:
    """Wait until the watchdog ``owner`` of a dead run has exited; kill it if it is still
    there ``grace`` seconds after ``until`` (its deadline + :data:`SETTLE`).

    Returns what happened, for the record (``None`` when it was already gone).
    """
    try:
        pidfd = os.pidfd_open(owner.pid)
    except ProcessLookupError:
        return None
    try:
        if not owner.alive():  # checked after pidfd_open: the pidfd is that very process
            return None
        log.warning("waiting for the watchdog (pid %d) of a dead run to finish thawing", owner.pid)
        wait = max(0.0, until - time.monotonic()) + grace
        ready, _, _ = select.select([pidfd], [], [], wait)
        if ready:
            return f"waited for its watchdog (pid {owner.pid}) to finish thawing"
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        select.select([pidfd], [], [], 5.0)
        return f"its watchdog (pid {owner.pid}) was still running {wait:.0f}s later: killed it"
    finally:
        os.close(pidfd)


def _run_all(commands: list[list[str]]) -> list[str]:
    """Run every command; returns each one's status ("ok" or why not)."""
    statuses = []
    for argv in commands:
        try:
            r = subprocess.run(
                argv, capture_output=True, text=True, timeout=THAW_COMMAND_TIMEOUT, check=False
            )
            statuses.append(
                "ok" if r.returncode == 0 else f"exit {r.returncode}: {r.stderr.strip()}"
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            statuses.append(str(e))
    return statuses


def _say(why: str, argv: list[str], status: str) -> None:
    try:
        sys.stderr.write(f"freezeframe watchdog: {why}: ran {' '.join(argv)}: {status}\n")
        sys.stderr.flush()
    except OSError:
        pass


def _thaw(commands: list[list[str]], why: str) -> list[str]:
    statuses = _run_all(commands)
    for argv, status in zip(commands, statuses, strict=True):
        _say(why, argv, status)
    return statuses


def _main() -> int:
    spec = json.loads(sys.stdin.readline())
    deadline: float = spec["deadline"]
    commands: list[list[str]] = spec["commands"]
    sys.stdout.write("armed\n")
    sys.stdout.flush()
    buffer = ""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            why = "the freeze deadline passed"
            break
        ready, _, _ = select.select([sys.stdin], [], [], left)
        if not ready:
            continue
        chunk = sys.stdin.readline()
        if not chunk:
            if "disarm" in buffer:
                return 0
            why = "freezeframe died while applications were frozen"
            break
        buffer += chunk
        if chunk.strip() == "disarm":
            return 0
        if chunk.strip() == "fire":  # freezeframe lives and waited for its quiesces: once
            _thaw(commands, "freezeframe's own thaw failed")
            return 0
    before = _thaw(commands, why)
    while time.monotonic() < deadline + SETTLE:  # a freeze already under way may land late
        time.sleep(0.25)
        now = _run_all(commands)
        # A thaw that failed (nothing was frozen) and now succeeds undid a late freeze:
        # worth a line. One that always succeeds (rm -f) tells nothing new each time.
        for argv, was, status in zip(commands, before, now, strict=True):
            if status == "ok" and was != "ok":
                _say(f"{why} (a late freeze)", argv, status)
        before = now
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
