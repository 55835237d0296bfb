"""The postgresql plug-in against freezeframe-testing's contract: one private server per module."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from freezeframe.plugin import (
    ApplicationPlugin,
    Artifact,
    Deadline,
    SnapshotKind,
    copy_tree,
    under,
)
from freezeframe_postgresql import PostgresqlPlugin
from freezeframe_testing import ApplicationPluginContract
from freezeframe_testing.plugin import wait_until
from freezeframe_testing.postgres_server import PgServer, PostgresFactory

PER_FILE = frozenset({SnapshotKind.PER_FILE})
ATOMIC = frozenset({SnapshotKind.ATOMIC})
SECRET = "Contract-secret-8Kd-postgres"  # noqa: S105 - a test server's password
PASSWORD_ENV = "FF_TEST_PG_CONTRACT_PASSWORD"  # noqa: S105 - a variable name


@pytest.fixture(scope="module")
def server(postgres_module: PostgresFactory) -> PgServer:
    """The module's server, with a role that logs in with a password."""
    srv = postgres_module.new(hba=["local all alice scram-sha-256"])
    srv.sql(f"CREATE ROLE alice LOGIN SUPERUSER PASSWORD '{SECRET}'")
    return srv


def takes_a_write(server: PgServer) -> bool:
    server.sql("CREATE TABLE IF NOT EXISTS contract_probe (x int)")
    server.sql("INSERT INTO contract_probe VALUES (1)")
    return True


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
        # Once unquiesced, "base-backup" keeps its session and slot (the WAL through the
        # stop LSN) until release: the server takes writes, and nothing of ours is left
        # once the capture is released (test_each_capture_mode_completes_and_releases).
        return lambda: takes_a_write(server)

    def test_each_capture_mode_completes_and_releases(  # type: ignore[override]
        self, make_plugin: Callable[[], ApplicationPlugin], server: PgServer, tmp_path: Path
    ) -> None:
        """The contract's rule, with a view that holds a copy of the data directory (the
        completion refuses a view without one): ``complete`` writes every
        ``completed_paths()``; after ``release``, completed or not, nothing of ours is left
        on the server: no session (and so no backup mode), no slot."""
        for mode in PostgresqlPlugin.capture_modes:
            for completing in (True, False) if mode != "snapshot" else (False,):
                app = make_plugin()
                app.capture = mode
                view = tmp_path / f"view-{mode}-{completing}"
                kinds = PER_FILE if mode != "snapshot" else ATOMIC
                try:
                    app.prepare(kinds)
                    copy = under(view, server.data_dir)
                    copy.parent.mkdir(parents=True)
                    copy_tree(server.data_dir, copy)
                    app.quiesce(Deadline.after(30))
                    app.unquiesce(())
                    if completing:
                        app.complete((Artifact("c", view=view),))
                        for original in app.completed_paths():
                            assert os.path.lexists(under(view, original)), original
                finally:
                    app.unquiesce(())
                    app.release()
                    app.release()
                assert wait_until(lambda: backup_ended(server), 10), (mode, completing)
                shutil.rmtree(view)

    @pytest.fixture
    def secrets(self) -> Sequence[str]:
        return [SECRET]

    @pytest.fixture
    def bad_tables(self) -> Sequence[tuple[Mapping[str, Any], str]]:
        return [
            ({}, "dsn"),
            ({"dsn": "host=/tmp", "data_dir": "relative/../x", "bin_dir": 3}, "bin_dir"),
        ]
