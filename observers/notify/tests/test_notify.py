"""freezeframe-notify end to end: real ``freezeframe backup`` runs of a SQLite profile tell a
real HTTP server on 127.0.0.1 (Apprise ``json://`` posts, Healthchecks pings) how they went;
a server that fails or hangs costs at most the notifier's budget and changes nothing of the
run; the URL's secrets show nowhere; a wrong table is one line naming its field."""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from freezeframe_notify._deliver import budget, shown
from freezeframe_testing.plugin import (
    CliResult,
    clone_profile,
    make_counter_db,
    run_cli,
    wait_until,
)

#: How long a hanging answer hangs at most (the test ends it sooner).
HANG = 120.0


@dataclass(frozen=True)
class Heard:
    """One request the server received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """The server: ``mode`` is ``"ok"`` (200), ``"error"`` (500) or ``"hang"``."""

    def __init__(self) -> None:
        self.heard: list[Heard] = []
        self.mode = "ok"
        self.release = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def _answer(self) -> None:
                size = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(size, 1 << 20))
                parts = urllib.parse.urlsplit(self.path)
                receiver.heard.append(
                    Heard(
                        self.command,
                        parts.path,
                        dict(urllib.parse.parse_qsl(parts.query)),
                        {k.lower(): v for k, v in self.headers.items()},
                        body,
                    )
                )
                if receiver.mode == "hang":
                    receiver.release.wait(HANG)
                    return
                code = 500 if receiver.mode == "error" else 200
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False  # type: ignore[attr-defined]
        self.port = self.server.server_address[1]
        self.base = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def on(self, prefix: str) -> list[Heard]:
        """What was heard on paths starting with ``prefix``."""
        return [h for h in list(self.heard) if h.path.startswith(prefix)]

    def wait_for(self, prefix: str, count: int, timeout: float = 30) -> list[Heard]:
        """Wait (bounded) until ``count`` requests on ``prefix`` arrived; returns them."""
        wait_until(lambda: len(self.on(prefix)) >= count, timeout)
        return self.on(prefix)

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
def notified(tmp_path: Path) -> Callable[..., Path]:
    """Write a profile, each in a folder of its own under the test's: one SQLite database, a
    clone stage, then ``notify`` (the ``[[notify]]`` tables); ``profile``: more ``[profile]``
    fields; ``checks``: the database's ``[[application.check]]`` tables; ``broken``: the
    clone stage's ``dir`` is a file, so that the run fails."""
    db = make_counter_db(tmp_path / "shop.db")
    made = 0

    def write(notify: str, *, profile: str = "", checks: str = "", broken: bool = False) -> Path:
        nonlocal made
        made += 1
        folder = tmp_path / f"profile-{made}"
        folder.mkdir()
        app = f'plugin = "sqlite"\nname = "shop"\npath = {json.dumps(str(db))}\n{checks}'
        path = clone_profile(folder, app, name="shop", then=notify)
        if broken:
            (folder / "snaps").write_text("a file where the snapshots go\n")
        drills = json.dumps(str(tmp_path / "drills"))
        extra = f"drill_dir = {drills}\n{profile}"
        path.write_text(path.read_text().replace("[profile]\n", f"[profile]\n{extra}\n", 1))
        return path

    return write


#: The secret parts of the URLs the tests use (a Healthchecks UUID, a webhook token, a
#: basic-auth password, a query value).
CHECK_UUID = str(uuid.uuid4())
TOKEN = "tok" + uuid.uuid4().hex
PASSWORD = "pw" + uuid.uuid4().hex
QUERY = "q" + uuid.uuid4().hex
TOPIC = "topic" + uuid.uuid4().hex  # an ntfy topic: whoever knows it reads the messages
SECRETS = (CHECK_UUID, TOKEN, PASSWORD, QUERY, TOPIC)


def ping_url(receiver: Receiver) -> str:
    return f"http://{receiver.base}/ping/{CHECK_UUID}"


def hook_url(receiver: Receiver) -> str:
    return f"json://hook:{PASSWORD}@{receiver.base}/hook/{TOKEN}?key={QUERY}"


def env(receiver: Receiver) -> dict[str, str]:
    return {
        "FF_TEST_PING": ping_url(receiver),
        "FF_TEST_HOOK": hook_url(receiver),
        "FF_TEST_NTFY": f"ntfy://{receiver.base}/{TOPIC}",  # Apprise posts it to /
    }


def tables(*, on: str | None = None, extra: str = "") -> str:
    """A ping notifier ``hc`` and an Apprise JSON notifier ``hook``, from the environment."""
    events = f"on = {on}\n" if on else ""
    return (
        f'[[notify]]\nname = "hc"\nping_env = "FF_TEST_PING"\n{events}{extra}\n'
        f'[[notify]]\nname = "hook"\nurl_env = "FF_TEST_HOOK"\n{events}{extra}\n'
    )


