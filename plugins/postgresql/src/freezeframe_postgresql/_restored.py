"""A restored data directory: make it startable beside the original, and start it once to check.

A restore lays files out under a root by their original absolute paths, so
a restored data directory still holds absolute symlinks (``pg_wal``, the
``pg_tblspc`` links) and a ``tablespace_map`` that point at the *original*
folders: a server started on it would write into the live cluster's files.
:func:`make_startable` points them at the restored folders instead.

:func:`temporary_server` is the one way freezeframe starts a server on a copy
(``restore --verify``, the logical restore's load, a drill): the postmaster in the
foreground, as the copy's owner, on a private socket folder and port, with archiving
and every outward-facing setting turned off; stopped after the block.
:func:`start_and_query` starts one, runs a query, and stops it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from freezeframe.plugin import (
    FreezeframeError,
    die_with_us,
    exists_below,
    find_tool,
    is_folder_below,
    open_folder,
    read_below,
    replace_below,
    under,
    unlink_below,
)
from freezeframe_postgresql._programs import find_pg_tool

__all__ = [
    "Temporary",
    "as_owner",
    "data_dirs_below",
    "make_startable",
    "one_line",
    "owner_of",
    "start_and_query",
    "temporary_server",
]

#: How long the temporary server may take to recover and accept connections.
START_TIMEOUT = 600
#: How long each way of stopping it (fast, immediate, kill) is given.
STOP_TIMEOUT = 120
#: What postmaster.pid says (its 8th line) once the server accepts connections.
READY = ("ready", "standby")
#: The longest path a unix socket may have (sun_path, less its NUL).
SOCKET_PATH_MAX = 107
#: What a data directory's path may not hold: postmaster.pid keeps it on a line of its own.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def data_dirs_below(root: Path) -> list[Path]:
    """Every folder below ``root`` that looks like a data directory (PG_VERSION, global/)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if "PG_VERSION" in filenames and "global" in dirnames:
            found.append(Path(dirpath))
            dirnames[:] = []
    return sorted(found)


def _relocated(root: Path, target: str) -> Path | None:
    """The restored place of an absolute ``target``; ``None`` when there is nothing to move:
    a relative target (it stays inside the restored tree) or one already below ``root``."""
    path = Path(target)
    if not path.is_absolute() or path.is_relative_to(root):
        return None
    return under(root, path)


def _relink(link: Path, root: Path, what: str) -> str | None:
    old = os.readlink(link)
    new = _relocated(root, old)
    if new is None:
        return None
    if not is_folder_below(root, new):
        raise FreezeframeError(
            f"{what} {link} points to {old}, which was not restored (expected at {new}); "
            "a server started on this copy would use the original's files"
        )
    folder = open_folder(root, link.parent)
    try:
        tmp = f".{link.name}.freezeframe"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=folder)
        os.symlink(new, tmp, dir_fd=folder)
        if os.geteuid() == 0:
            st = os.stat(link.name, dir_fd=folder, follow_symlinks=False)
            os.chown(tmp, st.st_uid, st.st_gid, dir_fd=folder, follow_symlinks=False)
        os.replace(tmp, link.name, src_dir_fd=folder, dst_dir_fd=folder)
    finally:
        os.close(folder)
    return f"{link.name} -> {new}"


