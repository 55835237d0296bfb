"""A restored data directory under a folder whose name a shell or a URI would misread.

``restore --to`` takes any folder; the check that starts a temporary server
on the copy passes its path to the postmaster as one argument, no shell between.
Only a control character is refused: postmaster.pid keeps the path on a line
of its own.
"""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

import pytest

from freezeframe import FreezeframeError
from freezeframe_postgresql import _restored
from freezeframe_testing.postgres_server import PG_USER, PostgresFactory


def _copy_for_postgres(data_dir: Path, dst: Path) -> Path:
    shutil.copytree(data_dir, dst, symlinks=True)
    if os.geteuid() == 0:
        pw = pwd.getpwnam(PG_USER)
        for folder, dirs, files in os.walk(dst):
            for name in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
                os.lchown(name, pw.pw_uid, pw.pw_gid)
    return dst


def test_a_copy_restored_under_an_odd_folder_starts_and_answers(
    postgres: PostgresFactory,
) -> None:
    server = postgres.new()
    server.sql("CREATE DATABASE shop TEMPLATE postgres")
    server.stop()
    root = postgres.folder("ffpg-odd-") / "restore #1? it's 100%41 ünï 数据 \"$`\\ x"
    root.mkdir()
    copy = _copy_for_postgres(server.data_dir, root / "-data")
    facts = _restored.start_and_query(copy, bin_dir=postgres.bindir, user=None, dbname="shop")
    assert facts["in_recovery"] is False and facts["databases"] == 2
    assert not (copy / "postmaster.pid").exists()  # stopped again


@pytest.mark.parametrize("char", ["\n", "\t", "\x7f"])
def test_a_control_character_is_refused_in_one_line(tmp_path: Path, char: str) -> None:
    odd = tmp_path / f"a{char}b"
    odd.mkdir()
    (odd / "PG_VERSION").write_text("15\n")
    if os.geteuid() == 0:
        os.chown(odd, pwd.getpwnam(PG_USER).pw_uid, -1)
    with pytest.raises(
        FreezeframeError, match="a server cannot be started on a path holding"
    ) as caught:
        _restored.start_and_query(odd, bin_dir=None, user=None, dbname=None)
    assert "\n" not in str(caught.value)
