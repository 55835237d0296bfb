"""The ``prometheus`` observer against Debian's real node exporter and Pushgateway, started
on 127.0.0.1 by the tests: real ``freezeframe backup`` and ``drill`` runs of a SQLite
profile, their metrics scraped over HTTP and compared with the run records ``show --json``
prints; a Pushgateway down or hanging, or a textfile folder missing, never changes a run;
bad fields are one-line profile errors."""

from __future__ import annotations

import json
import os
import socket
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from freezeframe_prometheus import textfile_name
from freezeframe_testing.plugin import clone_profile, make_counter_db, need, run_cli
from freezeframe_testing.postgres_server import free_port
from freezeframe_testing.prometheus_servers import Samples

PROFILE = "shop"
OBSERVER = "metrics"
#: The labels of every sample the Pushgateway serves of the profile's pushes.
PUSHED = {"job": "freezeframe", "profile": PROFILE, "instance": ""}


def _q(value: object) -> str:
    return json.dumps(str(value))


def write_profile(tmp_path: Path, observer: str, *, name: str = PROFILE) -> Path:
    """A SQLite database ``shop`` (a drill check that fails while ``tmp_path/fail`` exists),
    a clone snapshot stage ``snap`` and an archive stage ``archive``, and the observer's
    table ``[prometheus]`` (its fields: ``observer``, TOML)."""
    db = make_counter_db(tmp_path / "shop.db")
    application = f"""plugin = "sqlite"
name = "shop"
path = {_q(db)}

[[application.check]]
name = "marker"
command = ["sh", "-c", {_q(f"test ! -e {tmp_path / 'fail'}")}]
"""
    path = clone_profile(
        tmp_path,
        application,
        name=name,
        then=f"""
[[backup]]
backend = "archive"
name = "archive"
dir = {_q(tmp_path / "archives")}

[prometheus]
name = "{OBSERVER}"
{observer}
""",
    )
    text = path.read_text().replace(
        "[profile]\n", f"[profile]\ndrill_dir = {_q(tmp_path / 'drills')}\n", 1
    )
    path.write_text(text)
    return path


def cli(*args: str | Path, code: int = 0, **kwargs: Any) -> Any:
    r = run_cli(*args, **kwargs)
    assert r.returncode == code, r.stderr
    return r