def _private(root: Path, path: Path) -> None:
    """PostgreSQL starts only on a data directory of mode 0700 (or 0750 with group access).
    Changed through a descriptor: never through a symlink inside the restored tree."""
    fd = open_folder(root, path)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) not in (0o700, 0o750):
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def make_startable(data_dir: Path, root: Path) -> list[str]:
    """Remove the original's lock files, point links at the restored folders, fix modes.

    Ownership is kept. Nothing is done through a symlink inside ``root``: a folder on
    the way that is one is refused. Returns what was changed, one line each.
    """
    changed = []
    if not is_folder_below(root, data_dir):
        raise FreezeframeError(f"{data_dir} was not restored")
    for name in ("postmaster.pid", "postmaster.opts"):
        if unlink_below(root, data_dir / name):
            changed.append(f"removed {name}")
    wal = data_dir / "pg_wal"
    if wal.is_symlink():
        line = _relink(wal, root, "pg_wal")
        if line:
            changed.append(line)
    tblspc = data_dir / "pg_tblspc"
    for link in sorted(tblspc.iterdir()) if is_folder_below(root, tblspc) else []:
        if link.is_symlink():
            line = _relink(link, root, "tablespace link")
            if line:
                changed.append(f"pg_tblspc/{line}")
    spcmap = data_dir / "tablespace_map"
    if exists_below(root, spcmap):
        old = read_below(root, spcmap).decode("utf-8")
        lines = []
        for line in old.splitlines():
            oid, sep, location = line.partition(" ")
            new = _relocated(root, location) if sep else None
            moved = new is not None and is_folder_below(root, new)
            lines.append(f"{oid} {new}" if moved else line)
        text = "".join(f"{line}\n" for line in lines)
        if text != old:
            replace_below(root, spcmap, text.encode("utf-8"))
            changed.append("tablespace_map points at the restored tablespaces")
    for path in [data_dir, *_link_targets(data_dir, root)]:
        _private(root, path)
    return changed


def _link_targets(data_dir: Path, root: Path) -> Iterator[Path]:
    """The restored folders pg_wal and the tablespace links point to (none outside ``root``)."""
    tblspc = data_dir / "pg_tblspc"
    links = sorted(tblspc.iterdir()) if is_folder_below(root, tblspc) else []
    for link in [data_dir / "pg_wal", *links]:
        if link.is_symlink():
            to = Path(os.path.normpath(link.parent / os.readlink(link)))
            if to.is_relative_to(root) and is_folder_below(root, to):
                yield to


def _major(data_dir: Path) -> str:
    try:
        return (data_dir / "PG_VERSION").read_text(encoding="ascii").strip()
    except OSError as e:
        raise FreezeframeError(f"cannot read {data_dir / 'PG_VERSION'}: {e.strerror}") from None


def one_line(e: BaseException | str) -> str:
    """libpq's multi-line, double-spaced messages as one line."""
    return "; ".join(" ".join(line.split()) for line in str(e).splitlines() if line.strip())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def owner_of(data_dir: Path) -> pwd.struct_passwd:
    """The user that owns ``data_dir``, whom a server on it runs as (never root)."""
    st = data_dir.stat()
    if st.st_uid == 0:
        raise FreezeframeError(
            f"{data_dir} belongs to root and PostgreSQL refuses to run as root: "
            "chown -R it to the user the server runs as"
        )
    try:
        return pwd.getpwuid(st.st_uid)
    except KeyError:
        raise FreezeframeError(
            f"{data_dir} belongs to uid {st.st_uid}, which has no user"
        ) from None


def as_owner(owner: pwd.struct_passwd, argv: list[str], data_dir: Path) -> list[str]:
    """``argv`` run as ``owner`` of ``data_dir``: through ``setpriv`` when we are root, which
    execs (the pid stays the one we started) and keeps the kernel's kill-on-our-death
    across the change of user, which would otherwise clear it."""
    if os.geteuid() == owner.pw_uid:
        return argv
    if os.geteuid() != 0:
        raise FreezeframeError(
            f"{data_dir} belongs to {owner.pw_name}: run the check as root or as {owner.pw_name}"
        )
    ids = [f"--reuid={owner.pw_uid}", f"--regid={owner.pw_gid}", "--init-groups"]
    return [find_tool("setpriv"), *ids, "--pdeathsig=KILL", "--", *argv]


def _last_fatal(log: Path) -> str:
    """The server's last FATAL (or PANIC) line; else its last words (what the postmaster
    says before it logs, over a few lines), as one line."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if "FATAL:" in line or "PANIC:" in line:
            return line[line.find("FATAL:") if "FATAL:" in line else line.find("PANIC:") :]
    return " ".join(line.strip() for line in lines[-3:] if line.strip())


def _server_env() -> dict[str, str]:
    """What a server on a copy gets of our environment: the PATH and the locale, nothing
    else (no secret reaches a process of another user)."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TZ") or k[:3] == "LC_"}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    return env


