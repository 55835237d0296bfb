"""Talking to a MariaDB or MySQL server: where it is (:class:`Address`), what it says about
itself (its version and what it supports, the privileges granted to the backup user, the
binary log position read under the lock), and its driver's errors as one line."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from freezeframe.plugin import ConfigError, Table, find_tool
from freezeframe_mariadb._layout import Layout

__all__ = [
    "LOST",
    "Address",
    "Server",
    "driver_error",
    "global_privileges",
    "missing_privileges",
    "positions",
    "program",
]

#: PyMySQL error numbers meaning the connection is gone.
LOST = {2006, 2013, 2055, 0}
_GRANT = re.compile(r"^GRANT (.+?) ON \*\.\* TO ", re.IGNORECASE)


@dataclass(frozen=True)
class Address:
    """Where the server listens (``unix_socket``, or ``host`` and ``port``) and whom
    freezeframe logs in as."""

    unix_socket: Path | None
    host: str | None
    port: int
    user: str

    @classmethod
    def from_table(cls, table: Table) -> Address:
        """From the application's table; :class:`ConfigError` naming a field."""
        unix_socket = table.get_path("unix_socket", None)
        host = table.get_str("host", None)
        port = table.get_int("port", None, minimum=1, maximum=65535)
        if unix_socket is not None and host is not None:
            raise ConfigError("host", 'give either "unix_socket" or "host", not both')
        if unix_socket is None and host is None:
            raise ConfigError(
                "unix_socket", 'missing: give "unix_socket" (or "host" and "port") of the server'
            )
        if port is not None and host is None:
            raise ConfigError("port", 'goes with "host"; a unix socket has no port')
        return cls(unix_socket, host, port or 3306, table.get_str("user"))

    @property
    def where(self) -> str:
        """``socket /run/mysqld/mysqld.sock`` or ``db.example:3306``."""
        return f"socket {self.unix_socket}" if self.unix_socket else f"{self.host}:{self.port}"

    def connect(self, password: str, timeout: float, read_timeout: float | None) -> Any:
        """A PyMySQL connection (autocommit); raises what PyMySQL raises."""
        import pymysql  # type: ignore[import-untyped]  # lazily: `freezeframe --help` stays fast

        where: dict[str, Any] = (
            # TLS adds nothing on a local socket, and PyMySQL's default ("preferred") loads
            # the system's CA store on every connect: 50 ms, inside the freeze window.
            {"unix_socket": str(self.unix_socket), "ssl_disabled": True}
            if self.unix_socket
            else {"host": self.host, "port": self.port}
        )
        return pymysql.connect(
            **where,
            user=self.user,
            password=password,
            connect_timeout=max(0.001, timeout),
            read_timeout=read_timeout,
            write_timeout=read_timeout,
            autocommit=True,
            charset="utf8mb4",
            program_name="freezeframe",
        )

    def client_options(self) -> list[str]:
        """The same address and user as options of MariaDB's own programs (no password)."""
        if self.unix_socket is not None:
            where = ["--protocol=socket", f"--socket={self.unix_socket}"]
        else:
            where = ["--protocol=tcp", f"--host={self.host}", f"--port={self.port}"]
        return [f"--user={self.user}", *where]


@dataclass(frozen=True)
class Server:
    """What the server said about itself."""

    version: str  # VERSION(): "10.11.6-MariaDB-0+deb12u1-log", "8.0.36"
    mariadb: bool
    number: tuple[int, int, int]

    @classmethod
    def parse(cls, version: str) -> Server:
        """From ``VERSION()``."""
        m = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
        number = (int(m[1]), int(m[2]), int(m[3])) if m else (0, 0, 0)
        return cls(version, "mariadb" in version.lower(), number)

    @property
    def product(self) -> str:
        """``MariaDB 10.11.6``, ``MySQL 8.0.36``."""
        return ("MariaDB " if self.mariadb else "MySQL ") + ".".join(map(str, self.number))

    @property
    def backup_stage(self) -> bool:
        """MariaDB 10.4 brought BACKUP STAGE."""
        return self.mariadb and self.number >= (10, 4, 0)

    def unsupported(self) -> str | None:
        """Why freezeframe cannot work with this server at all, or ``None``."""
        if self.mariadb and self.number < (10, 2, 0):
            return f"{self.product} is not supported (freezeframe needs MariaDB 10.2 or later)"
        if not self.mariadb and self.number < (5, 7, 0):
            return f"{self.product} is not supported (freezeframe needs MySQL 5.7 or later)"
        return None

    @property
    def binlog_status(self) -> str:
        """MySQL 8.4 removed SHOW MASTER STATUS."""
        if not self.mariadb and self.number >= (8, 2, 0):
            return "SHOW BINARY LOG STATUS"
        return "SHOW MASTER STATUS"


