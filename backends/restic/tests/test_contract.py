"""The restic backend against freezeframe-testing's contract: a real repository."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from freezeframe.plugin import Backend
from freezeframe_restic import ResticBackend
from freezeframe_testing import BackendContract
from freezeframe_testing.repositories import (
    RESTIC_PASSWORD,
    RESTIC_PASSWORD_ENV,
    restic_snapshots,
)


@pytest.mark.slow
class TestResticContract(BackendContract):
    @pytest.fixture
    def backend_class(self) -> type[Backend]:
        return ResticBackend

    @pytest.fixture
    def backend_table(self, restic_repo: Path) -> Mapping[str, Any]:
        return {"repository": str(restic_repo), "password_env": RESTIC_PASSWORD_ENV}

    @pytest.fixture
    def leftovers(self, restic_repo: Path) -> Callable[[], set[str]]:
        return lambda: restic_snapshots(restic_repo)

    @pytest.fixture
    def secrets(self) -> Sequence[str]:
        return [RESTIC_PASSWORD]

    @pytest.fixture
    def bad_tables(self) -> Sequence[tuple[Mapping[str, Any], str]]:
        return [
            ({"password_env": RESTIC_PASSWORD_ENV}, "repository"),
            ({"repository": "r"}, "password_env"),
        ]
