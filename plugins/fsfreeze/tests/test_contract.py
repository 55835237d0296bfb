"""The fsfreeze plug-in against freezeframe-testing's contract: a real XFS on a loop device."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from freezeframe.plugin import ApplicationPlugin
from freezeframe_fsfreeze import FsfreezePlugin
from freezeframe_testing import ApplicationPluginContract
from freezeframe_testing.plugin import LoopFs, finishes_within, require_tool, writer_process


@pytest.fixture(scope="module")
def xfs(loop_fs_module: Callable[..., LoopFs]) -> LoopFs:
    return loop_fs_module("xfs", 300)


@pytest.mark.slow
class TestFsfreezeContract(ApplicationPluginContract):
    @pytest.fixture
    def plugin_class(self) -> type[ApplicationPlugin]:
        return FsfreezePlugin

    @pytest.fixture
    def plugin_table(self, xfs: LoopFs) -> Mapping[str, Any]:
        return {"mountpoint": str(xfs.mountpoint)}

    @pytest.fixture
    def resumed(self, xfs: LoopFs) -> Callable[[], bool]:
        """A new file can be written on the filesystem (a frozen one blocks the writer)."""
        return lambda: finishes_within(writer_process(xfs.mountpoint / "probe.txt"), 2)

    @pytest.fixture
    def blocker(self, xfs: LoopFs) -> Callable[[], AbstractContextManager[None]]:
        """Another process has frozen the filesystem (``fsfreeze --freeze``), so the
        quiesce cannot freeze it: it fails at once (the kernel's EBUSY) rather than waits.
        Leaving thaws it."""
        fsfreeze = require_tool("fsfreeze")
        mount = str(xfs.mountpoint)

        @contextmanager
        def frozen_by_another() -> Iterator[None]:
            subprocess.run([fsfreeze, "--freeze", mount], check=True, capture_output=True)
            try:
                yield
            finally:
                subprocess.run([fsfreeze, "--unfreeze", mount], check=True, capture_output=True)

        return frozen_by_another

    @pytest.fixture
    def bad_tables(self, tmp_path: Path) -> Sequence[tuple[Mapping[str, Any], str]]:
        return [({}, "mountpoint"), ({"mountpoint": str(tmp_path / "missing")}, "mountpoint")]
