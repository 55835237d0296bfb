"""run_tool and streaming_tool: no shell, one-line errors, timeouts, cancellation, secrets
kept from children."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from freezeframe import Cancelled, StageContext, Table
from freezeframe.tools import ToolError, find_tool, run_tool, streaming_tool
from freezeframe_testing.procs import processes


def test_output_and_failure_in_one_line() -> None:
    assert run_tool(["echo", "hello"]).stdout == "hello\n"
    with pytest.raises(ToolError, match=r"^ls failed \(exit 2\): ls: cannot access"):
        run_tool(["ls", "/no/such/path"])
    assert run_tool(["false"], check=False).returncode == 1


def test_timeout_kills_the_tool() -> None:
    started = time.monotonic()
    with pytest.raises(ToolError, match=r"did not finish within 0\.3s"):
        run_tool(["sleep", "30"], timeout=0.3)
    assert time.monotonic() - started < 10


def test_a_cancelled_context_kills_the_tool() -> None:
    ctx = StageContext("r", "p", "s", ())
    threading.Timer(0.3, ctx.cancel_event.set).start()
    with pytest.raises(Cancelled):
        run_tool(["sleep", "30"], context=ctx)


def test_missing_tool_is_one_line() -> None:
    with pytest.raises(ToolError, match="not installed"):
        find_tool("no-such-tool-anywhere")


def test_a_profiles_secret_variable_does_not_reach_other_tools(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FF_TEST_DB_PASSWORD", "s3cret-value")
    secret = Table({"password_env": "FF_TEST_DB_PASSWORD"}, base_dir=tmp_path).get_secret()
    assert secret is not None and secret.reveal() == "s3cret-value"
    env = run_tool(["env"]).stdout
    assert "s3cret-value" not in env and "FF_TEST_DB_PASSWORD" not in env
    # handed on purpose, it arrives
    handed = run_tool(["env"], env={"PGPASSWORD": secret.reveal()}).stdout
    assert "PGPASSWORD=s3cret-value" in handed


def _alive(pid: int) -> bool:
    return any(p.pid == pid and p.running for p in processes())


@pytest.mark.parametrize("tied", [True, False])
def test_a_tool_dies_with_us_only_when_asked(tmp_path: Path, tied: bool) -> None:
    """``kill -9`` of the process that runs the tool (from a thread, as completions do)."""
    pid_file = tmp_path / "pid"
    script = (
        "import sys, threading\n"
        "from freezeframe.tools import run_tool\n"
        "argv = ['sh', '-c', f'echo $$ > {sys.argv[1]}; exec sleep 60']\n"
        "t = threading.Thread(target=run_tool, args=(argv,), "
        "kwargs={'dies_with_us': sys.argv[2] == 'True'})\n"
        "t.start(); t.join()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(pid_file), str(tied)])
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text().strip():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        tool = int(pid_file.read_text())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    try:
        deadline = time.monotonic() + (5 if tied else 0.5)  # untied: it lives on
        while _alive(tool) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _alive(tool) is not tied
    finally:
        if _alive(tool):
            os.kill(tool, signal.SIGKILL)


# -- streaming_tool ------------------------------------------------------------------------


def test_streaming_hands_over_the_output_as_it_comes(tmp_path: Path) -> None:
    # more than a pipe holds: it must be read while the tool runs
    with streaming_tool(["head", "-c", str(5 << 20), "/dev/zero"], cwd=tmp_path) as proc:
        assert proc.stdout is not None
        total = 0
        while chunk := proc.stdout.read(1 << 16):
            total += len(chunk)
    assert total == 5 << 20
    assert proc.returncode == 0


def test_streaming_failure_is_one_line_with_the_whole_stderr() -> None:
    script = "echo first >&2; echo last words >&2; exit 3"
    with pytest.raises(ToolError) as e, streaming_tool(["sh", "-c", script]) as proc:
        assert proc.stdout is not None
        proc.stdout.read()
    assert str(e.value) == "sh failed (exit 3): last words"
    assert e.value.returncode == 3
    assert e.value.stderr == "first\nlast words\n"


def test_streaming_kills_the_tool_when_the_block_raises() -> None:
    with pytest.raises(KeyError), streaming_tool(["sleep", "30"]) as proc:
        raise KeyError("the reader gave up")
    assert proc.returncode is not None  # waited for: no process left behind
    with pytest.raises(ProcessLookupError):
        os.kill(proc.pid, 0)


def test_streaming_passes_the_given_descriptors_and_keeps_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FF_TEST_DB_PASSWORD", "s3cret-value")
    Table({"password_env": "FF_TEST_DB_PASSWORD"}, base_dir=tmp_path).get_secret()
    read_end, write_end = os.pipe()
    try:
        argv = ["sh", "-c", f"env; echo side > /dev/fd/{write_end}"]
        with streaming_tool(argv, env={"TZ": "UTC"}, pass_fds=[write_end]) as proc:
            os.close(write_end)
            assert proc.stdout is not None
            env = proc.stdout.read().decode()
        assert os.read(read_end, 100) == b"side\n"
    finally:
        os.close(read_end)
    assert "TZ=UTC" in env.splitlines()
    assert "s3cret-value" not in env and "FF_TEST_DB_PASSWORD" not in env


def test_a_fatal_line_on_stderr_stops_a_tool_that_would_retry_for_minutes() -> None:
    script = (
        "echo 'Save(<data/1>) returned error, retrying after 720ms: write x: "
        "no space left on device' >&2; exec sleep 60"
    )
    started = time.monotonic()
    with pytest.raises(ToolError) as e:
        run_tool(["sh", "-c", script], fatal=["no space left on device"])
    assert time.monotonic() - started < 5
    assert str(e.value).startswith("sh stopped: Save(<data/1>) returned error")
    assert "no space left on device" in e.value.stderr
    # without the pattern it is only a line among others
    done = run_tool(["sh", "-c", "echo 'no space left on device' >&2"], fatal=["quota"])
    assert done.stderr == "no space left on device\n"


def test_input_reaches_the_tool() -> None:
    assert run_tool(["cat"], input="to stdin\n").stdout == "to stdin\n"


def test_a_watch_that_finds_a_reason_stops_a_silent_tool() -> None:
    started = time.monotonic()

    def after_half_a_second() -> str | None:
        return "the disk is full" if time.monotonic() - started > 0.5 else None

    with pytest.raises(ToolError, match=r"^sleep stopped: the disk is full$"):
        run_tool(["sleep", "60"], watch=after_half_a_second)
    assert time.monotonic() - started < 5
