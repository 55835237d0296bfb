"""Benchmark (not a test): how long a PostgreSQL backup stalls the server's writers. Never.

For each setup a private PostgreSQL server (the system's binaries, default
settings: fsync on) is made with ~100 MB of data, and a writer process
commits small transactions without pause (two balance updates and a ledger
insert each, as the consistency tests do) while freezeframe backs the server
up several times through the real engine, with one snapshot stage:

- ``clone`` on ext4: a per-file snapshot (plain copy), the plug-in's backup mode
- ``clone`` on XFS: a per-file snapshot (reflink), the plug-in's backup mode
- ``btrfs``: an atomic snapshot, crash-consistent

The writer logs each commit's start and latency. Printed per setup: the
freeze window (quiesce start to thaw end, the run record's ``frozen_ms``,
which for PostgreSQL is the backup mode and the WAL copy, not a stall), the
checkpoint that ``prepare`` ran before it, the commits that happened inside
the windows, the longest commit latency and the longest gap between two
commits inside a window, against the same figures while no backup ran.

Needs root (loop devices, mounts; PostgreSQL runs as the ``postgres`` user),
the PostgreSQL server binaries, btrfs-progs and xfsprogs. Everything is
stopped, unmounted and removed at the end, also after a failure.
Usage: ``python bench/postgres_write_stall.py [--runs N]``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "testing"))

from _loop import loop_filesystem  # noqa: E402 (bench/, this script's folder)

from freezeframe import RunStatus  # noqa: E402
from freezeframe.engine import Engine  # noqa: E402
from freezeframe.profile import load_profile  # noqa: E402
from freezeframe.registry import build_registry  # noqa: E402
from freezeframe.tools import ToolError, find_tool, run_tool  # noqa: E402

IMAGE_BYTES = 2 << 30
FILLER_ROWS = 400_000  # of ~230 bytes: ~100 MB of table


@dataclass(frozen=True)
class Setup:
    """One line of the table."""

    label: str
    fstype: str  # "tmp" for the folder /tmp is on
    backend: str


SETUPS = (
    Setup("clone, plain copy", "tmp", "clone"),
    Setup("clone, reflink", "xfs", "clone"),
    Setup("btrfs snapshot", "btrfs", "btrfs"),
)


# -- the writer, in a process of its own (our GIL must not be what stalls it) -------------


def writer_main(dsn: str, out: str) -> None:
    """Commit transfers until SIGTERM; write "start latency" (seconds, wall clock) per commit."""
    import random

    import psycopg

    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    rnd = random.Random(7)
    lines = []
    n = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not stop:
            a, b = rnd.sample(range(1, 11), 2)
            started = time.time()
            with conn.transaction():
                conn.execute("UPDATE accounts SET balance = balance - 1 WHERE id = %s", (a,))
                conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = %s", (b,))
                conn.execute("INSERT INTO ledger VALUES (%s, 1)", (n + 1,))
            n += 1
            lines.append(f"{started:.6f} {time.time() - started:.6f}\n")
    Path(out).write_text("".join(lines))


@contextmanager
def writer(dsn: str, out: Path) -> Iterator[None]:
    proc = subprocess.Popen([sys.executable, __file__, "--writer", dsn, str(out)])
    try:
        time.sleep(1.0)  # connected and committing
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


# -- filesystems ---------------------------------------------------------------------


@contextmanager
def place(fstype: str, base: Path) -> Iterator[Path]:
    """A folder for the cluster: on /tmp, or on a fresh loop filesystem (a btrfs subvolume)."""
    if fstype == "tmp":
        folder = base / "tmp-data"
        folder.mkdir()
        yield folder
        return
    with loop_filesystem(fstype, base / fstype, IMAGE_BYTES) as mnt:
        if fstype == "btrfs":
            run_tool([find_tool("btrfs"), "subvolume", "create", str(mnt / "pg")], timeout=60)
        else:
            (mnt / "pg").mkdir()
        yield mnt / "pg"


# -- measuring -------------------------------------------------------------------------


@dataclass(frozen=True)
class During:
    """The writer's commits that overlapped a set of time windows."""

    windows: int
    seconds: float
    commits: int
    max_latency_ms: float
    longest_gap_ms: float

    def cell(self) -> str:
        rate = self.commits / self.seconds if self.seconds else 0.0
        return f"{self.max_latency_ms:.0f} / {self.longest_gap_ms:.0f} ({rate:.0f}/s)"


