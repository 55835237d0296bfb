"""A drill of a restored MariaDB copy: the private server started on it, checked deeply.

The server (:func:`._restored.private_server`) runs from the drill's thread
through its ``spawn``, with its files in the drill's folder for this
application; it answers on that folder's socket only. Its checks:

``start``
    it starts and answers, InnoDB recovery done; else the first ``[ERROR]``
    line of its log (the system tablespace missing is said before it starts).
    Skipped where ``mariadbd`` (or ``mysqld``) is not installed.
``binlog_position``
    what it reports of the binary log matches what the quiesce read under the
    lock (:func:`._server.positions`). After a restart the server writes to a
    new binary log file, so the frozen file and position are not what ``SHOW
    MASTER STATUS`` says: the comparable facts are the GTID position
    (``@@gtid_binlog_pos``, rebuilt from the restored logs), the frozen file
    among its binary logs, whole up to the frozen position, and InnoDB's last
    recorded binlog commit (in its log at startup) not after it. A logical
    capture restores no binary log (its restored server starts a new one),
    and a server without one has nothing to compare: skipped.
``check_table``
    ``CHECK TABLE`` on every table (:func:`._restored.check_tables`).
``stop``
    once the profile's checks ran: it stops cleanly.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from freezeframe.plugin import CheckFailed, CheckSkipped, DrillContext, Running, ToolError
from freezeframe_mariadb._layout import Layout
from freezeframe_mariadb._restored import Started, check_tables, private_server
from freezeframe_mariadb._server import Server

__all__ = ["binlog_position", "drill"]

#: A query's read gives up this long after the server's own limit (max_statement_time).
READ_GRACE = 1.0
#: How long connecting to the started copy may take.
CONNECT_TIMEOUT = 10.0
#: InnoDB's line at startup: the binary log position of the last commit it recorded.
_INNODB_BINLOG = re.compile(r"InnoDB: Last binlog file '([^']*)', position (\d+)")


@contextlib.contextmanager
def drill(
    ctx: DrillContext, layout_of: Callable[[], Layout], bin_dir: Path | None
) -> Iterator[Running | None]:
    """:meth:`ApplicationPlugin.drill`: start, check, yield how to reach it, stop."""
    started: list[Started] = []
    with contextlib.ExitStack() as stack:

        def start() -> str:
            copy = private_server(
                layout_of(),
                ctx.root,
                ctx.work / "mariadbd",
                bin_dir=bin_dir,
                spawn=ctx.spawn,
                waiting=ctx.stop_if_cancelled,
            )
            try:
                server = stack.enter_context(copy)
            except ToolError as e:  # mariadbd, setpriv
                raise CheckSkipped(str(e)) from None
            started.append(server)
            recovered = "Starting crash recovery" in server.start_log()
            return f"{Server.parse(server.version).product} answered in {server.seconds:.1f} s" + (
                ", after InnoDB crash recovery" if recovered else ""
            )

        if not ctx.check("start", start) or not started:
            yield None
            return
        [server] = started
        ctx.check("binlog_position", lambda: binlog_position(server, ctx.facts, ctx.capture))
        ctx.check("check_table", lambda: f"{check_tables(server)} tables OK")
        yield _running(server)
    ctx.check("stop", lambda: _stopped(server))


def _running(server: Started) -> Running:
    socket = str(server.socket)
    mariadb = Server.parse(server.version).mariadb

    def query(sql: str, timeout: float) -> Any:
        import pymysql  # type: ignore[import-untyped]

        try:
            conn = pymysql.connect(
                unix_socket=socket,
                user="root",
                connect_timeout=max(0.001, min(timeout, CONNECT_TIMEOUT)),
                read_timeout=timeout + READ_GRACE,
                write_timeout=timeout + READ_GRACE,
                autocommit=True,
                ssl_disabled=True,
                charset="utf8mb4",
                program_name="freezeframe",
            )
        except pymysql.MySQLError as e:
            raise CheckFailed(f"cannot connect to the restored copy: {_said(e)}") from None
        try:
            with conn.cursor() as cur:
                if mariadb:  # the server itself gives up at the timeout
                    cur.execute(f"SET SESSION max_statement_time = {timeout:.3f}")
                cur.execute(sql)
                row = cur.fetchone()
        except pymysql.MySQLError as e:
            code = e.args[0] if e.args else None
            if code == 1969 or "timed out" in str(e):
                raise CheckFailed(f"no answer within {timeout:g} s") from None
            raise CheckFailed(_said(e)) from None
        finally:
            with contextlib.suppress(Exception):
                conn.close()
        return None if row is None else row[0]

    return Running(
        connection={
            "SOCKET": socket,
            "USER": "root",
            "URL": f"mysql://root@localhost/?unix_socket={quote(socket, safe='/')}",
        },
        # the client's defaults when no option file sets them: the copy's socket, no TCP
        client_env={"MYSQL_UNIX_PORT": socket, "MYSQL_HOST": "localhost"},
        query=query,
    )


def _said(e: BaseException) -> str:
    """PyMySQL's error as one line: its message and number."""
    if len(e.args) > 1:
        return f"{e.args[1]} (error {e.args[0]})".replace("\n", " ")
    return str(e).replace("\n", " ")


