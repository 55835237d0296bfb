"""A restored data directory: make it startable beside the original, and start it once to check.

A restore lays files out under a root by their original absolute paths, so
a restored data directory still holds absolute symlinks (``pg_wal``, the
``pg_tblspc`` links) and a ``tablespace_map`` that point at the *original*
folders: a server started on it would write into the live cluster's files.
:func:`make_startable` points them at the restored folders instead.

:func:`start_and_query` starts a temporary server on the copy
(:func:`temporary_server`, which the logical restore also loads its dump into) with
``pg_ctl``, as the copy's owner, on a private socket folder and port, with
archiving and every outward-facing setting turned off, runs a query, and
stops it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from freezeframe.plugin import (
    FreezeframeError,
    ToolError,
    exists_below,
    find_tool,
    is_folder_below,
    open_folder,
    read_below,
    replace_below,
    run_tool,
    under,
    unlink_below,
)
from freezeframe_postgresql._programs import find_pg_tool

__all__ = [
    "Temporary",
    "as_owner",
    "data_dirs_below",
    "make_startable",
    "start_and_query",
    "temporary_server",
]

#: How long the temporary server may take to recover and accept connections.
START_TIMEOUT = 600
STOP_TIMEOUT = 120
#: What pg_ctl cannot pass: it starts the server through ``/bin/sh -c`` with the data
#: directory inside double quotes, where these stay special (and control characters
#: have no place in a path a server is started on). Spaces, ``#``, ``'`` and the rest are fine.
_SHELL_SPECIAL = re.compile(r'["$`\\\x00-\x1f\x7f]')


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


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def as_owner(owner: pwd.struct_passwd, argv: list[str], data_dir: Path) -> list[str]:
    """``argv`` run as ``owner`` of ``data_dir`` (through runuser when we are root)."""
    if os.geteuid() == owner.pw_uid:
        return argv
    if os.geteuid() != 0:
        raise FreezeframeError(
            f"{data_dir} belongs to {owner.pw_name}: run the check as root or as {owner.pw_name}"
        )
    return [find_tool("runuser"), "-u", owner.pw_name, "--", *argv]


def _last_fatal(log: Path) -> str:
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if "FATAL:" in line or "PANIC:" in line:
            return line[line.find("FATAL:") if "FATAL:" in line else line.find("PANIC:") :]
    return lines[-1].strip() if lines else ""


@dataclass(frozen=True)
class Temporary:
    """A temporary server: reach it at ``socket_dir`` and ``port`` (trusted there only)."""

    socket_dir: Path
    port: int
    #: The data directory's owner, whom the server runs as.
    owner: str
    log: Path


@contextlib.contextmanager
def temporary_server(
    data_dir: Path,
    *,
    bin_dir: Path | None,
    hide: Sequence[str] = (),
    settings: Mapping[str, str] | None = None,
) -> Iterator[Temporary]:
    """A server started on ``data_dir`` for the block, stopped after it (fast, else
    immediate).

    It runs as the data directory's owner, on a free port with its socket in a private
    folder and no TCP listener, trusted only there, with archiving and every
    outward-facing setting off (``settings`` are added). The environment variables named
    in ``hide`` (freezeframe's secrets) are blanked for pg_ctl and the server, which run
    as another user. Raises :class:`FreezeframeError` with the server's last FATAL line
    when it does not come up; the private folder (and its log) is kept when the start or
    the block failed.
    """
    st = data_dir.stat()
    if st.st_uid == 0:
        raise FreezeframeError(
            f"{data_dir} belongs to root and PostgreSQL refuses to run as root: "
            "chown -R it to the user the server runs as"
        )
    try:
        owner = pwd.getpwuid(st.st_uid)
    except KeyError:
        raise FreezeframeError(
            f"{data_dir} belongs to uid {st.st_uid}, which has no user"
        ) from None
    if found := _SHELL_SPECIAL.search(str(data_dir)):
        raise FreezeframeError(
            f"{str(data_dir)!r}: pg_ctl cannot start a server on a path holding {found[0]!r} "
            "(restore to another folder)"
        )
    major = _major(data_dir)
    pg_ctl = find_pg_tool("pg_ctl", major, bin_dir)
    env = {name: "" for name in hide}
    private = Path(tempfile.mkdtemp(prefix="freezeframe-pg-", dir="/tmp"))
    keep_private = False
    started = False
    try:
        (private / "pg_hba.conf").write_text("local all all trust\n", encoding="utf-8")
        (private / "pg_ident.conf").write_text("", encoding="utf-8")
        port, log = _free_port(), private / "server.log"
        options = {
            "port": str(port),
            "listen_addresses": "''",
            "unix_socket_directories": f"'{private}'",
            "hba_file": f"'{private}/pg_hba.conf'",
            "ident_file": f"'{private}/pg_ident.conf'",
            # Never push this copy's WAL into the original's archive, never fetch from it.
            "archive_mode": "off",
            "restore_command": "''",
            "primary_conninfo": "''",
            "primary_slot_name": "''",
            # Nothing the original owns: its pid file, its log, its certificates, its memory.
            "external_pid_file": "''",
            "logging_collector": "off",
            "log_destination": "stderr",
            "ssl": "off",
            "huge_pages": "off",
            "shared_buffers": "128MB",
            **(settings or {}),
        }
        if int(major) < 15:
            options["stats_temp_directory"] = f"'{private}/stat'"
        if not (data_dir / "postgresql.conf").exists():  # Debian keeps it in /etc
            (private / "postgresql.conf").write_text("", encoding="utf-8")
            options["config_file"] = f"'{private}/postgresql.conf'"
        if os.geteuid() == 0:
            for f in [private, *private.iterdir()]:
                os.chown(f, st.st_uid, st.st_gid)
        given = " ".join(f"-c {k}={v}" for k, v in options.items())
        start = [pg_ctl, "start", "-D", str(data_dir), "-w", "-t", str(START_TIMEOUT)]
        start = as_owner(owner, [*start, "-l", str(log), "-o", given], data_dir)
        try:
            started = True
            run_tool(start, timeout=START_TIMEOUT + 30, cwd=private, env=env)
        except ToolError as e:
            keep_private = True
            why = _last_fatal(log) or str(e)
            raise FreezeframeError(
                f"the restored copy {data_dir} did not start: {why} (server log: {log})"
            ) from None
        try:
            yield Temporary(private, port, owner.pw_name, log)
        except BaseException:
            keep_private = True
            raise
    finally:
        if started:
            _stop(owner, pg_ctl, data_dir, private, env)
        if not keep_private:
            shutil.rmtree(private, ignore_errors=True)


def start_and_query(
    data_dir: Path,
    *,
    bin_dir: Path | None,
    user: str | None,
    dbname: str | None,
    hide: Sequence[str] = (),
) -> dict[str, Any]:
    """Start a temporary server on ``data_dir`` (:func:`temporary_server`), let it recover,
    query it, stop it.

    Connects as ``user`` (default: the data directory's owner) to ``dbname``
    (default ``postgres``). Returns what the server said.
    """
    import psycopg

    with temporary_server(data_dir, bin_dir=bin_dir, hide=hide) as server:
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
            text = "; ".join(" ".join(line.split()) for line in str(e).splitlines() if line.strip())
            raise FreezeframeError(
                f"the restored copy {data_dir} started but refused a query: {text}"
            ) from None
    assert row is not None
    return {"server_version": row[0], "in_recovery": row[1], "databases": row[2]}


def _stop(
    owner: pwd.struct_passwd, pg_ctl: str, data_dir: Path, cwd: Path, env: dict[str, str]
) -> None:
    """Stop the temporary server: fast, and immediate if that does not work."""
    if not (data_dir / "postmaster.pid").exists():
        return
    for mode in ("fast", "immediate"):
        argv = [pg_ctl, "stop", "-D", str(data_dir), "-m", mode, "-w", "-t", str(STOP_TIMEOUT)]
        result = run_tool(
            as_owner(owner, argv, data_dir),
            timeout=STOP_TIMEOUT + 30,
            cwd=cwd,
            env=env,
            check=False,
        )
        if result.returncode == 0:
            return
