"""A real OpenSSH server on 127.0.0.1 for one test: restic's ``sftp:`` and borg's ``ssh://``.

The ``sshd`` fixture starts the system's ``sshd`` on a free port with its own
configuration, a throwaway host key and a throwaway client key, all in a
temporary folder, and yields an :class:`Sshd` that says how to reach it: an
``ssh_config`` file that pins the host key (``StrictHostKeyChecking yes``)
and names the identity, and the matching ``ssh_command`` for the backends'
``ssh_command`` profile field. The server and every process it started are
stopped at teardown, also when the test failed.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from freezeframe_testing.procs import descendants

__all__ = ["Sshd", "closed_port", "sshd"]

#: How long the server may take to accept its first connection.
START_TIMEOUT = 15.0


@dataclass(frozen=True)
class Sshd:
    """A running sshd and what a client needs to reach it."""

    host: str
    port: int
    user: str
    folder: Path
    identity: Path
    known_hosts: Path
    ssh_config: Path
    log: Path
    pid: int

    @property
    def ssh_command(self) -> list[str]:
        """The ``ssh_command`` profile field: ssh with this server's config file."""
        return ["ssh", "-F", str(self.ssh_config)]

    def sftp_url(self, path: Path) -> str:
        """A restic repository URL for the absolute ``path`` on this server."""
        return f"sftp://{self.user}@{self.host}:{self.port}/{path}"

    def ssh_url(self, path: Path) -> str:
        """A borg repository URL for the absolute ``path`` on this server."""
        return f"ssh://{self.user}@{self.host}:{self.port}{path}"

    def sessions(self) -> list[int]:
        """Pids of the processes the server started (connections, sftp, ``borg serve``)."""
        return _descendants(self.pid)

    def idle(self, within: float = 10.0) -> bool:
        """Whether every connection has ended, waiting up to ``within`` seconds for the
        server's side of the last one to finish closing."""
        deadline = time.monotonic() + within
        while self.sessions():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (an unreachable server)."""
    return _free_port()


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid``."""
    return [p.pid for p in descendants(pid)]


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )


def _wait_for_banner(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"sshd did not answer within {START_TIMEOUT:g}s: {log.read_text()[-2000:]}")


def _stop(pid: int, proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server and everything it started, then SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        victims = [*_descendants(pid), pid]
        for p in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in victims):
            time.sleep(0.05)
        if proc.poll() is not None and not _descendants(pid):
            return


@pytest.fixture
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """A real sshd on 127.0.0.1 (free port, throwaway keys), stopped at teardown.

    Logs in the user running the tests with a key; serves sftp (``internal-sftp``)
    and runs commands such as ``borg serve``. Skips (fails in CI) without
    ``sshd``, ``ssh`` and ``ssh-keygen``.
    """
    from freezeframe_testing.plugin import require_tool

    daemon = require_tool("sshd")
    require_tool("ssh")
    require_tool("ssh-keygen")
    user = getpass.getuser()
    if os.geteuid() == 0:
        # sshd refuses to start without its privilege separation folder
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    folder = tmp_path_factory.mktemp("sshd")
    host_key, identity = folder / "host_ed25519", folder / "id_ed25519"
    _keygen(host_key, "freezeframe-test-host")
    _keygen(identity, "freezeframe-test-client")
    authorized = folder / "authorized_keys"
    authorized.write_text(identity.with_suffix(".pub").read_text())
    authorized.chmod(0o600)
    port = _free_port()
    config = folder / "sshd_config"
    config.write_text(
        f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {folder / "sshd.pid"}
AuthorizedKeysFile {authorized}
AllowUsers {user}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
LogLevel VERBOSE
"""
    )
    known_hosts = folder / "known_hosts"
    host_pub = host_key.with_suffix(".pub").read_text().split()
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    ssh_config = folder / "ssh_config"
    ssh_config.write_text(
        f"""\
Host *
    IdentityFile {identity}
    IdentitiesOnly yes
    UserKnownHostsFile {known_hosts}
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    BatchMode yes
    ConnectTimeout 10
    LogLevel ERROR
"""
    )
    log = folder / "sshd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [daemon, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_for_banner(port, proc, log)
        server = Sshd(
            "127.0.0.1", port, user, folder, identity, known_hosts, ssh_config, log, proc.pid
        )
        probe = subprocess.run(
            [*server.ssh_command, "-p", str(port), f"{user}@127.0.0.1", "true"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert probe.returncode == 0, f"ssh login failed: {probe.stderr}; {log.read_text()[-2000:]}"
        yield server
    finally:
        _stop(proc.pid, proc)
