"""A private redis-server on restored data: ``restore --verify`` and the drill start it so.

The server listens on a unix socket in a private folder (no TCP port, so it
never meets the original server or another test; on a free loopback port
only when the folder's path is too long for a socket), is nobody's replica,
loads no configuration file, persists nothing (``--save ""``, no AOF
rewrite, no AOF garbage collection, the AOF turned off once loaded, so that
a write to the copy reaches no restored file; a truncated AOF is an error
rather than something to repair), and is shut down with ``SHUTDOWN
NOSAVE``. ``restore --verify`` also checks that the restored files are byte
for byte as they were.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket as sockets
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from freezeframe.plugin import FreezeframeError
from freezeframe_redis._keys import keyspace
from freezeframe_redis._layout import Layout

if TYPE_CHECKING:
    import redis

__all__ = ["VERIFY_DATABASES", "TemporaryServer", "load_in_temporary_server", "temporary_server"]

#: Databases the temporary server offers: an RDB holding a higher database number fails to load.
VERIFY_DATABASES = 1024
#: How long loading the restored data may take.
LOAD_TIMEOUT = 900.0
#: How long the server may take to exit after ``SHUTDOWN NOSAVE`` before it is killed.
STOP_WAIT = 30.0
#: How long one command to the temporary server may take.
COMMAND_TIMEOUT = 60.0
#: The longest unix socket path (``sun_path`` holds 108 bytes with the final NUL).
SOCKET_MAX = 107
#: Free loopback ports tried when another process takes the one chosen first.
PORT_TRIES = 3
_LOG_LINE = re.compile(r"^\d+:[A-Z] .*? [.\-*#] ")

#: Starts the server: :class:`subprocess.Popen`, or a drill's ``DrillContext.spawn``.
Spawn = Callable[..., "subprocess.Popen[bytes]"]


def _files(layout: Layout) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file the server could touch: what must not change."""
    out: dict[str, tuple[int, int]] = {}
    for top in layout.data_paths():
        paths = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for p in paths:
            st = p.stat()
            out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


def _last_words(log: Path) -> str:
    """The last warning the server logged (or its last line), without the log prefix."""
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    warnings = [ln for ln in lines if " # " in ln]
    pick = (warnings or lines or ["no log"])[-1]
    # not Redis's advice on repairing the file ("... You can: 1) Make a backup ...")
    return _LOG_LINE.sub("", pick).split(" You can: ")[0].strip()


def argv(binary: str, layout: Layout, listen: Path | int, log: Path) -> list[str]:
    """The temporary server's command line (it holds no secret: no password is needed).

    ``listen``: its unix socket, or a loopback port.
    """
    if isinstance(listen, Path):
        where = ["--port", "0", "--unixsocket", str(listen), "--unixsocketperm", "700"]
    else:
        where = ["--port", str(listen), "--bind", "127.0.0.1"]
    return [
        binary,
        *where,
        "--dir", str(layout.dir),
        "--dbfilename", layout.dbfilename,
        "--appendonly", "yes" if layout.aof else "no",
        "--appenddirname", layout.appenddirname,
        "--appendfilename", layout.appendfilename,
        "--aof-load-truncated", "no",
        "--auto-aof-rewrite-percentage", "0",
        "--aof-disable-auto-gc", "yes",
        "--save", "",
        "--databases", str(VERIFY_DATABASES),
        "--daemonize", "no",
        "--logfile", str(log),
        "--loglevel", "notice",
        "--always-show-logo", "no",
        "--protected-mode", "yes",
    ]  # fmt: skip


@dataclass
class TemporaryServer:
    """A redis-server that has loaded restored data, and how to reach it."""

    proc: subprocess.Popen[bytes]
    client: redis.Redis
    #: Its unix socket, or ``None`` when it listens on ``127.0.0.1:port``.
    socket: Path | None
    port: int
    #: How long it took to start and load the data, in seconds.
    load_s: float

    @property
    def url(self) -> str:
        """``unix:///.../redis.sock`` or ``redis://127.0.0.1:<port>/0``."""
        if self.socket is not None:
            return f"unix://{self.socket}"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def connection(self) -> dict[str, str]:
        """``SOCKET`` or ``HOST`` and ``PORT``, and ``URL``."""
        if self.socket is not None:
            return {"SOCKET": str(self.socket), "URL": self.url}
        return {"HOST": "127.0.0.1", "PORT": str(self.port), "URL": self.url}

    def keyspace(self) -> dict[str, dict[str, int]]:
        """``keys`` and ``expires`` of each database that holds a key."""
        return keyspace(self.client.info("keyspace"))


