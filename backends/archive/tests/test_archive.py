"""Tests of the ``archive`` copy backend, on real files, read back by the real tools.

The source view is built by hand, as a snapshot backend lays one out: every file
under its original absolute path (``view/srv/shop/...`` for ``/srv/shop``).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import shutil
import socket
import stat
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from freezeframe import (
    Artifact,
    Cancelled,
    ConfigError,
    FreezeframeError,
    RestoreOptions,
    StageContext,
    Table,
)
from freezeframe_archive import ArchiveBackend, _gnu_tar
from freezeframe_testing.crafted import member, write_tar_zst
from freezeframe_testing.plugin import require_tool
from freezeframe_testing.trees import (
    Tree,
    build_tree,
    flip_middle_byte,
    set_times,
    state,
    walk,
)

RUN = "20261129T093012Z-3fa2"
PROFILE = "nightly"
NAME = f"{PROFILE}-{RUN}.tar.zst"
PLAIN_SIZES = (1 << 20, 3 << 20, 2 << 20)


# -- a tree with every kind of entry (the same as the clone backend's tests) -------------


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture
def view(tmp_path: Path) -> Path:
    return tmp_path / "view"


@pytest.fixture
def tree(view: Path) -> Tree:
    return build_tree(view / "srv" / "shop")


@pytest.fixture
def source(view: Path, tree: Tree) -> Artifact:
    """The snapshot stage's artifact, as the core hands it to a copy stage."""
    return Artifact("snap-id", tree.bytes, tree.files, view=view, metadata={"paths": ["/srv/shop"]})


@pytest.fixture
def plain(view: Path) -> Artifact:
    """A snapshot of one folder of plain files, of whole MiBs (no links, no odd sizes)."""
    folder = view / "srv" / "plain"
    folder.mkdir(parents=True)
    for i, size in enumerate(PLAIN_SIZES):
        (folder / f"f{i}").write_bytes(random.Random(i).randbytes(size))
    return Artifact("snap-id", view=view, metadata={"paths": ["/srv/plain"]})


@pytest.fixture
def archives(tmp_path: Path) -> Path:
    return tmp_path / "archives"


def make_backend(tmp_path: Path, **fields: Any) -> ArchiveBackend:
    backend = ArchiveBackend("archive", Table(fields, base_dir=tmp_path))
    backend.check()
    return backend


@pytest.fixture
def backend(tmp_path: Path, archives: Path) -> ArchiveBackend:
    return make_backend(tmp_path, dir=str(archives))


@pytest.fixture
def target(tmp_path: Path) -> Path:
    """An empty restore target, as the core makes one."""
    path = tmp_path / "restore" / "target"
    path.mkdir(parents=True)
    return path


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Umask 0, so a private mode can only come from the backend itself."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def context(source: Artifact | None, *, run_id: str = RUN, **kw: Any) -> StageContext:
    return StageContext(
        run_id, PROFILE, "archive", data_paths=(Path("/srv/shop"),), source=source, **kw
    )


# -- the archive file ----------------------------------------------------------------------


@pytest.mark.usefixtures("open_umask")
def test_one_private_archive_named_for_profile_and_run(
    backend: ArchiveBackend, source: Artifact, tree: Tree, archives: Path
) -> None:
    artifact = backend.run(context(source))

    final = archives / NAME
    assert os.listdir(archives) == [NAME]  # no .partial left beside it
    assert stat.S_IMODE(final.stat().st_mode) == 0o600
    assert artifact.id == NAME
    assert artifact.view is None
    assert artifact.bytes == final.stat().st_size
    assert artifact.files == tree.files
    assert artifact.metadata["file"] == str(final)
    assert artifact.metadata["sha256"] == hashlib.sha256(final.read_bytes()).hexdigest()
    assert artifact.metadata["level"] == 3
    assert artifact.metadata["paths"] == ["/srv/shop"]


def test_restore_round_trip(
    backend: ArchiveBackend, source: Artifact, tree: Tree, target: Path
) -> None:
    before = state(tree.root, link_times=False)  # symlink times: see the xfail test below

    paths = backend.restore(backend.run(context(source)), target)

    assert paths == [target / "srv" / "shop"]
    assert os.listdir(target) == ["srv"]
    assert state(paths[0], link_times=False) == before


