"""The postgresql plug-in against real PostgreSQL servers: fields, check(), the backup mode,
the atomic-snapshot refusal, restore preparation. Nothing is mocked."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from freezeframe import (
    ConfigError,
    Deadline,
    FreezeframeError,
    QuiesceError,
    RunStatus,
    SnapshotKind,
    Table,
)
from freezeframe.catalog import Catalog
from freezeframe.engine import Engine
from freezeframe.profile import load_profile
from freezeframe.registry import Registry
from freezeframe_postgresql import PostgresqlPlugin
from freezeframe_testing.plugin import need, wait_until
from freezeframe_testing.postgres_server import (
    PgServer,
    PostgresFactory,
    chown_to_postgres,
)

PASSWORD = "Tr0ub4dor-and-3-horse-staples"  # noqa: S105
PER_FILE = frozenset({SnapshotKind.PER_FILE})
ATOMIC = frozenset({SnapshotKind.ATOMIC})


def plugin(base: Path, capture: str = "base-backup", **fields: object) -> PostgresqlPlugin:
    """The plug-in, in capture mode ``capture`` (as the profile would set it)."""
    p = PostgresqlPlugin("ledger", Table(fields, base_dir=base))
    p.capture = capture
    return p


def one_line_naming_the_application(e: BaseException) -> str:
    text = str(e)
    assert "\n" not in text, text
    assert "'ledger'" in text, text
    return text


@pytest.fixture(scope="module")
def server(postgres_module: PostgresFactory) -> PgServer:
    """One server for the read-only tests, with three roles besides the superuser:
    alice (password; may back up), bob (may log in, nothing else), carol (may back up)."""
    srv = postgres_module.new(hba=["local all alice scram-sha-256"])
    grants = (
        "GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean), pg_backup_stop(boolean)"
        " TO {role}; GRANT pg_read_all_settings TO {role}"
    )
    srv.sql(f"CREATE ROLE alice LOGIN PASSWORD '{PASSWORD}'")
    srv.sql("CREATE ROLE bob LOGIN")
    srv.sql("CREATE ROLE carol LOGIN")
    for role in ("alice", "carol"):
        for statement in grants.format(role=role).split("; "):
            srv.sql(statement)
    return srv


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("FF_TEST_PG_PASSWORD", PASSWORD)
    yield "FF_TEST_PG_PASSWORD"


# -- fields ------------------------------------------------------------------------


def test_dsn_is_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        plugin(tmp_path)
    assert e.value.field == "dsn"


@pytest.mark.parametrize(
    "dsn",
    ["postgresql://alice:hunter2-secret@localhost/db", "host=/run/postgresql password=hunter2"],
)
def test_a_password_in_the_dsn_is_refused_without_repeating_it(tmp_path: Path, dsn: str) -> None:
    with pytest.raises(ConfigError) as e:
        plugin(tmp_path, dsn=dsn)
    assert e.value.field == "dsn"
    assert "password_env" in str(e.value)
    assert "hunter2" not in str(e.value)


@pytest.mark.parametrize(
    ("dsn", "says"),
    [("host=/tmp nonsense=1", 'invalid connection option "nonsense"'), ("garbage", "")],
)
def test_a_dsn_libpq_cannot_parse_is_a_field_error(tmp_path: Path, dsn: str, says: str) -> None:
    with pytest.raises(ConfigError) as e:
        plugin(tmp_path, dsn=dsn)
    assert e.value.field == "dsn" and "not a libpq connection string" in str(e.value)
    assert says in str(e.value)


def test_a_malformed_dsn_that_may_hold_a_password_is_not_quoted(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        plugin(tmp_path, dsn="host=/tmp password='unterminated-s3cret")
    assert "s3cret" not in str(e.value)


def test_password_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FF_NOT_SET", raising=False)
    with pytest.raises(ConfigError) as e:
        plugin(tmp_path, dsn="host=/tmp", password_env="FF_NOT_SET")  # noqa: S106
    assert e.value.field == "password_env" and "FF_NOT_SET is not set" in str(e.value)
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o644)
    with pytest.raises(ConfigError) as e:
        plugin(tmp_path, dsn="host=/tmp", password_file="pw")  # noqa: S106
    assert e.value.field == "password_file" and "chmod 600" in str(e.value)
    assert PASSWORD not in str(e.value)
    monkeypatch.setenv("FF_SET", PASSWORD)
    with pytest.raises(ConfigError) as e:
        plugin(tmp_path, dsn="host=/tmp", password_env="FF_SET", password_file="pw")  # noqa: S106
    assert "not both" in str(e.value)
    p = plugin(tmp_path, dsn="host=/tmp", data_dir="data", bin_dir="/usr/bin")
    assert p.data_dir == tmp_path / "data" and p.bin_dir == Path("/usr/bin")


def test_an_unknown_field_is_reported_by_the_profile(
    tmp_path: Path, write_profile: Callable[[str], Path], registry: Registry
) -> None:
    from freezeframe import ProfileError

    path = write_profile(f"""
        [profile]
        name = "p"

        [[application]]
        plugin = "postgresql"
        name = "ledger"
        dsn = "host=/tmp"
        port = 5432

        [[backup]]
        backend = "clone"
        name = "snap"
        dir = "{tmp_path / "snaps"}"
    """)
    with pytest.raises(ProfileError) as e:
        load_profile(path, registry)
    assert 'field "port": unknown field' in str(e.value)


# -- check -------------------------------------------------------------------------


def test_check_passes_and_finds_the_data_directory(server: PgServer, tmp_path: Path) -> None:
    p = plugin(tmp_path, dsn=server.dsn())
    p.check()
    assert list(p.data_paths()) == [server.data_dir]
    configured = plugin(tmp_path, dsn=server.dsn(), data_dir=str(server.data_dir))
    configured.check()


def test_check_passes_for_a_role_granted_the_backup_functions(
    server: PgServer, tmp_path: Path
) -> None:
    plugin(tmp_path, dsn=server.dsn(user="carol")).check()


@pytest.mark.parametrize("how", ["env", "file"])
def test_check_with_the_right_and_a_wrong_password(
    server: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    def made(password: str) -> PostgresqlPlugin:
        if how == "env":
            monkeypatch.setenv("FF_TEST_PG_PASSWORD", password)
            return plugin(tmp_path, dsn=server.dsn("alice"), password_env="FF_TEST_PG_PASSWORD")  # noqa: S106
        secret = tmp_path / "pw"
        secret.write_text(password + "\n")
        secret.chmod(0o600)
        return plugin(tmp_path, dsn=server.dsn("alice"), password_file=str(secret))

    made(PASSWORD).check()
    wrong = made("Wr0ng-" + PASSWORD)
    with pytest.raises(FreezeframeError) as e:
        wrong.check()
    text = one_line_naming_the_application(e.value)
    assert 'password authentication failed for user "alice"' in text
    assert PASSWORD not in text and "Wr0ng" not in text
    assert PASSWORD not in repr(wrong.describe())


def test_check_without_a_password_for_a_role_that_needs_one(
    server: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
    with pytest.raises(FreezeframeError) as e:
        plugin(tmp_path, dsn=server.dsn("alice")).check()
    assert "no password supplied" in one_line_naming_the_application(e.value)


def test_check_with_a_wrong_dsn(server: PgServer, tmp_path: Path) -> None:
    with pytest.raises(FreezeframeError) as e:
        plugin(tmp_path, dsn=server.dsn(dbname="no_such_db")).check()
    assert 'database "no_such_db" does not exist' in one_line_naming_the_application(e.value)
    with pytest.raises(FreezeframeError) as e:
        plugin(tmp_path, dsn=f"host={tmp_path / 'nowhere'} port=5432").check()
    assert "No such file or directory" in one_line_naming_the_application(e.value)


def test_check_when_the_server_is_down(postgres: PostgresFactory, tmp_path: Path) -> None:
    srv = postgres.new()
    p = plugin(tmp_path, dsn=srv.dsn())
    p.check()
    srv.stop()
    with pytest.raises(FreezeframeError) as e:
        p.check()
    text = one_line_naming_the_application(e.value)
    assert "cannot connect" in text and str(srv.socket_dir) in text


def test_check_refuses_a_role_without_the_backup_privileges(
    server: PgServer, tmp_path: Path
) -> None:
    with pytest.raises(FreezeframeError) as e:
        plugin(tmp_path, dsn=server.dsn("bob")).check()
    text = one_line_naming_the_application(e.value)
    assert "may not read data_directory" in text and "GRANT pg_read_all_settings TO bob" in text
    told = plugin(tmp_path, dsn=server.dsn("bob"), data_dir=str(server.data_dir))
    with pytest.raises(FreezeframeError) as e:
        told.check()
    text = one_line_naming_the_application(e.value)
    assert "may not run pg_backup_start/pg_backup_stop" in text
    assert "GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean)" in text


def test_check_refuses_a_data_dir_that_is_not_the_servers(
    server: PgServer, postgres: PostgresFactory, tmp_path: Path
) -> None:
    other = postgres.new(start=False)
    p = plugin(tmp_path, dsn=server.dsn(), data_dir=str(other.data_dir))
    with pytest.raises(FreezeframeError) as e:
        p.check()
    assert "is not this server's data directory" in one_line_naming_the_application(e.value)
    # For a role that may not read data_directory, the control file's system identifier
    # still tells another cluster from the server's own.
    p = plugin(tmp_path, dsn=server.dsn("bob"), data_dir=str(other.data_dir))
    with pytest.raises(FreezeframeError) as e:
        p.check()
    assert "is another cluster's data directory" in one_line_naming_the_application(e.value)
    p = plugin(tmp_path, dsn=server.dsn(), data_dir=str(tmp_path / "absent"))
    with pytest.raises(FreezeframeError) as e:
        p.check()
    assert "is not this server's data directory" in one_line_naming_the_application(e.value)


def test_engine_check_reports_each_failure_as_one_line(
    server: PgServer, tmp_path: Path, write_profile: Callable[[str], Path], registry: Registry
) -> None:
    path = write_profile(f"""
        [profile]
        name = "p"

        [[application]]
        plugin = "postgresql"
        name = "ledger"
        dsn = "{server.dsn("bob")}"
        data_dir = "{server.data_dir}"

        [[backup]]
        backend = "clone"
        name = "snap"
        dir = "{tmp_path / "snaps"}"
    """)
    problems = Engine(load_profile(path, registry), registry).check()
    assert len(problems) == 1 and "\n" not in problems[0]
    assert problems[0].startswith("application 'ledger': ")
    assert "pg_backup_start" in problems[0]


# -- prepare, quiesce, unquiesce ---------------------------------------------------


def freezeframe_sessions(srv: PgServer) -> int:
    return int(
        srv.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'freezeframe'")[0][
            0
        ]
    )


def slots(srv: PgServer) -> list[str]:
    return [r[0] for r in srv.sql("SELECT slot_name FROM pg_replication_slots")]


def session_gone(srv: PgServer) -> bool:
    """Whether freezeframe's session and its slot are gone (the backend exits just after
    the client closed the connection)."""
    return wait_until(lambda: freezeframe_sessions(srv) == 0 and slots(srv) == [], 10)


def test_backup_mode_lives_on_a_held_session_unquiesce_ends_it_and_release_closes_it(
    server: PgServer, tmp_path: Path
) -> None:
    p = plugin(tmp_path, dsn=server.dsn())
    p.check()
    p.prepare(PER_FILE)
    try:
        facts = p.describe()
        assert facts["method"] == "backup-mode"
        assert facts["start_lsn"] and facts["server_version"].startswith("15")
        assert wait_until(lambda: freezeframe_sessions(server) == 1, 10)  # check()'s is gone
        [slot] = slots(server)
        assert facts["wal_kept_by"] == f"temporary replication slot {slot}"
        p.quiesce(Deadline.after(5))
        server.sql("CREATE TABLE IF NOT EXISTS t (x int)")  # writers go on
        server.sql("INSERT INTO t VALUES (1)")
    finally:
        p.unquiesce(())
    facts = p.describe()
    assert facts["stop_lsn"] and facts["wal_bytes_during_backup"] > 0
    # The backup mode has ended: another one may begin and end on another session ...
    with server.connect() as conn:
        conn.execute("SELECT pg_backup_start('probe', true)")
        conn.execute("SELECT pg_backup_stop(false)")
    # ... while the session and its slot keep the WAL through the stop LSN for complete().
    assert freezeframe_sessions(server) == 1 and slots(server) == [slot]
    p.unquiesce(())  # idempotent: the stop is not asked twice, the slot stays
    assert slots(server) == [slot] and p.describe()["stop_lsn"] == facts["stop_lsn"]
    p.release()
    assert session_gone(server)
    p.release()  # idempotent
    p.unquiesce(())


def test_atomic_snapshots_get_a_checkpoint_and_no_backup_mode(
    server: PgServer, tmp_path: Path
) -> None:
    p = plugin(tmp_path, "snapshot", dsn=server.dsn())
    p.prepare(ATOMIC)
    try:
        assert p.describe()["method"] == "crash-consistent"
        assert p.describe()["checkpoint_ms"] is not None
        assert slots(server) == []
        # No backup is running: one may begin and end on another session.
        with server.connect() as conn:
            conn.execute("SELECT pg_backup_start('probe', true)")
            conn.execute("SELECT pg_backup_stop(false)")
    finally:
        p.unquiesce(())
    assert session_gone(server)
    assert p.describe()["stop_lsn"]


def test_quiesce_without_prepare_fails(server: PgServer, tmp_path: Path) -> None:
    with pytest.raises(QuiesceError) as e:
        plugin(tmp_path, dsn=server.dsn()).quiesce(Deadline.after(5))
    assert "prepare" in one_line_naming_the_application(e.value)


def test_atomic_snapshot_of_a_tablespace_on_another_filesystem_is_refused(
    postgres: PostgresFactory, tmp_path: Path
) -> None:
    shm = Path("/dev/shm")
    need(
        shm.is_dir() and shm.stat().st_dev != Path("/tmp").stat().st_dev,
        "needs /dev/shm on another filesystem than /tmp",
    )
    srv = postgres.new()
    ts = Path(os.path.join(shm, f"ffpg-ts-{os.getpid()}"))
    ts.mkdir()
    try:
        chown_to_postgres(ts)
        srv.sql(f"CREATE TABLESPACE elsewhere LOCATION '{ts}'")
        p = plugin(tmp_path, "snapshot", dsn=srv.dsn())
        p.check()
        assert list(p.data_paths()) == [srv.data_dir, ts]
        with pytest.raises(QuiesceError) as e:
            p.prepare(ATOMIC)
        text = one_line_naming_the_application(e.value)
        assert f"{ts} is on another filesystem" in text and 'capture = "base-backup"' in text
        p.unquiesce(())
        assert session_gone(srv)
        # The backup mode needs no single instant, even on atomic snapshots.
        p.capture = "base-backup"
        p.prepare(ATOMIC | PER_FILE)
        p.unquiesce(())
        p.release()
        assert session_gone(srv)
    finally:
        srv.stop("immediate")
        shutil.rmtree(ts, ignore_errors=True)


def test_wal_level_minimal_allows_atomic_snapshots_only(
    postgres: PostgresFactory, tmp_path: Path
) -> None:
    srv = postgres.new(settings={"wal_level": "minimal", "max_wal_senders": "0"})
    p = plugin(tmp_path, dsn=srv.dsn())
    p.check()
    with pytest.raises(QuiesceError) as e:
        p.prepare(PER_FILE)
    assert "wal_level = minimal" in one_line_naming_the_application(e.value)
    p.unquiesce(())
    p.release()
    p.capture = "snapshot"
    p.prepare(ATOMIC)
    p.unquiesce(())
    assert p.describe()["method"] == "crash-consistent"


# -- restore preparation -----------------------------------------------------------


def test_prepare_restored_points_links_at_the_restored_folders(tmp_path: Path) -> None:
    original = Path("/srv/pg")  # never touched: only its image below the restore root is
    root = tmp_path / "restore"
    data = root / "srv/pg/data"
    (data / "global").mkdir(parents=True)
    (data / "pg_tblspc").mkdir()
    (data / "PG_VERSION").write_text("15\n")
    for name in ("postmaster.pid", "postmaster.opts"):
        (data / name).write_text("4242\n")
    for folder in ("srv/pg/wal", "srv/pg/ts"):
        (root / folder).mkdir(parents=True)
    (data / "pg_wal").symlink_to(original / "wal")
    (data / "pg_tblspc" / "16384").symlink_to(original / "ts")
    (data / "tablespace_map").write_text(f"16384 {original / 'ts'}\n")
    data.chmod(0o755)
    p = plugin(tmp_path, dsn="host=/nowhere", data_dir=str(original / "data"))
    p.prepare_restored(root)
    assert not (data / "postmaster.pid").exists() and not (data / "postmaster.opts").exists()
    assert os.readlink(data / "pg_wal") == str(root / "srv/pg/wal")
    assert os.readlink(data / "pg_tblspc" / "16384") == str(root / "srv/pg/ts")
    assert (data / "tablespace_map").read_text() == f"16384 {root / 'srv/pg/ts'}\n"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    p.prepare_restored(root)  # a second time changes nothing
    assert os.readlink(data / "pg_wal") == str(root / "srv/pg/wal")


def test_prepare_restored_refuses_a_link_to_a_folder_that_was_not_restored(
    tmp_path: Path,
) -> None:
    root = tmp_path / "restore"
    data = root / "srv/pg/data"
    (data / "global").mkdir(parents=True)
    (data / "PG_VERSION").write_text("15\n")
    (data / "pg_wal").symlink_to("/srv/pg/wal")
    p = plugin(tmp_path, dsn="host=/nowhere", data_dir="/srv/pg/data")
    with pytest.raises(FreezeframeError) as e:
        p.prepare_restored(root)
    text = one_line_naming_the_application(e.value)
    assert "/srv/pg/wal, which was not restored" in text
    with pytest.raises(FreezeframeError) as e:
        plugin(tmp_path, dsn="host=/nowhere", data_dir="/srv/other").prepare_restored(root)
    assert "was not restored" in one_line_naming_the_application(e.value)


def test_secrets_stay_out_of_the_catalog_and_the_record(
    server: PgServer,
    tmp_path: Path,
    write_profile: Callable[[str], Path],
    registry: Registry,
    secret_env: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import json
    import logging

    caplog.set_level(logging.DEBUG)
    path = write_profile(f"""
        [profile]
        name = "p"

        [[application]]
        plugin = "postgresql"
        name = "ledger"
        dsn = "{server.dsn("alice")}"
        password_env = "{secret_env}"

        [[backup]]
        backend = "clone"
        name = "snap"
        dir = "{tmp_path / "snaps"}"
    """)
    engine = Engine(load_profile(path, registry), registry)
    run = engine.backup().record
    assert run.status == RunStatus.SUCCEEDED, run.error
    facts = run.applications[0].facts
    assert facts["method"] == "backup-mode" and facts["completed_snapshots"] == [run.run_id]
    # alice may not create replication slots: the run says what keeps the WAL (nothing).
    assert facts["wal_kept_by"].startswith("nothing")
    catalog = tmp_path / "state" / "p" / "catalog.sqlite"
    with Catalog(catalog) as cat:
        stored = cat.get(run.run_id)
    assert stored is not None
    for text in (json.dumps(stored.to_json()), json.dumps(run.to_json()), caplog.text):
        assert PASSWORD not in text
    assert PASSWORD.encode() not in catalog.read_bytes()
    assert session_gone(server)


def test_after_backup_thaw_with_a_per_file_snapshot_is_refused(
    tmp_path: Path, write_profile, registry
) -> None:
    """The backup_label and WAL join a per-file view only after the thaw ("base-backup",
    the default there); with thaw = "after-backup" the copies would be made before that
    and never recover."""
    from freezeframe.engine import Engine
    from freezeframe.profile import load_profile

    text = f"""
        [profile]
        name = "pg"
        thaw = "after-backup"

        [[application]]
        plugin = "postgresql"
        name = "ledger"
        dsn = "host=/nonexistent dbname=postgres"
        data_dir = "{tmp_path}"

        [[backup]]
        backend = "clone"
        name = "snap"
        dir = "{tmp_path / "snaps"}"

        [[backup]]
        backend = "archive"
        name = "archive"
        dir = "{tmp_path / "archives"}"
    """
    problems = Engine(load_profile(write_profile(text), registry), registry).check()
    assert any('use thaw = "after-snapshot"' in p for p in problems), problems
    after_snapshot = text.replace('thaw = "after-backup"', 'thaw = "after-snapshot"')
    problems = Engine(load_profile(write_profile(after_snapshot), registry), registry).check()
    assert not any("thaw" in p for p in problems), problems
