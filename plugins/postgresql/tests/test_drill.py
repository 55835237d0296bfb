"""The drill of a restored PostgreSQL copy, against real servers: nothing is mocked.

One cluster with data checksums (initdb --data-checksums), two databases, tables with
indexes, is backed up through the real engine (a clone snapshot stage: the backup mode,
completed with its WAL; and, once, the logical capture). Each test restores the run into
a fresh folder, as a drill does, and enters the plug-in's drill on it: a good copy
recovers, passes pg_amcheck and pg_checksums and answers SQL through everything the
drill hands out; a copy with one flipped byte in a table's data file fails both checks,
which name the file and the table; a copy that cannot start fails ``start``. The server
a drill started is gone after its block, also when the block raised.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from freezeframe import RunRecord, RunStatus, Table
from freezeframe.engine import Engine
from freezeframe.plugin import CheckFailed, DrillContext
from freezeframe.profile import load_profile
from freezeframe.registry import build_registry
from freezeframe_postgresql import PostgresqlPlugin
from freezeframe_testing.damage import flip_byte
from freezeframe_testing.plugin import clone_profile, restored
from freezeframe_testing.postgres_server import PgServer, PostgresFactory, create_bank
from freezeframe_testing.procs import in_session

APP = "bank"
ITEMS = 500


@dataclass(frozen=True)
class Backup:
    """A succeeded run of the cluster, and the profile's plug-in table."""

    server: PgServer
    engine: Engine
    run: RunRecord
    fields: dict[str, Any]


def back_up(server: PgServer, folder: Path, **fields: Any) -> Backup:
    """One run of ``server`` (its DSN to database shop) through a clone snapshot stage."""
    fields = {"dsn": server.dsn(dbname="shop"), **fields}
    table = "".join(f"{k} = {json.dumps(v)}\n" for k, v in fields.items())
    profile = clone_profile(folder, f'plugin = "postgresql"\nname = "{APP}"\n{table}', name="drill")
    registry = build_registry()
    engine = Engine(load_profile(profile, registry), registry)
    run = engine.backup().record
    assert run.status == RunStatus.SUCCEEDED, run.error
    return Backup(server, engine, run, fields)


@pytest.fixture(scope="module")
def cluster(postgres_module: PostgresFactory) -> PgServer:
    """The bank in postgres, 500 items in shop; every page frozen and checkpointed before
    any backup, so that no recovery replays an image of them over a damaged page."""
    server = postgres_module.new(initdb_args=["--data-checksums"])
    create_bank(server)
    server.sql("CREATE DATABASE shop TEMPLATE postgres")
    server.sql("CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL)", dbname="shop")
    items = "INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, %s) g"
    server.sql(items, (ITEMS,), dbname="shop")
    for db in ("postgres", "shop"):
        server.sql("VACUUM (FREEZE)", dbname=db)
    server.sql("CHECKPOINT")
    return server