def test_restore_returns_every_recorded_path(
    backend: ArchiveBackend, view: Path, tree: Tree, target: Path
) -> None:
    conf = view / "etc" / "shop.conf"
    conf.parent.mkdir()
    conf.write_bytes(b"[shop]\n")
    source = Artifact("snap-id", view=view, metadata={"paths": ["/etc/shop.conf", "/srv/shop"]})

    artifact = backend.run(context(source))
    paths = backend.restore(artifact, target)

    assert artifact.metadata["paths"] == ["/etc/shop.conf", "/srv/shop"]
    assert paths == [target / "etc" / "shop.conf", target / "srv" / "shop"]
    assert paths[0].read_bytes() == b"[shop]\n"
    assert state(paths[1], link_times=False) == state(tree.root, link_times=False)


def test_images_kept_away_from_their_paths_are_named_by_the_original_paths(
    backend: ArchiveBackend, tmp_path: Path, target: Path
) -> None:
    # as btrfs keeps them: inside the snapshot, under names unlike the originals; every
    # character special to tar's --transform expressions is in a name
    snap = tmp_path / r"snap [1].*$^&\x;y"
    a_image, b_image = snap / "a", snap / r"b&\1"
    a_tree = build_tree(a_image)
    b_image.mkdir()
    (b_image / "db").write_bytes(b"b" * 3000)
    os.link(b_image / "db", b_image / "db-link")
    looks_like_a = str(a_image / "tiny.txt").removeprefix("/")  # as a member name would be
    os.symlink(looks_like_a, b_image / "to-image")  # but a symlink's target is never renamed
    # b's original lies inside a's image: a rule renaming a's image must not touch b's members
    b_original, a_original = a_image / "sub", Path("/zz/one [&]")
    source = Artifact(
        "snap-id",
        view=snap,
        metadata={
            "paths": [str(a_original), str(b_original)],
            "locations": {str(a_original): str(a_image), str(b_original): str(b_image)},
        },
    )
    before = {"a": state(a_tree.root, link_times=False), "b": state(b_image)}

    artifact = backend.run(context(source))
    paths = backend.restore(artifact, target)

    assert paths == [target / "zz" / "one [&]", target / b_original.relative_to("/")]
    assert state(paths[0], link_times=False) == before["a"]
    assert state(paths[1]) == before["b"]
    assert os.readlink(paths[1] / "to-image") == looks_like_a
    assert artifact.files == a_tree.files + 3


def test_the_zstd_and_tar_command_lines_read_it(
    backend: ArchiveBackend, source: Artifact, tree: Tree, tmp_path: Path
) -> None:
    zstd, tar = require_tool("zstd"), require_tool("tar")
    final = Path(backend.run(context(source)).metadata["file"])

    subprocess.run([zstd, "-q", "-t", str(final)], check=True, timeout=30)
    listing = subprocess.run(
        [tar, "--zstd", "-tf", str(final)], check=True, capture_output=True, text=True, timeout=30
    ).stdout.splitlines()
    out = tmp_path / "gnu"
    out.mkdir()
    # see the xfail test below for why directory times need --delay-directory-restore
    extract = [tar, "--zstd", "--delay-directory-restore", "-xf", str(final), "-C", str(out)]
    subprocess.run(extract, check=True, timeout=30)

    names = [n.removesuffix("/") for n in listing]
    assert "srv/shop/nested/a/b/deep.txt" in names
    assert not [n for n in names if n.startswith("/")]
    below = [f"srv/shop/{p.relative_to(tree.root).as_posix()}" for p in walk(tree.root)]
    assert sorted(names) == sorted(["srv/shop", *below])  # the path and all below, no parents
    assert state(out / "srv" / "shop") == state(tree.root)


def test_plain_gnu_tar_extraction_keeps_directory_times(
    backend: ArchiveBackend, source: Artifact, tree: Tree, tmp_path: Path
) -> None:
    tar = require_tool("tar")
    require_tool("zstd")
    final = Path(backend.run(context(source)).metadata["file"])
    out = tmp_path / "gnu"
    out.mkdir()

    subprocess.run([tar, "--zstd", "-xf", str(final), "-C", str(out)], check=True, timeout=30)

    assert state(out / "srv" / "shop") == state(tree.root)


