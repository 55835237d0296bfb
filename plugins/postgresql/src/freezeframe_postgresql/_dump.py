"""What a logical capture leaves at its dump path, in each snapshot's view::

    freezeframe-postgresql.json    the manifest: what a restore needs to build the cluster
                                   again (version, data directory, owner, bootstrap role,
                                   encoding and locale, checksums, tablespaces) and the
                                   databases dumped, each with the LSN at its capture
    globals.sql                    pg_dumpall --globals-only: roles, tablespaces
    databases/<name>/              pg_dump --format=directory, one per database

The capture writes it (:mod:`freezeframe_postgresql._logical`), a restore reads it
(:mod:`freezeframe_postgresql._fresh`).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from freezeframe.plugin import FreezeframeError, fsync_dir

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "DATABASES",
    "GLOBALS",
    "MANIFEST",
    "Cluster",
    "Dumped",
    "dump_folder",
    "read_cluster",
    "read_manifest",
    "write_manifest",
]

MANIFEST = "freezeframe-postgresql.json"
GLOBALS = "globals.sql"
DATABASES = "databases"


def dump_folder(name: str) -> str:
    """The folder of database ``name`` below ``databases/``: its name, %-quoted so that any
    name (``a/b``, ``..``) is one plain folder name."""
    quoted = quote(name, safe="")
    return f"%2E{quoted[1:]}" if quoted.startswith(".") else quoted


@dataclass
class Cluster:
    """What the manifest says about the dumped cluster (a restore builds it again)."""

    server_version: str
    major: int
    data_directory: str
    owner: str | None
    bootstrap_user: str
    encoding: str
    lc_collate: str
    lc_ctype: str
    locale_provider: str
    locale: str | None
    data_checksums: bool
    wal_segment_size: int
    home_database: str
    role_passwords: bool
    tablespaces: dict[str, str] = field(default_factory=dict)


def read_cluster(
    conn: psycopg.Connection[Any],
    server_version: str,
    major: int,
    data_dir: Path,
    segment_size: int,
) -> Cluster:
    """Version, data directory, owner, bootstrap role, encoding and locale (those of
    ``template1``, else ``postgres``, else the session's database), checksums."""
    locale = "NULL" if major < 15 else "daticulocale" if major < 17 else "datlocale"
    provider = "'c'" if major < 15 else "datlocprovider"
    row = conn.execute(
        "SELECT (SELECT rolname FROM pg_roles WHERE oid = 10),"
        " pg_encoding_to_char(d.encoding), d.datcollate, d.datctype,"
        f" {provider}::text, {locale},"
        " current_setting('data_checksums') = 'on', current_database(),"
        " has_table_privilege('pg_catalog.pg_authid', 'SELECT')"
        " FROM pg_database d"
        " WHERE d.datname IN ('template1', 'postgres', current_database())"
        " ORDER BY d.datname = 'template1' DESC, d.datname = 'postgres' DESC LIMIT 1"
    ).fetchone()
    assert row is not None  # current_database() is always there
    rows = conn.execute(
        "SELECT spcname, pg_tablespace_location(oid) FROM pg_tablespace"
        " WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY spcname"
    ).fetchall()
    owner = None  # not on this machine: the restore builds it as postgres
    with contextlib.suppress(OSError, KeyError):
        owner = pwd.getpwuid(data_dir.stat().st_uid).pw_name
    return Cluster(
        server_version=server_version,
        major=major,
        data_directory=str(data_dir),
        owner=owner,
        bootstrap_user=row[0],
        encoding=row[1],
        lc_collate=row[2],
        lc_ctype=row[3],
        locale_provider=row[4],
        locale=row[5],
        data_checksums=bool(row[6]),
        wal_segment_size=segment_size,
        home_database=row[7],
        role_passwords=bool(row[8]),
        tablespaces={name: location for name, location in rows},
    )


def write_manifest(folder: Path, cluster: Cluster, lsns: dict[str, str]) -> None:
    """The manifest of the dump in ``folder`` (``lsns``: each database dumped, in order,
    and the LSN at its capture), fsync'd with its folder."""
    manifest = {
        "format": 1,
        "cluster": asdict(cluster),
        "databases": [
            {"name": name, "folder": f"{DATABASES}/{dump_folder(name)}", "lsn": lsn}
            for name, lsn in lsns.items()
        ],
        "globals": GLOBALS,
    }
    with open(folder / MANIFEST, "x", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(folder / DATABASES)
    fsync_dir(folder)


class Dumped:
    """A logical dump restored below a root: what its manifest says."""

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.folder = folder
        self.cluster: dict[str, Any] = manifest["cluster"]
        self.databases: list[dict[str, str]] = manifest["databases"]
        self.globals = folder / manifest.get("globals", GLOBALS)

    @property
    def data_directory(self) -> Path:
        """The original cluster's data directory."""
        return Path(self.cluster["data_directory"])

    def names(self) -> list[str]:
        """The dumped databases."""
        return [d["name"] for d in self.databases]


def read_manifest(folder: Path) -> Dumped | None:
    """The dump at ``folder``, or ``None`` when there is none."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        return Dumped(folder, json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FreezeframeError(f"{path}: not a manifest of a logical dump: {e}") from None
