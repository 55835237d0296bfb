"""Running the external tools users already trust (btrfs, fsfreeze, restic, borg): once, here.

No shell, argv as a list, secrets only through the environment, a timeout,
and cancellation from a stage context. A failure becomes one
:class:`ToolError` line naming the tool and its last words on stderr.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from freezeframe.boundary import StageContext
from freezeframe.config import SECRET_ENV_NAMES
from freezeframe.errors import Cancelled, FreezeframeError

__all__ = ["ToolError", "die_with_us", "find_tool", "run_tool", "streaming_tool"]


class ToolError(FreezeframeError):
    """An external tool failed; ``returncode`` and ``stderr`` keep the details."""

    def __init__(self, message: str, returncode: int | None = None, stderr: str = "") -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


#: ``prctl(2)``: the signal the kernel sends a process when its parent dies.
_PR_SET_PDEATHSIG = 1


def die_with_us() -> Callable[[], None]:
    """A ``preexec_fn`` that has the kernel SIGKILL the child when our thread that started
    it dies (with the process: even ``kill -9``). prctl is looked up here, in the parent:
    the child, forked from a process with threads, only calls it. A parent that died
    before the call (the child's parent is then another) makes the child end at once."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        if prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            os._exit(126)
        if os.getppid() != parent:
            os._exit(126)

    return preexec


def find_tool(name: str) -> str:
    """The path of ``name`` on PATH or in the sbin folders; :class:`ToolError` when missing."""
    path = shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")
    if path is None:
        raise ToolError(f"{name} is not installed (not on PATH nor in /usr/sbin, /sbin)")
    return path


def _last_words(stderr: str) -> str:
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _environment(env: Mapping[str, str] | None) -> dict[str, str]:
    """This process's environment without the profile's secrets, plus ``env``."""
    inherited = {k: v for k, v in os.environ.items() if k not in SECRET_ENV_NAMES}
    return {**inherited, **(env or {})}


def run_tool(
    argv: Sequence[str],
    *,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    context: StageContext | None = None,
    input: str | None = None,
    cwd: str | os.PathLike[str] | None = None,
    check: bool = True,
    fatal: Sequence[str] = (),
    watch: Callable[[], str | None] | None = None,
    on_stdout: Callable[[str], None] | None = None,
    on_stderr: Callable[[str], None] | None = None,
    dies_with_us: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` and return its result; raise :class:`ToolError` if it fails or times out.

    ``env`` is added to this process's environment (pass secrets here, never in
    argv); variables that hold a profile's secrets are not inherited otherwise.
    With ``context``, a cancelled run kills the tool and raises
    :class:`~freezeframe.errors.Cancelled`. A line on stderr containing one of
    ``fatal`` (``"no space left on device"`` for a tool that would retry for
    minutes) kills the tool at once and raises :class:`ToolError` with that line;
    so does ``watch``, called every 0.2 s while the tool runs, when it returns a
    reason (a tool that stalls silently on a full disk). ``on_stdout`` sees each
    line of stdout as it comes (from another thread), for such a watch or to pass a
    tool's own progress on (:meth:`StageContext.progress_to`); ``on_stderr`` each line of
    stderr.
    ``dies_with_us`` has the kernel kill the tool if freezeframe dies (``kill -9``
    included; Linux): for a tool that holds something of the application's (a dump
    reading from an exported snapshot) and must not outlive the run.
    """
    tool = os.path.basename(argv[0])
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_environment(env),
            cwd=cwd,
            preexec_fn=die_with_us() if dies_with_us else None,
        )
    except OSError as e:
        raise ToolError(f"{tool}: cannot run it: {e.strerror}") from None
    out: list[str] = []
    err: list[str] = []
    fatal_line: list[str] = []

    def read_out() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line)
            if on_stdout is not None:
                on_stdout(line)

    def read_err() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            err.append(line)
            if on_stderr is not None:
                on_stderr(line)
            if not fatal_line and any(f in line for f in fatal):
                fatal_line.append(line.strip())

    def write_in() -> None:
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # the tool did not want all of it
            proc.stdin.write(input or "")
            proc.stdin.close()

    threads = [threading.Thread(target=f, daemon=True) for f in (read_out, read_err)]
    if input is not None:
        threads.append(threading.Thread(target=write_in, daemon=True))
    for t in threads:
        t.start()

    def stop() -> None:
        proc.kill()
        proc.wait()
        for t in threads:
            t.join()

    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            wait = 0.2 if context is not None or fatal or watch else None
            if deadline is not None:
                left = max(0.0, deadline - time.monotonic())
                wait = left if wait is None else min(wait, left)
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                pass
            if fatal_line or (watch is not None and (reason := watch())):
                stop()
                why = fatal_line[0] if fatal_line else reason
                raise ToolError(f"{tool} stopped: {why}", None, "".join(err))
            if context is not None and context.cancelled:
                stop()
                raise Cancelled(f"{tool} stopped: the run was cancelled")
            if deadline is not None and time.monotonic() >= deadline:
                stop()
                raise ToolError(f"{tool} did not finish within {timeout:g}s")
    except BaseException:
        if proc.poll() is None:
            stop()
        raise
    for t in threads:
        t.join()
    stdout, stderr = "".join(out), "".join(err)
    result = subprocess.CompletedProcess(list(argv), proc.returncode, stdout, stderr)
    if check and proc.returncode != 0:
        words = _last_words(stderr) or _last_words(stdout) or "no message"
        raise ToolError(f"{tool} failed (exit {proc.returncode}): {words}", proc.returncode, stderr)
    return result


@contextmanager
def streaming_tool(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    pass_fds: Sequence[int] = (),
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` with its standard output a pipe that the block reads (``proc.stdout``).

    For tools whose output is the data (``tar -cf -``). Leaving the block closes
    the pipe, waits for the tool and raises :class:`ToolError` (with its whole
    stderr) if it failed; a block that raises kills the tool first. stderr goes
    to a temporary file, so a chatty tool never blocks on it. The environment
    is :func:`run_tool`'s.
    """
    tool = os.path.basename(argv[0])
    with tempfile.TemporaryFile() as errors:
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=errors,
                env=_environment(env),
                cwd=cwd,
                pass_fds=tuple(pass_fds),
            )
        except OSError as e:
            raise ToolError(f"{tool}: cannot run it: {e.strerror}") from None
        assert proc.stdout is not None
        try:
            with proc.stdout:
                yield proc
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        returncode = proc.wait()
        if returncode != 0:
            errors.seek(0)
            err = errors.read().decode(errors="replace")
            words = _last_words(err) or "no message"
            raise ToolError(f"{tool} failed (exit {returncode}): {words}", returncode, err)
