"""fsfreeze on real loop-mounted filesystems, with the core's watchdog standing guard."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

import freezeframe_testing.components as comps
from freezeframe import ConfigError, Deadline, QuiesceError, Table
from freezeframe.engine import Engine
from freezeframe.profile import load_profile
from freezeframe.registry import Registry
from freezeframe_fsfreeze import FsfreezePlugin
from freezeframe_testing.plugin import (
    LoopFs,
    finishes_within,
    pairs_restored,
    require_tool,
    writer_process,
)
from freezeframe_testing.procs import descendants


@pytest.fixture
def xfs(loop_fs) -> LoopFs:
    return loop_fs("xfs", 300)


def plugin(mount: Path) -> FsfreezePlugin:
    return FsfreezePlugin("fs", Table({"mountpoint": str(mount)}, base_dir=mount))


def test_writes_block_while_frozen_and_complete_after_the_thaw(xfs: LoopFs) -> None:
    p = plugin(xfs.mountpoint)
    p.check()
    p.quiesce(Deadline.after(10))
    writer = writer_process(xfs.mountpoint / "late.txt")
    try:
        assert not finishes_within(writer, 0.5), "a write went through a frozen filesystem"
    finally:
        p.unquiesce(())
    assert finishes_within(writer, 5)
    assert (xfs.mountpoint / "late.txt").read_text() == "written"
    p.unquiesce(())  # idempotent: thawing a thawed filesystem is not an error


def test_a_freeze_held_by_another_process_is_left_to_it(xfs: LoopFs) -> None:
    """Frozen by someone else: the quiesce fails at once, and unquiesce does not thaw it."""
    fsfreeze = require_tool("fsfreeze")
    subprocess.run([fsfreeze, "--freeze", str(xfs.mountpoint)], check=True)
    try:
        p = plugin(xfs.mountpoint)
        p.check()
        start = time.monotonic()
        with pytest.raises(QuiesceError, match="already frozen by another process"):
            p.quiesce(Deadline.after(10))
        assert time.monotonic() - start < 5
        p.unquiesce(())
        writer = writer_process(xfs.mountpoint / "late.txt")
        assert not finishes_within(writer, 0.5), "unquiesce thawed a freeze it did not make"
    finally:
        thawed = subprocess.run([fsfreeze, "--unfreeze", str(xfs.mountpoint)], check=False)
    assert thawed.returncode == 0, "the other process's freeze was gone"
    assert finishes_within(writer, 5)
    p.quiesce(Deadline.after(10))  # and the next quiesce freezes (and thaws) as usual
    p.unquiesce(())
    assert finishes_within(writer_process(xfs.mountpoint / "later.txt"), 5)


def test_field_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a mount point"):
        plugin(tmp_path)
    with pytest.raises(ConfigError, match="refusing to freeze /"):
        plugin(Path("/"))
    with pytest.raises(ConfigError, match="does not exist"):
        plugin(tmp_path / "nope")


PROFILE = """
    [profile]
    name = "fs"
    freeze_timeout = "{timeout}"
    {state}

    [[application]]
    plugin = "fsfreeze"
    name = "data"
    mountpoint = "{mount}"

    [[backup]]
    backend = "{backend}"
    name = "snap"
    dir = "{snaps}"
    {extra}
