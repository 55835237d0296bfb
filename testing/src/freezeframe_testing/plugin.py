"""The pytest plug-in every freezeframe test suite shares: tools, profiles, SQLite, the CLI.

Fixtures that start something (a server, a filesystem) live here once and
clean up even when a test fails. A test that needs a tool this machine lacks
is skipped with the reason, except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

from freezeframe import RunRecord, RunStatus
from freezeframe.engine import Engine
from freezeframe.fsutil import sqlite_uri
from freezeframe.registry import Registry, build_registry

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Server fixtures, one module per server, loaded with this plug-in.
pytest_plugins = [
    "freezeframe_testing.postgres_server",
    "freezeframe_testing.mariadb_server",
    "freezeframe_testing.mariadb_bank",
    "freezeframe_testing.redis_server",
    "freezeframe_testing.prometheus_servers",
    "freezeframe_testing.sshd",
    "freezeframe_testing.repositories",
]


def need(condition: bool, reason: str) -> None:
    """Skip (or, in CI, fail) the test unless ``condition`` holds."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI must not skip: {reason}")
    pytest.skip(reason)


def require_tool(name: str) -> str:
    """The path of tool ``name``; skip (fail in CI) when it is not installed."""
    path = shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/sbin") if (p := Path(d) / name).exists()), None
    )
    need(path is not None, f"{name} is not installed")
    assert path is not None
    return path


class Stoppable(Protocol):
    """A server a fixture started: it has a ``stop()``."""

    def stop(self) -> None: ...


def stop_all(started: Sequence[Stoppable]) -> None:
    """Stop every one of ``started``, the newest first, even when stopping another failed;
    then raise the first failure (a fixture's teardown)."""
    errors = []
    for server in reversed(started):
        try:
            server.stop()
        except Exception as e:
            errors.append(e)
    if errors:
        raise errors[0]


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; whether it held."""
    end = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(interval)


def writer_process(path: Path) -> subprocess.Popen[bytes]:
    """A process that creates and writes ``path`` (it blocks while the filesystem is frozen)."""
    code = f"open({str(path)!r}, 'w').write('written')"
    return subprocess.Popen([sys.executable, "-c", code])


def finishes_within(proc: subprocess.Popen[bytes], seconds: float) -> bool:
    """Whether ``proc`` exits within ``seconds``."""
    try:
        proc.wait(seconds)
        return True
    except subprocess.TimeoutExpired:
        return False


PAIR_WRITER = """
import os, sys
fds = [os.open(p, os.O_RDWR | os.O_CREAT, 0o644) for p in sys.argv[1:3]]
n = 0
while True:
    n += 1
    for fd in fds:
        os.pwrite(fd, b"%020d" % n, 0)
