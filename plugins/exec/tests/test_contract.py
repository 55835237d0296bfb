"""The exec plug-in against freezeframe-testing's contract: a real writer process, stopped
and continued by the commands a profile would give (``kill -STOP`` / ``kill -CONT``).

The quiesce command first waits while a "hold" file exists, as a real one waits for
its application to reach a safe point: the blocker creates that file."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from freezeframe.plugin import ApplicationPlugin
from freezeframe_exec import ExecPlugin
from freezeframe_testing import ApplicationPluginContract
from freezeframe_testing.plugin import pair_writer, require_tool, wait_until

#: ``sh -c`` script: wait while "$1" exists (30 s at most, then fail), then stop pid "$3"
#: with the kill program "$2".
WAIT_THEN_STOP = (
    'i=0; while [ -e "$1" ]; do [ "$i" -lt 600 ] || exit 1; i=$((i + 1)); sleep 0.05; done; '
    'exec "$2" -STOP "$3"'
)


def written(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


class TestExecContract(ApplicationPluginContract):
    @pytest.fixture
    def writer(self, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
        proc = pair_writer(tmp_path)
        try:
            assert wait_until(lambda: written(tmp_path / "a.txt") != b"", 30)
            yield proc
        finally:
            proc.kill()
            proc.wait()

    @pytest.fixture
    def plugin_class(self) -> type[ApplicationPlugin]:
        return ExecPlugin

    @pytest.fixture
    def hold(self, tmp_path: Path) -> Path:
        """While this file exists, the quiesce command waits."""
        return tmp_path / "hold"

    @pytest.fixture
    def plugin_table(
        self, writer: subprocess.Popen[bytes], tmp_path: Path, hold: Path
    ) -> Mapping[str, Any]:
        kill = require_tool("kill")
        sh = require_tool("sh")
        return {
            "quiesce": [sh, "-c", WAIT_THEN_STOP, "quiesce", str(hold), kill, str(writer.pid)],
            "unquiesce": [kill, "-CONT", str(writer.pid)],
            "data_paths": [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")],
        }

    @pytest.fixture
    def resumed(self, tmp_path: Path) -> Callable[[], bool]:
        def writes_on() -> bool:
            before = written(tmp_path / "a.txt")
            return wait_until(lambda: written(tmp_path / "a.txt") != before, 0.5)

        return writes_on

    @pytest.fixture
    def blocker(self, hold: Path) -> Callable[[], AbstractContextManager[None]]:
        """The hold file exists: the quiesce command waits until it is killed at the deadline."""

        @contextmanager
        def held() -> Iterator[None]:
            hold.touch()
            try:
                yield
            finally:
                hold.unlink(missing_ok=True)

        return held

    @pytest.fixture
    def bad_tables(self) -> Sequence[tuple[Mapping[str, Any], str]]:
        return [
            ({"unquiesce": ["true"]}, "quiesce"),
            ({"quiesce": ["true"]}, "unquiesce"),
            ({"quiesce": "true", "unquiesce": ["true"]}, "quiesce"),
            ({"quiesce": ["true"], "unquiesce": ["true"], "timeout": "soon"}, "timeout"),
            ({"quiesce": ["true"], "unquiesce": ["true"], "consistent_on": ["x"]}, "consistent_on"),
        ]