@dataclass
class Row:
    """What one setup measured."""

    setup: Setup
    method: str
    frozen: list[float]
    checkpoint: list[float]
    ours: During
    raw: During
    raw_tool: str
    base_p50: float
    base_p99: float
    base_max: float
    base_gap: float
    base_rate: float


def commits(path: Path) -> list[tuple[float, float]]:
    """(start, latency) of each commit the writer logged."""
    out = []
    for line in path.read_text().splitlines():
        start, latency = line.split()
        out.append((float(start), float(latency)))
    return out


def _overlaps(s: float, e: float, spans: list[tuple[float, float]]) -> bool:
    return any(s < hi and e > lo for lo, hi in spans)


def during(log: list[tuple[float, float]], windows: list[tuple[float, float]]) -> During:
    """Commits that overlapped ``windows``: the longest latency, and the longest time inside
    a window with no commit finishing (a stall shows as both)."""
    ends = [s + lat for s, lat in log]
    inside = [(s, lat) for s, lat in log if _overlaps(s, s + lat, windows)]
    gaps = []
    for lo, hi in windows:
        marks = [lo, *(e for e in ends if lo < e < hi), hi]
        gaps.append(max(b - a for a, b in itertools.pairwise(marks)))
    return During(
        windows=len(windows),
        seconds=sum(hi - lo for lo, hi in windows),
        commits=len(inside),
        max_latency_ms=max((lat for _, lat in inside), default=0.0) * 1000,
        longest_gap_ms=max(gaps, default=0.0) * 1000,
    )


def raw_snapshot(setup: Setup, data: Path, scratch: Path) -> tuple[float, float]:
    """The raw tool taking the same snapshot alone; its (start, end), wall clock."""
    if setup.backend == "btrfs":
        btrfs = find_tool("btrfs")
        started = time.time()
        run_tool([btrfs, "subvolume", "snapshot", "-r", str(data.parent), str(scratch)])
        ended = time.time()
        run_tool([btrfs, "subvolume", "delete", str(scratch)], timeout=120)
        return started, ended
    mode = "always" if setup.fstype == "xfs" else "never"
    started = time.time()
    run_tool(["cp", "-a", f"--reflink={mode}", str(data), str(scratch)], timeout=600)
    ended = time.time()
    run_tool(["rm", "-rf", str(scratch)], timeout=600)
    return started, ended


