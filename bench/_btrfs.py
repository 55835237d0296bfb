"""What several benchmarks share: the bare btrfs snapshot that a freeze window is measured
against (not a benchmark itself: ``run.py`` skips modules whose name starts with ``_``)."""

from __future__ import annotations

import time
from pathlib import Path

from freezeframe.plugin import syncfs
from freezeframe.tools import find_tool, run_tool

__all__ = ["bare_snapshot"]


def bare_snapshot(subvolume: Path, scratch: Path) -> float:
    """``btrfs subvolume snapshot -r`` of ``subvolume`` at ``scratch`` alone, after a syncfs
    as a run's prepare does, in ms; the snapshot deleted after."""
    btrfs = find_tool("btrfs")
    syncfs([subvolume])
    t0 = time.perf_counter()
    run_tool([btrfs, "subvolume", "snapshot", "-r", str(subvolume), str(scratch)], timeout=120)
    ms = (time.perf_counter() - t0) * 1000
    run_tool([btrfs, "subvolume", "delete", str(scratch)], timeout=120)
    return ms
