"""The plug-in against every rule of the author guide: freezeframe-testing's contract tests.

The contract class brings the tests; this module says how to build the plug-in
against a running application and how to tell whether that application runs.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from freezeframe.plugin import ApplicationPlugin
from freezeframe_example import ExamplePlugin
from freezeframe_example.writer import writes_on
from freezeframe_testing import ApplicationPluginContract


class TestExampleContract(ApplicationPluginContract):
    @pytest.fixture
    def plugin_class(self) -> type[ApplicationPlugin]:
        return ExamplePlugin

    @pytest.fixture
    def plugin_table(self, app_dir: Path) -> Mapping[str, Any]:
        return {"dir": str(app_dir)}

    @pytest.fixture
    def resumed(self, app_dir: Path) -> Callable[[], bool]:
        return lambda: writes_on(app_dir)

    @pytest.fixture
    def blocker(
        self, writer_proc: subprocess.Popen[bytes]
    ) -> Callable[[], AbstractContextManager[None]]:
        """The application stopped (SIGSTOP): it cannot acknowledge the flag."""

        @contextmanager
        def stopped() -> Iterator[None]:
            writer_proc.send_signal(signal.SIGSTOP)
            try:
                yield
            finally:
                writer_proc.send_signal(signal.SIGCONT)

        return stopped

    @pytest.fixture
    def bad_tables(self, tmp_path: Path) -> Sequence[tuple[Mapping[str, Any], str]]:
        (tmp_path / "a-file").write_text("")
        return [({}, "dir"), ({"dir": "missing"}, "dir"), ({"dir": "a-file"}, "dir")]
