"""Components that keep, or each break one of, the rules the contract tests check.

Run by ``test_contract_catches.py`` as the test module of a separate pytest: a
contract that passes a broken component checks nothing.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from freezeframe.plugin import (
    ApplicationPlugin,
    Artifact,
    Backend,
    ConfigError,
    CrashSafety,
    Deadline,
    FreezeframeError,
    QuiesceError,
    Role,
    StageContext,
    Table,
    copy_tree,
    under,
)
from freezeframe_testing import ApplicationPluginContract, BackendContract

SECRET = "contract-kit-secret-9Xv"  # noqa: S105 - a test's throwaway


class Flag(ApplicationPlugin):
    """Quiesced while ``flag`` exists; the watchdog's command removes it."""

    kind = "kit-flag"
    crash_safety = CrashSafety.WATCHDOG

    def __init__(self, name: str, table: Table) -> None:
        super().__init__(name, table)
        self.flag: Path = table.get_path("flag")
        self.password = table.get_str("password")

    def quiesce(self, deadline: Deadline) -> None:
        if deadline.expired():
            raise QuiesceError("no time left")
        self.flag.write_text("")

    def unquiesce(self, snapshots: Sequence[Artifact]) -> None:
        self.flag.unlink(missing_ok=True)

    def watchdog_thaw_command(self) -> Sequence[str]:
        return ["rm", "-f", str(self.flag)]


class NotIdempotent(Flag):
    def unquiesce(self, snapshots: Sequence[Artifact]) -> None:
        self.flag.unlink()  # fails when there is no flag


class Leaky(Flag):
    def describe(self) -> Mapping[str, Any]:
        return {"password": self.password}


class IgnoresDeadline(Flag):
    def quiesce(self, deadline: Deadline) -> None:
        if deadline.expired():
            time.sleep(6)  # longer than the contract's grace
        self.flag.write_text("")


class LiesAboutCrashes(Flag):
    crash_safety = CrashSafety.PROCESS_EXIT  # nothing removes the flag when the process dies


class WrongField(Flag):
    def __init__(self, name: str, table: Table) -> None:
        if "password" not in table:
            raise ConfigError("flag", "the password is missing")  # names the wrong field
        super().__init__(name, table)


class Copy(Backend):
    """A copy backend: the source's trees into ``dir/<run id>``."""

    kind = "kit-copy"
    role = Role.COPY

    def __init__(self, name: str, table: Table) -> None:
        super().__init__(name, table)
        self.dir: Path = table.get_path("dir")

    def writes_to(self) -> Sequence[Path]:
        return [self.dir]

    def run(self, context: StageContext) -> Artifact:
        assert context.source is not None
        partial = self.dir / f".{context.run_id}.partial"
        partial.mkdir(parents=True)
        try:
            self._copy(context, partial)
        except BaseException:
            shutil.rmtree(partial)
            raise
        final = self.dir / context.run_id
        partial.rename(final)
        return Artifact(context.run_id, metadata={"paths": context.source.metadata["paths"]})

    def _copy(self, context: StageContext, into: Path) -> None:
        assert context.source is not None
        context.check()
        for original, image in context.source.outer_roots():
            dst = under(into, original)
            dst.parent.mkdir(parents=True, exist_ok=True)
            copy_tree(image, dst, progress=lambda b, f: context.progress(bytes=b, files=f))

    def restore(self, artifact: Artifact, target: Path) -> list[Path]:
        out = []
        for p in artifact.metadata["paths"]:
            under(target, p).parent.mkdir(parents=True, exist_ok=True)
            copy_tree(under(self.dir / artifact.id, p), under(target, p))
            out.append(under(target, p))
        return out

    def verify(self, artifact: Artifact) -> None:
        if not (self.dir / artifact.id).is_dir():
            raise FreezeframeError("gone")

    def delete(self, artifact: Artifact) -> None:
        shutil.rmtree(self.dir / artifact.id, ignore_errors=True)

    def discard(self, run_id: str) -> None:
        for p in (self.dir / f".{run_id}.partial", self.dir / run_id):
            shutil.rmtree(p, ignore_errors=True)


class NoDiscard(Copy):
    def discard(self, run_id: str) -> None:
        pass


class DeleteOnce(Copy):
    def delete(self, artifact: Artifact) -> None:
        shutil.rmtree(self.dir / artifact.id)  # fails when it is gone


class LeavesPartial(Copy):
    def run(self, context: StageContext) -> Artifact:
        assert context.source is not None
        partial = self.dir / f".{context.run_id}.partial"
        partial.mkdir(parents=True)
        self._copy(context, partial)  # a Cancelled leaves the partial copy
        partial.rename(self.dir / context.run_id)
        return Artifact(context.run_id, metadata={"paths": context.source.metadata["paths"]})


class RestoresElsewhere(Copy):
    def restore(self, artifact: Artifact, target: Path) -> list[Path]:
        copy_tree(self.dir / artifact.id, target / "restored")
        return [target / "restored"]


def app_contract(component: type[ApplicationPlugin]) -> type[ApplicationPluginContract]:
    class Contract(ApplicationPluginContract):
        @pytest.fixture
        def plugin_class(self) -> type[ApplicationPlugin]:
            return component

        @pytest.fixture
        def plugin_table(self, tmp_path: Path) -> Mapping[str, Any]:
            return {"flag": str(tmp_path / "FLAG"), "password": SECRET}

        @pytest.fixture
        def resumed(self, tmp_path: Path) -> Callable[[], bool]:
            return lambda: not (tmp_path / "FLAG").exists()

        @pytest.fixture
        def secrets(self) -> Sequence[str]:
            return [SECRET]

        @pytest.fixture
        def bad_tables(self) -> Sequence[tuple[Mapping[str, Any], str]]:
            return [({}, "flag"), ({"flag": "f"}, "password")]

    return Contract


def backend_contract(component: type[Backend]) -> type[BackendContract]:
    class Contract(BackendContract):
        @pytest.fixture
        def backend_class(self) -> type[Backend]:
            return component

        @pytest.fixture
        def backend_table(self, tmp_path: Path) -> Mapping[str, Any]:
            return {"dir": str(tmp_path / "copies")}

    return Contract


TestFlag = app_contract(Flag)
TestNotIdempotent = app_contract(NotIdempotent)
TestLeaky = app_contract(Leaky)
TestIgnoresDeadline = app_contract(IgnoresDeadline)
TestLiesAboutCrashes = app_contract(LiesAboutCrashes)
TestWrongField = app_contract(WrongField)
TestCopy = backend_contract(Copy)
TestNoDiscard = backend_contract(NoDiscard)
TestDeleteOnce = backend_contract(DeleteOnce)
TestLeavesPartial = backend_contract(LeavesPartial)
TestRestoresElsewhere = backend_contract(RestoresElsewhere)
