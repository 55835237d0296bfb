"""The archive backend's throughput against ``tar -cf - | zstd -T0 -3`` on the same data.

For each shape of data (compressible text, random bytes, many 16 KiB files,
and a third of each), builds a view in a temp folder, then times,
alternately, the archive backend's run() (level 3, all cores) and the raw
pipeline writing to the same disk. Prints MiB/s for each and the ratio.
Issue 5 asks for the backend to stay within 15% of the raw tools; this says
whether it does on this machine, for each shape.

    python bench/archive_throughput.py [--mib 256] [--runs 5] [--shape small ...]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from freezeframe import Artifact, StageContext, Table
from freezeframe_archive import ArchiveBackend

SHAPES = ("text", "random", "small", "mixed")


def _text(path: Path, size: int) -> None:
    rng = random.Random(7)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(8)) for _ in range(500)]
    with open(path, "wb") as f:
        while f.tell() < size:
            f.write(b" ".join(rng.choice(words) for _ in range(2000)) + b"\n")


def _random(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))


def _small(folder: Path, size: int) -> None:
    folder.mkdir()
    for i in range(size // 16384):
        (folder / f"{i:06d}.json").write_bytes(b'{"k": %d, "v": "%s"}' % (i, b"x" * 16000))


def make_view(root: Path, mib: int, shape: str) -> int:
    """Files of ``shape`` under root/srv/data, ``mib`` MiB in all; returns their size."""
    data = root / "srv" / "data"
    data.mkdir(parents=True)
    size = mib << 20
    if shape == "mixed":
        _text(data / "log.txt", size // 3)
        _random(data / "blob.bin", size // 3)
        _small(data / "small", size // 3)
    elif shape == "text":
        _text(data / "log.txt", size)
    elif shape == "random":
        _random(data / "blob.bin", size)
    else:
        _small(data / "small", size)
    return sum(p.stat().st_size for p in data.rglob("*") if p.is_file())


def run_backend(view: Path, out: Path) -> float:
    backend = ArchiveBackend("archive", Table({"dir": str(out)}, base_dir=out))
    backend.check()
    source = Artifact("view", view=view, metadata={"paths": ["/srv/data"]})
    ctx = StageContext(f"r{time.monotonic_ns()}", "bench", "archive", (), source=source)
    started = time.perf_counter()
    artifact = backend.run(ctx)
    took = time.perf_counter() - started
    backend.delete(artifact)
    return took


def run_raw(view: Path, out: Path) -> float:
    target = out / "raw.tar.zst"
    started = time.perf_counter()
    with open(target, "wb") as f:
        tar = subprocess.Popen(
            ["tar", "-cf", "-", "-C", str(view), "srv/data"], stdout=subprocess.PIPE
        )
        zstd = subprocess.run(
            ["zstd", "-T0", "-3", "-q", "-c"], stdin=tar.stdout, stdout=f, check=True
        )
        assert tar.stdout is not None
        tar.stdout.close()
        assert tar.wait() == 0 and zstd.returncode == 0
        os.fsync(f.fileno())  # the backend fsyncs too
    took = time.perf_counter() - started
    target.unlink()
    return took


def measure(work: Path, mib: int, runs: int, shape: str) -> float:
    """Print one shape's medians; return the backend's time over the raw tools'."""
    view, out = work / "view", work / "out"
    out.mkdir()
    size = make_view(view, mib, shape)
    times: dict[str, list[float]] = {"archive backend": [], "tar | zstd -T0 -3": []}
    run_backend(view, out)  # warm the page cache for both
    for _ in range(runs):
        times["archive backend"].append(run_backend(view, out))
        times["tar | zstd -T0 -3"].append(run_raw(view, out))
    entries = sum(1 for _ in view.rglob("*"))
    shutil.rmtree(view)
    shutil.rmtree(out)
    ratio = report(f"{shape}: {{:.0f}} MiB in {entries} entries", size, times)
    verdict = "within" if ratio <= 1.15 else "NOT within"
    print(f"  backend time / raw time = {ratio:.2f} ({verdict} the 15% goal)")
    return ratio


def report(title: str, size: int, times: dict[str, list[float]]) -> float:
    """Print ``title`` (its ``{}`` the MiB done) and each command's median time and speed;
    return the first command's median time over the second's."""
    mib_done = size / (1 << 20)
    print(title.format(mib_done))
    medians = [statistics.median(v) for v in times.values()]
    for name, t in zip(times, medians, strict=True):
        print(f"  {name:<20} {t:7.2f} s  {mib_done / t:7.1f} MiB/s")
    return medians[0] / medians[1]


def each_shape(doc: str, measure: Callable[[Path, int, int, str], float], prefix: str) -> None:
    """Parse ``--mib --runs --shape``, then ``measure(work, mib, runs, shape)`` each shape
    in a fresh temporary folder below one that is removed at the end."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--shape", choices=SHAPES, action="append", help="default: every shape")
    args = ap.parse_args()
    for tool in ("tar", "zstd"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    print(f"{os.cpu_count()} CPUs, median of {args.runs} runs each")
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        for shape in args.shape or SHAPES:
            measure(work, args.mib, args.runs, shape)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    each_shape(__doc__, measure, "ff-bench-archive-")


if __name__ == "__main__":
    main()
