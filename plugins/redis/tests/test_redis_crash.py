"""kill -9 of freezeframe while Redis is paused: the server resumes writes by itself.

The backup runs as a real CLI process with the slow test snapshot backend,
which touches a marker file once the applications are quiesced. The test
then checks that writes are paused, kills the process with SIGKILL (nothing
of freezeframe runs after that: no thaw, no watchdog for Redis), and checks
that a write is answered within freeze_timeout + 2 s, because the
``CLIENT PAUSE`` carried the deadline.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import redis

import freezeframe_testing.components as comps
from freezeframe_testing.redis_server import RedisServer

FREEZE_TIMEOUT = 3.0
PASSWORD = "crash-Pa55word"  # noqa: S105 (a test server's password)


def backup_cli(profile: Path) -> subprocess.Popen[str]:
    return comps.start_freezeframe("backup", profile, "--json", env={"FF_REDIS_PASSWORD": PASSWORD})


def test_sigkill_while_paused_and_the_server_takes_writes_again_by_itself(
    tmp_path: Path,
    redis_server: Callable[..., RedisServer],
    write_profile: Callable[[str], Path],
) -> None:
    server = redis_server(password=PASSWORD)
    marker = tmp_path / "in-stage"
    text = f"""
        [profile]
        name = "crash"
        freeze_timeout = "{FREEZE_TIMEOUT:g}s"

        [[application]]
        plugin = "redis"
        name = "cache"
        url = "{server.url}"
        password_env = "FF_REDIS_PASSWORD"
        capture = "snapshot"  # paused while the (slow) snapshot stage runs

        [[backup]]
        backend = "slow"
        name = "snap"
        dir = "{tmp_path / "snaps"}"
        seconds = "60s"
        marker = "{marker}"
    """
    profile = write_profile(text)
    proc = backup_cli(profile)
    try:
        comps.wait_for(marker, proc)
        assert PASSWORD not in Path(f"/proc/{proc.pid}/cmdline").read_text()
        blocked = server.client(socket_timeout=0.3)
        try:
            blocked.incr("before-kill")
            raise AssertionError("a write went through while freezeframe held the pause")
        except redis.TimeoutError:
            pass
        proc.kill()
        proc.wait(10)
    finally:
        proc.kill()
        proc.communicate()
    # No thaw ran: the pause ends when its own timeout does, by the freeze deadline.
    after = server.client(socket_timeout=FREEZE_TIMEOUT + 2)
    assert after.incr("after-kill") == 1

    # The next run reconciles the dead one and backs up as usual.
    marker.unlink()
    nxt = backup_cli(write_profile(text.replace('seconds = "60s"', 'seconds = "10ms"')))
    out, err = nxt.communicate(timeout=60)
    assert nxt.returncode == 0, err
    run = json.loads(out)
    assert run["status"] == "succeeded"
    assert run["applications"][0]["mode"] == "quiesced"
    assert PASSWORD not in out + err
    assert after.incr("after-kill") == 2
