"""``freezeframe restore`` end to end: a failed restore leaves nothing under --to, special
files need --preserve-special, and only what was restored is listed."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import stat
from pathlib import Path

import pytest

from freezeframe_testing.crafted import specials_below
from freezeframe_testing.plugin import (
    make_counter_db,
    read_counter,
    require_tool,
    restored,
    run_cli,
)

PROFILE = """
    [profile]
    name = "shop"

    [[application]]
    plugin = "sqlite"
    name = "orders"
    path = "{a}"

    [[application]]
    plugin = "sqlite"
    name = "ledger"
    path = "{b}"

    [[backup]]
    backend = "clone"
    name = "snap"
    dir = "{snaps}"
    paths = ["{tools}"]
    {archive}
"""

ARCHIVE = """
    [[backup]]
    backend = "archive"
    name = "archive"
    source = "snap"
    dir = "{archives}"
"""


@pytest.fixture
def shop(tmp_path: Path, write_profile) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    """Two databases of 2 MiB each in their own folders, and a folder of tools with a
    setuid program and a FIFO in it."""
    paths = {n: tmp_path / "data" / n / f"{n}.db" for n in ("a", "b")}
    for db in paths.values():
        db.parent.mkdir(parents=True)
        make_counter_db(db)
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE blob (b BLOB)")
            conn.execute("INSERT INTO blob VALUES (randomblob(2097152))")
        conn.close()
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "suid").write_bytes(b"#!/bin/sh\n")
    os.chmod(tools / "suid", 0o4755)  # noqa: S103 - what is under test
    os.mkfifo(tools / "fifo")
    return {**paths, "tools": tools, "root": tmp_path}


def profile(write_profile, shop: dict[str, Path], *, archive: bool) -> Path:  # type: ignore[no-untyped-def]
    root = shop["root"]
    extra = ARCHIVE.format(archives=root / "archives") if archive else ""
    return write_profile(
        PROFILE.format(
            a=shop["a"], b=shop["b"], snaps=root / "snaps", tools=shop["tools"], archive=extra
        )
    )


def backed_up(write_profile, shop: dict[str, Path], *, archive: bool) -> tuple[Path, str]:  # type: ignore[no-untyped-def]
    path = profile(write_profile, shop, archive=archive)
    r = run_cli("backup", path, "--json")
    assert r.returncode == 0, r.stderr
    return path, r.json()["run_id"]


def one_error(stderr: str) -> bool:
    errors = [line for line in stderr.splitlines() if line.startswith("freezeframe: error:")]
    return len(errors) == 1 and "Traceback" not in stderr


def test_a_restore_that_fails_midway_removes_what_it_made(
    tmp_path: Path, write_profile, shop: dict[str, Path]
) -> None:
    """An archive cut short after its checksum was recorded: members are extracted up to the
    cut, then reading fails. Before, the half-filled --to stayed behind."""
    path, run_id = backed_up(write_profile, shop, archive=True)
    archive = next((tmp_path / "archives").glob(f"*{run_id}*"))
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) * 3 // 4])
    # The catalog is trusted: record the cut archive's checksum as if it had been written so.
    with sqlite3.connect(tmp_path / "state" / "shop" / "catalog.sqlite") as db:
        (meta,) = db.execute(
            "SELECT metadata FROM stages WHERE run_id = ? AND name = 'archive'", (run_id,)
        ).fetchone()
        meta = dict(json.loads(meta), sha256=hashlib.sha256(archive.read_bytes()).hexdigest())
        db.execute(
            "UPDATE stages SET metadata = ? WHERE run_id = ? AND name = 'archive'",
            (json.dumps(meta), run_id),
        )
    db.close()
    target = tmp_path / "restore"

    r = run_cli("restore", path, run_id, "--to", target)

    assert r.returncode == 1, r.stderr
    assert not target.exists()
    assert "cannot be read" in r.stderr and one_error(r.stderr), r.stderr

    given = tmp_path / "given"  # an empty folder the user made stays, empty
    given.mkdir()
    r = run_cli("restore", path, run_id, "--to", given)
    assert r.returncode == 1 and os.listdir(given) == []


def test_a_view_with_a_folder_swapped_for_a_symlink_is_refused_and_nothing_left(
    tmp_path: Path, write_profile, shop: dict[str, Path]
) -> None:
    path, run_id = backed_up(write_profile, shop, archive=False)
    # The first database is restored before the second's folder is found swapped.
    image = restored(tmp_path / "snaps" / run_id, shop["b"].parent)
    os.rename(image, image.with_name("elsewhere"))
    image.symlink_to(image.with_name("elsewhere"))
    target = tmp_path / "restore"

    r = run_cli("restore", path, run_id, "--to", target)

    assert r.returncode == 1
    assert "symlink" in r.stderr and one_error(r.stderr), r.stderr
    assert not target.exists()


@pytest.mark.parametrize("archive", [True, False], ids=["archive", "clone"])
def test_special_files_come_back_only_with_preserve_special(
    tmp_path: Path, write_profile, shop: dict[str, Path], archive: bool
) -> None:
    path, run_id = backed_up(write_profile, shop, archive=archive)

    plain, asked = tmp_path / "plain", tmp_path / "asked"
    r = run_cli("restore", path, run_id, "--to", plain, "--json")
    assert r.returncode == 0, r.stderr
    assert "--preserve-special" in r.stderr  # the one warning
    assert specials_below(plain) == []
    assert all(Path(p).exists() for p in r.json()["paths"])
    assert read_counter(restored(plain, shop["a"])) == read_counter(shop["a"])
    tools = restored(plain, shop["tools"])
    assert stat.S_IMODE((tools / "suid").stat().st_mode) == 0o755

    r = run_cli("restore", path, run_id, "--to", asked, "--preserve-special", "--json")
    assert r.returncode == 0, r.stderr
    assert r.json()["preserve_special"] is True
    tools = restored(asked, shop["tools"])
    assert stat.S_IMODE((tools / "suid").stat().st_mode) == 0o4755
    # clone never copies a FIFO into its view; the archive stage reads that view
    assert not (tools / "fifo").exists()


TOOL = """
    [[backup]]
    backend = "{tool}"
    name = "copy"
    source = "snap"
    repository = "{repo}"
    password_env = "FF_E2E_PASSWORD"
    init = true
