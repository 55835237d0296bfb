"""The ``drill`` verb end to end, on SQLite databases and the profile's command checks: the
verdict recorded and shown, retention keeping the newest proven run, drills after each
backup, the scratch folder and every process a drill started gone after SIGTERM and
after ``kill -9``, and the profile's checks refused at ``check`` when they are wrong."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from freezeframe.drilling import CheckSkipped, DrillContext
from freezeframe_testing.plugin import make_counter_db, run_cli, wait_until

PROFILE = """
[profile]
name = "drilled"
state_dir = {state}
drill_dir = {drills}
{extra}

[[application]]
plugin = "sqlite"
name = "orders"
path = {orders}
{orders_checks}

[[application]]
plugin = "sqlite"
name = "ledger"
path = {ledger}

[[backup]]
backend = "clone"
name = "snap"
dir = {snaps}

[[backup]]
backend = "archive"
name = "archive"
dir = {archives}
{keep}
"""

#: A check across the two applications: the restored counters must be equal (a writer
#: bumps both in one go between backups, so a consistent backup has them equal).
SAME_COUNT = """
[[application.check]]
name = "same-count"
command = ["sh", "-c", '''
a=$(sqlite3 "$FREEZEFRAME_ORDERS_PATH" "SELECT n FROM counter") || exit 2
b=$(sqlite3 "$FREEZEFRAME_LEDGER_PATH" "SELECT n FROM counter") || exit 2
echo "orders $a ledger $b"; [ "$a" = "$b" ]''']
"""


def _q(path: Path) -> str:
    return json.dumps(str(path))


@pytest.fixture
def shop(tmp_path: Path) -> Callable[..., Path]:
    """Write the profile (two SQLite databases, clone then archive); returns its path."""
    data = tmp_path / "data"
    data.mkdir()
    make_counter_db(data / "orders.db")
    make_counter_db(data / "ledger.db")

    def write(*, checks: str = "", extra: str = "", keep: str = "") -> Path:
        path = tmp_path / "profile.toml"
        path.write_text(
            PROFILE.format(
                state=_q(tmp_path / "state"),
                drills=_q(tmp_path / "drills"),
                extra=extra,
                orders=_q(data / "orders.db"),
                ledger=_q(data / "ledger.db"),
                orders_checks=checks,
                snaps=_q(tmp_path / "snaps"),
                archives=_q(tmp_path / "archives"),
                keep=keep,
            )
        )
        return path

    return write


def bump(*dbs: Path) -> None:
    for db in dbs:
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE counter SET n = n + 1")
        conn.close()


def backup(profile: Path) -> str:
    r = run_cli("backup", profile, "--json")
    assert r.returncode == 0, r.stderr
    return str(r.json()["run_id"])


def runs(profile: Path) -> dict[str, dict]:
    r = run_cli("list", profile, "--json")
    assert r.returncode == 0, r.stderr
    return {run["run_id"]: run for run in r.json()}


def scratch_left(tmp_path: Path) -> list[str]:
    drills = tmp_path / "drills"
    return sorted(os.listdir(drills)) if drills.exists() else []


@pytest.mark.skipif(not os.path.exists("/usr/bin/sqlite3"), reason="needs the sqlite3 shell")
def test_a_passed_drill_proves_the_run_and_is_shown(tmp_path: Path, shop) -> None:
    profile = shop(checks=SAME_COUNT)
    data = tmp_path / "data"
    bump(data / "orders.db", data / "ledger.db")
    run_id = backup(profile)
    assert runs(profile)[run_id]["proof"] == "not drilled"

    r = run_cli("drill", profile, "--json")
    assert r.returncode == 0, r.stderr
    out = r.json()
    assert out["ok"] is True
    (drill,) = out["drills"]
    assert drill["run_id"] == run_id and drill["status"] == "passed"
    assert drill["stage"] == "archive"  # the last stage left: the copy
    apps = {a["name"]: a for a in drill["applications"]}
    assert set(apps) == {"orders", "ledger"}
    assert apps["orders"]["restored_files"] >= 1 and apps["orders"]["restored_bytes"] > 0
    checks = {c["name"]: c for c in apps["orders"]["checks"]}
    assert checks["same-count"]["kind"] == "user"
    assert checks["same-count"]["status"] == "passed"
    assert checks["same-count"]["detail"] == "orders 1 ledger 1"
    assert scratch_left(tmp_path) == []

    assert runs(profile)[run_id]["proof"] == "proven"
    shown = run_cli("show", profile, run_id, "--json").json()
    assert shown["proof"] == "proven"
    assert [d["drill_id"] for d in shown["drills"]] == [drill["drill_id"]]
    human = run_cli("list", profile).stdout
    assert "proven" in human

    # every succeeded run is drilled now: nothing to do, and that is no error
    again = run_cli("drill", profile, "--json")
    assert again.returncode == 0, again.stderr
    assert again.json()["drills"] == []


def test_a_failed_check_fails_the_drill_in_one_line_and_keeps_the_run(tmp_path: Path, shop) -> None:
    profile = shop(
        checks="""
