"""A restored datadir: made ready to start, then started on a private server and checked.

The temporary server reads no option file (``--no-defaults``: the system's
my.cnf names the original's port, socket and datadir), listens on no port
(``--skip-networking``), keeps its socket, pid file, error log and tmpdir in
a private folder, starts no replication and no event, and trusts whoever
reaches that folder's socket (``--skip-grant-tables``): freezeframe needs no
password of the restored copy. It can therefore run beside the original. As
root it runs as the datadir's owner. ``restore --verify`` starts it in a
private folder of its own (:func:`temporary_server`); a drill in the folder it
is given, through the drill's ``spawn`` (:func:`private_server`).

To load a logical dump into a fresh datadir (``loading``), the server keeps
its grant tables (events cannot be created without them) and a fresh
datadir's root needs no password; it writes no binary log, and it must stop
cleanly: the datadir is then ready to start like a physical restore.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from freezeframe.plugin import (
    FreezeframeError,
    ToolError,
    exists_below,
    find_tool,
    is_folder_below,
    read_below,
    replace_below,
    under,
    unlink_below,
)
from freezeframe_mariadb._layout import Layout
from freezeframe_mariadb._server import LOST, program

__all__ = [
    "Started",
    "check_tables",
    "first_error",
    "prepare",
    "private_server",
    "settings_options",
    "temporary_server",
]

#: How long a restored copy may take to start (InnoDB crash recovery of a big redo log).
START_TIMEOUT = 600.0
STOP_TIMEOUT = 300.0
#: How long a server whose connection broke may take to exit, if it is dying.
DYING = 10.0
_OK_STATUS = ("ok", "table is already up to date")


def prepare(layout: Layout, root: Path, who: str) -> Path:
    """Drop what would stop the restored copy from starting; returns its datadir.

    Removes the pid file and socket the original left in its data folders
    (a stale pid file makes service managers think the server runs) and makes
    binary-log index entries that name the original's absolute paths relative
    to the datadir, so the copy never reads the original's logs.
    """
    datadir = under(root, layout.datadir)
    try:
        if not is_folder_below(root, datadir):
            raise FreezeframeError(f"{datadir} was not restored")
        stale = [under(root, p) for p in layout.runtime_files if layout.is_data(p)]
        for entry in datadir.iterdir():
            if entry.suffix == ".pid" or _is_socket(entry):
                stale.append(entry)
        for p in stale:  # never through a symlinked folder; a folder itself stays
            if _is_socket(p) or p.is_symlink() or p.is_file():
                unlink_below(root, p)
        if layout.log_bin_basename is not None:
            index = Path(f"{layout.log_bin_basename}.index")
            _relocate_index(layout, root, under(root, index))
    except FreezeframeError as e:
        raise FreezeframeError(f"{who}: {e}") from None
    return datadir


def _is_socket(p: Path) -> bool:
    try:
        return stat.S_ISSOCK(p.lstat().st_mode)
    except OSError:
        return False


def _relocate_index(layout: Layout, root: Path, index: Path) -> None:
    """Rewrite absolute entries of a binlog index that point into a data folder as relative ones.

    The server opens index entries from its working directory, the datadir; a
    relative entry works in the restored tree and again once it is moved back.
    Read and replaced without following a symlink inside ``root``.
    """
    if not exists_below(root, index):
        return
    lines = read_below(root, index).decode().splitlines()
    changed = []
    for line in lines:
        p = Path(line)
        if p.is_absolute() and layout.is_data(p):
            line = os.path.relpath(p, layout.datadir)
            line = line if line.startswith(".") else f"./{line}"
        changed.append(line)
    if changed != lines:
        replace_below(root, index, "".join(f"{line}\n" for line in changed).encode())


def _server_binary(bin_dir: Path | None) -> str:
    try:
        return program("mariadbd", bin_dir)
    except ToolError:
        try:
            return program("mysqld", bin_dir)
        except ToolError:
            raise ToolError(
                "neither mariadbd nor mysqld is installed: the restored copy cannot be started"
            ) from None


#: The start of a server's log line (``2026-12-06 12:13:55 0 ``), dropped from messages.
_STAMP = re.compile(r"^\d{4}-\d\d-\d\d[ T][\d:.]+\s+\d+\s+")


def first_error(log: Path, offset: int = 0) -> str:
    """The first ``[ERROR]`` line the server wrote to ``log`` from byte ``offset`` on (the
    cause: the lines after it say what followed, down to ``[ERROR] Aborting``), without
    its time; else the last line."""
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return "no error log"
    lines = [_STAMP.sub("", x.strip()) for x in text.splitlines() if x.strip()]
    errors = [x for x in lines if "[ERROR]" in x]
    return (errors or lines or ["nothing in its error log"])[0 if errors else -1]


@dataclass
class Started:
    """A private server on a restored copy, answering on its socket."""

    #: A connection as root (no read timeout: a CHECK TABLE may take long).
    conn: Any
    socket: Path
    process: subprocess.Popen[bytes]
    #: Its error log, and how much of it the start wrote.
    log: Path
    logged: int
    #: ``VERSION()``, and how long it took to answer (InnoDB recovery included).
    version: str
    seconds: float
    #: Set when the block ends: whether it stopped cleanly (exit 0, not killed).
    clean: bool = False

    def first_error(self) -> str:
        """The first ``[ERROR]`` line it wrote since it answered (why it died)."""
        return first_error(self.log, self.logged)

    def start_log(self) -> str:
        """What it wrote while it started (InnoDB recovery)."""
        with contextlib.suppress(OSError), open(self.log, "rb") as f:
            return f.read(self.logged).decode(errors="replace")
        return ""


#: Starts a server: :class:`subprocess.Popen`, or a drill's :meth:`DrillContext.spawn`.
Spawn = Callable[..., "subprocess.Popen[bytes]"]
#: Longest unix socket path (``sun_path`` holds 108 bytes with the final NUL).
SOCKET_MAX = 107


@contextlib.contextmanager
def private_server(
    layout: Layout,
    root: Path,
    run_dir: Path,
    *,
    loading: bool = False,
    bin_dir: Path | None = None,
    spawn: Spawn = subprocess.Popen,
    waiting: Callable[[], None] = lambda: None,
) -> Iterator[Started]:
    """Start a private server on the copy restored under ``root``; yield it once it answers.

    Its pid file, error log, tmpdir and socket go in ``run_dir`` (made; the socket in a
    short private folder of /tmp instead, should its path be too long). As root it runs
    as the datadir's owner (``setpriv``, which keeps the parent-death signal that
    ``spawn`` may have set; ``--user=root`` when that owner is root). It is shut down
    (SIGKILL if it will not stop) when the block ends, however it ends; then
    :attr:`Started.clean` says how. ``waiting`` is called while it starts (it may raise
    to give up). :class:`FreezeframeError` (not naming the application) if it does not
    start. ``loading``: a fresh datadir that a dump is loaded into (see above).
    """
    import pymysql  # type: ignore[import-untyped]

    datadir = under(root, layout.datadir)
    if problem := _missing_system_tablespace(layout, root):
        raise FreezeframeError(f"the restored copy in {datadir} cannot start: {problem}")
    binary = _server_binary(bin_dir)
    run_dir.mkdir(mode=0o700, exist_ok=True)
    sock_dir = run_dir
    if len(os.fsencode(run_dir / "mysqld.sock")) > SOCKET_MAX:
        sock_dir = Path(tempfile.mkdtemp(prefix="ff-mariadb-"))
    sock, log = sock_dir / "mysqld.sock", run_dir / "error.log"
    argv = [
        binary,
        "--no-defaults",
        f"--datadir={datadir}",
        f"--socket={sock}",
        f"--pid-file={run_dir / 'mysqld.pid'}",
        f"--log-error={log}",
        f"--tmpdir={run_dir}",
        "--skip-networking",
        "--skip-slave-start",
        *(_LOADING if loading else _CHECKING),
        *_start_options(layout, root, binlog=not loading),
    ]
    proc: subprocess.Popen[bytes] | None = None
    started: Started | None = None
    conn = None
    try:
        argv = _as_owner(argv, datadir.stat(), (run_dir, sock_dir))
        began = time.monotonic()
        proc = spawn(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = began + START_TIMEOUT
        while conn is None:
            if proc.poll() is not None:
                raise FreezeframeError(
                    f"the restored copy in {datadir} did not start "
                    f"(exit {proc.returncode}): {first_error(log)}"
                )
            waiting()
            try:
                conn = pymysql.connect(
                    unix_socket=str(sock),
                    user="root",
                    connect_timeout=5,
                    autocommit=True,
                    ssl_disabled=True,
                )
            except pymysql.err.OperationalError:
                if time.monotonic() > deadline:
                    raise FreezeframeError(
                        f"the restored copy in {datadir} did not start within "
                        f"{START_TIMEOUT:g}s: {first_error(log)}"
                    ) from None
                time.sleep(0.05)
        seconds = time.monotonic() - began
        with conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            version = str(cur.fetchone()[0])
        started = Started(conn, sock, proc, log, _size(log), version, seconds)
        yield started
    finally:
        clean = _stop(proc, conn) if proc is not None else True
        if started is not None:
            started.clean = clean
        if sock_dir != run_dir:
            shutil.rmtree(sock_dir, ignore_errors=True)


@contextlib.contextmanager
def temporary_server(
    layout: Layout, root: Path, who: str, *, loading: bool = False, bin_dir: Path | None = None
) -> Iterator[Started]:
    """:func:`private_server` in a private folder of the temp dir, removed afterwards; its
    errors name the application (``who``). ``loading``: :class:`FreezeframeError` if the
    server does not stop cleanly."""
    run_dir = Path(tempfile.mkdtemp(prefix="freezeframe-mariadb-"))
    try:
        with contextlib.ExitStack() as stack:
            try:
                server = stack.enter_context(
                    private_server(layout, root, run_dir, loading=loading, bin_dir=bin_dir)
                )
            except FreezeframeError as e:
                raise FreezeframeError(f"{who}: {e}") from None
            yield server
        if loading and not server.clean:  # reached only when the block itself succeeded
            raise FreezeframeError(
                f"{who}: the server loading the dump did not stop cleanly: {server.first_error()}"
            )
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _as_owner(argv: list[str], datadir: os.stat_result, folders: Iterable[Path]) -> list[str]:
    """``argv`` run as the datadir's owner when we are root (its ``folders`` given to it).

    Through ``setpriv``, not ``--user``: the server would change its uid itself, which
    clears the parent-death signal (``--pdeathsig`` sets it again after the change).
    """
    if os.geteuid() != 0:
        return argv
    if datadir.st_uid == 0:
        return [argv[0], argv[1], "--user=root", *argv[2:]]  # mariadbd refuses root otherwise
    try:
        gid, groups = pwd.getpwuid(datadir.st_uid).pw_gid, "--init-groups"
    except KeyError:
        gid, groups = datadir.st_gid, "--clear-groups"
    for folder in folders:
        os.chown(folder, datadir.st_uid, gid)
    user = [f"--reuid={datadir.st_uid}", f"--regid={gid}", groups]
    return [find_tool("setpriv"), *user, "--pdeathsig=KILL", "--", *argv]


def _missing_system_tablespace(layout: Layout, root: Path) -> str | None:
    """Which file of the InnoDB system tablespace the copy lacks (a server would make a new,
    empty one in its place, or refuse with a message about its redo log)."""
    home = under(root, layout.directories.get("innodb_data_home_dir", layout.datadir))
    for entry in layout.settings.get("innodb_data_file_path", "ibdata1:12M").split(";"):
        name, *spec = entry.strip().split(":")
        if not name or any(s.lower().endswith("raw") for s in spec):
            continue  # a raw partition: not a file of the copy
        path = under(root, Path(name)) if name.startswith("/") else home / name
        if not path.is_file():
            return f"the InnoDB system tablespace {path.name} is missing ({path})"
    return None


#: Checking a restored copy: no password needed, nothing run by itself.
_CHECKING = ("--skip-grant-tables", "--event-scheduler=DISABLED")
#: Loading a dump: events can be created (not run), the largest row fits, and the redo log
#: is flushed once a second (a crash fails the restore anyway; the clean stop flushes all).
_LOADING = (
    "--event-scheduler=OFF",
    "--max-allowed-packet=1G",
    "--innodb-flush-log-at-trx-commit=2",
)


def settings_options(layout: Layout, root: Path) -> list[str]:
    """The options that place the copy's files below ``root`` and match the settings it
    was made with (page size, system and undo tablespaces, lower_case_table_names)."""
    opts = [f"--{k.replace('_', '-')}={v}" for k, v in layout.settings.items()]
    for name, p in layout.directories.items():
        opts.append(f"--{name.replace('_', '-')}={under(root, p)}")
    return opts


def _start_options(layout: Layout, root: Path, *, binlog: bool) -> list[str]:
    """:func:`settings_options`, the redo log's size and the binary log."""
    opts = settings_options(layout, root)
    # The redo log's size is that of its file: another size would make the copy rebuild it.
    log_dir = under(root, layout.directories.get("innodb_log_group_home_dir", layout.datadir))
    redo = log_dir / "ib_logfile0"
    if redo.is_file():
        opts.append(f"--innodb-log-file-size={redo.stat().st_size}")
    if binlog and layout.log_bin_basename is not None:
        # The same binary log, restored: crash recovery resolves in-doubt transactions with it.
        # Relative to the datadir (the server's working directory), as prepare() makes the
        # index: the new log the copy starts is then found again once the tree is moved back.
        opts.append(f"--log-bin={os.path.relpath(layout.log_bin_basename, layout.datadir)}")
    return opts


