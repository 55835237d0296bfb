"""Which backups to keep: one rule set for every backend (``keep = { last = 7, daily = 14 }``).

The rules are restic's and borg's: ``last = N`` keeps the N newest; ``hourly``,
``daily``, ``weekly``, ``monthly`` and ``yearly = N`` keep the newest backup in
each of the N most recent hours/days/weeks/months/years that have one. A
backup kept by any rule is kept. The newest backup is always kept.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from freezeframe.errors import ConfigError

__all__ = ["KEEP_MAX", "RULES", "KeepPolicy", "select_keep"]

_BUCKETS: dict[str, Callable[[datetime], tuple[int, ...]]] = {
    "hourly": lambda d: (d.year, d.month, d.day, d.hour),
    "daily": lambda d: (d.year, d.month, d.day),
    "weekly": lambda d: tuple(d.isocalendar()[:2]),
    "monthly": lambda d: (d.year, d.month),
    "yearly": lambda d: (d.year,),
}
RULES = ("last", *_BUCKETS)
#: The most any rule may keep: a million hourly backups span a century.
KEEP_MAX = 1_000_000


@dataclass(frozen=True)
class KeepPolicy:
    """How many backups each rule keeps; 0 means the rule is off."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0

    @classmethod
    def from_table(cls, table: Mapping[str, Any], field: str = "keep") -> KeepPolicy:
        """Parse ``keep = { last = 7, ... }``; errors name ``keep.<rule>``."""
        values: dict[str, int] = {}
        for rule, n in table.items():
            if rule not in RULES:
                raise ConfigError(f"{field}.{rule}", f"unknown rule (use {', '.join(RULES)})")
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ConfigError(f"{field}.{rule}", "expected a whole number >= 0")
            if n > KEEP_MAX:
                raise ConfigError(f"{field}.{rule}", f"must be at most {KEEP_MAX}")
            values[rule] = n
        policy = cls(**values)
        if not any(values.values()):
            raise ConfigError(field, "keeps nothing: give at least one rule above 0")
        return policy

    def to_json(self) -> dict[str, int]:
        """The rules that are on."""
        return {r: getattr(self, r) for r in RULES if getattr(self, r)}

    def __str__(self) -> str:
        return ", ".join(f"{r} = {n}" for r, n in self.to_json().items())


def select_keep(items: Sequence[tuple[str, float]], policy: KeepPolicy) -> set[str]:
    """The ids to keep among ``(id, unix time)`` pairs under ``policy``."""
    ordered = sorted(items, key=lambda it: it[1], reverse=True)
    keep: set[str] = {ordered[0][0]} if ordered else set()
    keep.update(i for i, _ in ordered[: policy.last])
    for rule, bucket_of in _BUCKETS.items():
        wanted = getattr(policy, rule)
        seen: set[tuple[int, ...]] = set()
        for item_id, ts in ordered:
            if len(seen) >= wanted:
                break
            bucket = bucket_of(datetime.fromtimestamp(ts, UTC))
            if bucket not in seen:
                seen.add(bucket)
                keep.add(item_id)
    return keep
