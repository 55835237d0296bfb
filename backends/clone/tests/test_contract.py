"""The clone backend against freezeframe-testing's contract: a real snapshot folder."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from freezeframe.plugin import Backend
from freezeframe_clone import CloneBackend
from freezeframe_testing import BackendContract


class TestCloneContract(BackendContract):
    @pytest.fixture
    def backend_class(self) -> type[Backend]:
        return CloneBackend

    @pytest.fixture
    def backend_table(self, tmp_path: Path) -> Mapping[str, Any]:
        return {"dir": str(tmp_path / "snaps")}

    @pytest.fixture
    def bad_tables(self) -> Sequence[tuple[Mapping[str, Any], str]]:
        return [({}, "dir")]
