"""What several benchmarks share: a fresh filesystem on a loop device (not a benchmark itself:
``run.py`` skips modules whose name starts with ``_``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from freezeframe.tools import find_tool, run_tool

__all__ = ["loop_filesystem"]

#: mkfs quiet (and, for ext4, not asking whether a plain file is meant)
MKFS_ARGS = {"btrfs": ["-q"], "xfs": ["-q"], "ext4": ["-q", "-F"]}


@contextmanager
def loop_filesystem(fstype: str, folder: Path, size: int) -> Iterator[Path]:
    """A new ``fstype`` of ``size`` bytes (a sparse image in ``folder``) on a loop device,
    mounted at ``folder/mnt`` (mode 0755: a server's own user may go through it); unmounted,
    detached and deleted afterwards, also after a failure. Needs root."""
    folder.mkdir(parents=True, exist_ok=True)
    image, mnt = folder / f"{fstype}.img", folder / "mnt"
    with open(image, "wb") as f:
        f.truncate(size)
    try:
        run_tool([find_tool(f"mkfs.{fstype}"), *MKFS_ARGS.get(fstype, []), str(image)], timeout=120)
        device = run_tool(["losetup", "--find", "--show", str(image)], timeout=60).stdout.strip()
        try:
            mnt.mkdir(exist_ok=True)  # empty again after a use before
            run_tool(["mount", device, str(mnt)], timeout=60)
            try:
                mnt.chmod(0o755)
                yield mnt
            finally:
                if run_tool(["umount", str(mnt)], timeout=120, check=False).returncode:
                    run_tool(["umount", "--lazy", str(mnt)], timeout=60, check=False)
        finally:
            run_tool(["losetup", "--detach", device], timeout=60, check=False)
    finally:
        image.unlink(missing_ok=True)
