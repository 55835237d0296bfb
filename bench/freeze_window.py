"""Benchmark (not a test): how long applications stay frozen, per snapshot backend, over 1 GiB.

For each setup a filesystem is made here on a loop device, a 1 GiB SQLite
database (WAL mode) is put on it, and a profile with that one application and
one snapshot stage is backed up several times through the real engine:

- ``btrfs``: the btrfs backend (a read-only subvolume snapshot)
- ``clone`` on XFS: reflink copies
- ``clone`` on ext4: plain copies, for contrast (ext4 cannot reflink; the profile
  raises ``max_copy_in_window``, which ``check`` would otherwise refuse it under)
- ``clone`` on ext4 with ``capture = "logical"``: the window only fixes SQLite's
  read snapshot; the copy (the online backup API) runs after the thaw

Printed per setup, as the median over the runs: the freeze window (quiesce
start to thaw end, the run record's ``frozen_ms``), the snapshot stage's
time, and the raw tool doing the same alone (``btrfs subvolume snapshot -r``,
``cp --reflink=always``, ``cp --reflink=never``). Before each backup 4 MiB
of the database is rewritten, so every run has fresh data to capture.

Needs root (loop devices, mounts), btrfs-progs, xfsprogs and e2fsprogs.
Every filesystem is unmounted and its loop device detached at the end, also
after a failure. Usage: ``python bench/freeze_window.py [--runs N]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from _loop import loop_filesystem  # bench/, this script's folder

from freezeframe import RunStatus
from freezeframe.engine import Engine
from freezeframe.fsutil import syncfs
from freezeframe.profile import load_profile
from freezeframe.registry import build_registry
from freezeframe.tools import ToolError, find_tool, run_tool

ROWS = 262_144  # of 4000 random bytes: 1 GiB of database
IMAGE_BYTES = 4 << 30  # data, one copy of it and room to spare (the image is sparse)
TOOLS = ("losetup", "mount", "umount", "btrfs", "mkfs.btrfs", "mkfs.xfs", "mkfs.ext4", "cp")


@dataclass(frozen=True)
class Setup:
    """One line of the table."""

    label: str
    fstype: str
    backend: str
    raw: str  # what the raw-tool column ran ("" for none)
    capture: str = "snapshot"


SETUPS = (
    Setup("btrfs snapshot", "btrfs", "btrfs", "btrfs subvolume snapshot -r"),
    Setup("clone, reflink", "xfs", "clone", "cp --reflink=always"),
    Setup("clone, plain copy", "ext4", "clone", "cp --reflink=never"),
    Setup("clone, logical capture", "ext4", "clone", "", capture="logical"),
)


def build_database(path: Path) -> None:
    """1 GiB of random rows; built without a journal (fast), then switched to WAL."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, b BLOB NOT NULL)")
        db.execute(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) "
            "INSERT INTO blobs SELECT x, randomblob(4000) FROM c",
            (ROWS,),
        )
        db.execute("PRAGMA journal_mode=WAL")
    finally:
        db.close()


