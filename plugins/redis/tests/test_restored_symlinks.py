"""prepare_restored never follows a symlink inside the restored tree (a crafted backup may
hold one where the AOF folder was)."""

from __future__ import annotations

from pathlib import Path

import pytest

from freezeframe import FreezeframeError, Table
from freezeframe_redis import RedisPlugin

MANIFEST = (
    "file appendonly.aof.1.base.rdb seq 1 type b\n"
    "file appendonly.aof.1.incr.aof seq 1 type h\n"
    "file appendonly.aof.2.incr.aof seq 2 type i\n"
)


def plugin(tmp_path: Path) -> RedisPlugin:
    """No server answers: the plug-in takes the data folder from ``dir``."""
    table = {"url": "redis://127.0.0.1:1", "dir": "/var/lib/redis"}
    return RedisPlugin("cache", Table(table, base_dir=tmp_path))


def aof_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "appendonly.aof.manifest").write_text(MANIFEST)
    for name in ("1.base.rdb", "1.incr.aof", "2.incr.aof"):
        (folder / f"appendonly.aof.{name}").write_bytes(b"x")
    return folder


def test_history_is_not_deleted_through_a_symlinked_aof_folder(tmp_path: Path) -> None:
    outside = aof_folder(tmp_path / "outside")
    root = tmp_path / "restore"
    data = root / "var" / "lib" / "redis"
    data.mkdir(parents=True)
    (data / "appendonlydir").symlink_to(outside)

    with pytest.raises(FreezeframeError, match=r"cache.*symlink"):
        plugin(tmp_path).prepare_restored(root)

    assert (outside / "appendonly.aof.1.incr.aof").exists()
    assert (outside / "appendonly.aof.manifest").read_text() == MANIFEST


def test_history_is_dropped_from_a_restored_aof(tmp_path: Path) -> None:
    root = tmp_path / "restore"
    folder = aof_folder(root / "var" / "lib" / "redis" / "appendonlydir")

    plugin(tmp_path).prepare_restored(root)

    assert not (folder / "appendonly.aof.1.incr.aof").exists()
    assert "type h" not in (folder / "appendonly.aof.manifest").read_text()
