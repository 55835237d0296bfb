"""Loading restored data in a temporary redis-server, to prove that it loads.

The server listens on a unix socket in a private temporary folder (no TCP
port, so it never meets the original server or another test), persists
nothing (``--save ""``, no AOF rewrite, no AOF garbage collection, a
truncated AOF is an error rather than something to repair), and is shut
down with ``SHUTDOWN NOSAVE``. Whatever it did, the restored files must be
byte for byte as they were: that is checked, too.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from freezeframe.plugin import (
    FreezeframeError,
)
from freezeframe_redis._layout import Layout

__all__ = ["VERIFY_DATABASES", "load_in_temporary_server"]

#: Databases the temporary server offers: an RDB holding a higher database number fails to load.
VERIFY_DATABASES = 1024
#: How long loading the restored data may take.
LOAD_TIMEOUT = 900.0
_LOG_LINE = re.compile(r"^\d+:[A-Z] .*? [.\-*#] ")


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
    return _LOG_LINE.sub("", pick).strip()


def argv(binary: str, layout: Layout, socket: Path, log: Path) -> list[str]:
    """The temporary server's command line (it holds no secret: no password is needed)."""
    return [
        binary,
        "--port", "0",
        "--unixsocket", str(socket),
        "--unixsocketperm", "700",
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


def load_in_temporary_server(binary: str, layout: Layout) -> dict[str, Any]:
    """Start a redis-server on ``layout`` (restored files), check that it loaded, stop it.

    Returns what it saw (``keys``, ``load_s``); raises :class:`FreezeframeError`
    with the server's last words when it cannot load the data.
    """
    import redis
    import redis.exceptions as rx
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    before = _files(layout)
    with tempfile.TemporaryDirectory(prefix="ffredis-") as tmp:
        socket, log = Path(tmp) / "redis.sock", Path(tmp) / "redis.log"
        started = time.monotonic()
        proc = subprocess.Popen(
            argv(binary, layout, socket, log),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=tmp,
        )
        client = redis.Redis(
            unix_socket_path=str(socket), decode_responses=True, retry=Retry(NoBackoff(), 0)
        )
        try:
            while True:
                if proc.poll() is not None:
                    raise FreezeframeError(
                        f"redis-server could not load it (exit {proc.returncode}): "
                        f"{_last_words(log)}"
                    )
                if time.monotonic() - started > LOAD_TIMEOUT:
                    raise FreezeframeError(f"redis-server did not load it in {LOAD_TIMEOUT:g}s")
                try:
                    if client.ping() and not client.info("persistence").get("loading"):
                        break
                except (rx.ConnectionError, rx.BusyLoadingError, rx.TimeoutError, OSError):
                    pass
                time.sleep(0.01)
            loaded_in = time.monotonic() - started
            text = log.read_text(errors="replace")
            if "DB loaded from" not in text:
                raise FreezeframeError(
                    "redis-server started but loaded nothing (no data file where it looked)"
                )
            keyspace = client.info("keyspace")
            keys = sum(int(db.get("keys", 0)) for db in keyspace.values() if isinstance(db, dict))
            shutdown: Callable[..., Any] = client.execute_command
            with contextlib.suppress(rx.ConnectionError, OSError):  # it hangs up as it exits
                shutdown("SHUTDOWN", "NOSAVE")
            proc.wait(30)
        finally:
            client.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    after = _files(layout)
    if after != before:
        changed = sorted(
            set(before) ^ set(after) | {k for k in before if before[k] != after.get(k)}
        )
        names = ", ".join(os.path.basename(c) for c in changed)
        raise FreezeframeError(f"the check changed restored files ({names})")
    return {"keys": keys, "load_s": round(loaded_in, 3)}
