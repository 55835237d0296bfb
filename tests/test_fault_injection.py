"""Fault injection: stop a real backup at every step, three ways, and check what users need.

Every failpoint of the run (freezeframe._faults.POINTS, expanded for this
profile's applications and stages, and each catalog write of a run) is hit
with each action — an exception, SIGTERM, SIGKILL — in a real ``freezeframe
backup`` subprocess, one test case each (``-k raise-catalog.save-3``).
Each case:

- proves its fault fired (the failpoint writes ``FREEZEFRAME_FAULT_FIRED``);
- checks the exit status that fault must give: an exception exits 1 with a
  one-line cause, SIGTERM 128 + 15, SIGKILL is -9; and that the catalog
  records the run failed (for SIGKILL, once the next command reconciled);
- checks that every application takes writes within freeze_timeout + 2 s (two
  SQLite databases, a loop-mounted XFS frozen by fsfreeze, an ``exec``
  application whose quiesce outlives the process), and that after an
  exception or SIGTERM freezeframe thawed the ``exec`` application *itself*,
  before it exited (the watchdog or the next command would thaw it too,
  which would hide a missing thaw);
- checks nothing the run made is left behind;
- restores the previous good backup *by its id* and compares its rows with
  what was written before it: rows are added between that backup and the
  injected run, so restoring the wrong run shows.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from freezeframe import BusyError, RunRecord, RunStatus
from freezeframe._faults import POINTS
from freezeframe.catalog import Catalog
from freezeframe.engine import Engine
from freezeframe.lock import ProfileLock
from freezeframe.profile import load_profile
from freezeframe.registry import build_registry
from freezeframe_testing.plugin import LoopFs, integrity, restored, writable_within

FREEZE_TIMEOUT = 3.0
#: Every application must take writes again within this long after freezeframe ended.
BUDGET = FREEZE_TIMEOUT + 2
APPS = ("a", "b", "fs", "gate")
STAGES = ("snap", "archive")
#: Record writes of one run of this profile (catalog.save#1 .. #CATALOG_SAVES); the
#: last is the one that says "succeeded". A case whose fault no longer fires fails.
CATALOG_SAVES = 10
SIGNAL_ONLY = {"thaw.before", "thaw.after"}  # our own code between the steps: signals only
#: The run's first record write: stopped there, the run never began and is not recorded.
BEFORE_THE_RECORD = {"catalog.save#1"}
#: Reached once the run is recorded succeeded: it stays succeeded and must restore.
AFTER_SUCCESS = {"retention.before", "retention.delete"}
#: Where freezeframe's own unquiesce of ``gate`` is what fails: the engine then fires
#: its watchdog, which thaws before freezeframe exits.
THAWED_BY_THE_FIRED_WATCHDOG = {"raise@unquiesce.before.gate"}


def injections() -> list[str]:
    out = []
    for template in POINTS:
        if template == "catalog.save":
            names = [f"catalog.save#{n}" for n in range(1, CATALOG_SAVES + 1)]
        elif "{app}" in template:
            names = [template.format(app=a) for a in APPS]
        elif "{stage}" in template:
            names = [template.format(stage=s) for s in STAGES]
        else:
            names = [template]
        for name in names:
            actions = (
                ("sigterm", "sigkill") if name in SIGNAL_ONLY else ("raise", "sigterm", "sigkill")
            )
            out += [f"{action}@{name}" for action in actions]
    return out


#: Cases that fail on today's engine for a defect of their own, marked so they
#: turn into failures (strict) once it is fixed: remove the mark then.
KNOWN: dict[str, str] = {}
CASES = injections()


def case_id(tag: str) -> str:
    """``raise@catalog.save#3`` as ``raise-catalog.save-3``: -k takes neither @ nor #."""
    return tag.replace("@", "-").replace("#", "-")


@dataclass
class Rig:
    """The profile every case backs up, shared by the cases (set up once)."""

    tmp: Path
    profile: Path
    engine: Engine
    dbs: tuple[Path, Path]
    xfs: LoopFs
    log: Path  # the exec application's quiesce/unquiesce lines: "<step> <parent pid>"
    frozen: Path  # exists while the exec application is quiesced
    #: The newest good run and the rows of each database it holds (``None``: make one).
    good: tuple[str, list[list[tuple[int, str]]]] | None = None

    def write(self, tag: str, rows: int = 3) -> None:
        """Add rows to both databases (what a later backup must hold and an earlier not)."""
        for path in self.dbs:
            with sqlite3.connect(path, timeout=30) as db:
                db.executemany(
                    "INSERT INTO t(tag) VALUES (?)", [(f"{tag} {i}",) for i in range(rows)]
                )
            db.close()


