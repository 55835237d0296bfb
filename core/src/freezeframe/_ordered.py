"""Run one function per item in parallel threads, each item waiting for the items it depends on."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["Ordered", "Outcome", "run_ordered"]


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


class Ordered:
    """Call ``fn(item)`` for each item in its own thread, once all of ``deps[item]`` are done.

    Nothing starts until :meth:`run`; :attr:`outcome` is updated live, so a
    caller that keeps it before calling :meth:`run` still knows what began when
    a signal interrupts it, even while the threads are being started. With
    ``stop_on_failure``, an item whose dependency failed (or any item after a
    failure) is not started. Once :meth:`wait` returns or is interrupted,
    nothing more starts; calls already running go on, listed in
    ``outcome.unfinished``.
    """

    def __init__(
        self,
        items: Sequence[str],
        deps: Mapping[str, Sequence[str]],
        fn: Callable[[str], None],
        *,
        stop_on_failure: bool,
        thread_name: str,
    ) -> None:
        self.items = list(items)
        self.outcome = Outcome()
        self._finished = {name: threading.Event() for name in items}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._closed = False
        self._fn = fn
        self._deps = deps
        self._stop_on_failure = stop_on_failure
        for name in items:
            self.outcome.threads[name] = threading.Thread(
                target=self._worker, args=(name,), name=f"{thread_name}-{name}", daemon=True
            )

    def _worker(self, name: str) -> None:
        outcome = self.outcome
        try:
            for dep in self._deps.get(name, ()):
                if dep in self._finished:
                    self._finished[dep].wait()
                    if self._stop_on_failure and dep in outcome.failed:
                        return
            if self._stop_on_failure and self._stop.is_set():
                return
            with self._lock:
                if self._closed:
                    return
                outcome.started.append(name)
            try:
                self._fn(name)
            except BaseException as e:
                with self._lock:
                    outcome.failed[name] = e
                self._stop.set()
            else:
                with self._lock:
                    outcome.done.append(name)
        finally:
            self._finished[name].set()

    def run(self, timeout: float | None) -> Outcome:
        """Start the threads; wait until every started call has returned or ``timeout``
        seconds have passed. On any exit (a signal too) nothing more starts."""
        try:
            for t in self.outcome.threads.values():
                t.start()
            end = None if timeout is None else time.monotonic() + timeout
            for name in self.items:
                remaining = None if end is None else max(0.0, end - time.monotonic())
                if not self._finished[name].wait(remaining):
                    break
        finally:
            with self._lock:
                self._closed = True
        return self.outcome


def run_ordered(
    items: Sequence[str],
    deps: Mapping[str, Sequence[str]],
    fn: Callable[[str], None],
    *,
    timeout: float | None,
    stop_on_failure: bool,
    thread_name: str,
) -> Outcome:
    """:class:`Ordered` started and waited for ``timeout`` seconds."""
    ordered = Ordered(items, deps, fn, stop_on_failure=stop_on_failure, thread_name=thread_name)
    return ordered.run(timeout)
