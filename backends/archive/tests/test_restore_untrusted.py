"""Restoring archives nobody should trust: whoever can write the archive folder crafts them.

Nothing may appear outside the target, and no device node, FIFO or
setuid/setgid file inside it unless the user asks (``--preserve-special``),
and then only from an archive whose checksum matches, read from the very
file that is extracted.
"""

from __future__ import annotations

import logging
import os
import random
import stat
import tarfile
from pathlib import Path

import pytest

from freezeframe import Artifact, FreezeframeError, RestoreOptions, StageContext, Table
from freezeframe_archive import ArchiveBackend
from freezeframe_testing.crafted import (
    OpenSwapper,
    everything_below,
    member,
    specials_below,
    write_tar_zst,
)

SHELL = b"#!/bin/sh\nexec /bin/sh -p\n"
#: The block device holding this test's own files: the machine's disk, as in the review.
DISK = os.stat(__file__).st_dev


@pytest.fixture
def backend(tmp_path: Path) -> ArchiveBackend:
    backend = ArchiveBackend(
        "archive", Table({"dir": str(tmp_path / "archives")}, base_dir=tmp_path)
    )
    backend.check()
    return backend


@pytest.fixture
def target(tmp_path: Path) -> Path:
    path = tmp_path / "target"
    path.mkdir()
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder beside the target that a crafted archive aims at; it must stay as it is."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "precious").write_bytes(b"precious\n")
    return path


def untouched(outside: Path) -> bool:
    return everything_below(outside) == {"precious"} and (
        (outside / "precious").read_bytes() == b"precious\n"
    )


def refused(backend: ArchiveBackend, artifact: Artifact, target: Path, **options: bool) -> str:
    with pytest.raises(FreezeframeError) as e:
        backend.restore(artifact, target, options=RestoreOptions(**options))
    return str(e.value)


@pytest.mark.parametrize("preserve_special", [False, True])
@pytest.mark.parametrize(
    "links",
    [
        [("srv/a", "{outside}")],
        [("srv/a", "../../outside")],
        [("srv/a", "b"), ("srv/b", "{outside}")],  # a chain: neither link alone leaves
        [("srv/a", "."), ("srv/a/b", "{outside}")],  # a link to itself, then through it
    ],
    ids=["absolute", "relative", "chain", "self"],
)
def test_no_file_reaches_outside_through_a_symlink(
    backend: ArchiveBackend,
    tmp_path: Path,
    target: Path,
    outside: Path,
    links: list[tuple[str, str]],
    preserve_special: bool,
) -> None:
    members = [(member("srv", tarfile.DIRTYPE), None)]
    for name, to in links:
        members.append((member(name, tarfile.SYMTYPE, to.format(outside=outside)), None))
    members.append((member("srv/a/x", mode=0o4755), SHELL))
    artifact = write_tar_zst(tmp_path / "evil.tar.zst", members)

    why = refused(backend, artifact, target, preserve_special=preserve_special)

    assert "refusing" in why
    assert untouched(outside)
    assert specials_below(target) == []


@pytest.mark.parametrize(
    "name",
    ["/{outside}/abs", "srv/../../outside/x", "../outside/x", "srv/./../../outside/x"],
)
def test_absolute_and_dot_dot_names_are_refused(
    backend: ArchiveBackend, tmp_path: Path, target: Path, outside: Path, name: str
) -> None:
    members = [
        (member("srv", tarfile.DIRTYPE), None),
        (member(name.format(outside=str(outside).lstrip("/"))), b"evil"),
    ]
    artifact = write_tar_zst(tmp_path / "evil.tar.zst", members)

    assert "refusing" in refused(backend, artifact, target)
    assert untouched(outside)


@pytest.mark.parametrize(
    "linkname", ["{outside}/precious", "../outside/precious", "srv/later", "srv"]
)
def test_a_hard_link_only_to_a_file_restored_before_it(
    backend: ArchiveBackend, tmp_path: Path, target: Path, outside: Path, linkname: str
) -> None:
    members = [
        (member("srv", tarfile.DIRTYPE), None),
        (member("srv/pw", tarfile.LNKTYPE, linkname.format(outside=outside)), None),
        (member("srv/later"), b"x"),
    ]
    artifact = write_tar_zst(tmp_path / "evil.tar.zst", members)

    refused(backend, artifact, target)

    assert untouched(outside)
    assert os.stat(outside / "precious").st_nlink == 1


