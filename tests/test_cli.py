"""The CLI end to end, as a subprocess (in-process plug-ins through its entry function, `main`)."""

from __future__ import annotations

import json
import os
import resource
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from freezeframe.cli import main
from freezeframe.plugin import (
    ApplicationPlugin,
    Artifact,
    Backend,
    ConfigError,
    Deadline,
    FreezeframeError,
    Role,
    StageContext,
    Table,
    hookimpl,
)
from freezeframe.registry import build_registry
from freezeframe_testing.plugin import make_counter_db, read_counter, restored, run_cli

GOOD = """
    [profile]
    name = "shop"

    [[application]]
    plugin = "sqlite"
    name = "orders"
    path = "{db}"

    [[backup]]
    backend = "clone"
    name = "snap"
    dir = "{snaps}"

    [[backup]]
    backend = "archive"
    name = "archive"
    source = "snap"
    dir = "{archives}"
    keep = {{ last = 2 }}
"""


@pytest.fixture
def shop(tmp_path: Path, write_profile) -> tuple[Path, Path]:
    (tmp_path / "data").mkdir()
    db = make_counter_db(tmp_path / "data" / "orders.db")
    profile = write_profile(
        GOOD.format(db=db, snaps=tmp_path / "snaps", archives=tmp_path / "archives")
    )
    return profile, db


