"""Retention never deletes the newest verified backup, and prune waits for no one: it refuses."""

from __future__ import annotations

from pathlib import Path

from freezeframe.lock import ProfileLock
from freezeframe_testing.plugin import make_counter_db, run_cli

PROFILE = """
    [profile]
    name = "keep"

    [[application]]
    plugin = "sqlite"
    name = "db"
    path = "{db}"

    [[backup]]
    backend = "clone"
    name = "snap"
    dir = "{root}/snaps"

    [[backup]]
    backend = "archive"
    name = "archive"
    dir = "{root}/archives"
    keep = {{ last = 1 }}
"""


def live_archives(listed: list[dict]) -> list[str]:
    return [
        r["run_id"]
        for r in listed
        for s in r["stages"]
        if s["name"] == "archive" and s["artifact"] and not s["deleted"]
    ]


def test_the_newest_verified_backup_survives_keep_last_1(tmp_path: Path, write_profile) -> None:
    db = make_counter_db(tmp_path / "db.sqlite")
    profile = write_profile(PROFILE.format(db=db, root=tmp_path))
    first = run_cli("backup", profile, "--json").json()["run_id"]
    assert run_cli("verify", profile, first).returncode == 0
    runs = [run_cli("backup", profile, "--json").json()["run_id"] for _ in range(3)]
    listed = run_cli("list", profile, "--json").json()
    # keep last 1 keeps the newest; the newest verified one (the first) is kept too
    assert sorted(live_archives(listed)) == sorted([first, runs[-1]])
    assert len(list((tmp_path / "archives").iterdir())) == 2
    r = run_cli("restore", profile, first, "--to", tmp_path / "r")
    assert r.returncode == 0, r.stderr


def test_prune_dry_run_shows_and_deletes_nothing(tmp_path: Path, write_profile) -> None:
    db = make_counter_db(tmp_path / "db.sqlite")
    profile = write_profile(PROFILE.format(db=db, root=tmp_path).replace("last = 1", "last = 3"))
    runs = [run_cli("backup", profile, "--json").json()["run_id"] for _ in range(3)]
    text = profile.read_text().replace("last = 3", "last = 1")
    profile.write_text(text)
    r = run_cli("prune", profile, "--dry-run", "--json")
    assert r.returncode == 0
    assert sorted(d["run_id"] for d in r.json()["deleted"]) == sorted(runs[:2])
    assert len(list((tmp_path / "archives").iterdir())) == 3  # dry run: all still there
    r = run_cli("prune", profile, "--json")
    assert sorted(d["run_id"] for d in r.json()["deleted"]) == sorted(runs[:2])
    assert len(list((tmp_path / "archives").iterdir())) == 1


def test_prune_refuses_while_a_run_holds_the_lock(tmp_path: Path, write_profile) -> None:
    db = make_counter_db(tmp_path / "db.sqlite")
    profile = write_profile(PROFILE.format(db=db, root=tmp_path))
    home = tmp_path / "state" / "keep"
    home.mkdir(parents=True)
    with ProfileLock(home / "lock", "keep", "backup"):
        r = run_cli("prune", profile)
    assert r.returncode == 3
    assert "busy" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_prune_says_each_deletion_once_and_list_shows_the_runs_pruned(
    tmp_path: Path, write_profile
) -> None:
    db = make_counter_db(tmp_path / "db.sqlite")
    profile = write_profile(PROFILE.format(db=db, root=tmp_path).replace("last = 1", "last = 3"))
    runs = [run_cli("backup", profile, "--json").json()["run_id"] for _ in range(3)]
    profile.write_text(profile.read_text().replace("last = 3", "last = 1"))

    r = run_cli("prune", profile)
    assert r.returncode == 0, r.stderr
    said = r.stdout + r.stderr
    for run_id in runs[:2]:
        assert said.count(f"keep-{run_id}.tar.zst") == 1, said  # once, not once more in the log
        assert f"deleted keep-{run_id}.tar.zst (stage archive, run {run_id}): keep last = 1" in (
            r.stdout
        )
    assert runs[2] not in said

    listed = {
        line.split()[0]: line.split()[1] for line in run_cli("list", profile).stdout.splitlines()
    }
    assert listed == {runs[0]: "pruned", runs[1]: "pruned", runs[2]: "succeeded"}
    pruned = {
        r["run_id"]: (r["status"], r["pruned"]) for r in run_cli("list", profile, "--json").json()
    }
    assert pruned == {
        runs[0]: ("succeeded", True),  # its status stays what the run did
        runs[1]: ("succeeded", True),
        runs[2]: ("succeeded", False),  # the snapshot was released, the archive is kept
    }
    line = next(x for x in run_cli("list", profile).stdout.splitlines() if x.startswith(runs[0]))
    assert " 0 B" not in line and "not drilled" not in line
