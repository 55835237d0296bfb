"""Tests of retention.py: the keep rules (restic's and borg's) and their parsing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from freezeframe.errors import ConfigError
from freezeframe.retention import KeepPolicy, select_keep

# Buckets are UTC days/hours/...; build the timestamps in UTC so the tests mean the same anywhere.
BASE = datetime(2024, 3, 10, 12, 0, tzinfo=UTC)


def at(days: float = 0, hours: float = 0) -> float:
    """A unix time ``days`` and ``hours`` before BASE."""
    return (BASE - timedelta(days=days, hours=hours)).timestamp()


def test_empty_input_keeps_nothing() -> None:
    assert select_keep([], KeepPolicy(last=3, daily=7)) == set()


def test_last_keeps_the_n_newest_whatever_the_input_order() -> None:
    items = [("c", at(hours=3)), ("a", at(hours=1)), ("e", at(hours=5)), ("b", at(hours=2))]
    items.append(("d", at(hours=4)))
    assert select_keep(items, KeepPolicy(last=2)) == {"a", "b"}
    assert select_keep(items, KeepPolicy(last=4)) == {"a", "b", "c", "d"}


def test_last_larger_than_the_input_keeps_everything() -> None:
    items = [("a", at(hours=1)), ("b", at(hours=2))]
    assert select_keep(items, KeepPolicy(last=10)) == {"a", "b"}


def test_daily_keeps_the_newest_of_each_of_the_n_most_recent_days_with_backups() -> None:
    items = [
        ("d0-late", at(days=0, hours=0)),
        ("d0-early", at(days=0, hours=6)),
        ("d1-late", at(days=1, hours=1)),
        ("d1-early", at(days=1, hours=5)),
        # days 2..4 have no backup: they do not use up the rule's count
        ("d5-only", at(days=5)),
        ("d6-only", at(days=6)),
    ]
    assert select_keep(items, KeepPolicy(daily=3)) == {"d0-late", "d1-late", "d5-only"}


def test_hourly_weekly_monthly_yearly_use_their_own_buckets() -> None:
    items = [
        ("now", at(hours=0)),
        ("hour-ago", at(hours=1)),
        ("hour-ago-early", at(hours=1.5)),
        ("last-year", datetime(2023, 6, 1, tzinfo=UTC).timestamp()),
        ("two-years", datetime(2022, 6, 1, tzinfo=UTC).timestamp()),
    ]
    assert select_keep(items, KeepPolicy(hourly=2)) == {"now", "hour-ago"}
    assert select_keep(items, KeepPolicy(yearly=2)) == {"now", "last-year"}
    assert select_keep(items, KeepPolicy(monthly=2)) == {"now", "last-year"}
    # Two ISO weeks with a backup: this one, and mid-2023.
    assert select_keep(items, KeepPolicy(weekly=2)) == {"now", "last-year"}


def test_rules_combine_as_a_union() -> None:
    items = [
        ("a", at(days=0, hours=0)),
        ("b", at(days=0, hours=1)),
        ("c", at(days=0, hours=2)),
        ("d", at(days=1)),
        ("e", at(days=2)),
        ("f", at(days=3)),
    ]
    last_only = select_keep(items, KeepPolicy(last=3))
    daily_only = select_keep(items, KeepPolicy(daily=3))
    assert last_only == {"a", "b", "c"}
    assert daily_only == {"a", "d", "e"}
    assert select_keep(items, KeepPolicy(last=3, daily=3)) == last_only | daily_only


def test_the_newest_is_always_kept() -> None:
    # No rule is on here, so only the always-keep-the-newest guarantee keeps anything.
    items = [("old", at(days=400)), ("new", at(hours=0)), ("mid", at(days=3))]
    assert select_keep(items, KeepPolicy()) == {"new"}


# -- parsing --------------------------------------------------------------------


def test_from_table_reads_every_rule() -> None:
    policy = KeepPolicy.from_table({"last": 7, "daily": 14, "weekly": 4})
    assert policy == KeepPolicy(last=7, daily=14, weekly=4)
    assert policy.to_json() == {"last": 7, "daily": 14, "weekly": 4}


@pytest.mark.parametrize(
    ("table", "field", "message"),
    [
        ({"forever": 1}, "keep.forever", "unknown rule"),
        ({"last": -1}, "keep.last", "expected a whole number >= 0"),
        ({"last": 1.5}, "keep.last", "expected a whole number >= 0"),
        ({"last": True}, "keep.last", "expected a whole number >= 0"),
        ({"last": "7"}, "keep.last", "expected a whole number >= 0"),
        ({"last": 0, "daily": 0}, "keep", "keeps nothing"),
        ({}, "keep", "keeps nothing"),
    ],
)
def test_from_table_refuses_bad_rules_naming_the_rule(
    table: dict[str, object], field: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        KeepPolicy.from_table(table)
    assert info.value.field == field
    assert message in str(info.value)
