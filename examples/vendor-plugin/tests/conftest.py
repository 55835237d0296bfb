"""The demo application, started for a test: what the plug-in quiesces."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from freezeframe_example import writer


@pytest.fixture
def writer_proc(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The demo writer (a process of its own) writing into ``tmp_path / "app"``; stopped at
    teardown."""
    folder = tmp_path / "app"
    folder.mkdir()
    proc = writer.start(folder)
    try:
        assert writer.writes_on(folder, 30), "the demo writer never wrote"
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def app_dir(tmp_path: Path, writer_proc: subprocess.Popen[bytes]) -> Path:
    """The folder the running demo writer writes into."""
    return tmp_path / "app"
