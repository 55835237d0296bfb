"""The archive backend's restore against ``zstd -dc | tar -xf -`` on the same archive.

For each shape of data (as in archive_throughput.py), archives a view once
with the backend, then times, alternately, the backend's restore() into a
new empty folder and the raw pipeline extracting the same .tar.zst into
another. Prints MiB/s for each and the ratio (backend time / raw time). The
restore checks the archive's checksum and creates every entry relative to an
open directory, which the raw pipeline does not: the ratio is their cost.

    python bench/archive_restore.py [--mib 256] [--runs 5] [--shape small ...]
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from archive_throughput import each_shape, make_view, report

from freezeframe import Artifact, StageContext, Table
from freezeframe_archive import ArchiveBackend


def _fresh(out: Path) -> Path:
    target = out / f"t{time.monotonic_ns()}"
    target.mkdir()
    return target


def restore_backend(backend: ArchiveBackend, artifact: Artifact, out: Path) -> float:
    target = _fresh(out)
    started = time.perf_counter()
    backend.restore(artifact, target)
    took = time.perf_counter() - started
    shutil.rmtree(target)
    return took


def restore_raw(archive: Path, out: Path) -> float:
    target = _fresh(out)
    started = time.perf_counter()
    zstd = subprocess.Popen(["zstd", "-dc", "-q", str(archive)], stdout=subprocess.PIPE)
    tar = subprocess.run(["tar", "-xf", "-", "-C", str(target)], stdin=zstd.stdout, check=True)
    assert zstd.stdout is not None
    zstd.stdout.close()
    assert zstd.wait() == 0 and tar.returncode == 0
    took = time.perf_counter() - started
    shutil.rmtree(target)
    return took


def measure(work: Path, mib: int, runs: int, shape: str) -> float:
    """Print one shape's medians; return the backend's time over the raw tools'."""
    view, store, out = work / "view", work / "store", work / "out"
    store.mkdir()
    out.mkdir()
    size = make_view(view, mib, shape)
    backend = ArchiveBackend("archive", Table({"dir": str(store)}, base_dir=store))
    backend.check()
    source = Artifact("view", view=view, metadata={"paths": ["/srv/data"]})
    artifact = backend.run(StageContext("r1", "bench", "archive", (), source=source))
    shutil.rmtree(view)
    archive = next(store.rglob("*.tar.zst"))
    times: dict[str, list[float]] = {"archive restore": [], "zstd -dc | tar -x": []}
    restore_backend(backend, artifact, out)  # warm the page cache for both
    for _ in range(runs):
        times["archive restore"].append(restore_backend(backend, artifact, out))
        times["zstd -dc | tar -x"].append(restore_raw(archive, out))
    shutil.rmtree(store)
    shutil.rmtree(out)
    ratio = report(f"{shape}: {{:.0f}} MiB", size, times)
    print(f"  restore time / raw time = {ratio:.2f}")
    return ratio


def main() -> None:
    each_shape(__doc__, measure, "ff-bench-restore-")


if __name__ == "__main__":
    main()
