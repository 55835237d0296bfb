"""A loaded, validated profile: the profile's fields, and each ``[[application]]`` and
``[[backup]]`` table as its component instance with the core's fields around it.
:func:`freezeframe.profile.load_profile` makes them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from freezeframe.components import ApplicationPlugin, Backend, Role
from freezeframe.errors import ProfileError
from freezeframe.keep import KeepPolicy
from freezeframe.observing import Observer
from freezeframe.registry import ComponentInfo

__all__ = [
    "DRILL_MODES",
    "MAX_COPY_IN_WINDOW",
    "ApplicationSpec",
    "ObserverSpec",
    "Profile",
    "StageSpec",
    "UserCheck",
    "default_drill_dir",
]

#: The default ``max_copy_in_window``: what a disk copies in well under a second.
MAX_COPY_IN_WINDOW = 64 << 20
#: ``drill = ...``: ``"none"`` (only ``freezeframe drill`` drills) or ``"after-backup"``.
DRILL_MODES = ("none", "after-backup")


def default_drill_dir() -> Path:
    """Where drills make their scratch folders by default: ``/var/tmp/freezeframe-drills-<uid>``
    (not the state folder: a server restored there runs as its own user, who must be able
    to reach it; not ``/tmp``, often a small memory filesystem)."""
    # made with mkdir and checked (ours, not a symlink, not writable by others) before use
    return Path(f"/var/tmp/freezeframe-drills-{os.geteuid()}")  # noqa: S108


@dataclass(frozen=True)
class UserCheck:
    """One ``[[application.check]]``: a check of the profile's own, run by a drill on the
    restored, running copy of its application."""

    name: str
    #: A query whose first column of its first row must equal ``expect``...
    sql: str | None = None
    expect: Any = None
    #: ...or a command (argv) that must exit 0; it sees every restored application's
    #: connection details in its environment.
    command: tuple[str, ...] = ()
    timeout: float = 300.0

    @property
    def kind(self) -> str:
        """``"sql"`` or ``"command"``."""
        return "sql" if self.sql is not None else "command"


@dataclass(frozen=True)
class ApplicationSpec:
    """One ``[[application]]``: its plug-in instance and the core's fields around it."""

    name: str
    info: ComponentInfo
    component: ApplicationPlugin
    after: tuple[str, ...] = ()
    on_quiesce_failure: str = "fail"
    #: The capture mode the profile names (``capture = ...``); ``None``: the default.
    chosen: str | None = None
    #: The profile's own checks of it, run by drills (``[[application.check]]``).
    checks: tuple[UserCheck, ...] = ()

    @property
    def capture(self) -> str:
        """The capture mode (one of the plug-in's ``capture_modes``): the profile's, or by
        default the first one consistent with the profile's stages, settled again before a
        run when a stage would copy the application inside the window
        (:func:`freezeframe.preflight.settle_captures`)."""
        return self.component.capture


@dataclass(frozen=True)
class StageSpec:
    """One ``[[backup]]``: its backend instance and the core's fields around it."""

    name: str
    info: ComponentInfo
    component: Backend
    role: Role
    source: str | None = None
    keep: KeepPolicy | None = None


@dataclass(frozen=True)
class ObserverSpec:
    """One observer's table (``[[notify]]``): its instance."""

    name: str
    info: ComponentInfo
    component: Observer


@dataclass(frozen=True)
class Profile:
    """A loaded, validated profile."""

    path: Path
    name: str
    freeze_timeout: float
    thaw: str
    state_dir: Path
    applications: tuple[ApplicationSpec, ...]
    stages: tuple[StageSpec, ...]
    #: The most bytes a snapshot stage may copy inside the freeze window (``check``).
    max_copy_in_window: int = MAX_COPY_IN_WINDOW
    #: When a drill runs by itself: ``"none"`` or ``"after-backup"``.
    drill: str = "none"
    #: Where drills make their private scratch folders.
    drill_dir: Path = field(default_factory=default_drill_dir)
    #: The observers its own tables configure (``[[notify]]``), in profile order.
    observers: tuple[ObserverSpec, ...] = ()

    @property
    def home(self) -> Path:
        """This profile's folder in the state dir: its catalog and lock."""
        return self.state_dir / self.name

    def stage(self, name: str) -> StageSpec:
        """The stage called ``name``."""
        for s in self.stages:
            if s.name == name:
                return s
        raise ProfileError([f"{self.path}: no [[backup]] stage named {name!r}"])

    def released_after_run(self, stage: StageSpec) -> bool:
        """A snapshot that a copy stage reads and that has no ``keep`` is released after the run."""
        return (
            stage.role == Role.SNAPSHOT
            and stage.keep is None
            and any(s.source == stage.name for s in self.stages)
        )
