"""Benchmark (not a test): how long the redis plug-in blocks writes, by persistence and data size.

For each setup a private redis-server is started (``redis-server`` from PATH,
default config but the persistence named), filled with ``DEBUG POPULATE``
(keys of 100-byte values), and backed up several times through the real
engine with one snapshot stage: ``btrfs`` (the data on a subvolume of a loop
filesystem made here; needs root and btrfs-progs) or, without those,
``clone`` in a temporary folder. Meanwhile a separate process writes
(``INCR``) in a loop and records the longest any one write waited.

Printed per setup, as the median (and max) over the runs, in ms:

- ``window``: the freeze window the run records (quiesce start to thaw end);
- ``quiesce``: ``CLIENT PAUSE`` until the files are complete (for RDB the
  ``BGSAVE``, for AOF the buffer check and the fsyncs);
- ``snapshot``: the snapshot stage;
- ``complete``: the completion after the thaw (the ``logical`` capture: the
  wait for the dump of the fork and its copy into the view);
- ``raw BGSAVE``: a ``BGSAVE`` alone, without freezeframe, from the command to
  ``rdb_bgsave_in_progress:0`` (what the RDB quiesce cannot beat);
- ``bare snapshot``: with btrfs, ``btrfs subvolume snapshot -r`` of the same
  subvolume alone, without freezeframe, after each run (same filesystem, same
  data, the writer still writing), after a ``syncfs`` as a run's prepare does;
- ``window / bare``: the median window over the median bare snapshot (issue
  12's target: at most 2 with 1,000,000 keys);
- ``write wait``: the longest a client's write waited during the backup (what
  the application feels).

Redis notices that a save finished in its cron, every ``1/hz`` s (100 ms at
the default ``hz 10``); the ``hz 100`` row shows what that costs.
Usage: ``python bench/redis_freeze.py [--runs N] [--keys 10000,100000,1000000]
[--clone] [--capture logical|snapshot]`` (``--clone``: a clone stage even where btrfs
could be used; ``--capture``: that mode, else the plug-in's default for the stage).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "testing"))

from _btrfs import bare_snapshot  # noqa: E402 (bench/, this script's folder)
from _loop import loop_filesystem  # noqa: E402

from freezeframe import RunStatus  # noqa: E402
from freezeframe.engine import Engine  # noqa: E402
from freezeframe.profile import load_profile  # noqa: E402
from freezeframe.registry import build_registry  # noqa: E402
from freezeframe.tools import ToolError, find_tool, run_tool  # noqa: E402
from freezeframe_testing.redis_server import RedisServer, start_redis  # noqa: E402

VALUE_BYTES = 100
IMAGE_BYTES = 4 << 30  # sparse


@dataclass(frozen=True)
class Setup:
    """One line of the table."""

    persistence: str
    keys: int
    hz: int = 10

    @property
    def label(self) -> str:
        hz = f", hz {self.hz}" if self.hz != 10 else ""
        return f"{self.persistence}, {self.keys:,} keys{hz}"


def _probe(socket_path: str, worst: Any, ready: Any, stop: Any) -> None:
    """The writer process: INCR in a loop; ``worst`` is the longest wait (ms) since reset."""
    import redis

    client = redis.Redis(unix_socket_path=socket_path, socket_timeout=600)
    client.incr("probe")
    ready.set()
    while not stop.is_set():
        t0 = time.perf_counter()
        client.incr("probe")
        waited = (time.perf_counter() - t0) * 1000
        if waited > worst.value:
            worst.value = waited


@contextmanager
def probe(server: RedisServer) -> Iterator[Any]:
    """A writer process measuring its longest write; yields the shared value (reset it to 0)."""
    ctx = multiprocessing.get_context("spawn")
    worst, ready, stop = ctx.Value("d", 0.0), ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_probe, args=(str(server.socket), worst, ready, stop), daemon=True)
    proc.start()
    if not ready.wait(60):
        proc.kill()
        raise SystemExit("the write probe did not start")
    try:
        yield worst
    finally:
        stop.set()
        proc.join(30)
        if proc.is_alive():
            proc.kill()


@contextmanager
def btrfs_data(base: Path) -> Iterator[tuple[Path, Path] | None]:
    """(data folder on a btrfs subvolume, snapshot dir) on a loop filesystem, or None."""
    try:
        btrfs = find_tool("btrfs")
        find_tool("mkfs.btrfs")
        find_tool("losetup")
    except ToolError:
        yield None
        return
    if os.geteuid() != 0:
        yield None
        return
    with loop_filesystem("btrfs", base / "btrfs", IMAGE_BYTES) as mnt:
        run_tool([btrfs, "subvolume", "create", str(mnt / "redis")], timeout=60)
        yield mnt / "redis", mnt / "snaps"


def fill(server: RedisServer, keys: int) -> None:
    """``keys`` keys of VALUE_BYTES, written to disk the way the setup persists."""
    c = server.client(socket_timeout=600)
    c.execute_command("DEBUG", "POPULATE", keys, "key", VALUE_BYTES)
    # DEBUG POPULATE is not propagated to the AOF: a rewrite puts the data there.
    c.execute_command("BGREWRITEAOF" if server.persistence == "aof" else "BGSAVE")
    while any(
        c.info("persistence")[k] for k in ("rdb_bgsave_in_progress", "aof_rewrite_in_progress")
    ):
        time.sleep(0.01)


def raw_bgsave(server: RedisServer) -> float:
    """ms from BGSAVE to rdb_bgsave_in_progress:0, polled every ms."""
    c = server.client(socket_timeout=600)
    t0 = time.perf_counter()
    c.bgsave()
    while c.info("persistence")["rdb_bgsave_in_progress"]:
        time.sleep(0.001)
    return (time.perf_counter() - t0) * 1000


@dataclass
class Row:
    setup: Setup
    snapshot: str
    window: list[float]
    quiesce: list[float]
    stage: list[float]
    complete: list[float]
    raw: list[float]
    wait: list[float]
    data_mb: float
    bare: list[float]

    def ratio(self) -> str:
        """The median window over the median bare snapshot."""
        if not self.bare:
            return "—"
        return f"{statistics.median(self.window) / statistics.median(self.bare):.1f}"


def bench(
    setup: Setup, base: Path, runs: int, snap: tuple[Path, Path] | None, capture: str | None
) -> Row:
    """Back the server of ``setup`` up ``runs`` times; the measurements."""
    name = f"{setup.persistence}-{setup.keys}-{setup.hz}"
    if snap is not None:
        data, snaps, backend = snap[0] / name, snap[1] / name, "btrfs"
    else:
        data, snaps, backend = base / name, base / f"snaps-{name}", "clone"
    server = start_redis(
        data,
        persistence=setup.persistence,
        config=["enable-debug-command local", f"hz {setup.hz}", 'save ""']
        if setup.persistence == "aof"
        else ["enable-debug-command local", f"hz {setup.hz}"],
    )
    try:
        fill(server, setup.keys)
        data_mb = sum(p.stat().st_size for p in data.rglob("*") if p.is_file()) / 1e6
        profile = base / f"{name}.toml"
        profile.write_text(
            textwrap.dedent(f"""
                [profile]
                name = "bench-{name}"
                freeze_timeout = "300s"
                state_dir = "{base / "state"}"

                [[application]]
                plugin = "redis"
                name = "redis"
                url = "{server.unix_url}"
                {f'capture = "{capture}"' if capture else ""}

                [[backup]]
                backend = "{backend}"
                name = "snap"
                dir = "{snaps}"
                keep = {{ last = 1 }}
            """)
        )
        registry = build_registry()
        engine = Engine(load_profile(profile, registry), registry)
        row = Row(setup, backend, [], [], [], [], [], [], data_mb, [])
        with probe(server) as worst:
            for _ in range(runs):
                worst.value = 0.0
                record = engine.backup().record
                if record.status != RunStatus.SUCCEEDED:
                    raise SystemExit(f"{setup.label}: run failed: {record.error}")
                time.sleep(0.05)  # the last blocked write returns and is counted
                app = record.applications[0]
                st = record.stage("snap")
                assert st is not None and st.started_at and st.finished_at
                assert app.quiesce_start and app.quiesce_end and app.frozen_ms is not None
                row.window.append(app.frozen_ms)
                row.quiesce.append((app.quiesce_end - app.quiesce_start) * 1000)
                row.stage.append((st.finished_at - st.started_at) * 1000)
                row.snapshot = f"{backend}, {app.capture}"
                if app.complete_start and app.complete_end:
                    row.complete.append((app.complete_end - app.complete_start) * 1000)
                row.wait.append(worst.value)
                if setup.persistence == "rdb":
                    row.raw.append(raw_bgsave(server))
                if snap is not None:
                    row.bare.append(bare_snapshot(snap[0], snap[0].parent / "bare-snapshot"))
        return row
    finally:
        server.stop()


def fmt(values: list[float]) -> str:
    if not values:
        return "—"
    return f"{statistics.median(values):,.0f} ({max(values):,.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--keys", default="10000,100000,1000000")
    parser.add_argument("--clone", action="store_true", help="a clone stage, even on btrfs")
    parser.add_argument("--capture", choices=("logical", "snapshot"), default=None)
    args = parser.parse_args()
    sizes = [int(k) for k in args.keys.split(",")]
    try:
        find_tool("redis-server")
    except ToolError as e:
        raise SystemExit(f"redis-server is needed: {e}") from None
    setups = [Setup(p, k) for p in ("rdb", "aof") for k in sizes]
    setups.insert(1, Setup("rdb", sizes[0], hz=100))
    rows = []
    with ExitStack() as stack:
        base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ffredis-bench-")))
        snap = None if args.clone else stack.enter_context(btrfs_data(base))
        for setup in setups:
            print(f"{setup.label} ...", file=sys.stderr, flush=True)
            rows.append(bench(setup, base, args.runs, snap, args.capture))
    print(
        f"median (max) of {args.runs} runs, ms; values {VALUE_BYTES} B; redis-server "
        f"{run_tool([find_tool('redis-server'), '--version'], timeout=30).stdout.split()[2]}"
    )
    header = ("setup", "data", "snapshot", "window", "quiesce", "snapshot stage", "complete",
              "raw BGSAVE", "write wait", "bare snapshot", "window / bare")  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        cells = (r.setup.label, f"{r.data_mb:,.1f} MB", r.snapshot, fmt(r.window),
                 fmt(r.quiesce), fmt(r.stage), fmt(r.complete), fmt(r.raw),
                 fmt(r.wait), fmt(r.bare), r.ratio())  # fmt: skip
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
