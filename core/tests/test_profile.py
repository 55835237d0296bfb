"""Tests of profile.py: loading a profile with the real sqlite/clone/archive components.

Every bad input must give a ProfileError whose lines each name the file, the
table and the field, and every problem of a profile must be reported at once.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from freezeframe.components import Role
from freezeframe.errors import ProfileError
from freezeframe.profile import Profile, load_profile
from freezeframe.registry import Registry
from freezeframe.retention import KeepPolicy
from freezeframe_archive import ArchiveBackend
from freezeframe_clone import CloneBackend
from freezeframe_sqlite import SqlitePlugin
from freezeframe_testing.plugin import make_counter_db

WriteProfile = Callable[..., Path]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A real SQLite database for the sqlite plug-in's required, must-exist ``path``."""
    data = tmp_path / "data"
    data.mkdir()
    return make_counter_db(data / "orders.db")


def app(db: Path, name: str = "orders", extra: str = "") -> str:
    return f'[[application]]\nplugin = "sqlite"\nname = "{name}"\npath = "{db}"\n{extra}\n'


SNAP = '[[backup]]\nbackend = "clone"\nname = "snap"\ndir = "snaps"\n'
COPY = '[[backup]]\nbackend = "archive"\nname = "arch"\ndir = "archives"\n'
HEAD = '[profile]\nname = "nightly"\n'


def problems_of(path: Path, registry: Registry) -> list[str]:
    with pytest.raises(ProfileError) as info:
        load_profile(path, registry)
    problems = info.value.problems
    assert str(info.value) == "\n".join(problems)
    for line in problems:
        assert line.startswith(f"{path}: "), line
        assert "\n" not in line
    return problems


def one_problem(path: Path, registry: Registry) -> str:
    problems = problems_of(path, registry)
    assert len(problems) == 1, problems
    return problems[0]


# -- a valid profile --------------------------------------------------------------


def test_valid_profile_loads(
    write_profile: WriteProfile, registry: Registry, db: Path, tmp_path: Path
) -> None:
    path = write_profile(
        f"""
        [profile]
        name = "nightly"
        freeze_timeout = "2.5s"

        [[application]]
        plugin = "sqlite"
        name = "orders"
        path = "{db}"

        [[backup]]
        backend = "clone"
        name = "snap"
        dir = "{tmp_path / "snaps"}"

        [[backup]]
        backend = "archive"
        name = "arch"
        source = "snap"
        dir = "{tmp_path / "archives"}"
        keep = {{ last = 7, daily = 3 }}
        """
    )
    profile = load_profile(path, registry)
    assert isinstance(profile, Profile)
    assert profile.path == path
    assert profile.name == "nightly"
    assert profile.freeze_timeout == 2.5
    assert profile.thaw == "after-snapshot"
    assert profile.state_dir == tmp_path / "state"
    assert profile.home == tmp_path / "state" / "nightly"
    assert [a.name for a in profile.applications] == ["orders"]
    (orders,) = profile.applications
    assert orders.info.kind == "sqlite"
    assert orders.info.distribution == "freezeframe-sqlite"
    assert orders.after == ()
    assert orders.on_quiesce_failure == "fail"
    assert [(s.name, s.info.kind, s.role) for s in profile.stages] == [
        ("snap", "clone", Role.SNAPSHOT),
        ("arch", "archive", Role.COPY),
    ]
    assert profile.stage("arch").source == "snap"
    assert profile.stage("arch").keep == KeepPolicy(last=7, daily=3)
    assert profile.stage("snap").keep is None
    assert profile.released_after_run(profile.stage("snap"))


def test_copy_stage_reads_the_previous_snapshot_by_default(
    write_profile: WriteProfile, registry: Registry, db: Path
) -> None:
    path = write_profile(HEAD + app(db) + SNAP + COPY)
    assert load_profile(path, registry).stage("arch").source == "snap"


