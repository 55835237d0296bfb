"""Tests of the ``clone`` snapshot backend, on real files on the real filesystem.

This machine's ``/`` is ext4, which cannot reflink, so every test here takes the
``copy_file_range`` path; btrfs/XFS loop-device tests come later.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from freezeframe import (
    Artifact,
    Cancelled,
    ConfigError,
    FreezeframeError,
    RestoreOptions,
    StageContext,
    Table,
    digests,
)
from freezeframe.copying import FICLONE, outermost
from freezeframe_clone import CloneBackend
from freezeframe_testing.crafted import specials_below
from freezeframe_testing.damage import DAMAGES, Damage, flip_byte
from freezeframe_testing.plugin import need, restored
from freezeframe_testing.trees import (
    AS_ROOT,
    BIG,
    OWNER,
    SPARSE_HOLE,
    Tree,
    build_tree,
    set_times,
    state,
)

#: Sub-second mtimes in the tree, so a copy that drops nanoseconds shows it.
FRACTION_NS = 123_456_789

RUN = "20261129T093012Z-3fa2"


# -- a tree with every kind of entry -----------------------------------------------------


def can_reflink(folder: Path) -> bool:
    """Whether ``folder``'s filesystem accepts FICLONE."""
    a, b = folder / ".probe-a", folder / ".probe-b"
    a.write_bytes(b"probe")
    try:
        with open(a, "rb") as fin, open(b, "wb") as fout:
            fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
        return True
    except OSError:
        return False
    finally:
        a.unlink()
        b.unlink(missing_ok=True)


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return build_tree(tmp_path / "srv" / "shop", fraction_ns=FRACTION_NS)


@pytest.fixture
def snaps(tmp_path: Path) -> Path:
    return tmp_path / "snaps"


def make_backend(tmp_path: Path, **fields: Any) -> CloneBackend:
    backend = CloneBackend("snap", Table(fields, base_dir=tmp_path))
    backend.check()
    return backend


@pytest.fixture
def backend(tmp_path: Path, snaps: Path) -> CloneBackend:
    return make_backend(tmp_path, dir=str(snaps))


@pytest.fixture
def other_fs(tmp_path: Path) -> Iterator[Path]:
    """A folder on another filesystem (tmpfs) than ``tmp_path``: copy_file_range says EXDEV."""
    shm = Path("/dev/shm")
    need(
        shm.is_dir() and shm.stat().st_dev != tmp_path.stat().st_dev,
        "/dev/shm is not a filesystem of its own",
    )
    folder = Path(tempfile.mkdtemp(prefix="freezeframe-test-", dir=shm))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def context(*data_paths: Path, run_id: str = RUN, **kw: Any) -> StageContext:
    return StageContext(run_id, "nightly", "snap", data_paths=data_paths, **kw)


# -- snapshot and restore ------------------------------------------------------------------


def test_snapshot_copies_the_tree_under_its_absolute_path(
    backend: CloneBackend, tree: Tree, snaps: Path
) -> None:
    before = state(tree.root)

    artifact = backend.run(context(tree.root))

    assert artifact.id == RUN
    assert artifact.view == snaps / RUN
    assert state(artifact.view / tree.root.relative_to("/")) == before
    assert (artifact.files, artifact.bytes) == (tree.files, tree.bytes)
    assert artifact.metadata["paths"] == [str(tree.root)]
    assert state(tree.root) == before  # the source is only read
    assert sorted(os.listdir(snaps)) == [RUN]  # no partial copy left next to the view


def test_restore_puts_every_path_under_target_and_returns_them(
    backend: CloneBackend, tree: Tree, tmp_path: Path
) -> None:
    before = state(tree.root)
    artifact = backend.run(context(tree.root))
    target = tmp_path / "restore"
    target.mkdir()

    paths = backend.restore(artifact, target)

    assert paths == [target / tree.root.relative_to("/")]
    assert state(paths[0]) == before
    backend.verify(artifact)  # the view is untouched by a restore


def test_snapshot_and_restore_across_filesystems(
    tree: Tree, tmp_path: Path, other_fs: Path
) -> None:
    """copy_file_range refuses to cross filesystems; the copy must still be exact."""
    backend = make_backend(tmp_path, dir=str(other_fs / "snaps"))
    before = state(tree.root)

    artifact = backend.run(context(tree.root))
    paths = backend.restore(artifact, tmp_path / "restore")  # and back again

    assert artifact.metadata["method"] == "copied"
    assert (artifact.files, artifact.bytes) == (tree.files, tree.bytes)
    assert state(restored(artifact.view, tree.root)) == before
    assert state(paths[0]) == before
    backend.verify(artifact)