def unix(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def same_time(metric: float, iso: str) -> bool:
    """Whether a metric's Unix time is the record's ISO time (which keeps milliseconds,
    cut, not rounded)."""
    return 0 <= metric - unix(iso) < 0.001


def of(samples: Samples, labels: dict[str, str]) -> dict[tuple[str, tuple[str, ...]], float]:
    """The freezeframe samples carrying every one of ``labels``, keyed by metric name and
    the values of their other labels."""
    found = {}
    for (name, pairs), value in samples.items():
        have = dict(pairs)
        if name.startswith("freezeframe_") and all(have.get(k) == v for k, v in labels.items()):
            rest = tuple(v for k, v in pairs if k not in labels)
            found[(name, rest)] = value
    return found


def retained(profile: Path) -> int:
    """Succeeded runs with an artifact left, as ``list --json`` shows them."""
    runs = cli("list", profile, "--json").json()
    return sum(
        1
        for r in runs
        if r["status"] == "succeeded"
        and any(s["artifact"] and not s["deleted"] for s in r["stages"])
    )


def assert_matches(m: dict[tuple[str, tuple[str, ...]], float], profile: Path) -> None:
    """The metrics ``m`` (one profile's) say what the catalog says: the newest run, which
    succeeded, its freeze windows, stages and drills, and the retained backups."""
    run = cli("show", profile, "latest", "--json").json()
    assert run["status"] == "succeeded"
    assert same_time(m["freezeframe_last_run_timestamp_seconds", ()], run["finished_at"])
    assert m["freezeframe_last_run_success", ()] == 1
    assert same_time(m["freezeframe_last_success_timestamp_seconds", ()], run["finished_at"])
    duration = unix(run["finished_at"]) - unix(run["started_at"])
    assert abs(m["freezeframe_last_run_duration_seconds", ()] - duration) < 0.002
    (app,) = run["applications"]
    assert app["frozen_ms"] is not None and app["frozen_ms"] > 0
    assert m["freezeframe_freeze_window_seconds", ("shop",)] == pytest.approx(
        app["frozen_ms"] / 1000, abs=1e-6
    )
    assert m["freezeframe_writes_blocked_seconds", ("shop",)] == pytest.approx(
        app["writes_blocked_ms"] / 1000, abs=1e-6
    )
    assert m["freezeframe_group_freeze_window_seconds", ()] == pytest.approx(
        run["frozen_ms"] / 1000, abs=1e-6
    )
    stages = {s["name"]: s for s in run["stages"]}
    assert set(stages) == {"snap", "archive"}
    for name, stage in stages.items():
        assert stage["bytes"] > 0 and stage["files"] > 0
        assert m["freezeframe_stage_bytes", (name,)] == stage["bytes"]
        assert m["freezeframe_stage_files", (name,)] == stage["files"]
        assert m["freezeframe_stage_duration_seconds", (name,)] == pytest.approx(
            stage["seconds"], abs=0.002
        )
    assert m["freezeframe_retained_backups", ()] == retained(profile)
    drills = run["drills"]
    if not drills:
        assert ("freezeframe_last_drill_success", ()) not in m
        assert m["freezeframe_last_success_proven", ()] == 0
    else:
        drill = drills[0]
        assert m["freezeframe_last_drill_success", ()] == (drill["status"] == "passed")
        assert same_time(m["freezeframe_last_drill_timestamp_seconds", ()], drill["finished_at"])
        assert m["freezeframe_last_success_proven", ()] == (run["proof"] == "proven")


def test_the_textfile_collector_serves_what_the_runs_and_drills_recorded(
    tmp_path: Path, node_exporter
) -> None:
    textfiles = tmp_path / "textfiles"
    textfiles.mkdir()
    exporter = node_exporter(textfiles)
    profile = write_profile(tmp_path, f"textfile_dir = {_q(textfiles)}")
    labels = {"profile": PROFILE}

    cli("backup", profile)
    first = of(exporter.scrape(), labels)
    assert_matches(first, profile)
    assert first["freezeframe_retained_backups", ()] == 1

    cli("drill", profile)  # passes: the newest success is proven
    scraped = exporter.scrape()
    after_drill = of(scraped, labels)
    assert_matches(after_drill, profile)
    assert after_drill["freezeframe_last_drill_success", ()] == 1
    assert after_drill["freezeframe_last_success_proven", ()] == 1
    # the collector read the file whole, and it is the only file there
    assert scraped["node_textfile_scrape_error", ()] == 0
    written = textfiles / textfile_name(PROFILE)
    assert sorted(os.listdir(textfiles)) == [written.name]
    assert written.stat().st_mode & 0o777 == 0o644

    (tmp_path / "fail").touch()
    cli("backup", profile)
    cli("drill", profile, code=1)  # the newest run's drill fails
    last = of(exporter.scrape(), labels)
    assert_matches(last, profile)
    assert last["freezeframe_last_drill_success", ()] == 0
    assert last["freezeframe_last_success_proven", ()] == 0
    assert last["freezeframe_retained_backups", ()] == 2
    assert (
        last["freezeframe_last_run_timestamp_seconds", ()]
        > (first["freezeframe_last_run_timestamp_seconds", ()])
    )


def test_profiles_sharing_a_textfile_folder_are_served_side_by_side(
    tmp_path: Path, node_exporter
) -> None:
    textfiles = tmp_path / "textfiles"
    textfiles.mkdir()
    exporter = node_exporter(textfiles)
    profiles = {}
    for name in ("shop", "ledger"):
        (tmp_path / name).mkdir()
        observer = f"textfile_dir = {_q(textfiles)}"
        profiles[name] = write_profile(tmp_path / name, observer, name=name)
        cli("backup", profiles[name])
    cli("drill", profiles["shop"])  # drill metrics in one file only
    scraped = exporter.scrape()
    assert scraped["node_textfile_scrape_error", ()] == 0
    for name, profile in profiles.items():
        assert_matches(of(scraped, {"profile": name}), profile)
    assert sorted(os.listdir(textfiles)) == ["freezeframe_ledger.prom", "freezeframe_shop.prom"]


def test_the_pushgateway_serves_what_the_run_and_drill_recorded(
    tmp_path: Path, pushgateway
) -> None:
    gateway = pushgateway()
    profile = write_profile(tmp_path, f'pushgateway = "{gateway.base}"')
    cli("backup", profile)
    assert_matches(of(gateway.scrape(), PUSHED), profile)
    cli("drill", profile)
    pushed = of(gateway.scrape(), PUSHED)
    assert_matches(pushed, profile)
    assert pushed["freezeframe_last_drill_success", ()] == 1
    # one group, replaced by each push (PUT): the gateway's own record of the last push
    assert gateway.scrape()["push_failure_time_seconds", tuple(sorted(PUSHED.items()))] == 0


def _bcrypt(password: str) -> str:
    """A bcrypt hash (what the Pushgateway's web config takes) from the C library's crypt."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt
        except ImportError:
            crypt = None  # type: ignore[assignment]
    need(crypt is not None and hasattr(crypt, "METHOD_BLOWFISH"), "crypt has no bcrypt here")
    return str(crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)))


def test_credentials_from_the_environment_reach_the_gateway_and_nothing_else(
    tmp_path: Path, pushgateway, monkeypatch
) -> None:
    password = "s3cret-Pw"  # noqa: S105 (a test gateway's password)
    config = tmp_path / "web.yml"
    config.write_text(f"basic_auth_users:\n  pusher: {_q(_bcrypt(password))}\n")
    gateway = pushgateway(f"--web.config.file={config}")
    url = gateway.base.replace("http://", f"http://pusher:{password}@")
    monkeypatch.setenv("FF_PUSHGATEWAY", url)
    profile = write_profile(tmp_path, 'pushgateway_env = "FF_PUSHGATEWAY"')
    r = cli("backup", profile, "--json")
    assert password not in r.stdout + r.stderr
    assert "push failed" not in r.stderr
    with pytest.raises(OSError, match="401"):
        gateway.get()  # the gateway refuses whoever has no password...
    pushed = of(gateway.scrape(auth=("pusher", password)), PUSHED)
    assert_matches(pushed, profile)  # ...and holds what the observer sent with it

    monkeypatch.setenv("FF_PUSHGATEWAY", url.replace(password, "wrong"))
    r = cli("backup", profile)
    assert f"observer '{OBSERVER}' (prometheus): pushgateway {gateway.base}: push failed: " in (
        r.stderr
    )
    assert "401" in r.stderr and "wrong" not in r.stderr


def _hanging() -> tuple[socket.socket, str]:
    """A gateway that takes connections and never answers."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    return s, f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("trouble", ["refused", "hanging"])
def test_a_gateway_down_costs_at_most_the_timeout_and_changes_no_run(
    tmp_path: Path, trouble: str
) -> None:
    textfiles = tmp_path / "textfiles"
    textfiles.mkdir()
    listener = None
    if trouble == "hanging":
        listener, url = _hanging()
    else:
        url = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    try:
        profile = write_profile(
            tmp_path, f'textfile_dir = {_q(textfiles)}\npushgateway = "{url}"\ntimeout = "1s"'
        )
        # bounded: the observer's timeout, not the gateway, decides when the run goes on
        r = cli("backup", profile, "--json", timeout=60)
        cli("drill", profile, timeout=60)
    finally:
        if listener is not None:
            listener.close()
    assert r.json()["status"] == "succeeded"
    assert f"observer '{OBSERVER}' (prometheus)" in r.stderr
    if trouble == "refused":
        assert f"pushgateway {url}: push failed: Connection refused" in r.stderr
    # the textfile was written all the same, the drill's verdict too
    text = (textfiles / textfile_name(PROFILE)).read_text()
    assert f'freezeframe_last_drill_success{{profile="{PROFILE}"}} 1.0' in text


def test_a_missing_textfile_folder_is_logged_and_changes_no_run(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    profile = write_profile(tmp_path, f"textfile_dir = {_q(missing)}")
    r = cli("backup", profile, "--json")
    assert r.json()["status"] == "succeeded"
    assert (
        f"observer '{OBSERVER}' (prometheus): textfile_dir {missing}: cannot write "
        f"{textfile_name(PROFILE)}: No such file or directory"
    ) in r.stderr
    assert not missing.exists()


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ("", 'field "textfile_dir": missing: give textfile_dir, pushgateway'),
        ('pushgateway = "ftp://127.0.0.1:9091"', 'field "pushgateway": expected an http://'),
        ('pushgateway = "http://127.0.0.1:push"', 'field "pushgateway": expected an http://'),
        ('pushgateway = "http://127.0.0.1:9091/?x=1"', "must have no ?query or #fragment"),
        ('pushgateway = "http://u:hunter2@127.0.0.1:9091"', "holds a password: put the URL in"),
        (
            'pushgateway = "http://127.0.0.1:9091"\npushgateway_env = "HOME"',
            'give either "pushgateway" or "pushgateway_env"/"pushgateway_file", not both',
        ),
        ('pushgateway_env = "FF_NO_SUCH_VARIABLE"', "FF_NO_SUCH_VARIABLE is not set"),
        ('pushgateway_env = "HOME"', 'field "pushgateway_env": expected an http://'),
        ('textfile_dir = "t"\ntimeout = "2h"', 'field "timeout": a duration must be at most'),
        ('textfile_dir = "t"\ntimeout = 0', 'field "timeout": a duration must be a finite'),
        ("textfile_dir = 3", 'field "textfile_dir": expected a path'),
        ('textfile_dir = "t"\njob = "x"', "field \"job\": unknown field for observer 'prometheus'"),
    ],
)
def test_bad_fields_are_one_line_profile_errors(tmp_path: Path, fields: str, says: str) -> None:
    profile = write_profile(tmp_path, fields)
    r = cli("check", profile, code=2)
    (line,) = r.stderr.strip().splitlines()
    assert f"[[prometheus]] '{OBSERVER}'" in line and says in line, line
    assert "hunter2" not in line
