"""The btrfs backend against freezeframe-testing's contract: a real btrfs on a loop device."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from freezeframe.plugin import Backend
from freezeframe_btrfs import BtrfsBackend
from freezeframe_testing import BackendContract
from freezeframe_testing.plugin import LoopFs, require_tool


@pytest.fixture(scope="module")
def fs(loop_fs_module: Callable[..., LoopFs]) -> LoopFs:
    require_tool("btrfs")
    return loop_fs_module("btrfs")


@pytest.mark.slow
class TestBtrfsContract(BackendContract):
    @pytest.fixture
    def backend_class(self) -> type[Backend]:
        return BtrfsBackend

    @pytest.fixture
    def backend_table(self, fs: LoopFs, tmp_path: Path) -> Mapping[str, Any]:
        return {"dir": str(fs.mountpoint / "snaps" / tmp_path.name)}

    @pytest.fixture
    def data_root(self, fs: LoopFs, tmp_path: Path) -> Path:
        return fs.mountpoint / "data" / tmp_path.name

    @pytest.fixture
    def bad_tables(self) -> Sequence[tuple[Mapping[str, Any], str]]:
        return [({}, "dir"), ({"dir": "snaps", "paths": ["/nonexistent/x"]}, "paths")]
