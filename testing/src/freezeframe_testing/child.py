"""A component driven in a process of its own, which a contract test kills as a crash would.

``python -m freezeframe_testing.child SPEC`` builds the component that the JSON
``SPEC`` names (``class``: ``"module:QualName"``, ``name``, ``table``, ``base_dir``)
and then, for ``"do": "quiesce"``, prepares and quiesces it (``seconds``: the
deadline) and prints ``quiesced``; for ``"do": "run"``, runs the stage
(``run_id``, ``data_paths``, ``source``) and prints ``progress`` at its first
progress report. Either way it then waits to be killed. Output is one line
each, flushed, so :func:`start_child` can wait for it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from freezeframe.plugin import (
    ApplicationPlugin,
    Artifact,
    Backend,
    Deadline,
    SnapshotKind,
    StageContext,
    Table,
)


def spec_of(
    component: type[Any], name: str, table: Mapping[str, Any], base_dir: Path
) -> dict[str, Any]:
    """The part of a child's spec that builds ``component`` (a class importable by name)."""
    return {
        "class": f"{component.__module__}:{component.__qualname__}",
        "name": name,
        "table": dict(table),
        "base_dir": str(base_dir),
    }


def build(spec: Mapping[str, Any]) -> Any:
    """The component ``spec`` names, built from its table."""
    module, _, qualname = str(spec["class"]).partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj(spec["name"], Table(spec["table"], base_dir=Path(spec["base_dir"])))


def _say(word: str) -> None:
    print(word, flush=True)


def _hang() -> None:
    while True:
        time.sleep(3600)


def main(spec: Mapping[str, Any]) -> None:
    """Do what ``spec`` asks, say so, then wait to be killed."""
    component = build(spec)
    if spec["do"] == "quiesce":
        assert isinstance(component, ApplicationPlugin)
        component.check()
        component.prepare(frozenset(SnapshotKind))
        component.quiesce(Deadline.after(float(spec["seconds"])))
        _say("quiesced")
        _hang()
    assert isinstance(component, Backend)
    source = spec.get("source")
    reported = threading.Event()

    def on_progress(done_bytes: int, done_files: int) -> None:
        if not reported.is_set():
            reported.set()
            _say("progress")
            _hang()  # the crash comes here, in the middle of the stage

    component.check()
    component.run(
        StageContext(
            spec["run_id"],
            "contract",
            spec["name"],
            tuple(Path(p) for p in spec["data_paths"]),
            source=None
            if source is None
            else Artifact(source["id"], view=Path(source["view"]), metadata=source["metadata"]),
            on_progress=on_progress,
        )
    )
    _say("finished")
    _hang()


def start_child(spec: Mapping[str, Any], timeout: float = 60) -> tuple[subprocess.Popen[str], str]:
    """Start the child in a session of its own; returns it and the first line it printed
    (``""`` when it ended without one: its stderr is in the assertion that follows)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "freezeframe_testing.child", json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    line: list[str] = []
    reader = threading.Thread(
        target=lambda: line.append(proc.stdout.readline() if proc.stdout else "")
    )
    reader.start()
    reader.join(timeout)
    return proc, (line[0].strip() if line else "")


def kill_child(proc: subprocess.Popen[str]) -> str:
    """SIGKILL the child and everything in its session (the tools it started), as a crash
    would; returns its stderr."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    return err


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
