"""The mariadb plug-in against freezeframe-testing's contract: one private server per module."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from freezeframe.plugin import ApplicationPlugin, SnapshotKind
from freezeframe_mariadb import MariadbPlugin
from freezeframe_testing import ApplicationPluginContract
from freezeframe_testing.mariadb_server import MariaDB, commits_within

SECRET = "Contract-secret-3Hq-mariadb"  # noqa: S105 - a test server's password
PASSWORD_ENV = "FF_TEST_MARIADB_CONTRACT_PASSWORD"  # noqa: S105 - a variable name


@pytest.fixture(scope="module")
def server(mariadb_module: MariaDB) -> MariaDB:
    """The module's server with a backup user and a table to write to."""
    mariadb_module.sql(
        f"CREATE USER backup@'%' IDENTIFIED BY '{SECRET}'",
        # RELOAD and BINLOG MONITOR for the lock and the position; the rest for mariadb-dump
        "GRANT RELOAD, BINLOG MONITOR, SELECT, SHOW VIEW, TRIGGER, EVENT ON *.* TO backup@'%'",
        "CREATE DATABASE shop",
        "CREATE TABLE shop.t (id INT PRIMARY KEY, v INT NOT NULL) ENGINE=InnoDB",
        "INSERT INTO shop.t VALUES (1, 0)",
    )
    return mariadb_module


def writes_within(server: MariaDB, seconds: float) -> bool:
    """Whether a commit to ``shop.t`` goes through within ``seconds``."""
    return commits_within(server, "UPDATE shop.t SET v = v + 1 WHERE id = 1", seconds)


class TestMariadbContract(ApplicationPluginContract):
    @pytest.fixture(autouse=True)
    def password(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(PASSWORD_ENV, SECRET)

    @pytest.fixture
    def plugin_class(self) -> type[ApplicationPlugin]:
        return MariadbPlugin

    @pytest.fixture
    def plugin_table(self, server: MariaDB) -> Mapping[str, Any]:
        return {"unix_socket": str(server.socket), "user": "backup", "password_env": PASSWORD_ENV}

    @pytest.fixture
    def resumed(self, server: MariaDB) -> Callable[[], bool]:
        return lambda: writes_within(server, 2)

    @pytest.fixture
    def blocker(self, server: MariaDB) -> Callable[[], AbstractContextManager[None]]:
        """Another session holds ``LOCK TABLES shop.t WRITE``: the backup lock
        (``BACKUP STAGE START``) waits for it to be released."""

        @contextmanager
        def table_locked() -> Iterator[None]:
            other = server.connect(autocommit=True)
            try:
                with other.cursor() as cur:
                    cur.execute("LOCK TABLES shop.t WRITE")
                yield
            finally:
                other.close()  # the server releases the session's table locks

        return table_locked

    @pytest.fixture
    def kinds(self) -> frozenset[SnapshotKind]:
        return frozenset({SnapshotKind.ATOMIC})  # a live datadir: atomic snapshots only

    @pytest.fixture
    def secrets(self) -> Sequence[str]:
        return [SECRET]

    @pytest.fixture
    def bad_tables(self, tmp_path: Path) -> Sequence[tuple[Mapping[str, Any], str]]:
        return [
            ({"unix_socket": "/run/x.sock"}, "user"),
            ({"user": "backup", "port": 0, "host": "127.0.0.1"}, "port"),
            ({"unix_socket": "/run/x.sock", "user": "backup", "lock": "sometimes"}, "lock"),
        ]