def _stop(proc: subprocess.Popen[bytes], conn: Any) -> bool:
    """Shut the server down; whether it stopped cleanly (exit 0, not killed)."""
    if conn is not None:
        with contextlib.suppress(Exception):
            conn.cursor().execute("SHUTDOWN")
        with contextlib.suppress(Exception):
            conn.close()
    if proc.poll() is None:
        proc.terminate()  # a clean shutdown, as SHUTDOWN would
    try:
        return proc.wait(STOP_TIMEOUT) == 0
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return False


def check_tables(server: Started) -> int:
    """``CHECK TABLE`` on every table of the copy, one at a time; returns how many.

    :class:`FreezeframeError` naming each damaged table with what the server said of it
    (its first error or warning), or the table the server died on.
    """
    import pymysql

    with server.conn.cursor() as cur:
        cur.execute(
            "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES"
            " WHERE TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED')"
            " AND TABLE_SCHEMA NOT IN ('information_schema', 'performance_schema')"
            " ORDER BY TABLE_SCHEMA, TABLE_NAME"
        )
        tables = [(str(s), str(t)) for s, t in cur.fetchall()]
        damaged: list[str] = []
        for schema, table in tables:
            name = f"{schema}.{table}"
            quoted = ".".join(f"`{x.replace('`', '``')}`" for x in (schema, table))
            try:
                cur.execute(f"CHECK TABLE {quoted}")
                rows = [(str(kind).lower(), str(text)) for _t, _op, kind, text in cur.fetchall()]
            except pymysql.MySQLError as e:
                said = str(e.args[-1]) if e.args else str(e)
                if not (isinstance(e, pymysql.err.InterfaceError) or (e.args or (0,))[0] in LOST):
                    damaged.append(f"{name} ({said})")  # an error about this table
                    continue
                before = f" (after {'; '.join(damaged)})" if damaged else ""
                with contextlib.suppress(subprocess.TimeoutExpired):
                    server.process.wait(DYING)  # a crashing server writes its stack first
                if server.process.poll() is not None:
                    raise FreezeframeError(
                        f"the server died during CHECK TABLE {name}{before}: "
                        + server.first_error()
                    ) from None
                raise FreezeframeError(
                    f"lost the connection during CHECK TABLE {name}{before}: {said}"
                ) from None
            if problem := _table_problem(rows):
                damaged.append(f"{name} ({problem})")
    if damaged:
        raise FreezeframeError(
            f"CHECK TABLE found {len(damaged)} of {len(tables)} tables damaged: "
            + "; ".join(damaged)
        )
    return len(tables)


def _table_problem(rows: list[tuple[str, str]]) -> str | None:
    """What ``CHECK TABLE``'s rows of one table say is wrong, or ``None`` when it is OK."""
    if not any(
        kind == "error" or (kind == "status" and text.lower() not in _OK_STATUS)
        for kind, text in rows
    ):
        return None
    said = [text for kind, text in rows if kind in ("error", "warning")]
    return (said or [text for _kind, text in rows] or ["no answer"])[0]
