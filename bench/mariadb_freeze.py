"""Benchmark (not a test): how long the mariadb plug-in blocks commits, with btrfs snapshots.

A btrfs filesystem is made on a loop device, a private MariaDB server (the
system's ``mariadbd``, binary log on, ``innodb_flush_log_at_trx_commit=1``)
is started on a subvolume of it with a table of ``--rows`` rows, and a
profile with that one application and one btrfs snapshot stage is backed up
``--runs`` times through the real engine, first with the server idle, then
while ``--writers`` threads commit small transactions back to back.

Printed per scenario, median (min-max) in ms:

- ``frozen``: quiesce start to thaw end (the run record's ``frozen_ms``);
- ``quiesce``: connect + ``BACKUP STAGE START`` + ``BLOCK_COMMIT`` + reading
  the binlog position;
- ``snapshot``: the btrfs stage;
- ``stall``: under load, the longest commit that overlapped the window, as
  the writers saw it (what a client of the database notices);
- ``commit``: under load, the median commit outside the windows, for contrast;
- ``raw``: ``btrfs subvolume snapshot -r`` alone, after the same ``syncfs``.

Needs root (loop devices, mounts), btrfs-progs and MariaDB's server binaries.
Everything is stopped, unmounted and detached at the end, also after a
failure. Usage: ``python bench/mariadb_freeze.py [--runs N] [--rows N] [--writers N]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from freezeframe import RunStatus
from freezeframe.engine import Engine
from freezeframe.profile import load_profile
from freezeframe.registry import build_registry
from freezeframe.tools import ToolError, find_tool, run_tool

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "testing"))
from _btrfs import bare_snapshot  # bench/, this script's folder
from _loop import loop_filesystem

from freezeframe_testing.mariadb_server import MariaDB, start_mariadb

TOOLS = ("losetup", "mount", "umount", "btrfs", "mkfs.btrfs", "mariadbd", "mariadb-install-db")
IMAGE_BYTES = 4 << 30
#: Closer to a production server than the test suite's tiny one.
SERVER_ARGS = ("--innodb-buffer-pool-size=256M", "--innodb-log-file-size=96M")
PASSWORD_ENV = "FF_BENCH_MARIADB_PASSWORD"  # noqa: S105 (the name of a variable)


@contextmanager
def server_on(datadir: Path, run_dir: Path) -> Iterator[MariaDB]:
    """A private server on a new datadir, stopped afterwards."""
    argv = [
        find_tool("mariadb-install-db"),
        "--no-defaults",
        "--user=root",
        f"--datadir={datadir}",
        "--auth-root-authentication-method=normal",
        "--skip-test-db",
        *SERVER_ARGS,
    ]
    run_tool(argv, timeout=300)
    server = start_mariadb(datadir, run_dir, args=SERVER_ARGS)
    try:
        yield server
    finally:
        server.stop()


class Writers:
    """Threads that commit one-row updates back to back, timing every commit."""

    def __init__(self, server: MariaDB, count: int, rows: int) -> None:
        self.server, self.rows = server, rows
        self.stop = threading.Event()
        self.commits: list[tuple[float, float]] = []  # (start, end), time.time()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.work, args=(i,)) for i in range(count)]

    def work(self, i: int) -> None:
        conn = self.server.connect(autocommit=False)
        n = i
        with conn.cursor() as cur:
            while not self.stop.is_set():
                n = (n * 7919 + 1) % self.rows + 1
                cur.execute("UPDATE bench.t SET v = v + 1 WHERE id = %s", (n,))
                t0 = time.time()
                conn.commit()
                t1 = time.time()
                with self.lock:
                    self.commits.append((t0, t1))

    def __enter__(self) -> Writers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


@dataclass
class Row:
    """What one scenario measured (ms)."""

    label: str
    frozen: list[float] = field(default_factory=list)
    quiesce: list[float] = field(default_factory=list)
    snapshot: list[float] = field(default_factory=list)
    raw: list[float] = field(default_factory=list)
    stall: list[float] = field(default_factory=list)
    commit: list[float] = field(default_factory=list)


def backups(engine: Engine, row: Row, runs: int, writers: Writers | None, mnt: Path) -> None:
    """``runs`` backups into ``row``; each snapshot deleted after its run."""
    windows = []
    for _ in range(runs):
        record = engine.backup().record
        if record.status != RunStatus.SUCCEEDED:
            raise SystemExit(f"{row.label}: run failed: {record.error}")
        app, st = record.applications[0], record.stage("snap")
        assert st is not None and st.artifact is not None and st.started_at and st.finished_at
        assert app.quiesce_start and app.quiesce_end and app.thaw_end
        row.frozen.append(app.frozen_ms or 0.0)
        row.quiesce.append((app.quiesce_end - app.quiesce_start) * 1000)
        row.snapshot.append((st.finished_at - st.started_at) * 1000)
        windows.append((app.quiesce_start, app.thaw_end))
        engine.profile.stage("snap").component.delete(st.artifact)
        row.raw.append(bare_snapshot(mnt / "db", mnt / "raw"))
        time.sleep(0.2)  # let the writers run between windows
    if writers is None:
        return
    with writers.lock:
        commits = list(writers.commits)
    for start, end in windows:
        hit = [(t1 - t0) * 1000 for t0, t1 in commits if t0 <= end and t1 >= start]
        row.stall.append(max(hit, default=0.0))
    row.commit = [
        (t1 - t0) * 1000
        for t0, t1 in commits
        if not any(t0 <= end and t1 >= start for start, end in windows)
    ]


def cell(values: list[float]) -> str:
    """``median (min-max)``, or a dash."""
    if not values:
        return "-"
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="backups per scenario (default 15)")
    parser.add_argument("--rows", type=int, default=200_000, help="rows of 200 bytes (200000)")
    parser.add_argument("--writers", type=int, default=4, help="committing threads (default 4)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("mariadb_freeze.py needs root (loop devices and mounts)", file=sys.stderr)
        return 2
    try:
        for tool in TOOLS:
            find_tool(tool)
    except ToolError as e:
        print(f"mariadb_freeze.py: {e}", file=sys.stderr)
        return 2
    os.environ[PASSWORD_ENV] = "bench-password"
    rows: list[Row] = []
    with ExitStack() as stack:
        base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ff-bench-mdb-")))
        os.chmod(base, 0o700)
        mnt = stack.enter_context(loop_filesystem("btrfs", base / "btrfs", IMAGE_BYTES))
        run_tool([find_tool("btrfs"), "subvolume", "create", str(mnt / "db")], timeout=60)
        server = stack.enter_context(server_on(mnt / "db" / "data", base / "run"))
        print(f"filling bench.t with {args.rows} rows ...", flush=True)
        server.sql(
            f"CREATE USER backup@'%' IDENTIFIED BY '{os.environ[PASSWORD_ENV]}'",
            "GRANT RELOAD, BINLOG MONITOR ON *.* TO backup@'%'",
            "CREATE DATABASE bench",
            "CREATE TABLE bench.t (id INT PRIMARY KEY, v INT NOT NULL, pad CHAR(200) NOT NULL)",
            f"INSERT INTO bench.t SELECT seq, 0, REPEAT('x', 200) FROM bench.seq_1_to_{args.rows}",
        )
        profile_path = base / "bench.toml"
        profile_path.write_text(
            textwrap.dedent(f"""
                [profile]
                name = "bench-mariadb"
                freeze_timeout = "60s"
                state_dir = "{base / "state"}"

                [[application]]
                plugin = "mariadb"
                name = "db"
                unix_socket = "{server.socket}"
                user = "backup"
                password_env = "{PASSWORD_ENV}"

                [[backup]]
                backend = "btrfs"
                name = "snap"
                dir = "{mnt / "snaps"}"
            """)
        )
        registry = build_registry()
        engine = Engine(load_profile(profile_path, registry), registry)
        size = sum(p.stat().st_size for p in (mnt / "db" / "data").rglob("*") if p.is_file())
        print(f"idle server: {args.runs} backups ...", flush=True)
        idle = Row("idle")
        backups(engine, idle, args.runs, None, mnt)
        rows.append(idle)
        print(f"{args.writers} writers committing: {args.runs} backups ...", flush=True)
        busy = Row(f"{args.writers} writers")
        with Writers(server, args.writers, args.rows) as writers:
            time.sleep(1.0)
            backups(engine, busy, args.runs, writers, mnt)
        rows.append(busy)
        version = server.sql("SELECT VERSION()")[0][0]

    print()
    print(
        f"MariaDB {version}, datadir {size / (1 << 20):.0f} MiB on btrfs (loop device); "
        f"ms, median (min-max) of {args.runs} runs"
    )
    table = [("scenario", "frozen", "quiesce", "snapshot", "stall", "commit", "raw snapshot")]
    for r in rows:
        table.append(
            (
                r.label,
                cell(r.frozen),
                cell(r.quiesce),
                cell(r.snapshot),
                cell(r.stall),
                cell(r.commit),
                cell(r.raw),
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