"""


@pytest.mark.parametrize("tool", ["restic", "borg"])
def test_restic_and_borg_restores_drop_setid_bits_unless_asked(
    tmp_path: Path,
    write_profile,
    shop: dict[str, Path],
    tool: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_tool(tool)
    monkeypatch.setenv("FF_E2E_PASSWORD", "a test's throwaway")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("BORG_BASE_DIR", str(tmp_path / "borg-home"))
    root = shop["root"]
    extra = TOOL.format(tool=tool, repo=root / "repo")
    path = write_profile(
        PROFILE.format(
            a=shop["a"], b=shop["b"], snaps=root / "snaps", tools=shop["tools"], archive=extra
        )
    )
    r = run_cli("backup", path, "--json")
    assert r.returncode == 0, r.stderr
    run_id = r.json()["run_id"]

    r = run_cli("restore", path, run_id, "--to", tmp_path / "plain")
    assert r.returncode == 0, r.stderr
    assert "--preserve-special" in r.stderr
    assert specials_below(tmp_path / "plain") == []

    r = run_cli("restore", path, run_id, "--to", tmp_path / "asked", "--preserve-special")
    assert r.returncode == 0, r.stderr
    suid = restored(tmp_path / "asked", shop["tools"]) / "suid"
    assert stat.S_IMODE(suid.stat().st_mode) == 0o4755


def test_only_paths_really_restored_are_listed(
    tmp_path: Path, write_profile, shop: dict[str, Path]
) -> None:
    """A socket among a clone stage's paths is never copied (its server makes it again):
    it used to be listed as restored all the same."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "app.sock"))
    try:
        shop = {**shop, "tools": tmp_path / "app.sock"}
        path, run_id = backed_up(write_profile, shop, archive=False)
    finally:
        server.close()
    target = tmp_path / "restore"

    r = run_cli("restore", path, run_id, "--to", target, "--json")

    assert r.returncode == 0, r.stderr
    listed = [Path(p) for p in r.json()["paths"]]
    assert sorted(listed) == sorted(restored(target, shop[n]) for n in ("a", "b"))
