"""``freezeframe status``: where each profile stands, read from its catalog as real
``freezeframe`` processes left it: before any run, after one, while a backup holds the
lock (status neither waits for it nor disturbs it) and after a run killed with SIGKILL
(reported as awaiting its reconcile, which status itself never does). ``--max-age``
exits 0 or 1 as the catalog says, for a monitoring check."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import freezeframe_testing.components as comps
from freezeframe.catalog import Catalog
from freezeframe.lock import ProfileLock
from freezeframe.profiles import default_profiles, profile_dirs
from freezeframe.records import DrillRecord, DrillStatus

#: Every key of one profile in ``status --json``.
KEYS = {
    "profile",
    "path",
    "at",
    "last_run",
    "last_success",
    "last_success_age_seconds",
    "last_drill",
    "last_proven",
    "retained",
    "in_progress",
    "awaiting_reconcile",
    "stale",
}


class Held:
    """A profile whose exec application's quiesce waits for a file: a backup of it holds
    the profile's lock until :meth:`release`."""

    def __init__(self, folder: Path, name: str = "held") -> None:
        self.folder = folder
        self.quiescing = folder / "quiescing"
        self.go = folder / "go"
        data = folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        (data / "file").write_text("x")
        wait = (
            f"touch {shlex.quote(str(self.quiescing))}; i=0; "
            f"while [ ! -e {shlex.quote(str(self.go))} ] && [ $i -lt 1200 ]; "
            "do sleep 0.05; i=$((i+1)); done"
        )
        self.path = folder / f"{name}.toml"
        self.path.write_text(f"""
[profile]
name = "{name}"
freeze_timeout = "120s"
state_dir = {json.dumps(str(folder / "state"))}

[[application]]
plugin = "exec"
name = "app"
quiesce = ["sh", "-c", {json.dumps(wait)}]
unquiesce = ["true"]
data_paths = [{json.dumps(str(data))}]
consistent_on = ["per-file"]

[[backup]]
backend = "clone"
name = "snap"
dir = {json.dumps(str(folder / "snaps"))}
""")
        self.state = folder / "state" / name

    def release(self) -> None:
        self.go.touch()

    def hold(self) -> None:
        self.go.unlink(missing_ok=True)
        self.quiescing.unlink(missing_ok=True)

    def backup(self) -> subprocess.Popen[str]:
        """A backup that holds the lock until :meth:`release` (once its quiesce began)."""
        self.hold()
        proc = comps.start_freezeframe("backup", self.path, "--json")
        comps.wait_for(self.quiescing, proc)
        return proc


@pytest.fixture
def held(tmp_path: Path) -> Iterator[Held]:
    h = Held(tmp_path)
    yield h
    h.release()  # a quiesce left waiting ends by itself


def status(*args: str | Path) -> tuple[int, dict, str]:
    """``status ARGS --json``: exit code, the JSON, stderr."""
    r = comps.run_freezeframe("status", *args, "--json")
    return r.returncode, json.loads(r.stdout), r.stderr


def one(data: dict) -> dict:
    (entry,) = data["profiles"]
    assert set(entry) == KEYS, set(entry) ^ KEYS
    return entry


def test_max_age_exits_as_the_catalog_says(held: Held) -> None:
    code, data, err = status(held.path, "--max-age", "26h")
    assert code == 1 and data["ok"] is False
    entry = one(data)
    assert entry["stale"] is True and entry["last_run"] is None and entry["last_success"] is None
    assert err.splitlines() == ["freezeframe: error: profile 'held': no success yet"]

    held.release()
    backup = comps.run_freezeframe("backup", held.path, "--json")
    assert backup.returncode == 0, backup.stderr
    run_id = json.loads(backup.stdout)["run_id"]

    code, data, err = status(held.path, "--max-age", "26h")
    assert (code, data["ok"], err) == (0, True, "")
    entry = one(data)
    assert entry["stale"] is False and entry["path"] == str(held.path)
    assert entry["last_run"]["run_id"] == entry["last_success"]["run_id"] == run_id
    assert entry["last_run"]["status"] == "succeeded"
    assert entry["last_success"]["proof"] == "not drilled"
    assert 0 <= entry["last_success_age_seconds"] < 26 * 3600
    assert entry["retained"] == 1 and entry["in_progress"] is None
    assert entry["awaiting_reconcile"] == {"runs": [], "drills": []}

    # older than a millisecond it is, by the time another process reads it
    code, data, err = status(held.path, "--max-age", "1ms")
    assert code == 1 and one(data)["stale"] is True
    assert len(err.splitlines()) == 1 and "last success " in err and "older than 1ms" in err

    human = comps.run_freezeframe("status", held.path)
    assert human.returncode == 0, human.stderr
    (line,) = human.stdout.splitlines()
    assert line.startswith(f"held: last run {run_id} succeeded ") and " ago (not drilled)" in line
    assert "1 retained" in line


