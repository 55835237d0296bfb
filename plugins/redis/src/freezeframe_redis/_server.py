"""Talking to one Redis server: the URL, the connection, and errors that never hold the secret.

redis-py is imported here, lazily, the first time a connection is made, so
that loading the plug-in (``freezeframe --help``) costs nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from freezeframe.plugin import (
    Deadline,
    FreezeframeError,
    Secret,
)

if TYPE_CHECKING:
    import redis

__all__ = ["Endpoint", "Server", "ServerError", "parse_url", "version_tuple"]

#: How long connecting, and any one command, may take.
COMMAND_TIMEOUT = 10.0
#: How long past the deadline a command of a :meth:`Server.bounded` block may wait for its reply.
REPLY_GRACE = 0.5
#: How often a wait asks the server again (INFO is cheap; Redis notices a finished
#: child process only every 1/hz s anyway, 100 ms at the default hz 10).
POLL = 0.01
SCHEMES = ("redis", "unix")


@dataclass(frozen=True)
class Endpoint:
    """Where the server listens, parsed from ``url``; holds no secret."""

    scheme: str
    host: str | None = None
    port: int = 6379
    socket: str | None = None
    db: int = 0
    username: str | None = None

    @property
    def where(self) -> str:
        """The URL again, for messages (there is no password in it to hide)."""
        user = f"{self.username}@" if self.username else ""
        if self.socket is not None:
            return f"unix://{user}{self.socket}" + (f"?db={self.db}" if self.db else "")
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{self.scheme}://{user}{host}:{self.port}/{self.db}"


def parse_url(url: str) -> Endpoint:
    """``redis://[user@]host[:port][/db]`` or ``unix://[user@]/path[?db=N]``.

    Raises ``ValueError`` with a message that never repeats the URL (it might hold a password).
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ValueError("not a URL (expected redis://host:port/db or unix:///path)") from None
    if parts.scheme == "rediss":
        raise ValueError("TLS (rediss://) is not supported yet: use redis:// or unix://")
    if parts.scheme not in SCHEMES:
        raise ValueError(f"the scheme must be one of {', '.join(s + '://' for s in SCHEMES)}")
    if parts.password is not None:
        raise ValueError("must not hold a password: use password_env or password_file")
    if parts.fragment:
        raise ValueError("must not have a #fragment")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"db"})
    if unknown:
        raise ValueError(f"unsupported query parameter(s): {', '.join(unknown)} (only db)")
    username = parts.username or None
    db_text = query["db"][0] if "db" in query else None
    if parts.scheme == "unix":
        if not parts.path.startswith("/") or parts.netloc.split("@")[-1]:
            raise ValueError("a unix URL is unix:///absolute/path/to/redis.sock")
        return Endpoint("unix", socket=parts.path, db=_db(db_text), username=username)
    if not parts.hostname:
        raise ValueError("names no host (expected redis://host:port/db)")
    path = parts.path.strip("/")
    if path and db_text is not None:
        raise ValueError("gives the database twice (path and ?db=)")
    return Endpoint(
        parts.scheme,
        host=parts.hostname,
        port=port or 6379,
        db=_db(path or db_text),
        username=username,
    )


def _db(text: str | None) -> int:
    if text is None or text == "":
        return 0
    if not text.isdigit():
        raise ValueError("the database must be a number (redis://host:port/0)")
    return int(text)


def version_tuple(text: str) -> tuple[int, ...]:
    """``"7.0.15"`` → ``(7, 0, 15)``; stops at the first part that is not a number."""
    out = []
    for part in text.split("."):
        digits = ""
        for ch in part:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        out.append(int(digits))
        if len(digits) != len(part):
            break
    return tuple(out)


