"""The plug-in API: everything a plug-in or backend author may import, and nothing else.

``API_VERSION`` names this surface. A name here keeps its meaning for as long
as ``API_VERSION`` stays the same; every other module of the ``freezeframe``
package is private to the core and may change in any release (the names the
package itself re-exports, ``from freezeframe import Table``, are kept working
but are not the documented API). A vendor's package imports from here only::

    from freezeframe.plugin import ApplicationPlugin, Deadline, Table, hookimpl

What ``API_VERSION`` covers, by job:

- components and hooks: ``ApplicationPlugin``, ``Backend``, ``Observer``, ``hookimpl``,
  ``API_VERSION``, ``Role``, ``SnapshotKind``, ``CrashSafety``;
- records passed to and returned by components: ``Artifact``, ``StageContext``,
  ``Deadline``, ``RestoreOptions``, ``ProgressCallback``, ``WindowEstimate``; and those an
  observer is told of: ``RunRecord``, ``ApplicationRecord``, ``StageRecord``,
  ``DrillRecord``, ``RunStatus``, ``DrillStatus``, ``ProfileStatus``;
- configuration: ``Table``, ``Secret``, ``parse_duration``;
- drills (``ApplicationPlugin.drill``): ``DrillContext``, ``Running``, ``CheckFailed``,
  ``CheckSkipped``, ``env_prefix``, ``DrillCommand`` (a profile's ``drill`` command);
- errors: ``FreezeframeError``, ``ConfigError``, ``QuiesceError``, ``StageError``,
  ``Cancelled``, ``ToolError``;
- running tools: ``find_tool``, ``run_tool``, ``streaming_tool``, ``die_with_us`` (a
  ``preexec_fn`` for a tool that must not outlive freezeframe, started from a thread
  that lives as long as it);
- files: ``under`` (an original absolute path below another root), ``fsync_dir``,
  ``syncfs``, ``sqlite_uri``, ``writable_dir`` (a backend's ``dir``, made and checked);
- copying a tree (snapshot backends): ``copy_tree``, ``CopyStats``, ``make_parents``,
  ``outermost``, ``can_reflink``, ``tree_size``;
- content digests of a folder-tree view (snapshot backends): the ``digests`` module,
  its ``seal``, ``sealed``, ``check``, ``remove`` and ``UNSEALED``; ``FolderView``, a
  snapshot backend whose view is ``<dir>/<run id>/`` (restore, seal, verify, delete
  and discard done; a subclass writes ``run``);
- running a backup tool on a view at the original paths (copy backends): ``laid_out``,
  ``Layout``;
- a repository tool's backend (restic, borg): ``Repository``, ``read_repository``,
  ``read_password``, ``hide_credentials``, ``tool_version``, ``dotted``,
  ``ssh_address``, ``ssh_argv``, ``ssh_trouble``;
- writing a restore (backends): ``Target``, ``Meta``, ``copy_in``, ``strip_special``;
- fixing up restored data without following a symlink (``prepare_restored``):
  ``open_folder``, ``is_folder_below``, ``exists_below``, ``read_below``,
  ``replace_below``, ``unlink_below``.
"""

from __future__ import annotations

from freezeframe import digests
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
    WindowEstimate,
)
from freezeframe.config import Secret, Table, parse_duration
from freezeframe.copying import (
    CopyStats,
    can_reflink,
    copy_tree,
    make_parents,
    outermost,
    tree_size,
)
from freezeframe.drilling import (
    CheckFailed,
    CheckSkipped,
    DrillCommand,
    DrillContext,
    Running,
    env_prefix,
)
from freezeframe.errors import Cancelled, ConfigError, FreezeframeError, QuiesceError, StageError
from freezeframe.folder_view import FolderView
from freezeframe.fsutil import fsync_dir, sqlite_uri, syncfs, under, writable_dir
from freezeframe.hookspecs import hookimpl
from freezeframe.layout import Layout, laid_out
from freezeframe.observing import Observer
from freezeframe.records import (
    ApplicationRecord,
    DrillRecord,
    DrillStatus,
    RunRecord,
    RunStatus,
    StageRecord,
)
from freezeframe.repository import (
    Repository,
    dotted,
    hide_credentials,
    read_password,
    read_repository,
    ssh_address,
    ssh_argv,
    ssh_trouble,
    tool_version,
)
from freezeframe.restoring import (
    Meta,
    Target,
    copy_in,
    exists_below,
    is_folder_below,
    open_folder,
    read_below,
    replace_below,
    strip_special,
    unlink_below,
)
from freezeframe.status import ProfileStatus
from freezeframe.tools import ToolError, die_with_us, find_tool, run_tool, streaming_tool

__all__ = [
    "API_VERSION",
    "ApplicationPlugin",
    "ApplicationRecord",
    "Artifact",
    "Backend",
    "Cancelled",
    "CheckFailed",
    "CheckSkipped",
    "ConfigError",
    "CopyStats",
    "CrashSafety",
    "Deadline",
    "DrillCommand",
    "DrillContext",
    "DrillRecord",
    "DrillStatus",
    "FolderView",
    "FreezeframeError",
    "Layout",
    "Meta",
    "Observer",
    "ProfileStatus",
    "ProgressCallback",
    "QuiesceError",
    "Repository",
    "RestoreOptions",
    "Role",
    "RunRecord",
    "RunStatus",
    "Running",
    "Secret",
    "SnapshotKind",
    "StageContext",
    "StageError",
    "StageRecord",
    "Table",
    "Target",
    "ToolError",
    "WindowEstimate",
    "can_reflink",
    "copy_in",
    "copy_tree",
    "die_with_us",
    "digests",
    "dotted",
    "env_prefix",
    "exists_below",
    "find_tool",
    "fsync_dir",
    "hide_credentials",
    "hookimpl",
    "is_folder_below",
    "laid_out",
    "make_parents",
    "open_folder",
    "outermost",
    "parse_duration",
    "read_below",
    "read_password",
    "read_repository",
    "replace_below",
    "run_tool",
    "sqlite_uri",
    "ssh_address",
    "ssh_argv",
    "ssh_trouble",
    "streaming_tool",
    "strip_special",
    "syncfs",
    "tool_version",
    "tree_size",
    "under",
    "unlink_below",
    "writable_dir",
]

if __name__ == "__main__":  # ``python -m freezeframe.plugin`` lists the API
    print(f"freezeframe plug-in API {API_VERSION}:")
    for _name in __all__:
        print(f"  {_name}")
