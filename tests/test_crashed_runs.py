"""Runs that die or lose their lock file: the next command is neither blocked nor misled.

A removed lock file must not let a second run treat the live first one as
crashed; a run killed with SIGKILL while its watchdog guards a freeze must
not keep the profile locked (the watchdog once inherited the lock).
Everything runs as real ``freezeframe`` processes.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import freezeframe_testing.components as comps
from freezeframe.catalog import Catalog


def _state(tmp_path: Path, name: str) -> Path:
    return tmp_path / "state" / name


def _catalog_run(tmp_path: Path, name: str, run_id: str) -> tuple[dict, list[dict]]:
    with Catalog(_state(tmp_path, name) / "catalog.sqlite") as cat:
        rec = cat.get(run_id)
        assert rec is not None
        return rec.to_json(), cat.errors(run_id)


def test_a_removed_lock_file_does_not_let_a_second_run_take_over_a_live_one(
    tmp_path, write_profile
):
    marker = tmp_path / "in-stage"
    profile = write_profile(
        f"""
        [profile]
        name = "unlocked"
        freeze_timeout = "60s"

        [[application]]
        plugin = "recorder"
        name = "app"

        [[backup]]
        backend = "slow"
        name = "snap"
        dir = "{tmp_path / "snaps"}"
        seconds = "4s"
        marker = "{marker}"
        """
    )
    first = comps.start_freezeframe("backup", profile, "--json")
    try:
        comps.wait_for(marker, first)
        run_id = marker.read_text()
        (_state(tmp_path, "unlocked") / "lock").unlink()
        second = comps.start_freezeframe("backup", profile, "--json")
        _out2, err2 = second.communicate(timeout=60)
        out1, err1 = first.communicate(timeout=60)
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 3, err2
    assert "busy" in err2 and f"pid {first.pid}" in err2, err2
    assert len(err2.strip().splitlines()) == 1, err2
    assert first.returncode == 0, err1
    assert json.loads(out1)["run_id"] == run_id
    assert (tmp_path / "snaps" / run_id).is_dir()  # its output survived
    record, _ = _catalog_run(tmp_path, "unlocked", run_id)
    assert record["status"] == "succeeded"


#: freeze_timeout of the run that is killed: its watchdog thaws until this + SETTLE.
DEADLINE = 5.0


def test_a_run_killed_under_the_watchdog_leaves_the_profile_usable_at_once(tmp_path, write_profile):
    marker = tmp_path / "in-stage"
    frozen = tmp_path / "frozen"
    data = tmp_path / "data"
    data.mkdir()
    text = f"""
        [profile]
        name = "watched"
        freeze_timeout = "{DEADLINE}s"

        [[application]]
        plugin = "exec"
        name = "app"
        quiesce = ["touch", "{frozen}"]
        unquiesce = ["rm", "-f", "{frozen}"]
        data_paths = ["{data}"]
        consistent_on = ["per-file"]

        [[backup]]
        backend = "slow"
        name = "snap"
        dir = "{tmp_path / "snaps"}"
        marker = "{marker}"
        """
    killed = comps.start_freezeframe(
        "backup", write_profile(text + 'seconds = "60s"\n', "slow.toml"), "-q"
    )
    try:
        comps.wait_for(marker, killed)
        dead_run = marker.read_text()
        assert frozen.exists()
        killed.send_signal(signal.SIGKILL)
        killed.wait(10)
        marker.unlink()
        nxt = comps.start_freezeframe(
            "backup", write_profile(text + 'seconds = "10ms"\n', "fast.toml"), "--json"
        )
        out, err = nxt.communicate(timeout=120)
        # what the dead run's watchdog said, over its whole life (the pipe ends when it exits)
        assert killed.stderr is not None
        said = [line for line in killed.stderr.read().splitlines() if "watchdog" in line]
    finally:
        killed.kill()
        killed.wait()
    assert nxt.returncode == 0, err
    assert "busy" not in err
    assert json.loads(out)["status"] == "succeeded"
    assert not frozen.exists()
    # thawed once when the process died; `rm -f` succeeding every poll is no news
    assert 1 <= len(said) <= 2, said
    listed = comps.start_freezeframe("list", write_profile(text, "list.toml"), "--json")
    out, err = listed.communicate(timeout=60)
    assert listed.returncode == 0, err
    runs = {r["run_id"]: r for r in json.loads(out)}
    assert runs[dead_run]["status"] == "failed"
    record, errors = _catalog_run(tmp_path, "watched", dead_run)
    assert "died" in (record["error"] or "")
    # the next run began only once the watchdog had done thawing
    assert any("watchdog" in e["message"] for e in errors), errors
    with Catalog(_state(tmp_path, "watched") / "catalog.sqlite") as cat:
        watchdog, _ = cat.owners(dead_run)["watchdog"]
    assert not watchdog.alive()