def churn(path: Path, run: int) -> None:
    """Rewrite 1024 rows (4 MiB), as a live application would between backups."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        start = run * 1024 % ROWS
        db.execute(
            "UPDATE blobs SET b = randomblob(4000) WHERE id > ? AND id <= ?", (start, start + 1024)
        )
    finally:
        db.close()


def timed(action: Callable[[], object]) -> float:
    """Milliseconds ``action`` took."""
    t0 = time.perf_counter()
    action()
    return (time.perf_counter() - t0) * 1000


def raw_tool(setup: Setup, data: Path, db: Path, scratch: Path) -> float:
    """One run of the raw tool doing the snapshot alone, in ms; its output removed after.

    Prepared as the engine prepares a backup: the WAL checkpointed, the filesystem synced.
    """
    db_conn = sqlite3.connect(db)
    try:
        db_conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    finally:
        db_conn.close()
    syncfs([db])
    if setup.backend == "btrfs":
        btrfs = find_tool("btrfs")
        ms = timed(
            lambda: run_tool([btrfs, "subvolume", "snapshot", "-r", str(data), str(scratch)])
        )
        run_tool([btrfs, "subvolume", "delete", str(scratch)], timeout=120)
        return ms
    mode = "always" if setup.fstype != "ext4" else "never"
    ms = timed(lambda: run_tool(["cp", f"--reflink={mode}", str(db), str(scratch)], timeout=600))
    scratch.unlink()
    return ms


@dataclass
class Row:
    """What one setup measured."""

    setup: Setup
    frozen: list[float]
    stage: list[float]
    raw: list[float]
    method: str


def bench(setup: Setup, source_db: Path, base: Path, runs: int) -> Row:
    """Back the database up ``runs`` times with ``setup``'s backend; the measurements."""
    with loop_filesystem(setup.fstype, base / setup.fstype, IMAGE_BYTES) as mnt:
        data = mnt / "data"
        if setup.fstype == "btrfs":
            run_tool([find_tool("btrfs"), "subvolume", "create", str(data)], timeout=60)
        else:
            data.mkdir()
        db = data / "bench.db"
        shutil.copyfile(source_db, db)
        profile_path = base / f"{setup.fstype}-{setup.capture}.toml"
        profile_path.write_text(
            textwrap.dedent(f"""
                [profile]
                name = "bench-{setup.fstype}-{setup.capture}"
                freeze_timeout = "300s"
                state_dir = "{base / "state"}"
                max_copy_in_window = "1TiB"  # measure the plain copy check would refuse

                [[application]]
                plugin = "sqlite"
                name = "db"
                path = "{db}"
                capture = "{setup.capture}"

                [[backup]]
                backend = "{setup.backend}"
                name = "snap"
                dir = "{mnt / "snaps"}"
            """)
        )
        registry = build_registry()
        profile = load_profile(profile_path, registry)
        engine = Engine(profile, registry)
        frozen, stage, raw, method = [], [], [], "?"
        for i in range(runs):
            churn(db, i)
            record = engine.backup().record
            if record.status != RunStatus.SUCCEEDED:
                raise SystemExit(f"{setup.label}: run failed: {record.error}")
            st = record.stage("snap")
            assert st is not None and st.artifact is not None
            assert st.started_at is not None and st.finished_at is not None
            frozen.append(record.applications[0].frozen_ms or 0.0)
            stage.append((st.finished_at - st.started_at) * 1000)
            method = str(st.artifact.metadata.get("method", "?"))
            if setup.capture != "snapshot":
                method = f"{setup.capture}, after the thaw"
            profile.stage("snap").component.delete(st.artifact)
            churn(db, runs + i)
            if setup.raw:
                raw.append(raw_tool(setup, data, db, mnt / "raw-copy"))
        return Row(setup, frozen, stage, raw, method)


def spread(values: list[float]) -> str:
    """``median (min-max)``, or ``-`` for nothing measured."""
    if not values:
        return "-"
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="backups per setup (default 7)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print(
            "freeze_window.py needs root (loop devices and mounts); run it as root", file=sys.stderr
        )
        return 2
    try:
        for tool in TOOLS:
            find_tool(tool)
    except ToolError as e:
        print(f"freeze_window.py: {e}", file=sys.stderr)
        return 2

    rows = []
    with ExitStack() as stack:
        base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ff-bench-")))
        os.chmod(base, 0o700)
        print(f"building a 1 GiB SQLite database in {base} ...", flush=True)
        source_db = base / "source.db"
        build_database(source_db)
        size = source_db.stat().st_size
        for setup in SETUPS:
            print(f"{setup.label} on {setup.fstype}: {args.runs} backups ...", flush=True)
            rows.append(bench(setup, source_db, base, args.runs))

    print()
    print(
        f"{size / (1 << 30):.2f} GiB SQLite database (WAL); ms, median of {args.runs} runs "
        "(min-max); frozen = quiesce start to thaw end"
    )
    table = [("setup", "fs", "method", "frozen", "stage", "raw tool", "raw tool run")]
    for r in rows:
        table.append(
            (
                r.setup.label,
                r.setup.fstype,
                r.method,
                spread(r.frozen),
                spread(r.stage),
                spread(r.raw),
                r.setup.raw or "-",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for n, row in enumerate(table):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
