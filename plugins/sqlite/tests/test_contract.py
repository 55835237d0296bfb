"""The sqlite plug-in against freezeframe-testing's contract: a real database file."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from freezeframe.plugin import ApplicationPlugin
from freezeframe_sqlite import SqlitePlugin
from freezeframe_testing import ApplicationPluginContract
from freezeframe_testing.plugin import make_counter_db, writable_within


class TestSqliteContract(ApplicationPluginContract):
    @pytest.fixture
    def db(self, tmp_path: Path) -> Path:
        return make_counter_db(tmp_path / "shop.db")

    @pytest.fixture
    def plugin_class(self) -> type[ApplicationPlugin]:
        return SqlitePlugin

    @pytest.fixture
    def plugin_table(self, db: Path) -> Mapping[str, Any]:
        return {"path": str(db)}

    @pytest.fixture
    def resumed(self, db: Path) -> Callable[[], bool]:
        return lambda: writable_within(db, 0.5)

    @pytest.fixture
    def blocker(self, db: Path) -> Callable[[], AbstractContextManager[None]]:
        """Another connection holds the write lock: the quiesce cannot take it."""

        @contextmanager
        def locked() -> Iterator[None]:
            other = sqlite3.connect(db, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            try:
                yield
            finally:
                other.execute("ROLLBACK")
                other.close()

        return locked

    @pytest.fixture
    def bad_tables(self, tmp_path: Path) -> Sequence[tuple[Mapping[str, Any], str]]:
        return [({}, "path"), ({"path": "missing.db"}, "path"), ({"path": str(tmp_path)}, "path")]