def backup(profile: Path, receiver: Receiver, *more: str) -> CliResult:
    return run_cli(*more, "backup", profile, "--json", env=env(receiver))


def body_of(heard_body: bytes) -> tuple[str, str, dict[str, object]]:
    """A ping's body: (its headline, everything before the summary, the summary)."""
    text = heard_body.decode()
    before, _, summary = text.partition("\n\nsummary:\n")
    return text.splitlines()[0], before, json.loads(summary)


def test_pings_start_then_success_with_the_log_tail_and_the_summary(
    receiver: Receiver, notified: Callable[..., Path]
) -> None:
    r = backup(notified(tables()), receiver)
    assert r.returncode == 0, r.stderr
    out = r.json()
    run = out["run_id"]
    start, done = receiver.wait_for("/ping/", 2)
    assert (start.method, start.path) == ("POST", f"/ping/{CHECK_UUID}/start")
    assert (done.method, done.path) == ("POST", f"/ping/{CHECK_UUID}")
    assert start.query["rid"] == done.query["rid"]  # Healthchecks pairs them: one run
    assert start.headers["content-type"] == "text/plain; charset=utf-8"

    headline, before, summary = body_of(start.body)
    assert headline == f"freezeframe: profile shop run {run} started"
    assert summary["event"] == "start" and summary["status"] == "running"

    headline, before, summary = body_of(done.body)
    assert headline == f"freezeframe: profile shop run {run} succeeded"
    assert "stage snap (clone): succeeded" in before
    log = before.partition("\n\nlog:\n")[2].splitlines()
    assert "quiesced shop" in log and log[-1] == f"run {run} succeeded"
    assert summary["run_id"] == run and summary["profile"] == "shop"
    assert summary["status"] == "succeeded" and summary["error"] is None
    assert summary["frozen_ms"] == out["frozen_ms"] and summary["proof"] == "not drilled"
    (stage,) = summary["stages"]  # type: ignore[misc]
    assert stage["name"] == "snap" and stage["bytes"] == out["stages"][0]["bytes"]


def test_a_failed_run_pings_fail_with_its_error(
    receiver: Receiver, notified: Callable[..., Path]
) -> None:
    r = backup(notified(tables(), broken=True), receiver)
    assert r.returncode == 1, r.stderr
    out = r.json()
    assert out["status"] == "failed" and out["error"]
    start, fail = receiver.wait_for("/ping/", 2)
    assert start.path.endswith("/start") and fail.path == f"/ping/{CHECK_UUID}/fail"
    headline, before, summary = body_of(fail.body)
    assert headline == f"freezeframe: profile shop run {out['run_id']} failed: {out['error']}"
    assert summary["status"] == "failed" and summary["error"] == out["error"]
    assert "\n\nlog:\n" in before


def test_apprise_json_gets_the_headline_as_title_and_the_summary_as_message(
    receiver: Receiver, notified: Callable[..., Path]
) -> None:
    # hook: every run event; quiet: the defaults (failure, drill-failure): nothing here
    quiet = f'[[notify]]\nname = "quiet"\nurl = "json://{receiver.base}/quiet"\n'
    profile = notified(tables(on='["start", "success", "failure"]') + quiet)
    r = backup(profile, receiver)
    assert r.returncode == 0, r.stderr
    run = r.json()["run_id"]
    start, done = receiver.wait_for("/hook/", 2)
    for heard, event, kind, says in (
        (start, "start", "info", "started"),
        (done, "success", "success", "succeeded"),
    ):
        assert heard.headers["content-type"] == "application/json"
        payload = heard.json()
        assert payload["title"] == f"freezeframe: profile shop run {run} {says}"
        assert payload["type"] == kind
        summary = json.loads(payload["message"])
        assert summary["event"] == event and summary["run_id"] == run
    assert receiver.on("/quiet") == []

    failed = backup(notified(tables(on='["failure"]') + quiet, broken=True), receiver)
    assert failed.returncode == 1
    (loud,) = receiver.wait_for("/quiet", 1)
    assert loud.json()["type"] == "failure"
    assert json.loads(loud.json()["message"])["error"] == failed.json()["error"]


