"""kill -9 of freezeframe while MariaDB is quiesced: the server lets commits through again.

The backup runs in a real CLI subprocess whose snapshot stage is slow (an
atomic-kind variant of the test suite's slow backend, which touches a marker
file once the applications are quiesced). The test waits for the marker,
sees a COMMIT wait for the backup lock, kills freezeframe with SIGKILL, and
the COMMIT must go through well within freeze_timeout + 2 s: the kernel
closes the held connection and the server ends the backup stage.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from freezeframe_testing.mariadb_server import MariaDB

FREEZE_TIMEOUT = 5.0
PASSWORD_ENV = "FF_TEST_MARIADB_CRASH_PASSWORD"  # noqa: S105
SECRET = "crash-Secret-8Qm2"  # noqa: S105

#: The CLI with an atomic slow snapshot backend registered in-process.
CLI = textwrap.dedent("""
    import sys
    from typing import Any, Callable

    from freezeframe import SnapshotKind, hookimpl
    from freezeframe.cli import main
    from freezeframe.registry import build_registry
    from freezeframe_testing.components import SlowSnapshot


    class AtomicSlow(SlowSnapshot):
        kind = "slow-atomic"
        snapshot_kind = SnapshotKind.ATOMIC


    class Backends:
        @hookimpl
        def freezeframe_register_backends(self, register: Callable[[type[Any]], None]) -> None:
            register(AtomicSlow)


    raise SystemExit(main(sys.argv[1:], build_registry(modules=[Backends()])))
""")


def test_kill_9_while_quiesced_releases_the_server(
    mariadb: MariaDB, tmp_path: Path, write_profile: Any
) -> None:
    mariadb.sql(
        f"CREATE USER backup@'%' IDENTIFIED BY '{SECRET}'",
        "GRANT RELOAD, BINLOG MONITOR ON *.* TO backup@'%'",
        "CREATE DATABASE shop",
        "CREATE TABLE shop.t (id INT PRIMARY KEY, v INT NOT NULL)",
        "INSERT INTO shop.t VALUES (1, 0)",
    )
    marker = tmp_path / "quiesced"
    profile = write_profile(f"""
        [profile]
        name = "crash"
        freeze_timeout = "{FREEZE_TIMEOUT:g}s"

        [[application]]
        plugin = "mariadb"
        name = "shop"
        unix_socket = "{mariadb.socket}"
        user = "backup"
        password_env = "{PASSWORD_ENV}"

        [[backup]]
        backend = "slow-atomic"
        name = "snap"
        dir = "{tmp_path / "snaps"}"
        seconds = "60s"
        marker = "{marker}"
    """)
    script = tmp_path / "cli.py"
    script.write_text(CLI)
    env = {
        **os.environ,
        PASSWORD_ENV: SECRET,
    }
    proc = subprocess.Popen(
        [sys.executable, str(script), "backup", str(profile)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            if proc.poll() is not None:
                _out, err = proc.communicate()
                pytest.fail(f"the backup ended before the snapshot began: {err.decode()}")
            assert time.monotonic() < deadline, "the snapshot stage never began"
            time.sleep(0.01)

        # quiesced: a COMMIT waits for the backup lock
        writer = mariadb.connect(autocommit=False)
        writer_id = writer.thread_id()
        done: list[object] = []

        def commit() -> None:
            try:
                with writer.cursor() as cur:
                    cur.execute("UPDATE shop.t SET v = v + 1 WHERE id = 1")
                writer.commit()
                done.append(True)
            except Exception as e:
                done.append(e)

        thread = threading.Thread(target=commit, daemon=True)
        thread.start()
        waiting = ""
        for _ in range(500):
            rows = mariadb.sql(
                f"SELECT STATE FROM information_schema.PROCESSLIST WHERE ID = {writer_id}"
            )
            waiting = str(rows[0][0]) if rows else ""
            if "backup lock" in waiting:
                break
            time.sleep(0.02)
        assert "backup lock" in waiting, f"the COMMIT was not blocked (state {waiting!r})"
        assert done == []
    finally:
        proc.kill()  # SIGKILL: no thaw, no finally, no atexit
        proc.wait(30)

    thread.join(FREEZE_TIMEOUT + 2)
    assert done == [True], "the server still held the backup lock after freezeframe died"
    assert mariadb.sql("SELECT v FROM shop.t")[0][0] == 1
    query = "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = 'backup'"
    for _ in range(250):  # the server finishes the dead connection's cleanup on its own time
        if mariadb.sql(query) == [(0,)]:
            break
        time.sleep(0.02)
    assert mariadb.sql(query) == [(0,)]