"""


def pair_writer(root: Path) -> subprocess.Popen[bytes]:
    """A process writing n into a.txt, then into b.txt, n = 1, 2, ...: a - b is 0 or 1.

    Each write is one pwrite(2) of a fixed width, so a freeze falls between two
    writes, never inside one (truncate-then-write would tear by design). A
    process of its own, so it runs while the backup copies (no shared GIL).
    """
    return subprocess.Popen(
        [sys.executable, "-c", PAIR_WRITER, str(root / "a.txt"), str(root / "b.txt")]
    )


def pairs_restored(
    engine: Engine, root: Path, restore_to: Path, runs: int = 10
) -> list[tuple[RunRecord, int]]:
    """``runs`` backups while :func:`pair_writer` writes in ``root``; each restored under
    ``restore_to``. Returns each run with ``a - b`` of its restore: 0 or 1 when the
    backup was one instant (it fails the test if a run did not succeed)."""
    writer = pair_writer(root)
    done = []
    try:
        end = time.monotonic() + 30
        while not all(_written(root / name) for name in ("a.txt", "b.txt")):
            assert writer.poll() is None and time.monotonic() < end, "the writer never wrote"
            time.sleep(0.01)
        for _ in range(runs):
            run = engine.backup().record
            assert run.status == RunStatus.SUCCEEDED, run.error
            done.append(run)
    finally:
        writer.kill()
        writer.wait()
    gaps = []
    for i, run in enumerate(done):
        restored_root = restore_to / f"r{i}" / root.relative_to("/")
        engine.restore(run.run_id, restore_to / f"r{i}")
        a, b = (int((restored_root / name).read_text()) for name in ("a.txt", "b.txt"))
        assert a > 0, f"run {run.run_id}: nothing written before it"
        gaps.append((run, a - b))
    return gaps


@dataclass(frozen=True)
class CheckedRun:
    """One backup of :func:`back_up_pairs`: the run, the stage it restored from, what is wrong."""

    run: RunRecord
    restored_from: str
    problems: list[str]


def back_up_pairs(
    engine: Engine, writer: PairWriter, dbs: tuple[Path, Path], restore_to: Path, runs: int
) -> list[CheckedRun]:
    """Up to ``runs`` backups while ``writer`` commits, each restored and checked
    (:func:`pair_problems`) at once; stops at the first rejected one."""
    checked: list[CheckedRun] = []
    for i in range(runs):
        before = writer.committed  # both counters are at least this before the quiesce
        run = engine.backup().record
        after = writer.committed
        assert run.status == RunStatus.SUCCEEDED, run.error
        target = restore_to / f"restore-{i}"
        stage = engine.restore(run.run_id, target, verify=True).stage
        pair = (restored(target, dbs[0]), restored(target, dbs[1]))
        checked.append(CheckedRun(run, stage, pair_problems(writer, run, pair, before, after)))
        if checked[-1].problems:
            break
    return checked


def _written(path: Path) -> bool:
    try:
        return int(path.read_bytes() or b"0") > 0
    except (FileNotFoundError, ValueError):  # not made yet, or read mid-write
        return False


def make_counter_db(path: Path, *, wal: bool = True) -> Path:
    """A SQLite database with one row ``counter(id=1, n=0)``."""
    with sqlite3.connect(path) as db:
        if wal:
            db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
        db.execute("INSERT INTO counter VALUES (1, 0)")
    db.close()
    return path


class PairWriter(threading.Thread):
    """Commits +1 to A, then +1 to B, until stopped; ``committed`` is B's last committed value.

    At every instant ``A - B`` is 0 or 1: a backup that caught the two databases
    at different moments shows another difference; one that lost commits shows
    a value below what was committed before the backup began. ``locked_at[i][n]``
    is when the transaction that made database i's counter n took the write lock
    (counters start at 0): a backup that holds n was taken while the application
    was quiesced only if ``n + 1`` took the lock after the thaw began.
    """

    def __init__(self, a: Path, b: Path) -> None:
        super().__init__(daemon=True)
        self.paths = (a, b)
        self.stop = threading.Event()
        self.committed = 0
        self.locked_at: tuple[list[float], list[float]] = ([0.0], [0.0])
        self.error: BaseException | None = None
        self._progress = threading.Condition()

    def run(self) -> None:
        try:
            dbs = [sqlite3.connect(p, timeout=30, isolation_level=None) for p in self.paths]
            while not self.stop.is_set():
                for db, locked_at in zip(dbs, self.locked_at, strict=True):
                    db.execute("BEGIN IMMEDIATE")
                    locked_at.append(time.time())
                    db.execute("UPDATE counter SET n = n + 1 WHERE id = 1")
                    db.execute("COMMIT")
                with self._progress:
                    self.committed += 1
                    self._progress.notify_all()
        except BaseException as e:
            self.error = e
        finally:
            with self._progress:
                self._progress.notify_all()

    def wait_for(self, committed: int, timeout: float = 30) -> None:
        """Wait until both counters have reached ``committed`` (fail if the writer stopped)."""
        with self._progress:
            done = self._progress.wait_for(
                lambda: self.committed >= committed or not self.is_alive(), timeout
            )
        assert self.error is None, f"the writer failed: {self.error!r}"
        assert done and self.committed >= committed, f"the writer is stuck at {self.committed}"

    def __enter__(self) -> PairWriter:
        self.start()
        self.wait_for(1)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(30)


def pair_problems(
    writer: PairWriter,
    run: RunRecord,
    restored_pair: tuple[Path, Path],
    before: int,
    after: int,
) -> list[str]:
    """Why a restored pair is not the instant its run froze (empty when it is).

    ``before`` and ``after``: what the writer had committed when the run began
    and right after it returned. Waits until the writer has committed past the
    restored values (when their successors took the lock tells when the freeze ended).
    """
    after += 1  # A may be one ahead of B's count
    broken = [f"{p}: {r}" for p in restored_pair if (r := integrity(p)) != ["ok"]]
    if broken:
        return broken
    values = [read_counter(p) for p in restored_pair]
    (na, nb), out = values, []
    if na - nb not in (0, 1):
        out.append(f"A={na} B={nb} were not captured together")
    if nb < before:
        out.append(f"lost commits (B={nb} < {before} committed before the run)")
    if na > after:
        out.append(f"A={na} holds commits made after the run ({after})")
    writer.wait_for(max(values) + 1)
    for app, n, locked_at in zip(run.applications, values, writer.locked_at, strict=True):
        thaw = app.thaw_start
        if thaw is None or locked_at[n + 1] < thaw:
            early = "" if thaw is None else f" {thaw - locked_at[n + 1]:.3f}s before its thaw"
            out.append(
                f"{app.name}={n}, but the writer took {app.name}'s lock for {n + 1}{early}: "
                "the backup was not taken while it was quiesced"
            )
    return out


def read_only_uri(path: Path) -> str:
    """A URI that opens the database file ``path`` itself, read-only, leaving nothing beside it.

    The name is percent-escaped (a ``#`` or ``?`` would end it) and ``mode=ro`` never
    creates a missing file (``sqlite3.OperationalError`` instead).
    """
    return sqlite_uri(Path(path), mode="ro", immutable="1")


def read_counter(path: Path) -> int:
    """The counter of a database made by :func:`make_counter_db`."""
    db = sqlite3.connect(read_only_uri(path), uri=True)
    try:
        return int(db.execute("SELECT n FROM counter WHERE id=1").fetchone()[0])
    finally:
        db.close()


def integrity(path: Path) -> list[str]:
    """``PRAGMA integrity_check`` of a database file (``["ok"]`` when sound).

    Opened read-only, so a missing file is a failure, never a new empty database.
    """
    try:
        db = sqlite3.connect(read_only_uri(path), uri=True)
    except sqlite3.OperationalError as e:
        return [f"cannot open {path}: {e}"]
    try:
        return [r[0] for r in db.execute("PRAGMA integrity_check")]
    except sqlite3.DatabaseError as e:
        return [f"{path}: {e}"]
    finally:
        db.close()


def writable_within(path: Path, seconds: float) -> bool:
    """Whether a new connection can take the write lock of ``path`` within ``seconds``."""
    db = sqlite3.connect(path, timeout=seconds, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        db.close()


def restored(root: Path, original: Path) -> Path:
    """Where ``original`` lands under a restore root."""
    return root / original.relative_to(original.anchor)


@dataclass
class CliResult:
    """A finished ``freezeframe`` subprocess."""

    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """stdout parsed as JSON."""
        return json.loads(self.stdout)


def run_cli(
    *args: str | Path,
    timeout: float = 120,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> CliResult:
    """Run ``python -m freezeframe ARGS`` as a real subprocess."""
    proc = subprocess.run(
        [sys.executable, "-m", "freezeframe", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def sqlite_clone_profile(
    folder: Path, db: Path, *, name: str, then: str = "", capture: str | None = None
) -> Path:
    """``folder/profile.toml``: the SQLite database ``db`` (application ``shop``, in capture
    mode ``capture`` if given), a clone snapshot stage ``snap`` in ``folder/snaps``, then
    ``then`` (more TOML: the copy stages).

    Paths are written as TOML strings, so any file name works; state goes in ``folder/state``.
    """
    application = f"""
plugin = "sqlite"
name = "shop"
path = {json.dumps(str(db))}
{f"capture = {json.dumps(capture)}" if capture else ""}
"""
    return clone_profile(folder, application, name=name, then=then)


def clone_profile(
    folder: Path, application: str, *, name: str, then: str = "", paths: Sequence[Path] = ()
) -> Path:
    """``folder/profile.toml``: one ``[[application]]`` (its fields: ``application``, TOML),
    a clone snapshot stage ``snap`` in ``folder/snaps`` (taking ``paths`` too), then ``then``
    (more TOML: the copy stages); ``freeze_timeout = "10s"``, state in ``folder/state``."""
    path = folder / "profile.toml"
    own = f"paths = {json.dumps([str(p) for p in paths])}" if paths else ""
    path.write_text(f"""
[profile]
name = "{name}"
freeze_timeout = "10s"
state_dir = {json.dumps(str(folder / "state"))}

[[application]]
{application}

[[backup]]
backend = "clone"
name = "snap"
dir = {json.dumps(str(folder / "snaps"))}
{own}

{then}
""")
    return path


@pytest.fixture
def write_profile(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write a profile (dedented TOML) into the test's folder; returns its path.

    ``state_dir`` defaults to the test's folder so no test touches the user's state.
    """

    def write(text: str, name: str = "profile.toml") -> Path:
        body = textwrap.dedent(text)
        if "state_dir" not in body and "[profile]" in body:
            body = body.replace("[profile]", f'[profile]\nstate_dir = "{tmp_path / "state"}"', 1)
        path = tmp_path / name
        path.write_text(body)
        return path

    return write


@pytest.fixture
def registry() -> Registry:
    """A fresh registry of the installed packages (no cached global)."""
    return build_registry()


@pytest.fixture
def registry_with() -> Callable[..., Registry]:
    """Build a fresh registry with extra in-process plug-in modules or objects."""

    def make(*modules: object, entry_points: bool = True) -> Registry:
        return build_registry(entry_points=entry_points, modules=modules)

    return make


@pytest.fixture
def two_dbs(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """Two fresh counter databases in WAL mode."""
    data = tmp_path / "data"
    data.mkdir()
    yield make_counter_db(data / "a.db"), make_counter_db(data / "b.db")


def _sh(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def read_only_mount() -> Iterator[Callable[[Path], Path]]:
    """``read_only_mount(folder)`` bind-mounts ``folder`` read-only over itself (as a
    read-only copy of it would be: even root cannot write there) and returns it; each
    mount is undone at teardown, also when the test failed. Needs root."""
    mounted: list[Path] = []

    def make(folder: Path) -> Path:
        need(os.geteuid() == 0, "mounts need root")
        r = _sh("mount", "--bind", str(folder), str(folder))
        assert r.returncode == 0, r.stderr
        mounted.append(folder)
        r = _sh("mount", "-o", "remount,bind,ro", str(folder))
        assert r.returncode == 0, r.stderr
        return folder

    yield make
    for folder in reversed(mounted):
        if _sh("umount", str(folder)).returncode != 0:
            _sh("umount", "--lazy", str(folder))


@dataclass
class LoopFs:
    """A real filesystem on a loop device, mounted for one test."""

    fstype: str
    image: Path
    device: str
    mountpoint: Path


@pytest.fixture
def loop_fs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., LoopFs]]:
    """Make real filesystems (``"btrfs"``, ``"xfs"``, ``"ext4"``) on loop devices.

    ``loop_fs("btrfs", size_mb=512)`` returns a mounted :class:`LoopFs`. Each one
    is thawed, unmounted and detached at teardown, also when the test failed.
    Needs root and the mkfs tool; skips (fails in CI) otherwise.
    """
    yield from _loop_filesystems(tmp_path_factory)


@pytest.fixture(scope="module")
def loop_fs_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., LoopFs]]:
    """:func:`loop_fs` for a module's shared fixtures: torn down after the module's last test."""
    yield from _loop_filesystems(tmp_path_factory)


