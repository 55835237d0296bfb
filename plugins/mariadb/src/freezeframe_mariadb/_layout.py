"""Where a MariaDB/MySQL server keeps its files, and the settings a copy of them must start with.

The server is asked once (``SHOW GLOBAL VARIABLES``); its paths are turned
into local ones (a configured ``datadir`` rebases the paths below the
server's own). Without the server, :meth:`Layout.default` assumes the stock
layout: everything in the datadir.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["VARIABLES", "Layout"]

#: Server variables that place files or must match when a copy of the datadir starts.
VARIABLES = (
    "datadir",
    "innodb_log_group_home_dir",
    "innodb_data_home_dir",
    "innodb_data_file_path",
    "innodb_undo_directory",
    "innodb_undo_tablespaces",
    "innodb_page_size",
    "innodb_log_file_size",
    "aria_log_dir_path",
    "log_bin",
    "log_bin_basename",
    "relay_log_basename",
    "lower_case_table_names",
    "pid_file",
    "socket",
)
#: Settings a copy of the datadir must be started with as the original was (when known).
PASS_THROUGH = (
    "innodb_page_size",
    "innodb_data_file_path",
    "innodb_undo_tablespaces",
    "lower_case_table_names",
)
#: Directory settings, by what they hold (for messages), that may lie outside the datadir.
DIRECTORIES = {
    "innodb_log_group_home_dir": "the InnoDB redo log",
    "innodb_data_home_dir": "the InnoDB system tablespace",
    "innodb_undo_directory": "the InnoDB undo tablespaces",
    "aria_log_dir_path": "the Aria log",
}


@dataclass(frozen=True)
class Layout:
    """A server's files, by local absolute path."""

    datadir: Path
    #: Directories outside the datadir that hold data, by what they hold.
    outside: Mapping[str, Path] = field(default_factory=dict)
    #: The binary log's base name (``.../mysql-bin``) when binary logging is on.
    log_bin_basename: Path | None = None
    #: The server's pid file and socket, when they lie in a data folder (a restore drops them).
    runtime_files: tuple[Path, ...] = ()
    #: Settings of PASS_THROUGH, as the server reported them.
    settings: Mapping[str, str] = field(default_factory=dict)
    #: Directory settings, resolved (``innodb_log_group_home_dir`` etc.), inside the datadir or not.
    directories: Mapping[str, Path] = field(default_factory=dict)

    @classmethod
    def from_variables(cls, variables: Mapping[str, str], local_datadir: Path | None) -> Layout:
        """The layout the server's variables describe; ``local_datadir`` overrides the datadir.

        Paths below the server's datadir are rebased onto ``local_datadir``
        (a container's datadir seen from the host); others are taken as they are.
        """
        server_datadir = Path(os.path.normpath(variables.get("datadir") or "."))
        datadir = local_datadir or server_datadir

        def local(value: str | None) -> Path | None:
            if not value:
                return None
            p = Path(os.path.normpath(server_datadir / value))  # relative: from the datadir
            if p.is_relative_to(server_datadir):
                return datadir / p.relative_to(server_datadir)
            return p

        directories: dict[str, Path] = {}
        outside: dict[str, Path] = {}
        for name, what in DIRECTORIES.items():
            p = local(variables.get(name))
            if p is None:
                continue
            directories[name] = p
            if not p.is_relative_to(datadir):
                outside[what] = p
        for entry in (variables.get("innodb_data_file_path") or "").split(";"):
            name = entry.split(":")[0]
            if name.startswith("/"):  # a raw device or absolute file, outside any home dir
                p = Path(name)
                if not p.is_relative_to(datadir):
                    outside[f"the InnoDB system tablespace file {name}"] = p
        log_bin = None
        if (variables.get("log_bin") or "").upper() in ("ON", "1"):
            log_bin = local(variables.get("log_bin_basename"))
            if log_bin is not None and not log_bin.parent.is_relative_to(datadir):
                outside["the binary log"] = log_bin.parent
        relay = local(variables.get("relay_log_basename"))
        if relay is not None and not relay.parent.is_relative_to(datadir):
            outside["the relay log"] = relay.parent
        runtime = tuple(
            p for key in ("pid_file", "socket") if (p := local(variables.get(key))) is not None
        )
        settings = {
            k: str(variables[k]) for k in PASS_THROUGH if variables.get(k) not in (None, "")
        }
        return cls(datadir, outside, log_bin, runtime, settings, directories)

    @classmethod
    def default(cls, datadir: Path, image: Path | None = None) -> Layout:
        """The stock layout (everything in ``datadir``), for when the server cannot be asked.

        With ``image`` (a copy of the datadir), a binary log found in it is
        taken as the server's: its index names files such as ``mysql-bin.000042``.
        """
        log_bin = None
        if image is not None and image.is_dir():
            for index in sorted(image.glob("*.index")):
                if "relay" in index.name:
                    continue
                first = next(iter(index.read_text(errors="replace").splitlines()), "")
                if re.search(r"\.\d{6}$", first):
                    log_bin = datadir / index.name.removesuffix(".index")
                    break
        return cls(datadir, log_bin_basename=log_bin)

    def data_paths(self) -> list[Path]:
        """The datadir, then each folder outside it that holds data, none inside another."""
        paths = [self.datadir]
        for p in self.outside.values():
            if not any(p.is_relative_to(q) for q in paths):
                paths = [q for q in paths if not q.is_relative_to(p)] + [p]
        return paths

    def filesystems(self) -> dict[int, list[str]]:
        """The data folders by device (``st_dev``: a btrfs subvolume counts as its own)."""
        what = {self.datadir: "the datadir", **{p: w for w, p in self.outside.items()}}
        found: dict[int, list[str]] = {}
        for p in self.data_paths():
            found.setdefault(p.stat().st_dev, []).append(f"{what.get(p, 'data')} ({p})")
        return found

    def problem_here(self) -> str | None:
        """Why a snapshot of this machine cannot hold these files at one instant, if it
        cannot: the datadir is not here (or not one), a data folder is elsewhere, or they
        lie on several filesystems (btrfs: subvolumes)."""
        if not self.datadir.is_dir():
            return (
                f"the datadir {self.datadir} does not exist on this machine; run freezeframe "
                "on the server's host (or set datadir to where it is mounted here)"
            )
        if not (self.datadir / "mysql").is_dir():
            return f"{self.datadir} has no mysql/ folder: it is not the server's datadir"
        for what, p in self.outside.items():
            if not p.exists():
                return f"{what} is in {p}, which is not on this machine"
        places = self.filesystems()
        if len(places) > 1:
            where = "; ".join(", ".join(v) for v in places.values())
            return (
                f"its files are on {len(places)} filesystems or subvolumes ({where}); several "
                "snapshots are not one instant: move them onto the datadir's filesystem "
                "(btrfs: into its subvolume)"
            )
        return None

    def is_data(self, path: Path) -> bool:
        """Whether ``path`` lies in one of the data folders."""
        return any(path.is_relative_to(p) for p in self.data_paths())