def rows_of(path: Path) -> list[tuple[int, str]]:
    """The rows of a database, read without creating or changing anything."""
    assert integrity(path) == ["ok"], path
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(db.execute("SELECT id, tag FROM t ORDER BY id"))
    finally:
        db.close()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, loop_fs_module) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("faults")
    xfs = loop_fs_module("xfs", 300)
    (xfs.mountpoint / "data.txt").write_text("on a filesystem frozen whole\n")
    data = tmp / "data"
    data.mkdir()
    dbs = (data / "a.db", data / "b.db")
    for path in dbs:
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, tag TEXT NOT NULL)")
        db.close()
    log, frozen = tmp / "gate.log", tmp / "gate.frozen"
    quiesce = f'echo "quiesce $PPID" >> {log} && : > {frozen}'
    unquiesce = f'echo "unquiesce $PPID" >> {log} && rm -f {frozen}'
    profile = tmp / "profile.toml"
    profile.write_text(f"""
[profile]
name = "faults"
state_dir = "{tmp / "state"}"
freeze_timeout = "{FREEZE_TIMEOUT}s"

[[application]]
plugin = "sqlite"
name = "a"
path = "{dbs[0]}"

[[application]]
plugin = "sqlite"
name = "b"
path = "{dbs[1]}"

[[application]]
plugin = "fsfreeze"
name = "fs"
mountpoint = "{xfs.mountpoint}"

[[application]]
plugin = "exec"
name = "gate"
quiesce = ["/bin/sh", "-c", '{quiesce}']
unquiesce = ["/bin/sh", "-c", '{unquiesce}']
consistent_on = ["per-file"]

[[backup]]
backend = "clone"
name = "snap"
dir = "{tmp / "snaps"}"

[[backup]]
backend = "archive"
name = "archive"
dir = "{tmp / "archives"}"
keep = {{ last = 3 }}
""")
    registry = build_registry()
    engine = Engine(load_profile(profile, registry), registry)
    yield Rig(tmp, profile, engine, dbs, xfs, log, frozen)
    # a failed case may have left it quiesced
    subprocess.run(["/bin/sh", "-c", unquiesce], check=False)


def xfs_writable_within(mount: Path, seconds: float) -> bool:
    proc = subprocess.Popen(
        [sys.executable, "-c", f"open({str(mount / 'probe')!r}, 'w').write('x')"]
    )
    try:
        proc.wait(seconds)
        return True
    except subprocess.TimeoutExpired:
        # the writer sleeps uninterruptibly in the frozen filesystem: thaw it to reap it
        subprocess.run(["fsfreeze", "--unfreeze", str(mount)], check=False)
        proc.kill()
        proc.wait()
        return False