def _spawn(argv: Sequence[str], **popen: Any) -> subprocess.Popen[bytes]:
    """Start a server that dies with us (restore's own servers; a drill passes its own)."""
    return subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=die_with_us(),
        **popen,
    )


def _ready(data_dir: Path, pid: int) -> bool:
    """Whether the server ``pid`` says in its postmaster.pid that it accepts connections
    (``ready``; ``standby``: a hot standby, which accepts them too)."""
    try:
        lines = (data_dir / "postmaster.pid").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() in READY


def _socket_folder(folder: Path) -> Path | None:
    """``folder`` when a socket's path in it is short enough for a unix socket, else None."""
    return folder if len(f"{folder}/.s.PGSQL.65535".encode()) <= SOCKET_PATH_MAX else None


def _private_folder(folder: Path | None, owner: pwd.struct_passwd) -> Path:
    """``folder`` (or a new one in /tmp), mode 0700, the owner's."""
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="freezeframe-pg-", dir="/tmp"))
    else:
        folder.mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    return folder


@dataclass
class Temporary:
    """A temporary server: reach it at ``socket_dir`` and ``port`` (trusted there only)."""

    socket_dir: Path
    port: int
    #: The data directory's owner, whom the server runs as.
    owner: str
    log: Path
    #: Its PostgreSQL major version (``"15"``).
    major: str
    #: How it was stopped, once it was: ``"fast"``, ``"immediate"``, ``"killed"`` (after
    #: neither worked within STOP_TIMEOUT), or ``"exited"`` (it had ended by itself).
    stopped: str = ""


@contextlib.contextmanager
def temporary_server(
    data_dir: Path,
    *,
    bin_dir: Path | None,
    settings: Mapping[str, str] | None = None,
    folder: Path | None = None,
    spawn: Callable[..., subprocess.Popen[bytes]] = _spawn,
    waiting: Callable[[], None] | None = None,
) -> Iterator[Temporary]:
    """A server started on ``data_dir`` for the block, stopped after it (fast, else
    immediate, else killed).

    The postmaster runs in the foreground (started by ``spawn``, a drill's
    :meth:`~freezeframe.plugin.DrillContext.spawn`), as the data directory's owner, on a
    free port with its socket, configuration and log in ``folder`` (made here; default:
    a new folder in /tmp) and no TCP listener, trusted only there, with archiving and
    every outward-facing setting off (``settings`` are added); its environment is the
    PATH and the locale only. ``waiting`` is called while it recovers (a drill's
    interrupt). Raises :class:`FreezeframeError` with the server's last FATAL line when it
    does not come up; a folder of its own (and its log) is kept when the start or the
    block failed, and named in that message.
    """
    owner = owner_of(data_dir)
    if found := _CONTROL.search(str(data_dir)):
        raise FreezeframeError(
            f"{str(data_dir)!r}: a server cannot be started on a path holding {found[0]!r}, "
            "which its postmaster.pid cannot record (restore to another folder)"
        )
    major = _major(data_dir)
    postgres = find_pg_tool("postgres", major, bin_dir)
    own_folder = folder is None
    private = _private_folder(folder, owner)
    socket_dir = _socket_folder(private) or _private_folder(None, owner)
    keep_private = False
    proc: subprocess.Popen[bytes] | None = None
    server = Temporary(socket_dir, _free_port(), owner.pw_name, private / "server.log", major)
    try:
        (private / "pg_hba.conf").write_text("local all all trust\n", encoding="utf-8")
        (private / "pg_ident.conf").write_text("", encoding="utf-8")
        quoted = '"' + str(socket_dir).replace('"', '""') + '"'  # one item of a list setting
        options = {
            "port": str(server.port),
            "listen_addresses": "",
            "unix_socket_directories": quoted,
            "unix_socket_group": "",
            "hba_file": str(private / "pg_hba.conf"),
            "ident_file": str(private / "pg_ident.conf"),
            # Never push this copy's WAL into the original's archive, never fetch from it,
            # never wait for the original's standbys.
            "archive_mode": "off",
            "restore_command": "",
            "primary_conninfo": "",
            "primary_slot_name": "",
            "synchronous_standby_names": "",
            # Nothing the original owns: its pid file, its log, its certificates, its memory.
            "external_pid_file": str(private / "external.pid"),
            "logging_collector": "off",
            "log_destination": "stderr",
            "ssl": "off",
            "huge_pages": "off",
            "shared_buffers": "128MB",
            # The copy changes by its recovery only (and what the caller does).
            "autovacuum": "off",
            **(settings or {}),
        }
        if int(major) < 15:
            options["stats_temp_directory"] = str(private / "stat")
        if not (data_dir / "postgresql.conf").exists():  # Debian keeps it in /etc
            (private / "postgresql.conf").write_text("", encoding="utf-8")
            options["config_file"] = str(private / "postgresql.conf")
        if os.geteuid() == 0:
            for f in private.iterdir():
                os.chown(f, owner.pw_uid, owner.pw_gid)
        argv = [postgres, "-D", str(data_dir)]
        for key, value in options.items():
            argv += ["-c", f"{key}={value}"]
        with open(server.log, "ab") as log:
            proc = spawn(
                as_owner(owner, argv, data_dir),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=private,
                env=_server_env(),
            )
        try:
            _wait_ready(proc, data_dir, waiting)
        except FreezeframeError as e:
            keep_private = own_folder
            where = f" (server log: {server.log})" if own_folder else ""
            why = _last_fatal(server.log) or str(e)
            raise FreezeframeError(
                f"the restored copy {data_dir} did not start: {why}{where}"
            ) from None
        try:
            yield server
        except BaseException:
            keep_private = own_folder
            raise
    finally:
        if proc is not None:
            server.stopped = _stop(proc)
        if socket_dir != private:
            shutil.rmtree(socket_dir, ignore_errors=True)
        if own_folder and not keep_private:
            shutil.rmtree(private, ignore_errors=True)


