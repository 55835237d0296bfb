"""The archive backend against freezeframe-testing's contract: a real archive folder."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from freezeframe.plugin import Backend
from freezeframe_archive import ArchiveBackend
from freezeframe_testing import BackendContract


class TestArchiveContract(BackendContract):
    @pytest.fixture
    def backend_class(self) -> type[Backend]:
        return ArchiveBackend

    @pytest.fixture
    def backend_table(self, tmp_path: Path) -> Mapping[str, Any]:
        return {"dir": str(tmp_path / "archives")}

    @pytest.fixture
    def bad_tables(self) -> Sequence[tuple[Mapping[str, Any], str]]:
        return [({}, "dir")]
