"""Tests of lock.py: one run per profile at a time, through a real flock(2)."""

from __future__ import annotations

import fcntl
import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from freezeframe.errors import BusyError
from freezeframe.lock import Holder, Owner, ProfileLock
from freezeframe.lock import holder as lock_holder

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from freezeframe.lock import ProfileLock
    with ProfileLock(Path(sys.argv[1]), "nightly", "backup"):
        print("locked", flush=True)
        time.sleep(60)
    """
)


@pytest.fixture
def lock_path(tmp_path: Path) -> Path:
    return tmp_path / "nightly.lock"


@pytest.fixture
def holder(lock_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the lock; killed at the end whatever happens."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def test_lock_is_taken_and_names_its_holder(lock_path: Path) -> None:
    with ProfileLock(lock_path, "nightly", "backup") as lock:
        assert isinstance(lock, ProfileLock)
        info = json.loads(lock_path.read_text())
        assert info["pid"] == os.getpid()
        assert info["command"] == "backup"
        assert info["since"].endswith("+00:00")
        assert stat.S_IMODE(lock_path.stat().st_mode) & 0o077 == 0


def test_lock_held_by_another_process_is_busy_naming_its_pid(
    lock_path: Path, holder: subprocess.Popen[str]
) -> None:
    with pytest.raises(BusyError) as info, ProfileLock(lock_path, "nightly", "prune"):
        pass
    message = str(info.value)
    assert f"pid {holder.pid} (freezeframe backup, since " in message
    assert "'nightly' is busy" in message
    assert str(lock_path) in message
    assert info.value.exit_code == 3


def test_lock_is_free_at_once_when_its_holder_is_killed(
    lock_path: Path, holder: subprocess.Popen[str]
) -> None:
    with pytest.raises(BusyError):
        ProfileLock(lock_path, "nightly", "backup").__enter__()
    holder.kill()  # SIGKILL: no cleanup code runs in the holder
    holder.wait(timeout=30)
    with ProfileLock(lock_path, "nightly", "backup"):
        assert json.loads(lock_path.read_text())["pid"] == os.getpid()


def test_second_lock_in_the_same_process_also_conflicts(lock_path: Path) -> None:
    # flock belongs to the open file description: a second open() is a second owner.
    with ProfileLock(lock_path, "nightly", "backup"):
        with pytest.raises(BusyError, match=f"pid {os.getpid()} "):
            ProfileLock(lock_path, "nightly", "list").__enter__()
        # the failed attempt must not have disturbed the holder's record
        assert json.loads(lock_path.read_text())["command"] == "backup"
    with ProfileLock(lock_path, "nightly", "list"):
        assert json.loads(lock_path.read_text())["command"] == "list"


def test_released_lock_can_be_taken_by_another_process(lock_path: Path) -> None:
    with ProfileLock(lock_path, "nightly", "backup"):
        pass
    check = subprocess.run(
        [sys.executable, "-c", HOLDER.replace("time.sleep(60)", "pass"), str(lock_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == "locked"


def test_children_started_under_the_lock_do_not_keep_it(lock_path: Path) -> None:
    # A backend's tool (tar, restic) outliving the run must not keep the profile locked.
    with ProfileLock(lock_path, "nightly", "backup"):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with ProfileLock(lock_path, "nightly", "backup"):
            pass
    finally:
        child.kill()
        child.wait(timeout=30)


def test_holder_without_a_readable_record_is_another_process(lock_path: Path) -> None:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"not json")
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        started = time.monotonic()
        with pytest.raises(BusyError, match="another process holds"):
            ProfileLock(lock_path, "nightly", "backup").__enter__()
        assert time.monotonic() - started < 2  # never waits for the lock
    finally:
        os.close(fd)


def test_probing_the_lock_says_who_holds_it_and_takes_it_from_nobody(
    lock_path: Path, holder: subprocess.Popen[str]
) -> None:
    found = lock_holder(lock_path)
    assert found is not None and (found.pid, found.command) == (holder.pid, "backup")
    assert str(found).startswith(f"pid {holder.pid} (freezeframe backup, since ")
    holder.kill()
    holder.wait(timeout=30)
    assert lock_holder(lock_path) is None
    with ProfileLock(lock_path, "nightly", "prune"):  # the probe let go of what it tried
        mine = lock_holder(lock_path)
        assert mine is not None and (mine.pid, mine.command) == (os.getpid(), "prune")


def test_probing_a_missing_lock_creates_nothing(tmp_path: Path) -> None:
    assert lock_holder(tmp_path / "lock") is None
    assert list(tmp_path.iterdir()) == []


def test_a_holder_that_has_not_written_itself_yet_is_another_process(lock_path: Path) -> None:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert lock_holder(lock_path) == Holder()
        assert str(Holder()) == "another process"
    finally:
        os.close(fd)


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_the_owner_of_a_run_is_alive_while_it_runs_and_not_after() -> None:
    proc = _sleeper()
    try:
        owner = Owner.of(proc.pid)
        assert owner is not None and owner.alive()
        assert Owner.me().alive()
    finally:
        proc.kill()
    end = time.monotonic() + 10  # SIGKILL takes effect soon, not at once
    while owner.alive() and time.monotonic() < end:
        time.sleep(0.01)
    assert not owner.alive()  # a zombie not yet reaped is not a live owner
    assert proc.poll() is not None  # it was a zombie until now
    proc.wait(timeout=30)
    assert not owner.alive()
    assert Owner.of(proc.pid) is None


def test_a_pid_reused_by_another_process_is_not_the_owner() -> None:
    first = _sleeper()
    try:
        recorded = Owner.of(first.pid)
    finally:
        first.kill()
        first.wait(timeout=30)
    assert recorded is not None
    time.sleep(0.05)  # start times are counted in clock ticks (10 ms): the next one differs
    second = _sleeper()
    try:
        now = Owner.of(second.pid)
        assert now is not None and now.alive()
        # the record of the first process, had the kernel given its pid to the second
        reused = Owner(second.pid, recorded.boot_id, recorded.start_ticks)
        assert now.start_ticks != recorded.start_ticks
        assert not reused.alive()
        assert not Owner(second.pid, "another boot", now.start_ticks).alive()
    finally:
        second.kill()
        second.wait(timeout=30)