def _wait_ready(
    proc: subprocess.Popen[bytes], data_dir: Path, waiting: Callable[[], None] | None
) -> None:
    """Until the server accepts connections; raises when it ended or took too long."""
    deadline = time.monotonic() + START_TIMEOUT
    while not _ready(data_dir, proc.pid):
        if waiting is not None:
            waiting()
        try:
            code = proc.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            if time.monotonic() > deadline:
                raise FreezeframeError(
                    f"it accepted no connection within {START_TIMEOUT} s"
                ) from None
            continue
        raise FreezeframeError(f"the server ended (exit {code})")


def _stop(proc: subprocess.Popen[bytes]) -> str:
    """Stop the postmaster: a fast shutdown, else an immediate one, else kill its session;
    each bounded. Returns which did it."""
    if proc.poll() is not None:
        return "exited"
    for sig, mode in ((signal.SIGINT, "fast"), (signal.SIGQUIT, "immediate")):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
            return mode
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the postmaster's children too
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_TIMEOUT)
    return "killed"


def start_and_query(
    data_dir: Path,
    *,
    bin_dir: Path | None,
    user: str | None,
    dbname: str | None,
) -> dict[str, Any]:
    """Start a temporary server on ``data_dir`` (:func:`temporary_server`), let it recover,
    query it, stop it.

    Connects as ``user`` (default: the data directory's owner) to ``dbname``
    (default ``postgres``). Returns what the server said.
    """
    import psycopg

    with temporary_server(data_dir, bin_dir=bin_dir) as server:
        try:
            with psycopg.connect(
                host=str(server.socket_dir),
                port=server.port,
                user=user or server.owner,
                dbname=dbname or "postgres",
                connect_timeout=30,
                autocommit=True,
            ) as conn:
                row = conn.execute(
                    "SELECT current_setting('server_version'), pg_is_in_recovery(),"
                    " (SELECT count(*) FROM pg_database)"
                ).fetchone()
        except psycopg.Error as e:
            raise FreezeframeError(
                f"the restored copy {data_dir} started but refused a query: {one_line(e)}"
            ) from None
    assert row is not None
    return {"server_version": row[0], "in_recovery": row[1], "databases": row[2]}
