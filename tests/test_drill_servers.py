"""Drills of real servers through the command line: damage found and said in one line, and
a drill killed while its server runs leaves nothing behind once the next command ran."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from freezeframe_testing.plugin import run_cli, wait_until
from freezeframe_testing.redis_server import RedisServer, redis_clone_profile


def with_drill_dir(profile: Path, drills: Path, checks: str = "") -> Path:
    """``profile`` with its drills in ``drills`` and ``checks`` after its one application."""
    text = profile.read_text().replace(
        "[profile]\n", f"[profile]\ndrill_dir = {json.dumps(str(drills))}\n", 1
    )
    if checks:
        text = text.replace("\n[[backup]]", f"\n{checks}\n[[backup]]", 1)
    profile.write_text(text)
    return profile


def processes_below(folder: Path) -> list[int]:
    """The live processes working inside ``folder`` (their current folder or a path on their
    command line): the servers and commands a drill started in its scratch folder, which
    only this test uses."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
            state = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[0]
            cwd = os.readlink(Path(entry.path, "cwd"))
        except OSError:
            continue
        inside = Path(cwd).is_relative_to(folder) or any(str(folder).encode() in a for a in argv)
        if state != "Z" and inside:
            found.append(int(entry.name))
    return found


def test_a_truncated_rdb_fails_the_drill_in_one_line(
    tmp_path: Path, redis_server: Callable[..., RedisServer]
) -> None:
    server = redis_server()
    server.client().mset({f"k{i}": "x" * 100 for i in range(200)})
    profile = with_drill_dir(redis_clone_profile(tmp_path, server), tmp_path / "drills")
    r = run_cli("backup", profile, "--json")
    assert r.returncode == 0, r.stderr
    run_id = r.json()["run_id"]

    passed = run_cli("drill", profile, run_id, "--json")
    assert passed.returncode == 0, passed.stderr
    checks = {c["name"]: c for c in passed.json()["drills"][0]["applications"][0]["checks"]}
    assert {checks[n]["status"] for n in ("redis-check-rdb", "start", "keys")} == {"passed"}

    view = tmp_path / "snaps" / run_id
    (dump,) = view.rglob("dump.rdb")
    dump.chmod(0o600)
    with open(dump, "r+b") as f:
        f.truncate(dump.stat().st_size // 2)
    failed = run_cli("drill", profile, run_id)
    assert failed.returncode == 1
    errors = [line for line in failed.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, failed.stderr
    assert "application 'cache': check 'redis-check-rdb': " in errors[0]
    assert "dump.rdb" in errors[0]
    listed = {r["run_id"]: r for r in run_cli("list", profile, "--json").json()}
    assert listed[run_id]["proof"] == "drill failed"
    assert server.client().dbsize() == 200  # the original never noticed
    assert not (tmp_path / "drills").exists() or not any((tmp_path / "drills").iterdir())


def test_kill_9_mid_drill_leaves_no_server_nor_folder_after_the_next_command(
    tmp_path: Path, redis_server: Callable[..., RedisServer]
) -> None:
    server = redis_server()
    server.client().set("k", "v")
    marker = tmp_path / "checking"
    hold = f"""
[[application.check]]
name = "holds"
command = ["sh", "-c", "touch {marker}; sleep 600"]
"""
    drills = tmp_path / "drills"
    profile = with_drill_dir(redis_clone_profile(tmp_path, server), drills, hold)
    r = run_cli("backup", profile)
    assert r.returncode == 0, r.stderr
    proc = subprocess.Popen(
        [sys.executable, "-m", "freezeframe", "drill", str(profile)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_until(lambda: marker.exists() or proc.poll() is not None, 120)
        assert proc.poll() is None, proc.communicate()
        started = processes_below(drills)
        assert len(started) >= 2, "the drill's redis-server and its check should be running"
        proc.kill()
        proc.communicate(timeout=30)
        # the server dies with freezeframe; what a check left behind waits for the next command
        assert run_cli("list", profile).returncode == 0
        assert wait_until(lambda: not processes_below(drills), 15), processes_below(drills)
        assert list(drills.iterdir()) == []
        assert server.client().get("k") == "v"  # the original runs on, untouched
        shown = run_cli("show", profile, "latest", "--json").json()
        assert [d["status"] for d in shown["drills"]] == ["interrupted"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for pid in processes_below(drills):
            os.kill(pid, signal.SIGKILL)
