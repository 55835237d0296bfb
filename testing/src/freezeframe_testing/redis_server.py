"""Private redis-servers for tests: each in its own folder, on a free port and a unix socket.

``redis_server(...)`` (a fixture) starts one and kills it at teardown, also
when the test failed; :func:`start_redis` does the same for scripts
(``bench/redis_freeze.py``) that stop it themselves. The password, if any,
goes in the server's config file (mode 0600), never on a command line.

:class:`TransferWriter` is the load of the consistency tests: a separate
process that moves money between account keys in MULTI/EXEC transactions
(the total never changes) and counts them with INCR.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from freezeframe import RunRecord
from freezeframe_testing.plugin import clone_profile, need, require_tool, stop_all

__all__ = [
    "ACCOUNTS",
    "BALANCE",
    "RedisServer",
    "TransferWriter",
    "ledger_problems",
    "read_ledger",
    "redis_clone_profile",
    "redis_server",
    "seed_ledger",
    "start_redis",
]

#: The persistence setups a test server can have.
PERSISTENCE = ("rdb", "aof", "both", "none")
ACCOUNTS = 8
BALANCE = 1000


@dataclass
class RedisServer:
    """A redis-server started for a test or a benchmark."""

    data_dir: Path
    run_dir: Path  # config, log and socket: never inside the data folder
    port: int
    password: str | None
    persistence: str
    proc: subprocess.Popen[bytes]
    config: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def socket(self) -> Path:
        """Its unix socket."""
        return self.run_dir / "redis.sock"

    @property
    def unix_url(self) -> str:
        """``unix:///.../redis.sock``."""
        return f"unix://{self.socket}"

    @property
    def log(self) -> Path:
        """Its log file."""
        return self.run_dir / "redis.log"

    def client(self, **kwargs: Any) -> Any:
        """A redis-py client (strings decoded) with this server's password."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        kwargs.setdefault("decode_responses", True)
        kwargs.setdefault("socket_timeout", 30)
        kwargs.setdefault("retry", Retry(NoBackoff(), 0))  # a timeout is an answer in tests
        kwargs.setdefault("password", self.password)
        return redis.Redis(unix_socket_path=str(self.socket), **kwargs)

    def info(self, section: str) -> dict[str, Any]:
        """``INFO section``."""
        c = self.client()
        try:
            return dict(c.info(section))
        finally:
            c.close()

    def writable_within(self, seconds: float) -> bool:
        """Whether a write from a new connection is answered within ``seconds`` (false while
        clients are paused)."""
        import redis

        c = self.client(socket_timeout=seconds)
        try:
            c.incr("probe")
            return True
        except redis.TimeoutError:
            return False
        finally:
            c.close()

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.proc.poll() is None

    def stop(self) -> None:
        """Kill it (no final save: test data is thrown away), wait, remove its run folder."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_quote(text: str) -> str:
    """``text`` as one argument of a Redis config line, whatever it holds (each byte as
    ``\\xHH`` in double quotes: a space, a quote or a ``#`` would end it otherwise)."""
    return '"' + "".join(f"\\x{b:02x}" for b in os.fsencode(text)) + '"'


def _config(
    data_dir: Path,
    run_dir: Path,
    port: int,
    persistence: str,
    password: str | None,
    extra: Sequence[str],
) -> list[str]:
    lines = [
        f"port {port}",
        "bind 127.0.0.1",
        f"unixsocket {run_dir / 'redis.sock'}",
        "unixsocketperm 700",
        f"dir {redis_quote(str(data_dir))}",
        "daemonize no",
        f"logfile {redis_quote(str(run_dir / 'redis.log'))}",
        "always-show-logo no",
        "save " + ('""' if persistence in ("aof", "none") else "3600 1 300 100 60 10000"),
        "appendonly " + ("yes" if persistence in ("aof", "both") else "no"),
    ]
    if password is not None:
        lines.append(f"requirepass {redis_quote(password)}")
    return [*lines, *extra]


