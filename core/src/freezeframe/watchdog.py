"""The watchdog: a separate process that thaws what never thaws by itself.

Some quiesces end only when someone undoes them (``fsfreeze``, an exec
plug-in's unfreeze command). Before the freeze window opens the engine starts
this process in its own session, hands it the thaw commands and the
deadline, and waits until it says it is armed. It runs every thaw command

- when the deadline passes (the freezeframe process hangs), or
- when its stdin reaches end-of-file without a ``disarm`` line (the
  freezeframe process died: the kernel closed the pipe),

and exits quietly when it reads ``disarm`` (the engine thawed in time).
The deadline is an instant of CLOCK_MONOTONIC, which all processes share.
Thaw commands must hold no secret: they are argv.
"""

from __future__ import annotations

import json
import logging
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from types import TracebackType

from freezeframe.errors import QuiesceError

__all__ = ["Watchdog"]

log = logging.getLogger("freezeframe")
ARM_TIMEOUT = 10.0
THAW_COMMAND_TIMEOUT = 30.0


class Watchdog:
    """The engine's handle on a running watchdog process."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    @classmethod
    def start(cls, commands: Sequence[Sequence[str]], deadline: float) -> Watchdog:
        """Start and arm a watchdog for ``commands``; ``deadline`` is a ``time.monotonic()``."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "freezeframe.watchdog"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
            text=True,
            start_new_session=True,  # a Ctrl-C to our process group must not reach it
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

    def disarm(self) -> None:
        """Tell the watchdog the thaw is done; it exits without running anything."""
        self._close("disarm\n")

    def fire(self) -> None:
        """Make the watchdog run its thaw commands now (our own thaw failed)."""
        self._close("")

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


def _thaw(commands: list[list[str]], why: str) -> None:
    for argv in commands:
        try:
            r = subprocess.run(
                argv, capture_output=True, text=True, timeout=THAW_COMMAND_TIMEOUT, check=False
            )
            status = "ok" if r.returncode == 0 else f"exit {r.returncode}: {r.stderr.strip()}"
        except (OSError, subprocess.TimeoutExpired) as e:
            status = str(e)
        try:
            sys.stderr.write(f"freezeframe watchdog: {why}: ran {' '.join(argv)}: {status}\n")
            sys.stderr.flush()
        except OSError:
            pass


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
            _thaw(commands, "the freeze deadline passed")
            return 0
        ready, _, _ = select.select([sys.stdin], [], [], left)
        if not ready:
            continue
        chunk = sys.stdin.readline()
        if not chunk:
            if "disarm" not in buffer:
                _thaw(commands, "freezeframe died while applications were frozen")
            return 0
        buffer += chunk
        if chunk.strip() == "disarm":
            return 0


if __name__ == "__main__":
    raise SystemExit(_main())