def test_status_reads_while_a_backup_holds_the_lock_and_leaves_it_be(held: Held) -> None:
    held.release()
    first = comps.run_freezeframe("backup", held.path, "--json")
    assert first.returncode == 0, first.stderr
    proc = held.backup()
    try:
        code, data, err = status(held.path, "--max-age", "26h")
        # a run started meanwhile (by a timer) is refused, in one line
        second = comps.run_freezeframe("backup", held.path)
        assert proc.poll() is None  # neither status nor that disturbed the backup
        held.release()
        out, backup_err = proc.communicate(timeout=120)
    finally:
        held.release()
        proc.kill()
        proc.wait()
    assert code == 0 and data["ok"] is True, err
    entry = one(data)
    assert entry["last_run"]["status"] == "running"
    assert entry["last_success"]["run_id"] == json.loads(first.stdout)["run_id"]
    going = entry["in_progress"]
    assert going["command"] == "backup" and going["pid"] == proc.pid
    assert going["run_id"] == entry["last_run"]["run_id"]
    assert entry["awaiting_reconcile"] == {"runs": [], "drills": []}
    assert second.returncode == 3, second.stderr
    assert second.stderr.count("\n") == 1 and "is busy" in second.stderr
    assert f"pid {proc.pid} (freezeframe backup" in second.stderr
    assert proc.returncode == 0, backup_err
    assert json.loads(out)["run_id"] == going["run_id"]


def test_a_killed_run_awaits_its_reconcile_which_status_does_not_do(
    tmp_path: Path, write_profile
) -> None:
    marker = tmp_path / "in-stage"
    text = f"""
        [profile]
        name = "killed"
        freeze_timeout = "120s"

        [[application]]
        plugin = "recorder"
        name = "app"

        [[backup]]
        backend = "slow"
        name = "snap"
        dir = "{tmp_path / "snaps"}"
        marker = "{marker}"
        """
    fast = write_profile(text + 'seconds = "10ms"\n', "fast.toml")
    assert comps.run_freezeframe("backup", fast).returncode == 0
    marker.unlink()
    proc = comps.start_freezeframe("backup", write_profile(text + 'seconds = "60s"\n', "slow.toml"))
    try:
        comps.wait_for(marker, proc)
        dead = marker.read_text()
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
        proc.wait()
    code, data, err = status(fast, "--max-age", "26h")
    assert code == 0, err  # the success before it is still fresh
    entry = one(data)
    assert entry["last_run"] == {**entry["last_run"], "run_id": dead, "status": "running"}
    assert entry["in_progress"] is None
    assert entry["awaiting_reconcile"] == {"runs": [dead], "drills": []}
    human = comps.run_freezeframe("status", fast)
    assert f"run {dead} crashed: the next command reconciles it" in human.stdout
    with Catalog(tmp_path / "state" / "killed" / "catalog.sqlite", read_only=True) as cat:
        run = cat.get(dead)
        assert run is not None and run.status == "running"  # status reconciled nothing

    listed = comps.run_freezeframe("list", fast)  # takes the lock: reconciles
    assert listed.returncode == 0, listed.stderr
    code, data, err = status(fast)
    entry = one(data)
    assert entry["awaiting_reconcile"]["runs"] == [] and entry["last_run"]["status"] == "failed"
    assert entry["stale"] is None  # no --max-age: not judged


def test_a_lock_held_with_no_run_is_what_holds_it(held: Held) -> None:
    """A drill or prune holds the lock with no run going on: status names the command."""
    held.state.mkdir(parents=True)
    with ProfileLock(held.state / "lock", "held", "prune"):
        code, data, err = status(held.path)
    assert code == 0, err
    going = one(data)["in_progress"]
    assert going["command"] == "prune" and going["pid"] == os.getpid()
    assert going["run_id"] is None