def test_thaw_after_backup_and_after_order(
    write_profile: WriteProfile, registry: Registry, db: Path, tmp_path: Path
) -> None:
    db2 = make_counter_db(tmp_path / "data" / "b.db")
    path = write_profile(
        '[profile]\nname = "n"\nthaw = "after-backup"\nfreeze_timeout = 3\n'
        + app(db, "a")
        + app(db2, "b", 'after = ["a"]\non_quiesce_failure = "crash-consistent"')
        + SNAP
    )
    profile = load_profile(path, registry)
    assert profile.thaw == "after-backup"
    assert profile.freeze_timeout == 3.0
    b = profile.applications[1]
    assert (b.name, b.after, b.on_quiesce_failure) == ("b", ("a",), "crash-consistent")


def test_state_dir_defaults_under_xdg_state_home(
    tmp_path: Path, registry: Registry, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Written by hand: the write_profile fixture would put a state_dir in.
    path = tmp_path / "profile.toml"
    path.write_text(HEAD + app(db) + SNAP)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    profile = load_profile(path, registry)
    assert profile.state_dir == tmp_path / "xdg" / "freezeframe"
    assert profile.home == tmp_path / "xdg" / "freezeframe" / "nightly"


def test_state_dir_without_xdg_is_under_home(
    tmp_path: Path, registry: Registry, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "profile.toml"
    path.write_text(HEAD + app(db) + SNAP)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    profile = load_profile(path, registry)
    assert profile.state_dir == tmp_path / "home" / ".local" / "state" / "freezeframe"


def test_relative_paths_resolve_from_the_profiles_folder_not_the_cwd(
    tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "conf"
    (conf / "data").mkdir(parents=True)
    make_counter_db(conf / "data" / "rel.db")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = conf / "profile.toml"
    path.write_text(
        '[profile]\nname = "rel"\nstate_dir = "state"\n'
        + app(Path("data/rel.db"))
        + SNAP
        + COPY.replace('dir = "archives"', 'dir = "../archives"')
    )
    monkeypatch.chdir(elsewhere)
    for given in (path, Path(os.path.relpath(path, elsewhere))):
        profile = load_profile(given, registry)
        assert profile.state_dir == conf / "state"
        orders, snap, arch = (
            profile.applications[0].component,
            profile.stage("snap").component,
            profile.stage("arch").component,
        )
        assert isinstance(orders, SqlitePlugin)
        assert isinstance(snap, CloneBackend)
        assert isinstance(arch, ArchiveBackend)
        assert orders.path == conf / "data" / "rel.db"
        assert snap.dir == conf / "snaps"
        assert arch.dir == tmp_path / "archives"


# -- the file itself --------------------------------------------------------------


def test_missing_file(tmp_path: Path, registry: Registry) -> None:
    path = tmp_path / "absent.toml"
    line = one_problem(path, registry)
    assert line == f"{path}: no such profile file"


def test_directory_instead_of_a_file(tmp_path: Path, registry: Registry) -> None:
    line = one_problem(tmp_path, registry)
    assert "is a directory" in line


def test_toml_syntax_error_gives_the_line(write_profile: WriteProfile, registry: Registry) -> None:
    path = write_profile('[profile]\nname = "x"\nfreeze_timeout 10\n')
    line = one_problem(path, registry)
    assert "invalid TOML" in line
    assert "line 4" in line  # the fixture adds a state_dir line after [profile]


def test_not_utf8(tmp_path: Path, registry: Registry) -> None:
    path = tmp_path / "p.toml"
    path.write_bytes(b'[profile]\nname = "\xff"\n')
    assert "not UTF-8" in one_problem(path, registry)


# -- [profile] --------------------------------------------------------------------


def test_missing_profile_table(write_profile: WriteProfile, registry: Registry, db: Path) -> None:
    path = write_profile(app(db) + SNAP)
    line = one_problem(path, registry)
    assert line.startswith(f"{path}: [profile]: missing")


@pytest.mark.parametrize(
    ("name_line", "message"),
    [
        ("", 'field "name": missing (required)'),
        ('name = "has space"', "'has space' is not a valid name"),
        ('name = "-dash-first"', "'-dash-first' is not a valid name"),
        ('name = "../escape"', "'../escape' is not a valid name"),
        (f'name = "{"x" * 65}"', "is not a valid name"),
        ("name = 3", 'field "name": expected a string, got an integer'),
        ('name = ""', 'field "name": must not be empty'),
    ],
)
def test_missing_or_invalid_profile_name(
    write_profile: WriteProfile, registry: Registry, db: Path, name_line: str, message: str
) -> None:
    path = write_profile(f"[profile]\n{name_line}\n" + app(db) + SNAP)
    line = one_problem(path, registry)
    assert line.startswith(f'{path}: [profile]: field "name": ')
    assert message in line


def test_unknown_field_in_profile_table(
    write_profile: WriteProfile, registry: Registry, db: Path
) -> None:
    path = write_profile(HEAD + "freeze_timout = 3\n" + app(db) + SNAP)
    assert one_problem(path, registry) == (
        f'{path}: [profile]: field "freeze_timout": unknown field; did you mean "freeze_timeout"?'
    )
    path = write_profile(HEAD + "colour = 3\n" + app(db) + SNAP)  # nothing near it: no guess
    assert one_problem(path, registry) == f'{path}: [profile]: field "colour": unknown field'


@pytest.mark.parametrize(
    ("table", "missing", "typed"),
    [
        (app(Path("/x.db")).replace("path =", "pth ="), "path", "pth"),
        (app(Path("/x.db")).replace("plugin =", "plugins ="), "plugin", "plugins"),
        (SNAP.replace("dir =", "directory ="), "dir", "directory"),
        (SNAP.replace('name = "snap"', 'nme = "snap"'), "name", "nme"),
    ],
)
def test_a_missing_field_names_the_unknown_one_beside_it(
    write_profile: WriteProfile, registry: Registry, db: Path, table: str, missing: str, typed: str
) -> None:
    """The component stops at its first bad field and never gets to call ``pth`` unknown:
    the missing field's line names it, once, with what it was meant to be."""
    path = write_profile(HEAD + table + (SNAP if "[[application]]" in table else app(db)))
    line = one_problem(path, registry)
    assert line.endswith(
        f'field "{missing}": missing (required); unknown field "{typed}": did you mean "{missing}"?'
    ), line


def test_an_unknown_field_of_a_component_is_guessed_among_the_fields_it_reads(
    write_profile: WriteProfile, registry: Registry, db: Path
) -> None:
    path = write_profile(HEAD + app(db) + SNAP + COPY + "levl = 3\n")
    assert one_problem(path, registry).endswith(
        'field "levl": unknown field for backend \'archive\'; did you mean "level"?'
    )


def test_unknown_top_level_key(write_profile: WriteProfile, registry: Registry, db: Path) -> None:
    path = write_profile("applications = 1\n" + HEAD + app(db) + SNAP)
    line = one_problem(path, registry)
    assert line.startswith(f"{path}: applications: unknown top-level key")


def test_application_not_an_array_of_tables(
    write_profile: WriteProfile, registry: Registry
) -> None:
    path = write_profile('application = "sqlite"\n' + HEAD + SNAP)
    line = one_problem(path, registry)
    assert line.startswith(f"{path}: application: must be an array of tables")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("freeze_timeout", '"10 parsecs"', "expected a duration"),
        ("freeze_timeout", '"10 parsecs"', "'10 parsecs'"),
        ("freeze_timeout", "0", "greater than zero"),
        ("freeze_timeout", "-1", "greater than zero"),
        ("freeze_timeout", "true", "expected a duration"),
        ("freeze_timeout", '"25h"', "a duration must be at most 1 day"),
        ("freeze_timeout", "0x" + "f" * 300, "a duration must be at most 1 day"),
        ("max_copy_in_window", '"64 mb"', "expected a size"),
        ("max_copy_in_window", '"lots"', "'lots'"),
        ("max_copy_in_window", "1.5", "expected a size"),
        ("max_copy_in_window", "true", "expected a size"),
        ("max_copy_in_window", "-1", "from 0 to"),
        ("max_copy_in_window", "0x" + "f" * 300, "a number of more than 19 digits"),
    ],
)
def test_bad_profile_number(
    write_profile: WriteProfile, registry: Registry, db: Path, field: str, value: str, message: str
) -> None:
    path = write_profile(HEAD + f"{field} = {value}\n" + app(db) + SNAP)
    line = one_problem(path, registry)
    assert line.startswith(f'{path}: [profile]: field "{field}": ')
    assert message in line


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_freeze_timeout_nan_or_inf_is_refused(
    write_profile: WriteProfile, registry: Registry, db: Path, value: str
) -> None:
    path = write_profile(HEAD + f"freeze_timeout = {value}\n" + app(db) + SNAP)
    assert 'field "freeze_timeout"' in one_problem(path, registry)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("1048576", 1 << 20),
        ('"64MiB"', 64 << 20),
        ('"1.5 GiB"', 3 << 29),
        ('"500MB"', 500 * 10**6),
        ('"0"', 0),
    ],
)
def test_max_copy_in_window(
    write_profile: WriteProfile, registry: Registry, db: Path, value: str, size: int
) -> None:
    path = write_profile(HEAD + f"max_copy_in_window = {value}\n" + app(db) + SNAP)
    assert load_profile(path, registry).max_copy_in_window == size