def attack(tmp_path: Path) -> Artifact:
    """A setuid-root shell, a world-writable block device of the machine's disk, a FIFO."""
    return write_tar_zst(
        tmp_path / "attack.tar.zst",
        [
            (member("srv", tarfile.DIRTYPE), None),
            (member("srv/sh", mode=0o4755), SHELL),
            (member("srv/disk", tarfile.BLKTYPE, mode=0o666, device=_split(DISK)), None),
            (member("srv/fifo", tarfile.FIFOTYPE, mode=0o666), None),
            (member("srv/data"), b"data\n"),
        ],
    )


def _split(dev: int) -> tuple[int, int]:
    return os.major(dev), os.minor(dev)


def test_special_files_are_left_out_with_one_warning(
    backend: ArchiveBackend, tmp_path: Path, target: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)

    backend.restore(attack(tmp_path), target)

    assert specials_below(target) == []
    assert sorted(os.listdir(target / "srv")) == ["data", "sh"]
    assert stat.S_IMODE((target / "srv" / "sh").stat().st_mode) == 0o755
    assert (target / "srv" / "sh").read_bytes() == SHELL
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "1 FIFO, 1 block device, 1 setuid/setgid file" in warnings[0]
    assert "--preserve-special" in warnings[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root makes device nodes")
def test_preserve_special_makes_them_from_a_verified_archive(
    backend: ArchiveBackend, tmp_path: Path, target: Path
) -> None:
    backend.restore(attack(tmp_path), target, options=RestoreOptions(preserve_special=True))

    disk, fifo, sh = (os.lstat(target / "srv" / n) for n in ("disk", "fifo", "sh"))
    assert stat.S_ISBLK(disk.st_mode) and disk.st_rdev == DISK
    assert stat.S_IMODE(disk.st_mode) == 0o666
    assert stat.S_ISFIFO(fifo.st_mode)
    assert stat.S_IMODE(sh.st_mode) == 0o4755 and sh.st_uid == 0


def test_preserve_special_makes_nothing_from_an_archive_whose_checksum_differs(
    backend: ArchiveBackend, tmp_path: Path, target: Path
) -> None:
    artifact = attack(tmp_path)
    # The attacker rewrites the archive; the checksum recorded is the genuine one's.
    genuine = dict(artifact.metadata, sha256="0" * 64)

    why = refused(backend, Artifact(artifact.id, metadata=genuine), target, preserve_special=True)

    assert "corrupt" in why
    assert os.listdir(target) == []


# -- the swap at open ------------------------------------------------------------------


def test_an_archive_swapped_the_instant_restore_opens_it_is_never_extracted(
    backend: ArchiveBackend, tmp_path: Path, target: Path
) -> None:
    """The review's attack: the genuine archive is replaced by a crafted one as soon as the
    restore opens it (inotify IN_OPEN). Reading the checksum and the members by name twice
    extracted the crafted one; from one descriptor, the genuine one is restored."""
    view = tmp_path / "view"
    (view / "srv").mkdir(parents=True)
    genuine = random.Random(1).randbytes(32 << 20)  # hashing it outlasts the swap
    (view / "srv" / "data").write_bytes(genuine)
    source = Artifact("snap", view=view, metadata={"paths": ["/srv"]})
    artifact = backend.run(StageContext("r1", "p", "archive", (Path("/srv"),), source=source))
    crafted = attack(tmp_path)
    path = Path(artifact.metadata["file"])

    with OpenSwapper(path, Path(crafted.metadata["file"])) as swapper:
        try:
            backend.restore(artifact, target, options=RestoreOptions(preserve_special=True))
        except FreezeframeError as e:
            assert "corrupt" in str(e) or "changed" in str(e)

    assert swapper.swapped.is_set(), "the swap never happened: the test proves nothing"
    assert specials_below(target) == []
    assert everything_below(target) in ({"srv", "srv/data"}, set())
    if (target / "srv" / "data").exists():
        assert (target / "srv" / "data").read_bytes() == genuine


def test_an_entry_for_the_target_itself_leaves_it_alone(
    backend: ArchiveBackend, tmp_path: Path, target: Path
) -> None:
    """``tar -C view .`` names the top folder ``./``: it is --to, whose mode stays the user's."""
    target.chmod(0o700)
    members = [(member("./", tarfile.DIRTYPE, mode=0o777), None), (member("./srv/x"), b"x")]

    backend.restore(write_tar_zst(tmp_path / "dot.tar.zst", members), target)

    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    assert (target / "srv" / "x").read_bytes() == b"x"
