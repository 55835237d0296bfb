"""The processes a test made, and only those: found by ancestry or by session, never by name.

A test that asks "is a borg still running?" must not see another test's borg,
or a user's: it looks below its own process (:func:`descendants`) or in the
session of a process it started with ``start_new_session=True``
(:func:`in_session`), which also finds what was orphaned when that process
died.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Proc", "descendants", "in_session", "processes"]


@dataclass(frozen=True)
class Proc:
    """One process, as /proc shows it."""

    pid: int
    ppid: int
    sid: int
    state: str  # "Z" for a zombie: exited, not yet reaped
    argv: tuple[str, ...]

    @property
    def running(self) -> bool:
        """Alive (a zombie has exited; only its parent has not reaped it yet)."""
        return self.state != "Z"

    def runs(self, program: str, *words: str) -> bool:
        """Whether its argv names ``program`` (as argv[0] or, for an interpreter's
        script, argv[1]) and holds every one of ``words``."""
        named = any(os.path.basename(a) == program for a in self.argv[:2])
        return named and all(w in self.argv for w in words)


def processes() -> list[Proc]:
    """Every process now; helpers below filter it down to a test's own."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes()
        except OSError:  # it exited meanwhile
            continue
        # the command name may hold spaces and parentheses: the fields follow the last ")"
        fields = stat.rsplit(")", 1)[1].split()
        found.append(
            Proc(
                pid=int(entry.name),
                ppid=int(fields[1]),
                sid=int(fields[3]),
                state=fields[0],
                argv=tuple(a.decode(errors="replace") for a in argv.split(b"\0") if a),
            )
        )
    return found


def descendants(pid: int | None = None) -> list[Proc]:
    """Every live process below ``pid`` (default: this process), children first."""
    children: dict[int, list[Proc]] = {}
    for p in processes():
        children.setdefault(p.ppid, []).append(p)
    found, todo = [], [os.getpid() if pid is None else pid]
    while todo:
        for child in children.get(todo.pop(0), []):
            found.append(child)
            todo.append(child.pid)
    return [p for p in found if p.running]


def in_session(sid: int) -> list[Proc]:
    """Every live process of session ``sid`` (a process started with
    ``start_new_session=True`` leads the session of its own pid), orphans included."""
    return [p for p in processes() if p.sid == sid and p.running]
