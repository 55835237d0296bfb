"""run_tool: no shell, one-line errors, timeouts, cancellation, secrets kept from children."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from freezeframe import Cancelled, StageContext, Table
from freezeframe.tools import ToolError, find_tool, run_tool


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
