"""No repository and no password on a backup tool's command line.

Every user of the machine reads every process's argv (``ps``, ``/proc/<pid>/cmdline``).
A repository can hold credentials (``rest:https://user:PW@host/``), so the backends
hand restic and borg the repository in their environment, which only the user
and root can read, and the profile refuses a URL with a password in it.

The spy reads the argv of the processes in the process group of the freezeframe
it started (its own session): the tools it runs, and nothing else on the machine.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest

from freezeframe_testing.plugin import (
    make_counter_db,
    read_counter,
    require_tool,
    restored,
    sqlite_clone_profile,
)

PASSWORD = "hunter2-argv-7c1e"  # noqa: S105 - a test's throwaway
PW_ENV = "FF_TEST_ARGV_PASSWORD"


def _group_of(pid: str) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses
    return int(stat.rpartition(")")[2].split()[2])


@dataclass
class Spied:
    """What one freezeframe command did, and every argv its process group showed."""

    returncode: int
    stderr: str
    argvs: list[list[bytes]] = field(default_factory=list)

    def tools(self, name: str) -> list[list[bytes]]:
        """The argvs of tool ``name`` (borg is a script: ``python3 /usr/bin/borg ...``)."""
        return [a for a in self.argvs if name.encode() in map(os.path.basename, a[:2])]


def spied(*args: str | Path, env: dict[str, str]) -> Spied:
    """Run ``freezeframe ARGS`` in a session of its own; read its group's argvs meanwhile."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "freezeframe", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
        start_new_session=True,  # its pgid is its pid: the group of its tools too
    )
    seen: set[tuple[bytes, ...]] = set()
    done = threading.Event()

    def spy() -> None:
        while not done.is_set():
            for pid in os.listdir("/proc"):
                if pid.isdigit() and int(pid) != proc.pid and _group_of(pid) == proc.pid:
                    with contextlib.suppress(OSError):  # it may have exited
                        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
                        if argv:
                            seen.add(tuple(argv))

    watcher = threading.Thread(target=spy, daemon=True)
    watcher.start()
    try:
        _, stderr = proc.communicate(timeout=300)
    finally:
        done.set()
        watcher.join()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return Spied(proc.returncode, stderr, [list(a) for a in seen])


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Path]:
    """A live SQLite database to back up."""
    live = tmp_path / "live"
    live.mkdir()
    yield make_counter_db(live / "shop.db")


def profile(tmp_path: Path, db: Path, backup: str) -> Path:
    offsite = f"""
[[backup]]
name = "offsite"
password_env = "{PW_ENV}"
init = true
keep = {{ last = 1 }}
{backup}
"""
    return sqlite_clone_profile(tmp_path, db, name="argv", then=offsite)


def assert_never_in_argv(runs: list[Spied], tool: str, *secrets: str) -> None:
    for run in runs:
        assert run.returncode == 0, run.stderr
    seen = [a for run in runs for a in run.tools(tool)]
    assert any(b"backup" in a or b"create" in a for a in seen), f"the spy must have seen {tool}"
    leaks = [a for run in runs for a in run.argvs for s in secrets if s.encode() in b" ".join(a)]
    assert not leaks


