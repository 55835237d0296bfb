"""The fsfreeze plug-in's drill: the profile's own ``drill`` command, run on the restored
copy of a real frozen-and-copied filesystem."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from freezeframe import ConfigError, Table
from freezeframe.engine import Engine
from freezeframe.plugin import DrillContext
from freezeframe.profile import load_profile
from freezeframe.registry import Registry
from freezeframe_fsfreeze import FsfreezePlugin
from freezeframe_testing import drilled as kit
from freezeframe_testing.plugin import LoopFs, clone_profile


@pytest.fixture(scope="module")
def xfs(loop_fs_module: Callable[..., LoopFs]) -> LoopFs:
    return loop_fs_module("xfs", 300)


def test_a_drill_command_that_exits_0_passes_and_one_that_exits_3_fails_with_its_output(
    xfs: LoopFs, registry: Registry, tmp_path: Path
) -> None:
    ledger = xfs.mountpoint / "ledger.txt"
    drill = kit.ledger_drill(tmp_path, ledger)
    application = f"""
plugin = "fsfreeze"
name = "data"
mountpoint = {json.dumps(str(xfs.mountpoint))}
drill = {json.dumps(drill)}
drill_timeout = "1m"
"""
    engine = Engine(
        load_profile(clone_profile(tmp_path, application, name="f"), registry), registry
    )
    plugin = engine.profile.applications[0].component
    assert isinstance(plugin, FsfreezePlugin) and plugin.drill_command is not None
    assert plugin.drill_command.timeout == 60
    run = kit.backed_up(engine)  # a real freeze of the filesystem, a copy of it
    ledger.write_text("balance 0\n")  # the original moves on: the drill reads the copy

    good = kit.drill_context(engine, run, "data", tmp_path / "good")
    assert kit.drill_the_ledger(plugin, good) == (
        "passed",
        f"drill.sh exited 0: in {good.work} | balance 42",
    )
    damaged = kit.drill_context(engine, run, "data", tmp_path / "damaged")
    expected = kit.unbalance(damaged, ledger)
    assert kit.drill_the_ledger(plugin, damaged) == ("failed", expected)


def test_without_a_drill_command_the_drill_records_nothing(xfs: LoopFs, tmp_path: Path) -> None:
    plugin = FsfreezePlugin("data", Table({"mountpoint": str(xfs.mountpoint)}, base_dir=tmp_path))
    ctx = DrillContext("data", tmp_path, tmp_path)
    with plugin.drill(ctx) as running:
        assert running is None
    assert kit.results(ctx) == {}


@pytest.mark.parametrize(("fields", "field", "message"), kit.BAD_DRILL_FIELDS)
def test_bad_drill_fields_are_one_line_naming_the_field(
    xfs: LoopFs, tmp_path: Path, fields: dict[str, object], field: str, message: str
) -> None:
    table = {"mountpoint": str(xfs.mountpoint), **fields}
    with pytest.raises(ConfigError) as e:
        FsfreezePlugin("data", Table(table, base_dir=tmp_path))
    assert e.value.field == field
    assert message in str(e.value) and "\n" not in str(e.value)
