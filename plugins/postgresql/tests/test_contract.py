"""The postgresql plug-in against freezeframe-testing's contract: one private server per module."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest

from freezeframe.plugin import ApplicationPlugin
from freezeframe_postgresql import PostgresqlPlugin
from freezeframe_testing import ApplicationPluginContract
from freezeframe_testing.postgres_server import PgServer, PostgresFactory

SECRET = "Contract-secret-8Kd-postgres"  # noqa: S105 - a test server's password
PASSWORD_ENV = "FF_TEST_PG_CONTRACT_PASSWORD"  # noqa: S105 - a variable name


@pytest.fixture(scope="module")
def server(postgres_module: PostgresFactory) -> PgServer:
    """The module's server, with a role that logs in with a password."""
    srv = postgres_module.new(hba=["local all alice scram-sha-256"])
    srv.sql(f"CREATE ROLE alice LOGIN SUPERUSER PASSWORD '{SECRET}'")
    return srv


def backup_ended(server: PgServer) -> bool:
    """Whether nothing of freezeframe's is left on the server: no session (a backup
    started by ``pg_backup_start`` lives as long as its session), no replication slot."""
    [(sessions,)] = server.sql(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'freezeframe'"
    )
    [(slots,)] = server.sql("SELECT count(*) FROM pg_replication_slots")
    return sessions == slots == 0


class TestPostgresqlContract(ApplicationPluginContract):
    # No ``blocker``: the backup mode (or the checkpoint) begins in prepare and the quiesce
    # does nothing, so nothing on the server can keep it from finishing; the contract's
    # deadline test skips.

    @pytest.fixture(autouse=True)
    def password(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(PASSWORD_ENV, SECRET)

    @pytest.fixture
    def plugin_class(self) -> type[ApplicationPlugin]:
        return PostgresqlPlugin

    @pytest.fixture
    def plugin_table(self, server: PgServer) -> Mapping[str, Any]:
        return {
            "dsn": server.dsn(user="alice"),
            "data_dir": str(server.data_dir),
            "password_env": PASSWORD_ENV,
        }

    @pytest.fixture
    def resumed(self, server: PgServer) -> Callable[[], bool]:
        return lambda: backup_ended(server)

    @pytest.fixture
    def secrets(self) -> Sequence[str]:
        return [SECRET]

    @pytest.fixture
    def bad_tables(self) -> Sequence[tuple[Mapping[str, Any], str]]:
        return [
            ({}, "dsn"),
            ({"dsn": "host=/tmp", "data_dir": "relative/../x", "bin_dir": 3}, "bin_dir"),
        ]