@pytest.mark.parametrize("where", ["repository", "repository_file"])
def test_restic_gets_its_repository_and_password_in_its_environment(
    tmp_path: Path, shop: Path, where: str
) -> None:
    require_tool("restic")
    repo = tmp_path / "vault-restic-5e1f"
    if where == "repository":
        backup = f'backend = "restic"\nrepository = {json.dumps(str(repo))}'
    else:
        named = tmp_path / "restic.repo"
        named.write_text(f"{repo}\n")
        named.chmod(0o600)
        backup = f'backend = "restic"\nrepository_file = {json.dumps(str(named))}'
    path = profile(tmp_path, shop, backup)
    env = {PW_ENV: PASSWORD, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    runs = [spied("backup", path, env=env), spied("backup", path, env=env)]
    runs.append(spied("verify", path, env=env))
    runs.append(spied("restore", path, "latest", "--to", tmp_path / "back", env=env))
    assert_never_in_argv(runs, "restic", str(repo), PASSWORD)
    assert (repo / "config").is_file()  # restic did use the repository it was given
    assert read_counter(restored(tmp_path / "back", shop)) == 0


def test_borg_gets_its_repository_and_passphrase_in_its_environment(
    tmp_path: Path, shop: Path
) -> None:
    require_tool("borg")
    repo = tmp_path / "vault-borg-5e1f"
    path = profile(tmp_path, shop, f'backend = "borg"\nrepository = {json.dumps(str(repo))}')
    env = {PW_ENV: PASSWORD, "BORG_BASE_DIR": str(tmp_path / "borg-home")}
    runs = [spied("backup", path, env=env), spied("backup", path, env=env)]
    runs.append(spied("verify", path, env=env))
    runs.append(spied("restore", path, "latest", "--to", tmp_path / "back", env=env))
    assert_never_in_argv(runs, "borg", str(repo), PASSWORD)
    assert (repo / "config").is_file()
    assert read_counter(restored(tmp_path / "back", shop)) == 0


@pytest.mark.parametrize(
    ("backend", "repository", "points_at"),
    [
        ("restic", "rest:http://backup:s3cr3t-pw@127.0.0.1:8000/shop", "repository_file"),
        ("restic", "rest:https://:s3cr3t-pw@vault.example.net/shop", "repository_env"),
        ("restic", "sftp://backup:s3cr3t-pw@vault.example.net//srv/restic", "repository_file"),
        ("borg", "ssh://backup:s3cr3t-pw@vault.example.net/srv/borg", "ssh_command"),
    ],
)
def test_a_repository_url_with_a_password_is_refused_in_one_line(
    tmp_path: Path, shop: Path, backend: str, repository: str, points_at: str
) -> None:
    path = profile(tmp_path, shop, f'backend = "{backend}"\nrepository = {json.dumps(repository)}')
    r = spied("check", path, env={PW_ENV: PASSWORD})
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert 'field "repository"' in lines[0] and "password" in lines[0]
    assert points_at in lines[0]
    assert "s3cr3t-pw" not in r.stderr and not r.tools(backend)


class _NoRepository(http.server.BaseHTTPRequestHandler):
    """A REST server with no repository: 404 for everything; remembers who asked."""

    logins: ClassVar[list[str]] = []

    def _answer(self) -> None:
        self.logins.append(self.headers.get("Authorization", ""))
        time.sleep(0.3)  # restic lives long enough for the spy to read its argv
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("where", ["repository_file", "repository_env"])
def test_a_restic_repository_with_credentials_reaches_restic_but_no_argv_or_message(
    tmp_path: Path, shop: Path, where: str
) -> None:
    require_tool("restic")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NoRepository)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"rest:http://backup:s3cr3t-pw@127.0.0.1:{server.server_port}/shop"
        env = {PW_ENV: PASSWORD, "FF_TEST_ARGV_REPOSITORY": url}
        if where == "repository_file":
            secret = tmp_path / "restic.repo"
            secret.write_text(f"{url}\n")
            secret.chmod(0o644)
            backup = f'backend = "restic"\nrepository_file = {json.dumps(str(secret))}'
            path = profile(tmp_path, shop, backup)
            r = spied("check", path, env=env)
            assert r.returncode != 0 and "chmod 600" in r.stderr  # a secret's file is private
            assert not r.tools("restic")
            secret.chmod(0o600)
        else:
            backup = 'backend = "restic"\nrepository_env = "FF_TEST_ARGV_REPOSITORY"'
            path = profile(tmp_path, shop, backup)
        r = spied("check", path, env=env)
    finally:
        server.shutdown()
        server.server_close()
    # No repository there: restic fails to open it, and the error hides the password.
    assert r.returncode != 0
    assert f"rest:http://backup:***@127.0.0.1:{server.server_port}/shop" in r.stderr
    assert "s3cr3t-pw" not in r.stderr
    # restic logged in with the credentials, which were never on its command line.
    login = "Basic " + base64.b64encode(b"backup:s3cr3t-pw").decode()
    assert login in _NoRepository.logins
    assert r.tools("restic") and not [a for a in r.argvs if b"s3cr3t-pw" in b" ".join(a)]