def bump(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE counter SET n = n + 1")
    conn.close()


def test_backup_list_show_restore_verify_prune(tmp_path: Path, shop) -> None:
    profile, db = shop
    runs = []
    for _ in range(3):
        bump(db)
        r = run_cli("backup", profile, "--json")
        assert r.returncode == 0, r.stderr
        out = r.json()
        assert out["status"] == "succeeded" and out["error"] is None
        assert [a["name"] for a in out["applications"]] == ["orders"]
        app = out["applications"][0]
        assert app["plugin"] == "sqlite" and app["frozen_ms"] > 0
        assert [(s["name"], s["backend"]) for s in out["stages"]] == [
            ("snap", "clone"),
            ("archive", "archive"),
        ]
        assert all(s["artifact"] and s["bytes"] > 0 for s in out["stages"])
        # the record printed is the final one: the snapshot was released once copied
        assert [s["deleted"] for s in out["stages"]] == [True, False]
        runs.append(out["run_id"])

    listed = run_cli("list", profile, "--json")
    assert listed.returncode == 0
    assert [r["run_id"] for r in listed.json()] == runs[::-1]  # newest first
    # keep = { last = 2 }: the oldest archive is gone, the snapshot was released each time
    archives = {s["name"]: s for s in listed.json()[-1]["stages"]}
    assert archives["archive"]["deleted"] is True
    assert len(list((tmp_path / "archives").iterdir())) == 2

    shown = run_cli("show", profile, runs[1][:20], "--json")
    assert shown.returncode == 0 and shown.json()["run_id"] == runs[1]
    assert shown.json()["applications"][0]["facts"]["journal_mode"] == "wal"

    target = tmp_path / "drill"
    r = run_cli("restore", profile, "latest", "--to", target, "--verify", "--json")
    assert r.returncode == 0, r.stderr
    assert r.json()["run_id"] == runs[-1] and r.json()["stage"] == "archive"
    assert read_counter(restored(target, db)) == 3

    r = run_cli("restore", profile, runs[1], "--to", tmp_path / "older")
    assert r.returncode == 0, r.stderr
    assert read_counter(restored(tmp_path / "older", db)) == 2

    r = run_cli("restore", profile, "latest", "--to", target)  # not empty any more
    assert r.returncode == 1 and "not an empty directory" in r.stderr
    r = run_cli("restore", profile, "latest", "--to", tmp_path / "x", "--stage", "snap")
    assert r.returncode == 1 and "released" in r.stderr

    r = run_cli("verify", profile, "--json")
    assert r.returncode == 0 and r.json()["ok"] is True
    archive_file = next((tmp_path / "archives").glob(f"*{runs[-1]}*"))
    data = bytearray(archive_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive_file.write_bytes(bytes(data))
    r = run_cli("verify", profile)
    assert r.returncode == 1 and "corrupt" in r.stderr

    r = run_cli("prune", profile, "--dry-run", "--json")
    assert r.returncode == 0 and r.json() == {"dry_run": True, "deleted": []}


def snapshot_mode(profile: Path) -> Path:
    """``profile`` with its SQLite application in snapshot mode: copied by the snapshot
    stage inside the window (a WAL database is captured logical by default, and its
    snapshot then runs after the thaw)."""
    profile.write_text(profile.read_text().replace('path = "', 'capture = "snapshot"\npath = "', 1))
    return profile


def test_check_plan_plugins(shop) -> None:
    profile, _ = shop
    r = run_cli("check", profile, "--json")
    assert r.returncode == 0 and r.json()["ok"] is True
    plan = run_cli("plan", profile, "--json").json()
    assert plan["quiesce_order"] == [["orders"]]
    assert [s["in_freeze_window"] for s in plan["stages"]] == [False, False]  # captures only
    text = run_cli("plan", profile).stdout
    assert "\n5. stage snap (clone, snapshot) after the thaw" in text, text
    plan = run_cli("plan", snapshot_mode(profile), "--json").json()
    assert [s["in_freeze_window"] for s in plan["stages"]] == [True, False]
    assert plan["stages"][0]["released_after_run"] is True
    kinds = {c["kind"]: c for c in run_cli("plugins", "--json").json()["components"]}
    assert kinds["sqlite"]["distribution"] == "freezeframe-sqlite"
    assert kinds["clone"]["role"] == "snapshot" and kinds["archive"]["role"] == "copy"


def test_a_failed_run_exits_1_with_one_line_and_is_listed(tmp_path: Path, shop) -> None:
    profile, _ = shop
    # make the archive stage fail for real: its dir is a file, not a folder
    (tmp_path / "archives").write_text("not a directory")
    r = run_cli("backup", profile)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "archive" in errors[0]
    listed = run_cli("list", profile, "--json").json()
    assert listed[0]["status"] == "failed"
    assert not any((tmp_path / "snaps").iterdir())  # nothing of the failed run is left

    as_json = run_cli("backup", profile, "--json")  # the cause on stderr too, JSON on stdout
    assert as_json.returncode == 1
    assert as_json.json()["status"] == "failed"
    errors = [line for line in as_json.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "archive" in errors[0]


BAD = {
    "missing file": (None, "no such profile file"),
    "toml syntax": ("[profile\nname = 'x'", "invalid TOML"),
    "unknown plugin": (
        '[profile]\nname="x"\n[[application]]\nplugin="oracle"\nname="a"\n'
        '[[backup]]\nbackend="clone"\nname="s"\ndir="/tmp/s"',
        "unknown application plug-in 'oracle'",
    ),
    "unknown backend": (
        '[profile]\nname="x"\n[[backup]]\nbackend="tape"\nname="s"',
        "unknown backend 'tape'",
    ),
    "missing field": (
        '[profile]\nname="x"\n[[application]]\nplugin="sqlite"\nname="a"\n'
        '[[backup]]\nbackend="clone"\nname="s"\ndir="/tmp/s"',
        'field "path": missing',
    ),
    "mistyped field": (
        '[profile]\nname="x"\nfreeze_timeout=true\n[[backup]]\nbackend="clone"\nname="s"\n'
        'dir="/tmp/s"',
        'field "freeze_timeout"',
    ),
    "unknown field": (
        '[profile]\nname="x"\n[[backup]]\nbackend="clone"\nname="s"\ndir="/tmp/s"\ncolour=1',
        'field "colour": unknown field',
    ),
    "duplicate names": (
        '[profile]\nname="x"\n[[backup]]\nbackend="clone"\nname="s"\ndir="/tmp/s"\n'
        '[[backup]]\nbackend="clone"\nname="s"\ndir="/tmp/t"',
        "duplicate stage name 's'",
    ),
    "bad source": (
        '[profile]\nname="x"\n[[backup]]\nbackend="clone"\nname="s"\ndir="/tmp/s"\n'
        '[[backup]]\nbackend="archive"\nname="a"\nsource="nope"\ndir="/tmp/a"',
        "no earlier stage named 'nope'",
    ),
    "path does not exist": (
        '[profile]\nname="x"\n[[application]]\nplugin="sqlite"\nname="a"\n'
        'path="/nonexistent/x.db"\n[[backup]]\nbackend="clone"\nname="s"\ndir="/tmp/s"',
        'field "path": /nonexistent/x.db does not exist',
    ),
    # numbers a run cannot use are refused when the profile loads, not by every run
    "threads beyond zstd": (
        '[profile]\nname="x"\n[[backup]]\nbackend="clone"\nname="s"\ndir="/tmp/s"\n'
        '[[backup]]\nbackend="archive"\nname="a"\ndir="/tmp/a"\nthreads=1000000000000000000',
        "[[backup]] 'a': field \"threads\": must be at most 256, got 1000000000000000000",
    ),
    "freeze_timeout over a day": (
        '[profile]\nname="x"\nfreeze_timeout="25h"\n[[backup]]\nbackend="clone"\nname="s"\n'
        'dir="/tmp/s"',
        'field "freeze_timeout": a duration must be at most 1 day',
    ),
    "hex integer of 3000 digits": (
        '[profile]\nname="x"\nfreeze_timeout=0x' + "f" * 3000 + '\n[[backup]]\nbackend="clone"'
        '\nname="s"\ndir="/tmp/s"',
        'field "freeze_timeout": a duration must be at most 1 day',
    ),
    "keep of 3000 digits": (
        '[profile]\nname="x"\n[[backup]]\nbackend="clone"\nname="s"\ndir="/tmp/s"\n'
        "keep={last=0x" + "f" * 3000 + "}",
        'field "keep.last": must be at most 1000000',
    ),
    "integer of 5000 digits": (
        '[profile]\nname="x"\nfreeze_timeout=' + "9" * 5000,
        "invalid TOML: an integer of more than 4300 digits",
    ),
    "arrays nested too deeply": (
        '[profile]\nname="x"\nx=' + "[" * 5000 + "]" * 5000,
        "invalid TOML: arrays or tables nested too deeply",
    ),
    "tables nested too deeply": (
        '[profile]\nname="x"\nx=' + "{a=" * 5000 + "1" + "}" * 5000,
        "invalid TOML: arrays or tables nested too deeply",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("verb", ["check", "backup"])
def test_bad_input_is_one_line_exit_2_naming_file_and_field(
    tmp_path: Path, case: str, verb: str
) -> None:
    text, expected = BAD[case]
    profile = tmp_path / "bad.toml"
    if text is not None:
        profile.write_text(text.replace("[profile]", f'[profile]\nstate_dir="{tmp_path}/st"'))
    r = run_cli(verb, profile)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert str(profile) in lines[0] and expected in lines[0], lines[0]
    assert not (tmp_path / "st").exists()  # nothing was started, nothing written


def _check_in_1_gib(path: Path) -> subprocess.CompletedProcess[str]:
    """``freezeframe check PATH`` with 1 GiB of address space: reading /dev/zero whole
    ends in MemoryError instead of eating the machine's memory."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    return subprocess.run(
        [sys.executable, "-m", "freezeframe", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,  # a FIFO read without O_NONBLOCK waits here for ever
        preexec_fn=limit,
    )


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("fifo", "is a FIFO (named pipe), not a regular file"),
        ("/dev/zero", "is a character device, not a regular file"),
        ("directory", "is a directory, not a regular file"),
        ("1 MiB + 1", "is larger than 1 MiB"),
    ],
)
def test_a_profile_that_is_not_a_small_regular_file_is_refused_unread(
    tmp_path: Path, kind: str, message: str
) -> None:
    path = tmp_path / "p.toml"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "/dev/zero":
        path = Path("/dev/zero")
    else:  # a valid profile, padded with a comment to one byte over the limit
        text = '[profile]\nname="x"\n[[backup]]\nbackend="clone"\nname="s"\ndir="/tmp/s"\n#'
        path.write_text(text + "x" * ((1 << 20) + 1 - len(text)))
    r = _check_in_1_gib(path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines == [f"freezeframe: error: {path}: {message}"]


def test_a_symlinked_profile_up_to_1_mib_is_read(tmp_path: Path) -> None:
    text = (
        f'[profile]\nname="x"\nstate_dir="{tmp_path}/st"\n'
        f'[[backup]]\nbackend="clone"\nname="s"\ndir="{tmp_path}/s"\n#'
    )
    real = tmp_path / "real.toml"
    real.write_text(text + "x" * ((1 << 20) - len(text)))
    (tmp_path / "link.toml").symlink_to(real)
    r = run_cli("check", tmp_path / "link.toml")
    assert r.returncode == 0, r.stderr


def test_bad_input_with_json_prints_the_error_as_json(tmp_path: Path) -> None:
    r = run_cli("check", tmp_path / "nope.toml", "--json")
    assert r.returncode == 2
    assert "no such profile file" in r.json()["error"]


def test_usage_errors_are_one_line_exit_2() -> None:
    r = run_cli("restore", "x.toml", "latest")  # --to is required
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "--to" in r.stderr
    r = run_cli("frobnicate")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


# -- the catalog: read-only, damaged, truncated; runs killed while frozen -----------------


def one_error(stderr: str) -> str:
    """The single ``error:`` line of a failed command (and no traceback)."""
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, stderr
    return errors[0]


def test_a_run_killed_while_frozen_shows_its_freeze_window_as_unknown(tmp_path: Path, shop) -> None:
    profile = snapshot_mode(shop[0])  # the snapshot stage inside the window
    assert run_cli("backup", profile).returncode == 0
    # killed inside the window: quiesced, snapshot begun, never thawed
    r = run_cli("backup", profile, env={"FREEZEFRAME_FAULT": "sigkill@stage.start.snap"})
    assert r.returncode == -9
    listed = run_cli("list", profile)
    assert listed.returncode == 0, listed.stderr
    killed, good = listed.stdout.splitlines()
    assert "failed" in killed and "frozen        ? ms" in killed, killed
    assert "succeeded" in good
    assert float(good.split("frozen")[1].split("ms")[0]) > 0
    run = run_cli("list", profile, "--json").json()[0]
    assert run["applications"][0]["quiesce_start"] is not None
    assert run["applications"][0]["frozen_ms"] is None
    shown = run_cli("show", profile, run["run_id"])
    assert shown.returncode == 0
    assert "frozen ? ms" in shown.stdout and "not frozen" not in shown.stdout


def test_list_show_restore_verify_work_from_a_read_only_state_folder(
    tmp_path: Path, shop, read_only_mount
) -> None:
    profile, db = shop
    for _ in range(2):
        bump(db)
        assert run_cli("backup", profile).returncode == 0
    state = tmp_path / "state"
    before = sorted(p.name for p in (state / "shop").iterdir())
    read_only_mount(state)

    listed = run_cli("list", profile, "--json")
    assert listed.returncode == 0, listed.stderr
    assert [r["status"] for r in listed.json()] == ["succeeded", "succeeded"]
    shown = run_cli("show", profile, "latest")
    assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr
    r = run_cli("restore", profile, "latest", "--to", tmp_path / "drill")
    assert r.returncode == 0, r.stderr
    assert read_counter(restored(tmp_path / "drill", db)) == 2
    r = run_cli("verify", profile)
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout and "could not be recorded" in r.stderr
    assert "Traceback" not in r.stderr

    for verb in ("backup", "prune"):
        r = run_cli(verb, profile)
        assert r.returncode == 1
        line = one_error(r.stderr)
        assert str(state / "shop") in line and "cannot be written" in line
    assert sorted(p.name for p in (state / "shop").iterdir()) == before


def _damage(catalog: Path) -> None:
    """Overwrite the catalog's third page (a table's b-tree) with garbage."""
    with open(catalog, "r+b") as f:
        f.seek(2 * 4096)
        f.write(b"\xa5" * 4096)


def test_a_damaged_catalog_fails_the_backup_in_one_line_and_is_left_as_it_is(
    tmp_path: Path, shop
) -> None:
    profile, _ = shop
    for _ in range(3):
        assert run_cli("backup", profile).returncode == 0
    catalog = tmp_path / "state" / "shop" / "catalog.sqlite"
    _damage(catalog)
    damaged = catalog.read_bytes()
    archives = sorted((tmp_path / "archives").iterdir())

    r = run_cli("backup", profile)
    assert r.returncode == 1, r.stderr
    line = one_error(r.stderr)
    assert str(catalog) in line and "damaged" in line and "from a copy" in line
    assert catalog.read_bytes() == damaged  # never rebuilt, never written
    assert sorted((tmp_path / "archives").iterdir()) == archives
    assert not any((tmp_path / "snaps").iterdir())
    r = run_cli("prune", profile)
    assert r.returncode == 1 and "damaged" in one_error(r.stderr)
    assert catalog.read_bytes() == damaged


def test_a_truncated_catalog_warns_and_turns_retention_off_until_told(tmp_path: Path, shop) -> None:
    profile, _ = shop  # the archive stage keeps the last 2
    for _ in range(3):
        assert run_cli("backup", profile).returncode == 0
    old = sorted((tmp_path / "archives").iterdir())
    assert len(old) == 2
    catalog = tmp_path / "state" / "shop" / "catalog.sqlite"
    catalog.write_bytes(b"")

    listed = run_cli("list", profile)
    assert listed.returncode == 0 and "no runs yet" in listed.stdout
    assert "history is lost" in listed.stderr and str(catalog) in listed.stderr
    for _ in range(3):
        r = run_cli("backup", profile)
        assert r.returncode == 0, r.stderr
        assert "history is lost" in r.stderr and "retention is off" in r.stderr
    # nothing was deleted: the old archives and the three new ones
    assert len(list((tmp_path / "archives").iterdir())) == 5
    assert not any((tmp_path / "snaps").iterdir())  # snapshots are still released
    r = run_cli("prune", profile)
    assert r.returncode == 1
    assert "retention is off" in one_error(r.stderr)
    assert len(list((tmp_path / "archives").iterdir())) == 5

    marker = catalog.with_name("catalog.sqlite.lost")
    assert str(catalog) in marker.read_text()
    marker.unlink()  # the person has dealt with it
    r = run_cli("prune", profile)
    assert r.returncode == 0, r.stderr
    assert "history is lost" not in r.stderr
    left = sorted((tmp_path / "archives").iterdir())
    assert len(left) == 4 and set(old) <= set(left)  # the catalog's newest 2, and the old 2


def test_a_full_state_disk_is_one_line_not_an_internal_error(tmp_path: Path, shop) -> None:
    """A write to an open descriptor (the lock's) names no file: ENOSPC from it is the
    machine's disk, not our bug (it used to be exit 70, "internal error")."""
    profile, _ = shop
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(state)], check=True)
    try:
        (state / "shop").mkdir(mode=0o700)
        with open(state / "filler", "wb", buffering=0) as f, pytest.raises(OSError):
            for _ in range(64):  # bounded: 64 KiB is the whole filesystem
                f.write(b"x" * 4096)
        r = run_cli("backup", profile)
        assert r.returncode == 1, r.stderr
        line = one_error(r.stderr)
        assert "No space left on device" in line and str(state / "shop" / "lock") in line
    finally:
        subprocess.run(["umount", str(state)], check=True)


# -- the plug-in contract, enforced at registration --------------------------------------


class HalfBackend(Backend):
    """Implements only ``run``: no restore, verify or delete."""

    kind = "ff-half"
    role = Role.COPY

    def run(self, context: StageContext) -> Artifact:
        """An empty artifact."""
        return Artifact(context.run_id)


@hookimpl
def freezeframe_register_backends(register: Callable[[type[Backend]], None]) -> None:
    """Registers the half-made backend (this test module is its plug-in module)."""
    register(HalfBackend)


def test_a_backend_missing_abstract_methods_is_broken_and_fails_check(
    shop: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    registry = build_registry(modules=[sys.modules[__name__]])
    missing = "HalfBackend: abstract methods not implemented: delete, restore, verify"

    assert main(["plugins", "--json"], registry=registry) == 0
    data = json.loads(capsys.readouterr().out)
    assert "ff-half" not in {c["kind"] for c in data["components"]}
    assert {
        "name": "HalfBackend",
        "distribution": f"<{__name__}>",
        "kind": "ff-half",
        "error": missing,
    } in data["broken"]
    assert main(["plugins"], registry=registry) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["BROKEN", "HalfBackend", f"<{__name__}>:", *missing.split()] in lines

    profile, _ = shop
    profile.write_text(profile.read_text() + '[[backup]]\nbackend = "ff-half"\nname = "copy"\n')
    assert main(["check", str(profile)], registry=registry) == 2
    out = capsys.readouterr()
    assert out.err.splitlines() == [
        f"freezeframe: error: {profile}: [[backup]] 'copy': field \"backend\": "
        f"backend 'ff-half' is broken (<{__name__}>): {missing}"
    ]
    assert "Traceback" not in out.err


class PickyApp(ApplicationPlugin):
    """An application whose check refuses: a field (``refuse = "field"``), or not."""

    kind = "ff-picky"

    def __init__(self, name: str, table: Table) -> None:
        super().__init__(name, table)
        self.refuse = table.get_choice("refuse", ("field", "other", "nothing"), "nothing")

    def check(self) -> None:
        """Raise what ``refuse`` says."""
        if self.refuse == "field":
            raise ConfigError("refuse", "the server says this field must change")
        if self.refuse == "other":
            raise FreezeframeError("cannot reach it")

    def quiesce(self, deadline: Deadline) -> None:
        """Nothing to freeze."""

    def unquiesce(self, snapshots: Sequence[Artifact]) -> None:
        """Nothing to thaw."""


@hookimpl
def freezeframe_register_applications(register: Callable[[type[ApplicationPlugin]], None]) -> None:
    """Registers the picky application (this test module is its plug-in module)."""
    register(PickyApp)


@pytest.mark.parametrize(("refuse", "code"), [("field", 2), ("other", 1), ("nothing", 0)])
def test_check_exits_2_when_a_check_refuses_a_field_of_the_profile(
    shop: tuple[Path, Path], capsys: pytest.CaptureFixture[str], refuse: str, code: int
) -> None:
    registry = build_registry(modules=[sys.modules[__name__]])
    profile, _ = shop
    app = f'[[application]]\nplugin = "ff-picky"\nname = "picky"\nrefuse = "{refuse}"\n'
    profile.write_text(profile.read_text() + app)
    assert main(["check", str(profile)], registry=registry) == code
    errors = capsys.readouterr().err.splitlines()
    if refuse == "field":
        assert errors == [
            "freezeframe: error: application 'picky': field \"refuse\": "
            "the server says this field must change"
        ]
