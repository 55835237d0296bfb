"""A fresh cluster built from a logical dump, where a physical restore would have put the
data directory.

:func:`build` reads the dump's manifest, runs ``initdb`` as the cluster's owner (with
the dumped cluster's bootstrap role, encoding, locale, checksums and WAL segment size),
starts a temporary server on it (:func:`~freezeframe_postgresql._restored.temporary_server`:
private socket, no TCP), loads the globals (roles, tablespaces moved below the restore
root) and then each database (``pg_restore --create --exit-on-error``), and stops it
cleanly. The result is a data directory ready to start, like a physical restore's.
"""

from __future__ import annotations

import os
import pwd
import re
from pathlib import Path
from typing import Any

from freezeframe.plugin import FreezeframeError, run_tool, under
from freezeframe_postgresql._dump import ACCESS_FILES, GLOBALS, Dumped
from freezeframe_postgresql._programs import find_pg_tool
from freezeframe_postgresql._restored import as_owner, temporary_server

__all__ = ["build", "moved_globals"]

#: The user a cluster is built as, when freezeframe runs as root and the original's
#: owner is not a user here.
DEFAULT_OWNER = "postgres"
#: How long one step of the load (initdb, the globals, one database) may take.
LOAD_TIMEOUT = 24 * 3600


def _owner(wanted: str | None) -> pwd.struct_passwd:
    """Whom the cluster is built as: ourselves, unless we are root; then the original's
    owner where that user exists here, else postgres."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    for name in (wanted, DEFAULT_OWNER):
        if not name or name == "root":
            continue
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise FreezeframeError(
        f"no user {wanted or DEFAULT_OWNER!r} here to own the restored cluster (PostgreSQL "
        f"refuses to run as root): create it, or restore as the user that should own it"
    )


def _private_folder(path: Path, owner: pwd.struct_passwd) -> None:
    """An empty folder at ``path`` (its missing parents made 0755), mode 0700, the owner's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        raise FreezeframeError(
            f"{path} already exists: the restore would build a fresh cluster there"
        ) from None
    if os.geteuid() == 0:
        os.chown(path, owner.pw_uid, owner.pw_gid)


def _identifier(name: str) -> tuple[str, ...]:
    """How pg_dumpall may write ``name`` as an identifier: bare, or double-quoted."""
    quoted = '"' + name.replace('"', '""') + '"'
    return (name, quoted) if re.fullmatch(r"[a-z_][a-z0-9_$]*", name) else (quoted,)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def moved_globals(script: str, bootstrap: str, moves: dict[str, str]) -> str:
    """pg_dumpall's globals for the fresh cluster: without the ``CREATE ROLE`` of the
    bootstrap role (initdb made it), each tablespace at its new location ``moves[old]``."""
    drop = {f"CREATE ROLE {ident};" for ident in _identifier(bootstrap)}
    out, moved = [], set()
    for line in script.splitlines():
        if line in drop:
            continue
        if line.startswith("CREATE TABLESPACE "):
            for old, new in moves.items():
                tail = f" LOCATION {_literal(old)};"
                if line.endswith(tail):
                    line = line[: -len(tail)] + f" LOCATION {_literal(new)};"
                    moved.add(old)
                    break
        out.append(line)
    missing = sorted(set(moves) - moved)
    if missing:
        raise FreezeframeError(f"{GLOBALS} creates no tablespace at {missing[0]}")
    return "".join(f"{line}\n" for line in out)


def _initdb_argv(initdb: str, data_dir: Path, cluster: dict[str, Any]) -> list[str]:
    argv = [initdb, "-D", str(data_dir), "-U", cluster["bootstrap_user"]]
    argv += ["-E", cluster["encoding"], f"--lc-collate={cluster['lc_collate']}"]
    argv += [f"--lc-ctype={cluster['lc_ctype']}"]
    provider, locale = cluster.get("locale_provider"), cluster.get("locale")
    if provider == "i":
        argv += ["--locale-provider=icu", f"--icu-locale={locale}"]
    elif provider == "b":
        argv += ["--locale-provider=builtin", f"--builtin-locale={locale}"]
    if cluster.get("data_checksums"):
        argv.append("--data-checksums")
    if cluster.get("wal_segment_size"):
        argv.append(f"--wal-segsize={int(cluster['wal_segment_size']) // (1024 * 1024)}")
    # never initdb's "trust" for everyone: the cluster may be started as it is
    return [*argv, "--auth-local=peer", "--auth-host=scram-sha-256"]


def build(root: Path, dumped: Dumped, *, bin_dir: Path | None, hide: list[str]) -> Path:
    """Build a fresh cluster from ``dumped`` at the image of its original data directory
    below ``root``; returns that data directory, stopped and ready to start."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    cluster = dumped.cluster
    major = str(cluster["major"])
    tools = {t: find_pg_tool(t, major, bin_dir) for t in ("initdb", "psql", "pg_restore")}
    owner = _owner(cluster.get("owner"))
    data_dir = under(root, dumped.data_directory)
    _private_folder(data_dir, owner)
    moves = {old: str(under(root, old)) for old in cluster.get("tablespaces", {}).values()}
    for new in moves.values():
        _private_folder(Path(new), owner)
    env = {name: "" for name in hide}
    initdb = as_owner(owner, _initdb_argv(tools["initdb"], data_dir, cluster), data_dir)
    try:
        run_tool(initdb, timeout=LOAD_TIMEOUT, cwd="/", env=env)
    except FreezeframeError as e:
        raise FreezeframeError(f"initdb of the fresh cluster at {data_dir}: {e}") from None
    script = moved_globals(
        dumped.globals.read_text(encoding="utf-8"), cluster["bootstrap_user"], moves
    )
    with temporary_server(
        data_dir, bin_dir=bin_dir, settings={"synchronous_commit": "off"}
    ) as server:

        def conninfo(dbname: str) -> str:
            return make_conninfo(
                host=str(server.socket_dir),
                port=server.port,
                user=cluster["bootstrap_user"],
                dbname=dbname,
            )

        psql = [tools["psql"], "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"]
        try:
            run_tool([*psql, conninfo("template1")], input=script, timeout=LOAD_TIMEOUT, env=env)
        except FreezeframeError as e:
            raise FreezeframeError(f"loading {GLOBALS}: {e}") from None
        with psycopg.connect(conninfo("template1"), autocommit=True) as conn:
            made = {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}
            for name in set(dumped.names()) & made:  # postgres: the dump's own replaces it
                conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))
        jobs = str(max(1, min(4, os.cpu_count() or 1)))
        for db in dumped.databases:
            argv = [tools["pg_restore"], "--exit-on-error", "--create", f"--jobs={jobs}"]
            argv += [f"--dbname={conninfo('template1')}", str(dumped.folder / db["folder"])]
            try:
                run_tool(argv, timeout=LOAD_TIMEOUT, env=env)
            except FreezeframeError as e:
                raise FreezeframeError(f"restoring database {db['name']!r}: {e}") from None
    for name in ACCESS_FILES:  # the original's access rules, where the dump has them
        kept = dumped.folder / name
        if kept.is_file() and not kept.is_symlink():
            (data_dir / name).write_bytes(kept.read_bytes())
            (data_dir / name).chmod(0o600)
            os.chown(data_dir / name, owner.pw_uid, owner.pw_gid)
    return data_dir
