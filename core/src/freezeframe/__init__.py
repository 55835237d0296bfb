"""freezeframe: application-consistent backups of many applications at once.

The plug-in API is :mod:`freezeframe.plugin`: plug-ins and backends import from there
only. The names below are re-exported for code written before that module existed and
for the project's own tests; new code imports from :mod:`freezeframe.plugin`.
"""

from freezeframe.components import (
    API_VERSION,
    ApplicationPlugin,
    Artifact,
    Backend,
    CrashSafety,
    Deadline,
    RestoreOptions,
    Role,
    SnapshotKind,
    StageContext,
)
from freezeframe.config import Secret, Table, parse_duration
from freezeframe.errors import (
    BusyError,
    Cancelled,
    ConfigError,
    FreezeframeError,
    Interrupted,
    PluginError,
    ProfileError,
    QuiesceError,
    StageError,
)
from freezeframe.hookspecs import hookimpl
from freezeframe.records import ApplicationRecord, RunRecord, RunStatus, StageRecord

__all__ = [
    "API_VERSION",
    "ApplicationPlugin",
    "ApplicationRecord",
    "Artifact",
    "Backend",
    "BusyError",
    "Cancelled",
    "ConfigError",
    "CrashSafety",
    "Deadline",
    "FreezeframeError",
    "Interrupted",
    "PluginError",
    "ProfileError",
    "QuiesceError",
    "RestoreOptions",
    "Role",
    "RunRecord",
    "RunStatus",
    "Secret",
    "SnapshotKind",
    "StageContext",
    "StageError",
    "StageRecord",
    "Table",
    "hookimpl",
    "parse_duration",
]
