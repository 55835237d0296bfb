"""``freezeframe schedule``: the systemd units it writes pass ``systemd-analyze verify``
(offline: no systemd need run), and their command, run as systemd would run it, backs
the profile up; the crontab line has five valid fields and a command that, run by the
shell as cron runs it, backs the profile up too; ``--list``, ``--remove`` and a second
``schedule`` touch exactly the profile's own files; what cannot be scheduled is refused
in one line with exit code 2."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from freezeframe_testing.plugin import make_counter_db, require_tool, sqlite_clone_profile

#: This environment's ``freezeframe`` console script: what the units must run.
FREEZEFRAME = str(Path(sys.executable).parent / "freezeframe")


def ff(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FREEZEFRAME, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def profile_in(folder: Path, name: str) -> Path:
    """A real profile (SQLite, clone) named ``name`` in ``folder``, which may have any name."""
    folder.mkdir(parents=True, exist_ok=True)
    path = sqlite_clone_profile(folder, make_counter_db(folder / "db.sqlite"), name=name)
    return path.rename(folder / f"{name}.toml")


def keys(unit: Path) -> dict[str, list[str]]:
    """``Section.Key`` -> values, as systemd reads a unit file (comments left out)."""
    found: dict[str, list[str]] = {}
    section = ""
    for line in unit.read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            found.setdefault(f"{section}.{key}", []).append(value)
    return found


def exec_start(unit: Path) -> list[str]:
    """The argv of ``ExecStart=``, unquoted as systemd does for what ``schedule`` writes
    (double quotes with backslash escapes; ``%%`` and ``$$`` for one ``%`` and ``$``)."""
    (line,) = keys(unit)["Service.ExecStart"]
    return [a.replace("%%", "%").replace("$$", "$") for a in shlex.split(line)]


def verify(units: list[Path], tmp_path: Path, *, user: bool = False) -> None:
    """``systemd-analyze verify`` passes them with not even a warning."""
    tool = require_tool("systemd-analyze")
    runtime = tmp_path / "runtime"  # a user manager wants one, even offline
    runtime.mkdir(mode=0o700, exist_ok=True)
    r = subprocess.run(
        [tool, *(["--user"] if user else []), "verify", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
    )
    assert (r.returncode, r.stderr) == (0, ""), r.stderr


@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_units_pass_systemd_analyze_verify_and_their_command_backs_up(
    tmp_path: Path, user: bool
) -> None:
    profile = profile_in(tmp_path / "odd name %n $HOME \\ 'q'", "nightly")
    units = tmp_path / "units"
    r = ff(
        "schedule",
        profile,
        "--on-calendar",
        "Mon..Fri 03:00",
        "--randomized-delay",
        "30min",
        "--persistent",
        "--unit-dir",
        units,
        *(["--user"] if user else []),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    service, timer = units / "freezeframe-nightly.service", units / "freezeframe-nightly.timer"
    assert data["units"] == [str(service), str(timer)]
    assert sorted(units.iterdir()) == [service, timer]
    ctl = "systemctl --user" if user else "systemctl"
    assert data["next"] == f"{ctl} daemon-reload && {ctl} enable --now freezeframe-nightly.timer"
    verify([service, timer], tmp_path, user=user)

    s, t = keys(service), keys(timer)
    for key, value in {
        "Service.Type": "oneshot",
        "Service.Nice": "10",
        "Service.IOSchedulingClass": "best-effort",
        "Service.IOSchedulingPriority": "7",
        "Service.NoNewPrivileges": "yes",
        "Service.PrivateTmp": "no",
        "Service.KillMode": "process",
    }.items():
        assert s[key] == [value], key
    assert ("Unit.After" in s) is not user  # a user's manager has no network-online.target
    assert t["Timer.OnCalendar"] == ["Mon..Fri 03:00"]
    assert t["Timer.RandomizedDelaySec"] == ["30min"]
    assert t["Timer.Persistent"] == ["true"]
    assert t["Install.WantedBy"] == ["timers.target"]

    argv = exec_start(service)
    assert argv == data["command"] == [FREEZEFRAME, "backup", str(profile), "--json"]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd="/")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["status"] == "succeeded"


def test_a_profile_on_the_default_state_dir_keeps_it_under_systemd(tmp_path: Path) -> None:
    profile = profile_in(tmp_path / "p", "plain")
    profile.write_text(re.sub(r"(?m)^state_dir = .*$", "", profile.read_text()))
    state = tmp_path / "state %h $HOME"  # Environment= expands specifiers, not variables
    r = ff(
        "schedule", profile, "--on-calendar", "daily", "--unit-dir", tmp_path / "u",
        env={"XDG_STATE_HOME": str(state)},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    service = tmp_path / "u" / "freezeframe-plain.service"
    written = str(state).replace("%", "%%")
    assert keys(service)["Service.Environment"] == [f'"XDG_STATE_HOME={written}"']
    verify([service], tmp_path)


def test_schedule_again_replaces_and_remove_removes_exactly_its_own(tmp_path: Path) -> None:
    units = tmp_path / "units"
    alpha, beta = profile_in(tmp_path / "a", "alpha"), profile_in(tmp_path / "b", "beta")
    for p in (alpha, beta):
        assert ff("schedule", p, "--on-calendar", "daily", "--unit-dir", units).returncode == 0
    wants = units / "timers.target.wants"
    wants.mkdir()
    for name in ("alpha", "beta"):  # what `systemctl enable` makes
        (wants / f"freezeframe-{name}.timer").symlink_to(units / f"freezeframe-{name}.timer")
    (units / "other.service").write_text("[Service]\nExecStart=/bin/true\n")
    before = sorted(units.rglob("*"))

    r = ff("schedule", alpha, "--on-calendar", "hourly", "--unit-dir", units)
    assert r.returncode == 0, r.stderr
    assert sorted(units.rglob("*")) == before  # replaced, nothing added
    assert keys(units / "freezeframe-alpha.timer")["Timer.OnCalendar"] == ["hourly"]
    assert not [p for p in units.iterdir() if p.name.startswith(".")]  # no temporary left

    r = ff("schedule", "--list", "--unit-dir", units, "--json")
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    assert listed["unit_dir"] == str(units)
    assert [(t["profile"], t["on_calendar"], t["profile_path"]) for t in listed["timers"]] == [
        ("alpha", ["hourly"], str(alpha)),
        ("beta", ["daily"], str(beta)),
    ]
    assert set(listed["timers"][0]) == {
        "profile",
        "timer",
        "on_calendar",
        "randomized_delay",
        "persistent",
        "profile_path",
        "service",
    }
    human = ff("schedule", "--list", "--unit-dir", units).stdout.splitlines()
    assert len(human) == 2 and "OnCalendar=hourly" in human[0] and str(alpha) in human[0]

    r = ff("schedule", alpha, "--remove", "--unit-dir", units, "--json")
    assert r.returncode == 0, r.stderr
    gone = {
        units / "freezeframe-alpha.service",
        units / "freezeframe-alpha.timer",
        wants / "freezeframe-alpha.timer",
    }
    assert set(map(Path, json.loads(r.stdout)["removed"])) == gone
    assert sorted(units.rglob("*")) == sorted(set(before) - gone)

    r = ff("schedule", alpha, "--remove", "--unit-dir", units)
    assert r.returncode == 1
    assert r.stderr == f"freezeframe: error: no schedule of profile 'alpha' in {units}\n"

    beta.unlink()  # a profile deleted before its schedule: removed by its name
    r = subprocess.run(
        [FREEZEFRAME, "schedule", "beta", "--remove", "--unit-dir", str(units)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert sorted(units.rglob("*")) == [units / "other.service", wants]


def test_what_cannot_be_scheduled_is_one_line_and_exit_2(tmp_path: Path) -> None:
    require_tool("systemd-analyze")
    profile = profile_in(tmp_path / "p", "nightly")
    units = tmp_path / "units"
    for args, said in [
        (["--on-calendar", "bogus"], "--on-calendar 'bogus' is not a systemd calendar"),
        (["--on-calendar", "daily", "--randomized-delay", "30x"], "'30x' is not a systemd time"),
        ([], "give --on-calendar SPEC"),
        (["--on-calendar", "daily", "--cron", "--persistent"], "cron has no --persistent"),
        (["--on-calendar", "quarterly", "--cron"], "'quarterly' has no crontab form"),
        (["--on-calendar", "*-*-01 03:00", "--cron"], "has no crontab form"),
    ]:
        where = [] if "--cron" in args else ["--unit-dir", units]
        r = ff("schedule", profile, *args, *where)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.count("\n") == 1 and said in r.stderr, r.stderr
        assert r.stderr.startswith("freezeframe: error: ")
        assert not units.exists()
    r = ff("schedule")
    assert r.returncode == 2 and "give a PROFILE (or --list)" in r.stderr


#: Each field of a crontab line: its smallest and largest value.
FIELDS = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


def cron_fields_valid(fields: list[str]) -> bool:
    """Each of the five fields is ``*`` or a list of numbers and ranges within its bounds."""
    for text, (low, high) in zip(fields, FIELDS, strict=True):
        if text == "*":
            continue
        for part in text.split(","):
            m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if not m or not low <= int(m[1]) <= int(m[2] or m[1]) <= high:
                return False
    return True


@pytest.mark.parametrize(
    ("calendar", "fields"),
    [
        ("daily", "0 0 * * *"),
        ("hourly", "0 * * * *"),
        ("weekly", "0 0 * * 1"),
        ("*-*-* 03:00:00", "0 3 * * *"),
        ("Mon..Fri *-*-* 3:30", "30 3 * * 1,2,3,4,5"),
        ("Sat,Sun 22:05", "5 22 * * 0,6"),
    ],
)
def test_the_crontab_line_parses_and_backs_up(tmp_path: Path, calendar: str, fields: str) -> None:
    profile = profile_in(tmp_path / "odd %d name", "nightly")
    r = ff("schedule", profile, "--cron", "--on-calendar", calendar)
    assert r.returncode == 0, r.stderr
    (line,) = r.stdout.splitlines()
    parts = line.split(None, 5)
    assert len(parts) == 6 and " ".join(parts[:5]) == fields
    assert cron_fields_valid(parts[:5])
    command = parts[5]
    assert "%" not in command.replace("\\%", "")  # cron would read a bare % as a newline
    shell = command.replace("\\%", "%")  # what cron hands /bin/sh
    assert shlex.split(shell) == [FREEZEFRAME, "backup", str(profile), "--quiet", ">/dev/null"]
    if calendar == "daily":  # run it as cron would: /bin/sh -c, from the home folder
        run = subprocess.run(
            ["/bin/sh", "-c", shell], capture_output=True, text=True, timeout=120, cwd="/"
        )
        assert (run.returncode, run.stdout, run.stderr) == (0, "", "")
        listed = ff("list", profile, "--json")
        assert [r["status"] for r in json.loads(listed.stdout)] == ["succeeded"]
