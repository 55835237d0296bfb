"""Who quiesces after whom: the profile's ``after``, and the order the core adds (a
capture that blocks no write goes after every one that does); and the levels that order
makes, which ``plan`` shows and the quiesce runs in parallel."""

from __future__ import annotations

from freezeframe.specs import Profile

__all__ = ["quiesce_after", "quiesce_levels"]


def quiesce_after(profile: Profile) -> dict[str, tuple[str, ...]]:
    """Whom each application quiesces after: its ``after``, and, for a plug-in whose
    capture blocks no write (PostgreSQL), every application whose quiesce does. A capture
    that blocks nothing fixes its instant when it runs; were it to run before another
    application is blocked, a write to that one could land after a write to this one
    that the capture missed. Once every blocking application holds its writers, every
    writer that touches one of them waits, and the non-blocking capture sees all that
    came before. An implicit order that would close a cycle with the profile's ``after``
    is left out."""
    after = {a.name: tuple(a.after) for a in profile.applications}
    blocking = [a.name for a in profile.applications if a.component.blocks_writes]
    for a in profile.applications:
        if a.component.blocks_writes:
            continue
        extra = [
            b for b in blocking if b not in after[a.name] and a.name not in _upstream(after, b)
        ]
        after[a.name] = (*after[a.name], *extra)
    return after


def _upstream(after: dict[str, tuple[str, ...]], name: str) -> set[str]:
    """Every application ``name`` waits for, directly or not."""
    seen: set[str] = set()
    todo = list(after.get(name, ()))
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(after.get(n, ()))
    return seen


def quiesce_levels(after: dict[str, tuple[str, ...]]) -> list[list[str]]:
    """Applications grouped by when they may quiesce: each group after the ones before it."""
    levels: list[list[str]] = []
    placed: set[str] = set()
    while len(placed) < len(after):
        level = [
            n for n, deps in after.items() if n not in placed and all(d in placed for d in deps)
        ]
        if not level:
            break
        levels.append(level)
        placed.update(level)
    return levels
