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
datadir is consistent on atomic snapshots only.

``capture = "logical"`` (MariaDB 10.4 and later; see :mod:`._logical`) copies
no file: under the same block, a ``mariadb-dump --single-transaction`` begins
its consistent snapshot, the thaw lets commits go on, and the completion
places the finished dump into each view at ``dump_path``. Any filesystem then
does, and no snapshot stage at all.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from freezeframe.plugin import (
    ApplicationPlugin,
    Artifact,
    ConfigError,
    CrashSafety,
    Deadline,
    DrillContext,
    FreezeframeError,
    QuiesceError,
    Running,
    SnapshotKind,
    Table,
    exists_below,
    hookimpl,
    under,
)
from freezeframe_mariadb import _drill, _logical, _reload, _restored
from freezeframe_mariadb._layout import VARIABLES, Layout
from freezeframe_mariadb._server import (
    LOST,
    Address,
    Server,
    driver_error,
    global_privileges,
    missing_privileges,
    positions,
    program,
)

__all__ = ["MariadbPlugin"]

#: Connect and query timeout of check(), prepare() and the restore helpers.
TIMEOUT = 10.0
#: A quiesce that the server does not end by the deadline is cut off client-side this much later.
READ_GRACE = 1.0
#: The server drops the held connection (and so the lock) if freezeframe hangs this long past
#: the deadline; by then the engine has failed the run, and the thaw reports the lost lock.
HANG_MARGIN = 30
#: Facts that each quiesce records afresh.
_PER_RUN = (
    "method",
    "lock_wait_ms",
    "log_bin",
    "binlog_file",
    "binlog_position",
    "gtid_binlog_pos",
    "executed_gtid_set",
    "dump_snapshot_ms",
    "dump_ms",
    "dump_bytes",
    "dump_warnings",
)


