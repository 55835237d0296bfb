"""A tool that runs on in the background, from the capture to the completion, and dies with us.

``mariadb-dump`` starts inside the freeze window and goes on long after the
thread that quiesced has ended. Two things tie its life to freezeframe's:

- ``PR_SET_PDEATHSIG``: the kernel sends it SIGKILL when the *thread* that
  started it ends. So a thread of its own (the keeper) starts it, reads its
  stderr and reaps it: the keeper lives exactly as long as the tool, and a
  ``kill -9`` of freezeframe, which ends every thread, ends the tool with it.
- a session of its own: a Ctrl-C at the terminal reaches freezeframe, which
  stops the run in order; never the tool behind its back.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from freezeframe.plugin import ToolError, die_with_us

__all__ = ["Child"]

#: How long closing waits for the keeper once the tool is killed.
_REAP = 10.0


class Child:
    """``argv`` started by a keeper thread; each stderr line goes to ``on_line`` as it
    comes (from the keeper, under the lock that :meth:`wait_for` waits on).

    ``stdout`` is a descriptor the tool writes to; ``pass_fds`` more descriptors it
    inherits; ``env`` its whole environment.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        stdout: int,
        pass_fds: Sequence[int] = (),
        env: Mapping[str, str],
        on_line: Callable[[str], None],
    ) -> None:
        self.argv = list(argv)
        self.tool = os.path.basename(argv[0])
        self._stdout = stdout
        self._pass_fds = tuple(pass_fds)
        self._env = dict(env)
        self._on_line = on_line
        self._changed = threading.Condition()
        self._proc: subprocess.Popen[bytes] | None = None
        self._failed: OSError | None = None
        self._spawned = False
        #: The tool's exit status once it has exited and been reaped.
        self.returncode: int | None = None
        self._keeper = threading.Thread(target=self._keep, name=f"keeper-{self.tool}", daemon=True)

    def start(self) -> None:
        """Start the tool; :class:`ToolError` if it cannot run at all."""
        self._keeper.start()
        with self._changed:
            self._changed.wait_for(lambda: self._spawned)
        if self._failed is not None:
            raise ToolError(f"{self.tool}: cannot run it: {self._failed.strerror}")

    def _keep(self) -> None:
        try:
            proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._stdout,
                stderr=subprocess.PIPE,
                pass_fds=self._pass_fds,
                env=self._env,
                start_new_session=True,
                preexec_fn=die_with_us(),
            )
        except OSError as e:
            with self._changed:
                self._failed, self._spawned = e, True
                self._changed.notify_all()
            return
        with self._changed:
            self._proc, self._spawned = proc, True
            self._changed.notify_all()
        assert proc.stderr is not None
        with proc.stderr:
            for raw in proc.stderr:
                with self._changed:
                    self._on_line(raw.decode(errors="replace").rstrip("\r\n"))
                    self._changed.notify_all()
        returncode = proc.wait()
        with self._changed:
            self.returncode = returncode
            self._changed.notify_all()

    @property
    def running(self) -> bool:
        """Whether the tool was started and has not been reaped yet."""
        return self._proc is not None and self.returncode is None

    def wait_for(
        self, predicate: Callable[[], bool], timeout: float | None, stop: Callable[[], bool]
    ) -> bool:
        """Wait until ``predicate()`` holds (checked under the lock ``on_line`` runs
        under); ``False`` if the tool exits first, ``timeout`` seconds pass or ``stop()``
        says to give up."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while not predicate():
                if self.returncode is not None or self._proc is None or stop():
                    return False
                left = 0.05 if end is None else min(0.05, end - time.monotonic())
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True

    def kill(self) -> None:
        """SIGKILL the tool if it still runs. Never blocks: safe from any thread."""
        proc = self._proc
        if proc is not None and self.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
                proc.kill()

    def close(self) -> None:
        """Kill the tool if it still runs and wait for the keeper to reap it."""
        self.kill()
        if self._keeper.is_alive():
            self._keeper.join(_REAP)
