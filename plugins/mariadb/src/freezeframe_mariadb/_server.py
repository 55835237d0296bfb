"""What a MariaDB or MySQL server says about itself: its version and what it supports, the
privileges granted to the backup user, and the binary log position read under the lock."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from freezeframe_mariadb._layout import Layout

__all__ = ["Server", "global_privileges", "positions"]

_GRANT = re.compile(r"^GRANT (.+?) ON \*\.\* TO ", re.IGNORECASE)


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


def global_privileges(grants: Any) -> set[str]:
    """Privileges granted ON *.* in ``SHOW GRANTS`` lines (never echoed: they hold hashes)."""
    found: set[str] = set()
    for line in grants:
        if m := _GRANT.match(str(line)):
            found |= {p.strip().upper() for p in m[1].split(",")}
    return found


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
