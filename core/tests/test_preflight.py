"""Tests of preflight.py's rules that read the loaded profile only: which stages run in
the freeze window, the quiesce order, and the pairings that ``check`` refuses — with the
real sqlite, exec, clone and archive components."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from freezeframe.plugin import SnapshotKind, hookimpl
from freezeframe.preflight import captures_only, pairing_problems, windowed_stages
from freezeframe.profile import load_profile
from freezeframe.quiesce_order import quiesce_after, quiesce_levels
from freezeframe.registry import Registry
from freezeframe_clone import CloneBackend
from freezeframe_sqlite import SqlitePlugin
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
    text = f'[profile]\nname = "p"\nthaw = "{thaw}"\n' + sqlite_app(db) + 'capture = "snapshot"\n'
    text += SNAP.format(d=tmp_path) + COPY.format(d=tmp_path)
    profile = load_profile(write_profile(text), registry)
    assert [s.name for s in windowed_stages(profile)] == windowed


def test_a_window_of_captures_only_holds_no_snapshot_stage(
    write_profile: WriteProfile, registry: Registry, db: Path, tmp_path: Path
) -> None:
    """Every application self-contained (SQLite's logical, the default for a WAL database
    on a stage that takes completions): the snapshot runs after the thaw, unless it takes
    paths of its own, which must be of the frozen instant."""
    text = '[profile]\nname = "p"\n' + sqlite_app(db) + SNAP.format(d=tmp_path)
    profile = load_profile(write_profile(text + COPY.format(d=tmp_path)), registry)
    assert profile.applications[0].capture == "logical"
    assert captures_only(profile) and windowed_stages(profile) == []
    own = text + f'paths = ["{tmp_path}/data"]\n'
    profile = load_profile(write_profile(own + COPY.format(d=tmp_path)), registry)
    assert not captures_only(profile)
    assert [s.name for s in windowed_stages(profile)] == ["snap"]


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


COMPLETING_CASES = [
    ("", "after-snapshot", None),
    ("", "after-backup", 'use thaw = "after-snapshot" or capture = "snapshot"'),
    ('on_quiesce_failure = "crash-consistent"\n', "after-snapshot", "nothing to complete"),
]


@pytest.mark.parametrize("case", COMPLETING_CASES)
def test_a_completing_capture_is_refused_where_copies_or_a_fallback_would_miss_it(
    write_profile: WriteProfile,
    registry: Registry,
    db: Path,
    tmp_path: Path,
    case: tuple[str, str, str | None],
) -> None:
    extra, thaw, refused = case
    app = sqlite_app(db) + 'capture = "logical"\n' + extra
    text = f'[profile]\nname = "p"\nthaw = "{thaw}"\n' + app
    profile = load_profile(write_profile(text + SNAP.format(d=tmp_path)), registry)
    assert profile.applications[0].capture == "logical"
    assert profile.applications[0].component.capture == "logical"
    problems = pairing_problems(profile, registry)
    if refused is None:
        assert problems == []
    else:
        (problem,) = problems
        assert problem.startswith("application 'orders' (sqlite) captures 'logical'")
        assert refused in problem


class LogicalFirst(SqlitePlugin):
    """SQLite with its logical mode listed first (the default where it is consistent)."""

    kind = "sqlite-logical-first"
    capture_modes = ("logical", "snapshot")


class CompletesPerFile(SqlitePlugin):
    """SQLite whose "snapshot" mode is consistent on atomic snapshots only, with a mode
    that completes any view (as PostgreSQL's "base-backup")."""

    kind = "sqlite-completes-per-file"
    consistent_on = frozenset({SnapshotKind.ATOMIC})
    logical_first_in_wal = False  # the modes as listed, whatever the database


class NonBlocking(SqlitePlugin):
    """A plug-in whose capture blocks no write (as PostgreSQL's)."""

    kind = "sqlite-nonblocking"
    blocks_writes = False


class NoCompletions(CloneBackend):
    """A snapshot backend whose views cannot be written after the thaw."""

    kind = "clone-no-completions"
    takes_completions = False


class ExtraComponents:
    @staticmethod
    @hookimpl
    def freezeframe_register_applications(register: Callable[[type[Any]], None]) -> None:
        register(LogicalFirst)
        register(CompletesPerFile)
        register(NonBlocking)

    @staticmethod
    @hookimpl
    def freezeframe_register_backends(register: Callable[[type[Any]], None]) -> None:
        register(NoCompletions)


DEFAULT_MODES = [
    # "logical" listed first: taken wherever the views take completions
    ("sqlite-logical-first", "clone", "logical"),
    ("sqlite-logical-first", "btrfs", "logical"),
    ("sqlite-logical-first", "clone-no-completions", "snapshot"),
    # "snapshot" listed first but consistent on atomic snapshots only (as PostgreSQL's):
    # passed over on a per-file one for the mode that completes; where neither fits,
    # check names the backend that does
    ("sqlite-completes-per-file", "clone", "logical"),
    ("sqlite-completes-per-file", "btrfs", "snapshot"),
    ("sqlite-completes-per-file", "clone-no-completions", "snapshot"),
]


@pytest.mark.parametrize(("plugin", "backend", "default"), DEFAULT_MODES)
def test_without_capture_the_first_mode_consistent_with_the_stages_is_taken(
    write_profile: WriteProfile,
    registry_with: Callable[..., Registry],
    db: Path,
    tmp_path: Path,
    plugin: str,
    backend: str,
    default: str,
) -> None:
    registry = registry_with(ExtraComponents())
    app = sqlite_app(db).replace('"sqlite"', f'"{plugin}"')
    snap = SNAP.format(d=tmp_path).replace('"clone"', f'"{backend}"')
    profile = load_profile(write_profile('[profile]\nname = "p"\n' + app + snap), registry)
    assert profile.applications[0].capture == default
    problems = pairing_problems(profile, registry)
    if plugin == "sqlite-logical-first" or backend != "clone-no-completions":
        assert problems == []
    else:
        (problem,) = problems
        assert "is not consistent on per-file snapshots" in problem
        assert "use a snapshot backend that is atomic (btrfs)" in problem
        assert "capture = 'logical'" not in problem  # this stage cannot take it either


def test_a_snapshot_mode_refused_on_a_stage_that_takes_completions_names_the_other_mode(
    write_profile: WriteProfile, registry_with: Callable[..., Registry], db: Path, tmp_path: Path
) -> None:
    registry = registry_with(ExtraComponents())
    app = sqlite_app(db).replace('"sqlite"', '"sqlite-completes-per-file"')
    app += 'capture = "snapshot"\n'
    profile = load_profile(
        write_profile('[profile]\nname = "p"\n' + app + SNAP.format(d=tmp_path)), registry
    )
    (problem,) = pairing_problems(profile, registry)
    assert "is not consistent on per-file snapshots such as stage 'snap' (clone)" in problem
    assert "use capture = 'logical' or a snapshot backend that is atomic" in problem


def test_a_completing_capture_on_a_stage_that_cannot_take_completions_is_refused(
    write_profile: WriteProfile, registry_with: Callable[..., Registry], db: Path, tmp_path: Path
) -> None:
    registry = registry_with(ExtraComponents())
    app = sqlite_app(db) + 'capture = "logical"\n'
    snap = SNAP.format(d=tmp_path).replace('"clone"', '"clone-no-completions"')
    profile = load_profile(write_profile('[profile]\nname = "p"\n' + app + snap), registry)
    (problem,) = pairing_problems(profile, registry)
    assert "stage 'snap' (clone-no-completions) cannot take completions" in problem
    assert "capture = 'snapshot'" in problem
    assert "a snapshot backend that takes completions (btrfs, clone)" in problem


def test_a_capture_that_blocks_no_write_quiesces_after_every_one_that_does(
    write_profile: WriteProfile, registry_with: Callable[..., Registry], db: Path, tmp_path: Path
) -> None:
    """PostgreSQL's exported snapshot fixes its instant when it is taken: after every
    blocking application holds its writers. The profile's own order is kept, and an
    implicit order that would close a cycle is left out."""
    registry = registry_with(ExtraComponents())
    free = sqlite_app(db).replace('"sqlite"', '"sqlite-nonblocking"')
    free = free.replace('name = "orders"', 'name = "free"')
    text = '[profile]\nname = "p"\n' + exec_app(tmp_path, "a") + free
    text += exec_app(tmp_path, "b", 'after = ["a"]') + exec_app(tmp_path, "c", 'after = ["free"]')
    profile = load_profile(write_profile(text + SNAP.format(d=tmp_path)), registry)
    after = quiesce_after(profile)
    assert after == {"a": (), "free": ("a", "b"), "b": ("a",), "c": ("free",)}
    assert quiesce_levels(after) == [["a"], ["b"], ["free"], ["c"]]