[[application.check]]
name = "refuses"
command = ["sh", "-c", "echo 'row 7 is gone' >&2; exit 3"]
"""
    )
    run_id = backup(profile)
    r = run_cli("drill", profile, run_id)
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1
    assert "application 'orders': check 'refuses': sh failed (exit 3): row 7 is gone" in errors[0]
    assert "Traceback" not in r.stderr
    listed = runs(profile)[run_id]
    assert listed["status"] == "succeeded" and listed["proof"] == "drill failed"
    assert (tmp_path / "archives").exists() and any((tmp_path / "archives").iterdir())
    assert scratch_left(tmp_path) == []


def test_default_drills_the_newest_undrilled_run_and_all_undrilled_drills_each(
    tmp_path: Path, shop
) -> None:
    profile = shop()
    first, second, third = (backup(profile) for _ in range(3))
    r = run_cli("drill", profile, "--json")
    assert r.returncode == 0, r.stderr
    assert [d["run_id"] for d in r.json()["drills"]] == [third]
    r = run_cli("drill", profile, "--all-undrilled", "--json")
    assert r.returncode == 0, r.stderr
    assert [d["run_id"] for d in r.json()["drills"]] == [second, first]
    assert {run["proof"] for run in runs(profile).values()} == {"proven"}
    both = run_cli("drill", profile, first, "--all-undrilled")
    assert both.returncode == 2 and "not both" in both.stderr


def test_retention_never_deletes_the_newest_proven_run(tmp_path: Path, shop) -> None:
    profile = shop(keep="keep = { last = 1 }")
    proven = backup(profile)
    assert run_cli("drill", profile).returncode == 0
    later = [backup(profile) for _ in range(2)]
    listed = runs(profile)
    archive = {
        rid: next(s for s in run["stages"] if s["name"] == "archive") for rid, run in listed.items()
    }
    assert not archive[proven]["deleted"], "the newest proven run was deleted"
    assert archive[later[0]]["deleted"] and not archive[later[1]]["deleted"]
    # once a newer run is proven, the older one is no longer held
    assert run_cli("drill", profile, later[1]).returncode == 0
    assert run_cli("prune", profile).returncode == 0
    archive = {
        rid: next(s for s in run["stages"] if s["name"] == "archive")
        for rid, run in runs(profile).items()
    }
    assert archive[proven]["deleted"] and not archive[later[1]]["deleted"]


def test_drill_after_backup_runs_by_itself_and_a_failure_keeps_the_backup(
    tmp_path: Path, shop
) -> None:
    profile = shop(extra='drill = "after-backup"')
    r = run_cli("backup", profile, "--json")
    assert r.returncode == 0, r.stderr
    out = r.json()
    assert out["drill"]["status"] == "passed" and out["drill"]["run_id"] == out["run_id"]
    assert out["proof"] == "proven"

    profile = shop(
        extra='drill = "after-backup"',
        checks='[[application.check]]\nname = "no"\ncommand = ["false"]\n',
    )
    r = run_cli("backup", profile, "--json")
    assert r.returncode == 1
    out = r.json()
    assert out["status"] == "succeeded" and out["drill"]["status"] == "failed"
    assert "succeeded and is kept, but its drill" in r.stderr
    assert runs(profile)[out["run_id"]]["proof"] == "drill failed"
    assert scratch_left(tmp_path) == []


def _drill_in_background(profile: Path, tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    """``freezeframe drill`` whose one check starts a job in the background and waits;
    returns it and the file where the check wrote its own pid and the job's."""
    pids = tmp_path / "pids"
    profile.write_text(
        profile.read_text().replace(
            '[[application]]\nplugin = "sqlite"\nname = "ledger"',
            f"""[[application.check]]
name = "hangs"
command = ["sh", "-c", "sleep 600 & echo $$ $! > {pids}.tmp; mv {pids}.tmp {pids}; wait"]

[[application]]
plugin = "sqlite"
name = "ledger\"""",
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "freezeframe", "drill", str(profile)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert wait_until(lambda: pids.exists() or proc.poll() is not None, 60), "the check never ran"
    assert proc.poll() is None, proc.communicate()
    return proc, pids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_drill_cut_short_leaves_no_process_nor_scratch_folder(
    tmp_path: Path, shop, how: str
) -> None:
    profile = shop()
    original = (tmp_path / "data" / "orders.db").read_bytes()
    run_id = backup(profile)
    proc, pids = _drill_in_background(profile, tmp_path)
    shell, job = (int(p) for p in pids.read_text().split())
    try:
        assert _alive(shell) and _alive(job)
        assert len(scratch_left(tmp_path)) == 1
        proc.send_signal(getattr(signal, how))
        proc.communicate(timeout=60)
        if how == "SIGTERM":  # the drill cleans up after itself
            assert proc.returncode == 128 + signal.SIGTERM
        else:  # the next command of the profile does
            assert run_cli("list", profile).returncode == 0
        assert wait_until(lambda: not _alive(shell) and not _alive(job), 15)
        assert scratch_left(tmp_path) == []
        shown = run_cli("show", profile, run_id, "--json").json()
        (drill,) = shown["drills"]
        assert drill["status"] == "interrupted" and shown["proof"] == "not drilled"
        assert (tmp_path / "data" / "orders.db").read_bytes() == original
    finally:
        for pid in (shell, job):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize(
    ("check", "says"),
    [
        ('name = "x"\nsql = "SELECT 1"\nexpect = 1\nextra = 2', 'field "extra": unknown field'),
        ('name = "x"\ncommand = ["true"]\nexpect = 0', "a command check expects exit status 0"),
        ('name = "x"', "give either sql"),
        ('name = "x"\nsql = "SELECT 1"\ncommand = ["true"]', "give either sql"),
        ('name = "x"\ncommand = "true"', 'field "command": expected a list of strings'),
    ],
)
def test_a_wrong_check_is_one_line_at_check_time(shop, check: str, says: str) -> None:
    profile = shop(checks=f"[[application.check]]\n{check}\n")
    r = run_cli("check", profile)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and says in lines[0] and "[[application]] 'orders'" in lines[0]


def test_a_sql_check_of_an_application_without_sql_is_refused(tmp_path: Path) -> None:
    profile = tmp_path / "exec.toml"
    profile.write_text(
        f"""
[profile]
name = "x"
state_dir = {_q(tmp_path / "state")}

[[application]]
plugin = "exec"
name = "files"
paths = [{_q(tmp_path)}]
quiesce = ["true"]
unquiesce = ["true"]

[[application.check]]
name = "rows"
sql = "SELECT 1"
expect = 1

[[backup]]
backend = "clone"
name = "snap"
dir = {_q(tmp_path / "snaps")}
"""
    )
    r = run_cli("check", profile)
    assert r.returncode == 2, r.stderr
    assert "plug-in 'exec' answers no SQL" in r.stderr and "'files'" in r.stderr


def test_drill_dir_writable_by_others_is_refused(tmp_path: Path, shop) -> None:
    profile = shop()
    backup(profile)
    drills = tmp_path / "drills"
    drills.mkdir(mode=0o777)
    drills.chmod(0o777)
    r = run_cli("drill", profile)
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert errors == [
        f"freezeframe: error: drill_dir {drills}: others can write it (mode 777): chmod go-w it"
    ]
    # not a verdict on the backup: nothing recorded, nothing made
    assert all(run["proof"] == "not drilled" for run in runs(profile).values())
    assert scratch_left(tmp_path) == []


def test_observers_hear_of_each_drill_and_one_that_raises_changes_nothing(
    tmp_path: Path, shop, registry_with
) -> None:
    import freezeframe_testing.components as comps
    from freezeframe.engine import Engine
    from freezeframe.profile import load_profile

    comps.Observer.RAISE = True
    comps.Observer.drills.clear()
    try:
        registry = registry_with(comps, comps.Observer())
        engine = Engine(load_profile(shop(extra='drill = "after-backup"'), registry), registry)
        result = engine.backup()
        assert result.drill is not None and result.drill.status == "passed"
        (heard,) = comps.Observer.drills
        assert heard.drill_id == result.drill.drill_id and heard.status == "passed"
        (again,) = engine.drill(result.record.run_id)
        assert again.status == "passed"
        assert [d.drill_id for d in comps.Observer.drills] == [heard.drill_id, again.drill_id]
    finally:
        comps.Observer.RAISE = False


def test_an_application_whose_every_check_was_skipped_is_not_proven(
    tmp_path: Path, shop, registry_with
) -> None:
    """A copy nothing could check (its server is not installed here) proves nothing."""
    import freezeframe_testing.components as comps
    from freezeframe.engine import Engine
    from freezeframe.profile import load_profile
    from freezeframe_sqlite import SqlitePlugin

    class Unchecked(SqlitePlugin):
        kind = "sqlite-unchecked"

        @contextmanager
        def drill(self, ctx: DrillContext) -> Iterator[None]:
            ctx.check("start", _skip)
            yield None

    class Registers:
        from freezeframe.plugin import hookimpl

        @hookimpl
        def freezeframe_register_applications(self, register) -> None:
            register(Unchecked)

    profile = shop()
    profile.write_text(
        profile.read_text().replace(
            '"sqlite"\nname = "ledger"', '"sqlite-unchecked"\nname = "ledger"'
        )
    )
    registry = registry_with(comps, Registers())
    engine = Engine(load_profile(profile, registry), registry)
    run = engine.backup().record
    (drill,) = engine.drill(run.run_id)
    assert drill.status == "failed"
    assert drill.failures == [
        "application 'ledger': check 'checked': no check could run here (start: "
        "sqlite-unchecked is not installed here (test))"
    ]


def _skip() -> None:
    raise CheckSkipped("sqlite-unchecked is not installed here (test)")
