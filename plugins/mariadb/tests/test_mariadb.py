"""The mariadb plug-in against private MariaDB servers: fields, preflight, the lock, restore."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymysql
import pytest

from freezeframe import ConfigError, Deadline, FreezeframeError, QuiesceError, Table
from freezeframe.engine import Engine
from freezeframe.profile import load_profile
from freezeframe.registry import Registry
from freezeframe_mariadb import MariadbPlugin
from freezeframe_testing.mariadb_server import MariaDB, free_port

SECRET = "Zq8-unlikely-secret-7Wd"  # noqa: S105
WRONG = "Wrong-pass-that-must-not-leak-4Kp"
PASSWORD_ENV = "FF_TEST_MARIADB_PASSWORD"  # noqa: S105


def _populate(server: MariaDB) -> MariaDB:
    server.sql(
        f"CREATE USER backup@'%' IDENTIFIED BY '{SECRET}'",
        "GRANT RELOAD, BINLOG MONITOR ON *.* TO backup@'%'",
        f"CREATE USER reader@'%' IDENTIFIED BY '{SECRET}'",
        "GRANT SELECT ON *.* TO reader@'%'",
        f"CREATE USER reloader@'%' IDENTIFIED BY '{SECRET}'",
        "GRANT RELOAD ON *.* TO reloader@'%'",
        "CREATE DATABASE shop",
        "CREATE TABLE shop.t (id INT PRIMARY KEY, v INT NOT NULL) ENGINE=InnoDB",
        "INSERT INTO shop.t VALUES (1, 0)",
    )
    return server


@pytest.fixture
def server(mariadb: MariaDB) -> MariaDB:
    """A server of the test's own with a backup user (RELOAD, BINLOG MONITOR), weaker users
    (``reader``: SELECT; ``reloader``: RELOAD only) and a table ``shop.t``."""
    return _populate(mariadb)


@pytest.fixture(scope="module")
def shared(mariadb_module: MariaDB) -> MariaDB:
    """The same, shared by the tests that change nothing on the server (they only check)."""
    return _populate(mariadb_module)


@pytest.fixture
def password(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    return SECRET


def plugin(server: MariaDB | None, tmp_path: Path, **fields: Any) -> MariadbPlugin:
    table: dict[str, Any] = {"user": "backup", "password_env": PASSWORD_ENV}
    if server is not None and "host" not in fields:
        table["unix_socket"] = str(server.socket)
    table.update(fields)
    return MariadbPlugin("shop", Table(table, base_dir=tmp_path))


def assert_one_line_naming_the_app(e: BaseException) -> str:
    text = str(e)
    assert "'shop'" in text, text
    assert "\n" not in text, text
    assert SECRET not in text and WRONG not in text, text
    return text


def committer(server: MariaDB) -> tuple[threading.Thread, list[object], int]:
    """A thread that adds 1 to shop.t and commits; ``done`` gets True or the error."""
    conn = server.connect(autocommit=False)
    conn_id = conn.thread_id()
    done: list[object] = []

    def work() -> None:
        try:
            with conn.cursor() as cur:
                cur.execute("UPDATE shop.t SET v = v + 1 WHERE id = 1")
            conn.commit()
            done.append(True)
        except Exception as e:
            done.append(e)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread, done, conn_id


def state_of(server: MariaDB, conn_id: int) -> str:
    rows = server.sql(f"SELECT STATE FROM information_schema.PROCESSLIST WHERE ID = {conn_id}")
    return str(rows[0][0]) if rows else ""


def wait_for(predicate: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = Deadline.after(seconds)
    while not deadline.expired():
        if predicate():
            return True
        threading.Event().wait(0.02)
    return predicate()


def value(server: MariaDB) -> int:
    return int(server.sql("SELECT v FROM shop.t WHERE id = 1")[0][0])


# -- fields ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"unix_socket": "/s", "host": "db"}, "host", "not both"),
        ({}, "unix_socket", "missing"),
        ({"unix_socket": "/s", "port": 3306}, "port", "goes with"),
        ({"host": "db", "port": 70000}, "port", "at most 65535"),
        ({"host": "db", "port": "3306"}, "port", "expected an integer"),
        ({"unix_socket": "/s", "user": ""}, "user", "must not be empty"),
        ({"unix_socket": "/s", "password_env": "FF_TEST_UNSET_VAR"}, "password_env", "not set"),
        ({"unix_socket": "/s", "lock": "ftwrl"}, "lock", "expected one of"),
    ],
)
def test_field_errors_name_the_field(
    tmp_path: Path, password: str, fields: dict[str, Any], field: str, message: str
) -> None:
    table = {"user": "backup", "password_env": PASSWORD_ENV, **fields}
    with pytest.raises(ConfigError, match=message) as e:
        MariadbPlugin("shop", Table(table, base_dir=tmp_path))
    assert e.value.field == field


def test_user_is_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        MariadbPlugin("shop", Table({"unix_socket": "/s"}, base_dir=tmp_path))
    assert e.value.field == "user"


def test_a_password_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o644)
    table = {"unix_socket": "/s", "user": "backup", "password_file": str(secret)}
    with pytest.raises(ConfigError, match="chmod 600") as e:
        MariadbPlugin("shop", Table(table, base_dir=tmp_path))
    assert SECRET not in str(e.value)


# -- check -----------------------------------------------------------------------------


def test_check_passes_over_the_socket_and_over_tcp(
    shared: MariaDB, tmp_path: Path, password: str
) -> None:
    p = plugin(shared, tmp_path)
    p.check()
    assert p.data_paths() == [shared.datadir]
    tcp = plugin(None, tmp_path, host="127.0.0.1", port=shared.port)
    tcp.check()
    facts = tcp.describe()
    assert facts["server"].startswith("MariaDB 10.")
    assert SECRET not in repr(facts) and SECRET not in repr(vars(tcp))


def test_check_with_a_password_file(shared: MariaDB, tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    p = MariadbPlugin(
        "shop",
        Table(
            {"unix_socket": str(shared.socket), "user": "backup", "password_file": str(secret)},
            base_dir=tmp_path,
        ),
    )
    p.check()


def test_check_server_down(tmp_path: Path, password: str) -> None:
    p = plugin(None, tmp_path, unix_socket=str(tmp_path / "no.sock"))
    with pytest.raises(FreezeframeError, match="cannot reach the server") as e:
        p.check()
    assert_one_line_naming_the_app(e.value)
    q = plugin(None, tmp_path, host="127.0.0.1", port=free_port())
    with pytest.raises(FreezeframeError, match=r"cannot reach the server.*refused") as e:
        q.check()
    assert_one_line_naming_the_app(e.value)


def test_check_wrong_password(
    shared: MariaDB, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, WRONG)
    with pytest.raises(FreezeframeError, match="access denied for user 'backup'") as e:
        plugin(shared, tmp_path).check()
    assert_one_line_naming_the_app(e.value)


def test_check_names_a_missing_reload_privilege(
    shared: MariaDB, tmp_path: Path, password: str
) -> None:
    with pytest.raises(FreezeframeError, match="lacks the RELOAD privilege") as e:
        plugin(shared, tmp_path, user="reader").check()
    assert_one_line_naming_the_app(e.value)


def test_check_names_a_missing_binlog_privilege(
    shared: MariaDB, tmp_path: Path, password: str
) -> None:
    with pytest.raises(FreezeframeError, match="lacks the BINLOG MONITOR privilege") as e:
        plugin(shared, tmp_path, user="reloader").check()
    assert_one_line_naming_the_app(e.value)


def test_check_refuses_a_datadir_that_is_not_here(
    shared: MariaDB, tmp_path: Path, password: str
) -> None:
    with pytest.raises(FreezeframeError, match="does not exist on this machine") as e:
        plugin(shared, tmp_path, datadir=str(tmp_path / "elsewhere")).check()
    assert_one_line_naming_the_app(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FreezeframeError, match="not the server's datadir"):
        plugin(shared, tmp_path, datadir=str(tmp_path / "empty")).check()


def test_engine_check_refuses_a_per_file_snapshot_in_snapshot_mode(
    shared: MariaDB, tmp_path: Path, password: str, write_profile: Any, registry: Registry
) -> None:
    path = write_profile(f"""
        [profile]
        name = "db"

        [[application]]
        plugin = "mariadb"
        name = "shop"
        unix_socket = "{shared.socket}"
        user = "backup"
        password_env = "{PASSWORD_ENV}"
        capture = "snapshot"

        [[backup]]
        backend = "clone"
        name = "snap"
        dir = "{tmp_path / "snaps"}"
    """)
    engine = Engine(load_profile(path, registry), registry)
    problems = engine.check()
    assert any(
        "'shop' (mariadb) is not consistent on per-file snapshots" in p
        and "use capture = 'logical' or a snapshot backend that is atomic" in p
        for p in problems
    ), problems
    run = engine.backup().record
    assert run.status == "failed"
    assert "per-file" in (run.error or "")
    snaps = tmp_path / "snaps"
    assert not snaps.exists() or not any(snaps.iterdir())


# -- the lock --------------------------------------------------------------------------


LOCKS = [("auto", "BACKUP STAGE BLOCK_COMMIT"), ("flush-tables", "FLUSH TABLES WITH READ LOCK")]


@pytest.mark.parametrize(("lock", "method"), LOCKS)
def test_quiesce_blocks_commits_until_the_thaw(
    server: MariaDB, tmp_path: Path, password: str, lock: str, method: str
) -> None:
    p = plugin(server, tmp_path, lock=lock)
    p.check()
    p.prepare(frozenset())
    p.quiesce(Deadline.after(10))
    try:
        thread, done, conn_id = committer(server)
        assert wait_for(lambda: "backup lock" in state_of(server, conn_id)), state_of(
            server, conn_id
        )
        assert done == [], f"a COMMIT went through {method}"
        assert value(server) == 0  # reads go on; the commit is not visible
        master = server.sql("SHOW MASTER STATUS")[0]
        gtid = server.sql("SELECT @@gtid_binlog_pos")[0][0]
    finally:
        p.unquiesce(())
    thread.join(10)
    assert done == [True]
    assert value(server) == 1
    facts = p.describe()
    assert facts["method"] == method
    assert (facts["binlog_file"], facts["binlog_position"]) == (master[0], master[1])
    assert facts["gtid_binlog_pos"] == gtid
    assert facts["log_bin"] is True
    assert SECRET not in repr(facts)
    p.unquiesce(())  # idempotent


@pytest.mark.parametrize("lock", ["auto", "flush-tables"])
def test_a_quiesce_behind_long_ddl_gives_up_at_the_deadline_and_holds_nothing(
    server: MariaDB, tmp_path: Path, password: str, lock: str
) -> None:
    ddl = server.connect()
    ddl_id = ddl.thread_id()
    slow = threading.Thread(
        target=lambda: _swallow(ddl, "CREATE TABLE shop.slow ENGINE=InnoDB AS SELECT SLEEP(60) s"),
        daemon=True,
    )
    slow.start()
    assert wait_for(lambda: state_of(server, ddl_id) != "")
    p = plugin(server, tmp_path, lock=lock)
    with pytest.raises(QuiesceError, match="gave up at the deadline") as e:
        p.quiesce(Deadline.after(1))
    assert_one_line_naming_the_app(e.value)
    p.unquiesce(())  # safe after the failed quiesce
    # nothing of ours is left on the server, and commits go through
    assert wait_for(
        lambda: (
            server.sql("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER='backup'")
            == [(0,)]
        )
    )
    thread, done, _ = committer(server)
    thread.join(10)
    assert done == [True]
    server.sql(f"KILL QUERY {ddl_id}")
    slow.join(10)
    # and the next quiesce, with the DDL gone, succeeds
    p.quiesce(Deadline.after(10))
    p.unquiesce(())


def test_a_quiesce_behind_another_backup_gives_up_and_the_other_keeps_its_lock(
    server: MariaDB, tmp_path: Path, password: str
) -> None:
    other = server.connect()
    with other.cursor() as cur:
        cur.execute("BACKUP STAGE START")
        cur.execute("BACKUP STAGE BLOCK_COMMIT")
    p = plugin(server, tmp_path)
    with pytest.raises(QuiesceError, match="gave up at the deadline"):
        p.quiesce(Deadline.after(0.5))
    p.unquiesce(())
    with other.cursor() as cur:
        cur.execute("BACKUP STAGE END")  # still its own: ours never touched it
    thread, done, _ = committer(server)
    thread.join(10)
    assert done == [True]


def test_a_lock_lost_while_frozen_fails_the_thaw(
    server: MariaDB, tmp_path: Path, password: str
) -> None:
    p = plugin(server, tmp_path)
    p.quiesce(Deadline.after(10))
    [(held,)] = server.sql("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = 'backup'")
    server.sql(f"KILL CONNECTION {held}")
    with pytest.raises(QuiesceError, match="backup lock was lost") as e:
        p.unquiesce(())
    assert_one_line_naming_the_app(e.value)
    p.unquiesce(())  # reported once; a second thaw has nothing to do


def test_quiesce_of_an_unreachable_server_is_a_quiesce_error(tmp_path: Path, password: str) -> None:
    p = plugin(None, tmp_path, unix_socket=str(tmp_path / "no.sock"))
    with pytest.raises(QuiesceError, match="cannot reach") as e:
        p.quiesce(Deadline.after(2))
    assert_one_line_naming_the_app(e.value)
    p.unquiesce(())


def test_without_binlog_describe_says_so(
    mariadb_factory: Callable[..., MariaDB], tmp_path: Path, password: str
) -> None:
    server = mariadb_factory(binlog=False)
    server.sql(
        f"CREATE USER backup@'%' IDENTIFIED BY '{SECRET}'", "GRANT RELOAD ON *.* TO backup@'%'"
    )
    p = plugin(server, tmp_path)
    p.check()  # BINLOG MONITOR is only needed with a binary log
    p.quiesce(Deadline.after(10))
    p.unquiesce(())
    assert p.describe()["log_bin"] is False
    assert "binlog_file" not in p.describe()


def _swallow(conn: Any, statement: str) -> None:
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    except pymysql.MySQLError:
        pass


# -- data paths --------------------------------------------------------------------------


def test_data_paths_add_the_binlog_folder_outside_the_datadir(
    mariadb_factory: Callable[..., MariaDB], tmp_path: Path, password: str
) -> None:
    logs = tmp_path / "binlogs"
    logs.mkdir()
    server = mariadb_factory(binlog=False, args=[f"--log-bin={logs / 'shop-bin'}", "--server-id=1"])
    server.sql(
        f"CREATE USER backup@'%' IDENTIFIED BY '{SECRET}'",
        "GRANT RELOAD, BINLOG MONITOR ON *.* TO backup@'%'",
    )
    p = plugin(server, tmp_path)
    p.check()
    assert p.data_paths() == [server.datadir, logs]
    p.quiesce(Deadline.after(10))
    p.unquiesce(())
    assert p.describe()["binlog_file"] == "shop-bin.000001"


# -- restore -----------------------------------------------------------------------------


def crash_image(server: MariaDB, root: Path) -> Path:
    """Kill the server (-9) and copy its datadir under ``root`` by its original path."""
    server.kill()
    image = root / server.datadir.relative_to("/")
    shutil.copytree(server.datadir, image, symlinks=True)
    return image


def test_restore_of_a_crash_image_without_the_server(
    server: MariaDB,
    mariadb_factory: Callable[..., MariaDB],
    tmp_path: Path,
    password: str,
) -> None:
    server.sql("INSERT INTO shop.t VALUES (2, 42)")
    (server.datadir / "stale.pid").write_text("12345\n")
    root = tmp_path / "restore"
    image = crash_image(server, root)
    # the server is gone: the plug-in works from datadir and what it finds in the copy
    p = plugin(server, tmp_path, datadir=str(server.datadir))
    p.prepare_restored(root)
    assert not (image / "stale.pid").exists()
    p.verify_restored(root)
    copy = mariadb_factory(image, init=False, networking=False)
    assert copy.sql("SELECT v FROM shop.t ORDER BY id") == [(0,), (42,)]


def test_restore_without_server_or_datadir_says_what_to_do(tmp_path: Path, password: str) -> None:
    p = plugin(None, tmp_path, unix_socket=str(tmp_path / "no.sock"))
    with pytest.raises(FreezeframeError, match="set datadir in the profile") as e:
        p.prepare_restored(tmp_path)
    assert_one_line_naming_the_app(e.value)


def test_verify_restored_finds_a_damaged_table(
    server: MariaDB, tmp_path: Path, password: str
) -> None:
    server.sql(
        "CREATE TABLE shop.big (id INT PRIMARY KEY, pad VARCHAR(200)) ENGINE=InnoDB",
        "INSERT INTO shop.big SELECT seq, REPEAT('x', 200) FROM shop.seq_1_to_3000",
    )
    p = plugin(server, tmp_path)
    p.check()
    layout_known = p.data_paths()
    assert layout_known == [server.datadir]
    server.stop()  # a clean image, so that only the damage below can fail the check
    root = tmp_path / "restore"
    image = root / server.datadir.relative_to("/")
    shutil.copytree(server.datadir, image, symlinks=True)
    p.prepare_restored(root)
    p.verify_restored(root)  # sound before the damage
    ibd = image / "shop" / "big.ibd"
    with open(ibd, "r+b") as f:  # scribble over a leaf page of the clustered index
        f.seek(16384 * 5 + 200)
        f.write(os.urandom(4000))
    with pytest.raises(FreezeframeError, match="application 'shop'") as e:
        p.verify_restored(root)
    assert "\n" not in str(e.value)
    assert "CHECK TABLE found 1 of" in str(e.value) and "shop.big (" in str(e.value), e.value
