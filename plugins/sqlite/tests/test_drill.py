"""The sqlite plug-in's drill on a real backup: the restored file checked by SQLite itself
(``integrity_check``, ``foreign_key_check``) and answering queries, never the original."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from freezeframe.engine import Engine
from freezeframe.plugin import CheckFailed, DrillContext, FreezeframeError, under
from freezeframe.profile import load_profile
from freezeframe.registry import Registry
from freezeframe_sqlite import SqlitePlugin
from freezeframe_testing.drilled import backed_up, drill_context, results
from freezeframe_testing.plugin import read_only_uri, sqlite_clone_profile


def make_shop(path: Path, *, orphans: int = 0) -> Path:
    """A WAL database: 50 customers, 2000 orders referencing them, and ``orphans`` more
    orders whose customer does not exist (written with foreign keys off, SQLite's
    default)."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    db.execute(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, "
        "customer INTEGER REFERENCES customers(id), note TEXT)"
    )
    db.executemany("INSERT INTO customers VALUES (?, ?)", [(i, f"c{i}") for i in range(1, 51)])
    rows = [(i, 1 + i % 50, "x" * 200) for i in range(1, 2001)]
    rows += [(3000 + i, 900 + i, "lost") for i in range(orphans)]
    db.executemany("INSERT INTO orders VALUES (?, ?, ?)", rows)
    db.close()
    return path


def restored_copy(
    tmp_path: Path, registry: Registry, *, orphans: int = 0, capture: str | None = None
) -> tuple[SqlitePlugin, DrillContext]:
    """Back up a :func:`make_shop` database (profile ``s``, application ``shop``), restore
    the run as a drill's scratch copy: the profile's plug-in and the drill's context."""
    (tmp_path / "data").mkdir()
    db = make_shop(tmp_path / "data" / "shop.db", orphans=orphans)
    profile = sqlite_clone_profile(tmp_path, db, name="s", capture=capture)
    engine = Engine(load_profile(profile, registry), registry)
    plugin = engine.profile.applications[0].component
    assert isinstance(plugin, SqlitePlugin)
    return plugin, drill_context(engine, backed_up(engine), "shop", tmp_path / "drill")


def copy_of(tmp_path: Path, ctx: DrillContext) -> Path:
    return under(ctx.root, tmp_path / "data" / "shop.db")


@pytest.mark.parametrize("capture", ["snapshot", "logical"])
def test_a_good_copy_passes_both_checks_and_answers_queries_from_the_copy(
    tmp_path: Path, registry: Registry, capture: str
) -> None:
    p, ctx = restored_copy(tmp_path, registry, capture=capture)
    assert ctx.capture == capture
    original = tmp_path / "data" / "shop.db"
    copy = copy_of(tmp_path, ctx)
    assert SqlitePlugin.answers_sql
    with sqlite3.connect(original) as live:  # the original moves on after the backup
        live.execute("DELETE FROM orders WHERE id > 1000")
    live.close()
    with p.drill(ctx) as running:
        assert running is not None and running.query is not None
        assert running.connection == {"PATH": str(copy)}
        assert running.query("SELECT count(*) FROM orders", 10) == 2000  # the copy's count
        assert running.query("SELECT name FROM customers WHERE id = 0", 10) is None
        with pytest.raises(CheckFailed, match="readonly"):
            running.query("DELETE FROM orders", 10)
        with pytest.raises(CheckFailed, match="no such table: nope"):
            running.query("SELECT * FROM nope", 10)
        endless = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) "
        with pytest.raises(CheckFailed, match=r"did not finish within 0\.2s"):
            running.query(endless + "SELECT max(i) FROM n", 0.2)
    found = results(ctx)
    assert list(found) == ["integrity_check", "foreign_key_check"]
    assert found["integrity_check"][0] == "passed" and "ok (" in found["integrity_check"][1]
    assert found["foreign_key_check"] == ("passed", "no violation (1 tables with foreign keys)")
    # read-only and immutable: nothing written beside the copy
    assert os.listdir(copy.parent) == ["shop.db"]


def test_a_flipped_byte_in_a_tables_btree_page_fails_integrity_check(
    tmp_path: Path, registry: Registry
) -> None:
    p, ctx = restored_copy(tmp_path, registry)
    copy = copy_of(tmp_path, ctx)
    with sqlite3.connect(read_only_uri(copy), uri=True) as db:
        (page,) = db.execute("SELECT rootpage FROM sqlite_schema WHERE name = 'orders'").fetchone()
        (size,) = db.execute("PRAGMA page_size").fetchone()
    db.close()
    with open(copy, "r+b") as f:  # the b-tree page's type byte: 0x05 (interior) becomes 0xfa
        f.seek((page - 1) * size)
        byte = f.read(1)[0]
        f.seek((page - 1) * size)
        f.write(bytes([byte ^ 0xFF]))
    with p.drill(ctx) as running:
        assert running is not None  # the file opens; the profile's checks still run
    status, detail = results(ctx)["integrity_check"]
    assert status == "failed"
    assert f"Page {page}: btreeInitPage() returns error code 11" in detail, detail
    assert "\n" not in detail
    with pytest.raises(FreezeframeError, match=r"application 'shop'.*integrity_check: .*Page"):
        p.verify_restored(ctx.root)  # restore --verify: the same check


def test_an_order_without_its_customer_fails_foreign_key_check(
    tmp_path: Path, registry: Registry
) -> None:
    p, ctx = restored_copy(tmp_path, registry, orphans=2)
    with p.drill(ctx):
        pass
    found = results(ctx)
    assert found["integrity_check"][0] == "passed"  # sound b-trees, broken references
    assert found["foreign_key_check"] == (
        "failed",
        "2 violations: orders rowid 3000 has no parent in customers; "
        "orders rowid 3001 has no parent in customers",
    )
    p.verify_restored(ctx.root)  # restore --verify checks integrity only


@pytest.mark.parametrize("damage", ["missing", "garbage", "symlink to the original"])
def test_a_copy_that_is_no_database_fails_start(
    tmp_path: Path, registry: Registry, damage: str
) -> None:
    p, ctx = restored_copy(tmp_path, registry)
    copy = copy_of(tmp_path, ctx)
    copy.unlink()
    if damage == "garbage":
        copy.write_bytes(b"not a database\n" * 100)
    elif damage == "symlink to the original":
        copy.symlink_to(tmp_path / "data" / "shop.db")  # never checked in its place
    with p.drill(ctx) as running:
        assert running is None
    ((name, (status, detail)),) = results(ctx).items()
    assert (name, status) == ("start", "failed")
    expected = {
        "missing": "was not restored",
        "garbage": "is not a SQLite database",
        "symlink to the original": "is a symlink",
    }[damage]
    assert detail.startswith(str(copy)) and expected in detail, detail
    with pytest.raises(FreezeframeError, match=rf"^application 'shop': .*{expected}"):
        p.verify_restored(ctx.root)
    assert sorted(os.listdir(copy.parent)) == ([] if damage == "missing" else ["shop.db"])
