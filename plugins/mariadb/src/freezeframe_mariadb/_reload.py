"""A logical backup restored: its dump loaded into a fresh datadir, ready to start.

Where a physical restore would put the original's datadir (and any data folder
outside it), ``mariadb-install-db`` makes a fresh one with the original's
settings (page size, tablespaces, ``lower_case_table_names``), owned as the
original's was (as root: its owner, else ``mysql``). A private server on it
(:func:`._restored.temporary_server`, ``loading``) takes the dump from the
``mariadb`` client and must stop cleanly. The dump's grant tables replace the
fresh ones: the restored server has the original's users and passwords.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

from freezeframe.plugin import (
    FreezeframeError,
    ToolError,
    exists_below,
    is_folder_below,
    open_folder,
    run_tool,
    under,
)
from freezeframe_mariadb import _restored
from freezeframe_mariadb._layout import Layout
from freezeframe_mariadb._server import program

__all__ = ["restore"]

#: How long ``mariadb-install-db`` may take.
INSTALL_TIMEOUT = 600.0


def restore(layout: Layout, root: Path, dump: Path, who: str, bin_dir: Path | None) -> Path:
    """Make a fresh datadir at the original's place under ``root`` from ``dump`` (restored
    below ``root``): ``mariadb-install-db``, then a private server loads it and stops
    cleanly. Returns the datadir."""
    datadir = under(root, layout.datadir)
    try:
        if exists_below(root, datadir):
            raise FreezeframeError(
                f"{datadir} exists: the backup holds a dump, from which the restore makes "
                "a fresh datadir there"
            )
        source = _open_below(root, dump)
    except FreezeframeError as e:
        raise FreezeframeError(f"{who}: {e}") from None
    try:
        user = _owner(layout)
        folders = [datadir, *(under(root, p) for p in layout.directories.values())]
        try:
            for folder in dict.fromkeys(folders):
                _make_below(root, folder, user)
        except FreezeframeError as e:
            raise FreezeframeError(f"{who}: {e}") from None
        _install(layout, root, datadir, user, who, bin_dir)
        with _restored.temporary_server(layout, root, who, loading=True, bin_dir=bin_dir) as server:
            _load(source, server.socket, who, bin_dir)
    finally:
        os.close(source)
    return datadir


def _open_below(root: Path, path: Path) -> int:
    folder = open_folder(root, path.parent)
    try:
        fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
    except FileNotFoundError:
        raise FreezeframeError(f"{path} was not restored") from None
    except OSError as e:
        raise FreezeframeError(f"{path}: {e.strerror}; refusing to read it") from None
    finally:
        os.close(folder)
    return fd


def _owner(layout: Layout) -> pwd.struct_passwd | None:
    """Whom the datadir belongs to, as root: the original's owner, else ``mysql``, else
    root. ``None`` when freezeframe is not root (the datadir is then its own)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwuid(layout.datadir.stat().st_uid)
    except (OSError, KeyError):
        pass
    try:
        return pwd.getpwnam("mysql")
    except KeyError:
        return pwd.getpwuid(0)


def _make_below(root: Path, folder: Path, user: pwd.struct_passwd | None) -> None:
    """``folder`` and the folders above it below ``root``, never through a symlink; the
    last one given to ``user``."""
    current = root
    for part in folder.relative_to(root).parts:
        current = current / part
        if not is_folder_below(root, current):  # raises on a symlink
            current.mkdir(mode=0o755)
    if user is not None:
        os.chown(folder, user.pw_uid, user.pw_gid)


def _install(
    layout: Layout,
    root: Path,
    datadir: Path,
    user: pwd.struct_passwd | None,
    who: str,
    bin_dir: Path | None,
) -> None:
    argv = [
        program("mariadb-install-db", bin_dir),
        "--no-defaults",
        f"--datadir={datadir}",
        *([f"--user={user.pw_name}"] if user is not None else []),
        "--auth-root-authentication-method=normal",  # replaced by the dump's grant tables
        "--skip-test-db",
        "--skip-name-resolve",
        *_restored.settings_options(layout, root),
    ]
    try:
        run_tool(argv, timeout=INSTALL_TIMEOUT)
    except ToolError as e:
        raise FreezeframeError(f"{who}: cannot make a fresh datadir in {datadir}: {e}") from None


def _load(source: int, socket: Path, who: str, bin_dir: Path | None) -> None:
    """Feed the dump to the ``mariadb`` client on the private server's socket."""
    argv = [
        program("mariadb", bin_dir),
        "--no-defaults",
        f"--socket={socket}",
        "--user=root",
        "--binary-mode",  # a dump's data is bytes, whatever the client's character set
        "--max-allowed-packet=1G",
    ]
    # run_tool takes a string as input; a dump is fed from its file descriptor instead
    proc = subprocess.run(
        argv, stdin=source, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
    )
    if proc.returncode != 0:
        lines = [x.strip() for x in proc.stderr.decode(errors="replace").splitlines() if x.strip()]
        raise FreezeframeError(
            f"{who}: loading the dump failed (exit {proc.returncode}): "
            + (lines[-1] if lines else "no message")
        )
