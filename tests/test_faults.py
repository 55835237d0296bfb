"""Thaw on every failure path, ordering, hooks and discovery — with in-process test plug-ins.

The test components (freezeframe_testing.components) are registered through
pluggy exactly as an installed plug-in would be; SQLite databases are real,
so "writable again" is checked against a real write lock.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import pytest

import freezeframe_testing.components as comps
from freezeframe import RunStatus, StageRecord, hookimpl
from freezeframe.catalog import Catalog
from freezeframe.engine import Engine
from freezeframe.profile import load_profile
from freezeframe.registry import Registry
from freezeframe_testing.plugin import make_counter_db, writable_within


@pytest.fixture
def reg(registry_with: Callable[..., Registry]) -> Registry:
    comps.EVENTS.clear()
    comps.Observer.RAISE = False
    comps.Observer.runs.clear()
    comps.Observer.stages.clear()
    return registry_with(comps, comps.Observer())


@pytest.fixture
def db(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    return make_counter_db(tmp_path / "data" / "a.db")


def profile_text(
    tmp_path: Path, db: Path, stage: str, *, timeout: str = "5s", apps: str = ""
) -> str:
    return f"""
        [profile]
        name = "faults"
        freeze_timeout = "{timeout}"

        [[application]]
        plugin = "sqlite"
        name = "db"
        path = "{db}"
        capture = "snapshot"  # the stage runs inside the window, where the faults are
        {apps}

        [[backup]]
        name = "snap"
        dir = "{tmp_path / "snaps"}"
        {stage}
    """


def engine_for(path: Path, reg: Registry) -> Engine:
    return Engine(load_profile(path, reg), reg)


def catalog_run(tmp_path: Path, run_id: str) -> dict:
    with Catalog(tmp_path / "state" / "faults" / "catalog.sqlite") as cat:
        rec = cat.get(run_id)
        assert rec is not None
        return rec.to_json()


def assert_nothing_left(tmp_path: Path) -> None:
    snaps = tmp_path / "snaps"
    assert not snaps.exists() or not any(snaps.iterdir()), list(snaps.iterdir())


def test_a_backend_that_raises_fails_the_run_and_thaws(tmp_path, db, write_profile, reg):
    engine = engine_for(write_profile(profile_text(tmp_path, db, 'backend = "failing"')), reg)
    run = engine.backup().record
    assert run.status == RunStatus.FAILED
    assert "stage 'snap'" in (run.error or "") and "disk on fire" in (run.error or "")
    assert writable_within(db, 0.5)
    assert catalog_run(tmp_path, run.run_id)["status"] == "failed"
    assert run.applications[0].thaw_end is not None
    assert_nothing_left(tmp_path)


def test_a_quiesce_that_raises_thaws_the_others(tmp_path, db, write_profile, reg):
    apps = """
        [[application]]
        plugin = "recorder"
        name = "web"
        fail = "quiesce"
        quiesce_ms = 50
    """
    text = profile_text(tmp_path, db, 'backend = "slow"', apps=apps)
    run = engine_for(write_profile(text), reg).backup().record
    assert run.status == RunStatus.FAILED
    assert "application 'web'" in (run.error or "")
    assert writable_within(db, 0.5)  # sqlite quiesced in parallel, and was thawed
    names = [(w, n) for w, n, _ in comps.EVENTS]
    assert names.index(("prepare", "web")) < names.index(("quiesce-start", "web"))  # prepare()
    assert ("unquiesce-end", "web") in names  # the half-failed one is unquiesced too
    assert ("stage-start", "snap") not in names  # no snapshot of a half-frozen set
    assert catalog_run(tmp_path, run.run_id)["status"] == "failed"


def test_crash_consistent_fallback_backs_up_without_that_application(
    tmp_path, db, write_profile, reg
):
    apps = """
        [[application]]
        plugin = "recorder"
        name = "web"
        fail = "quiesce"
        on_quiesce_failure = "crash-consistent"
    """
    text = profile_text(tmp_path, db, 'backend = "slow"', apps=apps)
    run = engine_for(write_profile(text), reg).backup().record
    assert run.status == RunStatus.SUCCEEDED, run.error
    modes = {a.name: a.mode for a in run.applications}
    assert modes == {"db": "quiesced", "web": "crash-consistent"}
    assert run.to_json()["applications"][1]["mode"] == "crash-consistent"


def test_the_deadline_thaws_while_a_stage_is_still_running(tmp_path, db, write_profile, reg):
    text = profile_text(tmp_path, db, 'backend = "slow"\nseconds = "30s"', timeout="500ms")
    started = time.monotonic()
    run = engine_for(write_profile(text), reg).backup().record
    assert run.status == RunStatus.FAILED
    assert "freeze_timeout" in (run.error or "")
    assert time.monotonic() - started < 10  # the 30 s stage was cancelled, not awaited
    app = run.applications[0]
    assert app.quiesce_start is not None and app.thaw_end is not None
    assert app.thaw_end - app.quiesce_start < 0.5 + 1.0  # thawed at the deadline
    assert writable_within(db, 0.5)
    assert ("stage-cancelled", "snap") in [(w, n) for w, n, _ in comps.EVENTS]
    assert_nothing_left(tmp_path)


def test_after_orders_quiesce_and_reverses_the_thaw(tmp_path, db, write_profile, reg):
    apps = """
        [[application]]
        plugin = "recorder"
        name = "web"
        quiesce_ms = 100

        [[application]]
        plugin = "recorder"
        name = "cache"
        quiesce_ms = 100

        [[application]]
        plugin = "recorder"
        name = "queue"
        after = ["web", "cache"]
    """
    text = profile_text(tmp_path, db, 'backend = "slow"', apps=apps)
    run = engine_for(write_profile(text), reg).backup().record
    assert run.status == RunStatus.SUCCEEDED, run.error
    t = {(w, n): ts for w, n, ts in comps.EVENTS}
    # web and cache quiesce in parallel (their 100 ms overlap) ...
    assert t[("quiesce-start", "cache")] < t[("quiesce-end", "web")]
    assert t[("quiesce-start", "web")] < t[("quiesce-end", "cache")]
    # ... and queue only once both are quiesced; the thaw runs the other way.
    assert t[("quiesce-start", "queue")] >= max(
        t[("quiesce-end", "web")], t[("quiesce-end", "cache")]
    )
    assert t[("unquiesce-end", "queue")] <= min(
        t[("unquiesce-start", "web")], t[("unquiesce-start", "cache")]
    )
    # every application was quiesced before the snapshot and thawed after it
    assert (
        max(t[("quiesce-end", n)] for n in ("web", "cache", "queue")) < t[("stage-start", "snap")]
    )
    assert t[("stage-end", "snap")] < min(t[("unquiesce-start", n)] for n in ("web", "cache"))


def test_lifecycle_hooks_see_every_run_and_an_exploding_observer_changes_nothing(
    tmp_path, db, write_profile, reg
):
    engine = engine_for(write_profile(profile_text(tmp_path, db, 'backend = "slow"')), reg)
    run = engine.backup().record
    assert run.status == RunStatus.SUCCEEDED
    whats = [w for w, _, _ in comps.EVENTS]
    assert whats.index("run-started") < whats.index("stage-finished") < whats.index("run-finished")
    assert comps.Observer.runs[-1].status == RunStatus.SUCCEEDED
    assert comps.Observer.stages[-1].status == "succeeded"
    comps.Observer.RAISE = True
    run = engine.backup().record
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert comps.Observer.runs[-1].run_id == run.run_id


def test_failing_unquiesce_fails_the_run_but_thaws_the_rest(tmp_path, db, write_profile, reg):
    apps = """
        [[application]]
        plugin = "recorder"
        name = "web"
        fail = "unquiesce"
    """
    text = profile_text(tmp_path, db, 'backend = "slow"', apps=apps)
    run = engine_for(write_profile(text), reg).backup().record
    assert run.status == RunStatus.FAILED
    assert "unquiesce failed" in (run.error or "")
    assert writable_within(db, 0.5)
    assert_nothing_left(tmp_path)  # a failed run keeps nothing


def _cli(profile: Path, *args: str) -> subprocess.Popen[str]:
    return comps.start_freezeframe("backup", profile, "--json", *args)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_snapshot_thaws_and_records_failure(
    tmp_path, db, write_profile, signum
):
    marker = tmp_path / "in-stage"
    text = profile_text(
        tmp_path, db, f'backend = "slow"\nseconds = "60s"\nmarker = "{marker}"', timeout="60s"
    )
    proc = _cli(write_profile(text))
    try:
        comps.wait_for(marker)
        assert not writable_within(db, 0.1)  # frozen right now
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err
    result = json.loads(out)
    assert result["status"] == "failed"
    assert f"interrupted by {signal.Signals(signum).name}" in result["error"]
    assert writable_within(db, 0.5)
    assert catalog_run(tmp_path, result["run_id"])["status"] == "failed"
    assert_nothing_left(tmp_path)


def test_sigkill_mid_freeze_releases_the_lock_and_the_next_run_reconciles(
    tmp_path, db, write_profile
):
    marker = tmp_path / "in-stage"
    text = profile_text(
        tmp_path, db, f'backend = "slow"\nseconds = "60s"\nmarker = "{marker}"', timeout="60s"
    )
    profile = write_profile(text)
    proc = _cli(profile)
    try:
        comps.wait_for(marker)
        run_id = marker.read_text()
        proc.kill()
        proc.wait(10)
    finally:
        proc.kill()
    assert writable_within(db, 2.0)  # the kernel dropped the write lock with the process
    assert (tmp_path / "snaps" / run_id).is_dir()  # what the dead run left behind
    assert catalog_run(tmp_path, run_id)["status"] == "running"

    marker.unlink()
    text = text.replace('seconds = "60s"', 'seconds = "10ms"')
    nxt = _cli(write_profile(text))
    _out, err = nxt.communicate(timeout=60)
    assert nxt.returncode == 0, err
    dead = catalog_run(tmp_path, run_id)
    assert dead["status"] == "failed"
    assert "died" in dead["error"]
    assert not (tmp_path / "snaps" / run_id).exists()


def test_two_backups_of_one_profile_never_overlap(tmp_path, db, write_profile):
    marker = tmp_path / "in-stage"
    text = profile_text(
        tmp_path, db, f'backend = "slow"\nseconds = "3s"\nmarker = "{marker}"', timeout="60s"
    )
    profile = write_profile(text)
    first = _cli(profile)
    try:
        comps.wait_for(marker)
        second = _cli(profile)
        _out2, err2 = second.communicate(timeout=30)
        _out1, err1 = first.communicate(timeout=60)
    finally:
        first.kill()
    assert first.returncode == 0, err1
    assert second.returncode == 3, err2
    assert f"pid {first.pid}" in err2 and "busy" in err2
    assert len(err2.strip().splitlines()) == 1


def test_sqlite_writes_wait_rather_than_fail_during_the_freeze(tmp_path, db, write_profile, reg):
    """A writer with a busy timeout longer than the freeze window never sees an error."""
    text = profile_text(tmp_path, db, 'backend = "slow"\nseconds = "300ms"')
    engine = engine_for(write_profile(text), reg)
    import threading

    errors: list[BaseException] = []
    stop = threading.Event()

    def write() -> None:
        conn = sqlite3.connect(db, timeout=10, isolation_level=None)
        try:
            while not stop.is_set():
                conn.execute("UPDATE counter SET n = n + 1")
        except BaseException as e:
            errors.append(e)
        finally:
            conn.close()

    t = threading.Thread(target=write)
    t.start()
    try:
        run = engine.backup().record
    finally:
        stop.set()
        t.join()
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert errors == []


class _NamesOnlyStage:
    """An observer naming only the argument it uses, as pluggy allows."""

    seen: ClassVar[list[str]] = []

    @hookimpl
    def freezeframe_stage_finished(self, stage: StageRecord) -> None:
        self.seen.append(f"plain {stage.name}")


class _First:
    """Registered first, asks to be called first."""

    @hookimpl(tryfirst=True)
    def freezeframe_stage_finished(self, stage: StageRecord) -> None:
        _NamesOnlyStage.seen.append(f"first {stage.name}")

    @hookimpl(trylast=True)
    def freezeframe_run_finished(self) -> None:
        _NamesOnlyStage.seen.append("last run-finished")


def test_observers_are_called_through_pluggy_with_their_own_arguments_and_order(
    tmp_path, db, write_profile, registry_with
):
    """Each observer gets only the arguments it names, in tryfirst/trylast order, and
    one that raises (the test kit's) stops neither the others nor the run."""
    comps.EVENTS.clear()
    comps.Observer.RAISE = True
    _NamesOnlyStage.seen.clear()
    try:
        reg = registry_with(comps, _First(), comps.Observer(), _NamesOnlyStage())
        engine = engine_for(write_profile(profile_text(tmp_path, db, 'backend = "slow"')), reg)
        run = engine.backup().record
    finally:
        comps.Observer.RAISE = False
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert _NamesOnlyStage.seen == ["first snap", "plain snap", "last run-finished"]
    assert [w for w, _, _ in comps.EVENTS if w == "run-finished"] == ["run-finished"]