@pytest.mark.parametrize("broken", [False, True], ids=["good-run", "failed-run"])
@pytest.mark.parametrize("mode", ["error", "hang"])
def test_a_server_that_fails_or_hangs_costs_its_budget_and_changes_nothing(
    receiver: Receiver, notified: Callable[..., Path], mode: str, broken: bool
) -> None:
    alone = notified("", broken=broken)  # the same profile without notifiers
    baseline = run_cli("backup", alone, "--json")
    receiver.mode = mode
    every = '["start", "success", "failure"]'
    profile = notified(tables(on=every, extra='timeout = "1s"\nretries = 1'), broken=broken)
    began = time.monotonic()
    r = backup(profile, receiver)
    took = time.monotonic() - began
    assert r.returncode == baseline.returncode == (1 if broken else 0), r.stderr
    out = r.json()
    assert out["status"] == baseline.json()["status"] == ("failed" if broken else "succeeded")
    error, expected = out["error"] or "", baseline.json()["error"] or ""
    assert error.replace(str(profile.parent), "") == expected.replace(str(alone.parent), "")

    # two events (start, then success or failure), each tried twice, by both notifiers
    assert len(receiver.wait_for("/ping/", 4)) == 4
    assert len(receiver.wait_for("/hook/", 4)) == 4
    event = "failure" if broken else "success"
    why = "HTTP 500 Internal Server Error" if mode == "error" else "no answer within 1s"
    for event_ in ("start", event):
        said = f"observer 'hc' (notify) failed: http://127.0.0.1: {event_} not delivered"
        assert f"{said} (2 attempts): {why}" in r.stderr
        assert f"observer 'hook' (notify) failed: json://127.0.0.1: {event_} not" in r.stderr
    # The server hangs for minutes: a run that waited for it would take that long. Each of
    # the two events costs at most the budget; the rest is the run itself, with room.
    assert took < 2 * budget(1.0, 1) + 60, took


def test_the_secret_shows_nowhere_even_with_debug(
    receiver: Receiver, notified: Callable[..., Path], tmp_path: Path
) -> None:
    receiver.mode = "error"  # every delivery fails, so every failure is logged
    every = '["start", "success", "failure"]'
    phone = f'[[notify]]\nname = "phone"\nurl_env = "FF_TEST_NTFY"\non = {every}\nretries = 0\n'
    profile = notified(tables(on=every, extra="retries = 0") + phone)
    results = [
        run_cli("--debug", verb, profile, "--json", env=env(receiver))
        for verb in ("check", "plan", "backup", "list")
    ]
    assert results[2].returncode == 0, results[2].stderr
    assert "observer 'hook' (notify) failed: json://127.0.0.1: success not" in results[2].stderr
    run = results[2].json()["run_id"]
    results.append(run_cli("--debug", "show", profile, run, "--json", env=env(receiver)))
    assert len(receiver.wait_for("/hook/", 2)) == 2  # the secret URLs were used
    # Apprise names the topic when ntfy refuses: freezeframe says it without the topic
    said = "observer 'phone' (notify) failed: ntfy://127.0.0.1: success not delivered"
    assert f"{said} (1 attempt): Failed to send ntfy notification to topic '…'" in results[2].stderr
    (done,) = [h for h in receiver.on("/") if h.path == "/" and b"succeeded" in h.body]
    assert done.json()["topic"] == TOPIC  # a service for people: the text, not the JSON
    assert done.json()["message"].splitlines()[1:] == [
        f"applications frozen for {results[2].json()['frozen_ms']:g} ms",
        "stage snap (clone): succeeded",
    ]
    for result in results:
        for secret in SECRETS:
            assert secret not in result.stdout and secret not in result.stderr
    state = [p for p in (profile.parent / "state").rglob("*") if p.is_file()]
    assert state  # the catalog, the run's journal
    for path in state:
        data = path.read_bytes()
        assert not any(s.encode() in data for s in SECRETS), path