def _stopped(server: Started) -> str:
    if not server.clean:
        raise CheckFailed(
            f"the server did not stop cleanly (exit {server.process.returncode}): "
            + server.first_error()
        )
    return "stopped cleanly"


def binlog_position(server: Started, facts: Mapping[str, Any], capture: str) -> str:
    """Compare what the restored server reports of its binary log with ``facts`` (what the
    quiesce read under the lock); :class:`CheckFailed` naming each difference."""
    if capture == "logical":
        raise CheckSkipped(
            "a logical capture restores the data, not the binary log (the restored server "
            "starts a new one)"
        )
    if "log_bin" not in facts:
        raise CheckSkipped("the run recorded no binary log position to compare with")
    if not facts["log_bin"]:
        raise CheckSkipped("the original had no binary log")
    frozen_file, frozen_at = str(facts["binlog_file"]), int(facts["binlog_position"])
    with server.conn.cursor() as cur:
        cur.execute("SELECT @@GLOBAL.log_bin")
        if not int(cur.fetchone()[0]):
            raise CheckSkipped(
                "the restored copy was started without a binary log (the server has none now)"
            )
        cur.execute("SHOW BINARY LOGS")
        sizes = {str(row[0]): int(row[1]) for row in cur.fetchall()}
        gtid = None
        if "gtid_binlog_pos" in facts:
            cur.execute("SELECT @@GLOBAL.gtid_binlog_pos")
            gtid = str(cur.fetchone()[0] or "")
    problems = []
    seen = []
    if gtid is not None:
        frozen_gtid = str(facts["gtid_binlog_pos"])
        if _gtids(gtid) != _gtids(frozen_gtid):
            problems.append(
                f"its GTID position is {gtid or 'empty'}, not {frozen_gtid or 'empty'} "
                "as at the freeze"
            )
        seen.append(f"GTID position {gtid or 'empty'} as at the freeze")
    if frozen_file not in sizes:
        problems.append(f"{frozen_file} is not among its binary logs ({', '.join(sizes)})")
    elif sizes[frozen_file] < frozen_at:
        problems.append(
            f"{frozen_file} ends at byte {sizes[frozen_file]}, before the freeze's "
            f"position {frozen_at}"
        )
    else:
        seen.append(f"{frozen_file} holds the freeze's position {frozen_at}")
    if innodb := _innodb_binlog(server.start_log()):
        name, at = innodb
        if _after((name, at), (frozen_file, frozen_at)):
            problems.append(
                f"InnoDB's last commit was logged at {name}:{at}, after the freeze's "
                f"{frozen_file}:{frozen_at}"
            )
        else:
            seen.append(f"InnoDB's last commit logged at {name}:{at}, not after it")
    if problems:
        raise CheckFailed("the restored server: " + "; ".join(problems))
    return "; ".join(seen)


def _gtids(position: str) -> set[str]:
    """A GTID position (``0-1-42,1-1-7``) as a set: the order of its domains is not kept."""
    return {g.strip() for g in position.split(",") if g.strip()}


def _innodb_binlog(log: str) -> tuple[str, int] | None:
    """The binary log file (its name) and position of InnoDB's last commit, from its log."""
    found = _INNODB_BINLOG.findall(log)
    if not found:
        return None
    name, at = found[-1]
    return Path(name).name, int(at)


def _after(position: tuple[str, int], frozen: tuple[str, int]) -> bool:
    """Whether ``position`` (file, offset) lies after ``frozen``, in the same series of
    binary log files (``base.000042``); another series is not compared."""
    (name, at), (frozen_name, frozen_at) = position, frozen
    base, _, number = name.rpartition(".")
    frozen_base, _, frozen_number = frozen_name.rpartition(".")
    if base != frozen_base or not (number.isdigit() and frozen_number.isdigit()):
        return False
    return (int(number), at) > (int(frozen_number), frozen_at)
