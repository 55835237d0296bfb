"""A restored datadir: made ready to start, then started on a private server and checked.

The temporary server reads no option file (``--no-defaults``: the system's
my.cnf names the original's port, socket and datadir), listens on no port
(``--skip-networking``), keeps its socket, pid file, error log and tmpdir in
a private folder, starts no replication and no event, and trusts whoever
reaches that folder's socket (``--skip-grant-tables``): freezeframe needs no
password of the restored copy. It can therefore run beside the original.

To load a logical dump into a fresh datadir (``loading``), the server keeps
its grant tables (events cannot be created without them) and a fresh
datadir's root needs no password; it writes no binary log, and it must stop
cleanly: the datadir is then ready to start like a physical restore.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from freezeframe.plugin import (
    FreezeframeError,
    ToolError,
    exists_below,
    is_folder_below,
    read_below,
    replace_below,
    under,
    unlink_below,
)
from freezeframe_mariadb._layout import Layout
from freezeframe_mariadb._server import program

__all__ = ["Running", "check_tables", "prepare", "settings_options", "temporary_server"]

#: How long a restored copy may take to start (InnoDB crash recovery of a big redo log).
START_TIMEOUT = 600.0
STOP_TIMEOUT = 300.0
#: Tables per CHECK TABLE statement.
BATCH = 50
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
            raise FreezeframeError(
                "neither mariadbd nor mysqld is installed: the restored copy cannot be started"
            ) from None


def _last_error(log: Path) -> str:
    try:
        lines = [x.strip() for x in log.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return "no error log"
    errors = [x for x in lines if "[ERROR]" in x]
    return (errors or lines or ["empty error log"])[-1]


@dataclass(frozen=True)
class Running:
    """A temporary server: a connection to it (as root) and its private socket."""

    conn: Any
    socket: Path


@contextlib.contextmanager
def temporary_server(
    layout: Layout, root: Path, who: str, *, loading: bool = False, bin_dir: Path | None = None
) -> Iterator[Running]:
    """Start a private server on the copy restored under ``root``; yield it.

    The server is shut down (SIGKILL if it will not) and its private folder
    removed when the block ends, however it ends. ``loading``: a fresh datadir
    that a dump is loaded into (see above); :class:`FreezeframeError` if it does
    not stop cleanly.
    """
    import pymysql  # type: ignore[import-untyped]

    datadir = under(root, layout.datadir)
    owner = datadir.stat().st_uid
    binary = _server_binary(bin_dir)
    run_dir = Path(tempfile.mkdtemp(prefix="freezeframe-mariadb-"))
    sock = run_dir / "mysqld.sock"
    argv = [
        binary,
        "--no-defaults",
        f"--datadir={datadir}",
        f"--socket={sock}",
        f"--pid-file={run_dir / 'mysqld.pid'}",
        f"--log-error={run_dir / 'error.log'}",
        f"--tmpdir={run_dir}",
        "--skip-networking",
        "--skip-slave-start",
        *(_LOADING if loading else _CHECKING),
        *_start_options(layout, root, binlog=not loading),
    ]
    proc: subprocess.Popen[bytes] | None = None
    conn = None
    try:
        if os.geteuid() == 0:
            try:
                user = pwd.getpwuid(owner).pw_name
            except KeyError:
                user = "root"
            os.chown(run_dir, owner, -1)
            argv.insert(2, f"--user={user}")
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while conn is None:
            if proc.poll() is not None:
                raise FreezeframeError(
                    f"{who}: the restored copy in {datadir} did not start "
                    f"(exit {proc.returncode}): {_last_error(run_dir / 'error.log')}"
                )
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
                        f"{who}: the restored copy in {datadir} did not start within "
                        f"{START_TIMEOUT:g}s: {_last_error(run_dir / 'error.log')}"
                    ) from None
                time.sleep(0.05)
        yield Running(conn, sock)
    finally:
        clean = _stop(proc, conn) if proc is not None else True
        why = "" if clean else _last_error(run_dir / "error.log")
        shutil.rmtree(run_dir, ignore_errors=True)
    if loading and not clean:  # reached only when the block itself succeeded
        raise FreezeframeError(f"{who}: the server loading the dump did not stop cleanly: {why}")


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


def check_tables(conn: Any, who: str) -> int:
    """``CHECK TABLE`` on every table of the copy; returns how many; raises on any problem."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES"
            " WHERE TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED')"
            " AND TABLE_SCHEMA NOT IN ('information_schema', 'performance_schema')"
            " ORDER BY TABLE_SCHEMA, TABLE_NAME"
        )
        tables = [f"`{s.replace('`', '``')}`.`{t.replace('`', '``')}`" for s, t in cur.fetchall()]
        problems: list[str] = []
        for i in range(0, len(tables), BATCH):
            cur.execute("CHECK TABLE " + ", ".join(tables[i : i + BATCH]))
            for table, _op, kind, text in cur.fetchall():
                kind, text = str(kind).lower(), str(text)
                if kind == "error" or (kind == "status" and text.lower() not in _OK_STATUS):
                    problems.append(f"{table}: {text}")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise FreezeframeError(f"{who}: CHECK TABLE failed: " + "; ".join(problems[:3]) + more)
    return len(tables)