def _loop_filesystems(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., LoopFs]]:
    made: list[LoopFs] = []

    def make(fstype: str, size_mb: int = 512) -> LoopFs:
        need(os.geteuid() == 0, "loop devices and mounts need root")
        require_tool(f"mkfs.{fstype}")
        require_tool("losetup")
        base = tmp_path_factory.mktemp(f"loop-{fstype}")
        image = base / f"{fstype}.img"
        with open(image, "wb") as f:
            f.truncate(size_mb << 20)
        quiet = {"btrfs": ["-q"], "xfs": ["-q"], "ext4": ["-q", "-F"]}.get(fstype, [])
        r = _sh(f"mkfs.{fstype}", *quiet, str(image))
        assert r.returncode == 0, r.stderr
        r = _sh("losetup", "--find", "--show", str(image))
        need(r.returncode == 0, f"no loop device available: {r.stderr.strip()}")
        device = r.stdout.strip()
        mnt = base / "mnt"
        mnt.mkdir()
        fs = LoopFs(fstype, image, device, mnt)
        made.append(fs)
        r = _sh("mount", device, str(mnt))
        assert r.returncode == 0, r.stderr
        return fs

    yield make
    for fs in reversed(made):
        _sh("fsfreeze", "--unfreeze", str(fs.mountpoint))  # a failed test may leave it frozen
        if _sh("umount", str(fs.mountpoint)).returncode != 0:
            _sh("umount", "--lazy", str(fs.mountpoint))
        _sh("losetup", "--detach", fs.device)
        fs.image.unlink(missing_ok=True)
