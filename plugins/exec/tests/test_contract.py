"""The exec plug-in against freezeframe-testing's contract: a real writer process, stopped
and continued by the commands a profile would give (``kill -STOP`` / ``kill -CONT``)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from freezeframe.plugin import ApplicationPlugin
from freezeframe_exec import ExecPlugin
from freezeframe_testing import ApplicationPluginContract
from freezeframe_testing.plugin import pair_writer, require_tool, wait_until


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
    def plugin_table(self, writer: subprocess.Popen[bytes], tmp_path: Path) -> Mapping[str, Any]:
        kill = require_tool("kill")
        return {
            "quiesce": [kill, "-STOP", str(writer.pid)],
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
    def bad_tables(self) -> Sequence[tuple[Mapping[str, Any], str]]:
        return [
            ({"unquiesce": ["true"]}, "quiesce"),
            ({"quiesce": ["true"]}, "unquiesce"),
            ({"quiesce": "true", "unquiesce": ["true"]}, "quiesce"),
            ({"quiesce": ["true"], "unquiesce": ["true"], "timeout": "soon"}, "timeout"),
            ({"quiesce": ["true"], "unquiesce": ["true"], "consistent_on": ["x"]}, "consistent_on"),
        ]
