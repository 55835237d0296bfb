"""The borg backend against freezeframe-testing's contract: a real repository."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from freezeframe.plugin import Backend
from freezeframe_borg import BorgBackend
from freezeframe_testing import BackendContract
from freezeframe_testing.repositories import BORG_PASSPHRASE, BORG_PASSPHRASE_ENV, borg_archives


@pytest.mark.slow
class TestBorgContract(BackendContract):
    @pytest.fixture
    def backend_class(self) -> type[Backend]:
        return BorgBackend

    @pytest.fixture
    def backend_table(self, borg_repo: Path) -> Mapping[str, Any]:
        return {"repository": str(borg_repo), "password_env": BORG_PASSPHRASE_ENV}

    @pytest.fixture
    def leftovers(self, borg_repo: Path) -> Callable[[], set[str]]:
        return lambda: set(borg_archives(borg_repo))

    @pytest.fixture
    def secrets(self) -> Sequence[str]:
        return [BORG_PASSPHRASE]

    @pytest.fixture
    def bad_tables(self) -> Sequence[tuple[Mapping[str, Any], str]]:
        return [
            ({"password_env": BORG_PASSPHRASE_ENV}, "repository"),
            ({"repository": "r"}, "password_env"),
        ]
