"""Fault injection: stop a real backup at every step, three ways, and check what users need.

Every failpoint of the run (freezeframe._faults.POINTS, expanded for this
profile's applications and stages, and the first catalog writes) is hit once
with each action — an exception, SIGTERM, SIGKILL — in a real ``freezeframe
backup`` subprocess. After each injection:

- every application accepts writes within freeze_timeout + 2 s (two SQLite
  databases and a loop-mounted XFS frozen by fsfreeze under the watchdog);
- the catalog opens, no run is left "running" after the next command, and a run
  marked succeeded really restores;
- no temporary snapshot or partial archive is left behind;
- the previous good backup still restores, with both databases intact.

The count of injections and survivals is printed (pytest -s shows it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from freezeframe import BusyError, RunStatus
from freezeframe._faults import POINTS
from freezeframe.catalog import Catalog
from freezeframe.engine import Engine
from freezeframe.lock import ProfileLock
from freezeframe.profile import load_profile
from freezeframe.registry import build_registry
from freezeframe_testing.plugin import integrity, make_counter_db, restored, writable_within

FREEZE_TIMEOUT = 3.0
APPS = ("a", "b", "fs")
STAGES = ("snap", "archive")
CATALOG_SAVES = 10
SIGNAL_ONLY = {"thaw.before", "thaw.after"}  # our own code between the steps: signals only


def injections() -> list[tuple[str, str]]:
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
            out += [(action, name) for action in actions]
    return out


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


def wait_for_lock(engine: Engine, seconds: float) -> None:
    end = time.monotonic() + seconds
    while True:
        try:
            with ProfileLock(engine.profile.home / "lock", engine.profile.name, "test"):
                return
        except BusyError:
            assert time.monotonic() < end, "the profile stayed locked"
            time.sleep(0.1)


def test_every_fault_at_every_step_is_survived(tmp_path: Path, loop_fs, write_profile) -> None:
    xfs = loop_fs("xfs", 300)
    (xfs.mountpoint / "data.txt").write_text("on a filesystem frozen whole\n")
    data = tmp_path / "data"
    data.mkdir()
    a, b = make_counter_db(data / "a.db"), make_counter_db(data / "b.db")
    profile = write_profile(f"""
        [profile]
        name = "faults"
        freeze_timeout = "{FREEZE_TIMEOUT}s"

        [[application]]
        plugin = "sqlite"
        name = "a"
        path = "{a}"

        [[application]]
        plugin = "sqlite"
        name = "b"
        path = "{b}"

        [[application]]
        plugin = "fsfreeze"
        name = "fs"
        mountpoint = "{xfs.mountpoint}"

        [[backup]]
        backend = "clone"
        name = "snap"
        dir = "{tmp_path / "snaps"}"

        [[backup]]
        backend = "archive"
        name = "archive"
        dir = "{tmp_path / "archives"}"
        keep = {{ last = 3 }}
    """)
    registry = build_registry()
    engine = Engine(load_profile(profile, registry), registry)
    good = engine.backup()
    assert good.status == RunStatus.SUCCEEDED, good.error

    problems: list[str] = []
    done = 0
    cases = injections()
    assert len(cases) >= 100
    for action, point in cases:
        tag = f"{action}@{point}"
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "freezeframe", "backup", str(profile), "-q"],
            env={**os.environ, "FREEZEFRAME_FAULT": tag},
            capture_output=True,
            text=True,
            timeout=120,
        )
        ended = time.monotonic()
        if "Traceback" in proc.stderr:
            problems.append(f"{tag}: traceback: {proc.stderr.strip().splitlines()[-1]}")
        budget = FREEZE_TIMEOUT + 2
        for db in (a, b):
            if not writable_within(db, max(0.1, budget - (time.monotonic() - ended))):
                problems.append(f"{tag}: {db.name} not writable within {budget:g}s")
        if not xfs_writable_within(xfs.mountpoint, max(0.1, budget - (time.monotonic() - ended))):
            problems.append(f"{tag}: the XFS mount stayed frozen")

        # After a kill -9 mid-freeze the watchdog holds the profile's lock until it has
        # finished thawing (deadline + 2 s at most); the next command reconciles then.
        wait_for_lock(engine, FREEZE_TIMEOUT + 4)
        engine.reconcile_if_idle()  # what the next command does first
        with Catalog(engine.profile.home / "catalog.sqlite") as catalog:
            runs = catalog.runs()
            live = {
                (r.run_id, s.name)
                for r in runs
                if r.status == RunStatus.SUCCEEDED
                for s in r.stages
                if s.artifact is not None and s.deleted_at is None
            }
            archives = {
                s.artifact.id
                for r in runs
                if (r.run_id, "archive") in live
                for s in r.stages
                if s.name == "archive" and s.artifact
            }
            snapshots = {
                s.artifact.id
                for r in runs
                if (r.run_id, "snap") in live
                for s in r.stages
                if s.name == "snap" and s.artifact
            }
        if any(r.status == RunStatus.RUNNING for r in runs):
            problems.append(f"{tag}: a run is still marked running")
        injected = runs[0]
        if injected.run_id != good.run_id and injected.status == RunStatus.SUCCEEDED:
            target = tmp_path / "check" / tag.replace("/", "_")
            try:
                engine.restore(injected.run_id, target, verify=True)
            except Exception as e:
                problems.append(f"{tag}: marked succeeded but does not restore: {e}")
        left = sorted(p.name for p in (tmp_path / "snaps").iterdir() if p.name not in snapshots)
        if left:
            problems.append(f"{tag}: snapshots left behind: {left}")
        if (tmp_path / "archives").exists():
            stray = sorted(
                p.name for p in (tmp_path / "archives").iterdir() if p.name not in archives
            )
            if stray:
                problems.append(f"{tag}: archive files left behind: {stray}")
        newest = engine.find_run(Catalog(engine.profile.home / "catalog.sqlite"), "latest")
        target = tmp_path / "previous" / tag.replace("/", "_")
        try:
            engine.restore(newest.run_id, target, verify=True)
            ok = all(integrity(restored(target, db)) == ["ok"] for db in (a, b))
            if not ok:
                problems.append(f"{tag}: the previous good backup restores damaged")
        except Exception as e:
            problems.append(f"{tag}: the previous good backup does not restore: {e}")
        done += 1
        print(f"{tag}: {time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)

    survived = done - len({p.split(":")[0] for p in problems})
    print(f"\nfault injection: {done} injected, {survived} survived")
    assert not problems, "\n".join(problems)