def test_max_copy_in_window_defaults_to_64_mib(
    write_profile: WriteProfile, registry: Registry, db: Path
) -> None:
    assert load_profile(write_profile(HEAD + app(db) + SNAP), registry).max_copy_in_window == (
        64 << 20
    )


def test_bad_thaw(write_profile: WriteProfile, registry: Registry, db: Path) -> None:
    path = write_profile(HEAD + 'thaw = "whenever"\n' + app(db) + SNAP)
    line = one_problem(path, registry)
    assert line.startswith(f'{path}: [profile]: field "thaw": ')
    assert "'after-snapshot', 'after-backup'" in line
    assert "'whenever'" in line


# -- [[application]] -----------------------------------------------------------------


def test_unknown_plugin_lists_the_installed_ones(
    write_profile: WriteProfile, registry: Registry
) -> None:
    path = write_profile(HEAD + '[[application]]\nplugin = "oracle"\nname = "erp"\n' + SNAP)
    line = one_problem(path, registry)
    assert line.startswith(f"{path}: [[application]] 'erp': field \"plugin\": ")
    assert "unknown application plug-in 'oracle'" in line
    assert "sqlite" in registry.applications
    assert f"(installed: {', '.join(sorted(registry.applications))})" in line


def test_missing_plugin_and_name(write_profile: WriteProfile, registry: Registry) -> None:
    path = write_profile(HEAD + '[[application]]\npath = "/x"\n' + SNAP)
    problems = problems_of(path, registry)
    assert problems == [
        f'{path}: [[application]] #1: field "name": missing (required)',
        f'{path}: [[application]] #1: field "plugin": missing (required)',
    ]