def _free_port() -> int:
    with sockets.socket(sockets.AF_INET, sockets.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill it, with its process group when it leads one (a save it forked)."""
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    proc.wait()


def _stop(proc: subprocess.Popen[bytes], client: redis.Redis) -> None:
    """``SHUTDOWN NOSAVE``, a bounded wait, then a kill if it is still there."""
    import redis.exceptions as rx

    try:
        if proc.poll() is None:
            shutdown: Callable[..., Any] = client.execute_command
            with contextlib.suppress(rx.RedisError, OSError):  # it hangs up as it exits
                shutdown("SHUTDOWN", "NOSAVE")
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(STOP_WAIT)
    finally:
        client.close()
        if proc.poll() is None:
            _kill(proc)


def _loaded(
    proc: subprocess.Popen[bytes],
    client: redis.Redis,
    log: Path,
    poll: Callable[[], None],
    retry_port: bool,
) -> bool:
    """Wait until the server has loaded the data; ``False`` when it could not bind its
    port (``retry_port``: another process took it first)."""
    import redis.exceptions as rx

    started = time.monotonic()
    while True:
        poll()
        if proc.poll() is not None:
            why = _last_words(log)
            if retry_port and "already in use" in why:
                return False
            raise FreezeframeError(
                f"redis-server could not load it (exit {proc.returncode}): {why}"
            )
        if time.monotonic() - started > LOAD_TIMEOUT:
            raise FreezeframeError(f"redis-server did not load it in {LOAD_TIMEOUT:g}s")
        try:
            if client.ping() and not client.info("persistence").get("loading"):
                break
        except (rx.ConnectionError, rx.BusyLoadingError, rx.TimeoutError, OSError):
            pass
        time.sleep(0.01)
    if "DB loaded from" not in log.read_text(errors="replace"):
        raise FreezeframeError(
            "redis-server started but loaded nothing (no data file where it looked)"
        )
    return True


@contextmanager
def temporary_server(
    binary: str,
    layout: Layout,
    folder: Path,
    *,
    spawn: Spawn = subprocess.Popen,
    poll: Callable[[], None] = lambda: None,
) -> Iterator[TemporaryServer]:
    """A redis-server (``binary``) started by ``spawn`` on ``layout`` (restored files),
    its socket and log in ``folder``, once it has loaded the data; stopped on leaving.

    Raises :class:`FreezeframeError` with the server's last words when it cannot load
    the data; ``poll`` is called while it loads (to raise on an interrupt).
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    folder = folder.absolute()  # redis-server changes to the data folder
    log, socket = folder / "redis.log", folder / "redis.sock"
    use_socket = len(os.fsencode(socket)) <= SOCKET_MAX
    for attempt in range(1, PORT_TRIES + 1):
        port = 0 if use_socket else _free_port()
        log.unlink(missing_ok=True)
        started = time.monotonic()
        proc = spawn(
            argv(binary, layout, socket if use_socket else port, log),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=folder,
        )
        where: dict[str, Any] = (
            {"unix_socket_path": str(socket)} if use_socket else {"host": "127.0.0.1", "port": port}
        )
        client = redis.Redis(
            **where,
            decode_responses=True,
            socket_timeout=COMMAND_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            if not _loaded(proc, client, log, poll, not use_socket and attempt < PORT_TRIES):
                continue  # the finally below has stopped it
            if layout.aof:  # loaded: from now on a write to the copy reaches no restored file
                client.config_set("appendonly", "no")
            yield TemporaryServer(
                proc, client, socket if use_socket else None, port, time.monotonic() - started
            )
            return
        finally:
            _stop(proc, client)
    raise FreezeframeError(f"redis-server found no free loopback port in {PORT_TRIES} tries")


def load_in_temporary_server(binary: str, layout: Layout) -> dict[str, Any]:
    """Start a redis-server on ``layout`` (restored files), check that it loaded, stop it.

    Returns what it saw (``keys``, ``load_s``); raises :class:`FreezeframeError`
    with the server's last words when it cannot load the data, or when a restored
    file changed.
    """
    before = _files(layout)
    with (
        tempfile.TemporaryDirectory(prefix="ffredis-") as tmp,
        temporary_server(binary, layout, Path(tmp)) as server,
    ):
        keys = sum(db["keys"] for db in server.keyspace().values())
        loaded_in = server.load_s
    after = _files(layout)
    if after != before:
        changed = sorted(
            set(before) ^ set(after) | {k for k in before if before[k] != after.get(k)}
        )
        names = ", ".join(os.path.basename(c) for c in changed)
        raise FreezeframeError(f"the check changed restored files ({names})")
    return {"keys": keys, "load_s": round(loaded_in, 3)}
