"""The exec plug-in running real commands: fields, preflight, the order of the steps, failures.

The commands are small shell scripts that append what they were asked to a
log, so a test sees exactly which ran, in which order, and when.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from freezeframe import ConfigError, Deadline, FreezeframeError, QuiesceError, RunStatus, Table
from freezeframe.engine import Engine
from freezeframe.profile import load_profile
from freezeframe.registry import Registry
from freezeframe_exec import ExecPlugin


def logging_command(log: Path, step: str, then: str = "") -> list[str]:
    """``sh -c``: append ``step`` to ``log``, then run ``then``."""
    return ["sh", "-c", f'echo {step} >> "$0"; {then}', str(log)]


def steps(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def make(tmp_path: Path, **fields: object) -> ExecPlugin:
    return ExecPlugin("app", Table(fields, base_dir=tmp_path))


# -- fields ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"unquiesce": ["true"]}, "quiesce", "missing (required)"),
        ({"quiesce": ["true"]}, "unquiesce", "missing (required)"),
        (
            {"quiesce": "redis-cli CLIENT PAUSE 'a b'", "unquiesce": ["true"]},
            "quiesce",
            'expected a list of strings (argv, no shell), e.g. ["redis-cli", "CLIENT", '
            '"PAUSE", "a b"]',
        ),
        ({"quiesce": [], "unquiesce": ["true"]}, "quiesce", "non-empty list"),
        ({"quiesce": ["true", 3], "unquiesce": ["true"]}, "quiesce", "non-empty list"),
        ({"quiesce": [" "], "unquiesce": ["true"]}, "quiesce", "must not be empty"),
        (
            {"quiesce": ["true"], "unquiesce": ["true"], "consistent_on": ["instant"]},
            "consistent_on",
            "expected 'atomic', 'per-file', got ['instant']",
        ),
        ({"quiesce": ["true"], "unquiesce": ["true"], "timeout": "soon"}, "timeout", ""),
    ],
)
def test_field_errors_name_the_field(
    tmp_path: Path, fields: dict[str, object], field: str, message: str
) -> None:
    with pytest.raises(ConfigError) as e:
        make(tmp_path, **fields)
    assert e.value.field == field
    assert message in str(e.value)


def test_defaults_and_a_program_relative_to_the_profile(tmp_path: Path) -> None:
    p = make(tmp_path, quiesce=["./freeze.sh", "--now"], unquiesce=["thaw"])
    assert p.quiesce_argv == [str(tmp_path / "freeze.sh"), "--now"]
    assert p.unquiesce_argv == ["thaw"]  # on PATH
    assert {str(k) for k in p.consistent_on} == {"atomic"}
    assert p.timeout == 30.0
    assert p.data_paths() == ()
    assert p.watchdog_thaw_command() == ["thaw"]


# -- check -----------------------------------------------------------------------------------


def test_check_names_a_program_that_cannot_run(tmp_path: Path) -> None:
    with pytest.raises(FreezeframeError, match=r"^unquiesce command: no-such-thaw: not found on"):
        make(tmp_path, quiesce=["true"], unquiesce=["no-such-thaw"]).check()
    script = tmp_path / "freeze.sh"
    script.write_text("#!/bin/sh\n")  # not executable
    with pytest.raises(FreezeframeError, match=rf"^quiesce command: {script}: not an executable"):
        make(tmp_path, quiesce=["./freeze.sh"], unquiesce=["true"]).check()


def test_check_runs_the_check_command_and_reports_its_last_words(tmp_path: Path) -> None:
    p = make(
        tmp_path,
        quiesce=["true"],
        unquiesce=["true"],
        check=["sh", "-c", "echo connecting >&2; echo 'server is down' >&2; exit 3"],
    )
    with pytest.raises(FreezeframeError) as e:
        p.check()
    assert str(e.value) == "check command: sh failed (exit 3): server is down"


def test_check_wants_the_data_paths_to_exist(tmp_path: Path) -> None:
    p = make(tmp_path, quiesce=["true"], unquiesce=["true"], data_paths=["data"])
    with pytest.raises(FreezeframeError, match=rf"data path {tmp_path}/data does not exist"):
        p.check()
    (tmp_path / "data").mkdir()
    p.check()
    assert p.data_paths() == (tmp_path / "data",)


# -- quiesce and unquiesce -------------------------------------------------------------------


def test_a_quiesce_that_outlives_the_deadline_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    p = make(
        tmp_path, quiesce=["sh", "-c", f'echo $$ > "{pid_file}"; exec sleep 60'], unquiesce=["true"]
    )
    started = time.monotonic()
    with pytest.raises(
        QuiesceError, match=r"^quiesce command: sh was still running at the deadline"
    ):
        p.quiesce(Deadline.after(0.5))
    assert time.monotonic() - started < 5
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


def test_unquiesce_runs_after_a_failed_quiesce_but_not_without_one(tmp_path: Path) -> None:
    log = tmp_path / "log"
    fields = {
        "quiesce": logging_command(log, "quiesce", "exit 1"),
        "unquiesce": logging_command(log, "unquiesce"),
    }
    p = make(tmp_path, **fields)
    p.prepare(frozenset())
    p.unquiesce(())  # this run prepared, never began to quiesce: nothing to undo
    assert steps(log) == []
    with pytest.raises(QuiesceError):
        p.quiesce(Deadline.after(5))
    p.unquiesce(())
    assert steps(log) == ["quiesce", "unquiesce"]
    make(tmp_path, **fields).unquiesce(())  # a fresh plug-in (after a crash) always thaws
    assert steps(log) == ["quiesce", "unquiesce", "unquiesce"]


def test_a_failing_unquiesce_is_a_quiesce_error(tmp_path: Path) -> None:
    p = make(tmp_path, quiesce=["true"], unquiesce=["sh", "-c", "echo still frozen >&2; exit 4"])
    p.quiesce(Deadline.after(5))
    with pytest.raises(
        QuiesceError, match=r"^unquiesce command: sh failed \(exit 4\): still frozen"
    ):
        p.unquiesce(())


@pytest.mark.parametrize(
    ("printed", "described"),
    [
        ('{"position": 42, "role": "primary"}', {"position": 42, "role": "primary"}),
        ("release 7.1\n", "release 7.1"),
        ("[1, 2]", "[1, 2]"),
    ],
)
def test_describe_keeps_a_json_object_or_the_text(
    tmp_path: Path, printed: str, described: object
) -> None:
    p = make(tmp_path, quiesce=["true"], unquiesce=["true"], describe=["printf", "%s", printed])
    assert p.describe() == {"quiesce": "true", "unquiesce": "true", "described": described}


# -- in a run --------------------------------------------------------------------------------

PROFILE = """
    [profile]
    name = "exec"
    freeze_timeout = "{timeout}"

    [[application]]
    plugin = "exec"
    name = "app"
    check = {check}
    prepare = {prepare}
    quiesce = {quiesce}
    unquiesce = {unquiesce}
    data_paths = ["{data}"]
    consistent_on = ["per-file"]

    [[backup]]
    backend = "clone"
    name = "snap"
    dir = "{snaps}"
