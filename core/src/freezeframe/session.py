"""What every verb of one loaded profile shares: the profile, the registry, the catalog,
calls into components one at a time, and calls to observers.

The verbs themselves live in their own modules (:mod:`freezeframe.preflight`,
:mod:`freezeframe.backup`, :mod:`freezeframe.recovery`, :mod:`freezeframe.retention`,
:mod:`freezeframe.restore`); :class:`freezeframe.engine.Engine` puts them together.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from freezeframe.catalog import Catalog
from freezeframe.errors import QuiesceError, one_line
from freezeframe.fsutil import ensure_private_dir
from freezeframe.profile import ApplicationSpec, Profile
from freezeframe.registry import Registry, each_implementation
from freezeframe.specs import ObserverSpec

__all__ = ["Session"]

log = logging.getLogger("freezeframe")


class Session:
    """One loaded profile and what its verbs share."""

    def __init__(self, profile: Profile, registry: Registry) -> None:
        self.profile = profile
        self.registry = registry
        self._serial: dict[int, threading.Lock] = {}
        self._warned_history_lost = False

    @contextmanager
    def alone(self, component: object, timeout: float = -1) -> Iterator[None]:
        """One call at a time into one component instance: plug-ins need not be thread-safe.

        A signal or a deadline makes the thaw start while a quiesce thread may still be
        inside the plug-in; unquiesce closing a connection under a running query crashed
        the interpreter (SIGSEGV). Only ``interrupt()`` is called outside this lock.
        """
        lock = self._serial.setdefault(id(component), threading.Lock())
        if not lock.acquire(timeout=timeout):
            raise QuiesceError(f"its quiesce is still running after {timeout:g}s")
        try:
            yield
        finally:
            lock.release()

    def app(self, name: str) -> ApplicationSpec:
        """The profile's application ``name``."""
        return next(a for a in self.profile.applications if a.name == name)

    @contextmanager
    def catalog(self, *, read_only: bool | None = None) -> Iterator[Catalog]:
        """The profile's catalog, creating the private state folder on first use.

        ``read_only`` opens it without writing anything (``list``, ``show``); by
        default it is read-only only when the state folder cannot be written, so
        ``restore`` and ``verify`` work from a read-only copy of it.
        """
        if read_only is None:
            read_only = not self.state_writable()
        if not read_only:
            ensure_private_dir(self.profile.home)
        with Catalog(self.profile.home / "catalog.sqlite", read_only=read_only) as catalog:
            if catalog.history_lost and not self._warned_history_lost:
                self._warned_history_lost = True
                log.warning(
                    "the catalog's history is lost: %s; the runs before then are not in it, "
                    "and retention and prune are off until %s is removed",
                    catalog.history_lost,
                    catalog.lost_marker,
                )
            yield catalog

    def state_writable(self) -> bool:
        """Whether the profile's state folder (or the nearest folder above it that
        exists, before the first run) can be written by this process."""
        for folder in (self.profile.home, *self.profile.home.parents):
            if folder.exists():
                return os.access(folder, os.W_OK | os.X_OK)
        return False

    def notify(self, hook: str, **kwargs: Any) -> None:
        """Call every observer of ``hook``: the pluggy implementations, in their order, then
        the profile's own observers (``[[notify]]``...), each in a thread of its own and
        waited for at most its ``timeout``. One that raises is logged with its name and
        changes nothing else; one that takes longer is left to finish by itself."""
        for impl, call in each_implementation(self.registry.pm, hook):
            try:
                call(**kwargs)
            except Exception as e:  # observers never change the run
                log.warning("hook %s of %s failed: %s", hook, impl.plugin_name, one_line(e))
        method = hook.removeprefix("freezeframe_")
        calls = [
            _ObserverCall(spec, getattr(spec.component, method), kwargs)
            for spec in self.profile.observers
        ]
        for c in calls:
            c.wait()


class _ObserverCall:
    """One call of a profile's observer, started at once in a daemon thread."""

    def __init__(self, spec: ObserverSpec, method: Callable[..., None], kwargs: Any) -> None:
        self.spec = spec
        self.error: BaseException | None = None
        self.deadline = time.monotonic() + spec.component.timeout
        self.thread = threading.Thread(
            target=self._run, args=(method, kwargs), name=f"observer {spec.name}", daemon=True
        )
        self.thread.start()

    def _run(self, method: Callable[..., None], kwargs: Any) -> None:
        try:
            method(**kwargs)
        except BaseException as e:  # reported by wait(), in the caller's thread
            self.error = e

    def wait(self) -> None:
        """Wait for the call until its deadline; say what went wrong, if anything did."""
        self.thread.join(max(0.0, self.deadline - time.monotonic()))
        who = f"observer {self.spec.name!r} ({self.spec.info.kind})"
        if self.thread.is_alive():
            log.warning(
                "%s did not finish within %gs: going on without it",
                who,
                self.spec.component.timeout,
            )
        elif self.error is not None:
            log.warning("%s failed: %s", who, one_line(self.error))