def gone_within(path: Path, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while path.exists():
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def wait_for_lock(engine: Engine, seconds: float) -> None:
    end = time.monotonic() + seconds
    while True:
        try:
            with ProfileLock(engine.profile.home / "lock", engine.profile.name, "test"):
                return
        except BusyError:
            assert time.monotonic() < end, "the profile stayed locked"
            time.sleep(0.1)


def settle(rig: Rig) -> None:
    """Undo what a failed earlier case may have left (it failed for it already): a frozen
    application, a held lock, pending deletes, so that this case's faults hit its own run."""
    subprocess.run(["fsfreeze", "--unfreeze", str(rig.xfs.mountpoint)], capture_output=True)
    rig.frozen.unlink(missing_ok=True)
    if rig.engine.profile.home.exists():  # not before the first run
        wait_for_lock(rig.engine, FREEZE_TIMEOUT + 4)
        rig.engine.reconcile_if_idle()


def catalog_runs(rig: Rig) -> list[RunRecord]:
    with Catalog(rig.engine.profile.home / "catalog.sqlite") as catalog:
        return catalog.runs()


def catalog_errors(rig: Rig, run_id: str) -> list[str]:
    with Catalog(rig.engine.profile.home / "catalog.sqlite") as catalog:
        return [str(e["message"]) for e in catalog.errors(run_id)]


def leftovers(rig: Rig, runs: list[RunRecord]) -> list[str]:
    """Snapshots and archive files no live artifact of the catalog owns."""
    live = {
        s.artifact.id
        for r in runs
        if r.status == RunStatus.SUCCEEDED
        for s in r.stages
        if s.artifact is not None and s.deleted_at is None
    }
    found = []
    for folder in (rig.tmp / "snaps", rig.tmp / "archives"):
        if folder.exists():
            found += [f"{folder.name}/{p.name}" for p in folder.iterdir() if p.name not in live]
    return sorted(found)


def restored_rows(rig: Rig, run_id: str, where: Path) -> list[list[tuple[int, str]]]:
    rig.engine.restore(run_id, where, verify=True)
    return [rows_of(restored(where, db)) for db in rig.dbs]


@pytest.mark.parametrize(
    "tag",
    [
        pytest.param(
            tag,
            id=case_id(tag),
            marks=[pytest.mark.xfail(strict=True, reason=KNOWN[tag])] if tag in KNOWN else [],
        )
        for tag in CASES
    ],
)
def test_fault_is_survived(rig: Rig, tag: str) -> None:
    action, _, point = tag.partition("@")
    case = case_id(tag)
    settle(rig)
    # a good backup (the last case's, if it made one), then rows it does not hold
    if rig.good is None:
        rig.write(f"{tag} before the good run")
        run = rig.engine.backup().record
        assert run.status == RunStatus.SUCCEEDED, run.error
        rig.good = (run.run_id, [rows_of(db) for db in rig.dbs])
    good_id, good_rows = rig.good
    rig.write(f"{tag} after the good run")
    now_rows = [rows_of(db) for db in rig.dbs]
    before = {r.run_id for r in catalog_runs(rig)}
    fired = rig.tmp / f"fired-{case}"
    rig.log.write_text("")

    proc = subprocess.Popen(
        [sys.executable, "-m", "freezeframe", "backup", str(rig.profile), "-q"],
        env={**os.environ, "FREEZEFRAME_FAULT": tag, "FREEZEFRAME_FAULT_FIRED": str(fired)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()  # only if it hangs: it has been reaped otherwise
        proc.wait()
    ended = time.monotonic()
    at_exit = rig.log.read_text().splitlines()  # what the exec application saw by then
    pid = proc.pid

    # 1. the fault fired, once
    nth = point if "#" in point else f"{point}#1"
    assert fired.exists(), f"{tag} never fired (exit {proc.returncode}: {stderr.strip()})"
    assert fired.read_text().splitlines()[0] == f"{action}@{nth}"

    # 2. the exit status of that fault, one line, no traceback
    assert "Traceback" not in stderr, stderr
    after_success = point in AFTER_SUCCESS
    if action == "sigkill":
        assert proc.returncode == -9, stderr
    elif action == "sigterm":
        assert proc.returncode == 128 + 15, stderr
        assert "interrupted by SIGTERM" in stderr
    elif after_success:
        assert proc.returncode == 0, stderr
    else:
        assert proc.returncode == 1, stderr
        errors = [line for line in stderr.splitlines() if "error" in line]
        assert len(errors) == 1, stderr
        # before the run is recorded there is no run to name: the catalog is named instead
        first = "freezeframe: error: " + ("" if point in BEFORE_THE_RECORD else "run ")
        assert errors[0].startswith(first) and "injected fault" in errors[0], errors[0]
        if point.startswith("catalog."):
            assert "catalog.sqlite" in errors[0], errors[0]

    # 3. every application takes writes again; freezeframe thawed ``gate`` itself
    def left() -> float:
        return max(0.1, BUDGET - (time.monotonic() - ended))

    for db in rig.dbs:
        assert writable_within(db, left()), f"{db.name} not writable within {BUDGET:g}s"
    assert xfs_writable_within(rig.xfs.mountpoint, left()), "the XFS mount stayed frozen"
    assert gone_within(rig.frozen, left()), "the exec application stayed quiesced"
    if action != "sigkill" and f"quiesce {pid}" in at_exit:
        last_quiesce = max(i for i, line in enumerate(at_exit) if line == f"quiesce {pid}")
        thaws = [line for line in at_exit[last_quiesce:] if line.startswith("unquiesce ")]
        if tag not in THAWED_BY_THE_FIRED_WATCHDOG:
            thaws = [line for line in thaws if line == f"unquiesce {pid}"]
        assert thaws, f"freezeframe exited without thawing gate itself: {at_exit}"

    # 4. the run is recorded as what it was, once the next command has reconciled
    # (after a kill -9 mid-freeze, the watchdog holds the lock until it has thawed)
    wait_for_lock(rig.engine, FREEZE_TIMEOUT + 4)
    rig.engine.reconcile_if_idle()  # what the next command does first
    runs = catalog_runs(rig)
    assert not [r.run_id for r in runs if r.status == RunStatus.RUNNING]
    new = [r for r in runs if r.run_id not in before]
    if point in BEFORE_THE_RECORD:
        assert new == []
    elif after_success:
        [injected] = new
        assert injected.status == RunStatus.SUCCEEDED, injected.error
        if action == "raise":
            errors = catalog_errors(rig, injected.run_id)
            assert any("injected fault" in e for e in errors), errors
        assert restored_rows(rig, injected.run_id, rig.tmp / "injected" / case) == now_rows
        rig.good = (injected.run_id, now_rows)  # the next case's previous good run
    else:
        [injected] = new
        assert injected.status == RunStatus.FAILED

    # 5. nothing half-made is left behind
    assert not leftovers(rig, runs)

    # 6. the previous good backup, by its id, holds what was written before it
    assert restored_rows(rig, good_id, rig.tmp / "previous" / case) == good_rows