class MariadbPlugin(ApplicationPlugin):
    """One MariaDB or MySQL server (``unix_socket``, or ``host`` and ``port``: :attr:`address`)."""

    kind = "mariadb"
    # InnoDB flushes pages and writes redo in the background even while commits are
    # blocked: a file-by-file copy of a live datadir mixes instants.
    consistent_on = frozenset({SnapshotKind.ATOMIC})
    crash_safety = CrashSafety.PROCESS_EXIT
    # snapshot first, where an atomic snapshot takes the datadir in milliseconds; the core
    # picks "logical" where the stages cannot be consistent with it (clone)
    capture_modes = ("snapshot", "logical")
    answers_sql = True

    def __init__(self, name: str, table: Table) -> None:
        super().__init__(name, table)
        self.address = Address.from_table(table)
        self.user = self.address.user
        self._password = table.get_secret("password")
        self.datadir = table.get_path("datadir", None)
        self.lock: str = table.get_choice("lock", ("auto", "backup-stage", "flush-tables"), "auto")
        dump_path = table.get_str("dump_path", f"/freezeframe-dumps/{name}")
        if not os.path.isabs(dump_path):
            raise ConfigError("dump_path", f"{dump_path!r} is not an absolute path")
        #: Where the logical capture's dump goes, as an original path of each view.
        self.dump_path = Path(os.path.normpath(dump_path))
        self.bin_dir = table.get_path("bin_dir", None)
        self._secret_env = table.get_str("password_env", None)  # kept from mariadb-dump
        where = self.address.where
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
        self._dump: _logical.Dump | None = None
        self._interrupted = threading.Event()

    # -- talking to the server ----------------------------------------------------
    def _error(
        self, what: str, e: BaseException, cls: type[FreezeframeError], *, late: bool = False
    ) -> FreezeframeError:
        """One line naming the application; the password never appears, whatever the driver said.

        ``late``: the deadline has passed, so a read that timed out means we gave up.
        """
        secret = self._password.reveal() if self._password else ""
        return cls(driver_error(f"{self.who}: {what}", self.user, secret, e, late=late))

    def _connect(self, timeout: float, *, read_timeout: float | None = None) -> Any:
        import pymysql  # type: ignore[import-untyped]  # lazily: `freezeframe --help` stays fast

        try:
            password = self._password.reveal() if self._password else ""
            return self.address.connect(password, timeout, read_timeout)
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
        """BACKUP STAGE where the server has it, unless ``lock`` says otherwise (always in
        the logical mode, whose dump would wait on FLUSH TABLES WITH READ LOCK)."""
        if self.capture == "logical" or self.lock == "backup-stage":
            return True
        return self.lock == "auto" and server.backup_stage

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
        """Reachable, logged in, version supported, privileged; datadir here, on one filesystem
        (logical mode: BACKUP STAGE, the dump's privileges and ``mariadb-dump`` instead)."""
        import pymysql

        conn = self._connect(TIMEOUT, read_timeout=TIMEOUT)
        try:
            server, layout = self._inspect(conn)
            if problem := server.unsupported():
                raise FreezeframeError(f"{self.who}: {problem}")
            if self.capture == "logical":
                if problem := _logical.problem(
                    server, layout, self.lock, self.dump_path, self.bin_dir
                ):  # what the profile asks cannot be: exit 2
                    raise ConfigError("capture", f"{self.who}: {problem}")
            elif self.lock == "backup-stage" and not server.backup_stage:
                raise FreezeframeError(
                    f'{self.who}: lock = "backup-stage" needs MariaDB 10.4 or later, '
                    f'not {server.product}; use lock = "flush-tables" (or "auto")'
                )
            with conn.cursor() as cur:
                cur.execute("SHOW GRANTS")
                privileges = global_privileges(row[0] for row in cur.fetchall())
                stage = self._uses_backup_stage(server)
                needs = {"RELOAD": "BACKUP STAGE" if stage else "FLUSH TABLES WITH READ LOCK"}
                if self.capture == "logical":
                    needs |= dict.fromkeys(_logical.PRIVILEGES, "mariadb-dump")
                if problem := missing_privileges(privileges, needs):
                    raise FreezeframeError(f"{self.who}: user {self.user!r} {problem}")
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
        if self.capture != "logical" and (problem := layout.problem_here()):
            raise FreezeframeError(f"{self.who}: {problem}")  # a dump needs no datadir here

    def prepare(self, snapshot_kinds: frozenset[SnapshotKind]) -> None:
        """Refuse anything but atomic snapshots; read the layout afresh (blocks nobody).
        Nothing in the logical mode, which copies no file."""
        if self.capture == "logical":
            return
        if snapshot_kinds - self.consistent_on:
            raise FreezeframeError(
                f"{self.who}: a live datadir is only consistent on an atomic snapshot "
                "(btrfs, LVM, ZFS), not on a per-file one"
            )
        layout = self._query_layout()
        if problem := layout.problem_here():
            raise FreezeframeError(f"{self.who}: {problem}")
        self._facts["datadir"] = str(layout.datadir)
        self._facts["data_paths"] = [str(p) for p in layout.data_paths()]

    def data_paths(self) -> Sequence[Path]:
        """The datadir, plus the redo, undo, system tablespace and log folders outside it;
        nothing in the logical mode, whose completion writes the dump."""
        if self.capture == "logical":
            return ()
        layout = self._layout or self._query_layout()
        return layout.data_paths()

    def completed_paths(self) -> Sequence[Path]:
        """``dump_path``, in the logical mode."""
        return (self.dump_path,) if self.capture == "logical" else ()

    # -- the freeze --------------------------------------------------------------
    def quiesce(self, deadline: Deadline) -> None:
        """Take the backup lock on a connection of our own; read the binlog position under it;
        in the logical mode, start the dump and wait for its snapshot to begin."""
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
                self._facts["lock_wait_ms"] = round((time.monotonic() - started) * 1000, 3)
                if self.capture == "logical":
                    self._start_dump(deadline)
            except BaseException as e:
                self._release()
                self._drop_dump()
                if isinstance(e, pymysql.MySQLError):
                    raise self._error(
                        self._step, e, QuiesceError, late=deadline.expired()
                    ) from None
                raise
            self._quiesced = True

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
            elif code in LOST or isinstance(e, pymysql.err.InterfaceError):
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
        self._interrupted.clear()  # an interrupted quiesce is over
        if lost and was_quiesced:
            raise QuiesceError(
                f"{self.who}: the backup lock was lost before the thaw ({lost}); "
                "the snapshot may not be consistent"
            )

    # -- the logical capture -------------------------------------------------------
    def _start_dump(self, deadline: Deadline) -> None:
        """Under the block: start mariadb-dump; return once its snapshot exists."""
        self._step = "starting mariadb-dump"
        try:
            argv = [program("mariadb-dump", self.bin_dir), *self.address.client_options()]
        except FreezeframeError as e:
            raise QuiesceError(f"{self.who}: {e}") from None
        env = {k: v for k, v in os.environ.items() if k != self._secret_env}
        password = self._password.reveal() if self._password else None
        self._drop_dump()  # a run that was never released (it always is)
        self._dump = _logical.Dump(self.who, argv, password, env)
        self._dump.start(deadline, self._interrupted.is_set)
        self._facts.update(self._dump.facts)
        self._facts["dump_file"] = str(self.dump_path / _logical.DUMP_FILE)

    def _drop_dump(self) -> None:
        dump, self._dump = self._dump, None
        if dump is not None:
            dump.close()

    def complete(self, snapshots: Sequence[Artifact]) -> None:
        """Wait for the dump to finish whole; copy it into each view at ``dump_path``."""
        dump = self._dump
        if dump is None:
            raise FreezeframeError(f"{self.who}: no dump was started to complete")
        dump.finish(self._interrupted.is_set)
        dump.place(snapshots, self.dump_path)
        self._facts.update(dump.facts)

    def release(self) -> None:
        """Kill the dump if it still runs and drop its file; end a backup stage still held.
        Idempotent."""
        try:
            self._drop_dump()
            with self._lock:
                self._release()
        finally:
            self._interrupted.clear()

    def interrupt(self) -> None:
        """Make a dump being waited for (its snapshot, or its end) give up within 50 ms."""
        self._interrupted.set()

    def describe(self) -> Mapping[str, Any]:
        """Server and version, lock method and wait, datadir, binary log file, position and
        GTID; in the logical mode, the dump's file, size and times."""
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
        """Remove the original's pid file and socket; make binlog index entries relative.
        A restored dump (logical mode) is loaded into a fresh datadir at the original's."""
        layout = self._restore_layout(root)
        who = f"application {self.name!r}"
        dump = under(root, self.dump_path) / _logical.DUMP_FILE
        if exists_below(root, dump):
            _reload.restore(layout, root, dump, who, self.bin_dir)
        else:
            _restored.prepare(layout, root, who)

    def verify_restored(self, root: Path) -> None:
        """Start a private server on the restored copy, ``CHECK TABLE`` every table, stop it."""
        layout = self._restore_layout(root)
        who = f"application {self.name!r}"
        with _restored.temporary_server(layout, root, who, bin_dir=self.bin_dir) as server:
            try:
                _restored.check_tables(server)
            except FreezeframeError as e:
                raise FreezeframeError(f"{who}: {e}") from None

    @contextlib.contextmanager
    def drill(self, ctx: DrillContext) -> Iterator[Running | None]:
        """Start a private server on the restored copy as ``verify_restored`` does, through
        the drill; checks ``start``, ``binlog_position``, ``check_table`` and ``stop``
        (:mod:`._drill`). Answers SQL as root on its socket."""
        with _drill.drill(ctx, lambda: self._restore_layout(ctx.root), self.bin_dir) as running:
            yield running


@hookimpl
def freezeframe_register_applications(register: Callable[[type[Any]], None]) -> None:
    """Register the ``mariadb`` application plug-in."""
    register(MariadbPlugin)
