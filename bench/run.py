"""Run the benchmarks: every ``bench/*.py`` script but this one (and the ``_*.py`` helpers
they share), one after another.

``python bench/run.py`` runs them all; ``python bench/run.py freeze_window``
runs those named. Each runs in its own interpreter (this one's), so one that
fails or exits early does not stop the others; the exit status is 1 if any
failed. The noxfile's ``bench`` session calls this.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def scripts() -> list[Path]:
    """Every benchmark script, by name (``_*.py``: helpers they share)."""
    return sorted(
        p for p in HERE.glob("*.py") if p.name != Path(__file__).name and not p.name.startswith("_")
    )


def main(names: list[str]) -> int:
    found = scripts()
    unknown = sorted(set(names) - {p.stem for p in found})
    if unknown:
        print(f"no benchmark named {', '.join(unknown)} in {HERE}", file=sys.stderr)
        return 2
    chosen = [p for p in found if not names or p.stem in names]
    failed = []
    for script in chosen:
        print(f"== {script.name}", flush=True)
        if subprocess.call([sys.executable, str(script)]) != 0:
            failed.append(script.name)
        print(flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"{len(chosen)} benchmark(s) done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
