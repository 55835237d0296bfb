"""A demo application that honours the flag file: ``python -m freezeframe_example.writer DIR``.

It appends line ``n`` to ``DIR/journal.txt`` and then writes ``n`` to
``DIR/count.txt``, n = 1, 2, ... Between the two writes the files disagree;
while it is paused they agree, so a backup taken while it was quiesced holds
``count == number of journal lines``. It checks the flag before each step
and acknowledges only between two steps.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from freezeframe_example import ACK, FLAG, flag_time


def paused(folder: Path) -> bool:
    """Whether the flag is there and holds a time still to come."""
    try:
        return flag_time((folder / FLAG).read_text()) > time.time()
    except FileNotFoundError:
        return False


def lines(folder: Path) -> int:
    """How many journal lines the application has written."""
    try:
        return len((folder / "journal.txt").read_text().splitlines())
    except FileNotFoundError:
        return 0


def writes_on(folder: Path, seconds: float = 0.5) -> bool:
    """Whether the application writes within ``seconds`` (it is not paused)."""
    before, end = lines(folder), time.monotonic() + seconds
    while time.monotonic() < end:
        if lines(folder) > before:
            return True
        time.sleep(0.01)
    return False


def consistent(folder: Path) -> bool:
    """Whether ``count.txt`` holds the number of journal lines (true of any paused copy)."""
    lines = (folder / "journal.txt").read_text().splitlines()
    return int((folder / "count.txt").read_text() or 0) == len(lines)


def run(folder: Path) -> None:
    """Write for ever, pausing while flagged."""
    journal = folder / "journal.txt"
    count = folder / "count.txt"
    n = len(journal.read_text().splitlines()) if journal.exists() else 0
    count.write_text(str(n))
    while True:
        if paused(folder):
            ack = folder / ACK
            ack.write_text("")
            while paused(folder):
                time.sleep(0.002)
            ack.unlink(missing_ok=True)
        n += 1
        with open(journal, "a") as f:
            f.write(f"{n}\n")
            f.flush()
            os.fsync(f.fileno())
        tmp = folder / "count.tmp"
        tmp.write_text(str(n))
        tmp.replace(count)
        time.sleep(0.002)


def start(folder: Path) -> subprocess.Popen[bytes]:
    """The writer as a process of its own, writing into ``folder``; the caller stops it."""
    return subprocess.Popen([sys.executable, "-m", "freezeframe_example.writer", str(folder)])


if __name__ == "__main__":
    run(Path(sys.argv[1]))