class ServerError(FreezeframeError):
    """A Redis command failed; the message names the server and never holds the secret.

    ``reason`` is one of ``"connect"``, ``"auth"``, ``"permission"``, ``"unknown-command"``,
    ``"response"``, ``"timeout"`` (a wait reached its deadline).
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class Server:
    """A connection pool to one server, made on first use; thread-safe as redis-py's is."""

    def __init__(self, endpoint: Endpoint, secret: Secret | None) -> None:
        self.endpoint = endpoint
        self._secret = secret
        self._client: redis.Redis | None = None
        self._bounded: tuple[Deadline, redis.Redis] | None = None

    def _redact(self, text: str) -> str:
        value = self._secret.reveal() if self._secret is not None else ""
        return text.replace(value, "***") if value else text

    def client(self) -> redis.Redis:
        """The redis-py client (no command sent yet)."""
        if self._client is None:
            self._client = self._new_client(COMMAND_TIMEOUT)
        return self._client

    def _new_client(self, timeout: float) -> redis.Redis:
        """A client whose connect, handshake and every reply may take ``timeout`` seconds."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        e = self.endpoint
        return redis.Redis(
            host=e.host or "localhost",
            port=e.port,
            unix_socket_path=e.socket,
            db=e.db,
            username=e.username,
            password=self._secret.reveal() if self._secret is not None else None,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # One retry on a broken connection (a restarted server); our waits do the rest.
            retry=Retry(NoBackoff(), 1),
            decode_responses=True,
        )

    @contextmanager
    def bounded(self, deadline: Deadline) -> Iterator[None]:
        """Within the block, a command whose reply has not come by the deadline (and
        ``REPLY_GRACE``) fails with reason ``"timeout"``: a busy server (a slow command,
        ``DEBUG SLEEP``) answers nobody, and the freeze window must not wait for it.

        The block's commands go through a connection of their own, whose connect and
        login are bounded by what is left of the deadline when the block begins. One
        block at a time (the plug-in's quiesce, under its lock).
        """
        client = self._new_client(max(0.0, deadline.remaining()) + REPLY_GRACE)
        self._bounded = (deadline, client)
        try:
            yield
        finally:
            self._bounded = None
            client.close()

    def _call_by(self, deadline: Deadline, client: redis.Redis, args: tuple[str | int, ...]) -> Any:
        """``args`` through ``client``, its reply awaited until the deadline (then redis-py's
        ``TimeoutError``)."""
        import redis.exceptions as rx

        pool = client.connection_pool
        conn: Any = pool.get_connection()  # redis-py's connection and parser are untyped
        parse: Callable[..., Any] = client.parse_response
        try:
            conn.send_command(*args)
            if not conn.can_read(timeout=max(0.0, deadline.remaining()) + REPLY_GRACE):
                conn.disconnect()  # the late reply must not meet the next command
                raise rx.TimeoutError("no answer")
            return parse(conn, args[0])
        finally:
            pool.release(conn)

    def call(self, *args: str | int) -> Any:
        """Run one command; any failure becomes a :class:`ServerError`."""
        import redis.exceptions as rx

        name = " ".join(str(a) for a in args[:2] if isinstance(a, str) and a.isupper())
        bounded = self._bounded
        try:
            if bounded is None:
                execute: Callable[..., Any] = self.client().execute_command
                return execute(*args)
            return self._call_by(*bounded, args)
        except (rx.AuthenticationError, rx.AuthenticationWrongNumberOfArgsError) as e:
            reason, text = "auth", f"authentication failed: {e}"
        except rx.NoPermissionError as e:
            reason, text = "permission", f"{name}: not permitted: {e}"
        except (rx.ConnectionError, rx.TimeoutError, OSError) as e:
            msg = str(e)
            if bounded is not None and isinstance(e, rx.TimeoutError):
                reason, text = "timeout", f"{name}: no answer by the deadline (the server is busy)"
            elif "NOAUTH" in msg or "Authentication required" in msg:
                reason, text = "auth", "authentication required: set password_env or password_file"
            else:
                reason, text = "connect", f"cannot reach it: {msg or type(e).__name__}"
        except rx.ResponseError as e:
            msg = str(e)
            if msg.startswith(("NOAUTH", "WRONGPASS")):
                reason, text = "auth", f"authentication failed: {msg}"
            elif msg.lower().startswith("unknown command"):
                reason, text = "unknown-command", f"{name}: unknown command (renamed or disabled?)"
            else:
                reason, text = "response", f"{name}: {msg}"
        except rx.RedisError as e:
            reason, text = "response", f"{name}: {type(e).__name__}: {e}"
        if reason == "auth" and self._secret is None:
            text = "authentication required: set password_env or password_file"
        first = text.strip().splitlines()[0] if text.strip() else reason
        message = self._redact(f"Redis at {self.endpoint.where}: {first}")
        raise ServerError(message, reason) from None

    def info(self, section: str) -> dict[str, Any]:
        """``INFO section`` as a dict (numbers already numbers)."""
        result = self.call("INFO", section)
        return dict(result) if isinstance(result, Mapping) else {}

    def config_get(self, name: str) -> str | None:
        """``CONFIG GET name``; ``None`` when CONFIG is renamed, disabled or not permitted."""
        try:
            result = self.call("CONFIG", "GET", name)
        except ServerError as e:
            if e.reason in ("unknown-command", "permission"):
                return None
            raise
        if isinstance(result, Mapping) and name in result:
            return str(result[name])
        return None

    def wait(
        self,
        what: str,
        done: Callable[[dict[str, Any]], bool],
        deadline: Deadline,
        section: str = "persistence",
    ) -> dict[str, Any]:
        """Poll ``INFO section`` until ``done(info)``; ``ServerError`` at the deadline."""
        while True:
            info = self.info(section)
            if done(info):
                return info
            if deadline.expired():
                raise ServerError(
                    f"Redis at {self.endpoint.where}: still {what} at the deadline", "timeout"
                )
            time.sleep(min(POLL, max(0.0, deadline.remaining())))

    def close(self) -> None:
        """Drop every connection (a new one is made on next use)."""
        if self._client is not None:
            self._client.close()
            self._client = None
