"""Failpoints for the fault-injection suite. Inert unless ``FREEZEFRAME_FAULT`` is set.

``FREEZEFRAME_FAULT="<action>@<point>"`` makes the named point of the run
raise (``raise``), send this process SIGTERM (``sigterm``) or SIGKILL
(``sigkill``). A point reached several times is named ``<point>#<n>`` for its
n-th time (``catalog.save#3``). The points are listed in :data:`POINTS` with
``{app}``/``{stage}`` standing for names; tests/test_fault_injection.py walks
all of them.

Before acting, the point appends ``<action>@<point>#<n>`` to the file named by
``FREEZEFRAME_FAULT_FIRED`` (when set): the test's proof that its fault fired,
so a failpoint that no longer fires fails the suite rather than passing it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

__all__ = ["CAPTURE_POINTS", "POINTS", "InjectedFault", "point"]

POINTS = (
    "prepare.{app}",
    "quiesce.before.{app}",
    "quiesce.after.{app}",
    "stage.start.{stage}",
    "stage.progress.{stage}",
    "stage.end.{stage}",
    "thaw.before",
    "unquiesce.before.{app}",
    "unquiesce.after.{app}",
    "thaw.after",
    "run.durable",
    "retention.before",
    "retention.delete",
    "catalog.save",
)

#: Reached only by applications whose capture mode completes after the thaw:
#: tests/test_capture_sqlite.py walks them (tests/test_fault_injection.py's applications
#: capture in snapshot mode and never reach them).
CAPTURE_POINTS = ("complete.before.{app}", "complete.after.{app}")

_seen: Counter[str] = Counter()
_lock = threading.Lock()


class InjectedFault(Exception):
    """The exception a ``raise@...`` failpoint raises."""


def point(name: str, error: type[Exception] = InjectedFault) -> None:
    """Fire the injected fault if ``FREEZEFRAME_FAULT`` names this point (or its n-th pass).

    ``raise`` raises ``error``: what a real failure at this point would raise (a
    catalog write fails as SQLite's errors do), so the fault takes the path a real
    one would take.
    """
    spec = os.environ.get("FREEZEFRAME_FAULT")
    if not spec:
        return
    action, _, target = spec.partition("@")
    with _lock:
        _seen[name] += 1
        nth = f"{name}#{_seen[name]}"
    if target not in (name, nth):
        return
    fired = os.environ.get("FREEZEFRAME_FAULT_FIRED")
    if fired:
        with open(fired, "a") as f:  # before acting: SIGKILL leaves no later chance
            f.write(f"{action}@{nth}\n")
    if action == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)  # the handler raises in the main thread meanwhile
    else:
        raise error(f"injected fault at {nth}")