def test_the_zstd_frame_carries_a_content_checksum(
    backend: ArchiveBackend, source: Artifact
) -> None:
    final = Path(backend.run(context(source)).metadata["file"])
    with open(final, "rb") as f:
        head = f.read(18)
    assert zstandard.get_frame_parameters(head).has_checksum


# -- verify --------------------------------------------------------------------------------


def test_verify_passes_then_catches_one_corrupted_byte(
    backend: ArchiveBackend, plain: Artifact
) -> None:
    artifact = backend.run(context(plain))
    backend.verify(artifact)

    flip_middle_byte(Path(artifact.metadata["file"]))

    with pytest.raises(FreezeframeError, match="is corrupt: its SHA-256"):
        backend.verify(artifact)


def test_verify_decompresses_the_archive_not_only_the_checksum(
    backend: ArchiveBackend, plain: Artifact
) -> None:
    artifact = backend.run(context(plain))
    backend.verify(artifact)  # sound before it is cut
    final = Path(artifact.metadata["file"])
    os.truncate(final, final.stat().st_size // 2)
    digest = hashlib.sha256(final.read_bytes()).hexdigest()
    recorded = Artifact(artifact.id, metadata={**artifact.metadata, "sha256": digest})

    with pytest.raises(FreezeframeError, match="cannot be read"):
        backend.verify(recorded)


def test_verify_passes_on_an_archive_with_symlinks_and_hard_links(
    backend: ArchiveBackend, source: Artifact
) -> None:
    backend.verify(backend.run(context(source)))


def test_verify_fails_when_the_archive_is_gone(backend: ArchiveBackend, source: Artifact) -> None:
    artifact = backend.run(context(source))
    backend.delete(artifact)
    with pytest.raises(FreezeframeError, match="is gone"):
        backend.verify(artifact)


# -- restore refuses --------------------------------------------------------------------


def test_restore_refuses_a_corrupted_archive_and_writes_nothing(
    backend: ArchiveBackend, source: Artifact, target: Path
) -> None:
    artifact = backend.run(context(source))
    flip_middle_byte(Path(artifact.metadata["file"]))

    with pytest.raises(FreezeframeError, match="is corrupt"):
        backend.restore(artifact, target)

    assert os.listdir(target) == []


@pytest.mark.parametrize("how", ["dot-dot", "through-a-symlink"])
def test_restore_refuses_a_member_escaping_target(
    backend: ArchiveBackend, tmp_path: Path, target: Path, how: str
) -> None:
    outside = target.parent / "outside"
    outside.mkdir()
    members = [(member("srv", tarfile.DIRTYPE), None), (member("srv/ok.txt"), b"ok")]
    if how == "dot-dot":
        members.append((member("srv/../../escaped.txt"), b"evil"))
    else:
        members.append((member("srv/out", tarfile.SYMTYPE, linkname=str(outside)), None))
        members.append((member("srv/out/escaped.txt"), b"evil"))
    artifact = write_tar_zst(tmp_path / "evil.tar.zst", members)

    with pytest.raises(FreezeframeError, match="refusing"):
        backend.restore(artifact, target)

    assert sorted(os.listdir(target.parent)) == ["outside", "target"]
    assert os.listdir(outside) == []


def test_restore_refuses_a_hard_link_to_a_file_outside_target(
    backend: ArchiveBackend, tmp_path: Path, target: Path
) -> None:
    victim = target.parent / "victim.txt"
    victim.write_bytes(b"precious\n")
    artifact = write_tar_zst(
        tmp_path / "evil.tar.zst",
        [
            (member("srv", tarfile.DIRTYPE), None),
            (member("srv/pw", tarfile.LNKTYPE, linkname=str(victim)), None),
            (member("srv/pw"), b"pwned\n"),
        ],
    )

    refused: FreezeframeError | None = None
    try:
        backend.restore(artifact, target)
    except FreezeframeError as e:
        refused = e

    assert victim.read_bytes() == b"precious\n", "restore wrote outside its target"
    assert refused is not None


# -- config --------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [0, -1, 23, 100, "3", 3.0, True])
def test_a_bad_level_is_a_config_error(tmp_path: Path, level: object) -> None:
    with pytest.raises(ConfigError) as e:
        ArchiveBackend("archive", Table({"dir": "a", "level": level}, base_dir=tmp_path))
    assert e.value.field == "level"


@pytest.mark.parametrize("level", [1, 22])
def test_levels_1_to_22_are_accepted(tmp_path: Path, level: int) -> None:
    backend = ArchiveBackend("archive", Table({"dir": "a", "level": level}, base_dir=tmp_path))
    assert backend.level == level


def test_the_level_is_used_and_recorded(tmp_path: Path, view: Path, archives: Path) -> None:
    text = view / "srv" / "words.txt"
    text.parent.mkdir(parents=True)
    rng = random.Random(2)
    words = [rng.choice(["orders", "ledger", "shop", "frozen", "backup"]) for _ in range(30000)]
    text.write_text(" ".join(words))
    source = Artifact("snap-id", view=view, metadata={"paths": ["/srv"]})

    fast = make_backend(tmp_path, dir=str(archives), level=1).run(context(source, run_id="r1"))
    small = make_backend(tmp_path, dir=str(archives), level=19).run(context(source, run_id="r2"))

    assert (fast.metadata["level"], small.metadata["level"]) == (1, 19)
    assert small.bytes < fast.bytes


def test_a_negative_thread_count_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        ArchiveBackend("archive", Table({"dir": "a", "threads": -2}, base_dir=tmp_path))
    assert e.value.field == "threads"


@pytest.fixture
def only_bsdtar_as_tar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """PATH finds libarchive's bsdtar under the name ``tar`` (as on systems without GNU tar)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tar").symlink_to(require_tool("bsdtar"))
    monkeypatch.setenv("PATH", str(bin_dir))
    _gnu_tar.cache_clear()
    yield
    _gnu_tar.cache_clear()


@pytest.mark.usefixtures("only_bsdtar_as_tar")
def test_check_refuses_a_tar_that_is_not_gnu_tar(tmp_path: Path) -> None:
    backend = ArchiveBackend("archive", Table({"dir": "a"}, base_dir=tmp_path))
    with pytest.raises(FreezeframeError) as e:
        backend.check()
    message = str(e.value)
    assert message.startswith(f"{tmp_path}/bin/tar is bsdtar ")  # its own --version line
    assert message.endswith("; archive needs GNU tar 1.28+")
    assert "\n" not in message


def test_dir_is_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        ArchiveBackend("archive", Table({}, base_dir=tmp_path))
    assert e.value.field == "dir"


@pytest.mark.parametrize("has_source", [False, True])
def test_run_needs_a_source_with_a_view(
    backend: ArchiveBackend, archives: Path, has_source: bool
) -> None:
    source = Artifact("btrfs-subvolume-id") if has_source else None
    with pytest.raises(FreezeframeError, match="needs a source stage with a view"):
        backend.run(context(source))
    assert os.listdir(archives) == []


# -- failures and cancellation leave nothing -----------------------------------------------


@pytest.mark.parametrize("after", ["bytes", "files"])
def test_cancel_mid_run_raises_cancelled_and_leaves_nothing(
    backend: ArchiveBackend, source: Artifact, tree: Tree, archives: Path, after: str
) -> None:
    cancel = threading.Event()
    seen: list[tuple[int, int]] = []

    def on_progress(done_bytes: int, done_files: int) -> None:
        seen.append((done_bytes, done_files))
        if (done_bytes if after == "bytes" else done_files) >= 3:
            cancel.set()

    with pytest.raises(Cancelled):
        backend.run(context(source, cancel_event=cancel, on_progress=on_progress))

    assert seen[-1][1] < tree.files  # it stopped part-way, not at the end
    assert os.listdir(archives) == []


@pytest.mark.parametrize("content", ["files", "an empty folder"])
def test_a_run_cancelled_before_it_starts_writes_nothing(
    backend: ArchiveBackend, view: Path, archives: Path, content: str
) -> None:
    folder = view / "srv" / "shop"
    folder.mkdir(parents=True)
    if content == "files":
        (folder / "orders.db").write_bytes(b"x" * 100)
    source = Artifact("snap-id", view=view, metadata={"paths": ["/srv/shop"]})
    cancel = threading.Event()
    cancel.set()

    with pytest.raises(Cancelled):
        backend.run(context(source, cancel_event=cancel))

    assert os.listdir(archives) == []


def test_a_source_file_vanishing_mid_run_fails_and_leaves_nothing(
    backend: ArchiveBackend, source: Artifact, tree: Tree, archives: Path
) -> None:
    later = tree.root / "tiny.txt"  # archived after big.bin, whose reads report progress

    def on_progress(done_bytes: int, done_files: int) -> None:
        later.unlink(missing_ok=True)

    with pytest.raises(FreezeframeError, match=r"srv/shop/tiny\.txt: File removed before we read"):
        backend.run(context(source, on_progress=on_progress))

    assert os.listdir(archives) == []


def test_a_missing_source_image_fails_and_leaves_nothing(
    backend: ArchiveBackend, tmp_path: Path, archives: Path
) -> None:
    gone = Artifact("snap-id", view=tmp_path / "deleted-snapshot", metadata={"paths": ["/srv"]})
    with pytest.raises(
        FreezeframeError, match=r"deleted-snapshot/srv \(the image of /srv\) is missing"
    ):
        backend.run(context(gone))
    assert os.listdir(archives) == []


def test_a_folder_vanishing_mid_run_fails_the_run(
    backend: ArchiveBackend, source: Artifact, tree: Tree, archives: Path
) -> None:
    nested = tree.root / "nested"  # in the listing tar made of srv/shop; read after big.bin

    def on_progress(done_bytes: int, done_files: int) -> None:
        if nested.exists():
            shutil.rmtree(nested)

    with pytest.raises(FreezeframeError, match=r"srv/shop/nested: File removed before we read"):
        backend.run(context(source, on_progress=on_progress))

    assert os.listdir(archives) == []


def test_a_socket_in_the_view_is_skipped(
    backend: ArchiveBackend, source: Artifact, tree: Tree, target: Path
) -> None:
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tree.root / "mysql.sock"))
        artifact = backend.run(context(source))
    finally:
        sock.close()

    assert artifact.files == tree.files
    backend.restore(artifact, target)
    assert not (target / "srv" / "shop" / "mysql.sock").exists()


# -- discard and delete --------------------------------------------------------------------


def test_discard_removes_the_partial_file_of_a_crashed_run(
    backend: ArchiveBackend, source: Artifact, archives: Path
) -> None:
    kept = backend.run(context(source, run_id="older"))
    (archives / f".{NAME}.partial").write_bytes(b"(half an archive)")  # as run() names it
    other = archives / f".{PROFILE}-other-run.tar.zst.partial"
    other.write_bytes(b"(another run's)")

    backend.discard(RUN)

    assert sorted(os.listdir(archives)) == [other.name, f"{PROFILE}-older.tar.zst"]
    backend.verify_checksum(kept)
    backend.discard(RUN)  # nothing left to remove is fine


def test_discard_without_the_dir_is_fine(tmp_path: Path) -> None:
    backend = ArchiveBackend("archive", Table({"dir": "never-made"}, base_dir=tmp_path))
    backend.discard(RUN)
    assert not (tmp_path / "never-made").exists()


def test_discard_removes_a_finished_archive_the_catalog_never_recorded(
    backend: ArchiveBackend, source: Artifact, archives: Path
) -> None:
    backend.run(context(source))  # the process dies before the core records the artifact
    backend.discard(RUN)
    assert os.listdir(archives) == []


def test_delete_removes_the_archive_and_tolerates_it_gone(
    backend: ArchiveBackend, source: Artifact, archives: Path, tmp_path: Path
) -> None:
    kept = backend.run(context(source, run_id="kept"))
    artifact = backend.run(context(source))

    backend.delete(artifact)
    assert os.listdir(archives) == [f"{PROFILE}-kept.tar.zst"]
    backend.delete(artifact)
    assert os.listdir(archives) == [f"{PROFILE}-kept.tar.zst"]
    backend.verify_checksum(kept)

    elsewhere = ArchiveBackend("archive", Table({"dir": "never-made"}, base_dir=tmp_path))
    elsewhere.delete(Artifact(NAME))  # neither the file nor its dir exists


# -- progress ------------------------------------------------------------------------------


def test_progress_comes_file_by_file_as_tar_goes(backend: ArchiveBackend, plain: Artifact) -> None:
    seen: list[tuple[int, int]] = []

    artifact = backend.run(context(plain, on_progress=lambda b, f: seen.append((b, f))))

    # each file counts whole, with its size, when tar reaches it: every report is a prefix
    whole = [sum(PLAIN_SIZES[:n]) for n in range(len(PLAIN_SIZES) + 1)]
    assert all(done == whole[files] for done, files in seen)
    assert all(a <= b for a, b in itertools.pairwise(seen))
    assert len(set(seen)) > 1  # during the run, not only once at the end
    assert seen[-1] == (sum(PLAIN_SIZES), len(PLAIN_SIZES)) == (sum(PLAIN_SIZES), artifact.files)


def test_progress_bytes_sum_to_the_tree_size(
    backend: ArchiveBackend, source: Artifact, tree: Tree
) -> None:
    seen: list[tuple[int, int]] = []
    artifact = backend.run(context(source, on_progress=lambda b, f: seen.append((b, f))))

    done = [b for b, _ in seen]
    assert all(a <= b for a, b in itertools.pairwise(done))
    assert seen[-1] == (tree.bytes, artifact.files)


# -- fidelity ------------------------------------------------------------------------------


def test_restore_keeps_mtimes_to_the_nanosecond(
    backend: ArchiveBackend, source: Artifact, tree: Tree, target: Path
) -> None:
    set_times(tree.root, 123_456_789)
    before = state(tree.root, link_times=False)

    paths = backend.restore(backend.run(context(source)), target)

    assert state(paths[0], link_times=False) == before


def test_restore_keeps_symlink_mtimes(
    backend: ArchiveBackend, source: Artifact, tree: Tree, target: Path
) -> None:
    before = state(tree.root)
    paths = backend.restore(backend.run(context(source)), target)
    assert state(paths[0]) == before


def test_restore_keeps_special_mode_bits(backend: ArchiveBackend, view: Path, target: Path) -> None:
    root = view / "srv" / "modes"
    (root / "shared").mkdir(parents=True)
    (root / "tmp").mkdir()
    (root / "shared" / "group.db").write_bytes(b"g")
    (root / "suid").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "shared", 0o2770)  # noqa: S103 - odd modes are what is under test
    os.chmod(root / "tmp", 0o1777)  # noqa: S103 - odd modes are what is under test
    os.chmod(root / "shared" / "group.db", 0o664)
    os.chmod(root / "suid", 0o4755)  # noqa: S103 - odd modes are what is under test
    set_times(root, 0)
    before = state(root)
    source = Artifact("snap-id", view=view, metadata={"paths": ["/srv/modes"]})

    options = RestoreOptions(preserve_special=True)
    paths = backend.restore(backend.run(context(source)), target, options=options)

    assert state(paths[0]) == before


def test_restore_drops_setuid_bits_with_one_warning_unless_asked(
    backend: ArchiveBackend, view: Path, target: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = view / "srv" / "modes"
    root.mkdir(parents=True)
    for name in ("suid", "sgid"):
        (root / name).write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "suid", 0o4755)  # noqa: S103 - odd modes are what is under test
    os.chmod(root / "sgid", 0o2755)  # noqa: S103 - odd modes are what is under test
    source = Artifact("snap-id", view=view, metadata={"paths": ["/srv/modes"]})

    paths = backend.restore(backend.run(context(source)), target)

    assert stat.S_IMODE((paths[0] / "suid").stat().st_mode) == 0o755
    assert stat.S_IMODE((paths[0] / "sgid").stat().st_mode) == 0o755
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "2 setuid/setgid files" in warnings[0] and "--preserve-special" in warnings[0]
