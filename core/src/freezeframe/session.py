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
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from freezeframe.catalog import Catalog
from freezeframe.errors import QuiesceError, one_line
from freezeframe.fsutil import ensure_private_dir
from freezeframe.profile import ApplicationSpec, Profile
from freezeframe.registry import Registry, each_implementation

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
        """Call every observer of ``hook`` through pluggy, in its order; one that raises
        is logged with its plug-in's name and changes nothing else."""
        for impl, call in each_implementation(self.registry.pm, hook):
            try:
                call(**kwargs)
            except Exception as e:  # observers never change the run
                log.warning("hook %s of %s failed: %s", hook, impl.plugin_name, one_line(e))
