"""Deliberately wrong application plug-ins: the negative controls of the consistency tests.

A consistency test that cannot tell a good backup from a skewed one proves
nothing. Each class here is a shipped plug-in with one mistake of the kind
that loses data by milliseconds; a consistency test backs up through it (its
``plugin = "..."`` kind) and must reject at least one of a few backups. They
live only in the test kit: register them with ``registry_with(mutants)``;
no shipped plug-in's code path knows of them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from freezeframe import Artifact, Deadline, hookimpl
from freezeframe_mariadb import MariadbPlugin
from freezeframe_postgresql import PostgresqlPlugin
from freezeframe_postgresql._wal import image_of, wal_image
from freezeframe_redis import RedisPlugin
from freezeframe_redis._persist import complete_aof, save_rdb
from freezeframe_sqlite import SqlitePlugin

__all__ = [
    "EarlyReleaseMariadb",
    "EarlyReleaseSqlite",
    "LateCaptureRedis",
    "ShortWalPostgresql",
    "StaleCaptureRedis",
]


class EarlyReleaseSqlite(SqlitePlugin):
    """SQLite whose write lock is released as soon as it was taken: before the snapshot."""

    kind = "sqlite-released-early"

    def quiesce(self, deadline: Deadline) -> None:
        """Take the lock and checkpoint, as the real one does; then let the writers in."""
        super().quiesce(deadline)
        super().unquiesce(())


class EarlyReleaseMariadb(MariadbPlugin):
    """MariaDB whose backup lock ends as soon as the binlog position was read: before the
    snapshot."""

    kind = "mariadb-released-early"

    def quiesce(self, deadline: Deadline) -> None:
        """Block commits and read the position, as the real one does; then let commits in."""
        super().quiesce(deadline)
        super().unquiesce(())


class LateCaptureRedis(RedisPlugin):
    """Redis un-paused as soon as it was paused, its data captured :attr:`LATE` s later."""

    kind = "redis-captured-late"
    LATE = 0.5

    def quiesce(self, deadline: Deadline) -> None:
        """Pause and capture, as the real one does; un-pause; capture again, late and live."""
        super().quiesce(deadline)
        super().unquiesce(())
        time.sleep(self.LATE)
        layout = self._layout
        assert layout is not None
        if layout.aof:
            complete_aof(self._server, layout, deadline, None)
        else:
            save_rdb(self._server, layout, deadline)


class StaleCaptureRedis(RedisPlugin):
    """Redis paused and saved, as the real one does; then its dump file is put back as it
    was before the quiesce (Redis's own last save): the capture of the instant is lost."""

    kind = "redis-capture-skipped"

    def quiesce(self, deadline: Deadline) -> None:
        """Quiesce as the real one does, then put the older dump file back."""
        older = {p: p.read_bytes() for p in self.data_paths() if p.is_file()}
        super().quiesce(deadline)
        for path, data in older.items():
            stale = path.with_name(f"{path.name}.stale")
            stale.write_bytes(data)
            os.replace(stale, path)


class ShortWalPostgresql(PostgresqlPlugin):
    """PostgreSQL whose per-file images lose the WAL segment that holds the backup's end."""

    kind = "postgresql-short-wal"

    def complete(self, snapshots: Sequence[Artifact]) -> None:
        """Complete each image as the real one does, then delete its last WAL segment."""
        super().complete(snapshots)
        last = str(self.describe().get("wal_files", "")).rpartition("..")[2]
        layout = self._layout
        for artifact in snapshots:
            image = image_of(artifact, layout.data_dir) if layout and last else None
            if layout is not None and image is not None:
                (wal_image(artifact, layout.data_dir, image) / last).unlink(missing_ok=True)


@hookimpl
def freezeframe_register_applications(register: Callable[[type[Any]], None]) -> None:
    """Register the mutants (only a test's own registry does)."""
    register(EarlyReleaseSqlite)
    register(EarlyReleaseMariadb)
    register(LateCaptureRedis)
    register(StaleCaptureRedis)
    register(ShortWalPostgresql)