def bench(setup: Setup, base: Path, runs: int) -> Row:
    """Backups and raw snapshots, in turn, under the writer; the measurements."""
    from freezeframe_testing.postgres_server import PostgresFactory, create_bank

    factory = PostgresFactory()
    with ExitStack() as stack:
        folder = stack.enter_context(place(setup.fstype, base))
        # the servers stop first: unmounted below them, pg_ctl no longer finds their pid file
        stack.callback(factory.cleanup)
        server = factory.new(data_dir=folder / "data")
        create_bank(server)
        server.sql(
            "CREATE TABLE filler AS SELECT g AS id, repeat('x', 200) AS pad"
            f" FROM generate_series(1, {FILLER_ROWS}) g"
        )
        server.sql("CHECKPOINT")
        snaps = folder.parent / "snaps"  # on the data's filesystem: reflinks, snapshots
        profile_path = base / f"{setup.fstype}.toml"
        profile_path.write_text(
            textwrap.dedent(f"""
                [profile]
                name = "pg-stall-{setup.fstype}"
                freeze_timeout = "120s"
                max_copy_in_window = "1TiB"  # measure the plain copy check would refuse
                state_dir = "{base / "state"}"

                [[application]]
                plugin = "postgresql"
                name = "bench"
                dsn = "{server.dsn()}"

                [[backup]]
                backend = "{setup.backend}"
                name = "snap"
                dir = "{snaps}"
            """)
        )
        registry = build_registry()
        profile = load_profile(profile_path, registry)
        engine = Engine(profile, registry)
        out = base / f"{setup.fstype}-commits.txt"
        ours, raw, spans = [], [], []
        frozen, checkpoint, method = [], [], "?"
        with writer(server.dsn(), out):
            time.sleep(2.0)  # a quiet stretch for the baseline
            for _ in range(runs):
                record = engine.backup().record
                if record.status != RunStatus.SUCCEEDED:
                    raise SystemExit(f"{setup.label}: run failed: {record.error}")
                app = record.applications[0]
                assert app.quiesce_start is not None and app.thaw_end is not None
                ours.append((app.quiesce_start, app.thaw_end))
                spans.append((record.started_at, record.finished_at or time.time()))
                frozen.append(app.frozen_ms or 0.0)
                checkpoint.append(float(app.facts.get("checkpoint_ms") or 0.0))
                method = str(app.facts.get("method"))
                st = record.stage("snap")
                assert st is not None and st.artifact is not None
                profile.stage("snap").component.delete(st.artifact)
                time.sleep(1.0)
                window = raw_snapshot(setup, server.data_dir, snaps.parent / "raw-copy")
                raw.append(window)
                spans.append(window)
                time.sleep(1.0)
        log = commits(out)
    quiet = [(s, lat) for s, lat in log if not _overlaps(s, s + lat, spans)]
    ends = [s + lat for s, lat in log]
    quiet_gaps = [b - a for a, b in itertools.pairwise(ends) if not _overlaps(a, b, spans)]
    lat = sorted(x for _, x in quiet)
    quiet_seconds = (log[-1][0] - log[0][0]) - sum(hi - lo for lo, hi in spans)
    tool = (
        "btrfs subvolume snapshot -r"
        if setup.backend == "btrfs"
        else f"cp -a --reflink={'always' if setup.fstype == 'xfs' else 'never'}"
    )
    return Row(
        setup=setup,
        method=method,
        frozen=frozen,
        checkpoint=checkpoint,
        ours=during(log, ours),
        raw=during(log, raw),
        raw_tool=tool,
        base_p50=lat[len(lat) // 2] * 1000,
        base_p99=lat[int(len(lat) * 0.99)] * 1000,
        base_max=lat[-1] * 1000,
        base_gap=max(quiet_gaps) * 1000,
        base_rate=len(quiet) / quiet_seconds,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="backups per setup (default 5)")
    parser.add_argument("--writer", nargs=2, metavar=("DSN", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.writer:
        writer_main(*args.writer)
        return 0
    if os.geteuid() != 0:
        print("postgres_write_stall.py needs root (loop devices, mounts)", file=sys.stderr)
        return 2
    try:
        for tool in ("losetup", "mount", "umount", "btrfs", "mkfs.btrfs", "mkfs.xfs", "runuser"):
            find_tool(tool)
    except ToolError as e:
        print(f"postgres_write_stall.py: {e}", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="ff-bench-pg-", dir="/tmp") as tmp:
        base = Path(tmp)
        base.chmod(0o755)  # the postgres user must reach the clusters below it
        for setup in SETUPS:
            print(f"{setup.label}: {args.runs} backups under a writer ...", flush=True)
            rows.append(bench(setup, base, args.runs))

    print()
    print(
        f"PostgreSQL, ~100 MB, one writer committing without pause (fsync on), {args.runs} "
        "backups per setup, each followed by the raw tool taking the same snapshot alone. "
        "ms. window: quiesce start to thaw end (median); checkpoint: prepare's, before the "
        "window (median); 'max latency / longest gap (commits/s)': of the commits that "
        "overlapped freezeframe's windows, of those that overlapped the raw tool's runs, "
        "and (baseline) of those while neither ran"
    )
    table = [
        (
            "setup",
            "method",
            "window",
            "checkpoint",
            "in freezeframe's windows",
            "in the raw tool's runs",
            "baseline",
            "baseline p50/p99",
            "raw tool",
        )
    ]
    for r in rows:
        table.append(
            (
                r.setup.label,
                r.method,
                f"{statistics.median(r.frozen):.0f}",
                f"{statistics.median(r.checkpoint):.0f}",
                r.ours.cell(),
                r.raw.cell(),
                f"{r.base_max:.0f} / {r.base_gap:.0f} ({r.base_rate:.0f}/s)",
                f"{r.base_p50:.1f}/{r.base_p99:.1f}",
                r.raw_tool,
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