def test_invalid_application_name(
    write_profile: WriteProfile, registry: Registry, db: Path
) -> None:
    path = write_profile(HEAD + app(db, "bad name") + SNAP)
    line = one_problem(path, registry)
    assert line.startswith(f'{path}: [[application]] #1: field "name": ')
    assert "'bad name' is not a valid name" in line


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("0x" + "f" * 4000, "a number of more than 19 digits"),  # its repr raises ValueError
        ('"' + "x" * 5000 + '"', "'" + "x" * 76 + "..."),
    ],
)
def test_an_invalid_name_is_shown_cut_short(
    write_profile: WriteProfile, registry: Registry, db: Path, name: str, shown: str
) -> None:
    path = write_profile(HEAD + app(db).replace('name = "orders"', f"name = {name}") + SNAP)
    line = one_problem(path, registry)
    assert f'field "name": {shown} is not a valid name' in line and len(line) < 400


def test_missing_required_field(write_profile: WriteProfile, registry: Registry) -> None:
    path = write_profile(HEAD + '[[application]]\nplugin = "sqlite"\nname = "orders"\n' + SNAP)
    assert one_problem(path, registry) == (
        f"{path}: [[application]] 'orders': field \"path\": missing (required)"
    )


def test_mistyped_field(write_profile: WriteProfile, registry: Registry) -> None:
    path = write_profile(
        HEAD + '[[application]]\nplugin = "sqlite"\nname = "orders"\npath = 3\n' + SNAP
    )
    assert one_problem(path, registry) == (
        f"{path}: [[application]] 'orders': field \"path\": expected a path, got an integer"
    )


