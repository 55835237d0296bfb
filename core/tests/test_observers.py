"""Observers configured by the profile's own tables: built from them, told of every run,
stage and drill, never able to change a run nor to hold it past their timeout."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from freezeframe.engine import Engine
from freezeframe.errors import ProfileError
from freezeframe.plugin import (
    DrillRecord,
    Observer,
    ProfileStatus,
    RunRecord,
    StageRecord,
    Table,
    hookimpl,
)
from freezeframe.profile import load_profile
from freezeframe.registry import Registry
from freezeframe_testing.plugin import make_counter_db, sqlite_clone_profile

HEARD: list[tuple[str, str, str]] = []


class Audit(Observer):
    """Records what it hears; ``fail``: raises; ``hang``: blocks until released."""

    kind = "audit"
    release = threading.Event()

    def __init__(self, name: str, table: Table) -> None:
        super().__init__(name, table)
        self.mode = table.get_choice("mode", ("record", "fail", "hang"), "record")
        self.timeout = table.get_duration("timeout", 10.0)

    def _heard(self, what: str, detail: str) -> None:
        if self.mode == "hang":
            self.release.wait(30)
        HEARD.append((self.name, what, detail))
        if self.mode == "fail":
            raise RuntimeError("the audit log is full (test)")

    def run_started(self, run: RunRecord) -> None:
        self._heard("run_started", str(run.status))

    def stage_finished(self, run: RunRecord, stage: StageRecord) -> None:
        self._heard("stage_finished", f"{stage.name} {stage.status}")

    def run_finished(self, run: RunRecord, status: ProfileStatus) -> None:
        self._heard("run_finished", str(run.status))

    def drill_finished(self, run: RunRecord, drill: DrillRecord, status: ProfileStatus) -> None:
        self._heard("drill_finished", str(drill.status))


class Registers:
    @hookimpl
    def freezeframe_register_observers(self, register: Callable[[type[Any]], None]) -> None:
        register(Audit)


@pytest.fixture
def observed(tmp_path: Path, registry_with) -> Callable[[str], Engine]:
    HEARD.clear()
    Audit.release.clear()
    db = make_counter_db(tmp_path / "db.sqlite")
    registry: Registry = registry_with(Registers())

    def make(observers: str) -> Engine:
        path = sqlite_clone_profile(tmp_path, db, name="observed")
        drills = json.dumps(str(tmp_path / "drills"))
        text = path.read_text().replace("[profile]\n", f"[profile]\ndrill_dir = {drills}\n", 1)
        path.write_text(f"{observers}\n{text}")  # first: a top-level key must precede tables
        return Engine(load_profile(path, registry), registry)

    yield make
    Audit.release.set()


def test_each_table_builds_an_observer_told_of_runs_stages_and_drills(observed) -> None:
    engine = observed('[[audit]]\nname = "first"\n\n[[audit]]\n')
    assert [o.name for o in engine.profile.observers] == ["first", "audit-2"]
    run = engine.backup().record
    assert run.status == "succeeded"
    (drill,) = engine.drill(run.run_id)
    assert drill.status == "passed"
    for name in ("first", "audit-2"):
        assert [(w, d) for n, w, d in HEARD if n == name] == [
            ("run_started", "running"),
            ("stage_finished", "snap succeeded"),
            ("run_finished", "succeeded"),
            ("drill_finished", "passed"),
        ]


def test_a_single_table_is_one_observer(observed) -> None:
    engine = observed('[audit]\nname = "only"\n')
    assert [o.name for o in engine.profile.observers] == ["only"]


def test_an_observer_that_raises_is_logged_and_changes_nothing(observed, caplog) -> None:
    engine = observed('[[audit]]\nname = "broken"\nmode = "fail"\n')
    run = engine.backup().record
    assert run.status == "succeeded" and run.error is None
    assert (
        "observer 'broken' (audit) failed: RuntimeError: the audit log is full (test)"
        in caplog.text
    )


def test_a_hanging_observer_holds_the_run_no_longer_than_its_timeout(observed, caplog) -> None:
    engine = observed('[[audit]]\nname = "slow"\nmode = "hang"\ntimeout = "0.3s"\n')
    start = time.monotonic()
    run = engine.backup().record
    took = time.monotonic() - start
    assert run.status == "succeeded"
    # three calls (started, stage, finished), each waited for at most 0.3 s
    assert took < 0.3 * 3 + 5, took
    assert "observer 'slow' (audit) did not finish within 0.3s: going on without it" in caplog.text


@pytest.mark.parametrize(
    ("tables", "says"),
    [
        ('[[audit]]\nmode = "loud"', "expected one of"),
        ('[[audit]]\ncolour = "red"', "field \"colour\": unknown field for observer 'audit'"),
        ('[[audit]]\nname = "a"\n[[audit]]\nname = "a"', "duplicate observer name 'a'"),
        ("audit = 3", "must be a table, or an array of tables written [[audit]]"),
        ('[[notfy]]\nurl = "json://x"', "unknown observer 'notfy'"),  # a typo
    ],
)
def test_a_wrong_observer_table_is_a_profile_error(observed, tables: str, says: str) -> None:
    with pytest.raises(ProfileError) as e:
        observed(tables)
    assert any(says in p for p in e.value.problems), e.value.problems
