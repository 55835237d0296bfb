"""The quickstart, end to end: two live SQLite databases backed up together, the latest
backup proven by a drill, and restored.

A writer thread keeps moving money: each transaction adds 1 to ``orders`` and
then 1 to ``ledger``. freezeframe backs both up while it runs; every restored
pair must differ by 0 or 1 (a backup that caught the databases at different
moments would show a larger gap). Run it with ``nox -s demo``.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).parent


def freezeframe(*args: str) -> str:
    cmd = [sys.executable, "-m", "freezeframe", *args]
    print(f"\n$ freezeframe {' '.join(args)}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    print(proc.stdout.rstrip())
    if proc.returncode != 0:
        print(proc.stderr.rstrip(), file=sys.stderr)
        raise SystemExit(f"freezeframe {args[0]} failed with exit code {proc.returncode}")
    return proc.stdout


def make_db(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
        db.execute("INSERT INTO counter VALUES (1, 0)")
    db.close()


def writer(a: Path, b: Path, stop: threading.Event, done: list[int]) -> None:
    dbs = [sqlite3.connect(p, timeout=30, isolation_level=None) for p in (a, b)]
    n = 0
    while not stop.is_set():
        for db in dbs:  # orders first, then ledger: orders - ledger is always 0 or 1
            db.execute("BEGIN IMMEDIATE")
            db.execute("UPDATE counter SET n = n + 1 WHERE id = 1")
            db.execute("COMMIT")
        n += 1
    done.append(n)


def counter(path: Path) -> int:
    db = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        return int(db.execute("SELECT n FROM counter").fetchone()[0])
    finally:
        db.close()


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="freezeframe-demo-"))
    print(f"working in {work}")
    (work / "data").mkdir()
    orders, ledger = work / "data/orders.db", work / "data/ledger.db"
    make_db(orders)
    make_db(ledger)
    profile = work / "quickstart.toml"
    shutil.copy(HERE / "quickstart.toml", profile)

    stop, done = threading.Event(), []
    t = threading.Thread(target=writer, args=(orders, ledger, stop, done))
    t.start()
    try:
        time.sleep(0.3)
        freezeframe("check", str(profile))
        for _ in range(3):
            freezeframe("backup", str(profile), "--quiet")
            time.sleep(0.2)
    finally:
        stop.set()
        t.join()
    print(f"\nthe writer committed {done[0]} pairs of transactions while backups ran")
    # prove the latest backup: restored into a scratch folder, checked, recorded
    freezeframe("drill", str(profile))
    freezeframe("list", str(profile))
    target = work / "restored"
    freezeframe("restore", str(profile), "latest", "--to", str(target), "--verify", "--quiet")
    a = counter(target / orders.relative_to("/"))
    b = counter(target / ledger.relative_to("/"))
    print(f"\nrestored orders = {a}, ledger = {b}: difference {a - b}")
    if a - b not in (0, 1):
        raise SystemExit("INCONSISTENT: the two databases were not captured at one instant")
    print("consistent: both databases were captured at one instant.")
    print(f"(everything is in {work}; delete it when done)")


if __name__ == "__main__":
    main()