@pytest.fixture(scope="module")
def physical(cluster: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Backup:
    backup = back_up(cluster, tmp_path_factory.mktemp("physical"))
    assert backup.run.applications[0].facts["method"] == "backup-mode"
    return backup


@pytest.fixture
def drill_of(postgres: PostgresFactory) -> Any:
    """Restore a backup's run into a fresh folder, as a drill does, and give the plug-in
    and the DrillContext of its application (its facts and capture from the run)."""

    def make(backup: Backup) -> tuple[PostgresqlPlugin, DrillContext, Path]:
        scratch = postgres.folder("ffpg-drill-", owner="root")
        root = scratch / "root"
        backup.engine.restore(backup.run.run_id, root)
        work = scratch / "work"
        work.mkdir(mode=0o711)
        [app] = backup.run.applications
        plugin = PostgresqlPlugin(APP, Table(dict(backup.fields), base_dir=scratch))
        plugin.capture = app.capture
        ctx = DrillContext(APP, root, work, facts=app.facts, capture=app.capture)
        return plugin, ctx, restored(root, backup.server.data_dir)

    return make


def results(ctx: DrillContext) -> dict[str, tuple[str, str]]:
    return {r.name: (r.status, r.detail) for r in ctx.results}


def gone(ctx: DrillContext) -> bool:
    """Every process the drill started has ended, and nothing is left in its session."""
    procs = ctx.spawned()
    assert procs, "the drill started no process"
    return all(p.poll() is not None and not in_session(p.pid) for p in procs)


def test_a_good_copy_passes_every_deep_check_and_answers_sql(
    physical: Backup, drill_of: Any
) -> None:
    plugin, ctx, data_dir = drill_of(physical)
    assert plugin.answers_sql
    with plugin.drill(ctx) as running:
        assert running is not None and running.query is not None
        [server] = ctx.spawned()
        assert server.poll() is None and in_session(server.pid)
        # the profile's database, through the query the profile's sql checks use
        assert running.query("SELECT count(*) FROM items", 30) == ITEMS
        assert running.query("SELECT current_database()", 30) == "shop"
        with pytest.raises(CheckFailed, match="statement timeout"):
            running.query("SELECT pg_sleep(30)", 0.5)
        # a command check's variables reach the copy, never the original
        conn = running.connection
        assert conn["DBNAME"] == "shop" and conn["USER"] == "postgres"
        assert Path(conn["HOST"]).is_relative_to(ctx.work)
        assert conn["HOST"] != str(physical.server.socket_dir)
        psql = [str(physical.server.bindir / "psql"), "-XAt", "-c"]
        sql = "SELECT current_database() || ' ' || sum(balance) FROM accounts"
        for argv, env in (
            ([*psql, "SELECT count(*) FROM items"], running.client_env),
            ([*psql, sql, conn["URL"].replace("/shop", "/postgres")], {}),
        ):
            out = subprocess.run(
                argv, env={**os.environ, **env}, capture_output=True, text=True, timeout=60
            )
            assert out.returncode == 0, out.stderr
            assert out.stdout.strip() in (str(ITEMS), "postgres 10000")
    assert gone(ctx)
    found = results(ctx)
    assert [name for name in found] == ["start", "recovery", "amcheck", "checksums"]
    assert all(status == "passed" for status, _ in found.values()), found
    facts = physical.run.applications[0].facts
    assert f"the backup recorded {facts['stop_lsn']}" in found["recovery"][1]
    assert found["amcheck"][1].startswith("2 databases: ")
    assert found["checksums"][1].endswith("every checksum right")
    assert not (data_dir / "postmaster.pid").exists(), "stopped cleanly"
    # the original ran on beside its copy, untouched
    assert physical.server.sql("SELECT count(*) FROM items", dbname="shop") == [(ITEMS,)]


def test_a_flipped_byte_in_a_table_fails_amcheck_and_checksums_naming_it(
    physical: Backup, drill_of: Any
) -> None:
    [(path,)] = physical.server.sql("SELECT pg_relation_filepath('items')", dbname="shop")
    plugin, ctx, data_dir = drill_of(physical)
    flip_byte(data_dir, data_dir / path, data_dir / path)
    with plugin.drill(ctx) as running:
        assert running is not None  # it starts: nothing reads the table before the checks
    assert gone(ctx)
    found = results(ctx)
    assert found["start"][0] == found["recovery"][0] == "passed", found
    status, amcheck = found["amcheck"]
    assert status == "failed", found
    assert 'heap table "shop.public.items"' in amcheck and f"relation {path}" in amcheck
    assert "\n" not in amcheck
    status, checksums = found["checksums"]
    assert status == "failed", found
    assert checksums.startswith(f"1 bad checksum: {path} block ")
    assert ctx.failed


def test_a_copy_that_does_not_start_fails_the_start_check(physical: Backup, drill_of: Any) -> None:
    plugin, ctx, data_dir = drill_of(physical)
    (data_dir / "global" / "pg_control").unlink()
    with plugin.drill(ctx) as running:
        assert running is None
    assert gone(ctx)
    [result] = ctx.results
    assert (result.name, result.status) == ("start", "failed")
    assert "did not start: " in result.detail and "global/pg_control" in result.detail
    assert "\n" not in result.detail


def test_the_server_is_stopped_when_the_block_raises(physical: Backup, drill_of: Any) -> None:
    plugin, ctx, _ = drill_of(physical)
    with pytest.raises(RuntimeError, match="a check broke"), plugin.drill(ctx) as running:
        assert running is not None
        raise RuntimeError("a check broke")
    assert gone(ctx)
    assert [r.name for r in ctx.results] == ["start", "recovery", "amcheck"]


def test_a_logical_capture_is_drilled_on_the_cluster_its_restore_built(
    cluster: PgServer, tmp_path_factory: pytest.TempPathFactory, drill_of: Any
) -> None:
    folder = tmp_path_factory.mktemp("logical")
    backup = back_up(cluster, folder, capture="logical", dump_path="/freezeframe-dumps/bank")
    plugin, ctx, data_dir = drill_of(backup)
    with plugin.drill(ctx) as running:
        assert running is not None and running.query is not None
        assert running.query("SELECT count(*) FROM items", 30) == ITEMS
        assert running.connection["DBNAME"] == "shop"
    assert gone(ctx)
    found = results(ctx)
    assert all(status == "passed" for status, _ in found.values()), found
    assert "the backup recorded" not in found["recovery"][1]  # another cluster's LSNs
    assert found["start"][1].endswith(f"on {data_dir}")
