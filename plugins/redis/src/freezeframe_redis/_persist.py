"""Making the files on disk complete while writes are paused, and checking that they stayed so.

RDB: a ``BGSAVE`` after any save already under way (Redis writes
``temp-<pid>.rdb``, fsyncs it, renames it over the dump, fsyncs the folder);
in the logical capture only its fork is inside the window, and the dump it
writes is opened after the thaw, once no other save can have replaced it.
AOF: no rewrite running or due, Redis's AOF buffer written, and every file
the manifest lists fsync'd by us. Each function returns facts for the run
record and raises :class:`~freezeframe.QuiesceError` (or the connection's
:class:`ServerError`) with a message that names the server.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from freezeframe.plugin import (
    Artifact,
    Deadline,
    FreezeframeError,
    QuiesceError,
)
from freezeframe_redis._keys import keyspace
from freezeframe_redis._layout import Layout, fsync_path
from freezeframe_redis._server import Server, ServerError

__all__ = [
    "Fork",
    "complete_aof",
    "fork_rdb",
    "incomplete_aof_images",
    "no_child",
    "open_forked_dump",
    "rewrite_due",
    "save_rdb",
    "window_state",
]


def no_child(info: Mapping[str, Any]) -> bool:
    """No background save, AOF rewrite or module fork is running."""
    return not any(
        info.get(k)
        for k in ("rdb_bgsave_in_progress", "aof_rewrite_in_progress", "module_fork_in_progress")
    )


def _no_rewrite(info: Mapping[str, Any]) -> bool:
    """No AOF rewrite is running or waiting to run."""
    return not info.get("aof_rewrite_in_progress") and not info.get("aof_rewrite_scheduled")


@dataclass(frozen=True)
class Fork:
    """A ``BGSAVE`` that has forked: its child's image of the data is fixed."""

    #: ``rdb_saves`` just before it: its dump is the next save, ``saves + 1``.
    saves: int
    #: When BGSAVE was sent: ``time.monotonic()`` and ``time.time()``.
    began: float
    wall: float
    #: How long the window waited for a child already running before it.
    wait_ms: float


def fork_rdb(server: Server, deadline: Deadline) -> Fork:
    """BGSAVE after any save or rewrite already running; returns once Redis has forked
    (its reply)."""
    waited = time.monotonic()
    while True:
        info = server.wait("saving in the background (BGSAVE, AOF rewrite)", no_child, deadline)
        began, wall = time.monotonic(), time.time()
        try:
            server.call("BGSAVE")
            break
        except ServerError as e:
            text = str(e).lower()
            if e.reason == "response" and ("in progress" in text or "child process" in text):
                continue  # another save started between our look and our BGSAVE
            raise QuiesceError(f"{e} (see the Redis log)") from None
    return Fork(int(info.get("rdb_saves", -1)), began, wall, round((began - waited) * 1000, 1))


def _saved(server: Server, info: Mapping[str, Any], wall: float, error: type[Exception]) -> None:
    """Raise ``error`` unless the last background save, begun at ``wall``, succeeded."""
    where = f"Redis at {server.endpoint.where}"
    if info.get("rdb_last_bgsave_status") != "ok":
        raise error(
            f"{where}: BGSAVE failed (rdb_last_bgsave_status:"
            f"{info.get('rdb_last_bgsave_status')}): see the Redis log (disk full? "
            "data folder not writable? the save process killed?)"
        )
    if int(info.get("rdb_last_save_time", 0)) < int(wall):
        raise error(f"{where}: BGSAVE ended without writing a dump")


def _written_since(server: Server, dump: Path, mtime: float, wall: float, why: str) -> None:
    """A dump last written before its BGSAVE began is not its dump: ``dir`` is wrong."""
    if mtime < wall - 1:
        raise QuiesceError(
            f"Redis at {server.endpoint.where}: BGSAVE succeeded but {dump} is not its dump "
            f"({why}): is dir the server's data folder as this machine sees it?"
        )


