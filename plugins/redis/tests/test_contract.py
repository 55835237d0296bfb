"""The redis plug-in against freezeframe-testing's contract: a private redis-server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pytest

from freezeframe.plugin import ApplicationPlugin
from freezeframe_redis import RedisPlugin
from freezeframe_testing import ApplicationPluginContract
from freezeframe_testing.redis_server import RedisServer

SECRET = "Contract-secret-5Tz-redis"  # noqa: S105 - a test server's password
PASSWORD_ENV = "FF_TEST_REDIS_CONTRACT_PASSWORD"  # noqa: S105 - a variable name
#: How long the blocker keeps the server busy: past the quiesce's 1 s deadline and the
#: contract's grace after it, so a quiesce that waits for the server fails the test.
SLEEP = 7


class TestRedisContract(ApplicationPluginContract):
    @pytest.fixture
    def server(
        self, redis_server: Callable[..., RedisServer], monkeypatch: pytest.MonkeyPatch
    ) -> RedisServer:
        monkeypatch.setenv(PASSWORD_ENV, SECRET)
        # DEBUG (for the blocker's DEBUG SLEEP) from local connections only
        return redis_server(
            persistence="rdb", password=SECRET, config=["enable-debug-command local"]
        )

    @pytest.fixture
    def plugin_class(self) -> type[ApplicationPlugin]:
        return RedisPlugin

    @pytest.fixture
    def plugin_table(self, server: RedisServer) -> Mapping[str, Any]:
        return {"url": server.url, "password_env": PASSWORD_ENV}

    @pytest.fixture
    def resumed(self, server: RedisServer) -> Callable[[], bool]:
        return lambda: server.writable_within(0.5)

    @pytest.fixture
    def blocker(self, server: RedisServer) -> Callable[[], AbstractContextManager[None]]:
        """Another client runs ``DEBUG SLEEP``: the server (one thread) answers nobody
        until it ends, by itself, ``SLEEP`` seconds later; leaving waits for that."""

        @contextmanager
        def busy() -> Iterator[None]:
            client = server.client(socket_timeout=SLEEP + 30)
            sleeper = threading.Thread(
                target=client.execute_command, args=("DEBUG", "SLEEP", SLEEP)
            )
            sleeper.start()
            try:
                time.sleep(0.2)  # the sleep has begun
                yield
            finally:
                sleeper.join(SLEEP + 30)
                client.close()

        return busy

    @pytest.fixture
    def secrets(self) -> Sequence[str]:
        return [SECRET]

    @pytest.fixture
    def bad_tables(self) -> Sequence[tuple[Mapping[str, Any], str]]:
        return [
            ({}, "url"),
            ({"url": "ftp://x"}, "url"),
            ({"url": "redis://h", "persistence": "aof"}, "persistence"),
        ]