def test_a_single_file_data_path(backend: CloneBackend, tmp_path: Path) -> None:
    db = tmp_path / "srv" / "orders.db"
    db.parent.mkdir()
    db.write_bytes(b"SQLite format 3\x00" + bytes(4080))
    os.chmod(db, 0o640)
    os.utime(db, ns=(1_700_000_000_000_000_001, 1_700_000_000_000_000_001))
    before = state(db)

    artifact = backend.run(context(db))
    target = tmp_path / "restore"
    paths = backend.restore(artifact, target)

    assert state(restored(artifact.view, db)) == before
    assert paths == [restored(target, db)]
    assert state(paths[0]) == before
    assert (artifact.files, artifact.bytes) == (1, 4096)


def test_special_mode_bits_survive_snapshot_and_restore(
    backend: CloneBackend, tmp_path: Path
) -> None:
    root = tmp_path / "srv" / "modes"
    (root / "shared").mkdir(parents=True)
    (root / "tmp").mkdir()
    (root / "shared" / "group.db").write_bytes(b"g")
    (root / "suid").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "shared", 0o2770)  # noqa: S103 - odd modes are what is under test
    os.chmod(root / "tmp", 0o1777)  # noqa: S103 - odd modes are what is under test
    os.chmod(root / "shared" / "group.db", 0o664)
    os.chmod(root / "suid", 0o4755)  # noqa: S103 - odd modes are what is under test
    set_times(root, 5)
    before = state(root)

    artifact = backend.seal(backend.run(context(root)))  # as the engine does after the thaw
    options = RestoreOptions(preserve_special=True)
    paths = backend.restore(artifact, tmp_path / "restore", options=options)

    assert state(restored(artifact.view, root)) == before
    assert state(paths[0]) == before


# -- restoring a view nobody should trust (whoever can write dir may have changed it) -----


def test_a_folder_of_the_view_swapped_for_a_symlink_is_refused_not_followed(
    backend: CloneBackend, tree: Tree, tmp_path: Path
) -> None:
    artifact = backend.run(context(tree.root))
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "shop").mkdir(parents=True)
    (elsewhere / "shop" / "secret").write_bytes(b"not in the backup")
    image = restored(artifact.view, tree.root)
    shutil.rmtree(image)
    image.symlink_to(elsewhere / "shop")  # the image itself: restored as the link it is
    srv = image.parent
    os.rename(srv, tmp_path / "real-srv")
    srv.symlink_to(tmp_path / "real-srv")  # a folder above the image: refused

    with pytest.raises(FreezeframeError, match="symlink"):
        backend.restore(artifact, tmp_path / "restore")

    assert specials_below(tmp_path / "restore") == []
    assert not (tmp_path / "restore" / "srv" / "shop" / "secret").exists()