def test_a_failed_drill_after_backup_sends_drill_failure(
    receiver: Receiver, notified: Callable[..., Path]
) -> None:
    checks = '[[application.check]]\nname = "never"\nsql = "SELECT 0"\nexpect = 1\n'
    ping = '["start", "success", "failure", "drill-failure"]'
    profile = notified(
        f'[[notify]]\nname = "hc"\nping_env = "FF_TEST_PING"\non = {ping}\n'
        '[[notify]]\nname = "hook"\nurl_env = "FF_TEST_HOOK"\n',  # defaults: failures only
        profile='drill = "after-backup"',
        checks=checks,
    )
    r = backup(profile, receiver)
    assert r.returncode == 1, r.stderr  # a failed drill fails the command, not the run
    out = r.json()
    assert out["status"] == "succeeded" and out["drill"]["status"] == "failed"
    run, drill = out["run_id"], out["drill"]["drill_id"]

    start, done, fail = receiver.wait_for("/ping/", 3)
    assert [start.path, done.path, fail.path] == [
        f"/ping/{CHECK_UUID}/start",
        f"/ping/{CHECK_UUID}",
        f"/ping/{CHECK_UUID}/fail",
    ]
    headline, _, summary = body_of(fail.body)
    assert headline.startswith(
        f"freezeframe: profile shop run {run}: drill {drill} failed: "
        "application 'shop': check 'never': "
    )
    assert summary["event"] == "drill-failure" and summary["status"] == "succeeded"
    assert summary["drill"]["failures"] == out["drill"]["failures"]  # type: ignore[index]

    (hook,) = receiver.wait_for("/hook/", 1)  # not the start nor the success
    assert hook.json()["type"] == "failure"
    sent = json.loads(hook.json()["message"])
    assert sent["drill"]["drill_id"] == drill and sent["drill"]["status"] == "failed"
    assert any("check 'never'" in f for f in sent["drill"]["failures"])


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ('on = ["failure"]', 'field "url": missing: give "url" (an Apprise URL) or "ping"'),
        (
            f'url = "json://127.0.0.1/{TOKEN}"\nping = "https://hc.example.org/{CHECK_UUID}"',
            'field "ping": give either "url" or "ping", not both',
        ),
        (
            f'url = "json://127.0.0.1/{TOKEN}"\nurl_env = "FF_TEST_HOOK"',
            'field "url": give one of "url", "url_env" and "url_file"',
        ),
        (
            f'ping = "ftp://user:{PASSWORD}@example.org/{CHECK_UUID}"',
            'field "ping": expected an http:// or https:// URL',
        ),
        (
            'ping_env = "FF_TEST_FTP"',
            'field "ping_env": expected an http:// or https:// URL',
        ),
        (
            f'url = "nosuchservice://{TOKEN}"',
            'field "url": Apprise cannot use this nosuchservice:// URL',
        ),
        ('url_env = "FF_TEST_UNSET"', 'field "url_env": environment variable FF_TEST_UNSET'),
        ('ping = "https://hc.example.org/x"\non = ["sometimes"]', 'field "on": expected events'),
        ('ping = "https://hc.example.org/x"\non = []', 'field "on": names no event'),
        ('ping = "https://hc.example.org/x"\ntimeout = "10m"', 'field "timeout": '),
        ('ping = "https://hc.example.org/x"\nretries = 9', 'field "retries": must be at most 5'),
        ('ping = "https://hc.example.org/x"\ncolour = "red"', 'field "colour": unknown field'),
    ],
)
def test_a_wrong_table_is_one_line_naming_its_field(
    notified: Callable[..., Path], table: str, says: str
) -> None:
    profile = notified(f'[[notify]]\nname = "bad"\n{table}\n')
    secret_env = {"FF_TEST_HOOK": "json://127.0.0.1/x", "FF_TEST_FTP": f"ftp://h/{TOKEN}"}
    os.environ.pop("FF_TEST_UNSET", None)
    r = run_cli("check", profile, env=secret_env)
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.splitlines()
    assert "[[notify]] 'bad': " in line and says in line, line
    assert not any(s in r.stderr for s in SECRETS)


def test_a_url_file_open_to_others_is_refused(notified: Callable[..., Path], tmp_path: Path):
    url = tmp_path / "ntfy.url"
    url.write_text(f"ntfys://{TOKEN}\n")
    url.chmod(0o644)
    r = run_cli("check", notified(f'[[notify]]\nurl_file = "{url}"\n'))
    assert r.returncode == 2
    assert 'field "url_file": ' in r.stderr and "chmod 600" in r.stderr
    assert TOKEN not in r.stderr


@pytest.mark.parametrize(
    ("url", "seen"),
    [
        (f"https://hc-ping.com/{CHECK_UUID}", "https://hc-ping.com"),
        (f"http://127.0.0.1:8000/ping/{CHECK_UUID}/fail?rid=1", "http://127.0.0.1"),
        (
            f"mailto://me:{PASSWORD}@mail.example.org?to=ops@example.org",
            "mailto://mail.example.org",
        ),
        (f"ntfys://ntfy.sh/{TOKEN}", "ntfys://ntfy.sh"),
        (f"ntfys://{TOKEN}", "ntfys://…"),  # a topic in the host's place is the secret
        (f"slack://T1JJ3T3L2/A1BRTD4JD/{TOKEN}", "slack://…"),
        (f"discord://4174216298/{TOKEN}", "discord://…"),
        (f"pover://{TOKEN}@{PASSWORD}", "pover://…"),
        ("not a url", "a URL (…)"),
    ],
)
def test_a_url_is_shown_as_its_scheme_and_a_public_host_only(url: str, seen: str) -> None:
    assert shown(url) == seen