"""


def test_refuses_to_freeze_what_it_must_write_to(xfs: LoopFs, write_profile, registry, tmp_path):
    # the clone's snapshot folder on the frozen filesystem: the clone would hang
    text = PROFILE.format(
        timeout="5s",
        state="",
        mount=xfs.mountpoint,
        backend="clone",
        snaps=xfs.mountpoint / "snaps",
        extra="",
    )
    problems = Engine(load_profile(write_profile(text), registry), registry).check()
    assert any("freezes" in p and "stage 'snap'" in p for p in problems), problems
    # the state dir (catalog, lock) on the frozen filesystem
    text = PROFILE.format(
        timeout="5s",
        state=f'state_dir = "{xfs.mountpoint / "state"}"',
        mount=xfs.mountpoint,
        backend="clone",
        snaps=tmp_path / "snaps",
        extra="",
    )
    problems = Engine(load_profile(write_profile(text), registry), registry).check()
    assert any("the state dir" in p for p in problems), problems


@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
def test_the_watchdog_thaws_when_freezeframe_dies_or_hangs(
    xfs: LoopFs, write_profile, tmp_path: Path, how: str
) -> None:
    """kill -9: thawed at once (the watchdog sees its pipe close). A hung process
    (SIGSTOP): thawed when the deadline passes. Either way within deadline + 2 s."""
    timeout = 3.0
    marker = tmp_path / "in-stage"
    text = PROFILE.format(
        timeout=f"{timeout}s",
        state="",
        mount=xfs.mountpoint,
        backend="slow",
        snaps=tmp_path / "snaps",
        extra=f'seconds = "60s"\nmarker = "{marker}"',
    )
    proc = comps.start_freezeframe("backup", write_profile(text), "-q")
    writer = None
    try:
        comps.wait_for(marker)
        frozen_at = time.monotonic()
        writer = writer_process(xfs.mountpoint / "during.txt")
        assert not finishes_within(writer, 0.3)  # frozen right now
        os.kill(proc.pid, getattr(signal, how))
        assert finishes_within(writer, timeout + 2 - (time.monotonic() - frozen_at)), (
            "the filesystem stayed frozen past the deadline + 2 s"
        )
    finally:
        proc.kill()
        os.kill(proc.pid, signal.SIGCONT) if proc.poll() is None else None
        proc.wait()
        if writer is not None:
            writer.kill()
            writer.wait()
    assert (xfs.mountpoint / "during.txt").read_text() == "written"


def test_a_frozen_filesystem_copied_file_by_file_is_one_instant(
    xfs: LoopFs, write_profile, registry: Registry, tmp_path: Path
) -> None:
    text = PROFILE.format(
        timeout="10s",
        state="",
        mount=xfs.mountpoint,
        backend="clone",
        snaps=tmp_path / "snaps",
        extra="",
    )
    text += f"""
    [[backup]]
    backend = "archive"
    name = "archive"
    dir = "{tmp_path / "archives"}"
    """
    engine = Engine(load_profile(write_profile(text), registry), registry)

    restored = pairs_restored(engine, xfs.mountpoint, tmp_path)

    assert {gap for _, gap in restored} <= {0, 1}, restored
    assert all(run.applications[0].facts["fstype"] == "xfs" for run, _ in restored)


def test_if_the_watchdog_dies_too_the_next_command_thaws(
    xfs: LoopFs, write_profile, tmp_path: Path
) -> None:
    marker = tmp_path / "in-stage"
    text = PROFILE.format(
        timeout="60s",
        state="",
        mount=xfs.mountpoint,
        backend="slow",
        snaps=tmp_path / "snaps",
        extra=f'seconds = "60s"\nmarker = "{marker}"',
    )
    profile = write_profile(text)
    proc = comps.start_freezeframe("backup", profile, "-q")
    writer = None
    try:
        comps.wait_for(marker)
        dogs = [p.pid for p in descendants(proc.pid) if "freezeframe.watchdog" in p.argv]
        assert len(dogs) == 1
        os.kill(dogs[0], signal.SIGKILL)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        writer = writer_process(xfs.mountpoint / "after.txt")
        assert not finishes_within(writer, 0.5)  # nobody thawed it: still frozen
        listed = comps.start_freezeframe("list", profile, "--json")
        out, err = listed.communicate(timeout=60)
        assert listed.returncode == 0, err
        assert finishes_within(writer, 5), "the next command did not thaw the filesystem"
        assert "died" in (json.loads(out)[0]["error"] or "")
    finally:
        proc.kill()
        proc.wait()
        if writer is not None:
            writer.kill()
            writer.wait()