def test_sqlite_path_that_does_not_exist(
    write_profile: WriteProfile, registry: Registry, tmp_path: Path
) -> None:
    path = write_profile(HEAD + app(tmp_path / "missing.db") + SNAP)
    line = one_problem(path, registry)
    assert line.startswith(f"{path}: [[application]] 'orders': field \"path\": ")
    assert f"{tmp_path / 'missing.db'} does not exist" in line


def test_unknown_field_in_application_table(
    write_profile: WriteProfile, registry: Registry, db: Path
) -> None:
    path = write_profile(HEAD + app(db, extra="busy_timeout = 5") + SNAP)
    assert one_problem(path, registry) == (
        f"{path}: [[application]] 'orders': field \"busy_timeout\": "
        "unknown field for application 'sqlite'"
    )


def test_duplicate_application_names(
    write_profile: WriteProfile, registry: Registry, db: Path
) -> None:
    path = write_profile(HEAD + app(db, "orders") + app(db, "orders") + SNAP)
    line = one_problem(path, registry)
    assert line.startswith(f"{path}: [[application]] 'orders': field \"name\": ")
    assert "duplicate application name 'orders'" in line


def test_bad_on_quiesce_failure(write_profile: WriteProfile, registry: Registry, db: Path) -> None:
    path = write_profile(HEAD + app(db, extra='on_quiesce_failure = "shrug"') + SNAP)
    line = one_problem(path, registry)
    assert line.startswith(f"{path}: [[application]] 'orders': field \"on_quiesce_failure\": ")


def test_after_naming_an_unknown_application(
    write_profile: WriteProfile, registry: Registry, db: Path
) -> None:
    path = write_profile(HEAD + app(db, extra='after = ["ghost"]') + SNAP)
    assert one_problem(path, registry) == (
        f"{path}: [[application]] 'orders': field \"after\": no application named 'ghost'"
    )


def test_after_naming_itself(write_profile: WriteProfile, registry: Registry, db: Path) -> None:
    path = write_profile(HEAD + app(db, extra='after = ["orders"]') + SNAP)
    assert one_problem(path, registry) == (
        f"{path}: [[application]] 'orders': field \"after\": names itself"
    )


def test_after_cycle_is_named(write_profile: WriteProfile, registry: Registry, db: Path) -> None:
    path = write_profile(
        HEAD + app(db, "a", 'after = ["b"]') + app(db, "b", 'after = ["a"]') + SNAP
    )
    line = one_problem(path, registry)
    assert 'field "after": cycle a -> b -> a' in line


def test_longer_after_cycle_is_named(
    write_profile: WriteProfile, registry: Registry, db: Path
) -> None:
    path = write_profile(
        HEAD
        + app(db, "a", 'after = ["b"]')
        + app(db, "b", 'after = ["c"]')
        + app(db, "c", 'after = ["a"]')
        + app(db, "d", 'after = ["a"]')
        + SNAP
    )
    line = one_problem(path, registry)
    assert 'field "after": cycle a -> b -> c -> a' in line


# -- [[backup]] ------------------------------------------------------------------------


def test_no_backup_stage(write_profile: WriteProfile, registry: Registry, db: Path) -> None:
    path = write_profile(HEAD + app(db))
    assert one_problem(path, registry) == f"{path}: [[backup]]: the profile has no [[backup]] stage"


def test_unknown_backend_lists_the_installed_ones(
    write_profile: WriteProfile, registry: Registry, db: Path
) -> None:
    path = write_profile(HEAD + app(db) + '[[backup]]\nbackend = "tape"\nname = "t"\n')
    line = one_problem(path, registry)
    assert line.startswith(f"{path}: [[backup]] 't': field \"backend\": ")
    assert {"archive", "clone"} <= set(registry.backends)
    assert f"unknown backend 'tape' (installed: {', '.join(sorted(registry.backends))})" in line


def test_unknown_field_in_backup_table(
    write_profile: WriteProfile, registry: Registry, db: Path
) -> None:
    path = write_profile(HEAD + app(db) + SNAP + "compress = true\n")
    assert one_problem(path, registry) == (
        f"{path}: [[backup]] 'snap': field \"compress\": unknown field for backend 'clone'"
    )


