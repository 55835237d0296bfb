"""``freezeframe restore --app`` / ``--path``: one application's data, or one file or tree,
at the same original-path layout, from every kind of stage; and the one-line errors."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest

from freezeframe_testing.plugin import (
    clone_profile,
    make_counter_db,
    read_counter,
    restored,
    run_cli,
)
from freezeframe_testing.repositories import BORG_PASSPHRASE_ENV, RESTIC_PASSWORD_ENV
from freezeframe_testing.trees import contents, walk

APPLICATION = """
    plugin = "sqlite"
    name = "{name}"
    path = {path}
"""

#: The stage restored from: the clone snapshot itself, or a copy of it.
COPIES = {
    "clone": "",
    "archive": """
        [[backup]]
        backend = "archive"
        name = "copy"
        source = "snap"
        dir = {repo}
    """,
    **{
        tool: f"""
            [[backup]]
            backend = "{tool}"
            name = "copy"
            source = "snap"
            repository = {{repo}}
            password_env = "{password_env}"
        """
        for tool, password_env in (("restic", RESTIC_PASSWORD_ENV), ("borg", BORG_PASSPHRASE_ENV))
    },
}


@dataclass(frozen=True)
class Shop:
    """Two SQLite databases in folders of their own, and a tree of tools the snapshot
    stage takes too (its ``bin/aaa-link`` a hard link of ``aaa``, outside ``bin``)."""

    root: Path
    orders: Path
    ledger: Path
    tools: Path

    def profile(self, copy: str = "clone", *, ledger: bool = True) -> Path:
        q = json.dumps  # a TOML string
        then = COPIES[copy].format(repo=q(str(self.root / "repo")))
        if ledger:
            then += "[[application]]" + APPLICATION.format(name="ledger", path=q(str(self.ledger)))
        orders = APPLICATION.format(name="orders", path=q(str(self.orders)))
        return clone_profile(self.root, orders, name="shop", then=then, paths=[self.tools])

    def backup(self, profile: Path) -> str:
        r = run_cli("backup", profile, "--json")
        assert r.returncode == 0, r.stderr
        return str(r.json()["run_id"])


@pytest.fixture
def shop(tmp_path: Path) -> Shop:
    orders, ledger = (tmp_path / "data" / n / f"{n}.db" for n in ("orders", "ledger"))
    for db in (orders, ledger):
        db.parent.mkdir(parents=True)
        make_counter_db(db)
    tools = tmp_path / "tools"
    for rel, text in {"aaa": "a", "etc/conf": "c", "bin/run": "#!/bin/sh\n"}.items():
        (tools / rel).parent.mkdir(parents=True, exist_ok=True)
        (tools / rel).write_text(text)
    os.link(tools / "aaa", tools / "bin" / "aaa-link")
    tools.chmod(0o750)
    return Shop(tmp_path, orders, ledger, tools)


@pytest.fixture(params=list(COPIES))
def copy(request: pytest.FixtureRequest) -> str:
    """The stage restored from: the clone snapshot, or a copy of it."""
    if request.param in ("restic", "borg"):
        request.getfixturevalue(f"{request.param}_repo")  # the tool, its environment
    return str(request.param)


def files_below(root: Path) -> set[Path]:
    """Every entry below ``root`` that is not a folder."""
    return {p for p in walk(root) if not p.is_dir()} if root.exists() else set()


def one_error(stderr: str) -> str:
    """The one error line of a failed command."""
    errors = [line for line in stderr.splitlines() if line.startswith("freezeframe: error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


def test_app_restores_that_applications_data_alone(shop: Shop, copy: str) -> None:
    profile = shop.profile(copy)
    run_id = shop.backup(profile)
    target = shop.root / "restore"

    r = run_cli("restore", profile, run_id, "--to", target, "--app", "ledger", "--verify", "--json")

    assert r.returncode == 0, r.stderr
    assert files_below(target) == {restored(target, shop.ledger)}
    assert read_counter(restored(target, shop.ledger)) == read_counter(shop.ledger)
    done = r.json()
    assert done["applications"] == ["ledger"]
    assert done["selected_paths"] == [str(shop.ledger)]
    assert done["paths"] == [str(restored(target, shop.ledger))]


def test_path_restores_one_file_and_one_tree(shop: Shop, copy: str) -> None:
    profile = shop.profile(copy)
    run_id = shop.backup(profile)
    target = shop.root / "restore"
    conf, bin_ = shop.tools / "etc" / "conf", shop.tools / "bin"

    r = run_cli(
        "restore", profile, run_id, "--to", target, "--path", conf, "--path", bin_, "--json"
    )

    assert r.returncode == 0, r.stderr
    back = restored(target, shop.tools)
    assert contents(back) == {
        k: v for k, v in contents(shop.tools).items() if k.split("/")[0] in ("bin", "etc")
    }
    assert files_below(target) == {back / "etc/conf", back / "bin/run", back / "bin/aaa-link"}
    done = r.json()
    assert done["applications"] == []  # no application's fix-ups
    assert done["selected_paths"] == [str(conf), str(bin_)]
    if copy in ("clone", "archive"):  # the folders above keep the snapshot's metadata
        assert stat.S_IMODE(back.stat().st_mode) == 0o750


def test_a_path_the_run_holds_nothing_at_fails_and_leaves_nothing(shop: Shop, copy: str) -> None:
    """Inside a tree the run took (found missing after the backend restored nothing), and
    outside every path it took (found before anything is restored)."""
    profile = shop.profile(copy)
    run_id = shop.backup(profile)
    for missing in (shop.tools / "nope", shop.root / "elsewhere"):
        target = shop.root / f"restore-{missing.name}"

        r = run_cli(
            "restore", profile, run_id, "--to", target, "--path", missing, "--app", "orders"
        )

        assert r.returncode == 1, r.stderr
        assert f"run {run_id} holds nothing at {missing}" in one_error(r.stderr)
        assert not target.exists()


def test_usage_errors_say_what_is_wrong_in_one_line(shop: Shop) -> None:
    profile = shop.profile()
    run_id = shop.backup(profile)
    target = shop.root / "restore"
    cases = {
        ("--app", "stock"): "no application 'stock'; it has: orders, ledger",
        ("--path", "tools/etc"): "--path tools/etc: not an absolute path",
        ("--path", str(shop.tools), "--verify"): "--verify asks the applications' plug-ins",
    }
    for args, says in cases.items():
        r = run_cli("restore", profile, run_id, "--to", target, *args)

        assert r.returncode == 2, r.stderr
        assert says in one_error(r.stderr)
        assert not target.exists()


def test_an_application_added_after_the_run_is_not_in_it(shop: Shop) -> None:
    run_id = shop.backup(shop.profile(ledger=False))
    profile = shop.profile()  # ledger added since

    r = run_cli("restore", profile, run_id, "--to", shop.root / "restore", "--app", "ledger")

    assert r.returncode == 2, r.stderr
    line = one_error(r.stderr)
    assert f"run {run_id} has no application 'ledger' (added to the profile after it)" in line
    assert "it has: orders" in line


def test_a_run_recorded_before_paths_were_asks_the_plugin(shop: Shop) -> None:
    """A run whose record has no paths (an older freezeframe made it): its plug-in says
    them; the run's own record says them otherwise, however the profile changed since."""
    profile = shop.profile()
    run_id = shop.backup(profile)
    catalog = shop.root / "state" / "shop" / "catalog.sqlite"
    with sqlite3.connect(catalog) as db:
        recorded = dict(
            db.execute("SELECT name, paths FROM applications WHERE run_id = ?", (run_id,))
        )
        db.execute("UPDATE applications SET paths = NULL WHERE name = 'orders'")
    db.close()
    assert json.loads(recorded["ledger"]) == [str(shop.ledger)]
    # the profile now names another ledger: the run's record says where its data was
    moved = shop.root / "elsewhere" / "ledger.db"
    moved.parent.mkdir()
    make_counter_db(moved)
    profile.write_text(profile.read_text().replace(str(shop.ledger), str(moved)))
    target = shop.root / "restore"

    r = run_cli("restore", profile, run_id, "--to", target, "--app", "orders", "--app", "ledger")

    assert r.returncode == 0, r.stderr
    assert files_below(target) == {restored(target, shop.orders), restored(target, shop.ledger)}
