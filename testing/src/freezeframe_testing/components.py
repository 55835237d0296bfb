"""Components for tests of the engine: real plug-ins, registered in-process through pluggy.

Each does one thing a test needs to provoke (a failing stage, a slow one, a
quiesce that fails) and records what happened to it in ``EVENTS`` so a test
can check order and timing. They are real implementations of the plug-in API,
not mocks of the core.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from freezeframe import (
    ApplicationPlugin,
    Artifact,
    Backend,
    FreezeframeError,
    QuiesceError,
    Role,
    RunRecord,
    SnapshotKind,
    StageContext,
    StageRecord,
    Table,
    hookimpl,
)

#: (what, name, time.monotonic()) for every call the test components and observers receive.
EVENTS: list[tuple[str, str, float]] = []
_lock = threading.Lock()


def record(what: str, name: str) -> None:
    """Append an event."""
    with _lock:
        EVENTS.append((what, name, time.monotonic()))


class Recorder(ApplicationPlugin):
    """An application whose quiesce takes ``quiesce_ms`` and can be told to fail (``fail``)."""

    kind = "recorder"

    def __init__(self, name: str, table: Table) -> None:
        super().__init__(name, table)
        self.quiesce_ms: int = table.get_int("quiesce_ms", 0, minimum=0, maximum=3_600_000)
        self.fail: str = table.get_choice("fail", ("never", "quiesce", "unquiesce"), "never")
        self.data: Path | None = table.get_path("data", None)
        self.frozen = False

    def prepare(self) -> None:  # type: ignore[override]  # the older form: no kinds
        record("prepare", self.name)

    def data_paths(self) -> Sequence[Path]:
        return (self.data,) if self.data else ()

    def quiesce(self, deadline: Any) -> None:
        record("quiesce-start", self.name)
        time.sleep(self.quiesce_ms / 1000)
        if self.fail == "quiesce":
            record("quiesce-failed", self.name)
            raise QuiesceError(f"{self.name} refused to quiesce (test)")
        self.frozen = True
        record("quiesce-end", self.name)

    def unquiesce(self, snapshots: Sequence[Artifact]) -> None:
        record("unquiesce-start", self.name)
        self.frozen = False
        if self.fail == "unquiesce":
            raise QuiesceError(f"{self.name} refused to unquiesce (test)")
        record("unquiesce-end", self.name)

    def describe(self) -> Mapping[str, Any]:
        return {"quiesce_ms": self.quiesce_ms}


class _TestSnapshot(Backend):
    role = Role.SNAPSHOT
    snapshot_kind = SnapshotKind.PER_FILE

    def __init__(self, name: str, table: Table) -> None:
        super().__init__(name, table)
        self.dir: Path = table.get_path("dir")
        self.seconds: float = table.get_duration("seconds", 0.001)
        self.marker: Path | None = table.get_path("marker", None)

    def _view(self, run_id: str) -> Path:
        return self.dir / run_id

    def restore(self, artifact: Artifact, target: Path) -> list[Path]:
        raise FreezeframeError("test snapshot cannot restore")

    def verify(self, artifact: Artifact) -> None:
        if not self._view(artifact.id).is_dir():
            raise FreezeframeError("gone")

    def delete(self, artifact: Artifact) -> None:
        record("delete", artifact.id)
        path = self._view(artifact.id)
        if path.is_dir():
            path.rmdir()

    def discard(self, run_id: str) -> None:
        record("discard", run_id)
        path = self._view(run_id)
        if path.is_dir():
            path.rmdir()


class SlowSnapshot(_TestSnapshot):
    """Makes an empty view dir, then works for ``seconds`` (cancellable); touches ``marker``."""

    kind = "slow"

    def run(self, context: StageContext) -> Artifact:
        view = self._view(context.run_id)
        view.mkdir(parents=True)
        if self.marker:
            self.marker.write_text(context.run_id)
        record("stage-start", self.name)
        end = time.monotonic() + self.seconds
        try:
            while time.monotonic() < end:
                time.sleep(0.01)
                context.check()
        except BaseException:
            view.rmdir()
            record("stage-cancelled", self.name)
            raise
        record("stage-end", self.name)
        return Artifact(context.run_id, view=view)


class FailingSnapshot(_TestSnapshot):
    """Fails after half-making its view (and cleans it up, as a backend must)."""

    kind = "failing"

    def run(self, context: StageContext) -> Artifact:
        view = self._view(context.run_id)
        view.mkdir(parents=True)
        view.rmdir()
        record("stage-failed", self.name)
        raise FreezeframeError("disk on fire (test)")


class SealedSnapshot(_TestSnapshot):
    """Makes an empty view; seals it after the thaw in ``seconds`` (``fail_seal``: fails
    there instead), recording ``seal-start``/``seal-end``."""

    kind = "sealed"

    def __init__(self, name: str, table: Table) -> None:
        super().__init__(name, table)
        self.fail_seal: bool = table.get_bool("fail_seal", False)

    def run(self, context: StageContext) -> Artifact:
        view = self._view(context.run_id)
        view.mkdir(parents=True)
        return Artifact(context.run_id, view=view)

    def seal(self, artifact: Artifact) -> Artifact:
        record("seal-start", self.name)
        time.sleep(self.seconds)
        if self.fail_seal:
            raise FreezeframeError("cannot read the view (test)")
        record("seal-end", self.name)
        return Artifact(artifact.id, view=artifact.view, metadata={"sealed": True})


class Observer:
    """Lifecycle hooks that record what they see; ``RAISE`` makes them raise after recording."""

    RAISE: ClassVar[bool] = False
    runs: ClassVar[list[RunRecord]] = []
    stages: ClassVar[list[StageRecord]] = []

    @hookimpl
    def freezeframe_run_started(self, run: RunRecord) -> None:
        record("run-started", run.run_id)
        if self.RAISE:
            raise RuntimeError("observer exploded (test)")

    @hookimpl
    def freezeframe_stage_finished(self, run: RunRecord, stage: StageRecord) -> None:
        record("stage-finished", stage.name)
        self.stages.append(stage)
        if self.RAISE:
            raise RuntimeError("observer exploded (test)")

    @hookimpl
    def freezeframe_run_finished(self, run: RunRecord) -> None:
        record("run-finished", run.run_id)
        self.runs.append(run)
        if self.RAISE:
            raise RuntimeError("observer exploded (test)")


@hookimpl
def freezeframe_register_applications(register: Callable[[type[Any]], None]) -> None:
    """The test application plug-ins."""
    register(Recorder)


@hookimpl
def freezeframe_register_backends(register: Callable[[type[Any]], None]) -> None:
    """The test backends."""
    register(SlowSnapshot)
    register(FailingSnapshot)
    register(SealedSnapshot)


def start_freezeframe(
    *args: str | Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[str]:
    """``freezeframe ARGS`` with these components registered, as a real subprocess (a test
    may kill it); stdout and stderr are pipes."""
    return subprocess.Popen(
        [sys.executable, "-m", "freezeframe_testing.components", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def wait_for(path: Path, proc: subprocess.Popen[str] | None = None, timeout: float = 60) -> None:
    """Wait until ``path`` exists (a slow stage's marker); fail if ``proc`` ends first."""
    end = time.monotonic() + timeout
    while not path.exists():
        if proc is not None:
            assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.01)


def main() -> None:
    """The CLI with these components registered: ``python -m freezeframe_testing.components``."""
    from freezeframe.cli import main as cli_main
    from freezeframe.registry import build_registry

    sys.modules.setdefault("freezeframe_testing.components", sys.modules[__name__])
    raise SystemExit(cli_main(sys.argv[1:], build_registry(modules=[sys.modules[__name__]])))


if __name__ == "__main__":
    main()