def test_devices_fifos_and_setid_bits_in_a_view_are_left_out_unless_asked(
    backend: CloneBackend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "srv" / "app"
    root.mkdir(parents=True)
    (root / "sh").write_bytes(b"#!/bin/sh\n")
    artifact = backend.seal(backend.run(context(root)))
    image = restored(artifact.view, root)
    os.chmod(image / "sh", 0o4755)  # noqa: S103 - what an attacker would do
    os.mkfifo(image / "fifo")
    if AS_ROOT:
        os.mknod(image / "disk", 0o666 | stat.S_IFBLK, os.stat(__file__).st_dev)

    paths = backend.restore(artifact, tmp_path / "restore")

    assert specials_below(paths[0]) == []
    assert sorted(os.listdir(paths[0])) == ["sh"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "--preserve-special" in warnings[0]

    # Asked for, they come only from a verified view: this one was changed after its seal.
    options = RestoreOptions(preserve_special=True)
    with pytest.raises(FreezeframeError, match="does not match its manifest"):
        backend.restore(artifact, tmp_path / "asked", options=options)
    assert not (tmp_path / "asked").exists() or specials_below(tmp_path / "asked") == []


def test_method_and_counts_say_how_the_files_were_copied(
    backend: CloneBackend, tree: Tree, tmp_path: Path
) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    for i in range(3):
        (plain / f"f{i}").write_bytes(b"x" * (i + 1))
    reflinks = can_reflink(tmp_path)

    only_files = backend.run(context(plain, run_id="r1"))
    full = backend.run(context(tree.root, run_id="r2"))

    # where reflink works this is about the other branch; both are checked the same way
    method, how, other = (
        ("cloned", "cloned_files", "copied_files")
        if reflinks
        else ("copied", "copied_files", "cloned_files")
    )
    assert only_files.metadata["method"] == method
    assert only_files.metadata[how] == only_files.files == 3
    assert only_files.metadata[other] == 0
    assert full.metadata["method"] == method
    # symlinks and second hard-link names are files, but no data was copied for them
    assert full.metadata[how] == tree.inodes
    assert full.metadata[other] == 0


def test_sparse_file_stays_sparse(backend: CloneBackend, tree: Tree) -> None:
    source = (tree.root / "sparse.img").stat()
    assert source.st_blocks * 512 < SPARSE_HOLE // 2  # the source really is sparse

    artifact = backend.run(context(tree.root))

    copy = (restored(artifact.view, tree.root) / "sparse.img").stat()
    assert copy.st_blocks * 512 < SPARSE_HOLE // 2


# -- which paths -------------------------------------------------------------------------


def test_roots_drops_duplicates_and_nested_paths() -> None:
    got = outermost(
        [
            Path("/srv/shop"),
            Path("/srv/shop/orders.db"),
            Path("/srv/shop"),
            Path("/srv/shop-logs"),  # a sibling whose name starts the same is not nested
            Path("/var/lib/../lib/pg/base"),
            Path("/var/lib/pg"),
            Path("/etc/shop.conf"),
        ]
    )
    assert got == [
        Path("/etc/shop.conf"),
        Path("/srv/shop"),
        Path("/srv/shop-logs"),
        Path("/var/lib/pg"),
    ]


def test_extra_paths_are_snapshotted_and_restored(tmp_path: Path, snaps: Path) -> None:
    tree = build_tree(tmp_path / "srv" / "shop", fraction_ns=FRACTION_NS)
    conf = tmp_path / "etc" / "shop.conf"
    conf.parent.mkdir()
    conf.write_bytes(b"[shop]\n")
    backend = make_backend(tmp_path, dir=str(snaps), paths=[str(conf)])
    before_tree, before_conf = state(tree.root), state(conf)

    artifact = backend.run(context(tree.root))
    paths = backend.restore(artifact, tmp_path / "restore")

    assert artifact.metadata["paths"] == [str(conf), str(tree.root)]
    assert (artifact.files, artifact.bytes) == (tree.files + 1, tree.bytes + 7)
    assert state(restored(artifact.view, conf)) == before_conf
    assert paths == [
        restored(tmp_path / "restore", conf),
        restored(tmp_path / "restore", tree.root),
    ]
    assert state(paths[0]) == before_conf
    assert state(paths[1]) == before_tree


def test_overlapping_paths_are_copied_once(tmp_path: Path, snaps: Path) -> None:
    tree = build_tree(tmp_path / "srv" / "shop", fraction_ns=FRACTION_NS)
    backend = make_backend(tmp_path, dir=str(snaps), paths=[str(tree.root)])

    artifact = backend.run(context(tree.root / "nested", tree.root, tree.root / "tiny.txt"))

    assert artifact.metadata["paths"] == [str(tree.root)]
    assert (artifact.files, artifact.bytes) == (tree.files, tree.bytes)


@pytest.mark.parametrize(
    ("paths", "snapshot_dir"),
    [
        (["srv"], "srv/.snapshots"),  # dir inside a path
        (["srv/shop"], "srv"),  # a path inside dir
        (["srv"], "srv"),
    ],
)
def test_paths_and_dir_containing_one_another_is_a_config_error(
    tmp_path: Path, paths: list[str], snapshot_dir: str
) -> None:
    (tmp_path / "srv" / "shop").mkdir(parents=True)
    table = Table({"dir": snapshot_dir, "paths": paths}, base_dir=tmp_path)
    with pytest.raises(ConfigError) as e:
        CloneBackend("snap", table)
    assert e.value.field == "paths"
    assert str(tmp_path / "srv") in e.value.message


def test_a_path_that_does_not_exist_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such.db"
    table = Table({"dir": str(tmp_path / "snaps"), "paths": [str(missing)]}, base_dir=tmp_path)
    with pytest.raises(ConfigError) as e:
        CloneBackend("snap", table)
    assert e.value.field == "paths"
    assert str(missing) in e.value.message


def test_dir_is_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        CloneBackend("snap", Table({}, base_dir=tmp_path))
    assert e.value.field == "dir"


def test_a_relative_dir_is_taken_from_the_profile_folder(tmp_path: Path) -> None:
    backend = CloneBackend("snap", Table({"dir": "snaps"}, base_dir=tmp_path))
    assert backend.dir == tmp_path / "snaps"


def test_run_refuses_a_data_path_that_holds_dir(tmp_path: Path) -> None:
    data = tmp_path / "srv"
    (data / "shop").mkdir(parents=True)
    (data / "shop" / "orders.db").write_bytes(b"x")
    backend = make_backend(tmp_path, dir=str(data / ".snapshots"))

    with pytest.raises(FreezeframeError, match="lies inside data path"):
        backend.run(context(data))

    assert list((data / ".snapshots").iterdir()) == []


# -- failures and cancellation leave nothing -----------------------------------------------


@pytest.mark.parametrize("after", ["bytes", "files"])
def test_cancel_mid_run_raises_cancelled_and_leaves_nothing(
    backend: CloneBackend, tree: Tree, snaps: Path, after: str
) -> None:
    cancel = threading.Event()
    seen: list[tuple[int, int]] = []

    def on_progress(done_bytes: int, done_files: int) -> None:
        seen.append((done_bytes, done_files))
        if (done_bytes if after == "bytes" else done_files) >= 3:
            cancel.set()

    with pytest.raises(Cancelled):
        backend.run(context(tree.root, cancel_event=cancel, on_progress=on_progress))

    assert cancel.is_set()
    assert seen[-1][0] < tree.bytes  # it stopped part-way, not at the end
    assert list(snaps.iterdir()) == []


def test_a_missing_data_path_fails_after_copying_others_and_leaves_nothing(
    backend: CloneBackend, tree: Tree, snaps: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "zzz" / "gone.db"  # sorts after the tree, so it fails mid-run
    ctx = context(tree.root, missing)

    with pytest.raises(FreezeframeError, match=f"{missing} does not exist"):
        backend.run(ctx)

    assert ctx.bytes_done == tree.bytes  # the tree had been copied
    assert list(snaps.iterdir()) == []


def test_a_source_file_vanishing_mid_copy_is_skipped_and_counted(
    backend: CloneBackend, tree: Tree, snaps: Path
) -> None:
    """As tar and pg_basebackup do: a file listed but gone before its copy (PostgreSQL in
    backup mode recycling WAL) is not an error; the artifact says how many vanished."""
    later = tree.root / "tiny.txt"  # sorts after big.bin, which is copied first

    def on_progress(done_bytes: int, done_files: int) -> None:
        later.unlink(missing_ok=True)

    artifact = backend.run(context(tree.root, on_progress=on_progress))
    assert artifact.metadata["vanished_files"] == 1
    assert artifact.view is not None
    assert not (artifact.view / later.relative_to("/")).exists()
    backend.verify(artifact)


def test_a_data_path_that_is_gone_fails_and_leaves_nothing(
    backend: CloneBackend, tree: Tree, snaps: Path
) -> None:
    with pytest.raises(FreezeframeError, match="does not exist"):
        backend.run(context(tree.root / "nowhere"))
    assert list(snaps.iterdir()) == []


# -- discard and delete --------------------------------------------------------------------


def test_discard_removes_what_a_crashed_run_left(
    backend: CloneBackend, tree: Tree, snaps: Path
) -> None:
    kept = backend.run(context(tree.root, run_id="older"))
    partial = snaps / f".{RUN}.partial"  # how run() names its copy in progress
    (partial / "srv" / "deep").mkdir(parents=True, mode=0o500)
    (partial / "srv" / "half.db").write_bytes(b"half")
    (partial / "srv" / "deep").chmod(0o500)

    backend.discard(RUN)

    assert sorted(os.listdir(snaps)) == ["older"]
    backend.verify(kept)
    backend.discard(RUN)  # nothing left to remove is fine


def test_discard_removes_the_view_of_a_run_never_recorded(
    backend: CloneBackend, tree: Tree, snaps: Path
) -> None:
    backend.run(context(tree.root))
    backend.discard(RUN)
    assert list(snaps.iterdir()) == []


def test_delete_removes_the_view_and_tolerates_it_gone(
    backend: CloneBackend, tree: Tree, snaps: Path
) -> None:
    kept = backend.run(context(tree.root, run_id="kept"))
    artifact = backend.run(context(tree.root))

    backend.delete(artifact)
    assert sorted(os.listdir(snaps)) == ["kept"]
    backend.delete(artifact)
    assert sorted(os.listdir(snaps)) == ["kept"]
    backend.verify(kept)
    assert state(restored(snaps / "kept", tree.root)) == state(tree.root)  # source untouched


# -- verify --------------------------------------------------------------------------------


def test_verify_passes_on_a_good_snapshot(backend: CloneBackend, tree: Tree) -> None:
    artifact = backend.run(context(tree.root))
    backend.verify(artifact)
    # as the catalog would give it back: without the view, found by id
    backend.verify(Artifact(artifact.id, artifact.bytes, artifact.files, None, artifact.metadata))


def _remove(p: Path) -> None:
    p.unlink()


def _truncate(p: Path) -> None:
    os.truncate(p, p.stat().st_size - 1)


def _extend(p: Path) -> None:
    with open(p, "ab") as f:
        f.write(b"!")


def _add_sibling(p: Path) -> None:
    (p.parent / "stray").write_bytes(b"")


@pytest.mark.parametrize(
    ("rel", "damage", "files", "size"),
    [
        ("tiny.txt", _remove, -1, -3),
        ("nested/data-link.db", _remove, -1, 0),  # its inode is still there
        ("link-abs", _remove, -1, 0),
        ("big.bin", _truncate, 0, -1),
        ("empty.bin", _extend, 0, +1),
        ("empty.bin", _add_sibling, +1, 0),
    ],
)
def test_verify_fails_on_a_damaged_snapshot(
    backend: CloneBackend,
    tree: Tree,
    rel: str,
    damage: Callable[[Path], None],
    files: int,
    size: int,
) -> None:
    artifact = backend.run(context(tree.root))
    damage(restored(artifact.view, tree.root) / rel)
    with pytest.raises(FreezeframeError) as e:
        backend.verify(artifact)
    assert f"holds {tree.files + files} files, {tree.bytes + size} bytes" in str(e.value)


def test_verify_fails_when_a_path_is_missing(backend: CloneBackend, tree: Tree) -> None:
    artifact = backend.run(context(tree.root))
    shutil.rmtree(restored(artifact.view, tree.root))
    with pytest.raises(FreezeframeError, match="is missing"):
        backend.verify(artifact)


def test_verify_fails_when_the_view_is_gone(backend: CloneBackend, tree: Tree) -> None:
    artifact = backend.run(context(tree.root))
    backend.delete(artifact)
    with pytest.raises(FreezeframeError, match="is gone"):
        backend.verify(artifact)


# -- progress ------------------------------------------------------------------------------


def test_progress_bytes_increase_to_the_tree_size(backend: CloneBackend, tree: Tree) -> None:
    seen: list[tuple[int, int]] = []
    artifact = backend.run(context(tree.root, on_progress=lambda b, f: seen.append((b, f))))

    done = [b for b, _ in seen]
    assert all(a <= b for a, b in itertools.pairwise(done))
    # big.bin, copied first, is reported part-way; every other non-empty file once at least
    assert any(0 < b < BIG for b in done)
    assert len(set(done)) >= tree.inodes  # 8 inodes: empty.bin reports nothing, big.bin twice
    assert done[-1] == tree.bytes == artifact.bytes


def test_progress_files_reach_the_artifact_files(backend: CloneBackend, tree: Tree) -> None:
    seen: list[tuple[int, int]] = []
    artifact = backend.run(context(tree.root, on_progress=lambda b, f: seen.append((b, f))))
    assert seen[-1][1] == artifact.files == tree.files


# -- bugs ----------------------------------------------------------------------------------


def test_verify_passes_on_a_snapshot_of_a_symlinked_path(tmp_path: Path, snaps: Path) -> None:
    real = tmp_path / "opt" / "shop"
    real.mkdir(parents=True)
    (real / "shop.conf").write_bytes(b"[shop]\n")
    link = tmp_path / "etc-shop"
    link.symlink_to(real)
    backend = make_backend(tmp_path, dir=str(snaps), paths=[str(link)])

    artifact = backend.run(context())

    assert os.readlink(restored(artifact.view, link)) == str(real)
    backend.verify(artifact)


def test_a_hard_link_between_two_data_paths_stays_one_file(
    backend: CloneBackend, tmp_path: Path
) -> None:
    a, b = tmp_path / "srv" / "a", tmp_path / "srv" / "b"
    a.mkdir(parents=True)
    b.mkdir()
    (a / "x.db").write_bytes(b"x" * 1000)
    os.link(a / "x.db", b / "x.db")

    artifact = backend.run(context(a, b))

    view_a, view_b = restored(artifact.view, a) / "x.db", restored(artifact.view, b) / "x.db"
    assert view_a.stat().st_ino == view_b.stat().st_ino
    assert artifact.bytes == 1000


def test_restore_gives_parent_dirs_their_original_owner_and_mode(
    backend: CloneBackend, tmp_path: Path
) -> None:
    parent = tmp_path / "srv" / "shop"
    (parent / "db").mkdir(parents=True)
    (parent / "db" / "orders.db").write_bytes(b"x")
    parent.chmod(0o750)
    if AS_ROOT:
        os.chown(parent, *OWNER)
    want = parent.stat()

    artifact = backend.run(context(parent / "db"))
    view_parent = restored(artifact.view, parent).stat()
    assert (view_parent.st_mode, view_parent.st_uid, view_parent.st_gid) == (
        want.st_mode,
        want.st_uid,
        want.st_gid,
    )
    backend.restore(artifact, tmp_path / "restore")

    got = restored(tmp_path / "restore", parent).stat()
    assert (got.st_mode, got.st_uid, got.st_gid) == (want.st_mode, want.st_uid, want.st_gid)


# -- content digests: seal after the thaw, verify reads every byte --------------------------


def test_seal_records_every_entry_and_verify_reads_them(
    backend: CloneBackend, tree: Tree, snaps: Path
) -> None:
    """Hard links, symlinks, a sparse file, empty files: all sealed, all verified."""
    artifact = backend.seal(backend.run(context(tree.root)))
    recorded = artifact.metadata["manifest"]
    assert recorded["file"] == str(snaps / f"{RUN}.manifest")
    assert recorded["bytes"] == tree.bytes  # each inode read once
    assert backend.verify(artifact) is None  # None: every byte was compared, nothing noted
    # as the catalog gives it back: found by id
    assert backend.verify(Artifact(artifact.id, view=None, metadata=artifact.metadata)) is None


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_verify_of_a_sealed_snapshot_names_what_was_damaged(
    backend: CloneBackend, tree: Tree, snaps: Path, damage: Damage
) -> None:
    artifact = backend.seal(backend.run(context(tree.root)))
    assert artifact.view is not None
    image = restored(artifact.view, tree.root) / "big.bin"
    expected = damage(artifact.view, image, snaps / f"{RUN}.manifest")
    with pytest.raises(FreezeframeError) as e:
        backend.verify(artifact)
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_verify_names_a_re_pointed_symlink_and_counts_the_rest(
    backend: CloneBackend, tree: Tree
) -> None:
    artifact = backend.seal(backend.run(context(tree.root)))
    view = restored(artifact.view, tree.root)
    link = view / "link-abs"
    target = os.readlink(link)
    link.unlink()
    link.symlink_to(target + ".other")
    for i in range(5):
        (view / f"stray-{i}").write_bytes(b"")
    with pytest.raises(FreezeframeError) as e:
        backend.verify(artifact)
    message = str(e.value)
    assert "link-abs changed (points to" in message
    assert message.endswith("(and 3 more)")  # 6 differences: 3 named, 3 counted


def test_verify_of_a_snapshot_made_before_manifests_says_contents_were_not_checked(
    backend: CloneBackend, tree: Tree
) -> None:
    artifact = backend.run(context(tree.root))  # never sealed: as before this release
    assert backend.verify(artifact) == digests.UNSEALED
    flip_byte(artifact.view, restored(artifact.view, tree.root) / "big.bin", Path("-"))
    assert backend.verify(artifact) == digests.UNSEALED  # what it cannot see, it says so


def test_delete_and_discard_remove_the_manifest(
    backend: CloneBackend, tree: Tree, snaps: Path
) -> None:
    deleted = backend.seal(backend.run(context(tree.root, run_id="deleted")))
    discarded = backend.seal(backend.run(context(tree.root, run_id="discarded")))
    (snaps / ".discarded.manifest.partial").write_bytes(b"half")  # a crash while sealing
    assert {p.name for p in snaps.iterdir()} >= {"deleted.manifest", "discarded.manifest"}

    backend.delete(deleted)
    backend.discard(discarded.id)

    assert list(snaps.iterdir()) == []
