"""PostgreSQL's own programs (pg_ctl, pg_dump, initdb, ...), found for one major version.

A cluster is started by the ``pg_ctl`` of its major version, and dumped by the
``pg_dump`` of the server's: a distribution may hold several versions side by
side (Debian's ``/usr/lib/postgresql/<major>/bin``), and its ``/usr/bin`` wrappers
pick one by rules of their own.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from freezeframe.plugin import FreezeframeError, ToolError, find_tool, run_tool

__all__ = ["find_pg_tool", "tool_major"]


def tool_major(path: Path | str) -> str | None:
    """The PostgreSQL major version ``path --version`` names (``"15"``), if it names one."""
    out = run_tool([str(path), "--version"], timeout=30, check=False).stdout
    m = re.search(r"\(PostgreSQL\) (\d+)", out)
    return m.group(1) if m else None


def find_pg_tool(tool: str, major: str, bin_dir: Path | None) -> str:
    """``tool`` (``pg_ctl``, ``pg_dump``, ...) of PostgreSQL ``major``: only in ``bin_dir``
    when it is set (the profile's word); else the first of the right major version in the
    distributions' folders, then on PATH."""
    if bin_dir is not None:
        path = bin_dir / tool
        if not os.access(path, os.X_OK):
            raise FreezeframeError(
                f"no {tool} in bin_dir {bin_dir}: install PostgreSQL {major}'s programs there, "
                "or fix bin_dir (or leave it out to search for them)"
            )
        found = tool_major(path)
        if found != major:
            raise FreezeframeError(
                f"{path} is of PostgreSQL {found or '(unknown version)'}, not {major} as the "
                f"cluster: set bin_dir to where PostgreSQL {major}'s programs are"
            )
        return str(path)
    candidates = [
        Path(f"/usr/lib/postgresql/{major}/bin/{tool}"),  # Debian, Ubuntu
        Path(f"/usr/pgsql-{major}/bin/{tool}"),  # PGDG RPMs
        Path(f"/usr/local/pgsql/bin/{tool}"),  # built from source
    ]
    with contextlib.suppress(ToolError):
        candidates.append(Path(find_tool(tool)))
    for path in candidates:
        if os.access(path, os.X_OK) and tool_major(path) == major:
            return str(path)
    where = ", ".join(str(p.parent) for p in candidates)
    raise FreezeframeError(
        f"no {tool} of PostgreSQL {major} found (looked in {where}): install PostgreSQL "
        f"{major}'s programs, or set bin_dir in the profile"
    )
