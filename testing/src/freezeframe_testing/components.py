"""Components for tests of the engine: real plug-ins, registered in-process through pluggy.

Each does one thing a test needs to provoke (a failing stage, a slow one, a
quiesce that fails) and records what happened to it in ``EVENTS`` so a test
can check order and timing. They are real implementations of the plug-in API,
not mocks of the core.
"""

from __future__ import annotations

import os
import shutil
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
from freezeframe.plugin import copy_tree, under
from freezeframe.records import DrillRecord

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
        self.quiesce_ms = table.get_int("quiesce_ms", 0, minimum=0, maximum=3_600_000)
        self.fail: str = table.get_choice("fail", ("never", "quiesce", "unquiesce"), "never")
        self.data = table.get_path("data", None)
        self.frozen = False

    def prepare(self, snapshot_kinds: frozenset[SnapshotKind]) -> None:
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
    takes_completions = True  # its views are folders, writable after the thaw

    def __init__(self, name: str, table: Table) -> None:
        super().__init__(name, table)
        self.dir = table.get_path("dir")
        self.seconds = table.get_duration("seconds", 0.001)
        self.marker = table.get_path("marker", None)

    def _view(self, run_id: str) -> Path:
        return self.dir / run_id

    def restore(self, artifact: Artifact, target: Path) -> list[Path]:
        raise FreezeframeError("test snapshot cannot restore")

    def verify(self, artifact: Artifact) -> None:
        if not self._view(artifact.id).is_dir():
            raise FreezeframeError("gone")

    def delete(self, artifact: Artifact) -> None:
        record("delete", artifact.id)
        shutil.rmtree(self._view(artifact.id), ignore_errors=True)  # completions write here

    def discard(self, run_id: str) -> None:
        record("discard", run_id)
        shutil.rmtree(self._view(run_id), ignore_errors=True)


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


class CopySnapshot(_TestSnapshot):
    """Copies every data path into its view, each under its original path (as ``clone``
    does, without its checks): a real image for a plug-in's ``complete`` to complete."""

    kind = "copy-snapshot"

    def run(self, context: StageContext) -> Artifact:
        view = self._view(context.run_id)
        view.mkdir(parents=True)
        for path in context.data_paths:
            image = under(view, path)
            image.parent.mkdir(parents=True, exist_ok=True)
            copy_tree(path, image, progress=lambda b, f: context.progress(bytes=b, files=f))
        paths = [str(p) for p in context.data_paths]
        return Artifact(context.run_id, view=view, metadata={"paths": paths})

    def delete(self, artifact: Artifact) -> None:
        shutil.rmtree(self._view(artifact.id), ignore_errors=True)

    def discard(self, run_id: str) -> None:
        shutil.rmtree(self._view(run_id), ignore_errors=True)


class AtomicCopySnapshot(CopySnapshot):
    """:class:`CopySnapshot` declared atomic: for plug-ins consistent on atomic snapshots
    only (the copy is not one instant: it serves tests of anything but consistency)."""

    kind = "copy-snapshot-atomic"
    snapshot_kind = SnapshotKind.ATOMIC


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
    drills: ClassVar[list[DrillRecord]] = []

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
    def freezeframe_drill_finished(self, run: RunRecord, drill: DrillRecord) -> None:
        record("drill-finished", drill.drill_id)
        self.drills.append(drill)
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
    register(CopySnapshot)
    register(AtomicCopySnapshot)
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


def run_freezeframe(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``freezeframe ARGS`` with these components registered, run to its end."""
    return subprocess.run(
        [sys.executable, "-m", "freezeframe_testing.components", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
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
