"""freezeframe application plug-in ``exec``: anything that has a quiesce command.

The profile gives the commands, each an argv run without a shell:
``quiesce`` must return (exit 0) once the application is ready for backup,
within the run's deadline; ``unquiesce`` undoes it. Optional: ``check`` (a
preflight), ``prepare`` (slow work before the freeze window), ``describe``
(facts for the run's record). Nothing ends such a quiesce by itself, so the
plug-in declares ``CrashSafety.WATCHDOG``: the core's watchdog runs the
unquiesce command if freezeframe dies or hangs while the application is
quiesced, and the next freezeframe command runs it again.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from freezeframe.plugin import (
    ApplicationPlugin,
    Artifact,
    ConfigError,
    CrashSafety,
    Deadline,
    DrillCommand,
    DrillContext,
    FreezeframeError,
    QuiesceError,
    SnapshotKind,
    Table,
    ToolError,
    hookimpl,
    run_tool,
)

__all__ = ["ExecPlugin"]

#: Most of a describe command's output kept in the run's record.
DESCRIBE_LIMIT = 4000


class ExecPlugin(ApplicationPlugin):
    """One application quiesced and unquiesced by commands the profile gives."""

    kind = "exec"
    crash_safety = CrashSafety.WATCHDOG
    #: The default; ``consistent_on`` in the table may add per-file snapshots.
    consistent_on = frozenset({SnapshotKind.ATOMIC})

    def __init__(self, name: str, table: Table) -> None:
        super().__init__(name, table)
        self.quiesce_argv: list[str] = self._argv(table, "quiesce")
        self.unquiesce_argv: list[str] = self._argv(table, "unquiesce")
        self.check_argv: list[str] | None = self._argv(table, "check", None)
        self.prepare_argv: list[str] | None = self._argv(table, "prepare", None)
        self.describe_argv: list[str] | None = self._argv(table, "describe", None)
        #: Longest check, prepare, unquiesce or describe may take (quiesce: the deadline).
        self.timeout = table.get_duration("timeout", 30.0)
        self.paths: list[Path] = table.get_paths("data_paths")
        self.freezes: list[Path] = table.get_paths("freezes")
        #: ``drill``: the profile's check of a restored copy, if it gives one.
        self.drill_command = DrillCommand.from_table(table)
        kinds = table.get_str_list("consistent_on") or [str(k) for k in self.consistent_on]
        try:
            self.consistent_on = frozenset(SnapshotKind(k) for k in kinds)
        except ValueError:
            choices = ", ".join(repr(str(k)) for k in SnapshotKind)
            raise ConfigError("consistent_on", f"expected {choices}, got {kinds!r}") from None
        self._prepared = False
        self._begun = False

    @staticmethod
    def _argv(table: Table, key: str, *default: None) -> Any:
        argv = table.get_argv(key, *default)
        if argv is not None and "/" in argv[0] and not os.path.isabs(argv[0]):
            # ./freeze.sh: from the profile's folder, as every relative path in a profile
            argv[0] = str((table.base_dir / argv[0]).resolve())
        return argv

    def _commands(self) -> dict[str, list[str]]:
        steps = {
            "check": self.check_argv,
            "prepare": self.prepare_argv,
            "quiesce": self.quiesce_argv,
            "unquiesce": self.unquiesce_argv,
            "describe": self.describe_argv,
        }
        return {step: argv for step, argv in steps.items() if argv is not None}

    def _run(self, step: str, timeout: float) -> str:
        argv = self._commands()[step]
        try:
            return run_tool(argv, timeout=timeout).stdout
        except ToolError as e:
            raise FreezeframeError(f"{step} command: {e}") from None

    # -- the plug-in API --------------------------------------------------------
    def check(self) -> None:
        """Every command's program can be run; the data paths exist; then the check command."""
        for step, argv in self._commands().items():
            program = argv[0]
            found = shutil.which(program) if "/" not in program else program
            if found is None or not os.access(found, os.X_OK) or os.path.isdir(found):
                where = "not found on PATH" if "/" not in program else "not an executable file"
                raise FreezeframeError(f"{step} command: {program}: {where}")
        for path in self.paths:
            if not os.path.lexists(path):
                raise FreezeframeError(f"data path {path} does not exist")
        if self.check_argv is not None:
            self._run("check", self.timeout)

    def prepare(self, snapshot_kinds: frozenset[SnapshotKind]) -> None:
        """The prepare command, if any: before the freeze window, blocking nobody."""
        self._prepared = True
        if self.prepare_argv is not None:
            self._run("prepare", self.timeout)

    def data_paths(self) -> Sequence[Path]:
        """``data_paths`` from the profile."""
        return tuple(self.paths)

    def frozen_mounts(self) -> Sequence[Path]:
        """``freezes``: mounts the quiesce command freezes whole (the core writes nothing there)."""
        return tuple(self.freezes)

    def quiesce(self, deadline: Deadline) -> None:
        """The quiesce command, killed if it has not returned by the deadline."""
        self._begun = True
        try:
            run_tool(self.quiesce_argv, timeout=max(0.1, deadline.remaining()))
        except ToolError as e:
            if e.returncode is None and deadline.expired():
                program = os.path.basename(self.quiesce_argv[0])
                raise QuiesceError(
                    f"quiesce command: {program} was still running at the deadline (killed)"
                ) from None
            raise QuiesceError(f"quiesce command: {e}") from None

    def unquiesce(self, snapshots: Sequence[Artifact]) -> None:
        """The unquiesce command; not run when this run prepared but never began the quiesce
        (nothing to undo). A fresh plug-in (the next command after a crash) runs it."""
        if self._prepared and not self._begun:
            return
        try:
            self._run("unquiesce", self.timeout)
        except FreezeframeError as e:
            raise QuiesceError(str(e)) from None
        self._begun = False

    @contextmanager
    def drill(self, ctx: DrillContext) -> Iterator[None]:
        """The profile's ``drill`` command on the restored copy, if it gives one; without
        it, no check at all. Nothing is started, so there is nothing to reach."""
        DrillCommand.check(self.drill_command, ctx)
        yield None

    def watchdog_thaw_command(self) -> Sequence[str]:
        """The unquiesce command, as the profile gives it."""
        return list(self.unquiesce_argv)

    def describe(self) -> Mapping[str, Any]:
        """The programs run, and what the describe command printed (a JSON object is kept
        as one; other output as text, cut at 4000 characters)."""
        facts: dict[str, Any] = {
            step: argv[0] for step, argv in self._commands().items() if step != "describe"
        }
        if self.describe_argv is not None:
            out = self._run("describe", self.timeout).strip()
            try:
                parsed = json.loads(out)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict) and len(out) <= DESCRIBE_LIMIT:
                facts["described"] = parsed
            else:
                facts["described"] = out[:DESCRIBE_LIMIT]
        return facts


@hookimpl
def freezeframe_register_applications(register: Callable[[type[Any]], None]) -> None:
    """Register the ``exec`` application plug-in."""
    register(ExecPlugin)