def start_redis(
    data_dir: Path,
    *,
    persistence: str = "rdb",
    password: str | None = None,
    config: Sequence[str] = (),
    binary: str = "redis-server",
    timeout: float = 30,
) -> RedisServer:
    """Start a redis-server on ``data_dir`` and wait until it answers PING.

    ``persistence``: ``"rdb"`` (Redis's default save points), ``"aof"`` (AOF only),
    ``"both"``, or ``"none"``. ``config`` lines are appended to its config file
    (``"save 1 1"``, ``"rename-command CONFIG \\"\\""``, ...).
    """
    if persistence not in PERSISTENCE:
        raise ValueError(f"persistence must be one of {PERSISTENCE}")
    data_dir.mkdir(parents=True, exist_ok=True)
    # A unix socket path must be short (108 bytes): not under pytest's long tmp_path.
    run_dir = Path(tempfile.mkdtemp(prefix="ffredis-"))
    last = ""
    for _ in range(5):  # another process may take the free port before redis-server binds it
        port = _free_port()
        lines = _config(data_dir, run_dir, port, persistence, password, config)
        conf = run_dir / "redis.conf"
        conf.write_text("\n".join(lines) + "\n")
        conf.chmod(0o600)
        proc = subprocess.Popen(
            [binary, str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        server = RedisServer(data_dir, run_dir, port, password, persistence, proc, list(config))
        end = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < end:
            if _answers(server):
                return server
            time.sleep(0.01)
        proc.kill()
        _, stderr = proc.communicate(timeout=30)
        err = stderr.decode(errors="replace") if stderr else ""
        log = server.log.read_text(errors="replace") if server.log.exists() else ""
        words = (err + log).strip().splitlines()
        last = words[-1] if words else f"exit {proc.returncode}"
        if "Address already in use" not in err + log:
            break
    shutil.rmtree(run_dir, ignore_errors=True)
    raise RuntimeError(f"redis-server did not start: {last}")


def _answers(server: RedisServer) -> bool:
    import redis

    if not server.socket.exists():
        return False
    c = server.client(socket_timeout=1)
    try:
        return bool(c.ping()) and not c.info("persistence").get("loading")
    except (redis.ConnectionError, redis.BusyLoadingError, redis.TimeoutError, OSError):
        return False
    finally:
        c.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start private redis-servers: ``redis_server(persistence="aof", password="s3cret")``.

    The data folder defaults to ``tmp_path / "redis"`` (``data_dir=`` to choose);
    every server is killed at teardown, also when the test failed. Skips (fails
    in CI) when redis-server or redis-py is missing.
    """
    binary = require_tool("redis-server")
    try:
        import redis  # noqa: F401
    except ImportError:
        need(False, "redis-py is not installed")
    started: list[RedisServer] = []

    def make(data_dir: Path | None = None, **kwargs: Any) -> RedisServer:
        n = len(started)
        server = start_redis(
            data_dir or tmp_path / ("redis" if n == 0 else f"redis-{n}"), binary=binary, **kwargs
        )
        started.append(server)
        return server

    yield make
    stop_all(started)


def redis_clone_profile(
    folder: Path, server: RedisServer, *, fields: str = "", then: str = ""
) -> Path:
    """``folder/profile.toml`` (:func:`~freezeframe_testing.plugin.clone_profile`): ``server``
    as application ``cache``, with the TOML ``fields`` (``capture``, ``persistence``, ...),
    a clone snapshot stage ``snap``, then ``then`` (the copy stages)."""
    application = f'plugin = "redis"\nname = "cache"\nurl = "{server.url}"\n{fields}'
    return clone_profile(folder, application, name="cache", then=then)


# -- the ledger: transfers that keep a total, counted by a sequence -----------------


def seed_ledger(client: Any, accounts: int = ACCOUNTS, balance: int = BALANCE) -> int:
    """Create ``accounts`` account keys of ``balance`` each and ``seq = 0``; returns the total."""
    client.mset({f"acct:{i}": balance for i in range(accounts)} | {"seq": 0})
    return accounts * balance


def read_ledger(client: Any, accounts: int = ACCOUNTS) -> tuple[int, int]:
    """(sum of the accounts, seq) as the server holds them."""
    values = client.mget([f"acct:{i}" for i in range(accounts)] + ["seq"])
    if any(v is None for v in values):
        raise AssertionError(f"keys missing from the data set: {values}")
    return sum(int(v) for v in values[:-1]), int(values[-1])


def ledger_problems(
    writer: TransferWriter,
    run: RunRecord,
    loaded: tuple[int, int],
    total: int,
    before: int,
    after: int,
) -> list[str]:
    """Why a restored ledger is not the instant its run froze (empty when it is).

    ``loaded``: (balance, seq) of the restored data; ``before`` and ``after``:
    what the writer had committed when the run began and right after it
    returned. Transfer ``seq + 1`` must have committed after the thaw began:
    earlier, and writes were not paused from the capture to the thaw.
    """
    balance, seq = loaded
    out = []
    if balance != total:
        out.append(f"a transfer was cut in half (balance {balance}, not {total})")
    if not before <= seq <= after:
        out.append(f"seq {seq} not in [{before}, {after}] (committed before the run, after it)")
    [app] = run.applications
    thaw, following = app.thaw_start, writer.committed_at(seq + 1)
    if thaw is None or following < thaw:
        early = "" if thaw is None else f" {thaw - following:.3f}s before the thaw"
        out.append(
            f"seq {seq}, but transfer {seq + 1} committed{early}: "
            "the backup was not taken while writes were paused"
        )
    return out


def _transfer_loop(
    socket_path: str,
    password: str | None,
    accounts: int,
    committed: Any,
    stop: Any,
    commit_log: str,
) -> None:
    """The writer process: one MULTI/EXEC transfer after another until ``stop`` is set."""
    import redis

    client = redis.Redis(unix_socket_path=socket_path, password=password, socket_timeout=60)
    rng = random.Random(os.getpid())  # noqa: S311 (test load, not cryptography)
    with open(commit_log, "a", buffering=1) as log:  # a line each: readable at once
        while not stop.is_set():
            a, b = rng.sample(range(accounts), 2)
            amount = rng.randint(1, 50)
            pipe = client.pipeline(transaction=True)
            pipe.decrby(f"acct:{a}", amount)
            pipe.incrby(f"acct:{b}", amount)
            pipe.incr("seq")
            seq = pipe.execute()[-1]
            log.write(f"{seq} {time.time()}\n")
            committed.value = int(seq)


class TransferWriter:
    """A separate process running MULTI/EXEC transfers; ``committed`` is its last seq.

    Use as a context manager; ``errors()`` tells whether the process died.
    :meth:`committed_at` tells when each transfer's EXEC returned.
    """

    def __init__(self, server: RedisServer, accounts: int = ACCOUNTS) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._committed = ctx.Value("q", 0)
        self._stop = ctx.Event()
        self._log = Path(tempfile.mkdtemp(prefix="ff-writer-")) / "commits"
        self._times: dict[int, float] = {}
        self.process = ctx.Process(
            target=_transfer_loop,
            args=(
                str(server.socket),
                server.password,
                accounts,
                self._committed,
                self._stop,
                str(self._log),
            ),
            daemon=True,
        )

    @property
    def committed(self) -> int:
        """The highest seq a transaction of the writer has committed (its EXEC returned)."""
        return int(self._committed.value)

    def wait_for(self, seq: int, timeout: float = 30) -> None:
        """Wait until the writer has committed ``seq`` (fail if it died or got stuck)."""
        end = time.monotonic() + timeout
        while self.committed < seq:
            assert self.process.is_alive(), "the writer process died"
            assert time.monotonic() < end, f"the writer is stuck at seq {self.committed}"
            time.sleep(0.005)

    def committed_at(self, seq: int) -> float:
        """When the EXEC of transfer ``seq`` returned (``time.time()``); waits for it."""
        self.wait_for(seq)
        if seq not in self._times:
            for line in self._log.read_text().splitlines():
                n, at = line.split()
                self._times[int(n)] = float(at)
        return self._times[seq]

    def __enter__(self) -> TransferWriter:
        self.process.start()
        self.wait_for(1)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.process.join(30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        shutil.rmtree(self._log.parent, ignore_errors=True)

    def died(self) -> bool:
        """Whether the process ended before it was told to stop."""
        return not self.process.is_alive() and not self._stop.is_set()