def test_a_drill_marked_running_is_going_on_while_the_lock_is_held_else_crashed(
    held: Held,
) -> None:
    """A drill records no process of its own: the lock alone tells a drill going on (a
    ``drill`` holds it) from one whose freezeframe died (nobody does)."""
    held.release()
    backup = comps.run_freezeframe("backup", held.path, "--json")
    assert backup.returncode == 0, backup.stderr
    run_id = json.loads(backup.stdout)["run_id"]
    with Catalog(held.state / "catalog.sqlite") as cat:  # as a drill records itself first
        cat.save_drill(DrillRecord("d1", run_id, "held", "snap", DrillStatus.RUNNING, 1.0, ""))
    with ProfileLock(held.state / "lock", "held", "drill"):
        code, data, err = status(held.path)
    entry = one(data)
    assert entry["in_progress"]["command"] == "drill"
    assert entry["awaiting_reconcile"] == {"runs": [], "drills": []}
    code, data, err = status(held.path)
    assert code == 0, err
    entry = one(data)
    assert entry["in_progress"] is None
    assert entry["awaiting_reconcile"] == {"runs": [], "drills": ["d1"]}
    assert "drill d1 crashed" in comps.run_freezeframe("status", held.path).stdout


def test_status_reads_a_read_only_state_folder(held: Held, read_only_mount) -> None:
    held.release()
    assert comps.run_freezeframe("backup", held.path).returncode == 0
    read_only_mount(held.state)
    code, data, err = status(held.path, "--max-age", "26h")
    assert code == 0, err
    assert one(data)["last_success"] is not None


def test_one_line_per_profile_and_a_complaint_per_stale_one(tmp_path: Path) -> None:
    fresh, stale = Held(tmp_path / "a", "fresh"), Held(tmp_path / "b", "never")
    fresh.release()
    assert comps.run_freezeframe("backup", fresh.path).returncode == 0
    bad = tmp_path / "bad.toml"
    bad.write_text("[profile]\n")
    r = comps.run_freezeframe("status", fresh.path, stale.path, "--max-age", "26h")
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["fresh", "never"]
    assert lines[1] == "never: no runs yet; STALE (no success within 26h)"
    assert r.stderr.splitlines() == ["freezeframe: error: profile 'never': no success yet"]
    # a profile that cannot be read: its own error, the worst exit code, the others still shown
    code, data, err = status(fresh.path, bad, "--max-age", "26h")
    assert code == 2 and data["ok"] is False
    assert [p.get("profile") for p in data["profiles"]] == ["fresh", None]
    assert data["profiles"][1]["exit_code"] == 2 and "bad.toml" in data["profiles"][1]["error"]
    assert len(err.splitlines()) == 1 and "bad.toml" in err


def test_without_a_profile_status_reads_the_default_places(tmp_path: Path) -> None:
    config = tmp_path / "config" / "freezeframe"
    config.mkdir(parents=True)
    for name in ("b", "a"):
        Held(config, name)
    (config / ".a.toml").write_text("[profile]\n")  # an editor's: not a profile
    (config / "notes.txt").write_text("")
    expected = [config / "a.toml", config / "b.toml"]
    assert default_profiles((config,)) == expected
    assert default_profiles((config, tmp_path / "missing", config)) == expected
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    proc = comps.start_freezeframe("status", "--json", env=env)
    out, err = proc.communicate(timeout=120)
    system = default_profiles(profile_dirs()[:-1])  # /etc/freezeframe, as root
    names = [p["path"] for p in json.loads(out)["profiles"]]
    assert names == [*map(str, system), *map(str, expected)], err
    if not system:
        assert proc.returncode == 0, err

    user = tmp_path / "none" / "freezeframe"
    proc = comps.start_freezeframe("status", env={"XDG_CONFIG_HOME": str(tmp_path / "none")})
    out, err = proc.communicate(timeout=120)
    if not system:
        assert proc.returncode == 2 and out == ""
        assert err.splitlines() == [
            "freezeframe: error: status: no PROFILE given, and no profile in "
            + " or ".join(f"{d}/*.toml" for d in (*profile_dirs()[:-1], user))
        ]