def test_mistyped_backup_field(write_profile: WriteProfile, registry: Registry, db: Path) -> None:
    path = write_profile(HEAD + app(db) + SNAP + COPY + 'level = "max"\n')
    line = one_problem(path, registry)
    assert line.startswith(f"{path}: [[backup]] 'arch': field \"level\": expected an integer")


def test_duplicate_stage_names(write_profile: WriteProfile, registry: Registry, db: Path) -> None:
    path = write_profile(HEAD + app(db) + SNAP + SNAP.replace("snaps", "snaps2"))
    line = one_problem(path, registry)
    assert line.startswith(f"{path}: [[backup]] 'snap': field \"name\": ")
    assert "duplicate stage name 'snap'" in line


def test_source_naming_no_earlier_stage(
    write_profile: WriteProfile, registry: Registry, db: Path
) -> None:
    path = write_profile(HEAD + app(db) + SNAP + COPY + 'source = "snpa"\n')
    line = one_problem(path, registry)
    assert line.startswith(f"{path}: [[backup]] 'arch': field \"source\": ")
    assert "no earlier stage named 'snpa' (earlier snapshot stages: snap)" in line


def test_source_naming_a_later_stage(
    write_profile: WriteProfile, registry: Registry, db: Path
) -> None:
    path = write_profile(HEAD + app(db) + COPY + 'source = "snap"\n' + SNAP)
    line = one_problem(path, registry)
    assert line.startswith(f"{path}: [[backup]] 'arch': field \"source\": ")
    assert "no earlier stage named 'snap'" in line


def test_source_naming_a_copy_stage(
    write_profile: WriteProfile, registry: Registry, db: Path
) -> None:
    second = COPY.replace('"arch"', '"arch2"').replace("archives", "archives2")
    path = write_profile(HEAD + app(db) + SNAP + COPY + second + 'source = "arch"\n')
    line = one_problem(path, registry)
    assert line.startswith(f"{path}: [[backup]] 'arch2': field \"source\": ")
    assert "stage 'arch' is a copy and has no view" in line


def test_copy_stage_with_no_earlier_snapshot(
    write_profile: WriteProfile, registry: Registry, db: Path
) -> None:
    path = write_profile(HEAD + app(db) + COPY + SNAP)
    line = one_problem(path, registry)
    assert line.startswith(f"{path}: [[backup]] 'arch': ")
    assert "needs an earlier snapshot stage" in line


def test_source_on_a_snapshot_stage(
    write_profile: WriteProfile, registry: Registry, db: Path
) -> None:
    second = SNAP.replace('"snap"', '"snap2"').replace("snaps", "snaps2")
    path = write_profile(HEAD + app(db) + SNAP + second + 'source = "snap"\n')
    line = one_problem(path, registry)
    assert line.startswith(f"{path}: [[backup]] 'snap2': field \"source\": ")
    assert "a snapshot stage reads the applications" in line


@pytest.mark.parametrize(
    ("keep", "field", "message"),
    [
        ("{ forever = 3 }", "keep.forever", "unknown rule"),
        ("{ last = -1 }", "keep.last", "expected a whole number >= 0"),
        ("{ last = 0, daily = 0 }", "keep", "keeps nothing"),
        ("{ last = 1000001 }", "keep.last", "must be at most 1000000"),
        ("7", "keep", "expected a table, got an integer"),
    ],
)
def test_bad_keep(
    write_profile: WriteProfile,
    registry: Registry,
    db: Path,
    keep: str,
    field: str,
    message: str,
) -> None:
    path = write_profile(HEAD + app(db) + SNAP + COPY + f"keep = {keep}\n")
    line = one_problem(path, registry)
    assert line.startswith(f"{path}: [[backup]] 'arch': field \"{field}\": ")
    assert message in line


# -- every problem at once ---------------------------------------------------------------


