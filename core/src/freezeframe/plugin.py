"""The plug-in API: everything a plug-in or backend author may import, and nothing else.

``API_VERSION`` names this surface. A name here keeps its meaning for as long
as ``API_VERSION`` stays the same; every other module of the ``freezeframe``
package is private to the core and may change in any release. A vendor's
package imports from here only::

    from freezeframe.plugin import ApplicationPlugin, Deadline, Table, hookimpl
"""

from __future__ import annotations

from freezeframe.components import (
    API_VERSION,
    ApplicationPlugin,
    Artifact,
    Backend,
    CrashSafety,
    Deadline,
    ProgressCallback,
    RestoreOptions,
    Role,
    SnapshotKind,
    StageContext,
)
from freezeframe.config import Secret, Table, parse_duration
from freezeframe.copying import CopyStats, copy_tree
from freezeframe.errors import Cancelled, ConfigError, FreezeframeError, QuiesceError, StageError
from freezeframe.fsutil import fsync_dir, syncfs, under
from freezeframe.hookspecs import hookimpl
from freezeframe.restoring import Target, copy_in
from freezeframe.tools import ToolError, find_tool, run_tool, streaming_tool

__all__ = [
    "API_VERSION",
    "ApplicationPlugin",
    "Artifact",
    "Backend",
    "Cancelled",
    "ConfigError",
    "CopyStats",
    "CrashSafety",
    "Deadline",
    "FreezeframeError",
    "ProgressCallback",
    "QuiesceError",
    "RestoreOptions",
    "Role",
    "Secret",
    "SnapshotKind",
    "StageContext",
    "StageError",
    "Table",
    "Target",
    "ToolError",
    "copy_in",
    "copy_tree",
    "find_tool",
    "fsync_dir",
    "hookimpl",
    "parse_duration",
    "run_tool",
    "streaming_tool",
    "syncfs",
    "under",
]

if __name__ == "__main__":  # ``python -m freezeframe.plugin`` lists the API
    print(f"freezeframe plug-in API {API_VERSION}:")
    for _name in __all__:
        print(f"  {_name}")
