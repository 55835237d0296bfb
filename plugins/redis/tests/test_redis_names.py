"""The redis plug-in on a server whose AOF files have names Redis must quote.

Redis 7 writes its AOF manifest the way it reads its config: a file name
with a space, a quote or a byte outside printable ASCII is quoted, such bytes
escaped as ``\\xHH`` (``file "my aof \\xc3\\xa9.aof.1.base.rdb" seq 1 type b``).
Read with ``shlex``, that name named no file and every quiesce failed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from freezeframe import Deadline, SnapshotKind, Table
from freezeframe_redis import RedisPlugin
from freezeframe_redis._layout import read_manifest, split_args
from freezeframe_testing.redis_server import RedisServer, redis_quote

#: An appendfilename with a space, a quote, '#', '?', '%' and non-ASCII letters.
ODD = "my 'aof' #1?%41 ünï数据.aof"


@pytest.mark.parametrize(
    ("line", "tokens"),
    [
        (b"file appendonly.aof.1.base.rdb seq 1 type b", [b"file", b"appendonly.aof.1.base.rdb"]),
        (
            b'file "my aof \\xc3\\xa9.aof.1.incr.aof" seq 2',
            [b"file", "my aof é.aof.1.incr.aof".encode()],
        ),
        (b'file "a \\"q\\" \\\\ b" x', [b"file", b'a "q" \\ b', b"x"]),
        (b"file 'it\\'s' x", [b"file", b"it's", b"x"]),
    ],
)
def test_manifest_lines_split_as_redis_splits_them(line: bytes, tokens: list[bytes]) -> None:
    assert split_args(line)[: len(tokens)] == tokens


def test_an_unbalanced_quote_is_refused() -> None:
    with pytest.raises(ValueError, match="unbalanced"):
        split_args(b'file "open')


def test_an_aof_with_an_odd_name_is_quiesced_and_complete(
    tmp_path: Path, redis_server: Callable[..., RedisServer]
) -> None:
    data = tmp_path / 'redis #1? it\'s "q" -dir ünï'
    config = [f"appendfilename {redis_quote(ODD)}"]
    server = redis_server(data_dir=data, persistence="aof", config=config)
    client = server.client()
    for i in range(100):
        client.set(f"k{i}", i)
    p = RedisPlugin("cache", Table({"url": f"unix://{server.socket}"}, base_dir=tmp_path))
    p.check()
    p.prepare(frozenset(SnapshotKind))
    p.quiesce(Deadline.after(10))
    try:
        (aof_dir,) = p.data_paths()
        facts = p.describe()
    finally:
        p.unquiesce(())
    names = sorted(os.listdir(aof_dir))
    assert f"{ODD}.manifest" in names
    listed = [f.name for f in read_manifest(aof_dir / f"{ODD}.manifest")]
    assert listed and all(name in names and name.startswith(ODD) for name in listed)
    assert sorted(facts["files"]) == sorted(listed)
    # restored under a root, and loaded by a temporary redis-server given these names
    root = tmp_path / "restore #2?"
    shutil.copytree(aof_dir, root / aof_dir.relative_to("/"))
    p.prepare_restored(root)
    p.verify_restored(root)
