"""freezeframe application plug-in ``mariadb``: MariaDB and MySQL servers, through PyMySQL.

Quiesce, on a connection held for the whole freeze: ``BACKUP STAGE START``
then ``BACKUP STAGE BLOCK_COMMIT`` on MariaDB 10.4 and later (no commit, no
DDL, no write to a non-transactional table, the binary log still), ``FLUSH
TABLES WITH READ LOCK`` on MySQL and older MariaDB; the binary log position
is read while the lock is held. Unquiesce: ``BACKUP STAGE END`` / ``UNLOCK
TABLES``, then the connection is closed. If freezeframe dies, the kernel
closes the connection and the server releases everything at once.

InnoDB goes on writing pages and redo in the background under either lock,
so only a snapshot that captures every file at one instant is sound: the
plug-in is consistent on atomic snapshots only.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from freezeframe.plugin import (
    ApplicationPlugin,
    Artifact,
    ConfigError,
    CrashSafety,
    Deadline,
    FreezeframeError,
    QuiesceError,
    SnapshotKind,
    Table,
    hookimpl,
    under,
)
from freezeframe_mariadb import _restored
from freezeframe_mariadb._layout import VARIABLES, Layout
from freezeframe_mariadb._server import Server, global_privileges, positions

__all__ = ["MariadbPlugin"]

#: Connect and query timeout of check(), prepare() and the restore helpers.
TIMEOUT = 10.0
#: A quiesce that the server does not end by the deadline is cut off client-side this much later.
READ_GRACE = 1.0
#: The server drops the held connection (and so the lock) if freezeframe hangs this long past
#: the deadline; by then the engine has failed the run, and the thaw reports the lost lock.
HANG_MARGIN = 30
#: PyMySQL error numbers meaning the connection is gone.
_LOST = {2006, 2013, 2055, 0}
#: Facts that each quiesce records afresh.
_PER_RUN = (
    "method",
    "lock_wait_ms",
    "log_bin",
    "binlog_file",
    "binlog_position",
    "gtid_binlog_pos",
    "executed_gtid_set",
)


class MariadbPlugin(ApplicationPlugin):
    """One MariaDB or MySQL server (``unix_socket``, or ``host`` and ``port``)."""

    kind = "mariadb"
    # InnoDB flushes pages and writes redo in the background even while commits are
    # blocked: a file-by-file copy of a live datadir mixes instants.
    consistent_on = frozenset({SnapshotKind.ATOMIC})
    crash_safety = CrashSafety.PROCESS_EXIT

    def __init__(self, name: str, table: Table) -> None:
        super().__init__(name, table)
        self.unix_socket = table.get_path("unix_socket", None)
        self.host = table.get_str("host", None)
        port = table.get_int("port", None, minimum=1, maximum=65535)
        if self.unix_socket is not None and self.host is not None:
            raise ConfigError("host", 'give either "unix_socket" or "host", not both')
        if self.unix_socket is None and self.host is None:
            raise ConfigError(
                "unix_socket", 'missing: give "unix_socket" (or "host" and "port") of the server'
            )
        if port is not None and self.host is None:
            raise ConfigError("port", 'goes with "host"; a unix socket has no port')
        self.port: int = port or 3306
        self.user = table.get_str("user")
        self._password = table.get_secret("password")
        self.datadir = table.get_path("datadir", None)
        self.lock: str = table.get_choice("lock", ("auto", "backup-stage", "flush-tables"), "auto")
        where = f"socket {self.unix_socket}" if self.unix_socket else f"{self.host}:{self.port}"
        #: How messages name this application and its server (never with a secret).
        self.who = f"mariadb {name!r} at {where}"
        self._lock = threading.Lock()  # a late thaw waits for a quiesce still running
        self._conn: Any = None
        self._quiesced = False
        self._backup_stage = False  # which lock the held connection took
        self._step = "connect"  # what the quiesce was doing, for its error message
        self._server: Server | None = None
        self._layout: Layout | None = None
        self._facts: dict[str, Any] = {"address": where}

    # -- talking to the server ----------------------------------------------------
    def _error(
        self, what: str, e: BaseException, cls: type[FreezeframeError], *, late: bool = False
    ) -> FreezeframeError:
        """One line naming the application; the password never appears, whatever the driver said.

        ``late``: the deadline has passed, so a read that timed out means we gave up.
        """
        code = e.args[0] if e.args and isinstance(e.args[0], int) else None
        text = str(e.args[1] if len(e.args) > 1 else e.args[0] if e.args else e)
        if code == 1045:
            text = f"access denied for user {self.user!r} (wrong password, or no such account)"
        elif code in (2002, 2003):
            reason = re.search(r"\(\[Errno -?\d+\] (.+)\)$", text) or re.search(r"\((.+)\)$", text)
            text = f"cannot reach the server ({reason[1] if reason else text}); is it running?"
        elif code in (1205, 1969):
            text = f"gave up at the deadline ({text})"
        elif late and (code in _LOST or "timed out" in text):
            text = f"gave up at the deadline (no answer from the server: {text})"
        elif code in _LOST or "timed out" in text:
            text = f"lost the connection ({text})"
        message = f"{self.who}: {what}: {text}".replace("\n", " ")
        secret = self._password.reveal() if self._password else ""
        if len(secret) >= 3:
            message = message.replace(secret, "***")
        return cls(message)

    def _connect(self, timeout: float, *, read_timeout: float | None = None) -> Any:
        import pymysql  # type: ignore[import-untyped]  # lazily: `freezeframe --help` stays fast

        where: dict[str, Any] = (
            # TLS adds nothing on a local socket, and PyMySQL's default ("preferred") loads
            # the system's CA store on every connect: 50 ms, inside the freeze window.
            {"unix_socket": str(self.unix_socket), "ssl_disabled": True}
            if self.unix_socket
            else {"host": self.host, "port": self.port}
        )
        try:
            return pymysql.connect(
                **where,
                user=self.user,
                password=self._password.reveal() if self._password else "",
                connect_timeout=max(0.001, timeout),
                read_timeout=read_timeout,
                write_timeout=read_timeout,
                autocommit=True,
                charset="utf8mb4",
                program_name="freezeframe",
            )
        except (pymysql.MySQLError, OSError) as e:
            raise self._error("cannot connect", e, FreezeframeError) from None

    def _inspect(self, conn: Any) -> tuple[Server, Layout]:
        """The server's version and file layout."""
        with conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            server = Server.parse(str(cur.fetchone()[0]))
            names = ", ".join(f"'{v}'" for v in VARIABLES)
            cur.execute(f"SHOW GLOBAL VARIABLES WHERE Variable_name IN ({names})")
            variables = {str(k).lower(): str(v) for k, v in cur.fetchall()}
        self._server = server
        self._layout = Layout.from_variables(variables, self.datadir)
        self._facts.update(server=server.product, version=server.version)
        return server, self._layout

    def _uses_backup_stage(self, server: Server) -> bool:
        """BACKUP STAGE where the server has it, unless ``lock`` says otherwise."""
        return self.lock == "backup-stage" or (self.lock == "auto" and server.backup_stage)

    def _query_layout(self) -> Layout:
        import pymysql

        conn = self._connect(TIMEOUT, read_timeout=TIMEOUT)
        try:
            return self._inspect(conn)[1]
        except pymysql.MySQLError as e:
            raise self._error("cannot read the server's settings", e, FreezeframeError) from None
        finally:
            conn.close()

    # -- preflight ---------------------------------------------------------------
    def check(self) -> None:
        """Reachable, logged in, version supported, privileged; datadir here, on one filesystem."""
        import pymysql

        conn = self._connect(TIMEOUT, read_timeout=TIMEOUT)
        try:
            server, layout = self._inspect(conn)
            if problem := server.unsupported():
                raise FreezeframeError(f"{self.who}: {problem}")
            if self.lock == "backup-stage" and not server.backup_stage:
                raise FreezeframeError(
                    f'{self.who}: lock = "backup-stage" needs MariaDB 10.4 or later, '
                    f'not {server.product}; use lock = "flush-tables" (or "auto")'
                )
            with conn.cursor() as cur:
                cur.execute("SHOW GRANTS")
                privileges = global_privileges(row[0] for row in cur.fetchall())
                if "RELOAD" not in privileges and "ALL PRIVILEGES" not in privileges:
                    stage = self._uses_backup_stage(server)
                    lock = "BACKUP STAGE" if stage else "FLUSH TABLES WITH READ LOCK"
                    raise FreezeframeError(
                        f"{self.who}: user {self.user!r} lacks the RELOAD privilege, which "
                        f"{lock} needs (GRANT RELOAD ON *.* TO the user)"
                    )
                if layout.log_bin_basename is not None:
                    try:
                        cur.execute(server.binlog_status)
                    except pymysql.err.OperationalError as e:
                        if e.args[0] != 1227:
                            raise
                        need = "BINLOG MONITOR" if server.mariadb else "REPLICATION CLIENT"
                        raise FreezeframeError(
                            f"{self.who}: user {self.user!r} lacks the {need} privilege, needed "
                            "to record the binary log position of each backup"
                        ) from None
        except pymysql.MySQLError as e:
            raise self._error("check failed", e, FreezeframeError) from None
        finally:
            conn.close()
        self._check_files(layout)

    def _check_files(self, layout: Layout) -> None:
        datadir = layout.datadir
        if not datadir.is_dir():
            raise FreezeframeError(
                f"{self.who}: the datadir {datadir} does not exist on this machine; run "
                "freezeframe on the server's host (or set datadir to where it is mounted here)"
            )
        if not (datadir / "mysql").is_dir():
            raise FreezeframeError(
                f"{self.who}: {datadir} has no mysql/ folder: it is not the server's datadir"
            )
        for what, p in layout.outside.items():
            if not p.exists():
                raise FreezeframeError(
                    f"{self.who}: {what} is in {p}, which is not on this machine"
                )
        places = layout.filesystems()
        if len(places) > 1:
            where = "; ".join(", ".join(v) for v in places.values())
            raise FreezeframeError(
                f"{self.who}: its files are on {len(places)} filesystems or subvolumes ({where}); "
                "several snapshots are not one instant: move them onto the datadir's filesystem "
                "(btrfs: into its subvolume)"
            )

    def prepare(self, snapshot_kinds: frozenset[SnapshotKind]) -> None:
        """Refuse anything but atomic snapshots; read the layout afresh (blocks nobody)."""
        if snapshot_kinds - self.consistent_on:
            raise FreezeframeError(
                f"{self.who}: a live datadir is only consistent on an atomic snapshot "
                "(btrfs, LVM, ZFS), not on a per-file one"
            )
        layout = self._query_layout()
        self._check_files(layout)
        self._facts["datadir"] = str(layout.datadir)
        self._facts["data_paths"] = [str(p) for p in layout.data_paths()]

    def data_paths(self) -> Sequence[Path]:
        """The datadir, plus the redo, undo, system tablespace and log folders outside it."""
        layout = self._layout or self._query_layout()
        return layout.data_paths()

    # -- the freeze --------------------------------------------------------------
    def quiesce(self, deadline: Deadline) -> None:
        """Take the backup lock on a connection of our own; read the binlog position under it."""
        import pymysql

        with self._lock:
            started = time.monotonic()
            for key in _PER_RUN:  # a failed quiesce must not show the last run's position
                self._facts.pop(key, None)
            if deadline.expired():
                raise QuiesceError(f"{self.who}: the deadline passed before the quiesce began")
            try:
                self._conn = self._connect(
                    deadline.remaining(), read_timeout=deadline.remaining() + READ_GRACE
                )
            except FreezeframeError as e:
                raise QuiesceError(str(e)) from None
            try:
                self._freeze(self._conn, deadline)
            except BaseException as e:
                self._release()
                if isinstance(e, pymysql.MySQLError):
                    raise self._error(
                        self._step, e, QuiesceError, late=deadline.expired()
                    ) from None
                raise
            self._quiesced = True
            self._facts["lock_wait_ms"] = round((time.monotonic() - started) * 1000, 3)

    def _freeze(self, conn: Any, deadline: Deadline) -> None:
        with conn.cursor() as cur:
            if self._server is None:
                self._step = "SELECT VERSION()"
                cur.execute("SELECT VERSION()")
                self._server = Server.parse(str(cur.fetchone()[0]))
            server = self._server
            # Should freezeframe hang (not die) while frozen, the server drops us after this.
            idle = math.ceil(deadline.remaining()) + HANG_MARGIN
            self._step = "SET wait_timeout"
            cur.execute(f"SET SESSION wait_timeout = {idle}")
            self._backup_stage = self._uses_backup_stage(server)
            if self._backup_stage:
                self._facts["method"] = "BACKUP STAGE BLOCK_COMMIT"
                for stage in ("START", "BLOCK_COMMIT"):
                    # the server itself gives up at the deadline and leaves nothing behind
                    left = deadline.remaining()
                    self._step = f"BACKUP STAGE {stage}"
                    if left <= 0.001:  # and max_statement_time=0 would mean no limit
                        raise QuiesceError(f"{self.who}: {self._step}: gave up at the deadline")
                    cur.execute(
                        f"SET STATEMENT max_statement_time={left:.3f} FOR BACKUP STAGE {stage}"
                    )
            else:
                self._facts["method"] = "FLUSH TABLES WITH READ LOCK"
                wait = max(1, math.floor(deadline.remaining()))
                cur.execute(f"SET SESSION lock_wait_timeout = {wait}")
                self._step = "FLUSH TABLES WITH READ LOCK"
                cur.execute("FLUSH TABLES WITH READ LOCK")
            self._step = "reading the binary log position"
            self._facts.update(positions(cur, server, self._layout))

    def _release(self) -> str | None:
        """End the backup lock and close; returns why, if the lock was found already lost."""
        import pymysql

        conn, self._conn = self._conn, None
        if conn is None:
            return None
        lost = None
        try:
            if not conn.open:
                lost = "the connection was closed"
            else:
                with conn.cursor() as cur:
                    if self._backup_stage:
                        cur.execute("BACKUP STAGE END")
                    else:
                        cur.execute("UNLOCK TABLES")
        except pymysql.MySQLError as e:
            code = e.args[0] if e.args else None
            if code == 4146:  # no backup stage: a quiesce that failed before taking it
                pass
            elif code in _LOST or isinstance(e, pymysql.err.InterfaceError):
                lost = f"lost the connection: {e.args[-1]}"
            else:
                lost = f"{e.args[-1]} (error {code})"
        finally:
            with contextlib.suppress(Exception):  # PyMySQL: "Already closed"
                conn.close()  # closing releases everything server-side, whatever happened above
        return lost

    def unquiesce(self, snapshots: Sequence[Artifact]) -> None:
        """End the backup lock and close the connection. Idempotent; safe after a failed quiesce.

        A connection that the server dropped while frozen (restart, KILL,
        wait_timeout) means the lock ended at some unknown moment: the thaw
        reports it, and the run fails rather than keep a snapshot that may be torn.
        """
        with self._lock:
            was_quiesced, self._quiesced = self._quiesced, False
            lost = self._release()
        if lost and was_quiesced:
            raise QuiesceError(
                f"{self.who}: the backup lock was lost before the thaw ({lost}); "
                "the snapshot may not be consistent"
            )

    def describe(self) -> Mapping[str, Any]:
        """Server and version, lock method and wait, datadir, binary log file, position and GTID."""
        return dict(self._facts)

    # -- restore -------------------------------------------------------------------
    def _restore_layout(self, root: Path) -> Layout:
        """The layout to restore with: the server's if it answers, else the stock one."""
        try:
            return self._layout or self._query_layout()
        except FreezeframeError as e:
            if self.datadir is not None:
                return Layout.default(self.datadir, under(root, self.datadir))
            raise FreezeframeError(
                f"{e}; to restore without the server, set datadir in the profile"
            ) from None

    def prepare_restored(self, root: Path) -> None:
        """Remove the original's pid file and socket; make binlog index entries relative."""
        _restored.prepare(self._restore_layout(root), root, f"application {self.name!r}")

    def verify_restored(self, root: Path) -> None:
        """Start a private server on the restored copy, ``CHECK TABLE`` every table, stop it."""
        layout = self._restore_layout(root)
        who = f"application {self.name!r}"
        with _restored.temporary_server(layout, root, who) as conn:
            _restored.check_tables(conn, who)


@hookimpl
def freezeframe_register_applications(register: Callable[[type[Any]], None]) -> None:
    """Register the ``mariadb`` application plug-in."""
    register(MariadbPlugin)