def program(name: str, bin_dir: Path | None) -> str:
    """MariaDB's program ``name``: in ``bin_dir`` when it is there, else on PATH (or sbin);
    :class:`ToolError` if neither has it."""
    if bin_dir is not None and os.access(bin_dir / name, os.X_OK):
        return str(bin_dir / name)
    return find_tool(name)


def global_privileges(grants: Any) -> set[str]:
    """Privileges granted ON *.* in ``SHOW GRANTS`` lines (never echoed: they hold hashes)."""
    found: set[str] = set()
    for line in grants:
        if m := _GRANT.match(str(line)):
            found |= {p.strip().upper() for p in m[1].split(",")}
    return found


def missing_privileges(privileges: set[str], needs: dict[str, str]) -> str | None:
    """Which of ``needs`` (privilege: what needs it, ``"BACKUP STAGE"``) ``privileges``
    lack, as the end of a sentence about the user; ``None`` if none (or ALL PRIVILEGES)."""
    missing = [p for p in needs if p not in privileges]
    if not missing or "ALL PRIVILEGES" in privileges:
        return None
    grant = ", ".join(missing)
    users = list(dict.fromkeys(needs[p] for p in missing))
    noun = "privilege" if len(missing) == 1 else "privileges"
    verb = "needs" if len(users) == 1 else "need"
    return (
        f"lacks the {grant} {noun}, which {' and '.join(users)} {verb} "
        f"(GRANT {grant} ON *.* TO the user)"
    )


def driver_error(what: str, user: str, secret: str, e: BaseException, *, late: bool) -> str:
    """PyMySQL's error ``e`` as one line after ``what``, with the password (``secret``)
    never in it, whatever the driver said. ``late``: the deadline has passed, so a read
    that timed out means we gave up."""
    code = e.args[0] if e.args and isinstance(e.args[0], int) else None
    text = str(e.args[1] if len(e.args) > 1 else e.args[0] if e.args else e)
    if code == 1045:
        text = f"access denied for user {user!r} (wrong password, or no such account)"
    elif code in (2002, 2003):
        reason = re.search(r"\(\[Errno -?\d+\] (.+)\)$", text) or re.search(r"\((.+)\)$", text)
        text = f"cannot reach the server ({reason[1] if reason else text}); is it running?"
    elif code in (1205, 1969):
        text = f"gave up at the deadline ({text})"
    elif late and (code in LOST or "timed out" in text):
        text = f"gave up at the deadline (no answer from the server: {text})"
    elif code in LOST or "timed out" in text:
        text = f"lost the connection ({text})"
    message = f"{what}: {text}".replace("\n", " ")
    if len(secret) >= 3:
        message = message.replace(secret, "***")
    return message


def positions(cur: Any, server: Server, layout: Layout | None) -> dict[str, Any]:
    """The binary log file, position and GTID state, read under the lock."""
    facts: dict[str, Any] = {}
    if layout is None:  # quiesce without check(): ask (needs no privilege, unlike the status)
        cur.execute("SELECT @@GLOBAL.log_bin")
        logging = bool(int(cur.fetchone()[0]))
    else:
        logging = layout.log_bin_basename is not None
    if not logging:
        facts["log_bin"] = False
        return facts
    cur.execute(server.binlog_status)
    row = cur.fetchone()
    facts["log_bin"] = row is not None
    if row is not None:
        facts["binlog_file"], facts["binlog_position"] = str(row[0]), int(row[1])
        if not server.mariadb and len(row) > 4 and row[4]:
            facts["executed_gtid_set"] = str(row[4]).replace("\n", "")
    if server.mariadb:
        cur.execute("SELECT @@GLOBAL.gtid_binlog_pos")
        facts["gtid_binlog_pos"] = str(cur.fetchone()[0])
    return facts