def test_every_problem_is_reported_together(
    write_profile: WriteProfile, registry: Registry, db: Path, tmp_path: Path
) -> None:
    path = write_profile(
        textwrap.dedent(
            f"""
            stray = 1

            [profile]
            name = "nightly"
            freeze_timeout = "10 parsecs"
            thaw = "later"
            colour = "blue"

            [[application]]
            plugin = "oracle"
            name = "erp"

            [[application]]
            plugin = "sqlite"
            name = "orders"
            path = "{tmp_path / "missing.db"}"

            [[application]]
            plugin = "sqlite"
            name = "orders2"
            path = "{db}"
            after = ["ghost"]

            [[backup]]
            backend = "archive"
            name = "arch"
            dir = "archives"
            keep = {{ last = -1 }}

            [[backup]]
            backend = "clone"
            name = "snap"
            dir = "snaps"
            extra = 1

            [[backup]]
            backend = "clone"
            name = "snap"
            dir = "snaps2"
            """
        )
    )
    problems = problems_of(path, registry)
    expected_fragments = [
        "stray: unknown top-level key",
        '[profile]: field "freeze_timeout"',
        '[profile]: field "thaw"',
        '[profile]: field "colour": unknown field',
        "[[application]] 'erp': field \"plugin\": unknown application plug-in 'oracle'",
        "[[application]] 'orders': field \"path\": ",
        "[[application]] 'orders2': field \"after\": no application named 'ghost'",
        "[[backup]] 'arch': field \"keep.last\"",
        "[[backup]] 'arch': a copy stage needs an earlier snapshot stage",
        "[[backup]] 'snap': field \"extra\": unknown field for backend 'clone'",
        "[[backup]] 'snap': field \"name\": duplicate stage name 'snap'",
    ]
    for fragment in expected_fragments:
        assert sum(fragment in p for p in problems) == 1, (fragment, problems)
    assert len(problems) == len(expected_fragments), problems


@pytest.mark.parametrize(
    "body",
    [
        HEAD + '[[application]]\nplugin = "sqlite"\nname = "o"\npath = "{db}"\n'
        'after = "x"\non_quiesce_failure = "shrug"\n' + SNAP,
        HEAD
        + '[[application]]\nplugin = "sqlite"\nname = "o"\npath = "{db}"\n'
        + SNAP
        + COPY
        + "source = 3\nkeep = { last = -1 }\n",
    ],
    ids=["after+on_quiesce_failure", "source+keep"],
)
def test_two_bad_core_fields_of_one_table_are_both_reported(
    write_profile: WriteProfile, registry: Registry, db: Path, body: str
) -> None:
    path = write_profile(body.replace("{db}", str(db)))
    assert len(problems_of(path, registry)) == 2


# -- pinning a distribution ------------------------------------------------------------


def test_a_table_may_pin_the_distribution_that_provides_its_kind(
    write_profile: WriteProfile, registry: Registry, db: Path
) -> None:
    path = write_profile(
        HEAD
        + app(db, extra='distribution = "freezeframe-sqlite"')
        + SNAP
        + 'distribution = "freezeframe_Clone"\n'  # compared as pip compares names
    )
    profile = load_profile(path, registry)
    assert isinstance(profile.applications[0].component, SqlitePlugin)
    assert isinstance(profile.stages[0].component, CloneBackend)


def test_a_pin_that_does_not_provide_the_kind_is_one_line_per_table(
    write_profile: WriteProfile, registry: Registry, db: Path
) -> None:
    path = write_profile(
        HEAD
        + app(db, extra='distribution = "freezeframe-redis"')
        + SNAP
        + 'distribution = "freezeframe-archive"\n'
    )
    assert problems_of(path, registry) == [
        f"{path}: [[application]] 'orders': field \"distribution\": 'freezeframe-redis' does "
        "not provide application plug-in 'sqlite' (provided by freezeframe-sqlite)",
        f"{path}: [[backup]] 'snap': field \"distribution\": 'freezeframe-archive' does "
        "not provide backend 'clone' (provided by freezeframe-clone)",
    ]


def test_a_pin_must_be_a_string(write_profile: WriteProfile, registry: Registry, db: Path) -> None:
    path = write_profile(HEAD + app(db, extra="distribution = 1") + SNAP)
    assert one_problem(path, registry) == (
        f"{path}: [[application]] 'orders': field \"distribution\": expected a string, "
        "got an integer"
    )
