"""The drill of a Redis server's restored copy: Redis's own file checker, a load, the key count.

Before the start, ``redis-check-rdb`` reads the restored dump (or
``redis-check-aof`` the restored AOF, through its manifest: the base, RDB or
AOF, and every incremental file it lists) without changing it. Then a
private redis-server (:func:`~freezeframe_redis._verify.temporary_server`,
as ``restore --verify`` starts it) loads the copy, and the key count of each
database is compared with the one recorded at the capture
(:func:`~freezeframe_redis._keys.compare_keyspace`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

from freezeframe.plugin import (
    Cancelled,
    CheckFailed,
    CheckSkipped,
    DrillContext,
    FreezeframeError,
    Running,
    ToolError,
    find_tool,
    run_tool,
)
from freezeframe_redis._keys import compare_keyspace
from freezeframe_redis._layout import Layout
from freezeframe_redis._verify import TemporaryServer, temporary_server

__all__ = ["check_files", "drill_copy"]

#: How long redis-check-rdb or redis-check-aof may take (they read every byte).
CHECK_TIMEOUT = 3600.0
_RDB_ERROR = "--- RDB ERROR DETECTED ---"
_AOF_AT = re.compile(r"^0x\s*([0-9a-fA-F]+):\s*")
_FIX = re.compile(r"\.?\s*Use the --fix option.*$")


def _finding(lines: list[str]) -> str:
    """What a checker's output says is wrong, in one line."""
    found = []
    for i, line in enumerate(lines):
        if line == _RDB_ERROR and i + 1 < len(lines):
            found.append(lines[i + 1])  # "[offset 55] Unexpected EOF reading RDB file"
        elif _AOF_AT.match(line):
            found.append(_AOF_AT.sub(r"at 0x\1: ", line))  # "at 0x90: Expected to read ..."
    last = _FIX.sub("", lines[-1]) if lines else "no message"
    if not found or not last.startswith("[info]"):  # not a count the checker ends with
        found.append(last)
    return "; ".join(dict.fromkeys(found))


def check_files(layout: Layout, cancelled: Callable[[], bool]) -> str:
    """``redis-check-rdb`` on the restored dump, or ``redis-check-aof`` on the restored
    AOF's manifest; :class:`CheckFailed` with what it found, naming the file."""
    tool, target = (
        ("redis-check-aof", layout.manifest) if layout.aof else ("redis-check-rdb", layout.dump)
    )
    try:
        binary = find_tool(tool)
    except ToolError as e:
        raise CheckSkipped(str(e)) from None
    result = run_tool(
        [binary, str(target)],
        timeout=CHECK_TIMEOUT,
        check=False,
        dies_with_us=True,
        watch=lambda: "the drill was interrupted" if cancelled() else None,
    )
    lines = [ln.strip() for ln in (result.stdout + result.stderr).splitlines() if ln.strip()]
    if result.returncode != 0:
        raise CheckFailed(f"{target.name}: {_finding(lines)} (exit {result.returncode})")
    if layout.aof:
        return f"{target.name}: {lines[-1] if lines else 'valid'}"
    read = [ln.removeprefix("[info] ") for ln in lines if ln.startswith("[info] ")]
    return f"{target.name}: RDB looks OK" + (f" ({', '.join(read[:2])})" if read else "")


@contextmanager
def drill_copy(ctx: DrillContext, layout: Layout | None, missing: str) -> Iterator[Running | None]:
    """The drill of the copy ``layout`` (``None``: nothing restored, ``missing`` says
    where it was looked for): check its files, start a private server on it, compare
    its key count, yield how to reach it; stopped on leaving."""
    if layout is not None:
        name = "redis-check-aof" if layout.aof else "redis-check-rdb"
        ctx.check(name, lambda: check_files(layout, lambda: ctx.cancelled))
    with ExitStack() as stack:
        started: list[TemporaryServer] = []

        def start() -> str:
            if layout is None:
                raise CheckFailed(missing)
            try:
                binary = find_tool("redis-server")
            except ToolError as e:
                raise CheckSkipped(str(e)) from None
            what = (layout.manifest if layout.aof else layout.dump).name
            server = temporary_server(
                binary, layout, ctx.work, spawn=ctx.spawn, poll=ctx.stop_if_cancelled
            )
            try:
                started.append(stack.enter_context(server))
            except Cancelled:
                raise
            except FreezeframeError as e:
                raise CheckFailed(f"{what}: {e}") from None
            where = started[0].socket or f"127.0.0.1:{started[0].port}"
            return f"{what} loaded in {started[0].load_s:.2f}s, on {where}"

        if not ctx.check("start", start) or not started:
            yield None
            return
        server = started[0]
        ctx.check("keys", lambda: compare_keyspace(ctx.facts.get("keyspace"), server.keyspace()))
        yield Running(connection=server.connection, client_env={"REDIS_URL": server.url})
