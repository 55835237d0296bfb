"""The redis plug-in against freezeframe-testing's contract: a private redis-server."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest

from freezeframe.plugin import ApplicationPlugin
from freezeframe_redis import RedisPlugin
from freezeframe_testing import ApplicationPluginContract
from freezeframe_testing.redis_server import RedisServer

SECRET = "Contract-secret-5Tz-redis"  # noqa: S105 - a test server's password
PASSWORD_ENV = "FF_TEST_REDIS_CONTRACT_PASSWORD"  # noqa: S105 - a variable name


class TestRedisContract(ApplicationPluginContract):
    @pytest.fixture
    def server(
        self, redis_server: Callable[..., RedisServer], monkeypatch: pytest.MonkeyPatch
    ) -> RedisServer:
        monkeypatch.setenv(PASSWORD_ENV, SECRET)
        return redis_server(persistence="rdb", password=SECRET)

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
    def secrets(self) -> Sequence[str]:
        return [SECRET]

    @pytest.fixture
    def bad_tables(self) -> Sequence[tuple[Mapping[str, Any], str]]:
        return [({}, "url"), ({"url": "ftp://x"}, "url")]
