"""freezeframe application plug-in ``fsfreeze``: freeze a whole mounted filesystem.

Quiesce runs ``fsfreeze --freeze MOUNT`` (the kernel's FIFREEZE: it flushes
the filesystem and blocks every new write); unquiesce runs
``fsfreeze --unfreeze MOUNT``. A frozen filesystem never thaws by itself, so
this plug-in declares ``CrashSafety.WATCHDOG``: the core starts its watchdog
process before the freeze, and the watchdog runs the unfreeze if freezeframe
dies or the deadline passes. A filesystem already frozen by another process (a
hypervisor's guest agent, another backup tool) fails the quiesce at once, and
that freeze is left to its owner: unquiesce does not thaw it.
"""

from __future__ import annotations

import os
import re
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
    find_tool,
    hookimpl,
    run_tool,
)

__all__ = ["FsfreezePlugin"]


class FsfreezePlugin(ApplicationPlugin):
    """One mounted filesystem (``mountpoint``), frozen whole."""

    kind = "fsfreeze"
    # Nothing on a frozen filesystem changes, so a per-file copy made while it is
    # frozen is as consistent as an atomic snapshot.
    consistent_on = frozenset({SnapshotKind.ATOMIC, SnapshotKind.PER_FILE})
    crash_safety = CrashSafety.WATCHDOG

    def __init__(self, name: str, table: Table) -> None:
        super().__init__(name, table)
        self.mountpoint = table.get_path("mountpoint", must_exist=True)
        if not os.path.ismount(self.mountpoint):
            raise ConfigError("mountpoint", f"{self.mountpoint} is not a mount point")
        if self.mountpoint == Path("/"):
            raise ConfigError("mountpoint", "refusing to freeze / (freezeframe itself runs there)")
        #: ``drill``: the profile's check of a restored copy, if it gives one.
        self.drill_command = DrillCommand.from_table(table)
        self._frozen = False
        self._others = False  # the last quiesce found the filesystem frozen by another
        self._tool = "fsfreeze"

    def check(self) -> None:
        """fsfreeze is installed and we may freeze (root, or CAP_SYS_ADMIN)."""
        self._tool = find_tool("fsfreeze")
        if os.geteuid() != 0:
            raise FreezeframeError(f"freezing {self.mountpoint} needs root (CAP_SYS_ADMIN)")
        if _device(self.mountpoint) == _device(Path("/")):
            raise FreezeframeError(
                f"{self.mountpoint} is on the root filesystem; refusing to freeze /"
            )

    def data_paths(self) -> Sequence[Path]:
        """The whole mount."""
        return (self.mountpoint,)

    def frozen_mounts(self) -> Sequence[Path]:
        """The mount this plug-in freezes whole."""
        return (self.mountpoint,)

    def quiesce(self, deadline: Deadline) -> None:
        """``fsfreeze --freeze``: flushes the filesystem, then blocks every write."""
        self._others = False
        try:
            run_tool(
                [self._tool, "--freeze", str(self.mountpoint)],
                timeout=max(0.1, deadline.remaining()),
            )
        except ToolError as e:
            if _frozen_by_another(e):  # EBUSY: the kernel refused; nothing of ours to undo
                self._others = True
                raise QuiesceError(
                    f"{self.mountpoint} is already frozen by another process (a hypervisor's "
                    "guest agent, another backup?): freezeframe leaves that freeze to it"
                ) from None
            raise QuiesceError(f"{self.mountpoint}: {e}") from None
        self._frozen = True

    def unquiesce(self, snapshots: Sequence[Artifact]) -> None:
        """``fsfreeze --unfreeze`` (also after a half-failed freeze: a freeze that timed out
        may still complete in the kernel), but never a freeze that another process holds."""
        if self._others:
            self._others = False
            return
        try:
            run_tool([self._tool, "--unfreeze", str(self.mountpoint)], timeout=30)
        except ToolError as e:
            if not _not_frozen(e):  # EINVAL: not frozen (any more): nothing to undo
                raise QuiesceError(f"{self.mountpoint}: {e}") from None
        self._frozen = False

    @contextmanager
    def drill(self, ctx: DrillContext) -> Iterator[None]:
        """The profile's ``drill`` command on the restored copy, if it gives one; without
        it, no check at all. Nothing is started, so there is nothing to reach."""
        DrillCommand.check(self.drill_command, ctx)
        yield None

    def watchdog_thaw_command(self) -> Sequence[str]:
        """What the watchdog runs if we die while frozen."""
        return [self._tool, "--unfreeze", str(self.mountpoint)]

    def describe(self) -> Mapping[str, Any]:
        """The mount and its filesystem type."""
        return {"mountpoint": str(self.mountpoint), "fstype": _fstype(self.mountpoint)}


def _frozen_by_another(e: ToolError) -> bool:
    # FIFREEZE on a filesystem that is already frozen fails with EBUSY.
    return e.returncode is not None and "Device or resource busy" in e.stderr


def _not_frozen(e: ToolError) -> bool:
    # FITHAW on a filesystem that is not frozen fails with EINVAL: already thawed.
    return "Invalid argument" in e.stderr


def _device(path: Path) -> int:
    return path.stat().st_dev


def _fstype(mountpoint: Path) -> str:
    best = ("", "?")
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                target = _unescape(fields[1])
                if Path(target) == mountpoint and len(target) >= len(best[0]):
                    best = (target, fields[2])
    except OSError:
        pass
    return best[1]


def _unescape(field: str) -> str:
    """A path as the kernel writes it in a mount table: space, tab, newline and
    backslash as three octal digits (``\\040``, ``\\011``, ``\\012``, ``\\134``)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


@hookimpl
def freezeframe_register_applications(register: Callable[[type[Any]], None]) -> None:
    """Register the ``fsfreeze`` application plug-in."""
    register(FsfreezePlugin)
