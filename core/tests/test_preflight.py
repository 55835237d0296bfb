"""Tests of preflight.py's rules that read the loaded profile only: which stages run in
the freeze window, the quiesce order, and the pairings that ``check`` refuses — with the
real sqlite, exec, clone and archive components."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from freezeframe.preflight import pairing_problems, quiesce_levels, windowed_stages
from freezeframe.profile import load_profile
from freezeframe.registry import Registry
from freezeframe_testing.plugin import make_counter_db

WriteProfile = Callable[..., Path]

SNAP = '[[backup]]\nbackend = "clone"\nname = "snap"\ndir = "{d}/snaps"\n'
COPY = '[[backup]]\nbackend = "archive"\nname = "arch"\nsource = "snap"\ndir = "{d}/archives"\n'


@pytest.fixture
def db(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    return make_counter_db(tmp_path / "data" / "orders.db")


def sqlite_app(db: Path) -> str:
    return f'[[application]]\nplugin = "sqlite"\nname = "orders"\npath = "{db}"\n'


def exec_app(tmp_path: Path, name: str = "files", after: str = "") -> str:
    return (
        f'[[application]]\nplugin = "exec"\nname = "{name}"\nquiesce = ["true"]\n'
        f'unquiesce = ["true"]\ndata_paths = ["{tmp_path}"]\n{after}\n'
    )


@pytest.mark.parametrize(
    ("thaw", "windowed"), [("after-snapshot", ["snap"]), ("after-backup", ["snap", "arch"])]
)
def test_windowed_stages_follow_thaw(
    write_profile: WriteProfile,
    registry: Registry,
    db: Path,
    tmp_path: Path,
    thaw: str,
    windowed: list[str],
) -> None:
    text = f'[profile]\nname = "p"\nthaw = "{thaw}"\n' + sqlite_app(db)
    text += SNAP.format(d=tmp_path) + COPY.format(d=tmp_path)
    profile = load_profile(write_profile(text), registry)
    assert [s.name for s in windowed_stages(profile)] == windowed


def test_quiesce_levels_group_applications_by_what_they_wait_for() -> None:
    after = {"web": ("db", "cache"), "db": (), "cache": (), "audit": ("web",)}
    assert quiesce_levels(after) == [["db", "cache"], ["web"], ["audit"]]


def test_an_application_not_consistent_on_a_per_file_snapshot_is_refused(
    write_profile: WriteProfile, registry: Registry, tmp_path: Path
) -> None:
    text = '[profile]\nname = "p"\n' + exec_app(tmp_path) + SNAP.format(d=tmp_path)
    profile = load_profile(write_profile(text), registry)
    (problem,) = pairing_problems(profile, registry)
    assert problem.startswith("application 'files' (exec) is not consistent on per-file")
    assert "stage 'snap' (clone)" in problem
    assert "use a snapshot backend that is atomic" in problem


def test_a_consistent_pairing_has_no_problem(
    write_profile: WriteProfile, registry: Registry, db: Path, tmp_path: Path
) -> None:
    text = '[profile]\nname = "p"\n' + sqlite_app(db) + SNAP.format(d=tmp_path)
    text += COPY.format(d=tmp_path)
    profile = load_profile(write_profile(text), registry)
    assert pairing_problems(profile, registry) == []