def save_rdb(server: Server, layout: Layout, deadline: Deadline) -> dict[str, Any]:
    """BGSAVE after any save already running; wait for it; make sure it wrote our file."""
    fork = fork_rdb(server, deadline)
    info = server.wait(
        "writing its dump (BGSAVE)", lambda i: not i.get("rdb_bgsave_in_progress"), deadline
    )
    facts: dict[str, Any] = {
        "wait_ms": fork.wait_ms,
        "bgsave_ms": round((time.monotonic() - fork.began) * 1000, 1),
    }
    _saved(server, info, fork.wall, QuiesceError)
    dump = (layout.find_dump() if layout.whole_dir else layout).dump
    try:
        mtime = dump.stat().st_mtime
    except OSError as e:
        mtime, why = 0.0, str(e.strerror)
    else:
        why = f"it was last written {time.time() - mtime:.0f}s ago"
    _written_since(server, dump, mtime, fork.wall, why)
    facts.update(files=[dump.name], bytes=dump.stat().st_size)
    if "rdb_saves" in info:
        facts["rdb_saves"] = info["rdb_saves"]
    return facts


def open_forked_dump(
    server: Server, layout: Layout, fork: Fork, deadline: Deadline, stop: Callable[[], bool]
) -> int:
    """Once ``fork``'s child has written the dump, a read-only descriptor of that very file.

    Raises :class:`~freezeframe.FreezeframeError` if the save failed, ``stop()`` or the
    deadline came first, or another save ran after it (an automatic one, a replica's
    full sync): Redis then may have renamed a later dump over it.
    """
    where = f"Redis at {server.endpoint.where}"

    def done(info: Mapping[str, Any]) -> bool:
        if stop():
            raise FreezeframeError(f"{where}: interrupted while BGSAVE wrote its dump")
        return not info.get("rdb_bgsave_in_progress")

    info = server.wait("writing the dump of the capture (BGSAVE)", done, deadline)
    # A failed save is retried only 5 s later (Redis's CONFIG_BGSAVE_RETRY_DELAY): no
    # other save can have succeeded after ours failed before a look every POLL s.
    _saved(server, info, fork.wall, FreezeframeError)
    if info.get("rdb_saves") != fork.saves + 1:
        raise _replaced(where)
    try:
        fd = os.open(layout.dump, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        _written_since(server, layout.dump, 0.0, fork.wall, str(e.strerror))
        raise
    try:
        # No save running and none ended since the last look: none renamed a dump meanwhile.
        again = server.info("persistence")
        if again.get("rdb_bgsave_in_progress") or again.get("rdb_saves") != fork.saves + 1:
            raise _replaced(where)
        mtime = os.fstat(fd).st_mtime
        why = f"written {fork.wall - mtime:.0f}s before it began"
        _written_since(server, layout.dump, mtime, fork.wall, why)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _replaced(where: str) -> FreezeframeError:
    return FreezeframeError(
        f"{where}: another save (an automatic one?) ran before the dump of the capture "
        "was read, and may have replaced it: try again, or space the save points further"
    )


def complete_aof(
    server: Server, layout: Layout, deadline: Deadline, rewrite: tuple[int, int] | None
) -> dict[str, Any]:
    """No rewrite running or due; Redis's AOF buffer written; every listed file fsync'd.

    ``rewrite``: auto-aof-rewrite-percentage and -min-size, to run a due rewrite now
    (``None``: never; for atomic snapshots a rewrite during the window is harmless).
    """
    where = f"Redis at {server.endpoint.where}"
    facts: dict[str, Any] = {}
    began = time.monotonic()
    info = server.wait("rewriting its AOF", _no_rewrite, deadline)
    if rewrite is not None and rewrite_due(info, rewrite):
        # Redis would start it by itself within 1/hz s, swapping files under a per-file
        # copy: run it now (same data: writes are paused) and wait for it.
        try:
            server.call("BGREWRITEAOF")
        except ServerError as e:
            # Redis's own cron may have started the due rewrite since INFO said none
            # ran: that one rewrites the same paused data, so wait for it instead.
            if "already in progress" not in str(e):
                raise
        info = server.wait("rewriting its AOF", _no_rewrite, deadline)
        if info.get("aof_last_bgrewrite_status") != "ok":
            raise QuiesceError(
                f"{where}: BGREWRITEAOF failed (aof_last_bgrewrite_status:"
                f"{info.get('aof_last_bgrewrite_status')}): see the Redis log"
            )
        facts["rewrote_ms"] = round((time.monotonic() - began) * 1000, 1)
    info = server.wait("writing its AOF buffer", lambda i: not i.get("aof_buffer_length"), deadline)
    if not info.get("aof_enabled"):
        raise QuiesceError(f"{where}: the AOF was turned off since the check")
    if info.get("aof_last_write_status") != "ok":
        raise QuiesceError(
            f"{where}: its last AOF write failed (aof_last_write_status:"
            f"{info.get('aof_last_write_status')}), so the AOF on disk lacks writes: "
            "see the Redis log"
        )
    synced = time.monotonic()
    found = layout.find_manifest() if layout.whole_dir else layout
    try:
        files = found.aof_files()
        sizes = {f.name: (found.aof_dir / f.name).stat().st_size for f in files}
        for p in (*(found.aof_dir / f.name for f in files), found.manifest, found.aof_dir):
            fsync_path(p)
    except (OSError, ValueError) as e:
        why = f"{e.strerror}: {e.filename}" if isinstance(e, OSError) else str(e)
        raise QuiesceError(
            f"{where}: cannot read its AOF here ({why}): is dir the server's data "
            "folder as this machine sees it?"
        ) from None
    facts.update(
        wait_ms=round((synced - began) * 1000, 1),
        fsync_ms=round((time.monotonic() - synced) * 1000, 1),
        files=[f.name for f in files],
        bytes=sum(sizes.values()),
    )
    return facts


def rewrite_due(info: Mapping[str, Any], rewrite: tuple[int, int]) -> bool:
    """Whether Redis's automatic AOF rewrite would start now (its serverCron test)."""
    percentage, min_size = rewrite
    current, base = info.get("aof_current_size"), info.get("aof_base_size")
    if not percentage or not isinstance(current, int) or not isinstance(base, int):
        return False
    return current > min_size and current * 100 // (base or 1) - 100 >= percentage


def window_state(server: Server) -> dict[str, Any]:
    """What must not change while the snapshot is taken."""
    p = server.info("persistence")
    r = server.info("replication")
    keys = keyspace(server.info("keyspace"))
    return {
        "dirty": p.get("rdb_changes_since_last_save"),
        "aof_size": p.get("aof_current_size"),
        "aof_rewrites": p.get("aof_rewrites"),
        "aof_rewriting": bool(p.get("aof_rewrite_in_progress")),
        "loading": p.get("loading"),
        "role": r.get("role"),
        "replid": r.get("master_replid"),
        "syncing": bool(r.get("master_sync_in_progress")),
        "keys": sum(db["keys"] for db in keys.values()),
        "keyspace": keys,
    }


def incomplete_aof_images(layout: Layout, snapshots: Sequence[Artifact]) -> list[str]:
    """An AOF rewrite ran during the snapshots: is each image's manifest whole?"""
    problems = []
    for artifact in snapshots:
        for original, image in artifact.roots():
            if not layout.aof_dir.is_relative_to(original):
                continue
            if layout.dir.is_relative_to(original):
                copy = replace(layout, dir=image / layout.dir.relative_to(original))
            else:  # the data path is the AOF folder itself
                copy = replace(layout, dir=image.parent, appenddirname=image.name)
            if layout.whole_dir:
                copy = copy.find_manifest()
            try:
                listed = copy.aof_files()
                missing = [f.name for f in listed if not (copy.aof_dir / f.name).is_file()]
            except (OSError, ValueError) as e:
                missing = [str(e)]
            if missing:
                problems.append(
                    f"an AOF rewrite swapped the files during snapshot {artifact.id}: "
                    f"its copy lacks {', '.join(missing)}"
                )
    return problems