"""


def profile_text(tmp_path: Path, log: Path, *, quiesce_then: str = "", timeout: str = "5s") -> str:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "state").write_text("ready")
    commands = {
        step: logging_command(log, step, quiesce_then if step == "quiesce" else "")
        for step in ("check", "prepare", "quiesce", "unquiesce")
    }
    as_toml = {step: json.dumps(argv) for step, argv in commands.items()}  # JSON is TOML here
    return PROFILE.format(timeout=timeout, data=data, snaps=tmp_path / "snaps", **as_toml)


def test_a_run_calls_each_step_once_in_order(
    tmp_path: Path, write_profile: Callable[[str], Path], registry: Registry
) -> None:
    log = tmp_path / "log"
    engine = Engine(load_profile(write_profile(profile_text(tmp_path, log)), registry), registry)

    run = engine.backup().record

    assert run.status == RunStatus.SUCCEEDED, run.error
    assert steps(log) == ["check", "prepare", "quiesce", "unquiesce"]
    (app,) = run.applications
    assert app.facts == {
        "check": "sh",
        "prepare": "sh",
        "quiesce": "sh",
        "unquiesce": "sh",
    }
    assert app.frozen_ms is not None


@pytest.mark.parametrize("how", ["fails", "hangs"])
def test_a_quiesce_that_fails_or_hangs_fails_the_run_and_is_undone(
    tmp_path: Path, write_profile: Callable[[str], Path], registry: Registry, how: str
) -> None:
    log = tmp_path / "log"
    then = "echo 'app is busy' >&2; exit 3" if how == "fails" else "exec sleep 60"
    text = profile_text(tmp_path, log, quiesce_then=then, timeout="1s")
    engine = Engine(load_profile(write_profile(text), registry), registry)

    started = time.monotonic()
    run = engine.backup().record

    assert run.status == RunStatus.FAILED
    error = run.error or ""
    assert error.startswith("application 'app': ")
    if how == "fails":
        assert "quiesce command: sh failed (exit 3): app is busy" in error
    else:  # the engine's deadline or the command's kill, whichever is said first
        assert "did not quiesce within freeze_timeout (1s)" in error or (
            "quiesce command: sh was still running at the deadline (killed)" in error
        )
    done = steps(log)
    assert done[:4] == ["check", "prepare", "quiesce", "unquiesce"]
    if how == "hangs":  # the watchdog fired at the deadline too, and thawed again to settle
        assert set(done[4:]) <= {"unquiesce"}
    else:
        assert done == ["check", "prepare", "quiesce", "unquiesce"]
    assert time.monotonic() - started < 10
    assert not (tmp_path / "snaps").exists() or not any((tmp_path / "snaps").iterdir())
