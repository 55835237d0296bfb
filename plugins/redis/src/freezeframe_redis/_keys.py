"""The key count per database: recorded at the capture, compared by the drill.

``INFO keyspace`` lists each database that holds a key (``db0:keys=3,expires=1,...``).
The capture records ``keys`` and ``expires`` per database while writes (and with them
Redis's key expiry) are paused, at the instant the data on disk holds. A restored
server loads every key of that instant except those whose time to live has run out
since (Redis drops them as it loads a dump, and removes them soon after loading an
AOF): with no key that had a time to live the count must be the same; otherwise
it must lie between the keys without one and all of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from freezeframe.plugin import CheckFailed, CheckSkipped

__all__ = ["compare_keyspace", "keyspace"]


def keyspace(info: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """``INFO keyspace`` (as redis-py parses it) as ``{"db0": {"keys": 3, "expires": 1}}``."""
    return {
        db: {"keys": int(v.get("keys", 0)), "expires": int(v.get("expires", 0))}
        for db, v in info.items()
        if isinstance(v, Mapping)
    }


def _number(db: str) -> int:
    return int(db[2:]) if db[2:].isdigit() else -1


def compare_keyspace(recorded: Any, restored: Mapping[str, Mapping[str, int]]) -> str:
    """What the restored server holds against what the capture recorded (``keyspace``
    in the run's facts), database by database; :class:`CheckFailed` naming each
    database whose count is off, :class:`CheckSkipped` for a run that recorded none."""
    if not isinstance(recorded, Mapping):
        raise CheckSkipped("the run recorded no key count per database (it predates it)")
    seen, wrong = [], []
    for db in sorted(set(recorded) | set(restored), key=_number):
        facts = recorded.get(db) or {}
        keys, expires = int(facts.get("keys", 0)), int(facts.get("expires", 0))
        got = int((restored.get(db) or {}).get("keys", 0))
        ttl = (
            f" ({expires} with a time to live, which may have run out since: "
            f"{keys - expires} to {keys} expected)"
            if expires
            else ""
        )
        if keys - expires <= got <= keys:
            seen.append(
                f"{db}: {got} keys, as recorded"
                if got == keys and not expires
                else f"{db}: {got} keys, {keys} recorded{ttl}"
            )
        else:
            wrong.append(f"{db}: {got} keys restored, {keys} recorded at the capture{ttl}")
    if wrong:
        raise CheckFailed("; ".join(wrong))
    return "; ".join(seen) if seen else "no keys, as recorded"
