"""freezeframe application plug-in ``example``: an application that pauses on a flag file.

The application (:mod:`freezeframe_example.writer` is one) stops writing under
its folder while the file ``PAUSED`` there holds a time still to come, and
creates ``PAUSED.ack`` once it has stopped; when the flag is gone, or its time
has passed, it deletes the ack and goes on. The quiesce writes the flag and
waits for the ack; the unquiesce deletes the flag. Because the flag carries its
own expiry, the application resumes by itself if freezeframe dies
(crash safety ``server-timeout``), and a flag restored from a backup is
already past its time.

Everything here is imported from :mod:`freezeframe.plugin`, the plug-in API.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from freezeframe.plugin import (
    ApplicationPlugin,
    Artifact,
    ConfigError,
    CrashSafety,
    Deadline,
    FreezeframeError,
    QuiesceError,
    SnapshotKind,
    Table,
    hookimpl,
)

FLAG = "PAUSED"
ACK = "PAUSED.ack"


def flag_time(text: str) -> float:
    """The ``time.time()`` a flag holds, or 0 for a flag that is not one (half-written)."""
    try:
        return float(text)
    except ValueError:
        return 0.0


class ExamplePlugin(ApplicationPlugin):
    """Pauses the application that writes under ``dir`` through its flag file."""

    kind = "example"
    crash_safety = CrashSafety.SERVER_TIMEOUT  # the application ignores a flag past its time

    def __init__(self, name: str, table: Table) -> None:
        super().__init__(name, table)
        self.dir: Path = table.get_path("dir", must_exist=True)
        if not self.dir.is_dir():
            raise ConfigError("dir", f"{self.dir} is not a folder")
        self.flag = self.dir / FLAG
        self.ack = self.dir / ACK
        self._interrupted = threading.Event()  # the one thing another thread touches

    def check(self) -> None:
        """The folder must be writable for the flag (raise a FreezeframeError if not)."""
        probe = self.dir / f".{FLAG}.probe"
        try:
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise FreezeframeError(f"cannot write the flag in {self.dir}: {e.strerror}") from e

    def prepare(self, snapshot_kinds: frozenset[SnapshotKind]) -> None:
        """Nothing slow to do before the window; the flag works for every snapshot kind."""

    def data_paths(self) -> Sequence[Path]:
        return [self.dir]

    def quiesce(self, deadline: Deadline) -> None:
        self.ack.unlink(missing_ok=True)  # an ack left over from a crash proves nothing
        tmp = self.dir / f".{FLAG}.tmp"
        tmp.write_text(f"{time.time() + deadline.remaining():.3f}\n")
        tmp.replace(self.flag)  # atomic: the application never reads half a flag
        while not self.ack.exists():
            if self._interrupted.is_set():
                raise QuiesceError(f"application {self.name!r}: interrupted")
            if deadline.expired():
                raise QuiesceError(f"application {self.name!r}: {self.ack} did not appear")
            time.sleep(0.005)

    def interrupt(self) -> None:
        self._interrupted.set()  # thread-safe, never blocks; cleared by unquiesce

    def unquiesce(self, snapshots: Sequence[Artifact]) -> None:
        self.flag.unlink(missing_ok=True)  # idempotent: no flag, nothing to do
        self._interrupted.clear()

    def describe(self) -> Mapping[str, Any]:
        return {"flag": FLAG}


@hookimpl
def freezeframe_register_applications(register: Callable[[type[ApplicationPlugin]], None]) -> None:
    """Register the plug-in's class (once per class)."""
    register(ExamplePlugin)
