"""Tests of the ``btrfs`` snapshot backend, on real btrfs filesystems on loop devices.

Subvolumes are made with ``btrfs subvolume create``; every snapshot is a real
one, checked with the ``btrfs`` tool. Filesystems of other types (XFS, ext4)
come from the same fixture, to see what is refused.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sqlite3
import stat
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from freezeframe import (
    Artifact,
    Cancelled,
    ConfigError,
    FreezeframeError,
    RestoreOptions,
    Role,
    RunStatus,
    SnapshotKind,
    StageContext,
    Table,
    digests,
)
from freezeframe.engine import Engine
from freezeframe.profile import load_profile
from freezeframe.registry import Registry
from freezeframe.tools import run_tool
from freezeframe_btrfs import BtrfsBackend
from freezeframe_clone import CloneBackend
from freezeframe_testing.crafted import specials_below
from freezeframe_testing.damage import DAMAGES, Damage, flip_byte, writable
from freezeframe_testing.plugin import LoopFs, make_counter_db, read_counter, require_tool, restored

LoopFsFactory = Callable[..., LoopFs]

# -- helpers -------------------------------------------------------------------------------


def btrfs(*args: str | Path) -> str:
    """Run the btrfs tool; its stdout."""
    return run_tool([require_tool("btrfs"), *map(str, args)], timeout=60).stdout


def subvolume(path: Path) -> Path:
    """A new, empty subvolume at ``path``."""
    btrfs("subvolume", "create", path)
    return path


def subvolume_paths(fs: LoopFs) -> set[str]:
    """Every subvolume of the filesystem, by its path from the top level."""
    out = btrfs("subvolume", "list", fs.mountpoint)
    return {line.split(" path ", 1)[1] for line in out.splitlines() if " path " in line}


def make_backend(dir: Path, *paths: Path) -> BtrfsBackend:
    table = {"dir": str(dir), "paths": [str(p) for p in paths]}
    return BtrfsBackend("snap", Table(table, base_dir=dir.parent))


def context(run_id: str, *data_paths: Path) -> StageContext:
    return StageContext(run_id, "test", "snap", tuple(data_paths))


def digest(path: Path) -> str:
    """A hash of every file name and content below ``path`` (or of the file itself)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        h.update(str(p.relative_to(path) if path.is_dir() else p.name).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def fs(loop_fs: LoopFsFactory) -> LoopFs:
    """A fresh btrfs filesystem on a loop device."""
    require_tool("btrfs")
    return loop_fs("btrfs")


@pytest.fixture
def snaps(fs: LoopFs) -> Path:
    """Where snapshots go: a folder on the btrfs filesystem (created by check)."""
    return fs.mountpoint / "snaps"


def fill(root: Path) -> Path:
    """A small tree: a database-like file and a folder of files."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "orders.db").write_bytes(os.urandom(64 << 10))
    (root / "conf").mkdir()
    for i in range(3):
        (root / "conf" / f"{i}.toml").write_text(f"n = {i}\n")
    return root


# -- registration and configuration (no filesystem needed) ---------------------------------


def test_registered_as_an_atomic_snapshot_backend(registry: Registry) -> None:
    info = registry.backends["btrfs"]
    assert info.cls is BtrfsBackend
    assert info.distribution == "freezeframe-btrfs"
    assert BtrfsBackend.role == Role.SNAPSHOT
    assert BtrfsBackend.snapshot_kind == SnapshotKind.ATOMIC


def test_dir_is_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match='field "dir": missing'):
        BtrfsBackend("snap", Table({}, base_dir=tmp_path))


def test_paths_and_dir_containing_one_another_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r'field "paths":.*contain one another'):
        make_backend(tmp_path / "snaps", tmp_path)


# -- what a run makes -----------------------------------------------------------------------


def test_two_paths_on_one_subvolume_share_one_snapshot(fs: LoopFs, snaps: Path) -> None:
    data = fill(subvolume(fs.mountpoint / "data") / "shop")
    db, conf = data / "orders.db", data / "conf"
    backend = make_backend(snaps)
    backend.check()
    art = backend.run(context("r1", db, conf))

    view = snaps / "r1"
    assert art.view == view
    assert [p.name for p in view.iterdir()] == ["data"]
    assert art.metadata["snapshots"] == {"data": str(fs.mountpoint / "data")}
    assert art.roots() == [(conf, view / "data/shop/conf"), (db, view / "data/shop/orders.db")]
    for original, image in art.roots():
        assert digest(image) == digest(original)
    assert subvolume_paths(fs) == {"data", "snaps/r1/data"}


def test_paths_on_two_subvolumes_take_two_snapshots(fs: LoopFs, snaps: Path) -> None:
    one = fill(subvolume(fs.mountpoint / "one"))
    two = fill(subvolume(fs.mountpoint / "two") / "inner")
    extra = fs.mountpoint / "etc.toml"  # on the top-level subvolume, through `paths`
    extra.write_text("x = 1\n")
    backend = make_backend(snaps, extra)
    backend.check()
    art = backend.run(context("r1", one, two / "orders.db"))

    view = snaps / "r1"
    assert sorted(p.name for p in view.iterdir()) == sorted(art.metadata["snapshots"])
    assert len(art.metadata["snapshots"]) == 3
    assert art.metadata["paths"] == [str(extra), str(one), str(two / "orders.db")]
    roots = dict(art.roots())
    assert roots[one] == view / "one"  # a subvolume root is its snapshot itself
    assert roots[two / "orders.db"] == view / "two/inner/orders.db"
    assert roots[extra].parent.parent == view and roots[extra].name == "etc.toml"
    for original, image in art.roots():
        assert digest(image) == digest(original)
    assert {"snaps/r1/one", "snaps/r1/two"} < subvolume_paths(fs)


def test_subvolumes_with_one_name_get_distinct_snapshots(fs: LoopFs, snaps: Path) -> None:
    a = fill(subvolume(subvolume(fs.mountpoint / "a") / "data"))
    b = fill(subvolume(subvolume(fs.mountpoint / "b") / "data"))
    art = (
        make_backend(snaps).run(context("r1", a / "orders.db", b / "orders.db"))
        if (snaps.mkdir() or True)
        else None
    )
    assert art is not None
    assert sorted(art.metadata["snapshots"]) == ["data", "data-2"]
    assert {digest(i) for _, i in art.roots()} == {digest(a / "orders.db"), digest(b / "orders.db")}


def test_the_snapshot_is_read_only(fs: LoopFs, snaps: Path) -> None:
    data = fill(subvolume(fs.mountpoint / "data"))
    backend = make_backend(snaps)
    backend.check()
    (_, image), *_ = backend.run(context("r1", data / "orders.db")).roots()
    with pytest.raises(OSError) as e:
        image.open("r+b")
    assert e.value.errno == errno.EROFS
    with pytest.raises(OSError) as e:
        (image.parent / "new").write_text("x")
    assert e.value.errno == errno.EROFS
    assert btrfs("property", "get", "-ts", snaps / "r1" / "data", "ro").strip() == "ro=true"


# -- completions: taken writable, sealed read-only -----------------------------------------


def completing_run(fs: LoopFs, snaps: Path) -> tuple[BtrfsBackend, Artifact, Path, Path]:
    """A run whose application completes ``data/orders.db`` into the view (an image of the
    live file at the snapshot until then), and ``dumps/new/all.sql`` that does not exist
    live; another subvolume holds the data path."""
    data = fill(subvolume(fs.mountpoint / "data"))
    other = fill(subvolume(fs.mountpoint / "other"))
    (data / "dumps").mkdir()
    backend = make_backend(snaps)
    backend.check()
    ctx = context("r1", other / "conf")
    completed = (data / "orders.db", data / "dumps" / "new" / "all.sql")
    art = backend.run(replace(ctx, completed_paths=completed))
    return backend, art, *completed


def test_a_run_with_completions_takes_writable_snapshots_that_seal_makes_read_only(
    fs: LoopFs, snaps: Path, tmp_path: Path
) -> None:
    backend, art, db, dump = completing_run(fs, snaps)
    assert sorted(art.metadata["snapshots"]) == ["data", "other"]
    for name in ("data", "other"):
        assert btrfs("property", "get", "-ts", snaps / "r1" / name, "ro").strip() == "ro=false"
    # where a completion writes: inside the snapshot of the subvolume that holds the path
    assert art.image(db) == snaps / "r1" / "data" / "orders.db"
    assert art.image(dump) == snaps / "r1" / "data" / "dumps" / "new" / "all.sql"
    art.image(db).write_bytes(b"completed")
    art.image(dump).parent.mkdir()
    art.image(dump).write_text("dump")
    art = replace(art, metadata={**art.metadata, "paths": [*art.metadata["paths"], str(db)]})
    with pytest.raises(FreezeframeError) as e:
        backend.verify(art)
    assert "r1/other was never sealed: it is still writable" in str(e.value)
    assert "\n" not in str(e.value)

    sealed = backend.seal(art)
    assert "writable" not in sealed.metadata
    for name in ("data", "other"):
        assert btrfs("property", "get", "-ts", snaps / "r1" / name, "ro").strip() == "ro=true"
    with pytest.raises(OSError) as err:
        art.image(db).write_bytes(b"later")
    assert err.value.errno == errno.EROFS
    assert backend.verify(sealed) is None
    backend.restore(sealed, tmp_path / "restore")
    assert restored(tmp_path / "restore", db).read_bytes() == b"completed"
    backend.delete(sealed)
    assert subvolume_paths(fs) == {"data", "other"}


def test_a_crashed_run_s_writable_snapshots_are_discarded(fs: LoopFs, snaps: Path) -> None:
    backend, _, _, _ = completing_run(fs, snaps)
    backend.discard("r1")
    assert subvolume_paths(fs) == {"data", "other"}
    assert not (snaps / "r1").exists()


# -- atomicity ------------------------------------------------------------------------------

SEQ = struct.Struct("<Q")
FILLERS = 500


class PairWriter(threading.Thread):
    """Writes n into ``a.seq``, fsyncs, writes n into ``z.seq``, fsyncs, for n = 1, 2, 3, ...

    The fsync orders the two files on disk: ``z.seq`` gets n only after
    ``a.seq``'s n is durable, and ``a.seq`` gets n + 1 only after ``z.seq``'s n
    is. So any image of the disk at one instant (a power cut, an atomic
    snapshot) holds ``a - z`` in {0, 1}. A copy made file by file reads
    ``a.seq`` first and ``z.seq`` only after the fillers between them (sorted
    names), by which time ``z.seq`` may have passed the ``a.seq`` it read.
    """

    def __init__(self, folder: Path) -> None:
        super().__init__(daemon=True)
        self.folder = folder
        self.stop = threading.Event()
        self.n = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        fds = [os.open(self.folder / name, os.O_RDWR) for name in ("a.seq", "z.seq")]
        try:
            while not self.stop.is_set():
                n = self.n + 1
                for fd in fds:
                    os.pwrite(fd, SEQ.pack(n), 0)
                    os.fsync(fd)
                self.n = n
        except BaseException as e:
            self.error = e
        finally:
            for fd in fds:
                os.close(fd)


def pair_folder(root: Path) -> Path:
    """``a.seq`` and ``z.seq`` at 0, with ``FILLERS`` small files sorted between them."""
    root.mkdir()
    for name in ("a.seq", "z.seq"):
        (root / name).write_bytes(SEQ.pack(0))
    (root / "m").mkdir()
    for i in range(FILLERS):
        (root / "m" / f"{i:04}").write_bytes(b"filler")
    return root


def snapshot_pairs(
    backend: BtrfsBackend | CloneBackend, data: Path, times: int
) -> list[tuple[int, int]]:
    """Snapshot ``data`` ``times`` times while a :class:`PairWriter` writes; the (a, z) of each."""
    writer = PairWriter(data)
    writer.start()
    pairs = []
    try:
        for i in range(times):
            before = writer.n
            while writer.n == before and writer.is_alive():  # one write at least between snapshots
                time.sleep(0.001)
            art = backend.run(context(f"r{i}", data))
            ((_, image),) = art.roots()
            a, z = (SEQ.unpack((image / name).read_bytes())[0] for name in ("a.seq", "z.seq"))
            pairs.append((a, z))
            backend.delete(art)
    finally:
        writer.stop.set()
        writer.join(30)
    assert writer.error is None
    return pairs


def test_a_snapshot_is_one_instant_of_every_file(fs: LoopFs, snaps: Path) -> None:
    data = pair_folder(subvolume(fs.mountpoint / "data") / "pair")
    backend = make_backend(snaps)
    backend.check()
    pairs = snapshot_pairs(backend, data, 30)
    torn = [(a, z) for a, z in pairs if a - z not in (0, 1)]
    assert not torn, f"snapshots caught a and z at different instants: {torn}"
    assert len({a for a, _ in pairs}) == len(pairs), "every snapshot must see a new write"
    assert any(a - z == 1 for a, z in pairs), "no snapshot fell between the two writes of a pair"
    assert not any((snaps).iterdir())


def test_the_same_check_catches_a_per_file_copy(fs: LoopFs, snaps: Path) -> None:
    """The check above can fail: the clone backend copies file by file, on the same data."""
    data = pair_folder(subvolume(fs.mountpoint / "data") / "pair")
    backend = CloneBackend("snap", Table({"dir": str(snaps)}, base_dir=snaps.parent))
    backend.check()
    pairs = snapshot_pairs(backend, data, 6)
    torn = [(a, z) for a, z in pairs if a - z not in (0, 1)]
    assert torn, f"a per-file copy of a live pair was never torn: {pairs}"
    assert all(z > a for a, z in torn), "a per-file copy reads z after a, so z runs ahead"


# -- delete, discard, verify ----------------------------------------------------------------


def test_delete_removes_the_snapshots_and_the_folder(fs: LoopFs, snaps: Path) -> None:
    one, two = fill(subvolume(fs.mountpoint / "one")), fill(subvolume(fs.mountpoint / "two"))
    backend = make_backend(snaps)
    backend.check()
    art = backend.run(context("r1", one, two))
    assert {"snaps/r1/one", "snaps/r1/two"} < subvolume_paths(fs)
    backend.delete(art)
    assert not (snaps / "r1").exists()
    assert subvolume_paths(fs) == {"one", "two"}
    backend.delete(art)  # gone already: not an error


def test_delete_refuses_to_remove_what_it_did_not_make(fs: LoopFs, snaps: Path) -> None:
    data = fill(subvolume(fs.mountpoint / "data"))
    backend = make_backend(snaps)
    backend.check()
    art = backend.run(context("r1", data))
    (snaps / "r1" / "notes.txt").write_text("mine")
    with pytest.raises(FreezeframeError, match="not a snapshot of freezeframe's"):
        backend.delete(art)
    assert (snaps / "r1" / "notes.txt").read_text() == "mine"


def test_delete_many_deletes_several_runs_and_names_the_one_it_could_not(
    fs: LoopFs, snaps: Path
) -> None:
    data = fill(subvolume(fs.mountpoint / "data"))
    backend = make_backend(snaps)
    backend.check()
    r1, r2, r3, r4 = (backend.run(context(f"r{i}", data)) for i in range(1, 5))
    (snaps / "r3" / "notes.txt").write_text("mine")
    errors = backend.delete_many([r1, r2, r3])
    assert list(errors) == ["r3"] and "not a snapshot of freezeframe's" in errors["r3"]
    assert sorted(p.name for p in snaps.iterdir()) == ["r3", "r4"]
    assert subvolume_paths(fs) == {"data", "snaps/r4/data"}
    assert backend.delete_many([r1, r2]) == {}  # gone already: not an error
    backend.verify(r4)


def test_it_writes_only_to_dir(tmp_path: Path) -> None:
    assert make_backend(tmp_path / "snaps").writes_to() == [tmp_path / "snaps"]


def test_discard_removes_what_a_crashed_run_left(fs: LoopFs, snaps: Path) -> None:
    data = fill(subvolume(fs.mountpoint / "data"))
    backend = make_backend(snaps)
    backend.check()
    # crashed before the rename: a partial folder with one snapshot in it
    (snaps / ".r1.partial").mkdir()
    btrfs("subvolume", "snapshot", "-r", data, snaps / ".r1.partial" / "data")
    # crashed after the rename, before the catalog recorded the artifact
    backend.run(context("r2", data))
    assert {"snaps/.r1.partial/data", "snaps/r2/data"} < subvolume_paths(fs)

    backend.discard("r1")
    backend.discard("r2")
    backend.discard("r3")  # nothing of it: not an error
    assert not any(snaps.iterdir())
    assert subvolume_paths(fs) == {"data"}


@pytest.fixture
def two_snapshots(fs: LoopFs, snaps: Path) -> tuple[BtrfsBackend, Artifact]:
    one = fill(subvolume(fs.mountpoint / "one"))
    two = fill(subvolume(fs.mountpoint / "two"))
    backend = make_backend(snaps)
    backend.check()
    return backend, backend.run(context("r1", one, two / "conf"))


def test_verify_passes_on_good_snapshots(two_snapshots: tuple[BtrfsBackend, Artifact]) -> None:
    backend, art = two_snapshots
    backend.verify(art)


def test_verify_fails_on_a_snapshot_made_writable(
    two_snapshots: tuple[BtrfsBackend, Artifact], snaps: Path
) -> None:
    backend, art = two_snapshots
    btrfs("property", "set", "-ts", snaps / "r1" / "two", "ro", "false")
    with pytest.raises(FreezeframeError, match=r"r1/two is not sealed read-only"):
        backend.verify(art)


def test_verify_fails_when_a_path_is_missing_from_a_snapshot(
    two_snapshots: tuple[BtrfsBackend, Artifact], snaps: Path
) -> None:
    backend, art = two_snapshots
    snap = snaps / "r1" / "two"
    btrfs("property", "set", "-ts", snap, "ro", "false")
    for p in (snap / "conf").iterdir():
        p.unlink()
    (snap / "conf").rmdir()
    btrfs("property", "set", "-ts", snap, "ro", "true")
    with pytest.raises(FreezeframeError, match=r"r1/two/conf is missing from the snapshot"):
        backend.verify(art)


def test_verify_fails_when_a_snapshot_is_gone(
    two_snapshots: tuple[BtrfsBackend, Artifact], snaps: Path
) -> None:
    backend, art = two_snapshots
    btrfs("subvolume", "delete", snaps / "r1" / "one")
    with pytest.raises(FreezeframeError, match=r"r1/one is missing"):
        backend.verify(art)
    backend.delete(art)
    with pytest.raises(FreezeframeError, match=r"r1 is gone"):
        backend.verify(art)


def test_restore_puts_every_path_under_target(
    two_snapshots: tuple[BtrfsBackend, Artifact], fs: LoopFs, tmp_path: Path
) -> None:
    backend, art = two_snapshots
    expected = {p: digest(p) for p, _ in art.roots()}
    (fs.mountpoint / "one" / "orders.db").write_bytes(b"changed after the snapshot")
    target = tmp_path / "restore"
    target.mkdir()
    got = backend.restore(art, target)
    assert got == [restored(target, p) for p in expected]
    for p, d in expected.items():
        assert digest(restored(target, p)) == d


def test_restore_gives_parents_inside_the_snapshot_their_owner_and_mode(
    fs: LoopFs, snaps: Path, tmp_path: Path
) -> None:
    app = subvolume(fs.mountpoint / "data") / "app"
    db = fill(app / "db") / "orders.db"
    for folder, mode in ((app, 0o750), (app / "db", 0o2770)):
        os.chown(folder, 12345, 23456)
        folder.chmod(mode)
    backend = make_backend(snaps)
    backend.check()
    art = backend.run(context("r1", db))
    target = tmp_path / "restore"
    target.mkdir()
    backend.restore(art, target)
    for folder, mode in ((app, 0o750), (app / "db", 0o2770)):
        st = restored(target, folder).stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (12345, 23456, mode)
    assert digest(restored(target, db)) == digest(db)


def test_special_files_in_a_snapshot_are_restored_only_when_asked(
    fs: LoopFs, snaps: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = fill(subvolume(fs.mountpoint / "data"))
    (data / "sh").write_bytes(b"#!/bin/sh\n")
    os.chmod(data / "sh", 0o4755)  # noqa: S103 - what is under test
    os.mkfifo(data / "fifo")
    os.mknod(data / "disk", 0o660 | stat.S_IFBLK, fs.mountpoint.stat().st_dev)
    backend = make_backend(snaps)
    backend.check()
    art = backend.seal(backend.run(context("r1", data)))  # as the engine does after the thaw

    plain = backend.restore(art, tmp_path / "plain")[0]
    asked = backend.restore(art, tmp_path / "asked", options=RestoreOptions(preserve_special=True))[
        0
    ]

    assert specials_below(plain) == []
    assert sorted(os.listdir(plain)) == ["conf", "orders.db", "sh"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "1 FIFO, 1 block device" in warnings[0]
    assert len(specials_below(asked)) == 3
    assert os.lstat(asked / "disk").st_rdev == fs.mountpoint.stat().st_dev
    assert stat.S_IMODE(os.lstat(asked / "sh").st_mode) == 0o4755


def test_a_tampered_snapshot_is_not_followed_out_of_the_target(
    two_snapshots: tuple[BtrfsBackend, Artifact], snaps: Path, tmp_path: Path
) -> None:
    backend, art = two_snapshots
    snap = snaps / "r1" / "one"
    outside = tmp_path / "outside"
    outside.mkdir()
    btrfs("property", "set", "-ts", snap, "ro", "false")
    shutil.rmtree(snap / "conf")
    (snap / "conf").symlink_to(outside)  # inside the image: restored as the link it is
    (snap / "orders.db").unlink()
    (snap / "orders.db").symlink_to(outside / "victim")

    with pytest.raises(FreezeframeError, match="not sealed read-only"):  # asked: verified first
        backend.restore(art, tmp_path / "asked", options=RestoreOptions(preserve_special=True))
    backend.restore(art, tmp_path / "restore")

    assert os.listdir(outside) == []  # nothing written through either link
    conf = restored(tmp_path / "restore", art.roots()[0][0]) / "conf"
    assert conf.is_symlink() and os.readlink(conf) == str(outside)
    assert specials_below(tmp_path / "restore") == []


# -- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize("fstype", ["xfs", "ext4"])
def test_a_data_path_on_another_filesystem_type_is_refused(
    loop_fs: LoopFsFactory, fs: LoopFs, snaps: Path, fstype: str
) -> None:
    other = loop_fs(fstype)
    data = fill(other.mountpoint / "data")
    backend = make_backend(snaps)
    backend.check()
    with pytest.raises(FreezeframeError) as e:
        backend.run(context("r1", data / "orders.db"))
    assert str(e.value) == (
        f"{data / 'orders.db'} is on {fstype}, not btrfs: a btrfs snapshot cannot hold it "
        "(the clone backend copies from any filesystem)"
    )
    assert not any(snaps.iterdir())


def test_dir_on_another_btrfs_filesystem_is_refused(
    loop_fs: LoopFsFactory, fs: LoopFs, snaps: Path
) -> None:
    data = fill(subvolume(fs.mountpoint / "data"))
    elsewhere = loop_fs("btrfs").mountpoint / "snaps"
    backend = make_backend(elsewhere)
    backend.check()
    with pytest.raises(FreezeframeError, match=r"is on another btrfs filesystem than dir"):
        backend.run(context("r1", data))
    assert not any(elsewhere.iterdir())


def test_check_refuses_dir_off_btrfs(loop_fs: LoopFsFactory) -> None:
    require_tool("btrfs")
    xfs = loop_fs("xfs")
    backend = make_backend(xfs.mountpoint / "a" / "snaps")
    with pytest.raises(FreezeframeError, match=r"snaps is on xfs, not btrfs"):
        backend.check()
    assert not (xfs.mountpoint / "a").exists(), "check must not create dir off btrfs"


def test_check_refuses_an_extra_path_off_btrfs(
    loop_fs: LoopFsFactory, fs: LoopFs, snaps: Path
) -> None:
    extra = loop_fs("ext4").mountpoint / "etc"
    extra.mkdir()
    with pytest.raises(FreezeframeError, match=r"etc is on ext4, not btrfs"):
        make_backend(snaps, extra).check()


def test_a_nested_subvolume_inside_a_data_path_is_refused(fs: LoopFs, snaps: Path) -> None:
    data = fill(subvolume(fs.mountpoint / "data") / "pg")
    nested = subvolume(data / "conf" / "wal")
    backend = make_backend(snaps)
    backend.check()
    with pytest.raises(FreezeframeError) as e:
        backend.run(context("r1", data))
    assert str(e.value).startswith(f"{data} contains {nested}, another subvolume or mount")
    assert not any(snaps.iterdir())
    # the nested subvolume itself, or a path beside it, is fine
    art = backend.run(context("r2", nested, data / "orders.db"))
    assert sorted(art.metadata["snapshots"]) == ["data", "wal"]


def test_dir_inside_a_data_path_is_refused(fs: LoopFs) -> None:
    data = fill(subvolume(fs.mountpoint / "data"))
    backend = make_backend(data / "snaps")
    backend.check()
    with pytest.raises(FreezeframeError, match="contain one another"):
        backend.run(context("r1", data))
    assert not any((data / "snaps").iterdir())


def test_a_missing_data_path_is_refused_before_any_snapshot(fs: LoopFs, snaps: Path) -> None:
    data = fill(subvolume(fs.mountpoint / "data"))
    backend = make_backend(snaps)
    backend.check()
    with pytest.raises(FreezeframeError, match=r"gone\.db does not exist"):
        backend.run(context("r1", data / "orders.db", data / "gone.db"))
    assert not any(snaps.iterdir())
    assert subvolume_paths(fs) == {"data"}


def test_nothing_to_snapshot_is_refused(fs: LoopFs, snaps: Path) -> None:
    backend = make_backend(snaps)
    backend.check()
    with pytest.raises(FreezeframeError, match="nothing to snapshot"):
        backend.run(context("r1"))
    assert not any(snaps.iterdir())


def test_cancel_after_the_first_snapshot_deletes_it(fs: LoopFs, snaps: Path) -> None:
    one, two = fill(subvolume(fs.mountpoint / "one")), fill(subvolume(fs.mountpoint / "two"))
    backend = make_backend(snaps)
    backend.check()
    ctx = context("r1", one, two)
    first = snaps / ".r1.partial" / "one"
    seen = threading.Event()

    def cancel_once_taken() -> None:
        deadline = time.monotonic() + 30
        while not first.exists() and time.monotonic() < deadline:
            time.sleep(0.0002)
        seen.set()
        ctx.cancel_event.set()

    watcher = threading.Thread(target=cancel_once_taken, daemon=True)
    watcher.start()
    with pytest.raises(Cancelled):
        backend.run(ctx)
    watcher.join(30)
    assert seen.is_set()
    assert not any(snaps.iterdir())
    assert subvolume_paths(fs) == {"one", "two"}


# -- through the engine ---------------------------------------------------------------------


def set_counter(db: Path, n: int) -> None:
    with sqlite3.connect(db, isolation_level=None) as c:
        c.execute("UPDATE counter SET n = ? WHERE id = 1", (n,))
    c.close()


def test_a_profile_with_btrfs_then_archive_backs_up_and_restores(
    fs: LoopFs, snaps: Path, tmp_path: Path, write_profile, registry: Registry
) -> None:
    db = make_counter_db(subvolume(fs.mountpoint / "shop") / "orders.db")
    profile = write_profile(f"""
        [profile]
        name = "shop"
        freeze_timeout = "10s"

        [[application]]
        plugin = "sqlite"
        name = "orders"
        path = "{db}"

        [[backup]]
        backend = "btrfs"
        name = "snap"
        dir = "{snaps}"
        keep = {{ last = 2 }}

        [[backup]]
        backend = "archive"
        name = "archive"
        dir = "{tmp_path / "archives"}"
    """)
    engine = Engine(load_profile(profile, registry), registry)
    runs = []
    for n in (11, 22, 33):
        set_counter(db, n)
        run = engine.backup().record
        assert run.status == RunStatus.SUCCEEDED, run.error
        runs.append(run)
    set_counter(db, 99)

    # retention kept the snapshots (and manifests) of the last two runs, deleted the first's
    kept = [name for r in runs[1:] for name in (r.run_id, f"{r.run_id}.manifest")]
    assert sorted(p.name for p in snaps.iterdir()) == sorted(kept)
    assert subvolume_paths(fs) == {"shop", *(f"snaps/{r.run_id}/shop" for r in runs[1:])}
    for stage in ("snap", "archive"):
        target = tmp_path / f"restore-{stage}"
        done = engine.restore(runs[2].run_id, target, stage=stage, verify=True)
        assert done.stage == stage and done.paths == [restored(target, db)]
        assert read_counter(restored(target, db)) == 33
    _, checked, problems, notes = engine.verify(runs[1].run_id)
    assert problems == [] and notes == {}  # the snapshot was sealed: its contents were read
    assert {s.name for s in checked if s.verified_at} == {"snap", "archive"}


# -- content digests: seal after the thaw, verify reads every byte --------------------------


def test_seal_writes_the_manifest_beside_the_run_and_verify_reads_it(
    two_snapshots: tuple[BtrfsBackend, Artifact], snaps: Path
) -> None:
    backend, art = two_snapshots
    sealed = backend.seal(art)
    recorded = sealed.metadata["manifest"]
    assert recorded["file"] == str(snaps / "r1.manifest")
    # all of "one" (orders.db, conf/ with three files) and the three files of "two/conf"
    assert (recorded["files"], recorded["bytes"]) == (1 + 3 + 3, (64 << 10) + 6 * 6)
    assert backend.verify(sealed) is None
    assert backend.verify(Artifact(sealed.id, metadata=sealed.metadata)) is None  # found by id


def test_verify_of_a_snapshot_made_before_manifests_says_contents_were_not_checked(
    two_snapshots: tuple[BtrfsBackend, Artifact], snaps: Path
) -> None:
    backend, art = two_snapshots
    assert backend.verify(art) == digests.UNSEALED
    with writable(snaps / "r1" / "one"):
        flip_byte(snaps, snaps / "r1" / "one" / "orders.db", Path("-"))
    assert backend.verify(art) == digests.UNSEALED  # what it cannot see, it says so


def test_delete_discard_and_retention_remove_the_manifest(fs: LoopFs, snaps: Path) -> None:
    data = fill(subvolume(fs.mountpoint / "data"))
    backend = make_backend(snaps)
    backend.check()
    r1, r2, r3, _ = (backend.seal(backend.run(context(f"r{i}", data))) for i in range(1, 5))
    (snaps / ".r4.manifest.partial").write_bytes(b"half")  # a crash while sealing

    backend.delete(r1)
    assert backend.delete_many([r2, r3]) == {}
    backend.discard("r4")

    assert list(snaps.iterdir()) == []
    assert subvolume_paths(fs) == {"data"}


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_verify_of_a_sealed_snapshot_names_what_was_damaged(
    two_snapshots: tuple[BtrfsBackend, Artifact], snaps: Path, damage: Damage
) -> None:
    """The regression of issue 10 (3): a present, read-only snapshot was enough."""
    backend, art = two_snapshots
    sealed = backend.seal(art)
    snapshot = snaps / "r1" / "one"
    with writable(snapshot):
        expected = damage(snaps / "r1", snapshot / "orders.db", snaps / "r1.manifest")
    with pytest.raises(FreezeframeError) as e:
        backend.verify(sealed)
    assert expected in str(e.value) and "\n" not in str(e.value)
