"""``Backend.seal``: called after the thaw, outside the freeze window; a failure fails the
run, thaws nothing twice and leaves nothing behind; a released snapshot is not sealed.

The sealing backend is a real implementation of the plug-in API from the test kit
(freezeframe_testing.components), registered through pluggy.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import freezeframe_testing.components as comps
from freezeframe import RunStatus
from freezeframe.engine import Engine
from freezeframe.profile import load_profile
from freezeframe.registry import Registry
from freezeframe_testing.plugin import make_counter_db, writable_within

SEAL_SECONDS = 0.5


@pytest.fixture
def reg(registry_with: Callable[..., Registry]) -> Registry:
    comps.EVENTS.clear()
    return registry_with(comps)


def sealed_profile(
    tmp_path: Path,
    write_profile: Callable[..., Path],
    reg: Registry,
    *,
    fail: bool = False,
    archive: bool = False,
) -> tuple[Engine, Path]:
    """SQLite and a recorder, snapshotted by the sealing test backend (then, with
    ``archive``, archived from it: a snapshot released after the run)."""
    (tmp_path / "data").mkdir()
    db = make_counter_db(tmp_path / "data" / "a.db")
    profile = write_profile(
        f"""
        [profile]
        name = "seal"
        freeze_timeout = "10s"

        [[application]]
        plugin = "sqlite"
        name = "db"
        path = "{db}"

        [[application]]
        plugin = "recorder"
        name = "rec"

        [[backup]]
        backend = "sealed"
        name = "snap"
        dir = "{tmp_path / "snaps"}"
        seconds = "{SEAL_SECONDS}s"
        fail_seal = {str(fail).lower()}
    """
        + (
            f"""
        [[backup]]
        backend = "archive"
        name = "archive"
        dir = "{tmp_path / "archives"}"
    """
            if archive
            else ""
        )
    )
    return Engine(load_profile(profile, reg), reg), db


def events() -> list[tuple[str, str]]:
    return [(what, name) for what, name, _ in comps.EVENTS]


def test_seal_runs_after_the_thaw_and_its_artifact_is_the_one_recorded(
    tmp_path: Path, write_profile: Callable[..., Path], reg: Registry
) -> None:
    engine, _ = sealed_profile(tmp_path, write_profile, reg, fail=False)

    run = engine.backup().record

    assert run.status == RunStatus.SUCCEEDED, run.error
    seen = events()
    assert seen.index(("unquiesce-end", "rec")) < seen.index(("seal-start", "snap"))
    for app in run.applications:  # the seal's half second is in no freeze window
        assert app.frozen_ms is not None and app.frozen_ms < SEAL_SECONDS * 1000, app
    stage = run.stage("snap")
    assert stage is not None and stage.artifact is not None
    assert stage.artifact.metadata == {"sealed": True}
    with engine.catalog() as catalog:
        stored = catalog.get(run.run_id)
    assert stored is not None and stored.stages[0].artifact == stage.artifact


def test_a_failing_seal_fails_the_run_and_removes_the_snapshot(
    tmp_path: Path, write_profile: Callable[..., Path], reg: Registry
) -> None:
    engine, db = sealed_profile(tmp_path, write_profile, reg, fail=True)

    run = engine.backup().record

    assert run.status == RunStatus.FAILED
    assert run.error == "stage 'snap' (sealed): seal failed: cannot read the view (test)"
    stage = run.stage("snap")
    assert stage is not None and stage.status == "failed" and stage.deleted_at is not None
    assert ("delete", run.run_id) in events()
    assert not (tmp_path / "snaps" / run.run_id).exists()
    assert events().count(("unquiesce-end", "rec")) == 1  # thawed once, before the seal
    assert writable_within(db, 1.0)


def test_a_snapshot_released_after_its_copy_is_not_sealed(
    tmp_path: Path, write_profile: Callable[..., Path], reg: Registry
) -> None:
    """Nothing would verify it; reading it all would only double the run's reads."""
    engine, _ = sealed_profile(tmp_path, write_profile, reg, archive=True)

    run = engine.backup().record

    assert run.status == RunStatus.SUCCEEDED, run.error
    snap = run.stage("snap")
    assert snap is not None and snap.deleted_at is not None  # released
    assert ("seal-start", "snap") not in events()
