"""The exec plug-in's drill: the profile's own ``drill`` command, run on a real restored
copy with ``FREEZEFRAME_RESTORED_ROOT``, bounded, its output's tail in the record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from freezeframe import ConfigError, Table
from freezeframe.engine import Engine
from freezeframe.plugin import DrillCommand, DrillContext
from freezeframe.profile import load_profile
from freezeframe.registry import Registry
from freezeframe_exec import ExecPlugin
from freezeframe_testing import drilled as kit
from freezeframe_testing.plugin import clone_profile, wait_until
from freezeframe_testing.procs import in_session


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    """The application's data: ``tmp_path/data/ledger.txt``."""
    (tmp_path / "data").mkdir()
    return tmp_path / "data" / "ledger.txt"


def restored_ledger(
    tmp_path: Path, registry: Registry, **fields: object
) -> tuple[ExecPlugin, DrillContext]:
    """Back up an exec application ``ledger`` (its data in ``tmp_path/data``, plus the
    profile's ``fields``), restore the run: the profile's plug-in and the drill's context."""
    application = "\n".join(
        [
            'plugin = "exec"',
            'name = "ledger"',
            'quiesce = ["true"]',
            'unquiesce = ["true"]',
            'consistent_on = ["atomic", "per-file"]',  # nothing writes during the test
            f"data_paths = {json.dumps([str(tmp_path / 'data')])}",
            *(f"{key} = {json.dumps(value)}" for key, value in fields.items()),
        ]
    )
    profile = clone_profile(tmp_path, application, name="e")
    engine = Engine(load_profile(profile, registry), registry)
    plugin = engine.profile.applications[0].component
    assert isinstance(plugin, ExecPlugin)
    return plugin, kit.drill_context(engine, kit.backed_up(engine), "ledger", tmp_path / "drill")


def test_a_drill_command_that_exits_0_passes_with_what_it_printed(
    tmp_path: Path, registry: Registry, ledger: Path
) -> None:
    p, ctx = restored_ledger(tmp_path, registry, drill=kit.ledger_drill(tmp_path, ledger))
    # a relative program is the profile folder's; the default bound is five minutes
    assert p.drill_command == DrillCommand((str(tmp_path / "drill.sh"), str(ledger)), 300.0)
    ledger.write_text("balance 0\n")  # the original moves on: the drill reads the copy
    assert kit.drill_the_ledger(p, ctx) == (
        "passed",
        f"drill.sh exited 0: in {ctx.work} | balance 42",
    )


def test_a_drill_command_that_exits_3_fails_with_the_tail_of_its_output(
    tmp_path: Path, registry: Registry, ledger: Path
) -> None:
    p, ctx = restored_ledger(tmp_path, registry, drill=kit.ledger_drill(tmp_path, ledger))
    expected = kit.unbalance(ctx, ledger)
    assert kit.drill_the_ledger(p, ctx) == ("failed", expected)


def test_a_drill_command_is_bounded_and_leaves_nothing_running(
    tmp_path: Path, registry: Registry, ledger: Path
) -> None:
    ledger.write_text("balance 42\n")
    hang = ["sh", "-c", "sleep 300 & echo waiting; sleep 300"]
    p, ctx = restored_ledger(tmp_path, registry, drill=hang, drill_timeout="500ms")
    assert kit.drill_the_ledger(p, ctx) == (
        "failed",
        "sh did not finish within 0.5s (killed): waiting",
    )
    (proc,) = ctx.spawned()
    assert proc.returncode is not None
    assert wait_until(lambda: in_session(proc.pid) == [], 10)  # SIGKILLed: gone at once


def test_what_a_passing_drill_command_started_is_killed_when_it_exits(
    tmp_path: Path, registry: Registry, ledger: Path
) -> None:
    ledger.write_text("balance 42\n")
    p, ctx = restored_ledger(tmp_path, registry, drill=["sh", "-c", "sleep 300 & exit 0"])
    assert kit.drill_the_ledger(p, ctx) == ("passed", "sh exited 0")
    (proc,) = ctx.spawned()
    assert wait_until(lambda: in_session(proc.pid) == [], 10)  # SIGKILLed: gone at once


def test_a_drill_command_that_cannot_run_fails(
    tmp_path: Path, registry: Registry, ledger: Path
) -> None:
    ledger.write_text("balance 42\n")
    p, ctx = restored_ledger(tmp_path, registry, drill=["./no-such-check", "x"])
    assert kit.drill_the_ledger(p, ctx) == (
        "failed",
        "no-such-check: cannot run it: No such file or directory",
    )


def test_without_a_drill_command_the_drill_records_nothing(
    tmp_path: Path, registry: Registry, ledger: Path
) -> None:
    ledger.write_text("balance 42\n")
    p, ctx = restored_ledger(tmp_path, registry)
    assert p.drill_command is None
    with p.drill(ctx) as running:
        assert running is None
    assert kit.results(ctx) == {}


@pytest.mark.parametrize(("fields", "field", "message"), kit.BAD_DRILL_FIELDS)
def test_bad_drill_fields_are_one_line_naming_the_field(
    tmp_path: Path, fields: dict[str, object], field: str, message: str
) -> None:
    table = {"quiesce": ["true"], "unquiesce": ["true"], **fields}
    with pytest.raises(ConfigError) as e:
        ExecPlugin("ledger", Table(table, base_dir=tmp_path))
    assert e.value.field == field
    assert message in str(e.value) and "\n" not in str(e.value)
