"""Random tar streams against the archive restore: nothing is ever created outside the
target, and no special file or setid bit inside it unless asked.

Members of every type, named with ``..``, ``.``, empty components and leading
``/``, symlinks and hard links aimed at each other and at a folder beside the
target, modes with setuid/setgid bits, device nodes. A restore may refuse (one
:class:`FreezeframeError`); it may never raise anything else.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freezeframe import FreezeframeError, RestoreOptions, Table
from freezeframe_archive import ArchiveBackend
from freezeframe_testing.crafted import everything_below, member, specials_below, write_tar_zst

OUTSIDE = "\x00outside"  # stands for the folder beside the target, filled in per example

component = st.sampled_from(["a", "b", "c", "..", ".", "", "d e"])
relative = st.lists(component, min_size=1, max_size=4).map("/".join)
name = st.one_of(
    relative,
    relative.map(lambda n: f"{OUTSIDE}/{n}"),  # absolute, into the folder beside
    relative.map(lambda n: f"../{n}"),
)
link = st.one_of(
    relative,
    st.sampled_from([OUTSIDE, f"{OUTSIDE}/precious", "../outside", "../../outside/precious"]),
)
kinds = [
    tarfile.REGTYPE,
    tarfile.DIRTYPE,
    tarfile.SYMTYPE,
    tarfile.LNKTYPE,
    tarfile.FIFOTYPE,
    tarfile.CHRTYPE,
    tarfile.BLKTYPE,
]
one_member = st.tuples(
    name,
    st.sampled_from(kinds),
    link,
    st.one_of(st.integers(0, 0o7777), st.sampled_from([0o4755, 0o2755, 0o6777])),
    st.binary(max_size=32),
)


def _fill(text: str, outside: Path) -> str:
    return text.replace(OUTSIDE, str(outside))


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(members=st.lists(one_member, min_size=1, max_size=8), preserve_special=st.booleans())
def test_random_tar_streams_never_reach_outside_the_target(
    members: list[tuple[str, bytes, str, int, bytes]], preserve_special: bool
) -> None:
    sandbox = Path(tempfile.mkdtemp(prefix="ff-fuzz-"))
    try:
        outside, target = sandbox / "outside", sandbox / "target"
        outside.mkdir()
        (outside / "precious").write_bytes(b"precious\n")
        target.mkdir()
        entries = []
        for n, kind, to, mode, data in members:
            info = member(_fill(n, outside), kind, _fill(to, outside), mode=mode)
            if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
                info.devmajor, info.devminor = (1, 3) if kind == tarfile.CHRTYPE else (7, 0)
            entries.append((info, data if kind == tarfile.REGTYPE else None))
        artifact = write_tar_zst(sandbox / "a.tar.zst", entries)
        before = everything_below(sandbox)
        backend = ArchiveBackend("archive", Table({"dir": str(sandbox)}, base_dir=sandbox))

        with contextlib.suppress(FreezeframeError):  # refusing is fine; nothing else is
            backend.restore(artifact, target, options=RestoreOptions(preserve_special))

        after = {e for e in everything_below(sandbox) if e != "target"}
        assert {e for e in after if not e.startswith("target/")} == before - {"target"}
        assert (outside / "precious").read_bytes() == b"precious\n"
        assert os.stat(outside / "precious").st_nlink == 1
        if not preserve_special:
            assert specials_below(target) == []
    finally:
        shutil.rmtree(sandbox)
