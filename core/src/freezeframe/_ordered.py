"""Run one function per item in parallel threads, each item waiting for the items it depends on."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["Outcome", "run_ordered"]


@dataclass
class Outcome:
    """What happened to the items of one :func:`run_ordered` call."""

    started: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    failed: dict[str, BaseException] = field(default_factory=dict)
    threads: dict[str, threading.Thread] = field(default_factory=dict)

    @property
    def unfinished(self) -> list[str]:
        """Items whose function was started and has not returned."""
        return [n for n in self.started if n not in self.done and n not in self.failed]


def run_ordered(
    items: Sequence[str],
    deps: Mapping[str, Sequence[str]],
    fn: Callable[[str], None],
    *,
    timeout: float | None,
    stop_on_failure: bool,
    thread_name: str,
) -> Outcome:
    """Call ``fn(item)`` for each item in its own thread, once all of ``deps[item]`` are done.

    With ``stop_on_failure``, an item whose dependency failed (or any item
    after a failure) is not started. Returns once every started call has
    returned or ``timeout`` seconds have passed; calls still running are in
    ``Outcome.unfinished`` and their threads keep going.
    """
    outcome = Outcome()
    finished = {name: threading.Event() for name in items}
    lock = threading.Lock()
    stop = threading.Event()
    closed = False  # set under ``lock`` once we stop waiting: nothing may start after that

    def worker(name: str) -> None:
        try:
            for dep in deps.get(name, ()):
                if dep in finished:
                    finished[dep].wait()
                    if stop_on_failure and dep in outcome.failed:
                        return
            if stop_on_failure and stop.is_set():
                return
            with lock:
                if closed:
                    return
                outcome.started.append(name)
            try:
                fn(name)
            except BaseException as e:
                with lock:
                    outcome.failed[name] = e
                stop.set()
            else:
                with lock:
                    outcome.done.append(name)
        finally:
            finished[name].set()

    for name in items:
        t = threading.Thread(target=worker, args=(name,), name=f"{thread_name}-{name}", daemon=True)
        outcome.threads[name] = t
        t.start()
    end = None if timeout is None else time.monotonic() + timeout
    for name in items:
        remaining = None if end is None else max(0.0, end - time.monotonic())
        if not finished[name].wait(remaining):
            break
    with lock:
        closed = True
    return outcome
